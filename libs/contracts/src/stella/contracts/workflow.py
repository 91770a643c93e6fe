"""The workflow context: templates (DAGs of steps), runs and step runs, executed by the workflow service.

A step whose type belongs to another context is executed by that context: the workflow service sends it
an :class:`ExecuteStep` command on the step type's subject (see :data:`STEP_SUBJECTS`), and that service
answers, now or much later, with :class:`CompleteStep`. Each attempt carries an idempotency key
``<run>:<node>:<attempt>`` so executing it twice has the effect of once.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID, uuid5

from pydantic import ConfigDict, Field

from stella.contracts.envelope import Command, Event, Model, PageRequest, Query
from stella.contracts.validation import Name

CONTEXT: Final[str] = "workflow"
"""Context name in subjects."""

SAVE_TEMPLATE: Final[str] = "stella.cmd.workflow.save_template"
"""Command :class:`SaveTemplate`: validates and stores the next version of a tenant template."""
START_RUN: Final[str] = "stella.cmd.workflow.start_run"
"""Command :class:`StartRun`: starts a run of a template (idempotent per ``subject_id`` + template)."""
COMPLETE_STEP: Final[str] = "stella.cmd.workflow.complete_step"
"""Command :class:`CompleteStep`: the result of a step executed by another context."""
CANCEL_RUN: Final[str] = "stella.cmd.workflow.cancel_run"
"""Command :class:`CancelRun`."""

GET_TEMPLATE: Final[str] = "stella.rpc.workflow.get_template"
"""Query :class:`GetTemplate` -> :class:`TemplateView`."""
LIST_TEMPLATES: Final[str] = "stella.rpc.workflow.list_templates"
"""Query :class:`ListTemplates` -> page of :class:`TemplateView` (built-in and the tenant's)."""
GET_RUN: Final[str] = "stella.rpc.workflow.get_run"
"""Query :class:`GetRun` -> :class:`RunView` with its step runs."""

RUN_STARTED: Final[str] = "stella.evt.workflow.run_started"
"""Event :class:`RunStarted`."""
STEP_STARTED: Final[str] = "stella.evt.workflow.step_started"
"""Event :class:`StepStarted`."""
STEP_COMPLETED: Final[str] = "stella.evt.workflow.step_completed"
"""Event :class:`StepCompleted`."""
STEP_FAILED: Final[str] = "stella.evt.workflow.step_failed"
"""Event :class:`StepFailed`."""
RUN_COMPLETED: Final[str] = "stella.evt.workflow.run_completed"
"""Event :class:`RunCompleted`."""
RUN_FAILED: Final[str] = "stella.evt.workflow.run_failed"
"""Event :class:`RunFailed`."""

STEP_SUBJECTS: Final[dict[str, str]] = {
    "gate": "stella.cmd.promotion.evaluate_gates",
    "approval": "stella.cmd.approval.request_approvals",
    "evidence": "stella.cmd.evidence.collect_evidence",
    "deploy": "stella.cmd.deployment.execute_step",
    "health-check": "stella.cmd.deployment.execute_step",
    "verify-drift": "stella.cmd.deployment.execute_step",
}
"""Step types executed by another context, and the subject their :class:`ExecuteStep` goes to."""


PROMOTION_RUN_INPUTS: Final[frozenset[str]] = frozenset(
    {
        "promotion_id",
        "release_id",
        "environment_id",
        "requested_by",
        "approval_required",
        "required_approvals",
        "require_sod",
        "approver_groups",
        "approval_timeout_s",
    }
)
"""The inputs the promotion service starts every promotion's run with; a promotion template declares them all."""

PROMOTION_STEP_TYPES: Final[frozenset[str]] = frozenset({"gate", "approval"})
"""Step types only a promotion's run can execute: a template holding one is a promotion template."""


def promotion_template_problems(
    inputs: dict[str, Any], nodes: list[NodeSpec], edges: list[EdgeSpec], *, needs_approval: bool
) -> list[str]:
    """Why a template cannot run a promotion (empty when it can).

    A promotion's run is started with :data:`PROMOTION_RUN_INPUTS`, so the template must declare each of
    them and require no other input; its ``gate`` step decides the gates, so it needs one; an environment
    that needs approvals needs an ``approval`` step, which must run after the gate step; a ``deploy`` step
    must run after the gate and approval steps (a promotion deploys only once it is approved).

    Args:
        inputs: The template's declared inputs by name (``{name: {required, default, description}}``).
        nodes: Its steps.
        edges: Its edges.
        needs_approval: Whether the environment that names the template requires approvals.
    """
    problems: list[str] = []
    missing = sorted(PROMOTION_RUN_INPUTS - set(inputs))
    if missing:
        problems.append(f"it does not declare the inputs every promotion's run is started with: {', '.join(missing)}")
    extra = sorted(
        name
        for name, spec in inputs.items()
        if name not in PROMOTION_RUN_INPUTS
        and (not isinstance(spec, dict) or (spec.get("required", True) and spec.get("default") is None))
    )
    if extra:
        problems.append(f"it requires inputs a promotion does not send: {', '.join(extra)}")
    gates = {node.id for node in nodes if node.type == "gate"}
    if not gates:
        problems.append("it has no 'gate' step, so the promotion's gates are never decided")
    approvals = [node.id for node in nodes if node.type == "approval"]
    if needs_approval and not approvals:
        problems.append("the environment requires approvals but the template has no 'approval' step")
    successors: dict[str, set[str]] = {}
    for edge in edges:
        successors.setdefault(edge.source, set()).add(edge.target)
    after_gates = set().union(*(_reachable(successors, gate) for gate in gates))
    for node_id in approvals:
        if gates and node_id not in after_gates:
            problems.append(f"its approval step {node_id!r} does not run after a gate step")
    # A promotion deploys once it is approved: every deploy step comes after the gates and every approval.
    for node_id in (node.id for node in nodes if node.type == "deploy"):
        before = {source for source in successors if node_id in _reachable(successors, source)}
        missing = sorted((gates | set(approvals)) - before)
        if missing:
            problems.append(
                f"its deploy step {node_id!r} does not run after {', '.join(repr(m) for m in missing)}; "
                "a promotion deploys only once its gates and approvals allow it"
            )
    return problems


def _reachable(successors: dict[str, set[str]], start: str) -> set[str]:
    """Every node reachable from ``start`` along ``successors`` (``start`` excluded unless on a cycle)."""
    seen: set[str] = set()
    frontier = [start]
    while frontier:
        for following in successors.get(frontier.pop(), ()):
            if following not in seen:
                seen.add(following)
                frontier.append(following)
    return seen


COMPLETION_IDS: Final[UUID] = UUID("3c1b8a5e-2f4d-4e6a-9b7c-5d8e1f2a3b4c")
"""Namespace of completion message ids: one id per step attempt, however often its result is written."""


class RunStatus(StrEnum):
    """Run states."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    """Step run states."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class RetrySpec(Model):
    """How often and how patiently a step is retried."""

    max_attempts: int = Field(default=1, ge=1, le=100)
    backoff_s: float = Field(default=0, ge=0, le=86400)


class NodeSpec(Model):
    """One step of a template."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    type: str = Field(min_length=1, max_length=64)
    config: dict[str, Any] = Field(default_factory=dict)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    when: str | None = Field(default=None, max_length=1000)
    run_on: str = Field(default="success", pattern=r"^(success|always|failure)$")


class EdgeSpec(Model):
    """``from`` must finish before ``to`` starts."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    source: str = Field(alias="from")
    target: str = Field(alias="to")


class TemplateView(Model):
    """A template version."""

    id: UUID
    tenant_id: UUID | None
    name: str
    version: int
    nodes: list[NodeSpec]
    edges: list[EdgeSpec]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    is_builtin: bool
    created_at: datetime


class StepRunView(Model):
    """One attempt of one step."""

    id: UUID
    node_id: str
    status: StepStatus
    attempt_number: int
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    error: str | None
    logs: str
    started_at: datetime | None
    completed_at: datetime | None


class RunView(Model):
    """A run with its step runs."""

    id: UUID
    template_id: UUID
    template_name: str
    template_version: int = Field(description="The template version the run pinned when it started.")
    subject_id: UUID | None = Field(description="What the run is about (a promotion id).")
    status: RunStatus
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    started_at: datetime | None
    completed_at: datetime | None
    steps: list[StepRunView]


class SaveTemplate(Command):
    """Store the next version of a tenant template (validated: known step types, no cycle, no dangling edge)."""

    name: Name
    nodes: list[NodeSpec] = Field(min_length=1, max_length=100)
    edges: list[EdgeSpec] = Field(default_factory=list, max_length=500)
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)


