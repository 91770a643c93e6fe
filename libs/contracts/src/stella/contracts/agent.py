"""What an agent and Stella say to each other over the gateway's HTTP API (reference §4, "Agents").

Agents never talk to NATS or Postgres. They register with a one-time token, then heartbeat, pull the tasks
of the targets assigned to them, stream log chunks and post one result per task, all through
``/api/v1/agents/...``. These models are the bodies of those calls, shared by the gateway, the deployment
service and the agent, so the three cannot drift apart.

A task is self-contained: it names its target (and how the agent reaches it), the images pinned by digest,
the health check, and the sticker to leave behind, so an agent needs no other call to run it. Running the
same task twice (same ``idempotency_key``) must have the effect of running it once.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from pydantic import Field, StringConstraints

from stella.contracts.envelope import Model
from stella.contracts.validation import Digest, Name, Repository, Semver, Tag

AGENT_PROTOCOL_VERSION: Final[str] = "1"
"""Version of this protocol; an agent sends it when registering and the gateway refuses ones it cannot serve."""

STICKER_FILE: Final[str] = "stella.version.json"
"""File name of the version sticker an agent writes on a target after a successful task."""

COMPOSE_LOCK_FILE: Final[str] = "compose.stella.lock.yml"
"""File name of the generated, digest-pinned Compose file on a ``compose_host`` target."""

LABEL_PREFIX: Final[str] = "stella."
"""Prefix of the container labels Stella sets (``stella.component.id``, ``stella.release.id``, ``stella.digest``...)."""

MAX_LOG_LINES_PER_CHUNK: Final[int] = 500
"""Most lines one log chunk may carry; an agent splits longer output."""

MAX_LOG_LINE_CHARS: Final[int] = 4000
"""Longest log line kept; longer lines are cut by the agent."""

Capability = Literal["docker", "compose"]
"""What an agent can drive: a Docker Engine (``docker_host`` targets) or Compose projects (``compose_host``)."""

LabelKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$")]
LabelValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{0,63}$")]
AgentVersion = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z.+_-]{1,64}$")]


class TargetType(StrEnum):
    """Kinds of deployment target."""

    DOCKER_HOST = "docker_host"
    COMPOSE_HOST = "compose_host"


class TaskType(StrEnum):
    """What an agent is asked to do (reference §4)."""

    DEPLOY = "deploy"
    """Pull every component by digest, verify it, replace what runs, health-check, write the sticker."""
    ROLLBACK = "rollback"
    """The same as deploy, towards the previous digests; carried separately so logs and evidence say so."""
    HEALTH_CHECK = "health-check"
    """Run the health check against what runs now."""
    INSPECT = "inspect"
    """Read the sticker and what runs, and report drift; changes nothing."""
    WRITE_STICKER = "write-sticker"
    """Write the given sticker only."""
    READ_STICKER = "read-sticker"
    """Return the sticker found on the target (or none)."""


class TaskStatus(StrEnum):
    """A task's state as the deployment service keeps it; an agent reports only the final two."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the task is over."""
        return self in {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}


class AgentStatus(StrEnum):
    """An agent's health as Stella sees it."""

    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"
    REVOKED = "revoked"


# --- what a task carries -------------------------------------------------------------------------------------


class HealthCheckSpec(Model):
    """How to tell that what was deployed works (reference §4 defaults).

    Attributes:
        type: ``http`` (GET ``path`` on ``port`` answers 2xx/3xx, or ``expected_status``), ``tcp`` (``port``
            accepts a connection), ``container`` (every component's container is running, and healthy when
            its image declares a health check), ``command`` (``command`` run in the container exits 0).
        path: HTTP path, for ``http``.
        port: Port on the target host (the published port), for ``http`` and ``tcp``.
        host: Host name or address the agent connects to; the target's own address when absent.
        command: Argument vector, for ``command``.
        expected_status: HTTP status that counts as healthy; any 2xx or 3xx when absent.
        timeout_s: Seconds one attempt may take.
        retries: Attempts after the first before the check fails.
        interval_s: Seconds between attempts.
    """

    type: Literal["http", "tcp", "container", "command"] = "container"
    path: Annotated[str, StringConstraints(pattern=r"^/[\x21-\x7e]{0,1023}$")] = "/"
    port: int | None = Field(default=None, ge=1, le=65535)
    host: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.:_-]{1,253}$")] | None = None
    command: list[Annotated[str, StringConstraints(max_length=1024)]] | None = Field(default=None, max_length=64)
    expected_status: int | None = Field(default=None, ge=100, le=599)
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    retries: int = Field(default=3, ge=0, le=100)
    interval_s: float = Field(default=10.0, ge=0, le=3600)


class PortMapping(Model):
    """A published port: ``host_port`` on the target host to ``container_port`` in the container."""

    container_port: int = Field(ge=1, le=65535)
    host_port: int | None = Field(default=None, ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F.:]{2,45}$")] | None = None


