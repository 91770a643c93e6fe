"""How the workflow service executes steps on top of the domain's scheduler. Pure: no I/O, no clock.

:func:`drive` runs the domain's :func:`~stella.workflow.domain.scheduler.advance` until the run is quiet and sorts
every started attempt by who executes it:

* step types in :data:`~stella.contracts.workflow.STEP_SUBJECTS` belong to another context: the attempt is
  returned as a :class:`Dispatch`; the caller writes its ``ExecuteStep`` to the outbox in the same
  transaction as the step's ``running`` state, with the attempt's resolved inputs
  ``{"inputs": run inputs, "steps": {upstream node: {status, attempt, outputs}}}``. An ``approval``
  attempt is also parked as ``waiting``: it ends on a person's decision, reported later by whoever
  receives it;
* ``wait`` is a timer executed here: the attempt waits until ``config.seconds`` after its start and the
  scheduler completes it then;
* every other type (``notify``, ``script``, ``http``...) has no executor in this installation
  yet: the attempt fails at once with an error that says so, and its retry policy applies.

A local transition (a timer parked, an attempt failed) can make more work ready, so :func:`drive`
advances again until nothing changes; the run's ``next_wakeup_at`` then covers every deadline, retry and
timer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID, uuid5

from stella.contracts import workflow as c
from stella.contracts.workflow import STEP_SUBJECTS
from stella.workflow.domain.errors import DomainError
from stella.workflow.domain.events import WorkflowEvent
from stella.workflow.domain.run import (
    StepRun,
    StepTransition,
    WorkflowRun,
    begin_waiting,
    cancel_run,
    complete_step,
    start_run,
)
from stella.workflow.domain.scheduler import StartStep, advance
from stella.workflow.domain.states import StepOutcome
from stella.workflow.domain.template import WorkflowTemplate
from stella.workflow.templates import BuiltinStepType

WAITS_FOR_SIGNAL: Final[frozenset[str]] = frozenset({BuiltinStepType.APPROVAL.value})
"""Dispatched step types whose attempt waits for an outside decision (shown as ``waiting``)."""

TIMER_STEP: Final[str] = BuiltinStepType.WAIT.value
"""The step type this service executes itself: a timer (``config: {seconds}``)."""

MAX_LOG_CHARS: Final = 65_536
"""Most characters of step logs kept per step (the newest are kept)."""

_STEP_RUN_NAMESPACE: Final = UUID("2f0e6f55-4cc4-4d39-9a4b-6f3b0b0fd1a4")


class RunNotFound(DomainError):
    """No run with this id in the caller's tenant."""

    code = "WF_RUN_NOT_FOUND"
    status = 404
    title = "Workflow run not found"


class RunConflict(DomainError):
    """A run with this id exists but was started differently (another template)."""

    code = "WF_RUN_CONFLICT"
    status = 409
    title = "Workflow run id already used"


class TemplateNameReserved(DomainError):
    """A tenant template may not take the name of a built-in one."""

    code = "WF_TEMPLATE_NAME_RESERVED"
    status = 409
    title = "Template name is reserved"


class IncompletePromotionTemplate(DomainError):
    """A template with a gate or approval step (a promotion template) that a promotion's run cannot start."""

    code = "WF_PROMOTION_TEMPLATE_INCOMPLETE"
    status = 400
    title = "Promotion template cannot run a promotion"


def check_promotion_template(cmd: c.SaveTemplate) -> None:
    """Refuse a promotion template (one with a ``gate`` or ``approval`` step) a promotion could not run.

    Such a template only makes sense as an environment's promotion workflow; saved without the inputs every
    promotion's run is started with, or without a gate step, its runs would never start or never decide.

    Raises:
        IncompletePromotionTemplate: naming every problem.
    """
    if not any(node.type in c.PROMOTION_STEP_TYPES for node in cmd.nodes):
        return
    problems = c.promotion_template_problems(cmd.inputs, cmd.nodes, cmd.edges, needs_approval=False)
    if problems:
        raise IncompletePromotionTemplate(f"template {cmd.name!r} has promotion steps but " + "; ".join(problems))


