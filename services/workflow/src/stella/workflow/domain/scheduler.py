"""The scheduler: what a run needs now (steps to start, skip, time out, resume or retry, the run's
completion, the next wake-up), and applying that decision to the run.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from stella.workflow.domain.conditions import ExpressionEvaluationError, bind_context
from stella.workflow.domain.errors import ExpressionError, RunNotActive, StepStateConflict
from stella.workflow.domain.events import (
    RunCompleted,
    RunFailed,
    StepCompleted,
    StepSkipped,
    StepStarted,
    WorkflowEvent,
)
from stella.workflow.domain.run import (
    RunUpdate,
    StepRun,
    WorkflowRun,
    can_retry,
    failed_event,
    index_steps,
    is_settled,
    require_aware,
    retry_due,
    run_update,
    step_deadline,
    step_idempotency_key,
    trigger_skip_reason,
)
from stella.workflow.domain.states import RunStatus, SkipReason, StepStatus
from stella.workflow.domain.template import Node, WorkflowTemplate


@dataclass(frozen=True, kw_only=True)
class StartStep:
    """Start an attempt of a step now.

    Attributes:
        node_id: The node.
        node_type: Its step type (which executor runs it).
        attempt: The attempt number (1 for the first; higher for a retry).
        idempotency_key: Dispatch key of this attempt (see :func:`step_idempotency_key`).
        inputs: Resolved inputs (run inputs and upstream steps).
        config: The node's config.
        deadline_at: When the attempt times out, or ``None``.
    """

    node_id: str
    node_type: str
    attempt: int
    idempotency_key: str
    inputs: Mapping[str, Any]
    config: Mapping[str, Any]
    deadline_at: datetime | None

    @property
    def is_retry(self) -> bool:
        """Whether this attempt follows a failed one."""
        return self.attempt > 1


@dataclass(frozen=True, kw_only=True)
class SkipStep:
    """Skip a pending step."""

    node_id: str
    reason: SkipReason


@dataclass(frozen=True, kw_only=True)
class TimeOutStep:
    """Fail a running or waiting attempt that passed its deadline (a retry follows when the policy allows)."""

    node_id: str
    attempt: int
    deadline_at: datetime


@dataclass(frozen=True, kw_only=True)
class ResumeStep:
    """Complete a waiting timer step whose ``resume_at`` has come."""

    node_id: str
    attempt: int
    resume_at: datetime


@dataclass(frozen=True, kw_only=True)
class FailStep:
    """Fail a pending step whose ``when`` condition could not be evaluated: fail closed, never retried."""

    node_id: str
    error: str


StepAction = StartStep | SkipStep | TimeOutStep | ResumeStep | FailStep


@dataclass(frozen=True, kw_only=True)
class PendingRetry:
    """A failed step whose next attempt is not due yet."""

    node_id: str
    next_attempt: int
    due_at: datetime


@dataclass(frozen=True, kw_only=True)
class RunCompletion:
    """The run is complete: every step is settled. ``error`` lists the outputs that failed (they read null)."""

    status: RunStatus
    outputs: Mapping[str, Any]
    failed_nodes: tuple[str, ...]
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """What a run needs now.

    Attributes:
        actions: Step actions in the order they were decided (topological); apply them in this order.
        retries: Failed steps waiting for their backoff.
        completion: Set when the run is complete after the actions.
        next_wakeup_at: The earliest future instant the run needs attention without an outside event
            (retry due, attempt deadline, timer), or ``None``.
    """

    actions: tuple[StepAction, ...] = ()
    retries: tuple[PendingRetry, ...] = ()
    completion: RunCompletion | None = None
    next_wakeup_at: datetime | None = None

    @property
    def start(self) -> tuple[StartStep, ...]:
        """Steps to start now."""
        return tuple(a for a in self.actions if isinstance(a, StartStep))

    @property
    def skip(self) -> tuple[SkipStep, ...]:
        """Steps to skip now."""
        return tuple(a for a in self.actions if isinstance(a, SkipStep))

    @property
    def time_out(self) -> tuple[TimeOutStep, ...]:
        """Attempts that passed their deadline."""
        return tuple(a for a in self.actions if isinstance(a, TimeOutStep))

    @property
    def fail(self) -> tuple[FailStep, ...]:
        """Pending steps failed because their condition could not be evaluated."""
        return tuple(a for a in self.actions if isinstance(a, FailStep))

    @property
    def resume(self) -> tuple[ResumeStep, ...]:
        """Timer steps whose time has come."""
        return tuple(a for a in self.actions if isinstance(a, ResumeStep))

    @property
    def has_changes(self) -> bool:
        """Whether applying the schedule changes the run or a step."""
        return bool(self.actions) or self.completion is not None


@dataclass(frozen=True, kw_only=True)
class Advance(RunUpdate):
    """The outcome of :func:`advance`: the run update plus the schedule that caused it."""

    schedule: Schedule


def _step_view(step: StepRun) -> dict[str, Any]:
    return {
        "status": step.status.value,
        "attempt": step.attempt_number,
        "outputs": copy.deepcopy(dict(step.outputs)),
    }


def _context(run_inputs: Mapping[str, Any], steps: Mapping[str, StepRun], node_ids: Iterable[str]) -> dict[str, Any]:
    return {
        "inputs": copy.deepcopy(dict(run_inputs)),
        "steps": {node_id: _step_view(steps[node_id]) for node_id in node_ids},
    }


def resolve_step_inputs(
    template: WorkflowTemplate, run: WorkflowRun, steps: Iterable[StepRun], node_id: str
) -> dict[str, Any]:
    """Return a step's resolved inputs: ``{"inputs": run inputs, "steps": {upstream id: {status, attempt,
    outputs}}}`` over every node upstream of ``node_id`` (the same mapping its ``when`` reads).

    Raises:
        UnknownNode: when the template has no such node.
    """
    template.node(node_id)
    view = index_steps(template, run, steps)
    return _context(run.inputs, view, template.ancestors(node_id))


def _start(node: Node, step: StepRun, run: WorkflowRun, inputs: dict[str, Any], now: datetime) -> StartStep:
    attempt = step.attempt_number + 1
    return StartStep(
        node_id=node.id,
        node_type=node.type,
        attempt=attempt,
        idempotency_key=step_idempotency_key(run.id, node.id, attempt),
        inputs=inputs,
        config=copy.deepcopy(dict(node.config)),
        deadline_at=None if node.timeout_s is None else now + timedelta(seconds=node.timeout_s),
    )


def _started(step: StepRun, action: StartStep, now: datetime) -> StepRun:
    return replace(
        step,
        status=StepStatus.RUNNING,
        attempt_number=action.attempt,
        started_at=now,
        finished_at=None,
        resume_at=None,
        inputs=copy.deepcopy(dict(action.inputs)),
        outputs={},
        error=None,
        skip_reason=None,
    )


def _timed_out(node: Node, step: StepRun, now: datetime) -> StepRun:
    return replace(
        step,
        status=StepStatus.FAILED,
        finished_at=now,
        resume_at=None,
        error=f"timed out after {node.timeout_s:g}s",
    )


def _condition_failed(step: StepRun, action: FailStep, now: datetime) -> StepRun:
    return replace(step, status=StepStatus.FAILED, finished_at=now, error=action.error)


def _resumed(step: StepRun, now: datetime) -> StepRun:
    return replace(step, status=StepStatus.SUCCEEDED, finished_at=now, resume_at=None, error=None)


def _skipped(step: StepRun, reason: SkipReason, now: datetime) -> StepRun:
    return replace(step, status=StepStatus.SKIPPED, finished_at=now, skip_reason=reason)


def _run_outputs(
    template: WorkflowTemplate, run: WorkflowRun, steps: Mapping[str, StepRun]
) -> tuple[dict[str, Any], list[str]]:
    """The run's outputs (``null`` for one that failed) and the errors of those that failed."""
    context = bind_context(_context(run.inputs, steps, template.topological_order))
    outputs: dict[str, Any] = {}
    errors: list[str] = []
    for name, expr in template._output_expressions.items():
        try:
            if isinstance(expr, ExpressionError):
                raise ExpressionEvaluationError(f"does not compile: {expr.detail}")
            outputs[name] = copy.deepcopy(expr.evaluate(context))
        except ExpressionEvaluationError as exc:
            outputs[name] = None
            errors.append(f"output {name!r}: {exc}")
    return outputs, errors


