"""The whole promotion protocol with the real release, workflow and approval services in-process."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

from stella.contracts import approval as a
from stella.contracts import deployment as d
from stella.contracts import promotion as c
from stella.contracts import workflow as w
from stella.promotion.decision import decide
from stella.testing.messaging import collect_messages

from .conftest import Caller, Stack, first_match, job_completed, job_started, publish_event

APPROVE = ["promotion:approve"]


async def _environment(caller: Caller, name: str, order: int, **fields: Any) -> dict[str, Any]:
    reply = await caller.command(c.CREATE_ENVIRONMENT, c.CreateEnvironment, name=name, order_index=order, **fields)
    assert reply.ok, reply.error
    return reply.data


async def _promote(caller: Caller, stack: Stack, release: dict, env: dict, until: str, nats) -> dict[str, Any]:
    """Request a promotion and wait until the workflow's gate step has moved it to ``until``."""
    async with collect_messages(nats.jetstream(), stack.wire("stella.evt.promotion.>")) as events:
        reply = await caller.command(
            c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=env["id"]
        )
        assert reply.ok, reply.error
        if until == "pending_approval":
            # No promotion event marks it: the promotion moves once it has seen the approval service open the
            # request, which the test waits for, then reads the promotion until that event was handled.
            async with collect_messages(nats.jetstream(), stack.wire(a.APPROVAL_REQUESTED)) as requested:
                await first_match(requested, lambda b: b["request"]["promotion_id"] == reply.data["id"], timeout=20)
            for _ in range(200):
                current = await caller.query(c.GET_PROMOTION, c.GetPromotion, promotion_id=reply.data["id"])
                if current.data["status"] == until:
                    break
                await asyncio.sleep(0.05)
        else:
            await first_match(
                events,
                lambda b: (
                    "promotion" in b and b["promotion"]["id"] == reply.data["id"] and b["promotion"]["status"] == until
                ),
                timeout=20,
            )
    current = await caller.query(c.GET_PROMOTION, c.GetPromotion, promotion_id=reply.data["id"])
    assert current.data["status"] == until
    return current.data


async def _run(caller: Caller, promotion: dict[str, Any]) -> dict[str, Any]:
    reply = await caller.query(w.GET_RUN, w.GetRun, run_id=promotion["workflow_run_id"])
    assert reply.ok, reply.error
    return {step["node_id"]: step for step in reply.data["steps"]}


async def _vote(caller: Caller, voter: uuid.UUID, promotion: dict[str, Any], action: str, comment: str = ""):
    return await caller.acting_as(voter).command(
        a.CAST_VOTE,
        a.CastVote,
        promotion_id=promotion["id"],
        action=action,
        comment=comment,
        permissions=APPROVE,
    )


async def test_dev_is_approved_and_prod_collects_two_distinct_approvals(
    full_caller: Caller, full_stack: Stack, nats
) -> None:
    caller, stack = full_caller, full_stack
    dev = await _environment(caller, "dev", 0)
    prod = await _environment(caller, "prod", 1, required_approvals=2, require_sod=True)
    release = await caller.ready_release("shop")

    async with (
        collect_messages(nats.jetstream(), stack.wire(w.STEP_COMPLETED)) as completed,
        collect_messages(nats.jetstream(), stack.wire(d.EXECUTE_STEP)) as deploy_steps,
    ):
        to_dev = await _promote(caller, stack, release, dev, "approved", nats)
        # The workflow moves on once it has the gate step's result: no approvals needed, the step is skipped.
        skipped = await first_match(
            completed, lambda b: b["run_id"] == to_dev["workflow_run_id"] and b["node_id"] == "approval", timeout=20
        )
        # ... and the deploy step goes to the deployment service.
        deploy_step = await first_match(deploy_steps, lambda b: b["run_id"] == to_dev["workflow_run_id"], timeout=20)
    assert skipped["status"] == "skipped"
    assert (deploy_step["node_id"], deploy_step["step_type"]) == ("deploy", "deploy")
    assert deploy_step["inputs"]["inputs"]["environment_id"] == dev["id"]
    assert to_dev["decision_record"]["result"] == "allow"
    assert all(g["status"] == "pass" for g in to_dev["decision_record"]["gates"])
    steps = await _run(caller, to_dev)
    assert steps["gates"]["status"] == "succeeded" and steps["approval"]["status"] == "skipped"
    assert steps["deploy"]["status"] == "running"

    # The deployment service's job for dev (no targets) starts and ends at once: dev is reached.
    job = uuid.uuid4()
    async with collect_messages(nats.jetstream(), stack.wire(c.PROMOTION_COMPLETED)) as deployed:
        await publish_event(stack, d.JOB_STARTED, job_started(caller, to_dev, job))
        await publish_event(
            stack, d.JOB_COMPLETED, job_completed(caller, to_dev, job, "succeeded", reason="no targets")
        )
        done = await first_match(deployed, lambda b: b["promotion"]["id"] == to_dev["id"], timeout=20)
    assert done["promotion"]["status"] == "deployed"
    assert done["promotion"]["deployment_job_id"] == str(job)

    to_prod = await _promote(caller, stack, release, prod, "pending_approval", nats)
    pending_gate = {g["type"]: g for g in to_prod["decision_record"]["gates"]}["approval"]
    assert (pending_gate["status"], pending_gate["details"]["required"]) == ("pending", 2)

    own = await _vote(caller, caller.actor_id, to_prod, "approved")
    assert (own.error.code, own.error.status) == ("PROM_SOD_VIOLATION", 422)
    first, second = uuid.uuid4(), uuid.uuid4()
    assert (await _vote(caller, first, to_prod, "approved", "looks good")).ok
    half = await caller.query(c.GET_PROMOTION, c.GetPromotion, promotion_id=to_prod["id"])
    assert half.data["status"] == "pending_approval"

    async with (
        collect_messages(nats.jetstream(), stack.wire(c.PROMOTION_APPROVED)) as approved,
        collect_messages(nats.jetstream(), stack.wire(w.STEP_COMPLETED)) as completed,
    ):
        assert (await _vote(caller, second, to_prod, "approved")).ok
        event = await first_match(approved, lambda b: b["promotion"]["id"] == to_prod["id"], timeout=20)
        await first_match(
            completed,
            lambda b: b["run_id"] == to_prod["workflow_run_id"] and b["node_id"] == "approval",
            timeout=20,
        )
    record = event["promotion"]["decision_record"]
    assert record["result"] == "allow"
    assert sorted((e["approver"], e["action"]) for e in record["approvals"]) == sorted(
        [(str(first), "approved"), (str(second), "approved")]
    )
    assert {e["comment"] for e in record["approvals"]} == {"looks good", ""}
    approval_gate = {g["type"]: g for g in record["gates"]}["approval"]
    assert (approval_gate["status"], approval_gate["details"]["granted"]) == ("pass", 2)
    steps = await _run(caller, to_prod)
    assert steps["approval"]["status"] == "succeeded"

    decision = await caller.query(c.GET_DECISION, c.GetDecision, promotion_id=to_prod["id"])
    assert decision.data["trigger"] == "approvals"
    replayed = decide(decision.data["inputs"], datetime.fromisoformat(decision.data["evaluated_at"]))
    assert replayed.to_dict() == decision.data["record"] == record
    # The approval announces the decision with the inputs it was made from (the approvals included).
    assert event["decision_inputs"] == decision.data["inputs"]


