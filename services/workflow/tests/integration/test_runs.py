"""Workflow runs over real NATS and Postgres, with the test playing the services that execute the steps."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

from stella.contracts import workflow as c
from stella.contracts.envelope import Reply
from stella.contracts.streams import HEADER_MSG_ID, HEADER_REPLY_TO
from stella.workflow.domain.run import step_attempt_id

from .conftest import Deployment, Harness, at


def _promotion_inputs(**overrides: Any) -> dict[str, Any]:
    return {
        "promotion_id": str(uuid.uuid4()),
        "release_id": str(uuid.uuid4()),
        "environment_id": str(uuid.uuid4()),
        "requested_by": str(uuid.uuid4()),
        "approval_required": True,
        "required_approvals": 2,
        "require_sod": True,
        "approver_groups": ["release-managers"],
        "approval_timeout_s": 604800,
        **overrides,
    }


def _steps(run: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {s["node_id"]: (s["status"], s["attempt_number"]) for s in run["steps"]}


async def test_standard_promotion_runs_gates_then_approval_then_evidence(harness: Harness) -> None:
    promotion = uuid.uuid4()
    inputs = _promotion_inputs(promotion_id=str(promotion))
    run = await harness.start_run(
        "standard-promotion", template_version=1, run_id=uuid.uuid4(), subject_id=promotion, inputs=inputs
    )
    run_id = run["id"]
    assert (run["status"], run["template_version"], run["subject_id"]) == ("running", 1, str(promotion))
    assert _steps(run) == {"gates": ("running", 1), "approval": ("pending", 0), "evidence": ("pending", 0)}

    gates = await harness.dispatch(run_id, "gates")
    assert gates.message_id == step_attempt_id(uuid.UUID(run_id), "gates", 1)
    assert (gates.step_type, gates.subject_id) == ("gate", promotion)
    assert gates.inputs == {"inputs": inputs, "steps": {}}
    await harness.complete(gates, outputs={"result": "allow", "decision_hash": "sha256:abc"}, logs="3 gates passed")

    approval = await harness.dispatch(run_id, "approval")
    assert approval.inputs["inputs"]["required_approvals"] == 2
    assert approval.inputs["steps"]["gates"]["outputs"]["result"] == "allow"
    assert _steps(await harness.get_run(run_id))["approval"] == ("waiting", 1)
    await harness.complete(approval, outputs={"decision": "granted"})

    evidence = await harness.dispatch(run_id, "evidence")
    assert evidence.config == {"packet_type": "release_decision"}
    assert evidence.inputs["steps"]["approval"]["outputs"] == {"decision": "granted"}
    await harness.complete(evidence, outputs={"packet_id": "p-1", "content_hash": "sha256:def"})

    subject, done = await harness.finished(run_id)
    assert subject == c.RUN_COMPLETED
    assert done["subject_id"] == str(promotion)
    assert done["outputs"]["approved"] is True
    final = await harness.get_run(run_id)
    assert final["status"] == "succeeded"
    assert _steps(final) == {"gates": ("succeeded", 1), "approval": ("succeeded", 1), "evidence": ("succeeded", 1)}
    by_node = {s["node_id"]: s for s in final["steps"]}
    assert by_node["gates"]["logs"] == "[attempt 1]\n3 gates passed\n"
    assert by_node["evidence"]["outputs"]["packet_id"] == "p-1"
    started = harness.events_of(c.RUN_STARTED, run_id)
    assert len(started) == 1
    assert started[0]["run"]["steps"][0]["status"] == "running"
    assert [e["node_id"] for e in harness.events_of(c.STEP_STARTED, run_id)] == ["gates", "approval", "evidence"]
    assert [e["node_id"] for e in harness.events_of(c.STEP_COMPLETED, run_id)] == ["gates", "approval", "evidence"]
    # Every message of the run carries the correlation of the command that started it.
    correlations = {e["correlation_id"] for e in harness.events_of(c.STEP_STARTED, run_id)}
    assert correlations == {started[0]["correlation_id"]}


async def test_approval_is_skipped_when_the_environment_needs_none(harness: Harness) -> None:
    run = await harness.start_run(
        "standard-promotion", template_version=1, inputs=_promotion_inputs(approval_required=False)
    )
    run_id = run["id"]

    await harness.complete(await harness.dispatch(run_id, "gates"), outputs={"result": "allow"})
    evidence = await harness.dispatch(run_id, "evidence")
    assert evidence.inputs["steps"]["approval"]["status"] == "skipped"
    await harness.complete(evidence, outputs={"packet_id": "p-2"})

    subject, _ = await harness.finished(run_id)
    assert subject == c.RUN_COMPLETED
    assert _steps(await harness.get_run(run_id))["approval"] == ("skipped", 0)
    assert [s.node_id for s in harness.dispatched(run_id)] == ["gates", "evidence"]
    skipped = harness.events_of(c.STEP_COMPLETED, run_id, node_id="approval")
    assert [e["status"] for e in skipped] == ["skipped"]


async def test_a_denying_gate_records_evidence_and_fails_the_run(harness: Harness) -> None:
    run = await harness.start_run("standard-promotion", template_version=1, inputs=_promotion_inputs())
    run_id = run["id"]

    gates = await harness.dispatch(run_id, "gates")
    await harness.complete(gates, ok=False, outputs={"result": "deny", "reasons": ["frozen"]}, error="gate denied")
    await harness.complete(await harness.dispatch(run_id, "evidence"), outputs={"packet_id": "p-3"})

    subject, failed = await harness.finished(run_id)
    assert (subject, failed["status"]) == (c.RUN_FAILED, "failed")
    assert "gates" in failed["error"]
    final = await harness.get_run(run_id)
    assert _steps(final) == {"gates": ("failed", 1), "approval": ("skipped", 0), "evidence": ("succeeded", 1)}
    assert harness.events_of(c.STEP_FAILED, run_id, node_id="gates")[0]["will_retry"] is False


async def test_parallel_branches_are_dispatched_together_and_joined_once(harness: Harness) -> None:
    saved = await harness.save_template(
        "fan-out",
        [
            {"id": "start", "type": "gate"},
            {"id": "left", "type": "gate"},
            {"id": "right", "type": "evidence"},
            {"id": "join", "type": "gate"},
        ],
        [("start", "left"), ("start", "right"), ("left", "join"), ("right", "join")],
    )
    assert saved.ok, saved.error
    run_id = (await harness.start_run("fan-out"))["id"]
    start = await harness.dispatch(run_id, "start")
    result = harness.result(start)
    await harness.client.send(c.COMPLETE_STEP, result)

    left = await harness.dispatch(run_id, "left")
    right = await harness.dispatch(run_id, "right")
    # Both branches left in the transaction that recorded the first step's result.
    assert left.causation_id == right.causation_id == result.message_id
    assert _steps(await harness.get_run(run_id))["join"] == ("pending", 0)

    await asyncio.gather(harness.complete(left), harness.complete(right))
    await harness.complete(await harness.dispatch(run_id, "join"))
    subject, _ = await harness.finished(run_id)
    assert subject == c.RUN_COMPLETED
    assert Counter(s.node_id for s in harness.dispatched(run_id)) == {"start": 1, "left": 1, "right": 1, "join": 1}


async def test_retries_count_attempts_and_wait_for_their_backoff(harness: Harness) -> None:
    saved = await harness.save_template(
        "flaky", [{"id": "probe", "type": "gate", "retry": {"max_attempts": 3, "backoff_s": 0.4}}]
    )
    assert saved.ok, saved.error
    run_id = (await harness.start_run("flaky"))["id"]

    first = await harness.dispatch(run_id, "probe", 1)
    await harness.complete(first, ok=False, error="registry timeout", logs="connecting...")
    second = await harness.dispatch(run_id, "probe", 2)
    await harness.complete(second, ok=False, error="registry timeout")
    third = await harness.dispatch(run_id, "probe", 3)
    assert len({first.message_id, second.message_id, third.message_id}) == 3
    await harness.complete(third, outputs={"ok": True}, logs="done")

    subject, _ = await harness.finished(run_id)
    assert subject == c.RUN_COMPLETED
    failures = harness.events_of(c.STEP_FAILED, run_id)
    assert [(f["attempt"], f["will_retry"]) for f in failures] == [(1, True), (2, True)]
    # Attempt k + 1 starts backoff_s * k after attempt k failed, and the timer wakes promptly then.
    for failure, retry, backoff in ((failures[0], second, 0.4), (failures[1], third, 0.8)):
        waited = retry.occurred_at - at(failure["occurred_at"])
        assert timedelta(seconds=backoff) <= waited < timedelta(seconds=backoff + 5)
    final = await harness.get_run(run_id)
    [step] = final["steps"]
    assert (step["status"], step["attempt_number"], step["outputs"]) == ("succeeded", 3, {"ok": True})
    assert step["logs"] == "[attempt 1]\nconnecting...\n[attempt 3]\ndone\n"


async def test_a_step_timeout_fails_the_attempt_and_retries_it(harness: Harness) -> None:
    saved = await harness.save_template(
        "slow", [{"id": "probe", "type": "gate", "timeout_s": 0.5, "retry": {"max_attempts": 2, "backoff_s": 0}}]
    )
    assert saved.ok, saved.error
    run_id = (await harness.start_run("slow"))["id"]

    first = await harness.dispatch(run_id, "probe", 1)
    second = await harness.dispatch(run_id, "probe", 2)
    timed_out = harness.events_of(c.STEP_FAILED, run_id, attempt=1)[0]
    assert timed_out["error"] == "timed out after 0.5s"
    assert timed_out["will_retry"] is True
    assert second.occurred_at - first.occurred_at >= timedelta(seconds=0.5)

    late = await harness.client.command(c.COMPLETE_STEP, harness.result(first, outputs={"late": True}))
    assert late.ok, late.error
    assert late.data["applied"] is False

    subject, failed = await harness.finished(run_id)
    assert (subject, failed["status"]) == (c.RUN_FAILED, "failed")
    [step] = (await harness.get_run(run_id))["steps"]
    assert (step["status"], step["attempt_number"], step["error"]) == ("failed", 2, "timed out after 0.5s")
    assert step["outputs"] == {}


async def test_a_wait_step_completes_by_its_timer(harness: Harness) -> None:
    saved = await harness.save_template(
        "cooldown",
        [{"id": "pause", "type": "wait", "config": {"seconds": 0.5}}, {"id": "check", "type": "gate"}],
        [("pause", "check")],
    )
    assert saved.ok, saved.error
    run = await harness.start_run("cooldown")
    assert _steps(run)["pause"] == ("waiting", 1)

    check = await harness.dispatch(run["id"], "check")

    paused = harness.events_of(c.STEP_STARTED, run["id"], node_id="pause")[0]
    assert check.occurred_at - at(paused["occurred_at"]) >= timedelta(seconds=0.5)
    assert harness.events_of(c.STEP_COMPLETED, run["id"], node_id="pause")[0]["status"] == "succeeded"
    assert [s.node_id for s in harness.dispatched(run["id"])] == ["check"]


async def test_a_notify_step_without_an_integration_is_refused_when_the_template_is_saved(harness: Harness) -> None:
    reply = await harness.save_template("notify-only", [{"id": "ping", "type": "notify", "timeout_s": 30}])

    assert not reply.ok
    assert (reply.error.status, reply.error.code) == (400, "WF_INVALID_STEP_CONFIG")
    assert "needs config.integration" in reply.error.detail
    missing = await harness.query(c.GET_TEMPLATE, c.GetTemplate, name="notify-only")
    assert missing.error.status == 404


async def _redeliver(harness: Harness, subject: str, command: c.CompleteStep) -> Reply:
    """Publish ``command`` again under a new stream id, as a resend after the duplicate window would arrive."""
    inbox = harness.nats.new_inbox()
    reply = await harness.nats.subscribe(inbox, max_msgs=1)
    await harness.nats.jetstream().publish(
        harness.names.subject(subject),
        command.model_dump_json().encode(),
        headers={HEADER_MSG_ID: str(uuid.uuid4()), HEADER_REPLY_TO: inbox},
    )
    msg = await reply.next_msg(timeout=10)
    return Reply.model_validate_json(msg.data)


async def test_a_duplicate_result_has_one_effect(harness: Harness) -> None:
    run_id = (await harness.start_run("standard-promotion", template_version=1, inputs=_promotion_inputs()))["id"]
    gates = await harness.dispatch(run_id, "gates")
    result = harness.result(gates, outputs={"result": "allow"})

    first = await harness.client.command(c.COMPLETE_STEP, result)
    await harness.client.send(c.COMPLETE_STEP, result)  # dropped by the stream's duplicate window
    redelivered = await _redeliver(harness, c.COMPLETE_STEP, result)  # absorbed by the inbox
    resent = await harness.client.command(c.COMPLETE_STEP, harness.result(gates, outputs={"result": "deny"}))

    assert first.data["applied"] is True
    assert redelivered == first
    assert resent.ok, resent.error
    assert resent.data["applied"] is False
    await harness.dispatch(run_id, "approval")
    run = await harness.get_run(run_id)
    assert run["steps"][0]["outputs"] == {"result": "allow"}
    assert len(harness.events_of(c.STEP_COMPLETED, run_id, node_id="gates")) == 1
    assert Counter(s.node_id for s in await harness.stored_dispatches()) == {"gates": 1, "approval": 1}


async def test_starting_the_same_run_twice_starts_one_run(harness: Harness) -> None:
    run_id = uuid.uuid4()
    inputs = _promotion_inputs()

    first = await harness.start_run("standard-promotion", template_version=1, run_id=run_id, inputs=inputs)
    second = await harness.start_run("standard-promotion", template_version=1, run_id=run_id, inputs=inputs)
    await harness.dispatch(run_id, "gates")

    assert first["id"] == second["id"] == str(run_id)
    assert second["steps"] == first["steps"]
    assert len(harness.events_of(c.RUN_STARTED, run_id)) == 1
    assert [s.node_id for s in harness.dispatched(run_id)] == ["gates"]
    clash = await harness.command(c.START_RUN, c.StartRun, template_name="other", run_id=run_id)
    assert (clash.error.code, clash.error.status) == ("WF_RUN_CONFLICT", 409)


async def test_bad_run_requests_are_specific_errors(harness: Harness) -> None:
    unknown = await harness.command(c.START_RUN, c.StartRun, template_name="nope")
    missing = await harness.command(c.START_RUN, c.StartRun, template_name="standard-promotion", inputs={})
    extra = await harness.command(
        c.START_RUN, c.StartRun, template_name="standard-promotion", inputs={**_promotion_inputs(), "x": 1}
    )
    no_run = await harness.query(c.GET_RUN, c.GetRun, run_id=uuid.uuid4())
    no_result = await harness.command(
        c.COMPLETE_STEP, c.CompleteStep, run_id=uuid.uuid4(), node_id="gates", attempt=1, status="succeeded"
    )

    assert (unknown.error.code, unknown.error.status) == ("WF_TEMPLATE_NOT_FOUND", 404)
    assert (missing.error.code, missing.error.status) == ("WF_MISSING_INPUT", 400)
    assert (extra.error.code, extra.error.status) == ("WF_UNKNOWN_INPUT", 400)
    assert (no_run.error.code, no_run.error.status) == ("WF_RUN_NOT_FOUND", 404)
    assert (no_result.error.code, no_result.error.status) == ("WF_RUN_NOT_FOUND", 404)

    run_id = (await harness.start_run("standard-promotion", template_version=1, inputs=_promotion_inputs()))["id"]
    gates = await harness.dispatch(run_id, "gates")
    early = await harness.client.command(c.COMPLETE_STEP, harness.result(gates.model_copy(update={"attempt": 2})))
    assert (early.error.code, early.error.status) == ("WF_STEP_STATE_CONFLICT", 409)
    running = gates.caused(c.CompleteStep, run_id=gates.run_id, node_id="gates", attempt=1, status=c.StepStatus.RUNNING)
    odd = await harness.client.command(c.COMPLETE_STEP, running)
    assert (odd.error.code, odd.error.status) == ("WF_INVALID_STEP_RESULT", 400)
    hidden = await harness.other_tenant().query(c.GET_RUN, c.GetRun, run_id=run_id)
    assert hidden.error.code == "WF_RUN_NOT_FOUND"
    assert _steps(await harness.get_run(run_id))["gates"] == ("running", 1)


async def test_cancel_stops_the_run_and_ignores_late_results(harness: Harness) -> None:
    run_id = (await harness.start_run("standard-promotion", template_version=1, inputs=_promotion_inputs()))["id"]
    gates = await harness.dispatch(run_id, "gates")

    cancelled = await harness.command(c.CANCEL_RUN, c.CancelRun, run_id=run_id, reason="promotion cancelled")
    assert cancelled.ok, cancelled.error
    assert cancelled.data["status"] == "cancelled"
    assert {s["status"] for s in cancelled.data["steps"]} == {"cancelled"}
    subject, event = await harness.finished(run_id)
    assert (subject, event["status"], event["error"]) == (c.RUN_FAILED, "cancelled", "promotion cancelled")

    late = await harness.client.command(c.COMPLETE_STEP, harness.result(gates, outputs={"result": "allow"}))
    assert late.data["applied"] is False
    again = await harness.command(c.CANCEL_RUN, c.CancelRun, run_id=run_id)
    assert again.ok, again.error
    assert len(harness.events_of(c.RUN_FAILED, run_id)) == 1
    assert [s.node_id for s in await harness.stored_dispatches()] == ["gates"]
    assert (await harness.get_run(run_id))["status"] == "cancelled"


async def test_a_finished_run_cannot_be_cancelled(harness: Harness) -> None:
    assert (await harness.save_template("single", [{"id": "check", "type": "gate"}])).ok
    run_id = (await harness.start_run("single"))["id"]
    await harness.complete(await harness.dispatch(run_id, "check"))
    await harness.finished(run_id)

    reply = await harness.command(c.CANCEL_RUN, c.CancelRun, run_id=run_id)

    assert (reply.error.code, reply.error.status) == ("WF_RUN_NOT_ACTIVE", 409)


async def test_a_run_keeps_the_template_version_it_started_with(harness: Harness) -> None:
    assert (await harness.save_template("evolving", [{"id": "old", "type": "gate"}])).ok
    run_id = (await harness.start_run("evolving"))["id"]
    old = await harness.dispatch(run_id, "old")
    assert (await harness.save_template("evolving", [{"id": "new", "type": "evidence"}])).data["version"] == 2

    await harness.complete(old)

    subject, _ = await harness.finished(run_id)
    assert subject == c.RUN_COMPLETED
    run = await harness.get_run(run_id)
    assert (run["template_version"], [s["node_id"] for s in run["steps"]]) == (1, ["old"])
    newer = await harness.start_run("evolving")
    assert (newer["template_version"], [s["node_id"] for s in newer["steps"]]) == (2, ["new"])


async def test_two_replicas_advance_a_run_once_when_parallel_results_arrive_together(
    harness: Harness, deployment: Deployment
) -> None:
    await deployment.start()  # a second replica sharing the database and the command consumer
    saved = await harness.save_template(
        "diamond",
        [{"id": f"b{i}", "type": "gate"} for i in range(6)] + [{"id": "join", "type": "evidence"}],
        [(f"b{i}", "join") for i in range(6)],
    )
    assert saved.ok, saved.error
    run_id = (await harness.start_run("diamond"))["id"]
    branches = [await harness.dispatch(run_id, f"b{i}") for i in range(6)]

    await asyncio.gather(*(harness.complete(step) for step in branches))
    await harness.complete(await harness.dispatch(run_id, "join"))

    subject, _ = await harness.finished(run_id)
    assert subject == c.RUN_COMPLETED
    assert len(harness.events_of(c.RUN_COMPLETED, run_id)) == 1
    assert Counter(s.node_id for s in await harness.stored_dispatches()) == {
        **{f"b{i}": 1 for i in range(6)},
        "join": 1,
    }


async def test_a_run_that_cannot_start_is_announced_as_failed(harness: Harness) -> None:
    """The promotion service starts runs through its outbox and never sees the reply: the refusal is an event."""
    saved = await harness.save_template("plain", [{"id": "wait", "type": "wait", "config": {"seconds": 1}}])
    assert saved.ok, saved.error
    subject_id = uuid.uuid4()
    run_id = uuid.uuid4()
    reply = await harness.command(
        c.START_RUN,
        c.StartRun,
        template_name="plain",
        run_id=run_id,
        subject_id=subject_id,
        inputs={"promotion_id": str(subject_id)},
    )
    assert (reply.error.code, reply.error.status) == ("WF_UNKNOWN_INPUT", 400)
    failed = await harness.event(c.RUN_FAILED, run_id)
    assert failed["subject_id"] == str(subject_id)
    assert failed["status"] == "failed"
    assert "could not start" in failed["error"] and "promotion_id" in failed["error"]
    other_run = uuid.uuid4()
    missing = await harness.command(
        c.START_RUN, c.StartRun, template_name="nope", run_id=other_run, subject_id=subject_id
    )
    assert missing.error.code == "WF_TEMPLATE_NOT_FOUND"
    assert "could not start" in (await harness.event(c.RUN_FAILED, other_run))["error"]


async def test_a_promotion_template_must_declare_what_a_promotion_run_starts_with(harness: Harness) -> None:
    nodes = [{"id": "gates", "type": "gate"}, {"id": "approval", "type": "approval"}]
    refused = await harness.save_template("custom-promotion", nodes, [("gates", "approval")], inputs={})
    assert (refused.error.code, refused.error.status) == ("WF_PROMOTION_TEMPLATE_INCOMPLETE", 400)
    assert "promotion_id" in refused.error.detail
    inputs = {name: {"required": False} for name in c.PROMOTION_RUN_INPUTS}
    backwards = await harness.save_template("custom-promotion", nodes, [("approval", "gates")], inputs=inputs)
    assert backwards.error.code == "WF_PROMOTION_TEMPLATE_INCOMPLETE"
    assert "does not run after a gate step" in backwards.error.detail
    accepted = await harness.save_template("custom-promotion", nodes, [("gates", "approval")], inputs=inputs)
    assert accepted.ok, accepted.error
    # A template without promotion steps is no promotion template and declares what it likes.
    assert (await harness.save_template("chores", [{"id": "wait", "type": "wait", "config": {"seconds": 1}}])).ok


async def test_a_runs_end_names_the_deployment_jobs_its_deploy_steps_reported(harness: Harness) -> None:
    """The run's end says which deployment jobs its deploy steps started, whether it succeeds or fails after them:
    the promotion service learns a job exists even when the job's own events come later."""
    job = uuid.uuid4()
    ok = await harness.start_run(
        "standard-promotion", template_version=2, inputs=_promotion_inputs(approval_required=False)
    )
    await harness.complete(await harness.dispatch(ok["id"], "gates"), outputs={"result": "allow"})
    deploy = await harness.dispatch(ok["id"], "deploy")
    await harness.complete(deploy, outputs={"job_id": str(job), "outcome": "succeeded", "target_count": 0})
    await harness.complete(await harness.dispatch(ok["id"], "health-check"), outputs={"job_id": str(uuid.uuid4())})
    await harness.complete(await harness.dispatch(ok["id"], "evidence"), outputs={"packet_id": "p-9"})
    subject, done = await harness.finished(ok["id"])
    assert (subject, done["deployment_jobs"]) == (c.RUN_COMPLETED, [str(job)])  # the health check's job is not one

    failed = await harness.start_run(
        "standard-promotion", template_version=2, inputs=_promotion_inputs(approval_required=False)
    )
    await harness.complete(await harness.dispatch(failed["id"], "gates"), outputs={"result": "allow"})
    deploy = await harness.dispatch(failed["id"], "deploy")
    await harness.complete(deploy, ok=False, outputs={"job_id": str(job), "outcome": "failed"}, error="job failed")
    await harness.complete(await harness.dispatch(failed["id"], "evidence"), outputs={"packet_id": "p-10"})
    subject, done = await harness.finished(failed["id"])
    assert (subject, done["deployment_jobs"]) == (c.RUN_FAILED, [str(job)])

    # A deploy step that failed before any job (the deployment service refused the step) names none.
    refused = await harness.start_run(
        "standard-promotion", template_version=2, inputs=_promotion_inputs(approval_required=False)
    )
    await harness.complete(await harness.dispatch(refused["id"], "gates"), outputs={"result": "allow"})
    deploy = await harness.dispatch(refused["id"], "deploy")
    await harness.complete(deploy, ok=False, outputs={"result": "error", "code": "DEPLOY_INVALID_STEP"}, error="no")
    await harness.complete(await harness.dispatch(refused["id"], "evidence"), outputs={"packet_id": "p-11"})
    subject, done = await harness.finished(refused["id"])
    assert (subject, done["deployment_jobs"]) == (c.RUN_FAILED, [])