def schedule(template: WorkflowTemplate, run: WorkflowRun, steps: Iterable[StepRun], *, now: datetime) -> Schedule:
    """Decide what a run needs at ``now``: a pure function of the template, the stored states and ``now``.

    Nodes are visited in topological order over a working copy of the states, so the decisions cascade in
    one call: a timed-out step whose backoff is zero restarts at once, a skip propagates down its path,
    and a run whose last step is skipped completes. Applying the schedule and scheduling again at the same
    ``now`` yields no actions, which is what makes a restart safe: the I/O layer reloads the stored states
    and gets the decisions it would have made without the restart.

    A run that is not ``running`` needs nothing (an empty schedule).

    Raises:
        UnknownNode: for a stored step of a node the template does not have.
        StepStateConflict: for a stored step of another run.
    """
    require_aware(now)
    view = index_steps(template, run, steps)
    if run.status is not RunStatus.RUNNING:
        return Schedule()
    graph = template._graph
    conditions = template._conditions
    actions: list[StepAction] = []
    retries: list[PendingRetry] = []
    for node_id in graph.order:
        node = graph.nodes[node_id]
        step = view[node_id]
        if step.status.is_active:
            deadline = step_deadline(node, step)
            if deadline is not None and now >= deadline:
                actions.append(TimeOutStep(node_id=node_id, attempt=step.attempt_number, deadline_at=deadline))
                step = view[node_id] = _timed_out(node, step, now)
            elif step.status is StepStatus.WAITING and step.resume_at is not None and now >= step.resume_at:
                actions.append(ResumeStep(node_id=node_id, attempt=step.attempt_number, resume_at=step.resume_at))
                step = view[node_id] = _resumed(step, now)
        if step.status is StepStatus.FAILED and can_retry(node, step):
            due = retry_due(node, step)
            if now >= due:
                start = _start(node, step, run, _context(run.inputs, view, graph.ancestors[node_id]), now)
                actions.append(start)
                view[node_id] = _started(step, start, now)
            else:
                retries.append(PendingRetry(node_id=node_id, next_attempt=step.attempt_number + 1, due_at=due))
        elif step.status is StepStatus.PENDING:
            predecessors = graph.predecessors[node_id]
            if not all(is_settled(graph.nodes[p], view[p]) for p in predecessors):
                continue
            reason = trigger_skip_reason(node, [view[p] for p in predecessors])
            if reason is None:
                inputs = _context(run.inputs, view, graph.ancestors[node_id])
                try:
                    condition = conditions.get(node_id)
                    if isinstance(condition, ExpressionError):
                        raise ExpressionEvaluationError(f"does not compile: {condition.detail}")
                    if condition is not None and not condition.test(inputs):
                        reason = SkipReason.CONDITION_FALSE
                except ExpressionEvaluationError as exc:
                    failure = FailStep(node_id=node_id, error=f"condition {node.when!r} failed: {exc}")
                    actions.append(failure)
                    view[node_id] = _condition_failed(step, failure, now)
                    continue
            if reason is not None:
                actions.append(SkipStep(node_id=node_id, reason=reason))
                view[node_id] = _skipped(step, reason, now)
            else:
                start = _start(node, step, run, inputs, now)
                actions.append(start)
                view[node_id] = _started(step, start, now)
    completion: RunCompletion | None = None
    wakeups: list[datetime] = [retry.due_at for retry in retries]
    if all(is_settled(graph.nodes[n], view[n]) for n in graph.order):
        failed = tuple(n for n in graph.order if view[n].status in (StepStatus.FAILED, StepStatus.CANCELLED))
        outputs, output_errors = _run_outputs(template, run, view)
        completion = RunCompletion(
            status=RunStatus.FAILED if failed else RunStatus.SUCCEEDED,
            outputs=outputs,
            failed_nodes=failed,
            error="; ".join(output_errors) or None,
        )
    else:
        for node_id in graph.order:
            step = view[node_id]
            deadline = step_deadline(graph.nodes[node_id], step)
            if deadline is not None:
                wakeups.append(deadline)
            if step.status is StepStatus.WAITING and step.resume_at is not None:
                wakeups.append(step.resume_at)
    return Schedule(
        actions=tuple(actions),
        retries=tuple(retries),
        completion=completion,
        next_wakeup_at=min(wakeups) if wakeups and completion is None else None,
    )