async def test_an_eligible_rejection_rejects_and_fails_the_approval_step(
    full_caller: Caller, full_stack: Stack, nats
) -> None:
    caller, stack = full_caller, full_stack
    prod = await _environment(caller, "prod", 0, required_approvals=2, require_sod=True)
    release = await caller.ready_release("shop")
    promotion = await _promote(caller, stack, release, prod, "pending_approval", nats)
    approver, rejecter = uuid.uuid4(), uuid.uuid4()
    assert (await _vote(caller, approver, promotion, "approved")).ok

    async with (
        collect_messages(nats.jetstream(), stack.wire(c.PROMOTION_REJECTED)) as rejected,
        collect_messages(nats.jetstream(), stack.wire(w.STEP_FAILED)) as failed,
    ):
        assert (await _vote(caller, rejecter, promotion, "rejected", "not during the audit")).ok
        event = await first_match(rejected, lambda b: b["promotion"]["id"] == promotion["id"], timeout=20)
        step = await first_match(
            failed, lambda b: b["run_id"] == promotion["workflow_run_id"] and b["node_id"] == "approval", timeout=20
        )
    view = event["promotion"]
    assert view["reason_codes"] == ["PROM_APPROVAL_REJECTED"]
    assert view["decision_record"]["result"] == "deny"
    evaluated_at = datetime.fromisoformat(view["decision_record"]["evaluated_at"])
    assert decide(event["decision_inputs"], evaluated_at).to_dict() == view["decision_record"]
    assert ("rejected", "not during the audit") in {
        (e["action"], e["comment"]) for e in view["decision_record"]["approvals"]
    }
    assert step["error"] == f"approval denied; promotion {promotion['id']} is rejected"
    late = await _vote(caller, uuid.uuid4(), promotion, "approved")
    assert not late.ok
    assert (await caller.query(c.GET_PROMOTION, c.GetPromotion, promotion_id=promotion["id"])).data[
        "status"
    ] == "rejected"


async def test_cancel_while_waiting_for_approvals_cancels_the_run(full_caller: Caller, full_stack: Stack, nats) -> None:
    caller, stack = full_caller, full_stack
    prod = await _environment(caller, "prod", 0, required_approvals=1)
    release = await caller.ready_release("shop")
    promotion = await _promote(caller, stack, release, prod, "pending_approval", nats)
    async with collect_messages(nats.jetstream(), stack.wire(w.RUN_FAILED)) as run_failed:
        cancelled = await caller.command(c.CANCEL_PROMOTION, c.CancelPromotion, promotion_id=promotion["id"])
        assert cancelled.ok and cancelled.data["status"] == "cancelled"
        ended = await first_match(run_failed, lambda b: b["run_id"] == promotion["workflow_run_id"], timeout=20)
    assert ended["status"] == "cancelled"
    vote = await _vote(caller, uuid.uuid4(), promotion, "approved")
    assert not vote.ok
    after = await caller.query(c.GET_PROMOTION, c.GetPromotion, promotion_id=promotion["id"])
    assert after.data["status"] == "cancelled"
