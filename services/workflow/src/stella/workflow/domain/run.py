"""Runs and their steps: the state machine of a run (created, started, cancelled) and of a step (waiting,
completed or failed, retried, timed out), with the ids and idempotency keys of step attempts.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID, uuid5

from stella.workflow.domain.errors import InvalidStepResult, RunNotActive, StepStateConflict
from stella.workflow.domain.events import (
    RunCancelled,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepWaiting,
    WorkflowEvent,
)
from stella.workflow.domain.states import RunOn, RunStatus, SkipReason, StepOutcome, StepStatus
from stella.workflow.domain.template import Node, WorkflowTemplate
from stella.workflow.domain.validation import resolve_run_inputs

_IDEMPOTENCY_NAMESPACE: Final = UUID("a4368ddf-33c4-45eb-b088-7dc0b1addcb7")


def step_idempotency_key(run_id: UUID, node_id: str, attempt: int) -> str:
    """The key that makes one step attempt have one effect, however often it is dispatched.

    The same (run, node, attempt) always gives the same key; a retry (a new attempt) gets a new key.
    """
    return f"wf/{run_id}/{node_id}/{attempt}"


def step_attempt_id(run_id: UUID, node_id: str, attempt: int) -> UUID:
    """A deterministic UUID for a step attempt (a name-based UUID of :func:`step_idempotency_key`).

    Suitable as the ``message_id`` of the command that dispatches the attempt, so a re-dispatch is dropped
    by the broker's duplicate window and by the receiver's inbox.
    """
    return uuid5(_IDEMPOTENCY_NAMESPACE, step_idempotency_key(run_id, node_id, attempt))


@dataclass(frozen=True)
class WorkflowRun:
    """An execution of a pinned template version.

    Attributes:
        id: Run id.
        tenant_id: Owning tenant.
        template_id: The template row the run started from.
        template_name: The template's name.
        template_version: The pinned template version.
        status: Run status.
        inputs: Resolved run inputs.
        context: Opaque caller context (e.g. the promotion id), carried along for the I/O layer.
        outputs: Run outputs, set when the run completes.
        created_at: When the run was created.
        started_at: When the run started.
        completed_at: When the run reached a terminal status.
        error: Why the run failed or was cancelled.
        next_wakeup_at: When the run next needs attention without an outside event (retry due, timeout,
            timer), as of the last :func:`apply_schedule`; ``None`` when nothing is due.
    """

    id: UUID
    tenant_id: UUID
    template_id: UUID
    template_name: str
    template_version: int
    status: RunStatus
    inputs: Mapping[str, Any]
    created_at: datetime
    context: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    next_wakeup_at: datetime | None = None


@dataclass(frozen=True)
class StepRun:
    """The state of one node in one run.

    Attributes:
        run_id: The run.
        node_id: The template node.
        status: Step status.
        attempt_number: The latest attempt (1 for the first); 0 until the step first starts.
        started_at: Start of the latest attempt.
        finished_at: End of the latest attempt (or when the step was skipped or cancelled).
        resume_at: For a ``waiting`` timer step, when the scheduler completes it.
        inputs: Resolved inputs of the latest attempt (see the module docstring).
        outputs: Outputs of the latest attempt.
        error: Why the latest attempt failed.
        skip_reason: Why the step was skipped.
    """

    run_id: UUID
    node_id: str
    status: StepStatus = StepStatus.PENDING
    attempt_number: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    resume_at: datetime | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    skip_reason: SkipReason | None = None

    @property
    def idempotency_key(self) -> str | None:
        """The key of the latest attempt, or ``None`` before the first start."""
        if self.attempt_number < 1:
            return None
        return step_idempotency_key(self.run_id, self.node_id, self.attempt_number)


@dataclass(frozen=True, kw_only=True)
class RunUpdate:
    """The outcome of a run-level transition.

    Attributes:
        run: The run after the transition.
        steps: Every step after the transition, in topological order.
        changed: The steps the transition changed (the ones to write).
        events: The events caused, in order.
    """

    run: WorkflowRun
    steps: tuple[StepRun, ...]
    changed: tuple[StepRun, ...]
    events: tuple[WorkflowEvent, ...]


@dataclass(frozen=True, kw_only=True)
class RunTransition:
    """The outcome of a run-only transition: the run and its events (none when nothing changed)."""

    run: WorkflowRun
    events: tuple[WorkflowEvent, ...]


@dataclass(frozen=True, kw_only=True)
class StepTransition:
    """The outcome of a step transition; ``changed`` is false for a duplicate or late report (a no-op)."""

    step: StepRun
    events: tuple[WorkflowEvent, ...]
    changed: bool


def require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime (UTC)")


def new_run(
    *,
    run_id: UUID,
    tenant_id: UUID,
    template: WorkflowTemplate,
    template_id: UUID,
    inputs: Mapping[str, Any],
    now: datetime,
    context: Mapping[str, Any] | None = None,
) -> RunUpdate:
    """Create a pending run and one pending step per node.

    Args:
        run_id: The new run's id.
        tenant_id: The tenant that starts it.
        template: The template version the run pins.
        template_id: The template's row id.
        inputs: Supplied run inputs (checked against the template's declared inputs).
        now: Creation time.
        context: Opaque caller context stored with the run.

    Raises:
        UnknownRunInput, MissingRunInput: when ``inputs`` do not match the template.
    """
    require_aware(now)
    resolved = resolve_run_inputs(template, inputs)
    run = WorkflowRun(
        id=run_id,
        tenant_id=tenant_id,
        template_id=template_id,
        template_name=template.name,
        template_version=template.version,
        status=RunStatus.PENDING,
        inputs=resolved,
        context=copy.deepcopy(dict(context or {})),
        created_at=now,
    )
    steps = tuple(StepRun(run_id=run_id, node_id=node_id) for node_id in template.topological_order)
    return RunUpdate(run=run, steps=steps, changed=steps, events=())


def start_run(run: WorkflowRun, *, now: datetime) -> RunTransition:
    """Move a pending run to running (call :func:`advance` next to start its first steps).

    Starting a running run again is a no-op (no events).

    Raises:
        RunNotActive: when the run has already finished.
    """
    require_aware(now)
    if run.status is RunStatus.RUNNING:
        return RunTransition(run=run, events=())
    if run.status is not RunStatus.PENDING:
        raise RunNotActive(f"run {run.id} is {run.status.value} and cannot start")
    started = replace(run, status=RunStatus.RUNNING, started_at=now)
    return RunTransition(
        run=started,
        events=(
            RunStarted(run_id=run.id, at=now, template_name=run.template_name, template_version=run.template_version),
        ),
    )


def cancel_run(
    template: WorkflowTemplate, run: WorkflowRun, steps: Iterable[StepRun], *, now: datetime, reason: str
) -> RunUpdate:
    """Cancel a pending or running run and every step not yet settled.

    Cancelling a cancelled run again is a no-op (no events).

    Raises:
        RunNotActive: when the run has already succeeded or failed.
    """
    require_aware(now)
    view = index_steps(template, run, steps)
    if run.status is RunStatus.CANCELLED:
        return run_update(template, run, view, view, ())
    if run.status.is_terminal:
        raise RunNotActive(f"run {run.id} is {run.status.value} and cannot be cancelled")
    original = dict(view)
    for node_id, step in view.items():
        if step.status in (StepStatus.PENDING, StepStatus.RUNNING, StepStatus.WAITING):
            view[node_id] = replace(step, status=StepStatus.CANCELLED, finished_at=now, resume_at=None)
    cancelled = replace(run, status=RunStatus.CANCELLED, completed_at=now, error=reason, next_wakeup_at=None)
    return run_update(template, cancelled, original, view, (RunCancelled(run_id=run.id, at=now, reason=reason),))


def begin_waiting(step: StepRun, *, attempt: int, now: datetime, resume_at: datetime | None = None) -> StepTransition:
    """Park a running attempt until an outside signal (an approval) or until ``resume_at`` (a timer).

    A waiting step is completed by :func:`complete_step` (outside signal) or by the scheduler at
    ``resume_at`` (it then succeeds). The step's timeout still applies while it waits. Repeating the same
    call is a no-op.

    Raises:
        StepStateConflict: when the attempt is not the step's running attempt.
    """
    require_aware(now)
    if step.status is StepStatus.WAITING and step.attempt_number == attempt and step.resume_at == resume_at:
        return StepTransition(step=step, events=(), changed=False)
    if step.status is not StepStatus.RUNNING or step.attempt_number != attempt:
        raise StepStateConflict(
            f"step {step.node_id!r} is {step.status.value} at attempt {step.attempt_number}; "
            f"attempt {attempt} cannot start waiting"
        )
    waiting = replace(step, status=StepStatus.WAITING, resume_at=resume_at)
    event = StepWaiting(run_id=step.run_id, at=now, node_id=step.node_id, attempt=attempt, resume_at=resume_at)
    return StepTransition(step=waiting, events=(event,), changed=True)


def complete_step(
    template: WorkflowTemplate,
    step: StepRun,
    *,
    attempt: int,
    outcome: StepOutcome | str,
    now: datetime,
    outputs: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> StepTransition:
    """Record the result of a step attempt (from its executor or from an outside signal).

    Works on a ``running`` or ``waiting`` attempt. The first result recorded for an attempt wins: a result
    for an older attempt, for an attempt already settled (e.g. failed by its timeout), or for a cancelled
    or skipped step is a no-op, so a redelivered or late message changes nothing. Call :func:`advance`
    next.

    Args:
        template: The run's template (for the retry policy).
        step: The step.
        attempt: The attempt the result belongs to.
        outcome: ``succeeded`` or ``failed``.
        now: When the result is recorded.
        outputs: The attempt's outputs (kept on failure too: a denied approval reports its votes).
        error: Why the attempt failed.

    Raises:
        InvalidStepResult: for an unknown outcome, outputs that are not an object, or an attempt below 1.
        StepStateConflict: for an attempt that has not started.
        UnknownNode: when the template has no such node.
    """
    require_aware(now)
    try:
        result = StepOutcome(outcome)
    except ValueError:
        raise InvalidStepResult(f"outcome {outcome!r} must be 'succeeded' or 'failed'") from None
    if outputs is not None and not (isinstance(outputs, Mapping) and all(isinstance(k, str) for k in outputs)):
        raise InvalidStepResult("step outputs must be an object with string keys")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise InvalidStepResult(f"attempt {attempt!r} must be a positive integer")
    node = template.node(step.node_id)
    if attempt > step.attempt_number:
        raise StepStateConflict(
            f"step {step.node_id!r} is at attempt {step.attempt_number}; attempt {attempt} has not started"
        )
    if attempt < step.attempt_number or not step.status.is_active:
        return StepTransition(step=step, events=(), changed=False)
    values = copy.deepcopy(dict(outputs or {}))
    if result is StepOutcome.SUCCEEDED:
        done = replace(step, status=StepStatus.SUCCEEDED, finished_at=now, outputs=values, error=None, resume_at=None)
        event: WorkflowEvent = StepCompleted(
            run_id=step.run_id, at=now, node_id=step.node_id, attempt=attempt, outputs=copy.deepcopy(values)
        )
        return StepTransition(step=done, events=(event,), changed=True)
    reason = error or "step failed"
    failed = replace(step, status=StepStatus.FAILED, finished_at=now, outputs=values, error=reason, resume_at=None)
    return StepTransition(step=failed, events=(failed_event(node, failed, now),), changed=True)


def failed_event(node: Node, step: StepRun, now: datetime) -> StepFailed:
    retry_at = retry_due(node, step) if can_retry(node, step) else None
    return StepFailed(
        run_id=step.run_id,
        at=now,
        node_id=step.node_id,
        attempt=step.attempt_number,
        error=step.error or "step failed",
        will_retry=retry_at is not None,
        retry_at=retry_at,
    )


def can_retry(node: Node, step: StepRun) -> bool:
    # A failed step that never started (attempt 0) failed on its condition: retrying cannot change that.
    return step.status is StepStatus.FAILED and 0 < step.attempt_number < node.retry.max_attempts


def retry_due(node: Node, step: StepRun) -> datetime:
    # A failed step always has finished_at when written by this module; fall back to its start so that a
    # hand-edited row cannot stall the run forever.
    failed_at = step.finished_at or step.started_at
    if failed_at is None:
        raise StepStateConflict(f"failed step {step.node_id!r} has no failure time")
    return failed_at + node.retry.delay_after(step.attempt_number)


def step_deadline(node: Node, step: StepRun) -> datetime | None:
    """When the step's current attempt times out (``started_at + timeout_s``), or ``None``."""
    if node.timeout_s is None or step.started_at is None or not step.status.is_active:
        return None
    return step.started_at + timedelta(seconds=node.timeout_s)


def is_settled(node: Node, step: StepRun) -> bool:
    if step.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.CANCELLED):
        return True
    return step.status is StepStatus.FAILED and not can_retry(node, step)