def apply_schedule(
    template: WorkflowTemplate,
    run: WorkflowRun,
    steps: Iterable[StepRun],
    plan: Schedule,
    *,
    now: datetime,
) -> RunUpdate:
    """Apply a schedule computed by :func:`schedule` over the same states and ``now``.

    Raises:
        RunNotActive: when the schedule changes something and the run is not running.
        StepStateConflict: when a decision does not match the step's state (a stale schedule).
    """
    require_aware(now)
    view = index_steps(template, run, steps)
    original = dict(view)
    if plan.has_changes and run.status is not RunStatus.RUNNING:
        raise RunNotActive(f"run {run.id} is {run.status.value}; its steps cannot change")
    events: list[WorkflowEvent] = []
    for action in plan.actions:
        node = template.node(action.node_id)
        step = view[action.node_id]
        if isinstance(action, StartStep):
            startable = step.status is StepStatus.PENDING or can_retry(node, step)
            if not startable or step.attempt_number != action.attempt - 1:
                raise _stale(step, f"start attempt {action.attempt}")
            view[node.id] = _started(step, action, now)
            events.append(
                StepStarted(
                    run_id=run.id,
                    at=now,
                    node_id=node.id,
                    node_type=node.type,
                    attempt=action.attempt,
                    idempotency_key=action.idempotency_key,
                )
            )
        elif isinstance(action, SkipStep):
            if step.status is not StepStatus.PENDING:
                raise _stale(step, "skip")
            view[node.id] = _skipped(step, action.reason, now)
            events.append(StepSkipped(run_id=run.id, at=now, node_id=node.id, reason=action.reason))
        elif isinstance(action, FailStep):
            if step.status is not StepStatus.PENDING:
                raise _stale(step, "fail")
            failed = view[node.id] = _condition_failed(step, action, now)
            events.append(failed_event(node, failed, now))
        elif isinstance(action, TimeOutStep):
            if not step.status.is_active or step.attempt_number != action.attempt:
                raise _stale(step, f"time out attempt {action.attempt}")
            failed = view[node.id] = _timed_out(node, step, now)
            events.append(failed_event(node, failed, now))
        else:
            if step.status is not StepStatus.WAITING or step.attempt_number != action.attempt:
                raise _stale(step, f"resume attempt {action.attempt}")
            done = view[node.id] = _resumed(step, now)
            events.append(
                StepCompleted(run_id=run.id, at=now, node_id=node.id, attempt=done.attempt_number, outputs={})
            )
    updated = replace(run, next_wakeup_at=plan.next_wakeup_at)
    completion = plan.completion
    if completion is not None:
        updated = replace(
            updated,
            status=completion.status,
            completed_at=now,
            outputs=completion.outputs,
            next_wakeup_at=None,
            error=completion.error,
        )
        if completion.status is RunStatus.SUCCEEDED:
            events.append(RunCompleted(run_id=run.id, at=now, outputs=copy.deepcopy(dict(completion.outputs))))
        else:
            failed_steps = f"steps failed: {', '.join(completion.failed_nodes)}" if completion.failed_nodes else ""
            error = "; ".join(part for part in (failed_steps, completion.error or "") if part)
            updated = replace(updated, error=error)
            events.append(
                RunFailed(
                    run_id=run.id,
                    at=now,
                    failed_nodes=completion.failed_nodes,
                    error=error,
                    outputs=copy.deepcopy(dict(completion.outputs)),
                )
            )
    return run_update(template, updated, original, view, tuple(events))


def _stale(step: StepRun, what: str) -> StepStateConflict:
    return StepStateConflict(
        f"cannot {what} of step {step.node_id!r}: it is {step.status.value} at attempt {step.attempt_number}"
    )


def advance(template: WorkflowTemplate, run: WorkflowRun, steps: Iterable[StepRun], *, now: datetime) -> Advance:
    """Schedule and apply in one call: what the I/O layer runs after every change and at every wake-up.

    Returns:
        The updated run (with ``next_wakeup_at``), every step, the changed ones, the events, and the
        schedule (its :attr:`Schedule.start` lists the attempts to dispatch).
    """
    stored = tuple(steps)
    plan = schedule(template, run, stored, now=now)
    update = apply_schedule(template, run, stored, plan, now=now)
    return Advance(run=update.run, steps=update.steps, changed=update.changed, events=update.events, schedule=plan)
