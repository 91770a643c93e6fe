"""The service's execution loop over the domain: dispatches, approvals parked, timers, steps nobody executes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from stella.contracts.workflow import STEP_SUBJECTS, SaveTemplate
from stella.workflow import engine
from stella.workflow.domain.errors import InvalidTemplate
from stella.workflow.domain.events import StepFailed, StepWaiting
from stella.workflow.domain.run import new_run
from stella.workflow.domain.states import RunStatus, StepStatus
from stella.workflow.domain.template import WorkflowTemplate
from stella.workflow.domain.validation import validate_template
from stella.workflow.handlers import subject_run_id, template_definition
from stella.workflow.templates import APPROVAL_STEP_TIMEOUT_S, BUILTIN_STEP_TYPES, STANDARD_PROMOTION

T0 = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
RUN_ID = UUID("00000000-0000-0000-0000-00000000e001")
TENANT = UUID("00000000-0000-0000-0000-00000000e002")
PROMOTION_INPUTS = {
    "promotion_id": "5a1d5a1d-0000-4000-8000-000000000001",
    "release_id": "5a1d5a1d-0000-4000-8000-000000000002",
    "environment_id": "5a1d5a1d-0000-4000-8000-000000000003",
    "requested_by": "5a1d5a1d-0000-4000-8000-000000000004",
    "approval_required": True,
    "required_approvals": 2,
    "require_sod": True,
    "approver_groups": ["release-managers"],
    "approval_timeout_s": 604800,
}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def build(nodes: list[dict[str, Any]], edges: Sequence[tuple[str, str]] = (), **fields: Any) -> WorkflowTemplate:
    data = {
        "name": "flow",
        "version": 1,
        "nodes": nodes,
        "edges": [{"from": source, "to": target} for source, target in edges],
        **fields,
    }
    return validate_template(data, BUILTIN_STEP_TYPES)


def started(template: WorkflowTemplate, inputs: dict[str, Any] | None = None) -> engine.Progress:
    created = new_run(
        run_id=RUN_ID, tenant_id=TENANT, template=template, template_id=RUN_ID, inputs=inputs or {}, now=T0
    )
    return engine.begin(template, created.run, created.steps, now=T0)


def result(
    template: WorkflowTemplate, progress: engine.Progress, node_id: str, now: datetime, *, ok: bool = True, **kw: Any
) -> tuple[engine.Progress, bool]:
    step = progress.steps[node_id]
    return engine.record_result(
        template,
        progress.run,
        progress.steps.values(),
        node_id=node_id,
        attempt=kw.pop("attempt", step.attempt_number),
        outcome="succeeded" if ok else "failed",
        now=now,
        **kw,
    )


def test_standard_promotion_accepts_every_input_the_promotion_service_sends() -> None:
    template = validate_template(STANDARD_PROMOTION, BUILTIN_STEP_TYPES)

    progress = started(template, PROMOTION_INPUTS)

    assert progress.run.inputs == PROMOTION_INPUTS
    assert [(d.start.node_id, d.subject) for d in progress.dispatches] == [("gates", STEP_SUBJECTS["gate"])]


def test_standard_promotion_defaults_ask_for_one_approval_without_separation_of_duties() -> None:
    template = validate_template(STANDARD_PROMOTION, BUILTIN_STEP_TYPES)
    minimal = {k: PROMOTION_INPUTS[k] for k in ("promotion_id", "release_id", "environment_id", "requested_by")}

    progress = started(template, minimal)

    assert progress.run.inputs == {
        **minimal,
        "approval_required": True,
        "required_approvals": 1,
        "require_sod": False,
        "approver_groups": [],
        "approval_timeout_s": None,
    }


def test_starting_a_run_dispatches_its_first_step_with_its_resolved_inputs() -> None:
    template = validate_template(STANDARD_PROMOTION, BUILTIN_STEP_TYPES)

    progress = started(template, PROMOTION_INPUTS)

    assert progress.run.status is RunStatus.RUNNING
    (dispatch,) = progress.dispatches
    assert dispatch.start.attempt == 1
    assert dispatch.start.inputs == {"inputs": PROMOTION_INPUTS, "steps": {}}
    assert progress.steps["gates"].status is StepStatus.RUNNING
    # The gate step has no deadline: a freeze window may hold the promotion for days.
    assert progress.run.next_wakeup_at is None
    assert progress.run_changed
    assert progress.changed == {"gates"}


def test_an_approval_attempt_is_dispatched_and_parked_until_the_decision_arrives() -> None:
    template = validate_template(STANDARD_PROMOTION, BUILTIN_STEP_TYPES)
    progress = started(template, PROMOTION_INPUTS)

    after_gates, applied = result(template, progress, "gates", at(5), outputs={"result": "allow"})

    assert applied
    (dispatch,) = after_gates.dispatches
    assert (dispatch.start.node_id, dispatch.subject) == ("approval", STEP_SUBJECTS["approval"])
    assert dispatch.start.inputs["steps"]["gates"]["outputs"] == {"result": "allow"}
    assert after_gates.steps["approval"].status is StepStatus.WAITING
    assert after_gates.run.next_wakeup_at == at(5 + APPROVAL_STEP_TIMEOUT_S)
    assert any(isinstance(e, StepWaiting) for e in after_gates.events)
    assert after_gates.changed == {"gates", "approval"}


def test_approval_not_required_goes_from_gates_straight_to_evidence() -> None:
    template = validate_template(STANDARD_PROMOTION, BUILTIN_STEP_TYPES)
    progress = started(template, {**PROMOTION_INPUTS, "approval_required": False})

    after_gates, _ = result(template, progress, "gates", at(5), outputs={"result": "allow"})

    assert [d.start.node_id for d in after_gates.dispatches] == ["evidence"]
    assert after_gates.steps["approval"].status is StepStatus.SKIPPED


def test_a_duplicate_result_changes_nothing_and_dispatches_nothing() -> None:
    template = validate_template(STANDARD_PROMOTION, BUILTIN_STEP_TYPES)
    progress = started(template, PROMOTION_INPUTS)
    after_gates, _ = result(template, progress, "gates", at(5), outputs={"result": "allow"})

    again, applied = engine.record_result(
        template,
        after_gates.run,
        after_gates.steps.values(),
        node_id="gates",
        attempt=1,
        outcome="succeeded",
        now=at(6),
    )

    assert not applied
    assert (again.changed, again.events, again.dispatches, again.run_changed) == (set(), [], [], False)


def test_independent_branches_are_dispatched_together() -> None:
    template = build(
        [
            {"id": "start", "type": "gate"},
            {"id": "left", "type": "gate"},
            {"id": "right", "type": "evidence"},
            {"id": "join", "type": "gate"},
        ],
        [("start", "left"), ("start", "right"), ("left", "join"), ("right", "join")],
    )
    progress = started(template)

    after_start, _ = result(template, progress, "start", at(1))

    assert [d.start.node_id for d in after_start.dispatches] == ["left", "right"]
    after_left, _ = result(template, after_start, "left", at(2))
    assert after_left.dispatches == []
    after_right, _ = result(template, after_left, "right", at(3))
    assert [d.start.node_id for d in after_right.dispatches] == ["join"]


def test_a_wait_step_parks_until_its_timer_then_the_next_step_is_dispatched() -> None:
    template = build(
        [{"id": "pause", "type": "wait", "config": {"seconds": 30}}, {"id": "gates", "type": "gate"}],
        [("pause", "gates")],
    )

    progress = started(template)

    assert progress.dispatches == []
    assert progress.steps["pause"].status is StepStatus.WAITING
    assert progress.run.next_wakeup_at == at(30)
    assert engine.wake(template, progress.run, progress.steps.values(), now=at(29)).dispatches == []
    woken = engine.wake(template, progress.run, progress.steps.values(), now=at(30))
    assert woken.steps["pause"].status is StepStatus.SUCCEEDED
    assert [d.start.node_id for d in woken.dispatches] == ["gates"]
    assert woken.run.next_wakeup_at is None


def test_a_zero_second_wait_completes_in_the_same_transition() -> None:
    template = build(
        [{"id": "pause", "type": "wait", "config": {"seconds": 0}}, {"id": "gates", "type": "gate"}],
        [("pause", "gates")],
    )

    progress = started(template)

    assert progress.steps["pause"].status is StepStatus.SUCCEEDED
    assert [d.start.node_id for d in progress.dispatches] == ["gates"]


def test_a_step_type_without_executor_fails_with_a_clear_error_after_its_retries() -> None:
    # A step type a plugin registered, whose plugin is no longer installed.
    template = validate_template(
        {
            "name": "flow",
            "version": 1,
            "nodes": [{"id": "ping", "type": "gone-plugin", "retry": {"max_attempts": 3, "backoff_s": 0}}],
            "edges": [],
        },
        BUILTIN_STEP_TYPES | {"gone-plugin"},
    )

    progress = started(template)

    failures = [e for e in progress.events if isinstance(e, StepFailed)]
    assert [(f.attempt, f.will_retry) for f in failures] == [(1, True), (2, True), (3, False)]
    assert "no executor" in (progress.steps["ping"].error or "")
    assert progress.run.status is RunStatus.FAILED
    assert progress.dispatches == []


def test_a_wait_step_with_a_bad_config_fails_instead_of_hanging() -> None:
    template = build([{"id": "pause", "type": "wait", "config": {"seconds": "soon"}}])

    progress = started(template)

    assert progress.run.status is RunStatus.FAILED
    assert "config.seconds" in (progress.steps["pause"].error or "")


def test_a_timed_out_dispatched_attempt_is_redispatched_as_a_new_attempt() -> None:
    template = build([{"id": "gates", "type": "gate", "timeout_s": 10, "retry": {"max_attempts": 2}}])
    progress = started(template)

    woken = engine.wake(template, progress.run, progress.steps.values(), now=at(10))

    assert [(d.start.node_id, d.start.attempt) for d in woken.dispatches] == [("gates", 2)]
    late, applied = engine.record_result(
        template, woken.run, woken.steps.values(), node_id="gates", attempt=1, outcome="succeeded", now=at(11)
    )
    assert not applied
    assert late.steps["gates"].status is StepStatus.RUNNING


def test_cancel_settles_every_open_step() -> None:
    template = validate_template(STANDARD_PROMOTION, BUILTIN_STEP_TYPES)
    progress = started(template, PROMOTION_INPUTS)

    cancelled = engine.cancel(template, progress.run, progress.steps.values(), now=at(1), reason="user")

    assert cancelled.run.status is RunStatus.CANCELLED
    assert {s.status for s in cancelled.steps.values()} == {StepStatus.CANCELLED}
    again = engine.cancel(template, cancelled.run, cancelled.steps.values(), now=at(2), reason="user")
    assert (again.events, again.changed, again.run_changed) == ([], set(), False)


@pytest.mark.parametrize("seconds", [None, -1, "5", True, float("inf"), 31 * 86_400])
def test_wait_seconds_are_checked(seconds: Any) -> None:
    with pytest.raises(engine.InvalidStepConfig):
        engine.wait_seconds({} if seconds is None else {"seconds": seconds})


def test_saved_wait_steps_need_a_valid_delay() -> None:
    with pytest.raises(engine.InvalidStepConfig, match="'pause'"):
        engine.check_step_configs(build([{"id": "pause", "type": "wait", "config": {}}]))
    engine.check_step_configs(build([{"id": "pause", "type": "wait", "config": {"seconds": 1.5}}]))


def test_logs_keep_each_attempt_and_the_newest_characters() -> None:
    logs = engine.append_logs("", 1, "first\n")
    logs = engine.append_logs(logs, 2, "second")
    assert logs == "[attempt 1]\nfirst\n[attempt 2]\nsecond\n"
    assert engine.append_logs(logs, 3, "") == logs
    huge = engine.append_logs("", 1, "x" * (engine.MAX_LOG_CHARS * 2))
    assert len(huge) == engine.MAX_LOG_CHARS
    assert huge.endswith("x\n")


def test_a_save_template_command_becomes_the_domain_form() -> None:
    cmd = SaveTemplate(
        tenant_id=TENANT,
        correlation_id=RUN_ID,
        name="custom",
        nodes=[{"id": "a", "type": "gate", "retry": {"max_attempts": 2, "backoff_s": 1}}, {"id": "b", "type": "gate"}],
        edges=[{"from": "a", "to": "b"}],
        inputs={"env": {"required": False, "default": "dev"}},
        outputs={"result": "steps.b.outputs"},
    )

    definition = template_definition(cmd)

    assert definition["edges"] == [{"from": "a", "to": "b"}]
    assert definition["inputs"] == [{"name": "env", "required": False, "default": "dev"}]
    template = validate_template(definition, BUILTIN_STEP_TYPES)
    assert template.node("a").retry.max_attempts == 2
    assert template.topological_order == ("a", "b")


def test_an_input_declaration_must_be_an_object() -> None:
    cmd = SaveTemplate(
        tenant_id=TENANT, correlation_id=RUN_ID, name="custom", nodes=[{"id": "a", "type": "gate"}], inputs={"x": 1}
    )
    with pytest.raises(InvalidTemplate, match="'x'"):
        template_definition(cmd)


def test_a_subject_gets_one_run_per_template() -> None:
    subject = UUID("00000000-0000-0000-0000-00000000e0aa")
    assert subject_run_id(subject, "standard-promotion") == subject_run_id(subject, "standard-promotion")
    assert subject_run_id(subject, "standard-promotion") != subject_run_id(subject, "other")
    assert engine.step_run_id(RUN_ID, "a") != engine.step_run_id(RUN_ID, "b")
