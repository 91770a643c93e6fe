"""Promotions against the real release service; the test plays the workflow's gate step."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from stella.contracts import approval as a
from stella.contracts import promotion as c
from stella.contracts import release as r
from stella.contracts import workflow as w
from stella.contracts.envelope import ErrorDetail, Reply
from stella.promotion.decision import decide
from stella.promotion.domain.encoding import sha256_digest
from stella.testing.messaging import collect_messages

from .conftest import Caller, Stack, digest, first_match, job_completed, job_started, payload, publish_event


async def _environment(caller: Caller, name: str, order: int, **fields: Any) -> dict[str, Any]:
    reply = await caller.command(c.CREATE_ENVIRONMENT, c.CreateEnvironment, name=name, order_index=order, **fields)
    assert reply.ok, reply.error
    return reply.data


async def _request(caller: Caller, release: dict[str, Any], env: dict[str, Any], **fields: Any) -> dict[str, Any]:
    reply = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=env["id"], **fields
    )
    assert reply.ok, reply.error
    return reply.data


async def _freeze(caller: Caller, env: dict[str, Any], start: datetime, end: datetime, **fields: Any) -> dict:
    reply = await caller.command(
        c.ADD_FREEZE_WINDOW,
        c.AddFreezeWindow,
        environment_id=env["id"],
        window={"kind": "deny", "start": start, "end": end, **fields},
    )
    assert reply.ok, reply.error
    return reply.data


async def _evaluate(caller: Caller, promotion: dict[str, Any]) -> dict[str, Any]:
    """Run the promotion's gate step as the workflow would, and return the promotion afterwards."""
    reply = await caller.client.command(c.EVALUATE_GATES, caller.gate_step(promotion))
    assert reply.ok, reply.error
    return await _get(caller, promotion["id"])


async def _get(caller: Caller, promotion_id: str) -> dict[str, Any]:
    reply = await caller.query(c.GET_PROMOTION, c.GetPromotion, promotion_id=promotion_id)
    assert reply.ok, reply.error
    return reply.data


def _completion_of(promotion: dict[str, Any]):
    return lambda body: body.get("run_id") == promotion["workflow_run_id"] and body.get("node_id") == "gates"


def template_view(name: str, *, approval: bool = True, inputs: Any = None) -> dict[str, Any]:
    """A workflow template as the workflow service answers GET_TEMPLATE."""
    nodes = [{"id": "gates", "type": "gate"}] + ([{"id": "approval", "type": "approval"}] if approval else [])
    return w.TemplateView(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        name=name,
        version=1,
        nodes=nodes,
        edges=[{"from": "gates", "to": "approval"}] if approval else [],
        inputs=inputs if inputs is not None else {n: {"required": False} for n in w.PROMOTION_RUN_INPUTS},
        outputs={},
        is_builtin=False,
        created_at=datetime.now(UTC),
    ).model_dump(mode="json", by_alias=True)


async def answer_templates(stack: Stack, nats: Any, templates: dict[str, dict[str, Any]]) -> Any:
    """Play the workflow service's GET_TEMPLATE for ``templates`` (404 for any other name)."""

    async def respond(msg: Any) -> None:
        name = json.loads(msg.data)["name"]
        if name in templates:
            reply = Reply.success(templates[name])
        else:
            reply = Reply.failure(ErrorDetail(code="WF_TEMPLATE_NOT_FOUND", status=404, title="not found"))
        await msg.respond(reply.model_dump_json().encode())

    return await nats.subscribe(stack.wire(w.GET_TEMPLATE), cb=respond)