class InvalidStepConfig(DomainError):
    """A step's ``config`` cannot work for its type (a ``wait`` without a valid ``seconds``)."""

    code = "WF_INVALID_STEP_CONFIG"
    status = 400
    title = "Invalid step configuration"


@dataclass(frozen=True)
class Dispatch:
    """An attempt another context executes: send ``ExecuteStep`` for it on ``subject``."""

    start: StartStep
    subject: str


@dataclass
class Progress:
    """Where a run stands after :func:`drive` (or one of the transitions that call it).

    Attributes:
        run: The run.
        steps: Every step by node id, in topological order.
        changed: Node ids of the steps that changed (the rows to write).
        events: The domain events, in order.
        dispatches: The attempts to send to other contexts, in the order they started.
        run_changed: Whether the run row changed.
    """

    run: WorkflowRun
    steps: dict[str, StepRun]
    changed: set[str] = field(default_factory=set)
    events: list[WorkflowEvent] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)
    run_changed: bool = False

    def _set_step(self, step: StepRun) -> None:
        if self.steps[step.node_id] != step:
            self.steps[step.node_id] = step
            self.changed.add(step.node_id)

    def _apply(self, transition: StepTransition) -> None:
        self._set_step(transition.step)
        self.events.extend(transition.events)


def step_run_id(run_id: UUID, node_id: str) -> UUID:
    """The id of a step run row: a name-based UUID of (run, node), so it never needs storing before use."""
    return uuid5(_STEP_RUN_NAMESPACE, f"{run_id}/{node_id}")


def wait_seconds(config: Mapping[str, Any]) -> float:
    """The delay of a ``wait`` step.

    Raises:
        InvalidStepConfig: when ``config.seconds`` is missing, not a number, negative or above 30 days.
    """
    seconds = config.get("seconds")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not math.isfinite(seconds):
        raise InvalidStepConfig(f"a wait step needs config.seconds, a number of seconds; got {seconds!r}")
    if not 0 <= seconds <= 30 * 86_400:
        raise InvalidStepConfig(f"config.seconds {seconds:g} of a wait step must be between 0 and 30 days")
    return float(seconds)


def check_step_configs(template: WorkflowTemplate) -> None:
    """Check what this service itself needs of a template beyond the domain's validation.

    Raises:
        InvalidStepConfig: for a ``wait`` step without a valid ``seconds``.
    """
    for node in template.nodes:
        if node.type == TIMER_STEP:
            try:
                wait_seconds(node.config)
            except InvalidStepConfig as exc:
                raise InvalidStepConfig(f"step {node.id!r}: {exc.detail}") from None


def append_logs(existing: str, attempt: int, logs: str) -> str:
    """Add an attempt's logs to a step's logs, keeping the newest :data:`MAX_LOG_CHARS` characters."""
    if not logs:
        return existing
    combined = f"{existing}[attempt {attempt}]\n{logs.rstrip()}\n"
    return combined[-MAX_LOG_CHARS:]


def _round_limit(template: WorkflowTemplate) -> int:
    # Every extra round is caused by a local transition: a timer parked (once per attempt) or an attempt
    # failed (at most max_attempts per node). More rounds than that means the domain and this loop disagree.
    return sum(node.retry.max_attempts for node in template.nodes) * 2 + len(template.nodes) + 2