class ComponentSpec(Model):
    """One image of the release as a target runs it.

    Attributes:
        component_id: The component's id.
        name: The component's name; also the container's (``<name>``) or the compose service's name.
        image_repository: Where the image lives, without tag or digest.
        digest: The digest to run; the agent refuses an image whose pulled digest differs.
        previous_digest: What ran before this task (None on a first deployment); a rollback deploys it.
        tag: The tag the release was built from (informational).
        semver: The version (informational).
        ports: Ports to publish.
        env: Environment variables of the container (never secrets: those travel in ``credentials``).
        command: Command override, as an argument vector.
        labels: Extra container labels (Stella adds its ``stella.*`` labels itself).
        registry_integration_id: The ``registry`` integration whose credential pulls the image; the service puts
            that credential in ``AgentTask.credentials`` when it leases the task (never in the stored task).
    """

    component_id: UUID
    name: Name
    image_repository: Repository
    digest: Digest
    previous_digest: Digest | None = None
    tag: Tag | None = None
    semver: Semver | None = None
    ports: list[PortMapping] = Field(default_factory=list, max_length=64)
    env: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")], str] = Field(
        default_factory=dict
    )
    command: list[Annotated[str, StringConstraints(max_length=1024)]] | None = Field(default=None, max_length=64)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    registry_integration_id: UUID | None = None

    @property
    def image_ref(self) -> str:
        """``repository@sha256:...``: the only way Stella names an image to run."""
        return f"{self.image_repository}@{self.digest}"


class TargetSpec(Model):
    """The target a task runs against, as the agent reaches it.

    Attributes:
        target_id: The target's id.
        name: The target's name (unique in its environment).
        target_type: ``docker_host`` or ``compose_host``.
        connection: For ``docker_host``: ``{"docker_url": "unix:///var/run/docker.sock"}`` (or ``tcp://host:2376``);
            for ``compose_host`` also ``{"project": "<compose project>", "directory": "<absolute path on the host>"}``.
            Absent keys take the agent's defaults.
        labels: The target's labels (groups such as ``color=blue`` for blue-green).
    """

    target_id: UUID
    name: Name
    target_type: TargetType
    connection: dict[str, Any] = Field(default_factory=dict)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)


class DeploymentRef(Model):
    """Which deployment a task belongs to: written into labels, the lock file and the sticker."""

    job_id: UUID
    promotion_id: UUID | None = None
    release_id: UUID
    release_name: str
    environment_id: UUID
    environment_name: str
    strategy: str
    rollback_of: UUID | None = None


DOCKER_HUB_HOSTS: Final[frozenset[str]] = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
"""Docker Hub's host names: a credential for any of them serves an image whose repository names no registry."""


def registry_host(repository: str) -> str:
    """The registry host of an image repository, lower-cased, as Docker reads it (``docker.io`` when it names none)."""
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first.lower() == "localhost"):
        return first.lower()
    return "docker.io"


def serves_host(registry: str, host: str) -> bool:
    """Whether a credential for ``registry`` is the one for images on ``host`` (a :func:`registry_host`)."""
    registry = registry.lower()
    return registry == host or (host == "docker.io" and registry in DOCKER_HUB_HOSTS)


class RegistryCredential(Model):
    """Pull credentials for one registry host; sent only inside an approved task and never logged."""

    registry: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")]
    username: str
    password: str = Field(repr=False)


class AgentTask(Model):
    """One unit of work for one target, leased to one agent.

    Attributes:
        task_id: The task's id.
        idempotency_key: Equal for every delivery and attempt of the same effect; an agent that already
            completed a task with this key reports that result again instead of acting twice.
        type: What to do.
        attempt: 1 for the first lease, growing when the task is re-leased (agent lost, timed out).
        target: The target.
        components: The images to run (deploy, rollback) or to expect (inspect, health-check).
        deployment: The deployment this task is part of (None for a stand-alone inspect).
        health_check: The check to run after deploying, or alone for ``health-check``; None: container check.
        sticker: The sticker to write after success (deploy, rollback, write-sticker), built by the service.
        credentials: Registry pull credentials for this task only.
        timeout_s: Seconds the whole task may take; past it the service counts it ``timed_out``.
        lease_expires_at: When the service re-leases the task if no result came.
    """

    task_id: UUID
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    type: TaskType
    attempt: int = Field(default=1, ge=1)
    target: TargetSpec
    components: list[ComponentSpec] = Field(default_factory=list, max_length=200)
    deployment: DeploymentRef | None = None
    health_check: HealthCheckSpec | None = None
    sticker: dict[str, Any] | None = None
    credentials: list[RegistryCredential] = Field(default_factory=list, max_length=20)
    timeout_s: float = Field(default=600.0, gt=0, le=86400)
    lease_expires_at: datetime | None = None


# --- what an agent answers ----------------------------------------------------------------------------------