async def test_a_request_checks_readiness_and_order_and_starts_the_run(caller: Caller, stack: Stack, nats) -> None:
    await answer_templates(stack, nats, {"careful-promotion": template_view("careful-promotion")})
    dev = await _environment(caller, "dev", 0)
    staging = await _environment(caller, "staging", 1, required_approvals=2, require_sod=True)
    prod = await _environment(caller, "prod", 2, promotion_policy={"workflow_template": "careful-promotion"})

    component = await caller.command(
        r.CREATE_COMPONENT,
        r.CreateComponent,
        name="api",
        image_repository="registry.invalid/api",
        versioning_strategy={"resolve": "version-map"},
    )
    assert component.ok, component.error
    draft = await caller.command(
        r.CREATE_RELEASE, r.CreateRelease, name="draft", components=[{"component": "api", "digest": digest("f")}]
    )
    assert draft.ok, draft.error
    not_ready = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=draft.data["id"], target_environment_id=dev["id"]
    )
    assert (not_ready.error.code, not_ready.error.status) == ("PROM_RELEASE_NOT_READY", 422)

    release = await caller.ready_release("shop", digest("a"), digest("b"))
    too_early = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=prod["id"]
    )
    assert (too_early.error.code, too_early.error.status) == ("PROM_ORDER_VIOLATION", 422)
    assert "'staging'" in too_early.error.detail and "'prod'" in too_early.error.detail
    unknown = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=uuid.uuid4(), target_environment_id=dev["id"]
    )
    assert (unknown.error.code, unknown.error.status) == ("REL_RELEASE_NOT_FOUND", 404)
    foreign = await caller.other_tenant().command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=dev["id"]
    )
    assert foreign.error.status == 404
    assert await stack.table_count("promotions") == 0

    async with (
        collect_messages(nats.jetstream(), stack.wire(c.PROMOTION_REQUESTED)) as requested,
        collect_messages(nats.jetstream(), stack.wire(w.START_RUN)) as starts,
    ):
        promotion = await _request(
            caller, release, dev, reason="weekly release", actor_name="alice", actor_display_name="Alice Example"
        )
        event = c.PromotionChanged.model_validate_json((await requested.wait(1))[0].data)
        start = w.StartRun.model_validate_json((await starts.wait(1))[0].data)

    assert promotion["status"] == "pending_gate"
    assert promotion["target_environment_name"] == "dev" and promotion["reason"] == "weekly release"
    assert promotion["requested_by"] == str(caller.actor_id)
    # The requester's name and display name travel with the request and are kept with the promotion.
    assert (promotion["requested_by_name"], promotion["requested_by_display_name"]) == ("alice", "Alice Example")
    stored = await _get(caller, promotion["id"])
    assert (stored["requested_by_name"], stored["requested_by_display_name"]) == ("alice", "Alice Example")
    assert [comp["digest"] for comp in promotion["release_components"]] == [digest("a"), digest("b")]
    assert event.promotion.id == uuid.UUID(promotion["id"])
    assert (start.run_id, start.subject_id, start.template_name) == (
        uuid.UUID(promotion["workflow_run_id"]),
        uuid.UUID(promotion["id"]),
        "standard-promotion",
    )
    assert start.inputs == {
        "promotion_id": promotion["id"],
        "release_id": release["id"],
        "environment_id": dev["id"],
        "requested_by": str(caller.actor_id),
        "approval_required": False,
        "required_approvals": 0,
        "require_sod": False,
        "approver_groups": [],
        "approval_timeout_s": 7 * 24 * 3600,
    }
    duplicate = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=dev["id"]
    )
    assert (duplicate.error.code, duplicate.error.status) == ("PROM_ALREADY_ACTIVE", 409)
    still_early = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=staging["id"]
    )
    assert (still_early.error.code, still_early.error.status) == ("PROM_ORDER_VIOLATION", 422)

    approved = await _evaluate(caller, promotion)
    assert approved["status"] == "approved"
    # Approved is not reached yet: the release counts as in dev once its deployment there ended.
    not_deployed = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=staging["id"]
    )
    assert (not_deployed.error.code, not_deployed.error.status) == ("PROM_ORDER_VIOLATION", 422)
    assert (await deploy(caller, stack, approved))["status"] == "deployed"
    to_staging = await _request(caller, release, staging, source_environment_id=dev["id"])
    assert to_staging["status"] == "pending_gate"


async def deploy(caller: Caller, stack: Stack, promotion: dict[str, Any], outcome: str = "succeeded") -> dict:
    """Play the deployment service: the promotion's job starts and ends with ``outcome``; the promotion after."""
    job = uuid.uuid4()
    subject = c.PROMOTION_COMPLETED if outcome == "succeeded" else c.PROMOTION_FAILED
    async with collect_messages(stack.nats.jetstream(), stack.wire(subject)) as ended:
        await publish_event(stack, "stella.evt.deployment.job_started", job_started(caller, promotion, job))
        await publish_event(
            stack, "stella.evt.deployment.job_completed", job_completed(caller, promotion, job, outcome)
        )
        await first_match(ended, lambda body: body["promotion"]["id"] == promotion["id"])
    return await _get(caller, promotion["id"])