def drive(template: WorkflowTemplate, progress: Progress, *, now: datetime) -> Progress:
    """Advance the run until nothing more happens at ``now``, executing local steps and collecting dispatches.

    Args:
        template: The run's pinned template.
        progress: The run and its steps (updated in place and returned).
        now: The instant of the transition.

    Returns:
        ``progress``, with the run's ``next_wakeup_at`` recomputed.

    Raises:
        RuntimeError: when the run does not settle, which would be a defect of the engine.
    """
    for _ in range(_round_limit(template)):
        before = progress.run
        result = advance(template, progress.run, progress.steps.values(), now=now)
        progress.run = result.run
        progress.run_changed = progress.run_changed or result.run != before
        for step in result.changed:
            progress._set_step(step)
        progress.events.extend(result.events)
        local = False
        for start in result.schedule.start:
            step = progress.steps[start.node_id]
            subject = STEP_SUBJECTS.get(start.node_type)
            if subject is not None:
                progress.dispatches.append(Dispatch(start=start, subject=subject))
                if start.node_type in WAITS_FOR_SIGNAL:
                    progress._apply(begin_waiting(step, attempt=start.attempt, now=now))
                continue
            local = True
            progress._apply(_execute_locally(template, step, start, now))
        if not local:
            return progress
    raise RuntimeError(f"run {progress.run.id} did not settle after {_round_limit(template)} rounds")


def _execute_locally(template: WorkflowTemplate, step: StepRun, start: StartStep, now: datetime) -> StepTransition:
    """Run an attempt of a step type this service executes itself (or fail it when nobody can)."""
    if start.node_type != TIMER_STEP:
        error = f"step type {start.node_type!r} cannot run yet: no executor for it is installed"
        return complete_step(template, step, attempt=start.attempt, outcome=StepOutcome.FAILED, now=now, error=error)
    try:
        delay = wait_seconds(start.config)
    except InvalidStepConfig as exc:
        return complete_step(
            template, step, attempt=start.attempt, outcome=StepOutcome.FAILED, now=now, error=exc.detail
        )
    return begin_waiting(step, attempt=start.attempt, now=now, resume_at=now + timedelta(seconds=delay))


def begin(template: WorkflowTemplate, run: WorkflowRun, steps: Iterable[StepRun], *, now: datetime) -> Progress:
    """Start a created run and its first steps.

    Raises:
        RunNotActive: when the run has finished.
    """
    started = start_run(run, now=now)
    progress = Progress(
        run=started.run,
        steps={step.node_id: step for step in steps},
        events=list(started.events),
        run_changed=started.run != run,
    )
    return drive(template, progress, now=now)


def record_result(
    template: WorkflowTemplate,
    run: WorkflowRun,
    steps: Iterable[StepRun],
    *,
    node_id: str,
    attempt: int,
    outcome: str,
    now: datetime,
    outputs: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> tuple[Progress, bool]:
    """Record a step attempt's result and advance the run.

    Returns:
        The progress and whether the result was applied (False for a duplicate or late result: nothing
        changed).

    Raises:
        UnknownNode: for a node the template does not have.
        InvalidStepResult: for an outcome other than succeeded or failed.
        StepStateConflict: for an attempt that has not started.
    """
    progress = Progress(run=run, steps={step.node_id: step for step in steps})
    template.node(node_id)
    current = progress.steps.get(node_id) or StepRun(run_id=run.id, node_id=node_id)
    transition = complete_step(
        template, current, attempt=attempt, outcome=outcome, now=now, outputs=outputs, error=error
    )
    if not transition.changed:
        return progress, False
    progress._apply(transition)
    return drive(template, progress, now=now), True


def wake(template: WorkflowTemplate, run: WorkflowRun, steps: Iterable[StepRun], *, now: datetime) -> Progress:
    """Advance a run whose wake-up time came (timeouts, retries, timers)."""
    return drive(template, Progress(run=run, steps={step.node_id: step for step in steps}), now=now)


def cancel(
    template: WorkflowTemplate, run: WorkflowRun, steps: Iterable[StepRun], *, now: datetime, reason: str
) -> Progress:
    """Cancel a run and every unsettled step (a cancelled run again is a no-op).

    Raises:
        RunNotActive: when the run has already succeeded or failed.
    """
    update = cancel_run(template, run, steps, now=now, reason=reason)
    return Progress(
        run=update.run,
        steps={step.node_id: step for step in update.steps},
        changed={step.node_id for step in update.changed},
        events=list(update.events),
        run_changed=update.run != run,
    )