class StartRun(Command):
    """Start a run; the run pins the template version it starts with.

    ``run_id`` lets the sender know the run's id up front (a promotion stores it); starting the same
    ``run_id`` twice starts one run.
    """

    template_name: str
    template_version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    run_id: UUID | None = None
    subject_id: UUID | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)


class ExecuteStep(Command):
    """Execute one attempt of a step owned by another context; answer with :class:`CompleteStep`."""

    run_id: UUID
    node_id: str
    attempt: int
    step_type: str
    config: dict[str, Any]
    inputs: dict[str, Any]
    subject_id: UUID | None = None

    @property
    def idempotency_key(self) -> str:
        """``<run>:<node>:<attempt>``: executing the same attempt twice has one effect."""
        return f"{self.run_id}:{self.node_id}:{self.attempt}"

    @property
    def step(self) -> StepRef:
        """The attempt this command executes."""
        return StepRef(run_id=self.run_id, node_id=self.node_id, attempt=self.attempt)

    def complete(
        self, status: StepStatus, *, outputs: dict[str, Any] | None = None, error: str | None = None, logs: str = ""
    ) -> CompleteStep:
        """The result of this attempt, caused by this command (see :meth:`StepRef.completion`)."""
        return self.step.completion(
            tenant_id=self.tenant_id,
            correlation_id=self.correlation_id,
            causation_id=self.message_id,
            status=status,
            outputs=outputs,
            error=error,
            logs=logs,
        )