async def test_an_unanswered_release_query_is_a_clear_503_and_stores_nothing(caller: Caller, stack: Stack) -> None:
    dev = await _environment(caller, "dev", 0)
    release = await caller.ready_release("shop")
    await stack.stop(stack.release)
    reply = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=dev["id"]
    )
    assert (reply.error.code, reply.error.status) == ("PROM_RELEASE_SERVICE_UNAVAILABLE", 503)
    assert "release service" in reply.error.detail
    assert await stack.table_count("promotions") == 0
    assert await stack.table_count("outbox") == 1  # environment_created only


async def test_gates_approve_a_promotion_that_needs_no_approvals(caller: Caller, stack: Stack, nats) -> None:
    rules = [{"name": "has-reason", "expr": 'promotion.reason != ""', "message": "say why"}]
    dev = await _environment(
        caller, "dev", 0, config={"gates": [{"type": "policy", "name": "rules", "config": {"rules": rules}}]}
    )
    release = await caller.ready_release("shop")
    promotion = await _request(caller, release, dev, reason="ship it")
    async with (
        collect_messages(nats.jetstream(), stack.wire(w.COMPLETE_STEP)) as completions,
        collect_messages(nats.jetstream(), stack.wire(c.PROMOTION_APPROVED)) as approved,
    ):
        after = await _evaluate(caller, promotion)
        done = await first_match(completions, _completion_of(promotion))
        event = payload((await approved.wait(1))[0])

    assert after["status"] == "approved"
    record = after["decision_record"]
    assert record["result"] == "allow" and record["reasons"] == []
    assert [(g["type"], g["status"]) for g in record["gates"]] == [("freeze-window", "pass"), ("policy", "pass")]
    assert record["approvals"] == []
    assert done["status"] == "succeeded" and done["attempt"] == 1
    assert done["outputs"] == {"result": "allow", "decision_hash": sha256_digest(record)}
    assert event["promotion"]["status"] == "approved"
    # The event carries the decision's inputs: they replay to its record (inputs_hash included).
    decision = await caller.query(c.GET_DECISION, c.GetDecision, promotion_id=promotion["id"])
    assert event["decision_inputs"] == decision.data["inputs"]
    assert decide(event["decision_inputs"], datetime.fromisoformat(record["evaluated_at"])).to_dict() == record

    # The same attempt delivered again has one effect; a later attempt is answered from the stored decision.
    again = await caller.client.command(c.EVALUATE_GATES, caller.gate_step(promotion, attempt=2))
    assert again.ok and again.data["status"] == "approved"
    assert (await _get(caller, promotion["id"]))["decision_record"] == record


async def test_a_deny_window_holds_the_promotion_until_it_opens(caller: Caller, stack: Stack, nats) -> None:
    prod = await _environment(caller, "prod", 0)
    now = datetime.now(UTC).replace(microsecond=0)
    end = now + timedelta(seconds=3)
    window = await _freeze(caller, prod, now - timedelta(hours=1), end, reason="database maintenance")
    release = await caller.ready_release("shop")
    promotion = await _request(caller, release, prod)
    async with (
        collect_messages(nats.jetstream(), stack.wire(w.COMPLETE_STEP)) as completions,
        collect_messages(nats.jetstream(), stack.wire(c.PROMOTION_APPROVED)) as approved,
    ):
        held = await _evaluate(caller, promotion)
        assert held["status"] == "pending_gate"
        assert held["next_evaluation_at"] == end.isoformat().replace("+00:00", "Z")
        assert held["reason_codes"] == ["GATE_FREEZE_ACTIVE"]
        record = held["decision_record"]
        assert record["result"] == "deny" and record["reasons"] == ["GATE_FREEZE_ACTIVE"]
        [gate] = record["gates"]
        assert gate["status"] == "fail" and "database maintenance" in gate["message"]
        assert gate["details"]["active_window_ids"] == [window["id"]]
        assert completions.messages == []  # the step stays open while the promotion is held

        # When the window closes the hold timer decides again and completes the step.
        done = await first_match(completions, _completion_of(promotion), timeout=20)
        await approved.wait(1, timeout=20)
    assert done["status"] == "succeeded"
    after = await _get(caller, promotion["id"])
    assert after["status"] == "approved" and after["next_evaluation_at"] is None
    assert after["decision_record"]["result"] == "allow"
    decision = await caller.query(c.GET_DECISION, c.GetDecision, promotion_id=promotion["id"])
    assert decision.data["trigger"] == "hold" and decision.data["record"] == after["decision_record"]


