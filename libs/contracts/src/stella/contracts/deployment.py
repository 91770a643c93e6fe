"""The deployment context: targets, agents, deployment jobs and tasks, version stickers and drift (reference §4).

The deployment service owns schema ``deployment``. A promotion's ``deploy`` step reaches it as an
:class:`~stella.contracts.workflow.ExecuteStep` on :data:`EXECUTE_STEP`; it plans a job of tasks by the
environment's strategy, leases the tasks to agents through the gateway (see :mod:`stella.contracts.agent` for
the bodies an agent sends and receives) and answers the step with ``CompleteStep`` when the job ends.

The agent channel (register, heartbeat, task feed, log chunks, results) is request/reply (``stella.rpc``): an
agent retries every call until it is answered and every call is idempotent (a registration token is used once,
a log chunk is keyed by ``(task, attempt, seq)``, a result by ``(task, attempt)``), so nothing needs the
commands stream's durability, and a poll answered quickly matters more.

The gateway serves the agent channel over HTTP (bodies of :mod:`stella.contracts.agent`; the credential as
``Authorization: Bearer stag_...``):

* ``POST /api/v1/agents/register`` (:class:`~stella.contracts.agent.RegisterAgent`, no credential) -> 201
  :class:`~stella.contracts.agent.AgentRegistered`;
* ``POST /api/v1/agents/{id}/heartbeat`` (:class:`~stella.contracts.agent.Heartbeat`) ->
  :class:`~stella.contracts.agent.HeartbeatAck`;
* ``GET /api/v1/agents/{id}/tasks?wait=<s>&max_tasks=<n>`` -> ``{"tasks": [AgentTask, ...]}`` (long poll);
* ``POST /api/v1/agents/{id}/tasks/{task_id}/logs`` (:class:`~stella.contracts.agent.LogChunk`) ->
  ``{"accepted": bool}``;
* ``POST /api/v1/agents/{id}/tasks/{task_id}/result`` (:class:`~stella.contracts.agent.TaskResult`) ->
  ``{"accepted": bool}`` (False: an older attempt, or not this agent's task; nothing changed);
* ``POST /api/v1/agents/{id}/results`` (``{"results": [TaskResult, ...]}``, at most 100) ->
  ``{"results": [ResultOutcome, ...]}``: the same, several at once, applied in one transaction.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from pydantic import Field, StringConstraints, model_validator

from stella.contracts.agent import (
    AgentStatus,
    HealthCheckSpec,
    LabelKey,
    LabelValue,
    LogChunk,
    PortMapping,
    RegisterAgent,
    TargetType,
    TaskResult,
    TaskStatus,
    TaskType,
)
from stella.contracts.agent import Heartbeat as HeartbeatBody
from stella.contracts.envelope import Command, Event, Model, PageRequest, Query
from stella.contracts.validation import Digest, Name

CONTEXT: Final[str] = "deployment"
"""Context name in subjects."""

# --- workflow step -------------------------------------------------------------------------------------------

EXECUTE_STEP: Final[str] = "stella.cmd.deployment.execute_step"
"""Workflow step command (``ExecuteStep`` of type ``deploy``, ``health-check`` or ``verify-drift``)."""

STEP_TYPES: Final[frozenset[str]] = frozenset({"deploy", "health-check", "verify-drift"})
"""Workflow step types the deployment service executes."""

STEP_OUTPUT_JOB_ID: Final[str] = "job_id"
"""The output of a step the deployment service completes that names the job it ran (the job's id as text).
The workflow reports the deploy steps' jobs in a run's end (``RunCompleted.deployment_jobs``)."""

# --- commands (stored, answered once handled) ---------------------------------------------------------------

CREATE_TARGET: Final[str] = "stella.cmd.deployment.create_target"
"""Command :class:`CreateTarget` -> :class:`TargetView`."""
UPDATE_TARGET: Final[str] = "stella.cmd.deployment.update_target"
"""Command :class:`UpdateTarget` -> :class:`TargetView`."""
DELETE_TARGET: Final[str] = "stella.cmd.deployment.delete_target"
"""Command :class:`DeleteTarget`; refused (409) while a job deploys to it."""
CREATE_AGENT_TOKEN: Final[str] = "stella.cmd.deployment.create_agent_token"
"""Command :class:`CreateAgentToken` -> :class:`AgentTokenCreated` (the token is shown once)."""
REVOKE_AGENT: Final[str] = "stella.cmd.deployment.revoke_agent"
"""Command :class:`RevokeAgent` -> :class:`AgentView`."""
CANCEL_JOB: Final[str] = "stella.cmd.deployment.cancel_job"
"""Command :class:`CancelJob` -> :class:`JobView`."""
RESUME_JOB: Final[str] = "stella.cmd.deployment.resume_job"
"""Command :class:`ResumeJob` -> :class:`JobView`."""
ROLLBACK_JOB: Final[str] = "stella.cmd.deployment.rollback_job"
"""Command :class:`RollbackJob` -> :class:`JobView` of the new rollback job."""
CHECK_DRIFT: Final[str] = "stella.cmd.deployment.check_drift"
"""Command :class:`CheckDrift` -> :class:`TaskView` of the inspect task."""
REMEDIATE_TARGET: Final[str] = "stella.cmd.deployment.remediate_target"
"""Command :class:`RemediateTarget` -> :class:`JobView` redeploying the sticker's release."""

# --- agent channel (request/reply, idempotent) ---------------------------------------------------------------

AGENT_REGISTER: Final[str] = "stella.rpc.deployment.agent_register"
"""Request :class:`AgentRegister` -> :class:`~stella.contracts.agent.AgentRegistered`."""
AGENT_HEARTBEAT: Final[str] = "stella.rpc.deployment.agent_heartbeat"
"""Request :class:`AgentHeartbeat` -> :class:`~stella.contracts.agent.HeartbeatAck`."""
AGENT_POLL: Final[str] = "stella.rpc.deployment.agent_poll"
"""Request :class:`AgentPoll` -> :class:`AgentTasks` (possibly empty; the gateway long-polls)."""
AGENT_LOG: Final[str] = "stella.rpc.deployment.agent_log"
"""Request :class:`AgentLog` -> ``{"stored": bool}``."""
AGENT_RESULT: Final[str] = "stella.rpc.deployment.agent_result"
"""Request :class:`AgentResult` -> ``{"accepted": bool}`` (False: the result of an older attempt, ignored)."""
AGENT_RESULTS: Final[str] = "stella.rpc.deployment.agent_results"
"""Request :class:`AgentResults` -> :class:`ResultOutcomes`: several results applied in one transaction."""
AGENT_AUTHENTICATE: Final[str] = "stella.rpc.deployment.agent_authenticate"
"""Request :class:`AgentAuthenticate` -> :class:`AgentView`; 401 for an unknown or revoked credential."""

TASKS_READY_PREFIX: Final[str] = "stella.note.deployment.tasks"
"""Core NATS (not stored) notices ``<prefix>.<agent id>``: tasks wait for that agent; a long poll wakes up."""

# --- queries ------------------------------------------------------------------------------------------------

GET_TARGET: Final[str] = "stella.rpc.deployment.get_target"
"""Query :class:`GetTarget` -> :class:`TargetView`."""
LIST_TARGETS: Final[str] = "stella.rpc.deployment.list_targets"
"""Query :class:`ListTargets` -> page of :class:`TargetView` by name."""
LIST_AGENTS: Final[str] = "stella.rpc.deployment.list_agents"
"""Query :class:`ListAgents` -> page of :class:`AgentView` by name."""
GET_AGENT: Final[str] = "stella.rpc.deployment.get_agent"
"""Query :class:`GetAgent` -> :class:`AgentView`."""
GET_JOB: Final[str] = "stella.rpc.deployment.get_job"
"""Query :class:`GetJob` -> :class:`JobView` with tasks, logs and artifacts."""
LIST_JOBS: Final[str] = "stella.rpc.deployment.list_jobs"
"""Query :class:`ListJobs` -> page of :class:`JobSummary`, newest first."""
GET_PROMOTION_DEPLOYMENT: Final[str] = "stella.rpc.deployment.get_promotion_deployment"
"""Query :class:`GetPromotionDeployment` -> :class:`JobView` of the promotion's latest job."""

# --- events -------------------------------------------------------------------------------------------------

JOB_STARTED: Final[str] = "stella.evt.deployment.job_started"
"""Event :class:`JobStarted`."""
JOB_COMPLETED: Final[str] = "stella.evt.deployment.job_completed"
"""Event :class:`JobCompleted`: the job ended (succeeded, failed, rolled back or cancelled)."""
DRIFT_DETECTED: Final[str] = "stella.evt.deployment.drift_detected"
"""Event :class:`DriftDetected`."""
AGENT_STATUS_CHANGED: Final[str] = "stella.evt.deployment.agent_status_changed"
"""Event :class:`AgentStatusChanged`: registered, online, degraded, offline or revoked."""
TARGET_CHANGED: Final[str] = "stella.evt.deployment.target_changed"
"""Event :class:`TargetChanged`: created, updated, deleted, or its health or digests changed."""
TASKS_PROGRESSED: Final[str] = "stella.evt.deployment.tasks_progressed"
"""Event :class:`TasksProgressed`: tasks of a job were leased, started, logged or ended; one per agent call and
job (a task feed answer, a log chunk, a result or a results post), never one per task."""


# --- values -------------------------------------------------------------------------------------------------


class JobStatus(StrEnum):
    """Deployment job states (reference §4)."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the job is over."""
        return self in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.ROLLED_BACK, JobStatus.CANCELLED}