class StepRef(Model):
    """Which step attempt a result belongs to; carried by work that finishes long after it started."""

    run_id: UUID
    node_id: str
    attempt: int

    def completion(
        self,
        *,
        tenant_id: UUID,
        correlation_id: UUID,
        causation_id: UUID | None,
        status: StepStatus,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
        logs: str = "",
    ) -> CompleteStep:
        """The result of this attempt, with a message id derived from the attempt.

        An attempt has one result: written again (a retried transaction, a redelivered cause) it is the same
        message, which the stream's duplicate window and the workflow's inbox drop.
        """
        return CompleteStep(
            message_id=uuid5(COMPLETION_IDS, f"{tenant_id}:{self.run_id}:{self.node_id}:{self.attempt}"),
            tenant_id=tenant_id,
            correlation_id=correlation_id,
            causation_id=causation_id,
            run_id=self.run_id,
            node_id=self.node_id,
            attempt=self.attempt,
            status=status,
            outputs=outputs or {},
            error=error,
            logs=logs,
        )


class CompleteStep(Command):
    """The outcome of an executed step attempt."""

    run_id: UUID
    node_id: str
    attempt: int
    status: StepStatus
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    logs: str = ""


class CancelRun(Command):
    """Cancel a run and its unfinished steps."""

    run_id: UUID
    reason: str | None = None


class GetTemplate(Query):
    """Read a template (latest version unless given)."""

    name: str
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)


class ListTemplates(Query):
    """List the latest version of every template visible to the tenant."""

    page: PageRequest = Field(default_factory=PageRequest)


class GetRun(Query):
    """Read a run and its steps."""

    run_id: UUID


class RunStarted(Event):
    """A run started."""

    run: RunView


class StepStarted(Event):
    """A step attempt started."""

    run_id: UUID
    node_id: str
    attempt: int
    step_type: str


class StepCompleted(Event):
    """A step attempt succeeded (or was skipped)."""

    run_id: UUID
    node_id: str
    attempt: int
    status: StepStatus
    outputs: dict[str, Any]


class StepFailed(Event):
    """A step attempt failed (it may be retried)."""

    run_id: UUID
    node_id: str
    attempt: int
    error: str
    will_retry: bool


DEPLOYMENT_JOBS = (
    "The deployment jobs the run's deploy steps reported (their job_id output), in template order. The "
    "jobs' own events travel on other consumers and may arrive after the run's end: this says they exist."
)


class RunCompleted(Event):
    """A run succeeded."""

    run_id: UUID
    subject_id: UUID | None
    outputs: dict[str, Any]
    template_name: str | None = None
    deployment_jobs: list[UUID] = Field(default_factory=list, description=DEPLOYMENT_JOBS)


class RunFailed(Event):
    """A run failed or was cancelled."""

    run_id: UUID
    subject_id: UUID | None
    status: RunStatus
    error: str | None
    template_name: str | None = None
    deployment_jobs: list[UUID] = Field(default_factory=list, description=DEPLOYMENT_JOBS)