async def test_a_deny_window_rejects_when_the_environment_says_so(caller: Caller, stack: Stack, nats) -> None:
    prod = await _environment(caller, "prod", 0, config={"freeze_behavior": "reject"})
    now = datetime.now(UTC)
    await _freeze(caller, prod, now - timedelta(hours=1), now + timedelta(hours=1), reason="end-of-year freeze")
    release = await caller.ready_release("shop")
    promotion = await _request(caller, release, prod)
    async with (
        collect_messages(nats.jetstream(), stack.wire(w.COMPLETE_STEP)) as completions,
        collect_messages(nats.jetstream(), stack.wire(c.PROMOTION_REJECTED)) as rejected,
    ):
        after = await _evaluate(caller, promotion)
        done = await first_match(completions, _completion_of(promotion))
        event = payload((await rejected.wait(1))[0])
    assert after["status"] == "rejected"
    assert "end-of-year freeze" in after["decision_record"]["gates"][0]["message"]
    record = after["decision_record"]
    assert decide(event["decision_inputs"], datetime.fromisoformat(record["evaluated_at"])).to_dict() == record
    assert done["status"] == "failed"
    assert done["outputs"] == {"result": "deny", "reasons": ["GATE_FREEZE_ACTIVE"]}
    assert "GATE_FREEZE_ACTIVE" in done["error"]


async def test_an_exception_principal_overrides_a_freeze(caller: Caller, stack: Stack, nats) -> None:
    prod = await _environment(caller, "prod", 0)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    await _freeze(
        caller, prod, now - timedelta(hours=1), now + timedelta(hours=6), reason="release freeze", exceptions=[alice]
    )
    release = await caller.ready_release("shop")
    promotion = await _request(caller, release, prod)
    held = await _evaluate(caller, promotion)
    assert held["status"] == "pending_gate"

    refused = await caller.acting_as(bob).command(
        c.OVERRIDE_FREEZE, c.OverrideFreeze, promotion_id=promotion["id"], reason="hotfix"
    )
    assert (refused.error.code, refused.error.status) == ("GATE_FREEZE_OVERRIDE_FORBIDDEN", 422)
    assert (await _get(caller, promotion["id"]))["freeze_override"] is None

    async with collect_messages(nats.jetstream(), stack.wire(w.COMPLETE_STEP)) as completions:
        overridden = await caller.acting_as(alice).command(
            c.OVERRIDE_FREEZE, c.OverrideFreeze, promotion_id=promotion["id"], reason="CVE-2026-0001 hotfix"
        )
        assert overridden.ok, overridden.error
        done = await first_match(completions, _completion_of(promotion))
    view = overridden.data
    assert view["status"] == "approved" and done["status"] == "succeeded"
    assert view["freeze_override"]["principal"] == str(alice)
    [gate] = view["decision_record"]["gates"]
    assert gate["status"] == "overridden"
    assert gate["details"]["override"]["reason"] == "CVE-2026-0001 hotfix"
    assert view["decision_record"]["reasons"] == ["GATE_FREEZE_OVERRIDDEN"]

    late = await caller.acting_as(alice).command(
        c.OVERRIDE_FREEZE, c.OverrideFreeze, promotion_id=promotion["id"], reason="again"
    )
    assert (late.error.code, late.error.status) == ("PROM_NOT_PENDING", 409)

    # Holding freeze:override is enough; with no window closing the environment there is nothing to override.
    assert (await deploy(caller, stack, view))["status"] == "deployed"
    staging = await _environment(caller, "staging", 1)
    second = await _request(caller, release, staging)
    nothing = await caller.acting_as(bob).command(
        c.OVERRIDE_FREEZE, c.OverrideFreeze, promotion_id=second["id"], reason="x", may_override=True
    )
    assert (nothing.error.code, nothing.error.status) == ("GATE_NOT_FROZEN", 409)