class JobKind(StrEnum):
    """Why a job exists."""

    DEPLOY = "deploy"
    """A promotion's deploy step (or a deployment started by hand)."""
    ROLLBACK = "rollback"
    """A manual rollback of an earlier job (``rollback_of``)."""
    REMEDIATE = "remediate"
    """Redeploying a drifted target's sticker release."""
    HEALTH_CHECK = "health-check"
    """A workflow ``health-check`` step: a health check of every target; no job events."""
    VERIFY_DRIFT = "verify-drift"
    """A workflow ``verify-drift`` step or an on-demand check: an inspection per target; no job events."""


class Strategy(StrEnum):
    """Deployment strategies."""

    ALL_AT_ONCE = "all-at-once"
    ROLLING = "rolling"
    CANARY = "canary"
    BLUE_GREEN = "blue-green"


class FailureBehavior(StrEnum):
    """What a job does when a task fails."""

    ROLLBACK = "rollback"
    CONTINUE = "continue"
    PAUSE = "pause"


class ComponentRuntime(Model):
    """How an environment runs one component: published ports, environment variables, command, labels."""

    ports: list[PortMapping] = Field(default_factory=list, max_length=64)
    env: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")], str] = Field(
        default_factory=dict, max_length=500
    )
    command: list[Annotated[str, StringConstraints(max_length=1024)]] | None = Field(default=None, max_length=64)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)


