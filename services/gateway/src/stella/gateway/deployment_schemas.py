"""Request and response bodies of the deployment API: targets, agents, registration tokens, deployment jobs.

The agent channel's bodies (register, heartbeat, log chunk, result) are the wire contract of
:mod:`stella.contracts.agent`, shared with the agent so the two cannot drift apart; here they are given
the strict request validation every body of the gateway gets.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import ConfigDict, Field, model_validator

from stella.contracts.agent import HealthCheckSpec, LabelKey, LabelValue, LogChunk, RegisterAgent, TaskResult
from stella.contracts.agent import Heartbeat as HeartbeatContract
from stella.contracts.validation import Name
from stella.gateway.schemas import RequestBody, ResponseBody

# --- targets ------------------------------------------------------------------------------------------------


class HealthCheckIn(RequestBody, HealthCheckSpec):
    """How to tell that a deployed target works: ``http`` and ``tcp`` need a ``port``, ``command`` a ``command``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="after")
    def _complete(self) -> HealthCheckIn:
        if self.type in ("http", "tcp") and self.port is None:
            raise ValueError(f"a {self.type} health check needs a port")
        if self.type == "command" and not self.command:
            raise ValueError("a command health check needs a command")
        return self


class TargetCreate(RequestBody):
    """A new deployment target of the environment."""

    name: Name
    target_type: Literal["docker_host", "compose_host"] = Field(description="docker_host or compose_host.")
    connection: dict[str, str] = Field(
        default_factory=dict,
        max_length=8,
        description="How the agent reaches it: docker_url (unix:///... or tcp://host:port), host; for "
        "compose_host also project and directory (absolute path on the host).",
    )
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=64, description="Groups, e.g. color=blue for blue-green."
    )
    health_check: HealthCheckIn | None = Field(default=None, description="Overrides the environment's default.")
    agent_id: UUID | None = Field(default=None, description="Pin the target to one agent; any capable agent if null.")


class TargetUpdate(RequestBody):
    """New values for a target; omitted fields keep their value."""

    name: Name | None = None
    connection: dict[str, str] | None = Field(default=None, max_length=8)
    labels: dict[LabelKey, LabelValue] | None = Field(default=None, max_length=64)
    health_check: HealthCheckIn | None = None
    agent_id: UUID | None = None


class TargetOut(ResponseBody):
    """A deployment target."""

    id: UUID
    environment_id: UUID
    name: str
    target_type: str
    connection: dict[str, Any]
    labels: dict[str, str]
    health_check: dict[str, Any] | None
    agent_id: UUID | None
    health_status: str = Field(description="unknown, healthy or unhealthy.")
    current: dict[str, str] = Field(description="Digest each component runs, as the last successful task left it.")
    current_release_id: UUID | None
    drift_detected: bool
    last_drift: dict[str, Any] | None
    sticker: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


class TargetPage(ResponseBody):
    """A page of targets, by name."""

    items: list[TargetOut]
    next_page_token: str | None


# --- agents -------------------------------------------------------------------------------------------------


class AgentTokenCreate(RequestBody):
    """A one-time agent registration token."""

    expires_in_s: int = Field(default=3600, ge=60, le=30 * 86_400, description="Seconds until it expires.")
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=64, description="Labels given to the agent that registers with it."
    )


class AgentTokenOut(ResponseBody):
    """A registration token: ``token`` is shown in this response only."""

    id: UUID
    token: str | None = Field(description="The token; a replay of the request (Idempotency-Key) omits it.")
    expires_at: datetime
    labels: dict[str, str]


class AgentRegisterIn(RequestBody, RegisterAgent):
    """A registration: the one-time token, and who the agent is."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class AgentRegisteredOut(ResponseBody):
    """The new agent's id and credential (shown once), and the pacing it keeps."""

    agent_id: UUID
    credential: str
    heartbeat_interval_s: float
    task_poll_timeout_s: float