def trigger_skip_reason(node: Node, upstream: list[StepRun]) -> SkipReason | None:
    """Whether the predecessors' outcomes (all settled) skip the node, per its ``run_on``."""
    failed = any(s.status in (StepStatus.FAILED, StepStatus.CANCELLED) for s in upstream)
    if node.run_on is RunOn.ALWAYS:
        return None
    if node.run_on is RunOn.FAILURE:
        return None if failed else SkipReason.NO_UPSTREAM_FAILURE
    if failed:
        return SkipReason.UPSTREAM_FAILED
    if upstream and all(s.status is StepStatus.SKIPPED for s in upstream):
        return SkipReason.UPSTREAM_SKIPPED
    return None


def index_steps(template: WorkflowTemplate, run: WorkflowRun, steps: Iterable[StepRun]) -> dict[str, StepRun]:
    """Steps by node id in topological order; a node without a stored step is a fresh pending one."""
    given: dict[str, StepRun] = {}
    for step in steps:
        template.node(step.node_id)
        if step.run_id != run.id:
            raise StepStateConflict(f"step {step.node_id!r} belongs to run {step.run_id}, not {run.id}")
        given[step.node_id] = step
    return {
        node_id: given.get(node_id) or StepRun(run_id=run.id, node_id=node_id) for node_id in template.topological_order
    }


def run_update(
    template: WorkflowTemplate,
    run: WorkflowRun,
    original: Mapping[str, StepRun],
    view: Mapping[str, StepRun],
    events: tuple[WorkflowEvent, ...],
) -> RunUpdate:
    ordered = tuple(view[node_id] for node_id in template.topological_order)
    changed = tuple(step for step in ordered if step != original[step.node_id])
    return RunUpdate(run=run, steps=ordered, changed=changed, events=events)