class ComponentState(Model):
    """What runs for one component on a target, as the agent found it after the task.

    Attributes:
        name: The component's name.
        expected_digest: The digest the task asked for (or the sticker names, for inspect).
        running_digest: The digest of the image the container runs (its repo digest), None when nothing runs.
        container: The container's name (or compose service's container).
        state: ``running``, ``exited``, ``missing``...
        healthy: The health check's verdict for this component, None when not checked.
    """

    name: str
    expected_digest: Digest | None = None
    running_digest: Digest | None = None
    container: str | None = None
    state: str = "missing"
    healthy: bool | None = None


class Artifact(Model):
    """A generated file an agent wrote (the compose lock file, the sticker), with the sha256 of its bytes."""

    type: Literal["compose-lock", "sticker", "logs"]
    name: str
    content_hash: Digest
    content: str | None = Field(default=None, max_length=1_000_000)


class DriftReport(Model):
    """What an inspection found against the sticker.

    Attributes:
        drifted: Whether anything differs.
        sticker_found: Whether the target had a sticker.
        differences: One entry per difference: ``{"kind": "digest"|"missing_container"|"unexpected_container"|
            "missing_sticker", "component": ..., "expected": ..., "actual": ...}``.
    """

    drifted: bool
    sticker_found: bool
    differences: list[dict[str, Any]] = Field(default_factory=list)


class TaskResult(Model):
    """The one final answer of an agent for a task (posted again verbatim if the first post was lost).

    Attributes:
        task_id: The task.
        idempotency_key: The task's idempotency key.
        attempt: The attempt this result is for; a result of an older attempt is ignored.
        status: ``succeeded`` or ``failed``.
        error_code: Stable code when failed: ``AGT_DIGEST_MISMATCH`` (pulled image is not the pinned digest:
            nothing was started), ``AGT_PULL_FAILED``, ``AGT_HEALTH_CHECK_FAILED``, ``AGT_DOCKER_ERROR``,
            ``AGT_COMPOSE_ERROR``, ``AGT_UNSUPPORTED`` (task or target type this agent cannot run),
            ``AGT_TIMEOUT``, ``AGT_INVALID_TASK``.
        message: One line for a person.
        components: What runs now, per component.
        sticker: The sticker written (deploy, rollback, write-sticker) or read (read-sticker, inspect).
        artifacts: Files written, with their hashes.
        drift: The drift verdict (inspect).
        started_at: When the agent started the task.
        finished_at: When it finished.
    """

    task_id: UUID
    idempotency_key: str
    attempt: int = Field(default=1, ge=1)
    status: Literal["succeeded", "failed"]
    error_code: Annotated[str, StringConstraints(pattern=r"^AGT_[A-Z_]{1,60}$")] | None = None
    message: Annotated[str, StringConstraints(max_length=4000)] = ""
    components: list[ComponentState] = Field(default_factory=list, max_length=200)
    sticker: dict[str, Any] | None = None
    artifacts: list[Artifact] = Field(default_factory=list, max_length=20)
    drift: DriftReport | None = None
    started_at: datetime
    finished_at: datetime


class LogChunk(Model):
    """A slice of a task's log; ``seq`` grows from 0 so a re-sent chunk is stored once."""

    task_id: UUID
    attempt: int = Field(default=1, ge=1)
    seq: int = Field(ge=0)
    lines: list[Annotated[str, StringConstraints(max_length=MAX_LOG_LINE_CHARS)]] = Field(
        max_length=MAX_LOG_LINES_PER_CHUNK
    )


# --- registration and heartbeat -----------------------------------------------------------------------------


class AgentCheck(Model):
    """One self-check an agent reports with its heartbeat (Docker answers, disk space, Compose present...)."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9._-]{1,64}$")]
    ok: bool
    message: Annotated[str, StringConstraints(max_length=500)] = ""


class RegisterAgent(Model):
    """Body of ``POST /api/v1/agents/register``: a one-time registration token and who the agent is."""

    registration_token: Annotated[str, StringConstraints(min_length=16, max_length=256)] = Field(repr=False)
    name: Name
    version: AgentVersion
    protocol_version: str = AGENT_PROTOCOL_VERSION
    capabilities: list[Capability] = Field(min_length=1, max_length=8)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)


class AgentRegistered(Model):
    """Answer to a registration: the agent's id, its credential (shown once) and the pacing it must keep."""

    agent_id: UUID
    credential: str = Field(repr=False)
    heartbeat_interval_s: float
    task_poll_timeout_s: float


class Heartbeat(Model):
    """Body of ``POST /api/v1/agents/{id}/heartbeat``."""

    version: AgentVersion
    checks: list[AgentCheck] = Field(default_factory=list, max_length=32)
    running_tasks: list[UUID] = Field(default_factory=list, max_length=1000)


class HeartbeatAck(Model):
    """Answer to a heartbeat: the status Stella now records and tasks the agent must stop (cancelled)."""

    status: AgentStatus
    cancel_tasks: list[UUID] = Field(default_factory=list)