BatchSize = Annotated[str, StringConstraints(pattern=r"^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$")]
"""A batch size: a count (``"2"``) or a percentage of the targets (``"25%"``)."""


class StrategySpec(Model):
    """How an environment deploys: its ``config.deployment`` document (every field optional).

    Attributes:
        strategy: Which strategy plans the tasks.
        max_concurrent: ``all-at-once``: most targets deployed at once (0: unlimited).
        batch_size: ``rolling``: targets per batch, a count or a percentage (at least one target).
        max_unavailable: ``rolling``: most targets of a batch being replaced at once (0: the whole batch).
        pause_s: ``rolling``/``canary``: seconds to wait between batches or steps.
        canary_steps: ``canary``: cumulative percentages of targets per step, increasing, ending at 100.
        group_label: ``blue-green``: the target label naming its group (``color``).
        groups: ``blue-green``: the two group values (``["blue", "green"]``); the idle one is deployed.
        health_check: Health check run by each task after deploying (the environment's default otherwise).
        failure_behavior: What a failed task does to the job.
        task_timeout_s: Seconds one task may take before it is ``timed_out``.
        components: How each component (by name) runs in this environment.
    """

    strategy: Strategy = Strategy.ALL_AT_ONCE
    max_concurrent: int = Field(default=0, ge=0, le=100_000)
    batch_size: BatchSize = "1"
    max_unavailable: int = Field(default=0, ge=0, le=100_000)
    pause_s: float = Field(default=0, ge=0, le=86_400)
    canary_steps: list[int] = Field(default_factory=lambda: [10, 25, 50, 100], min_length=1, max_length=20)
    group_label: LabelKey = "color"
    groups: tuple[LabelValue, LabelValue] = ("blue", "green")
    health_check: HealthCheckSpec | None = None
    failure_behavior: FailureBehavior = FailureBehavior.ROLLBACK
    task_timeout_s: float = Field(default=600, gt=0, le=86_400)
    components: dict[Name, ComponentRuntime] = Field(default_factory=dict, max_length=200)

    @model_validator(mode="after")
    def _steps_increase(self) -> StrategySpec:
        steps = self.canary_steps
        if any(not 0 < step <= 100 for step in steps) or any(b <= a for a, b in pairwise(steps)):
            raise ValueError("canary_steps must be increasing percentages from 1 to 100")
        if steps[-1] != 100:
            raise ValueError("canary_steps must end at 100")
        if self.groups[0] == self.groups[1]:
            raise ValueError("groups must name two different label values")
        return self

    @property
    def concurrency(self) -> int:
        """Most tasks of a batch held by agents at once (0: no limit): ``max_concurrent``, and for ``rolling``
        also ``max_unavailable``, whichever is smaller."""
        limits = [self.max_concurrent]
        if self.strategy is Strategy.ROLLING:
            limits.append(self.max_unavailable)
        given = [limit for limit in limits if limit > 0]
        return min(given) if given else 0


