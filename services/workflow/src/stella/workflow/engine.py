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
* ``http``, ``script`` and ``notify`` are executed by this service too, but outside the transaction: the
  attempt stays ``running`` and is returned in :attr:`Progress.executions`; the caller runs it once the
  transaction committed (:mod:`stella.workflow.executors`) and records its result like any other step's;
* every other type has no executor in this installation: the attempt fails at once with an error that says
  so, and its retry policy applies.

A local transition (a timer parked, an attempt failed) can make more work ready, so :func:`drive`
advances again until nothing changes; the run's ``next_wakeup_at`` then covers every deadline, retry and
timer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit
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

EXECUTED_HERE: Final[frozenset[str]] = frozenset(
    {BuiltinStepType.HTTP.value, BuiltinStepType.SCRIPT.value, BuiltinStepType.NOTIFY.value}
)
"""Step types this service executes itself once the attempt's start is committed (they perform I/O)."""

HTTP_METHODS: Final[frozenset[str]] = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
"""Methods an ``http`` step may use."""

_HTTP_FIELDS: Final = frozenset({"url", "method", "headers", "body", "expected_status", "timeout_s"})
_SCRIPT_FIELDS: Final = frozenset({"plugin", "config"})
_NOTIFY_FIELDS: Final = frozenset({"integration", "message", "fields"})

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


class StepPluginNotEnabled(InvalidStepConfig):
    """A ``script`` step names a step plugin the tenant has no enabled plugin instance of."""

    code = "WF_STEP_PLUGIN_NOT_ENABLED"
    status = 422
    title = "Step plugin not enabled for the tenant"


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
        executions: The attempts this service executes itself after the commit (``http``, ``script``, ``notify``).
        run_changed: Whether the run row changed.
    """

    run: WorkflowRun
    steps: dict[str, StepRun]
    changed: set[str] = field(default_factory=set)
    events: list[WorkflowEvent] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)
    executions: list[StartStep] = field(default_factory=list)
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


def http_host_allowed(host: str, allowed_hosts: Collection[str]) -> bool:
    """Whether ``host`` is on the operator's allow-list (``example.com``, or ``*.example.com`` for subdomains)."""
    host = host.lower().rstrip(".")
    for entry in allowed_hosts:
        entry = entry.lower().rstrip(".")
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


def check_http_config(config: Mapping[str, Any], allowed_hosts: Collection[str]) -> None:
    """Check an ``http`` step's config: ``{url, method?, headers?, body?, expected_status?, timeout_s?}``.

    Raises:
        InvalidStepConfig: unknown fields, a URL that is not http(s) or names a host off the allow-list, an
            unknown method, headers that are not strings, an expected status that is not a status code.
    """
    unknown = sorted(set(config) - _HTTP_FIELDS)
    if unknown:
        raise InvalidStepConfig(f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_HTTP_FIELDS))})")
    url = config.get("url")
    if not isinstance(url, str):
        raise InvalidStepConfig("an http step needs config.url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidStepConfig(f"config.url {url!r} must be an http or https URL with a host")
    if parts.username or parts.password:
        raise InvalidStepConfig("config.url must not carry credentials")
    if not http_host_allowed(parts.hostname, allowed_hosts):
        raise InvalidStepConfig(
            f"host {parts.hostname!r} is not on the operator's allow-list (STELLA_WORKFLOW_HTTP_ALLOWED_HOSTS)"
        )
    if config.get("method", "GET") not in HTTP_METHODS:
        raise InvalidStepConfig(f"config.method must be one of {', '.join(sorted(HTTP_METHODS))}")
    headers = config.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise InvalidStepConfig("config.headers must be an object of strings")
    expected = config.get("expected_status", 200)
    codes = expected if isinstance(expected, list) else [expected]
    if not codes or not all(isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in codes):
        raise InvalidStepConfig("config.expected_status must be a status code or a list of them")
    timeout = config.get("timeout_s", 30)
    if not _is_seconds(timeout, 300):
        raise InvalidStepConfig("config.timeout_s must be a number of seconds above 0, at most 300")


def check_script_config(
    config: Mapping[str, Any],
    step_plugins: Mapping[str, Callable[[Mapping[str, Any]], list[str]]],
    plugin_problem: Callable[[str], str | None] | None = None,
) -> None:
    """Check a ``script`` step's config: ``{plugin: <step plugin id>, config: {...}}``.

    Args:
        config: The step's config.
        step_plugins: The step plugins the tenant has enabled, by id, each with its config check.
        plugin_problem: Why a plugin id the tenant cannot use is refused, for the error's message.

    Raises:
        StepPluginNotEnabled: the tenant has no enabled step plugin of that id.
        InvalidStepConfig: the config does not fit the plugin's schema.
    """
    unknown = sorted(set(config) - _SCRIPT_FIELDS)
    if unknown:
        raise InvalidStepConfig(f"unknown field(s) {', '.join(unknown)} (allowed: config, plugin)")
    plugin_id = config.get("plugin")
    check = step_plugins.get(plugin_id) if isinstance(plugin_id, str) else None
    if check is None:
        enabled = ", ".join(sorted(step_plugins)) or "none"
        why = plugin_problem(plugin_id) if plugin_problem is not None and isinstance(plugin_id, str) else None
        raise StepPluginNotEnabled(
            f"a script step runs a step plugin the tenant has enabled: config.plugin {plugin_id!r} names none"
            + (f" ({why})" if why else "")
            + f" (enabled: {enabled})"
        )
    plugin_config = config.get("config", {})
    if not isinstance(plugin_config, Mapping):
        raise InvalidStepConfig("config.config must be an object")
    problems = check(plugin_config)
    if problems:
        raise InvalidStepConfig(f"config.config does not fit plugin {plugin_id!r}: {'; '.join(problems)}")


def check_notify_config(config: Mapping[str, Any]) -> None:
    """Check a ``notify`` step's config: ``{integration: <id or name>, message: <template>, fields?: {...}}``.

    ``message`` and the values of ``fields`` are templates (``{{ inputs.x }}``, ``{{ steps.a.outputs.y }}``)
    filled when the attempt runs; whether the integration exists is known only then (it may be created or
    deleted after the template is saved).

    Raises:
        InvalidStepConfig: unknown fields, no integration, no message, fields that are not strings.
    """
    unknown = sorted(set(config) - _NOTIFY_FIELDS)
    if unknown:
        raise InvalidStepConfig(f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_NOTIFY_FIELDS))})")
    integration = config.get("integration")
    if not isinstance(integration, str) or not 0 < len(integration) <= 63:
        raise InvalidStepConfig("a notify step needs config.integration, the id or name of a notification integration")
    message = config.get("message")
    if not isinstance(message, str) or not 0 < len(message) <= 4000:
        raise InvalidStepConfig("a notify step needs config.message, a text (template) of 1 to 4000 characters")
    fields = config.get("fields", {})
    if not isinstance(fields, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
        raise InvalidStepConfig("config.fields must be an object of strings")


def _is_seconds(value: Any, limit: float) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 < value <= limit
    )