async def test_security_gate_applies_the_environments_thresholds(caller: Caller, stack: Stack) -> None:
    gates = [{"type": "security", "name": "scan", "config": {"max_critical": 0, "max_high": 1, "max_medium": 10}}]
    dev = await _environment(caller, "dev", 0, config={"gates": gates})
    release = await caller.ready_release("shop", digest("a"), digest("b"))

    unscanned = await _evaluate(caller, await _request(caller, release, dev))
    assert unscanned["status"] == "rejected"
    assert unscanned["decision_record"]["reasons"] == ["GATE_SECURITY_SCAN_MISSING"]

    scanned_at = datetime.now(UTC) - timedelta(minutes=5)
    for value, high in ((digest("a"), 0), (digest("b"), 2)):
        recorded = await caller.command(
            c.RECORD_SCAN_RESULT,
            c.RecordScanResult,
            digest=value,
            critical=0,
            high=high,
            medium=3,
            scanner="trivy",
            scanned_at=scanned_at,
        )
        assert recorded.ok and recorded.data["high"] == high
    too_high = await _evaluate(caller, await _request(caller, release, dev))
    assert too_high["status"] == "rejected"
    gate = too_high["decision_record"]["gates"][1]
    assert (gate["type"], gate["status"], gate["reason_codes"]) == ("security", "fail", ["GATE_SECURITY_HIGH"])
    assert gate["details"]["digests"][digest("b")]["scan"]["high"] == 2

    stale = await caller.command(
        c.RECORD_SCAN_RESULT,
        c.RecordScanResult,
        digest=digest("b"),
        critical=0,
        high=0,
        medium=0,
        scanned_at=scanned_at - timedelta(days=1),
    )
    assert stale.ok and stale.data["high"] == 2  # an older scan does not replace the latest verdict
    fixed = await caller.command(
        c.RECORD_SCAN_RESULT, c.RecordScanResult, digest=digest("b"), critical=0, high=1, medium=10
    )
    assert fixed.data["high"] == 1
    within = await _evaluate(caller, await _request(caller, release, dev))
    assert within["status"] == "approved"
    assert [g["status"] for g in within["decision_record"]["gates"]] == ["pass", "pass"]
    # Another tenant's scans are not this tenant's evidence.
    other = caller.other_tenant()
    assert (
        await other.command(c.RECORD_SCAN_RESULT, c.RecordScanResult, digest=digest("c"), critical=9, high=0, medium=0)
    ).ok


async def test_cancel_closes_the_run_and_the_approval_request(caller: Caller, stack: Stack, nats) -> None:
    dev = await _environment(caller, "dev", 0)
    release = await caller.ready_release("shop")
    promotion = await _request(caller, release, dev)
    async with (
        collect_messages(nats.jetstream(), stack.wire(w.CANCEL_RUN)) as cancel_runs,
        collect_messages(nats.jetstream(), stack.wire(a.CANCEL_APPROVALS)) as cancel_approvals,
        collect_messages(nats.jetstream(), stack.wire(c.PROMOTION_CANCELLED)) as cancelled,
    ):
        reply = await caller.command(c.CANCEL_PROMOTION, c.CancelPromotion, promotion_id=promotion["id"], reason="typo")
        assert reply.ok, reply.error
        run = payload((await cancel_runs.wait(1))[0])
        approvals = payload((await cancel_approvals.wait(1))[0])
        await cancelled.wait(1)
    assert reply.data["status"] == "cancelled" and reply.data["status_message"] == "typo"
    assert run["run_id"] == promotion["workflow_run_id"] and run["reason"] == "typo"
    assert approvals["promotion_id"] == promotion["id"]

    twice = await caller.command(c.CANCEL_PROMOTION, c.CancelPromotion, promotion_id=promotion["id"])
    assert (twice.error.code, twice.error.status) == ("PROM_ALREADY_TERMINAL", 409)
    # A gate step that arrives after the cancel fails: nothing is evaluated.
    step = await caller.client.command(c.EVALUATE_GATES, caller.gate_step(promotion))
    assert step.ok and step.data["status"] == "cancelled"

    # Approved is before deploying: it may still be cancelled (reference §3), and the cancel is recorded.
    approved = await _evaluate(caller, await _request(caller, release, dev))
    assert approved["status"] == "approved"
    after_approve = await caller.command(c.CANCEL_PROMOTION, c.CancelPromotion, promotion_id=approved["id"])
    assert after_approve.ok, after_approve.error
    assert (await _get(caller, approved["id"]))["status"] == "cancelled"
    unknown = await caller.command(c.CANCEL_PROMOTION, c.CancelPromotion, promotion_id=uuid.uuid4())
    assert (unknown.error.code, unknown.error.status) == ("PROM_NOT_FOUND", 404)