class DeployedComponent(Model):
    """A component as a task deploys it: the digest it deploys and the one it replaces."""

    name: str
    digest: Digest
    previous_digest: Digest | None = None


class TaskOutcome(Model):
    """How one task ended, as a job's completion reports it (and evidence records it)."""

    task_id: UUID
    target_id: UUID
    target_name: str
    type: TaskType
    status: TaskStatus
    components: list[DeployedComponent] = Field(default_factory=list)
    error_code: str | None = None
    lock_file_hash: Digest | None = None
    logs_hash: Digest | None = None
    sticker_hash: Digest | None = None


# --- views --------------------------------------------------------------------------------------------------


class TargetView(Model):
    """A deployment target of an environment.

    Attributes:
        current: What the last successful task left running: ``{component name: digest}``.
        drift_detected: Whether the last inspection found drift.
        sticker: The last sticker written on the target (None before the first deployment).
    """

    id: UUID
    environment_id: UUID
    name: Name
    target_type: TargetType
    connection: dict[str, Any]
    labels: dict[str, str]
    health_check: HealthCheckSpec | None
    agent_id: UUID | None
    health_status: str
    current: dict[str, str]
    current_release_id: UUID | None
    drift_detected: bool
    last_drift: dict[str, Any] | None
    sticker: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


class AgentView(Model):
    """A registered agent (never its credential)."""

    id: UUID
    name: Name
    version: str
    capabilities: list[str]
    labels: dict[str, str]
    status: AgentStatus
    checks: list[dict[str, Any]]
    last_heartbeat_at: datetime | None
    registered_at: datetime
    revoked_at: datetime | None


class AgentTokenCreated(Model):
    """A one-time registration token: ``token`` is shown here only; Stella keeps its hash."""

    id: UUID
    token: str = Field(repr=False)
    expires_at: datetime
    labels: dict[str, str]