def check_step_configs(
    template: WorkflowTemplate,
    *,
    step_plugins: Mapping[str, Callable[[Mapping[str, Any]], list[str]]] | None = None,
    plugin_problem: Callable[[str], str | None] | None = None,
    http_allowed_hosts: Collection[str] = (),
) -> None:
    """Check what this service itself needs of a template beyond the domain's validation.

    Args:
        template: The template being saved.
        step_plugins: The step plugins the tenant has enabled, by id, each with its config check.
        plugin_problem: Why a plugin id the tenant cannot use is refused (see :func:`check_script_config`).
        http_allowed_hosts: The hosts ``http`` steps may call.

    Raises:
        InvalidStepConfig: for a ``wait`` step without a valid ``seconds``, an ``http``, ``script`` or ``notify`` step whose
            config cannot work, or one without ``timeout_s`` (an attempt cut short by a restart of this service
            ends by its timeout and is retried).
    """
    for node in template.nodes:
        try:
            if node.type == TIMER_STEP:
                wait_seconds(node.config)
            elif node.type == BuiltinStepType.HTTP.value:
                check_http_config(node.config, http_allowed_hosts)
            elif node.type == BuiltinStepType.SCRIPT.value:
                check_script_config(node.config, step_plugins or {}, plugin_problem)
            elif node.type == BuiltinStepType.NOTIFY.value:
                check_notify_config(node.config)
            if node.type in EXECUTED_HERE and node.timeout_s is None:
                raise InvalidStepConfig(f"a {node.type} step needs timeout_s")
        except InvalidStepConfig as exc:
            raise type(exc)(f"step {node.id!r}: {exc.detail}") from None


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
            transition = _execute_locally(template, step, start, now, progress)
            if transition is not None:
                local = True
                progress._apply(transition)
        if not local:
            return progress
    raise RuntimeError(f"run {progress.run.id} did not settle after {_round_limit(template)} rounds")


def _execute_locally(
    template: WorkflowTemplate, step: StepRun, start: StartStep, now: datetime, progress: Progress
) -> StepTransition | None:
    """Run an attempt of a step type this service executes itself (or fail it when nobody can).

    Returns None for an attempt executed after the commit (it is added to ``progress.executions``).
    """
    if start.node_type in EXECUTED_HERE:
        progress.executions.append(start)
        return None
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