async def test_every_stored_decision_replays_to_the_same_bytes(caller: Caller, stack: Stack) -> None:
    rules = [{"name": "small", "expr": "size(release.components) <= 3", "message": "too many images"}]
    gates = [
        {"type": "security", "name": "scan"},
        {"type": "policy", "name": "rules", "config": {"rules": rules}},
    ]
    dev = await _environment(caller, "dev", 0, config={"gates": gates, "variables": {"TIER": "gold"}})
    now = datetime.now(UTC)
    await caller.command(
        c.ADD_FREEZE_WINDOW,
        c.AddFreezeWindow,
        environment_id=dev["id"],
        window={
            "kind": "allow",
            "rrule": "FREQ=DAILY",
            "start": now - timedelta(hours=1),
            "duration_s": 7200,
            "timezone": "America/New_York",
            "reason": "business hours",
        },
    )
    await caller.command(
        c.RECORD_SCAN_RESULT, c.RecordScanResult, digest=digest("a"), critical=0, high=0, medium=1, max_epss=0.125
    )
    release = await caller.ready_release("shop", digest("a"))
    promotion = await _evaluate(caller, await _request(caller, release, dev))
    assert promotion["status"] == "approved"
    assert [g["type"] for g in promotion["decision_record"]["gates"]] == [
        "freeze-window",
        "policy",
        "schedule",
        "security",
    ]

    async with stack.promotion.runtime.pool.acquire() as conn:
        rows = await conn.fetch("SELECT inputs, clock, record, record_json FROM decisions")
    assert len(rows) == 1
    for row in rows:
        replayed = decide(row["inputs"], row["clock"])
        assert replayed.to_json().decode() == row["record_json"]
        assert replayed.to_dict() == row["record"] == promotion["decision_record"]
    view = await caller.query(c.GET_DECISION, c.GetDecision, promotion_id=promotion["id"])
    assert view.data["inputs"] == rows[0]["inputs"]
    assert view.data["inputs"]["environment"]["config"]["variables"] == {"TIER": "gold"}
    assert (
        decide(view.data["inputs"], datetime.fromisoformat(view.data["evaluated_at"])).to_dict() == view.data["record"]
    )


async def test_lists_filter_and_paginate_newest_first(caller: Caller, stack: Stack) -> None:
    dev = await _environment(caller, "dev", 0)
    qa = await _environment(caller, "qa", 0)
    releases = [await caller.ready_release(f"r{i}") for i in range(3)]
    made = [await _request(caller, rel, env) for rel in releases for env in (dev, qa)]
    await _evaluate(caller, made[0])

    seen: list[str] = []
    token = None
    while True:
        page = await caller.query(c.LIST_PROMOTIONS, c.ListPromotions, page={"page_size": 4, "page_token": token})
        seen += [p["id"] for p in page.data["items"]]
        token = page.data["next_page_token"]
        if token is None:
            break
    assert seen == [p["id"] for p in reversed(made)]
    by_env = await caller.query(c.LIST_PROMOTIONS, c.ListPromotions, environment_id=qa["id"])
    assert {p["target_environment_id"] for p in by_env.data["items"]} == {qa["id"]}
    by_release = await caller.query(c.LIST_PROMOTIONS, c.ListPromotions, release_id=releases[0]["id"])
    assert len(by_release.data["items"]) == 2
    by_status = await caller.query(c.LIST_PROMOTIONS, c.ListPromotions, status="approved")
    assert [p["id"] for p in by_status.data["items"]] == [made[0]["id"]]
    assert (await caller.other_tenant().query(c.LIST_PROMOTIONS, c.ListPromotions)).data["items"] == []
    hidden = await caller.other_tenant().query(c.GET_PROMOTION, c.GetPromotion, promotion_id=made[0]["id"])
    assert (hidden.error.code, hidden.error.status) == ("PROM_NOT_FOUND", 404)
    bad = await caller.query(c.LIST_PROMOTIONS, c.ListPromotions, page={"page_token": "garbage"})
    assert (bad.error.code, bad.error.status) == ("VAL_PAGE_TOKEN", 400)