class TaskView(Model):
    """One task of a job, with its log lines (bounded) and artifacts."""

    id: UUID
    job_id: UUID | None
    target_id: UUID
    target_name: str
    type: TaskType
    batch: int
    status: TaskStatus
    attempt: int
    agent_id: UUID | None
    idempotency_key: str
    components: list[DeployedComponent]
    error_code: str | None
    message: str
    result: dict[str, Any] | None
    artifacts: list[dict[str, Any]]
    logs: list[str]
    logs_truncated: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobSummary(Model):
    """A job without its tasks (lists)."""

    id: UUID
    promotion_id: UUID | None
    release_id: UUID
    release_name: str
    environment_id: UUID
    environment_name: str
    kind: JobKind
    strategy: Strategy
    status: JobStatus
    rollback_of: UUID | None
    reason: str
    target_count: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobView(JobSummary):
    """A job with its strategy settings, one page of its tasks (logs included) and their artifacts.

    ``next_page_token`` reads the next page of tasks (:class:`GetJob` ``tasks_page``); None on the last.
    """

    spec: dict[str, Any]
    tasks: list[TaskView]
    artifacts: list[dict[str, Any]]
    next_page_token: str | None = None


class AgentTasks(Model):
    """Tasks leased to an agent by one poll (``tasks`` are :class:`~stella.contracts.agent.AgentTask` bodies)."""

    tasks: list[dict[str, Any]]


# --- commands -----------------------------------------------------------------------------------------------


class CreateTarget(Command):
    """Add a target to an environment of the caller's tenant."""

    environment_id: UUID
    name: Name
    target_type: TargetType
    connection: dict[str, Any] = Field(default_factory=dict)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)
    health_check: HealthCheckSpec | None = None
    agent_id: UUID | None = None


class UpdateTarget(Command):
    """Change a target; omitted fields keep their value."""

    target_id: UUID
    name: Name | None = None
    connection: dict[str, Any] | None = None
    labels: dict[LabelKey, LabelValue] | None = Field(default=None, max_length=64)
    health_check: HealthCheckSpec | None = None
    agent_id: UUID | None = None


class DeleteTarget(Command):
    """Remove a target no running job deploys to."""

    target_id: UUID


class CreateAgentToken(Command):
    """Create a one-time registration token; ``labels`` are given to the agent that uses it."""

    expires_in_s: int = Field(default=3600, ge=60, le=30 * 86_400)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)


class RevokeAgent(Command):
    """Revoke an agent: its credential is refused from now on and its leases return to the queue."""

    agent_id: UUID


class CancelJob(Command):
    """Cancel a job that has not ended: pending tasks are cancelled, running ones are told to stop."""

    job_id: UUID
    reason: str | None = Field(default=None, max_length=2000)


class ResumeJob(Command):
    """Resume a paused job: the failed tasks of the batch that paused it run again, then the job goes on."""

    job_id: UUID
    reason: str | None = Field(default=None, max_length=2000)


class RollbackJob(Command):
    """Roll a job's targets (all, or ``target_ids``) back to each task's ``previous_digest`` as a new job."""

    job_id: UUID
    target_ids: list[UUID] | None = Field(default=None, min_length=1, max_length=10_000)
    reason: str | None = Field(default=None, max_length=2000)


class CheckDrift(Command):
    """Ask the target's agent to inspect it against its sticker now."""

    target_id: UUID


class RemediateTarget(Command):
    """Redeploy the target's sticker release to it."""

    target_id: UUID


# --- agent channel requests (tenant and agent come from the credential, never from the body) ------------------


class AgentRegister(Query):
    """Register an agent with a one-time token (the token names the tenant)."""

    registration: RegisterAgent


class AgentCall(Query):
    """Base of every authenticated agent call: the agent's id and its credential, checked on each call."""

    agent_id: UUID
    credential: str = Field(min_length=16, max_length=512, repr=False)


class AgentAuthenticate(AgentCall):
    """Check an agent credential."""


class AgentHeartbeat(AgentCall):
    """A heartbeat."""

    heartbeat: HeartbeatBody


MAX_HELD_TASKS: Final[int] = 100
"""Most task ids an agent lists as held when it polls; an agent holding more lists none."""