class AgentOut(ResponseBody):
    """A registered agent."""

    id: UUID
    name: str
    version: str
    capabilities: list[str]
    labels: dict[str, str]
    status: str = Field(description="online, degraded, offline or revoked.")
    checks: list[dict[str, Any]]
    last_heartbeat_at: datetime | None
    registered_at: datetime
    revoked_at: datetime | None


class AgentPage(ResponseBody):
    """A page of agents, by name."""

    items: list[AgentOut]
    next_page_token: str | None


class HeartbeatIn(RequestBody, HeartbeatContract):
    """A heartbeat: the agent's version, self-checks and the tasks it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class HeartbeatOut(ResponseBody):
    """The status Stella records, and tasks the agent must stop."""

    status: str
    cancel_tasks: list[UUID]


class LogChunkIn(RequestBody, LogChunk):
    """A slice of a task's log."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TaskResultIn(RequestBody, TaskResult):
    """The one final result of a task."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TaskResultsIn(RequestBody):
    """Several final results of tasks, at most 100; each is taken as its own ``.../result`` post would be."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    results: list[TaskResultIn] = Field(min_length=1, max_length=100)
    logs: list[LogChunkIn] = Field(
        default_factory=list,
        max_length=200,
        description=(
            "The last log chunks of these tasks (at most 200, 262,144 characters of lines in all), each kept as "
            "its own ``.../logs`` post would be, before the results."
        ),
    )


class ResultOutcomeOut(ResponseBody):
    """What became of one result: taken or not, and why a refused one was (its status and error code)."""

    task_id: UUID
    accepted: bool
    reason: str | None = None
    status: int | None = None
    code: str | None = None


class ResultOutcomesOut(ResponseBody):
    """One outcome per posted result, in the order posted."""

    results: list[ResultOutcomeOut]


class TaskFeedOut(ResponseBody):
    """Tasks leased to the agent (``AgentTask`` bodies of the agent contract); empty when none came in time."""

    tasks: list[dict[str, Any]]


class Accepted(ResponseBody):
    """Whether the agent's post was taken (False: for an older attempt, or already stored)."""

    accepted: bool


# --- jobs ---------------------------------------------------------------------------------------------------


class TaskOut(ResponseBody):
    """A task of a job, with its log lines (bounded) and artifacts."""

    id: UUID
    job_id: UUID | None
    target_id: UUID
    target_name: str
    type: str
    batch: int
    status: str
    attempt: int
    agent_id: UUID | None
    idempotency_key: str
    components: list[dict[str, Any]]
    error_code: str | None
    message: str
    result: dict[str, Any] | None
    artifacts: list[dict[str, Any]]
    logs: list[str]
    logs_truncated: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobSummaryOut(ResponseBody):
    """A deployment job without its tasks."""

    id: UUID
    promotion_id: UUID | None
    release_id: UUID
    release_name: str
    environment_id: UUID
    environment_name: str
    kind: str = Field(description="deploy, rollback, remediate, health-check or verify-drift.")
    strategy: str
    status: str
    rollback_of: UUID | None
    reason: str
    target_count: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobOut(JobSummaryOut):
    """A deployment job with its strategy, a page of its tasks (logs included) and their artifacts."""

    spec: dict[str, Any]
    tasks: list[TaskOut]
    artifacts: list[dict[str, Any]]
    next_page_token: str | None = Field(
        default=None, description="Reads the job's next page of tasks (page_token); null on the last."
    )


class JobPage(ResponseBody):
    """A page of jobs, newest first."""

    items: list[JobSummaryOut]
    next_page_token: str | None


class JobCancel(RequestBody):
    """Why a job is cancelled."""

    reason: str | None = Field(default=None, max_length=2000)


class JobResume(RequestBody):
    """Why a paused job is resumed."""

    reason: str | None = Field(default=None, max_length=2000)


class JobRollback(RequestBody):
    """Which targets to roll back (every target of the job when omitted)."""

    target_ids: list[UUID] | None = Field(default=None, min_length=1, max_length=10_000)
    reason: str | None = Field(default=None, max_length=2000)
