"""Runs, steps and the scheduler: parallel branches, retries, timeouts, skips, waiting steps, restarts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from stella.workflow.domain.errors import (
    InvalidStepResult,
    MissingRunInput,
    RunNotActive,
    StepStateConflict,
    UnknownNode,
    UnknownRunInput,
)
from stella.workflow.domain.events import (
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepSkipped,
    StepStarted,
    StepWaiting,
)
from stella.workflow.domain.run import (
    StepRun,
    WorkflowRun,
    begin_waiting,
    cancel_run,
    complete_step,
    new_run,
    start_run,
    step_attempt_id,
    step_idempotency_key,
)
from stella.workflow.domain.scheduler import (
    Advance,
    PendingRetry,
    ResumeStep,
    Schedule,
    SkipStep,
    StartStep,
    TimeOutStep,
    advance,
    apply_schedule,
    resolve_step_inputs,
    schedule,
)
from stella.workflow.domain.states import RunStatus, SkipReason, StepStatus
from stella.workflow.domain.template import Edge, Node, WorkflowTemplate
from stella.workflow.domain.validation import validate_template

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
RUN_ID = UUID("00000000-0000-0000-0000-0000000000a1")
TENANT = UUID("00000000-0000-0000-0000-0000000000b2")
TEMPLATE_ID = UUID("00000000-0000-0000-0000-0000000000c3")
KNOWN = frozenset({"task", "approval", "wait"})


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def build(
    nodes: list[dict[str, Any]],
    edges: Sequence[tuple[str, str]] = (),
    **fields: Any,
) -> WorkflowTemplate:
    data = {
        "name": "flow",
        "version": 1,
        "nodes": [{"type": "task", **spec} for spec in nodes],
        "edges": [{"from": source, "to": target} for source, target in edges],
        **fields,
    }
    return validate_template(data, KNOWN)


class Engine:
    """Drives one run through the real domain functions and keeps its state, like the I/O layer would."""

    def __init__(self, template: WorkflowTemplate, inputs: dict[str, Any] | None = None) -> None:
        self.template = template
        created = new_run(
            run_id=RUN_ID, tenant_id=TENANT, template=template, template_id=TEMPLATE_ID, inputs=inputs or {}, now=T0
        )
        self.run: WorkflowRun = start_run(created.run, now=T0).run
        self.steps: dict[str, StepRun] = {s.node_id: s for s in created.steps}
        self.events: list[Any] = []

    def advance(self, now: datetime) -> Advance:
        result = advance(self.template, self.run, self.steps.values(), now=now)
        self.run = result.run
        self.steps = {s.node_id: s for s in result.steps}
        self.events.extend(result.events)
        return result

    def complete(
        self, node_id: str, now: datetime, *, ok: bool = True, outputs: dict[str, Any] | None = None
    ) -> Advance:
        step = self.steps[node_id]
        result = complete_step(
            self.template,
            step,
            attempt=step.attempt_number,
            outcome="succeeded" if ok else "failed",
            outputs=outputs,
            error=None if ok else "boom",
            now=now,
        )
        self.steps[node_id] = result.step
        self.events.extend(result.events)
        return self.advance(now)

    def status(self, node_id: str) -> StepStatus:
        return self.steps[node_id].status


def started(result: Advance) -> list[str]:
    return [action.node_id for action in result.schedule.start]


# --- starting, parallel branches, joins ------------------------------------------------------------------


def test_a_new_run_has_one_pending_step_per_node() -> None:
    template = build([{"id": "a"}, {"id": "b"}], [("a", "b")])

    created = new_run(run_id=RUN_ID, tenant_id=TENANT, template=template, template_id=TEMPLATE_ID, inputs={}, now=T0)

    assert created.run.status is RunStatus.PENDING
    assert (created.run.template_name, created.run.template_version) == ("flow", 1)
    assert [(s.node_id, s.status, s.attempt_number) for s in created.steps] == [
        ("a", StepStatus.PENDING, 0),
        ("b", StepStatus.PENDING, 0),
    ]
    assert schedule(template, created.run, created.steps, now=T0) == Schedule()


def test_start_run_moves_pending_to_running_once() -> None:
    template = build([{"id": "a"}])
    created = new_run(run_id=RUN_ID, tenant_id=TENANT, template=template, template_id=TEMPLATE_ID, inputs={}, now=T0)

    first = start_run(created.run, now=at(1))
    again = start_run(first.run, now=at(2))

    assert first.run.status is RunStatus.RUNNING
    assert first.run.started_at == at(1)
    assert first.events == (RunStarted(run_id=RUN_ID, at=at(1), template_name="flow", template_version=1),)
    assert again.events == ()
    assert again.run == first.run


def test_independent_branches_start_together_and_a_join_waits_for_both() -> None:
    engine = Engine(
        build([{"id": "a"}, {"id": "b"}, {"id": "c"}, {"id": "d"}], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    )

    assert started(engine.advance(T0)) == ["a"]
    assert started(engine.complete("a", at(1))) == ["b", "c"]
    assert engine.status("b") is engine.status("c") is StepStatus.RUNNING

    assert started(engine.complete("b", at(2))) == []
    assert engine.status("d") is StepStatus.PENDING

    assert started(engine.complete("c", at(3))) == ["d"]


def test_roots_without_edges_all_start_at_once() -> None:
    engine = Engine(build([{"id": "x"}, {"id": "y"}, {"id": "z"}]))

    result = engine.advance(T0)

    assert started(result) == ["x", "y", "z"]
    assert [e.node_id for e in result.events if isinstance(e, StepStarted)] == ["x", "y", "z"]
    assert {s.node_id for s in result.changed} == {"x", "y", "z"}


def test_start_carries_attempt_key_config_deadline_and_resolved_inputs() -> None:
    template = build(
        [{"id": "a"}, {"id": "b", "config": {"url": "http://x"}, "timeout_s": 30}, {"id": "side"}],
        [("a", "b")],
        inputs=[{"name": "env"}],
    )
    engine = Engine(template, {"env": "prod"})
    engine.advance(T0)
    engine.complete("side", at(1), outputs={"ignored": True})

    result = engine.complete("a", at(2), outputs={"artifact": "sha256:1"})

    (start,) = result.schedule.start
    assert start == StartStep(
        node_id="b",
        node_type="task",
        attempt=1,
        idempotency_key=step_idempotency_key(RUN_ID, "b", 1),
        inputs={
            "inputs": {"env": "prod"},
            "steps": {"a": {"status": "succeeded", "attempt": 1, "outputs": {"artifact": "sha256:1"}}},
        },
        config={"url": "http://x"},
        deadline_at=at(32),
    )
    assert engine.steps["b"].inputs == start.inputs
    assert engine.steps["b"].started_at == at(2)


def test_resolved_inputs_include_every_upstream_step_not_only_direct_predecessors() -> None:
    engine = Engine(build([{"id": "a"}, {"id": "b"}, {"id": "c"}, {"id": "other"}], [("a", "b"), ("b", "c")]))
    engine.advance(T0)
    engine.complete("other", at(1))
    engine.complete("a", at(1), outputs={"n": 1})
    engine.complete("b", at(2), outputs={"n": 2})

    inputs = resolve_step_inputs(engine.template, engine.run, engine.steps.values(), "c")

    assert inputs == {
        "inputs": {},
        "steps": {
            "a": {"status": "succeeded", "attempt": 1, "outputs": {"n": 1}},
            "b": {"status": "succeeded", "attempt": 1, "outputs": {"n": 2}},
        },
    }


# --- retries ---------------------------------------------------------------------------------------------


def test_failed_step_is_retried_with_linear_backoff_and_a_new_attempt_number() -> None:
    engine = Engine(build([{"id": "a", "retry": {"max_attempts": 3, "backoff_s": 10}}]))
    engine.advance(T0)
    first_key = engine.steps["a"].idempotency_key

    failed = engine.complete("a", at(1), ok=False)

    failure = next(e for e in engine.events if isinstance(e, StepFailed))
    assert (failure.attempt, failure.will_retry, failure.retry_at) == (1, True, at(11))
    assert failed.schedule.start == ()
    assert failed.schedule.retries == (PendingRetry(node_id="a", next_attempt=2, due_at=at(11)),)
    assert failed.run.next_wakeup_at == at(11)
    assert failed.run.status is RunStatus.RUNNING

    assert engine.advance(at(10.9)).schedule.start == ()

    retried = engine.advance(at(11))
    (start,) = retried.schedule.start
    assert (start.attempt, start.is_retry) == (2, True)
    assert engine.steps["a"].attempt_number == 2
    assert engine.steps["a"].status is StepStatus.RUNNING
    assert engine.steps["a"].idempotency_key != first_key

    # The second wait is twice the backoff: backoff_s * attempt.
    engine.complete("a", at(12), ok=False)
    assert engine.run.next_wakeup_at == at(32)
    assert started(engine.advance(at(32))) == ["a"]
    assert engine.steps["a"].attempt_number == 3

    exhausted = engine.complete("a", at(40), ok=False)

    last_failure = [e for e in engine.events if isinstance(e, StepFailed)][-1]
    assert (last_failure.attempt, last_failure.will_retry, last_failure.retry_at) == (3, False, None)
    assert exhausted.run.status is RunStatus.FAILED
    assert exhausted.run.completed_at == at(40)
    assert exhausted.events[-1] == RunFailed(
        run_id=RUN_ID, at=at(40), failed_nodes=("a",), error="steps failed: a", outputs={}
    )


def test_a_retry_that_succeeds_completes_the_run() -> None:
    engine = Engine(build([{"id": "a", "retry": {"max_attempts": 2, "backoff_s": 5}}, {"id": "b"}], [("a", "b")]))
    engine.advance(T0)
    engine.complete("a", at(1), ok=False)
    engine.advance(at(6))

    result = engine.complete("a", at(7), outputs={"ok": True})

    assert started(result) == ["b"]
    assert result.schedule.start[0].inputs["steps"]["a"] == {
        "status": "succeeded",
        "attempt": 2,
        "outputs": {"ok": True},
    }
    engine.complete("b", at(8))
    assert engine.run.status is RunStatus.SUCCEEDED


def test_dependents_wait_while_a_retry_is_pending() -> None:
    engine = Engine(
        build([{"id": "a", "retry": {"max_attempts": 2, "backoff_s": 60}}, {"id": "b"}, {"id": "c"}], [("a", "b")])
    )
    engine.advance(T0)
    engine.complete("c", at(1))

    result = engine.complete("a", at(2), ok=False)

    assert engine.status("b") is StepStatus.PENDING
    assert result.schedule.completion is None
    assert result.run.status is RunStatus.RUNNING


# --- timeouts --------------------------------------------------------------------------------------------


def test_running_step_is_failed_at_its_deadline() -> None:
    engine = Engine(build([{"id": "a", "timeout_s": 30}]))
    assert engine.advance(T0).run.next_wakeup_at == at(30)

    assert engine.advance(at(29.999)).schedule.actions == ()

    result = engine.advance(at(30))

    assert result.schedule.time_out == (TimeOutStep(node_id="a", attempt=1, deadline_at=at(30)),)
    assert engine.steps["a"].status is StepStatus.FAILED
    assert engine.steps["a"].error == "timed out after 30s"
    assert result.run.status is RunStatus.FAILED


def test_a_timed_out_step_with_zero_backoff_restarts_in_the_same_schedule() -> None:
    engine = Engine(build([{"id": "a", "timeout_s": 10, "retry": {"max_attempts": 2, "backoff_s": 0}}]))
    engine.advance(T0)

    result = engine.advance(at(10))

    assert [type(a) for a in result.schedule.actions] == [TimeOutStep, StartStep]
    assert [type(e) for e in result.events] == [StepFailed, StepStarted]
    failed = result.events[0]
    assert isinstance(failed, StepFailed) and failed.will_retry is True
    assert engine.steps["a"].attempt_number == 2
    assert engine.steps["a"].started_at == at(10)
    assert result.run.next_wakeup_at == at(20)


def test_a_late_result_of_a_timed_out_attempt_changes_nothing() -> None:
    engine = Engine(build([{"id": "a", "timeout_s": 10, "retry": {"max_attempts": 2, "backoff_s": 0}}]))
    engine.advance(T0)
    engine.advance(at(10))
    current = engine.steps["a"]

    late = complete_step(engine.template, current, attempt=1, outcome="succeeded", outputs={"x": 1}, now=at(11))

    assert late.changed is False
    assert late.events == ()
    assert late.step == current


def test_timeout_applies_while_waiting() -> None:
    engine = Engine(build([{"id": "approve", "type": "approval", "timeout_s": 3600}]))
    engine.advance(T0)
    engine.steps["approve"] = begin_waiting(engine.steps["approve"], attempt=1, now=at(1)).step

    assert engine.advance(at(3599)).schedule.actions == ()
    result = engine.advance(at(3600))

    assert result.schedule.time_out[0].node_id == "approve"
    assert result.run.status is RunStatus.FAILED


# --- skipping --------------------------------------------------------------------------------------------


def test_a_false_condition_skips_the_step_and_the_path_after_it() -> None:
    template = build(
        [{"id": "a"}, {"id": "deploy", "when": 'inputs.env == "prod"'}, {"id": "verify"}, {"id": "report"}],
        [("a", "deploy"), ("deploy", "verify"), ("a", "report")],
        inputs=[{"name": "env"}],
    )
    engine = Engine(template, {"env": "dev"})
    engine.advance(T0)

    result = engine.complete("a", at(1))

    assert result.schedule.skip == (
        SkipStep(node_id="deploy", reason=SkipReason.CONDITION_FALSE),
        SkipStep(node_id="verify", reason=SkipReason.UPSTREAM_SKIPPED),
    )
    assert started(result) == ["report"]
    assert engine.steps["verify"].skip_reason is SkipReason.UPSTREAM_SKIPPED
    assert [e.node_id for e in result.events if isinstance(e, StepSkipped)] == ["deploy", "verify"]

    engine.complete("report", at(2))
    assert engine.run.status is RunStatus.SUCCEEDED


def test_a_true_condition_runs_the_step() -> None:
    template = build(
        [{"id": "a"}, {"id": "deploy", "when": 'inputs.env == "prod" && steps.a.outputs.verdict == "allow"'}],
        [("a", "deploy")],
        inputs=[{"name": "env"}],
    )
    engine = Engine(template, {"env": "prod"})
    engine.advance(T0)

    assert started(engine.complete("a", at(1), outputs={"verdict": "allow"})) == ["deploy"]


def test_a_condition_guarded_by_has_is_false_over_a_missing_output() -> None:
    when = 'has(steps.a.outputs.verdict) && steps.a.outputs.verdict == "allow"'
    engine = Engine(build([{"id": "a"}, {"id": "b", "when": when}], [("a", "b")]))
    engine.advance(T0)

    result = engine.complete("a", at(1))

    assert result.schedule.skip == (SkipStep(node_id="b", reason=SkipReason.CONDITION_FALSE),)


def test_a_join_runs_when_at_least_one_incoming_path_was_taken() -> None:
    template = build(
        [{"id": "a"}, {"id": "optional", "when": "false"}, {"id": "main"}, {"id": "join"}],
        [("a", "optional"), ("a", "main"), ("optional", "join"), ("main", "join")],
    )
    engine = Engine(template)
    engine.advance(T0)
    engine.complete("a", at(1))

    result = engine.complete("main", at(2))

    assert started(result) == ["join"]
    assert result.schedule.start[0].inputs["steps"]["optional"] == {"status": "skipped", "attempt": 0, "outputs": {}}


def test_a_failure_skips_the_success_path_and_fails_the_run() -> None:
    template = build(
        [
            {"id": "a"},
            {"id": "b"},
            {"id": "c"},
            {"id": "audit", "run_on": "always"},
            {"id": "alert", "run_on": "failure"},
        ],
        [("a", "b"), ("b", "c"), ("b", "audit"), ("a", "alert")],
    )
    engine = Engine(template)
    engine.advance(T0)

    result = engine.complete("a", at(1), ok=False)

    assert result.schedule.skip == (
        SkipStep(node_id="b", reason=SkipReason.UPSTREAM_FAILED),
        SkipStep(node_id="c", reason=SkipReason.UPSTREAM_SKIPPED),
    )
    assert started(result) == ["audit", "alert"]

    engine.complete("audit", at(2))
    final = engine.complete("alert", at(3))
    assert final.run.status is RunStatus.FAILED
    assert final.schedule.completion is not None
    assert final.schedule.completion.failed_nodes == ("a",)


def test_a_failure_handler_is_skipped_when_nothing_failed() -> None:
    engine = Engine(build([{"id": "a"}, {"id": "alert", "run_on": "failure"}], [("a", "alert")]))
    engine.advance(T0)

    result = engine.complete("a", at(1))

    assert result.schedule.skip == (SkipStep(node_id="alert", reason=SkipReason.NO_UPSTREAM_FAILURE),)
    assert result.run.status is RunStatus.SUCCEEDED


def test_run_on_always_still_honours_its_condition() -> None:
    template = build(
        [{"id": "a"}, {"id": "notify", "run_on": "always", "when": 'steps.a.status == "failed"'}], [("a", "notify")]
    )
    engine = Engine(template)
    engine.advance(T0)

    assert engine.complete("a", at(1)).schedule.skip == (SkipStep(node_id="notify", reason=SkipReason.CONDITION_FALSE),)


def test_a_run_whose_root_is_skipped_completes_in_the_same_schedule() -> None:
    engine = Engine(build([{"id": "only", "when": "inputs.go"}], inputs=[{"name": "go"}]), {"go": False})

    result = engine.advance(T0)

    assert result.schedule.skip == (SkipStep(node_id="only", reason=SkipReason.CONDITION_FALSE),)
    assert result.run.status is RunStatus.SUCCEEDED
    assert isinstance(result.events[-1], RunCompleted)


# --- completion ------------------------------------------------------------------------------------------


def test_completion_evaluates_the_template_outputs() -> None:
    template = build(
        [{"id": "build"}, {"id": "scan", "when": "false"}],
        [("build", "scan")],
        inputs=[{"name": "env"}],
        outputs={
            "digest": "steps.build.outputs.digest",
            "scanned": 'steps.scan.status == "succeeded"',
            "env": "inputs.env",
            "missing": "steps.build.outputs.nothing",
        },
    )
    engine = Engine(template, {"env": "dev"})
    engine.advance(T0)

    result = engine.complete("build", at(5), outputs={"digest": "sha256:ab"})

    expected = {"digest": "sha256:ab", "scanned": False, "env": "dev", "missing": None}
    assert result.run.status is RunStatus.SUCCEEDED
    assert result.run.outputs == expected
    # An output that cannot be read is null, and the run says why.
    assert result.run.error is not None and "output 'missing': no such member" in result.run.error
    assert result.run.completed_at == at(5)
    assert result.run.next_wakeup_at is None
    assert result.events[-1] == RunCompleted(run_id=RUN_ID, at=at(5), outputs=expected)


def test_a_completed_run_needs_nothing_more() -> None:
    engine = Engine(build([{"id": "a"}]))
    engine.advance(T0)
    engine.complete("a", at(1))

    assert schedule(engine.template, engine.run, engine.steps.values(), now=at(100)) == Schedule()


# --- waiting steps ---------------------------------------------------------------------------------------


def test_an_approval_step_waits_and_is_completed_by_the_outside_result() -> None:
    template = build(
        [{"id": "approval", "type": "approval"}, {"id": "evidence", "run_on": "always"}], [("approval", "evidence")]
    )
    engine = Engine(template)
    engine.advance(T0)

    parked = begin_waiting(engine.steps["approval"], attempt=1, now=at(1))
    engine.steps["approval"] = parked.step

    assert parked.events == (StepWaiting(run_id=RUN_ID, at=at(1), node_id="approval", attempt=1, resume_at=None),)
    assert engine.status("approval") is StepStatus.WAITING
    idle = engine.advance(at(86_400))
    assert idle.schedule.actions == ()
    assert idle.run.next_wakeup_at is None  # nothing to wake for: the outside signal drives it

    result = engine.complete("approval", at(90_000), ok=False, outputs={"decision": "denied", "rejected": 1})

    assert started(result) == ["evidence"]
    assert result.schedule.start[0].inputs["steps"]["approval"] == {
        "status": "failed",
        "attempt": 1,
        "outputs": {"decision": "denied", "rejected": 1},
    }


def test_begin_waiting_is_idempotent_and_refuses_a_step_that_is_not_running() -> None:
    engine = Engine(build([{"id": "a", "type": "approval"}, {"id": "b"}], [("a", "b")]))
    engine.advance(T0)
    waiting = begin_waiting(engine.steps["a"], attempt=1, now=at(1)).step

    again = begin_waiting(waiting, attempt=1, now=at(2))

    assert again.changed is False
    assert again.events == ()
    with pytest.raises(StepStateConflict):
        begin_waiting(engine.steps["b"], attempt=1, now=at(2))
    with pytest.raises(StepStateConflict):
        begin_waiting(waiting, attempt=2, now=at(2))


def test_a_timer_step_resumes_at_its_time() -> None:
    engine = Engine(build([{"id": "pause", "type": "wait"}, {"id": "after"}], [("pause", "after")]))
    engine.advance(T0)
    engine.steps["pause"] = begin_waiting(engine.steps["pause"], attempt=1, now=T0, resume_at=at(600)).step

    assert engine.advance(at(1)).run.next_wakeup_at == at(600)
    assert engine.advance(at(599)).schedule.actions == ()

    result = engine.advance(at(600))

    assert result.schedule.resume == (ResumeStep(node_id="pause", attempt=1, resume_at=at(600)),)
    assert engine.status("pause") is StepStatus.SUCCEEDED
    assert started(result) == ["after"]
    assert isinstance(result.events[0], StepCompleted)


def test_the_earliest_deadline_retry_or_timer_is_the_next_wakeup() -> None:
    template = build(
        [
            {"id": "slow", "timeout_s": 500},
            {"id": "flaky", "retry": {"max_attempts": 2, "backoff_s": 200}},
            {"id": "pause", "type": "wait"},
        ]
    )
    engine = Engine(template)
    engine.advance(T0)
    engine.steps["pause"] = begin_waiting(engine.steps["pause"], attempt=1, now=T0, resume_at=at(400)).step

    assert engine.complete("flaky", at(10), ok=False).run.next_wakeup_at == at(210)
    assert engine.advance(at(210)).run.next_wakeup_at == at(400)
    assert engine.advance(at(400)).run.next_wakeup_at == at(500)


# --- step results ----------------------------------------------------------------------------------------


def test_a_duplicate_result_is_a_no_op() -> None:
    engine = Engine(build([{"id": "a"}, {"id": "b"}], [("a", "b")]))
    engine.advance(T0)
    first = complete_step(
        engine.template, engine.steps["a"], attempt=1, outcome="succeeded", outputs={"v": 1}, now=at(1)
    )

    second = complete_step(engine.template, first.step, attempt=1, outcome="succeeded", outputs={"v": 1}, now=at(2))
    contradicting = complete_step(engine.template, first.step, attempt=1, outcome="failed", now=at(3))

    assert first.changed is True
    assert first.events == (StepCompleted(run_id=RUN_ID, at=at(1), node_id="a", attempt=1, outputs={"v": 1}),)
    assert (second.changed, second.events, second.step) == (False, (), first.step)
    assert (contradicting.changed, contradicting.step) == (False, first.step)


def test_a_result_for_an_attempt_that_has_not_started_is_refused() -> None:
    engine = Engine(build([{"id": "a"}, {"id": "b"}], [("a", "b")]))
    engine.advance(T0)

    with pytest.raises(StepStateConflict) as caught:
        complete_step(engine.template, engine.steps["b"], attempt=1, outcome="succeeded", now=at(1))

    assert caught.value.status == 409
    assert caught.value.code == "WF_STEP_STATE_CONFLICT"


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"outcome": "maybe"}, "outcome 'maybe'"),
        ({"outputs": ["not", "an", "object"]}, "outputs must be an object"),
        ({"attempt": 0}, "attempt 0"),
    ],
)
def test_a_malformed_result_is_refused(fields: dict[str, Any], fragment: str) -> None:
    engine = Engine(build([{"id": "a"}]))
    engine.advance(T0)
    arguments: dict[str, Any] = {"attempt": 1, "outcome": "succeeded", "now": at(1), **fields}

    with pytest.raises(InvalidStepResult, match=fragment):
        complete_step(engine.template, engine.steps["a"], **arguments)


def test_a_result_for_an_unknown_node_is_refused() -> None:
    engine = Engine(build([{"id": "a"}]))
    stranger = StepRun(run_id=RUN_ID, node_id="ghost", status=StepStatus.RUNNING, attempt_number=1)

    with pytest.raises(UnknownNode):
        complete_step(engine.template, stranger, attempt=1, outcome="succeeded", now=at(1))


# --- cancellation ----------------------------------------------------------------------------------------


def test_cancel_stops_every_unsettled_step_and_the_scheduler() -> None:
    engine = Engine(build([{"id": "a"}, {"id": "b"}, {"id": "c"}], [("a", "c")]))
    engine.advance(T0)
    engine.complete("b", at(1))

    cancelled = cancel_run(engine.template, engine.run, engine.steps.values(), now=at(2), reason="promotion cancelled")

    by_id = {s.node_id: s.status for s in cancelled.steps}
    assert by_id == {"a": StepStatus.CANCELLED, "b": StepStatus.SUCCEEDED, "c": StepStatus.CANCELLED}
    assert {s.node_id for s in cancelled.changed} == {"a", "c"}
    assert cancelled.run.status is RunStatus.CANCELLED
    assert cancelled.run.error == "promotion cancelled"
    assert cancelled.events == (RunCancelled(run_id=RUN_ID, at=at(2), reason="promotion cancelled"),)
    assert schedule(engine.template, cancelled.run, cancelled.steps, now=at(3)) == Schedule()

    late = complete_step(engine.template, cancelled.steps[0], attempt=1, outcome="succeeded", now=at(4))
    assert late.changed is False

    again = cancel_run(engine.template, cancelled.run, cancelled.steps, now=at(5), reason="again")
    assert (again.events, again.changed, again.run) == ((), (), cancelled.run)


def test_a_finished_run_cannot_be_cancelled_or_restarted() -> None:
    engine = Engine(build([{"id": "a"}]))
    engine.advance(T0)
    engine.complete("a", at(1))

    with pytest.raises(RunNotActive) as caught:
        cancel_run(engine.template, engine.run, engine.steps.values(), now=at(2), reason="late")
    assert caught.value.code == "WF_RUN_NOT_ACTIVE"
    with pytest.raises(RunNotActive):
        start_run(engine.run, now=at(2))


# --- run inputs ------------------------------------------------------------------------------------------


def test_run_inputs_are_checked_and_defaults_applied() -> None:
    template = build(
        [{"id": "a"}],
        inputs=[{"name": "env"}, {"name": "dry_run", "required": False, "default": False}],
    )

    created = new_run(
        run_id=RUN_ID, tenant_id=TENANT, template=template, template_id=TEMPLATE_ID, inputs={"env": "qa"}, now=T0
    )
    assert created.run.inputs == {"env": "qa", "dry_run": False}

    with pytest.raises(MissingRunInput) as missing:
        new_run(run_id=RUN_ID, tenant_id=TENANT, template=template, template_id=TEMPLATE_ID, inputs={}, now=T0)
    assert missing.value.names == ("env",)

    with pytest.raises(UnknownRunInput) as unknown:
        new_run(
            run_id=RUN_ID,
            tenant_id=TENANT,
            template=template,
            template_id=TEMPLATE_ID,
            inputs={"env": "qa", "colour": "red"},
            now=T0,
        )
    assert unknown.value.names == ("colour",)


def test_now_must_be_timezone_aware() -> None:
    template = build([{"id": "a"}])

    with pytest.raises(ValueError, match="timezone-aware"):
        new_run(
            run_id=RUN_ID,
            tenant_id=TENANT,
            template=template,
            template_id=TEMPLATE_ID,
            inputs={},
            now=datetime(2025, 1, 1),  # the naive value under test
        )


# --- replay and restart safety ---------------------------------------------------------------------------


def test_idempotency_keys_are_deterministic_per_run_node_and_attempt() -> None:
    assert step_idempotency_key(RUN_ID, "deploy", 2) == f"wf/{RUN_ID}/deploy/2"
    assert step_attempt_id(RUN_ID, "deploy", 2) == step_attempt_id(RUN_ID, "deploy", 2)
    assert step_attempt_id(RUN_ID, "deploy", 2) != step_attempt_id(RUN_ID, "deploy", 3)
    assert step_attempt_id(RUN_ID, "deploy", 2) != step_attempt_id(RUN_ID, "verify", 2)
    assert step_attempt_id(RUN_ID, "deploy", 1).version == 5


def test_scheduling_again_after_applying_yields_no_duplicate_starts() -> None:
    engine = Engine(build([{"id": "a"}, {"id": "b"}, {"id": "c"}], [("a", "c")]))
    engine.advance(T0)

    again = schedule(engine.template, engine.run, engine.steps.values(), now=T0)

    assert again.actions == ()
    assert again.completion is None


def test_applying_a_stale_schedule_is_refused() -> None:
    engine = Engine(build([{"id": "a"}]))
    before = tuple(engine.steps.values())
    plan = schedule(engine.template, engine.run, before, now=T0)
    engine.advance(T0)

    with pytest.raises(StepStateConflict):
        apply_schedule(engine.template, engine.run, engine.steps.values(), plan, now=T0)


def persisted(engine: Engine) -> tuple[WorkflowRun, list[StepRun]]:
    """What a store returns after a restart: the same values, rebuilt from plain fields."""
    run = WorkflowRun(**{f.name: getattr(engine.run, f.name) for f in dataclasses.fields(WorkflowRun)})
    steps = [
        StepRun(**{f.name: getattr(step, f.name) for f in dataclasses.fields(StepRun)})
        for step in reversed(list(engine.steps.values()))  # no reliance on storage order
    ]
    return run, steps


def test_a_restart_at_any_point_gives_the_same_decisions() -> None:
    template = build(
        [
            {"id": "gate"},
            {"id": "left", "retry": {"max_attempts": 2, "backoff_s": 30}, "timeout_s": 100},
            {"id": "right", "when": 'steps.gate.outputs.go == "yes"'},
            {"id": "join"},
            {"id": "always", "run_on": "always"},
        ],
        [("gate", "left"), ("gate", "right"), ("left", "join"), ("right", "join"), ("join", "always")],
    )
    script: list[tuple[str, float, dict[str, Any]]] = [
        ("advance", 0, {}),
        ("complete", 5, {"node": "gate", "ok": True, "outputs": {"go": "yes"}}),
        ("complete", 10, {"node": "right", "ok": True}),
        ("complete", 20, {"node": "left", "ok": False}),
        ("advance", 49, {}),
        ("advance", 50, {}),
        ("advance", 150, {}),  # the retried attempt times out
        ("complete", 160, {"node": "always", "ok": True}),
    ]
    continuous = Engine(template)
    restarted = Engine(template)
    for action, seconds, args in script:
        now = at(seconds)
        # The restarted engine forgets everything but the stored state before every step.
        restarted.run, stored = persisted(restarted)
        restarted.steps = {s.node_id: s for s in stored}
        fresh = schedule(template, restarted.run, stored, now=now)
        assert fresh == schedule(template, continuous.run, continuous.steps.values(), now=now)
        if action == "advance":
            left, right = continuous.advance(now), restarted.advance(now)
        else:
            left = continuous.complete(args["node"], now, ok=args["ok"], outputs=args.get("outputs"))
            right = restarted.complete(args["node"], now, ok=args["ok"], outputs=args.get("outputs"))
        assert left == right

    assert continuous.events == restarted.events
    assert continuous.run.status is RunStatus.FAILED
    statuses = {node_id: step.status for node_id, step in continuous.steps.items()}
    assert statuses == {
        "gate": StepStatus.SUCCEEDED,
        "left": StepStatus.FAILED,
        "right": StepStatus.SUCCEEDED,
        "join": StepStatus.SKIPPED,
        "always": StepStatus.SUCCEEDED,
    }
    assert continuous.steps["left"].attempt_number == 2


def test_work_that_fell_due_while_the_engine_was_down_is_caught_up_on_restart() -> None:
    template = build(
        [{"id": "a", "timeout_s": 60, "retry": {"max_attempts": 2, "backoff_s": 10}}, {"id": "b"}], [("a", "b")]
    )
    engine = Engine(template)
    engine.advance(T0)

    # Down for an hour: the deadline passed long ago. The timeout is recorded now, and the retry is due
    # one backoff after that record.
    run, stored = persisted(engine)
    first = advance(template, run, stored, now=at(3600))

    assert [type(a) for a in first.schedule.actions] == [TimeOutStep]
    assert first.run.next_wakeup_at == at(3610)

    second = advance(template, first.run, first.steps, now=at(3610))
    assert second.schedule.start[0].attempt == 2


def test_a_step_missing_from_the_store_is_treated_as_pending() -> None:
    engine = Engine(build([{"id": "a"}, {"id": "b"}], [("a", "b")]))

    plan = schedule(engine.template, engine.run, [], now=T0)

    assert [a.node_id for a in plan.start] == ["a"]
    assert engine.steps  # the engine's own copy is untouched


def test_a_stored_step_of_another_run_is_refused() -> None:
    engine = Engine(build([{"id": "a"}]))
    foreign = StepRun(run_id=UUID(int=99), node_id="a")

    with pytest.raises(StepStateConflict):
        schedule(engine.template, engine.run, [foreign], now=T0)


def test_a_condition_that_fails_fails_its_step_and_is_not_retried() -> None:
    template = build(
        [{"id": "a"}, {"id": "deploy", "when": "steps.a.outputs.verdict == 'allow'", "retry": {"max_attempts": 3}}],
        [("a", "deploy")],
    )
    engine = Engine(template)
    engine.advance(T0)

    result = engine.complete("a", at(1), outputs={})  # no verdict: reading it is an error

    deploy = engine.steps["deploy"]
    assert deploy.status is StepStatus.FAILED and deploy.attempt_number == 0
    assert deploy.error is not None and "condition" in deploy.error and "no such member" in deploy.error
    assert "cel-python/" in deploy.error  # the engine that decided is named
    failed = [e for e in result.events if isinstance(e, StepFailed)]
    assert [(e.node_id, e.will_retry) for e in failed] == [("deploy", False)]
    assert result.run.status is RunStatus.FAILED
    assert engine.advance(at(100)).schedule.start == ()


def test_a_condition_that_is_not_a_boolean_fails_closed() -> None:
    template = build([{"id": "a"}, {"id": "b", "when": "steps.a.outputs.count"}], [("a", "b")])
    engine = Engine(template)
    engine.advance(T0)

    engine.complete("a", at(1), outputs={"count": 3})

    assert engine.steps["b"].status is StepStatus.FAILED
    assert "must be true or false" in (engine.steps["b"].error or "")


def test_a_stored_condition_that_no_longer_compiles_fails_its_step() -> None:
    # A template stored in the former language is not validated again; reaching its condition fails closed.
    template = WorkflowTemplate(
        name="legacy",
        version=1,
        nodes=(Node(id="a", type="gate"), Node(id="b", type="gate", when="true and true")),
        edges=(Edge("a", "b"),),
    )
    engine = Engine(template)
    engine.advance(T0)

    engine.complete("a", at(1), outputs={})

    assert engine.steps["b"].status is StepStatus.FAILED
    assert "does not compile" in (engine.steps["b"].error or "")