class AgentPoll(AgentCall):
    """Lease up to ``max_tasks`` tasks of the agent's targets.

    ``held`` lists every task the agent has now (running, or ended with its result not yet taken). Tasks
    leased to the agent but not in it were lost on their way (a feed request that ended before its answer
    arrived, an agent that restarted): they are handed over again at once, same attempt, before new ones.
    None (an agent that does not tell) hands over only new tasks; lost ones come back when their lease ends.
    """

    max_tasks: int = Field(default=10, ge=1, le=100)
    held: list[UUID] | None = Field(default=None, max_length=MAX_HELD_TASKS)


class AgentLog(AgentCall):
    """Store a log chunk of a task leased to the agent."""

    chunk: LogChunk


class AgentResult(AgentCall):
    """Record the result of a task leased to the agent."""

    result: TaskResult


MAX_RESULTS_PER_POST: Final[int] = 100
"""Most results one :class:`AgentResults` carries."""


MAX_LOG_CHUNKS_PER_POST: Final[int] = 200
"""Most log chunks one :class:`AgentResults` carries."""

MAX_LOG_CHARS_PER_POST: Final[int] = 256 * 1024
"""Most characters of log lines one :class:`AgentResults` carries, so that it stays one NATS message."""


class AgentResults(AgentCall):
    """Record the results of several tasks leased to the agent at once; each is applied as :class:`AgentResult`.

    ``logs``: the last chunks of these tasks' logs (or of others the agent holds), each stored as
    :class:`AgentLog` would, before the results, in the same transaction.
    """

    results: list[TaskResult] = Field(min_length=1, max_length=MAX_RESULTS_PER_POST)
    logs: list[LogChunk] = Field(default_factory=list, max_length=MAX_LOG_CHUNKS_PER_POST)

    @model_validator(mode="after")
    def _logs_fit(self) -> AgentResults:
        if sum(len(line) for chunk in self.logs for line in chunk.lines) > MAX_LOG_CHARS_PER_POST:
            raise ValueError(f"the log chunks carry more than {MAX_LOG_CHARS_PER_POST} characters")
        return self


class ResultOutcome(Model):
    """What became of one result of an :class:`AgentResults`.

    ``accepted``: as :data:`AGENT_RESULT` answers. ``status`` and ``code``: set when the result was refused
    (404 ``AGT_TASK_NOT_FOUND``, 422 ``AGT_RESULT_MISMATCH``, ...), as the single post would answer.
    """

    task_id: UUID
    accepted: bool
    reason: str | None = None
    status: int | None = None
    code: str | None = None


class ResultOutcomes(Model):
    """The answer to :class:`AgentResults`, one outcome per result, in the order sent."""

    results: list[ResultOutcome]


# --- queries ------------------------------------------------------------------------------------------------


class GetTarget(Query):
    """Read one target."""

    target_id: UUID


class ListTargets(Query):
    """List targets of the tenant, of one environment when given, by name."""

    environment_id: UUID | None = None
    page: PageRequest = Field(default_factory=PageRequest)


class GetAgent(Query):
    """Read one agent."""

    agent_id: UUID


class ListAgents(Query):
    """List agents by name."""

    status: AgentStatus | None = None
    page: PageRequest = Field(default_factory=PageRequest)


TASK_PAGE_SIZE: Final[int] = 100
"""Tasks a job's view carries per page when the reader does not say; at most :data:`MAX_TASK_PAGE_SIZE`."""

MAX_TASK_PAGE_SIZE: Final[int] = 200
"""Most tasks one page of a job's view carries (a page, with its logs, stays one message)."""


def _task_page() -> PageRequest:
    return PageRequest(page_size=TASK_PAGE_SIZE)


class GetJob(Query):
    """Read one job with a page of its tasks (in batch and target order)."""

    job_id: UUID
    tasks_page: PageRequest = Field(default_factory=_task_page)


class ListJobs(Query):
    """List jobs, newest first."""

    environment_id: UUID | None = None
    promotion_id: UUID | None = None
    status: JobStatus | None = None
    page: PageRequest = Field(default_factory=PageRequest)


class GetPromotionDeployment(Query):
    """Read the latest job of a promotion, with a page of its tasks."""

    promotion_id: UUID
    tasks_page: PageRequest = Field(default_factory=_task_page)