async def test_an_environment_cannot_name_a_template_that_cannot_run_its_promotions(
    caller: Caller, stack: Stack, nats
) -> None:
    await answer_templates(
        stack,
        nats,
        {
            "no-inputs": template_view("no-inputs", inputs={}),
            "no-approval": template_view("no-approval", approval=False),
            "fine": template_view("fine"),
        },
    )
    cases = [
        ({"workflow_template": "missing"}, 0, "ENV_WORKFLOW_TEMPLATE_UNKNOWN"),
        ({"workflow_template": "no-inputs"}, 0, "ENV_WORKFLOW_TEMPLATE_UNSUITABLE"),
        ({"workflow_template": "no-approval"}, 1, "ENV_WORKFLOW_TEMPLATE_UNSUITABLE"),
    ]
    for policy, approvals, code in cases:
        reply = await caller.command(
            c.CREATE_ENVIRONMENT,
            c.CreateEnvironment,
            name="prod",
            order_index=0,
            required_approvals=approvals,
            promotion_policy=policy,
        )
        assert (reply.error.code, reply.error.status) == (code, 422), (policy, reply.error)
    assert await stack.table_count("environments") == 0
    # Without approvals a template without an approval step is fine; asking for approvals later is not.
    env = await _environment(caller, "prod", 0, promotion_policy={"workflow_template": "no-approval"})
    more = await caller.command(
        c.UPDATE_ENVIRONMENT, c.UpdateEnvironment, environment_id=env["id"], required_approvals=2
    )
    assert more.error.code == "ENV_WORKFLOW_TEMPLATE_UNSUITABLE"
    assert "approval" in more.error.detail
    switched = await caller.command(
        c.UPDATE_ENVIRONMENT,
        c.UpdateEnvironment,
        environment_id=env["id"],
        required_approvals=2,
        promotion_policy={"workflow_template": "fine"},
    )
    assert switched.ok, switched.error


async def test_a_run_that_ends_before_deciding_fails_its_promotion_with_the_reason(
    caller: Caller, stack: Stack, nats
) -> None:
    dev = await _environment(caller, "dev", 0)
    release = await caller.ready_release("r-ended")
    requested = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=dev["id"]
    )
    assert requested.ok, requested.error
    promotion = requested.data
    assert promotion["status"] == "pending_gate"
    assert "waiting for workflow run" in promotion["status_message"]
    async with collect_messages(nats.jetstream(), stack.wire(c.PROMOTION_FAILED)) as failed:
        refused = w.RunFailed(
            tenant_id=caller.tenant_id,
            correlation_id=uuid.uuid4(),
            run_id=promotion["workflow_run_id"],
            subject_id=promotion["id"],
            status=w.RunStatus.FAILED,
            error="the run could not start: inputs not declared by the template: promotion_id",
            template_name="standard-promotion",
        )
        await caller.client.js.publish(stack.wire(w.RUN_FAILED), refused.model_dump_json().encode())
        await failed.wait(1)
    read = await caller.query(c.GET_PROMOTION, c.GetPromotion, promotion_id=promotion["id"])
    assert read.data["status"] == "failed"
    assert "could not start" in read.data["status_message"]
    assert read.data["reason_codes"] == ["PROM_WORKFLOW_RUN_ENDED"]


async def test_a_gate_step_without_plugin_gates_reads_its_inputs_once_and_decides_once(
    caller: Caller, stack: Stack, monkeypatch
) -> None:
    from stella.promotion import repo

    dev = await _environment(caller, "dev", 0)
    release = await caller.ready_release("shop")
    promotion = await _request(caller, release, dev, reason="ship it")
    reads: list[str] = []
    get_environment = repo.get_environment

    async def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append("environment")
        return await get_environment(*args, **kwargs)

    monkeypatch.setattr(repo, "get_environment", counted)
    after = await _evaluate(caller, promotion)

    assert after["status"] == "approved"
    # No read before the promotion's lock (there is no plugin to ask first): the inputs are gathered once.
    assert reads == ["environment"]
    assert await stack.table_count("decisions") == 1
    # A repeat of the same attempt is answered from the inbox: nothing is read or decided again.
    again = await caller.client.command(c.EVALUATE_GATES, caller.gate_step(promotion))
    assert again.ok and again.data["status"] == "approved"
    assert reads == ["environment"]
    assert await stack.table_count("decisions") == 1