# --- events -------------------------------------------------------------------------------------------------


class JobStarted(Event):
    """A job started (its tasks are planned)."""

    job_id: UUID
    promotion_id: UUID | None
    release_id: UUID
    environment_id: UUID
    strategy: str
    target_count: int
    rollback_of: UUID | None = None
    started_at: datetime
    kind: JobKind = JobKind.DEPLOY


class JobCompleted(Event):
    """A job ended.

    ``outcome`` is ``succeeded``, ``failed``, ``rolled_back`` (the deployment failed and was rolled back
    automatically: the rollback tasks are in ``tasks`` with type ``rollback``) or ``cancelled``.
    """

    job_id: UUID
    promotion_id: UUID | None
    release_id: UUID
    environment_id: UUID
    strategy: str
    outcome: Literal["succeeded", "failed", "rolled_back", "cancelled"]
    rollback_of: UUID | None = None
    reason: str
    tasks: list[TaskOutcome]
    finished_at: datetime
    release_name: str | None = None
    environment_name: str | None = None
    artifacts: list[dict[str, Any]] = Field(default_factory=list)
    kind: JobKind = JobKind.DEPLOY


class TaskProgress(Model):
    """What one agent call changed about one task: its state after the call and how far its log got.

    Attributes:
        status: The task's state after the call (``assigned`` when leased, ``running`` once it logs, then how
            it ended).
        attempt: The lease the change belongs to (1 for the first).
        log_lines: Log lines kept for the task so far (the text itself is read from the job, never sent here).
        log_seq: The highest log chunk sequence number the call kept; None when it kept no chunk.
        error_code: How a failed task failed (``AGT_HEALTH_CHECK_FAILED``...); never the agent's message.
    """

    task_id: UUID
    target_id: UUID
    target_name: str
    type: TaskType
    batch: int
    status: TaskStatus
    attempt: int
    log_lines: int = 0
    log_seq: int | None = None
    error_code: str | None = None


MAX_PROGRESS_TASKS: Final[int] = 400
"""Most tasks one :class:`TasksProgressed` lists: a task feed answer, a log chunk, a result or a results post
changes at most this many (100 results and 200 log chunks a post, 100 tasks a feed answer)."""


class TasksProgressed(Event):
    """Tasks of a deployment job changed in one agent call, and the job's phase when they did.

    One event per agent call and job, listing every task the call changed: a 1,000-target job costs a message
    per post, not per task. Carries states, counts and sequence numbers only: no log text, no agent message,
    no credential. Announced for the job kinds that announce ``job_started`` (checks are not).

    Attributes:
        job_status: The job's state when the tasks changed (its next move follows in another event or a later one).
        current_batch: The job's current batch (a rolling batch, a canary step; 0 for all-at-once).
        batch_count: How many batches the job's strategy planned.
        agent_id: The agent whose call it was.
    """

    job_id: UUID
    promotion_id: UUID | None
    release_id: UUID
    environment_id: UUID
    strategy: str
    kind: JobKind = JobKind.DEPLOY
    job_status: JobStatus
    current_batch: int
    batch_count: int
    target_count: int
    agent_id: UUID
    tasks: list[TaskProgress] = Field(min_length=1, max_length=MAX_PROGRESS_TASKS)
    at: datetime


class DriftDetected(Event):
    """An inspection found a target differing from its sticker.

    ``differences`` are the agent's :class:`~stella.contracts.agent.DriftReport` entries: ``{kind, component,
    expected, actual}`` with digests as expected and actual.
    """

    target_id: UUID
    target_name: str
    environment_id: UUID
    release_id: UUID | None
    differences: list[dict[str, Any]]
    detected_at: datetime
    sticker_found: bool = True


class AgentStatusChanged(Event):
    """An agent's status changed (``previous_status`` None on registration)."""

    agent_id: UUID
    name: str
    status: AgentStatus
    previous_status: AgentStatus | None
    at: datetime


class TargetChanged(Event):
    """A target was created, updated or deleted (``deleted``), or a task changed what it runs."""

    target: TargetView
    deleted: bool = False
