"""The deployment domain: planning tasks by strategy, the job state machine, agent health. Pure: no I/O.

A job's tasks are planned up front in **batches** (phases). A batch is either deploy tasks (``deploy``,
``rollback``) or health-check tasks (a canary's analysis between steps, a blue-green's check of the idle
group before switching). Batches run one after the other; inside a batch at most ``max_concurrent`` tasks
are released to agents at once. :func:`advance` looks at a job and its tasks and says what happens next:
release tasks, start the next batch (after the pause), stop and roll back, pause, or end the job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

from stella.contracts.agent import AgentStatus, TargetType, TaskStatus, TaskType
from stella.contracts.canonical import HASH_PREFIX, canonicalize, content_hash
from stella.contracts.deployment import (
    DeployedComponent,
    FailureBehavior,
    JobKind,
    JobStatus,
    Strategy,
    StrategySpec,
)
from stella.kit.errors import Conflict, NotFound, ServiceError, Unprocessable

STICKER_VERSION: Final[str] = "1.0"
"""Version of the sticker format (reference §4)."""

GENERATOR: Final[str] = "stella-deployment"
"""The sticker's ``generator``."""

MISSED_HEARTBEATS: Final[int] = 3
"""Heartbeats an agent may miss before it is ``offline``."""

FAILED: Final[frozenset[TaskStatus]] = frozenset({TaskStatus.FAILED, TaskStatus.TIMED_OUT})
"""Task outcomes that count as a failure of the job's batch."""

ACTIVE: Final[frozenset[TaskStatus]] = frozenset({TaskStatus.ASSIGNED, TaskStatus.RUNNING})
"""Task states in which an agent holds the task."""

CAPABILITY_OF: Final[Mapping[TargetType, str]] = {TargetType.DOCKER_HOST: "docker", TargetType.COMPOSE_HOST: "compose"}
"""The agent capability a target type needs."""


# --- errors -------------------------------------------------------------------------------------------------


class TargetNotFound(NotFound):
    """No such target in the tenant."""

    code = "DEPLOY_TARGET_NOT_FOUND"
    title = "Target not found"


class EnvironmentNotFound(NotFound):
    """No such environment in the tenant."""

    code = "ENV_NOT_FOUND"
    title = "Environment not found"


class JobNotFound(NotFound):
    """No such job in the tenant."""

    code = "DEPLOY_JOB_NOT_FOUND"
    title = "Deployment job not found"


class AgentNotFound(NotFound):
    """No such agent in the tenant."""

    code = "AGT_NOT_FOUND"
    title = "Agent not found"


class TargetNameTaken(Conflict):
    """Another target of the environment has the name."""

    code = "DEPLOY_TARGET_NAME_TAKEN"
    title = "Target name taken"


class AgentNameTaken(Conflict):
    """A live agent of the tenant has the name."""

    code = "AGT_NAME_TAKEN"
    title = "Agent name taken"


class TargetBusy(Conflict):
    """A job that is not over deploys to the target."""

    code = "DEPLOY_TARGET_BUSY"
    title = "Target in use by a running job"


class JobNotPaused(Conflict):
    """Only a paused job can be resumed."""

    code = "DEPLOY_JOB_NOT_PAUSED"
    title = "Job not paused"


class JobNotActive(Conflict):
    """The job has ended (cancel) or has not (rollback)."""

    code = "DEPLOY_JOB_STATE"
    title = "Job in the wrong state"


class EnvironmentBusy(Conflict):
    """Another job changes the environment right now."""

    code = "DEPLOY_ENVIRONMENT_BUSY"
    title = "Another job deploys to the environment"


class NothingToRollBack(Unprocessable):
    """No task of the job has a previous digest to go back to."""

    code = "DEPLOY_NO_PREVIOUS_DIGEST"
    title = "Nothing to roll back"


class InvalidTargetSelection(Unprocessable):
    """Target ids that are not part of the job."""

    code = "DEPLOY_TARGET_NOT_IN_JOB"
    title = "Targets not part of the job"


class AgentUnsuitable(Unprocessable):
    """The pinned agent cannot serve the target's type."""

    code = "AGT_CAPABILITY_MISSING"
    title = "Agent lacks the capability"


class NoSticker(Unprocessable):
    """The target has no sticker to remediate to, or nothing to inspect against."""

    code = "DEPLOY_NO_STICKER"
    title = "Target has no sticker"


class InvalidStep(Unprocessable):
    """A workflow step the deployment service cannot execute as given."""

    code = "DEPLOY_INVALID_STEP"
    title = "Invalid deployment step"


class ProtocolUnsupported(Unprocessable):
    """An agent speaking a protocol version this installation does not serve."""

    code = "AGT_PROTOCOL_UNSUPPORTED"
    title = "Agent protocol not supported"


class InvalidConnection(ServiceError):
    """A target connection that names something it must not."""

    code = "VAL_INVALID_CONNECTION"
    status = 400
    title = "Invalid target connection"


class AgentUnauthenticated(ServiceError):
    """An agent credential that is missing, unknown or revoked, or a registration token that is not valid."""

    code = "AGT_CREDENTIAL_INVALID"
    status = 401
    title = "Agent not authenticated"


class RegistrationTokenUsed(Conflict):
    """The registration token was used already."""

    code = "AGT_TOKEN_USED"
    title = "Registration token already used"


class RegistrationTokenExpired(Unprocessable):
    """The registration token expired."""

    code = "AGT_TOKEN_EXPIRED"
    title = "Registration token expired"


class TaskNotLeased(Conflict):
    """A result or log chunk for a task the agent does not hold (any more)."""

    code = "AGT_TASK_NOT_LEASED"
    title = "Task not leased to this agent"


# --- connections --------------------------------------------------------------------------------------------

_CONNECTION_KEYS: Final[Mapping[TargetType, frozenset[str]]] = {
    TargetType.DOCKER_HOST: frozenset({"docker_url", "host"}),
    TargetType.COMPOSE_HOST: frozenset({"docker_url", "host", "project", "directory"}),
}


_PROJECT: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def check_connection(target_type: TargetType, connection: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a target's connection as the agent sees it.

    ``docker_url`` is ``unix:///<path>`` or ``tcp://host:port``; ``project`` a Compose project name;
    ``directory`` an absolute path without ``..``; ``host`` the address health checks connect to.

    Raises:
        InvalidConnection: listing every problem.
    """
    problems: list[dict[str, Any]] = []
    allowed = _CONNECTION_KEYS[target_type]
    for key in sorted(set(connection) - allowed):
        problems.append({"loc": ["connection", key], "msg": f"unknown for a {target_type.value} target"})
    for key, value in connection.items():
        if key in allowed and (not isinstance(value, str) or not value or len(value) > 1024 or "\x00" in value):
            problems.append({"loc": ["connection", key], "msg": "must be a non-empty string"})
    url = connection.get("docker_url")
    if isinstance(url, str) and not (url.startswith("unix:///") or url.startswith("tcp://")):
        problems.append({"loc": ["connection", "docker_url"], "msg": "must be unix:///<socket> or tcp://host:port"})
    directory = connection.get("directory")
    if isinstance(directory, str) and (not directory.startswith("/") or ".." in directory.split("/")):
        problems.append({"loc": ["connection", "directory"], "msg": "must be an absolute path without '..'"})
    project = connection.get("project")
    if isinstance(project, str) and not _PROJECT.fullmatch(project):
        problems.append({"loc": ["connection", "project"], "msg": "must be lower-case letters, digits, '_' or '-'"})
    if problems:
        raise InvalidConnection(
            "; ".join(f"{'.'.join(map(str, p['loc']))} {p['msg']}" for p in problems), errors=problems
        )
    return dict(connection)


# --- planning -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetInfo:
    """What planning needs of a target."""

    id: UUID
    name: str
    labels: Mapping[str, str]
    current: Mapping[str, str]


@dataclass(frozen=True)
class ComponentRef:
    """A component of the release being deployed."""

    name: str
    digest: str


@dataclass(frozen=True)
class PlannedTask:
    """One task of a plan: a target, a batch, what it does and to which digests."""

    target_id: UUID
    target_name: str
    type: TaskType
    batch: int
    components: tuple[DeployedComponent, ...]


@dataclass(frozen=True)
class Plan:
    """A job's tasks and, for blue-green, the group switch it ends with.

    Attributes:
        tasks: Every task, with its batch.
        batch_count: Number of batches.
        switch_to: Blue-green: the idle group deployed and made active when the job succeeds.
        switch_from: Blue-green: the group active before (kept for instant rollback).
        note: Why nothing is planned, when nothing is.
    """

    tasks: tuple[PlannedTask, ...]
    batch_count: int
    switch_to: str | None = None
    switch_from: str | None = None
    note: str = ""


def batch_size(spec: StrategySpec, total: int) -> int:
    """Targets per rolling batch: a count, or a percentage of ``total`` rounded up; at least one."""
    raw = spec.batch_size
    if raw.endswith("%"):
        return max(1, math.ceil(total * int(raw[:-1]) / 100))
    return max(1, int(raw))


def canary_cuts(steps: Sequence[int], total: int) -> list[int]:
    """Cumulative target counts of each canary step (at least one target in the first), without repeats."""
    cuts: list[int] = []
    for step in steps:
        count = min(total, max(1, math.ceil(total * step / 100)))
        if not cuts or count > cuts[-1]:
            cuts.append(count)
    return cuts


def deployed_components(release: Sequence[ComponentRef], current: Mapping[str, str]) -> tuple[DeployedComponent, ...]:
    """The components a deploy task runs on a target, each with the digest it replaces there."""
    return tuple(DeployedComponent(name=c.name, digest=c.digest, previous_digest=current.get(c.name)) for c in release)


def plan(
    spec: StrategySpec,
    targets: Sequence[TargetInfo],
    release: Sequence[ComponentRef],
    *,
    active_group: str | None = None,
) -> Plan:
    """Plan a deployment of ``release`` to ``targets`` by ``spec``'s strategy.

    Targets are taken in name order, so the same inputs give the same plan.

    * ``all-at-once``: one batch of every target (``max_concurrent`` limits what runs at once);
    * ``rolling``: batches of :func:`batch_size` targets;
    * ``canary``: one batch per step of :func:`canary_cuts`, each but the last followed by an analysis batch
      of health checks over every target deployed so far;
    * ``blue-green``: the idle group (the one of ``spec.groups`` that is not ``active_group``; the first when
      none is active) is deployed, then health-checked; the job switches to it when it succeeds. Targets of
      neither group are not touched.
    """
    ordered = sorted(targets, key=lambda t: (t.name, str(t.id)))
    if not ordered:
        return Plan(tasks=(), batch_count=0, note="the environment has no targets: nothing to deploy")

    def deploy(target: TargetInfo, batch: int) -> PlannedTask:
        return PlannedTask(target.id, target.name, TaskType.DEPLOY, batch, deployed_components(release, target.current))

    def check(target: TargetInfo, batch: int) -> PlannedTask:
        expected = tuple(DeployedComponent(name=c.name, digest=c.digest) for c in release)
        return PlannedTask(target.id, target.name, TaskType.HEALTH_CHECK, batch, expected)

    tasks: list[PlannedTask] = []
    if spec.strategy is Strategy.ALL_AT_ONCE:
        tasks = [deploy(t, 0) for t in ordered]
        return Plan(tasks=tuple(tasks), batch_count=1)
    if spec.strategy is Strategy.ROLLING:
        size = batch_size(spec, len(ordered))
        tasks = [deploy(t, index // size) for index, t in enumerate(ordered)]
        return Plan(tasks=tuple(tasks), batch_count=math.ceil(len(ordered) / size))
    if spec.strategy is Strategy.CANARY:
        batch = 0
        done = 0
        cuts = canary_cuts(spec.canary_steps, len(ordered))
        for number, cut in enumerate(cuts):
            tasks.extend(deploy(t, batch) for t in ordered[done:cut])
            done = cut
            batch += 1
            if number < len(cuts) - 1:
                tasks.extend(check(t, batch) for t in ordered[:done])
                batch += 1
        return Plan(tasks=tuple(tasks), batch_count=batch)
    label = spec.group_label
    first, second = spec.groups
    idle = second if active_group == first else first
    members = [t for t in ordered if t.labels.get(label) == idle]
    if not members:
        return Plan(
            tasks=(),
            batch_count=0,
            note=f"blue-green: no target has the label {label}={idle} (the idle group): nothing to deploy",
            switch_to=idle,
            switch_from=active_group,
        )
    tasks = [deploy(t, 0) for t in members] + [check(t, 1) for t in members]
    return Plan(tasks=tuple(tasks), batch_count=2, switch_to=idle, switch_from=active_group)


# --- the job state machine ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskState:
    """What :func:`advance` needs of a task."""

    id: UUID
    target_id: UUID
    type: TaskType
    batch: int
    status: TaskStatus
    released: bool
    leased: bool
    components: tuple[DeployedComponent, ...] = ()


@dataclass(frozen=True)
class JobState:
    """What :func:`advance` needs of a job."""

    status: JobStatus
    kind: JobKind
    spec: StrategySpec
    batch_count: int
    current_batch: int
    next_batch_at: datetime | None


@dataclass(frozen=True)
class Progress:
    """What :func:`advance` decided.

    Attributes:
        status: The job's status after this step.
        current_batch: The batch now running.
        next_batch_at: When the next batch may start (None: no pause pending).
        release: Tasks to release to agents now.
        cancel: Tasks to cancel (planned work that will not run).
        rollback: Tasks to add: one rollback task per touched target (batch ``batch_count``).
        reason: Why the job is where it is, for people.
        changed: Whether anything changed.
    """

    status: JobStatus
    current_batch: int
    next_batch_at: datetime | None
    release: tuple[UUID, ...] = ()
    cancel: tuple[UUID, ...] = ()
    rollback: tuple[PlannedTask, ...] = ()
    reason: str | None = None
    changed: bool = False


def rollback_tasks(
    tasks: Iterable[TaskState], *, batch: int, targets: Iterable[UUID] | None = None
) -> list[PlannedTask]:
    """One rollback task per target a deploy (or rollback) task touched, towards each component's previous digest.

    The latest touching task of a target decides what it goes back from; components that had no previous
    digest (a first deployment) are left as they are, and a target with none of them gets no task.
    """
    wanted = set(targets) if targets is not None else None
    latest: dict[UUID, TaskState] = {}
    for task in tasks:
        if task.type not in (TaskType.DEPLOY, TaskType.ROLLBACK) or not task.leased:
            continue
        if wanted is not None and task.target_id not in wanted:
            continue
        latest[task.target_id] = task
    planned: list[PlannedTask] = []
    for target_id, task in latest.items():
        back = tuple(
            DeployedComponent(name=c.name, digest=c.previous_digest, previous_digest=c.digest)
            for c in task.components
            if c.previous_digest is not None
        )
        if back:
            planned.append(PlannedTask(target_id, "", TaskType.ROLLBACK, batch, back))
    return planned


def _describe(tasks: Sequence[TaskState]) -> str:
    return ", ".join(sorted(f"{t.type.value} {t.id} {t.status.value}" for t in tasks)[:5])


def advance(job: JobState, tasks: Sequence[TaskState], now: datetime) -> Progress:
    """Decide the next step of a running job from its tasks.

    Called after anything that may move a job: a task ended, a pause ran out, the job was just planned.
    """
    keep = Progress(status=job.status, current_batch=job.current_batch, next_batch_at=job.next_batch_at)
    if job.status in (JobStatus.PENDING, JobStatus.PAUSED) or job.status.is_terminal:
        return keep
    if job.status is JobStatus.ROLLING_BACK:
        mine = [t for t in tasks if t.type is TaskType.ROLLBACK and t.batch >= job.batch_count]
        if any(not t.status.is_terminal for t in mine):
            return _release(keep, mine, job.spec.concurrency)
        failed = [t for t in mine if t.status in FAILED]
        if failed:
            return Progress(
                JobStatus.FAILED,
                job.current_batch,
                None,
                reason=f"the deployment failed and {len(failed)} of {len(mine)} rollback tasks failed too",
                changed=True,
            )
        return Progress(
            JobStatus.ROLLED_BACK,
            job.current_batch,
            None,
            reason=f"the deployment failed; {len(mine)} targets were rolled back to their previous digests",
            changed=True,
        )

    batch = [t for t in tasks if t.batch == job.current_batch]
    failed = [t for t in batch if t.status in FAILED]
    behavior = job.spec.failure_behavior
    if job.kind in (JobKind.HEALTH_CHECK, JobKind.VERIFY_DRIFT, JobKind.ROLLBACK):
        behavior = FailureBehavior.CONTINUE  # nothing to roll back from: report every target's outcome
    if failed and behavior is not FailureBehavior.CONTINUE:
        unstarted = tuple(t.id for t in tasks if t.status is TaskStatus.PENDING)
        if behavior is FailureBehavior.PAUSE:
            return Progress(
                JobStatus.PAUSED,
                job.current_batch,
                None,
                reason=f"paused: batch {job.current_batch + 1} failed ({_describe(failed)})",
                changed=True,
            )
        if any(t.status in ACTIVE for t in tasks):
            # Stop planned work at once; what agents hold finishes first, then everything touched goes back.
            return Progress(
                job.status,
                job.current_batch,
                None,
                cancel=unstarted,
                changed=bool(unstarted) or job.next_batch_at is not None,
            )
        back = rollback_tasks(tasks, batch=job.batch_count)
        reason = f"batch {job.current_batch + 1} failed ({_describe(failed)})"
        if not back:
            return Progress(
                JobStatus.FAILED,
                job.current_batch,
                None,
                cancel=unstarted,
                reason=f"{reason}; no target had a previous digest to roll back to",
                changed=True,
            )
        return Progress(
            JobStatus.ROLLING_BACK,
            job.current_batch,
            None,
            cancel=unstarted,
            rollback=tuple(back),
            reason=f"{reason}; rolling back {len(back)} targets",
            changed=True,
        )
    if any(not t.status.is_terminal for t in batch):
        return _release(keep, batch, job.spec.concurrency)
    if job.current_batch + 1 < job.batch_count:
        pause = job.spec.pause_s if job.kind is JobKind.DEPLOY else 0
        if pause > 0 and job.next_batch_at is None:
            return Progress(job.status, job.current_batch, now + timedelta(seconds=pause), changed=True)
        if job.next_batch_at is not None and now < job.next_batch_at:
            return keep
        following = job.current_batch + 1
        started = Progress(job.status, following, None, changed=True)
        return _release(started, [t for t in tasks if t.batch == following], job.spec.concurrency)
    all_failed = [t for t in tasks if t.status in FAILED]
    if all_failed:
        return Progress(
            JobStatus.FAILED,
            job.current_batch,
            None,
            reason=f"{len(all_failed)} of {len(tasks)} tasks failed ({_describe(all_failed)})",
            changed=True,
        )
    return Progress(JobStatus.SUCCEEDED, job.current_batch, None, reason="", changed=True)


def _release(progress: Progress, batch: Sequence[TaskState], max_concurrent: int) -> Progress:
    """Release the batch's waiting tasks up to ``max_concurrent`` held at once (0: all)."""
    waiting = [t for t in batch if t.status is TaskStatus.PENDING and not t.released]
    if not waiting:
        return progress
    if max_concurrent > 0:
        held = sum(1 for t in batch if not t.status.is_terminal and t.released)
        waiting = waiting[: max(0, max_concurrent - held)]
    if not waiting:
        return progress
    return Progress(
        progress.status,
        progress.current_batch,
        progress.next_batch_at,
        release=tuple(t.id for t in waiting),
        cancel=progress.cancel,
        rollback=progress.rollback,
        reason=progress.reason,
        changed=True,
    )


def outcome_of(status: JobStatus) -> str:
    """The ``JobCompleted.outcome`` of a terminal job status."""
    if not status.is_terminal:
        raise ValueError(f"job status {status} is not terminal")
    return status.value


# --- agents -------------------------------------------------------------------------------------------------


def heartbeat_status(current: AgentStatus, checks: Sequence[Mapping[str, Any]]) -> AgentStatus:
    """The status a heartbeat gives an agent: degraded when a self-check fails, online otherwise."""
    if current is AgentStatus.REVOKED:
        return current
    return AgentStatus.DEGRADED if any(not check.get("ok", False) for check in checks) else AgentStatus.ONLINE


def offline_after(interval_s: float) -> timedelta:
    """How long without a heartbeat makes an agent ``offline`` (3 missed heartbeats)."""
    return timedelta(seconds=interval_s * MISSED_HEARTBEATS)


def hash_secret(secret: str) -> bytes:
    """The stored form of a registration token or an agent credential (high-entropy secrets: SHA-256 suffices)."""
    return hashlib.sha256(secret.encode()).digest()


def can_serve(capabilities: Iterable[str], capability: str) -> bool:
    """Whether an agent with ``capabilities`` can run a task needing ``capability``."""
    return capability in set(capabilities)


# --- stickers -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StickerInput:
    """What a sticker records (reference §4)."""

    release_id: UUID
    release_name: str
    components: Sequence[Mapping[str, Any]]
    job_id: UUID
    promotion_id: UUID | None
    environment_id: UUID
    environment_name: str
    target_id: UUID
    target_name: str
    strategy: str
    started_at: datetime
    extra: Mapping[str, Any] = field(default_factory=dict)


def build_sticker(data: StickerInput) -> dict[str, Any]:
    """The sticker a task writes, with ``content_hash`` over the rest (RFC 8785 canonical JSON).

    It holds no time of its own but the job's start, so every delivery of a task writes the same bytes.
    """
    sticker: dict[str, Any] = {
        "version": STICKER_VERSION,
        "generated_at": data.started_at.isoformat(),
        "generator": GENERATOR,
        "release": {
            "id": str(data.release_id),
            "name": data.release_name,
            "components": [{k: c.get(k) for k in ("name", "digest", "semver", "tag")} for c in data.components],
        },
        "deployment": {
            "id": str(data.job_id),
            "promotion_id": str(data.promotion_id) if data.promotion_id else None,
            "environment_id": str(data.environment_id),
            "environment_name": data.environment_name,
            "target_id": str(data.target_id),
            "target_name": data.target_name,
            "strategy": data.strategy,
            "started_at": data.started_at.isoformat(),
            "completed_at": None,
        },
    }
    sticker["content_hash"] = content_hash(sticker)
    return sticker


class StickerTemplate:
    """The stickers of one job, which differ only in their target: the canonical bytes are made once.

    :func:`build_sticker` canonicalizes every sticker whole (RFC 8785), once per target of a job. Here the
    sticker is canonicalized once with a unique placeholder for the target's id and for its name, and cut at
    them; each target's ``content_hash`` is then the SHA-256 of those pieces with the target's id and name,
    each serialized as :func:`~stella.contracts.canonical.canonicalize` serializes a string, put back in the
    cuts (the hash of the common prefix is taken once and copied). Keys are sorted by name, never by value,
    and a string's canonical form does not depend on where it stands, so the bytes are the ones
    :func:`build_sticker` hashes, and so the hash is the one agents and verifiers compute; a template whose
    placeholders do not each appear exactly once in its bytes (cannot happen with random ones, but is
    checked) builds every sticker with :func:`build_sticker`.
    """

    def __init__(self, data: StickerInput) -> None:
        self._data = data
        id_mark, name_mark = (f"stella-sticker-{secrets.token_hex(16)}" for _ in range(2))
        self._sticker = build_sticker(dataclasses.replace(data, target_name=name_mark))
        del self._sticker["content_hash"]
        self._sticker["deployment"]["target_id"] = id_mark
        whole = canonicalize(self._sticker)
        cuts = sorted(
            (whole.find(mark), mark, field_name)
            for mark, field_name in ((canonicalize(id_mark), "target_id"), (canonicalize(name_mark), "target_name"))
            if whole.count(mark) == 1
        )
        self._fields: tuple[str, ...] = ()
        if len(cuts) == 2:
            (first, first_mark, first_field), (second, second_mark, second_field) = cuts
            self._prefix = hashlib.sha256(whole[:first])
            self._middle = whole[first + len(first_mark) : second]
            self._suffix = whole[second + len(second_mark) :]
            self._fields = (first_field, second_field)

    def build(self, target_id: UUID, target_name: str) -> dict[str, Any]:
        """The sticker of ``target_id``, equal to :func:`build_sticker` of the job's data with this target.

        Raises:
            CanonicalizationError: When ``target_name`` cannot be canonicalized (a lone surrogate), as
                :func:`build_sticker` does.
        """
        if not self._fields:
            return build_sticker(dataclasses.replace(self._data, target_id=target_id, target_name=target_name))
        values = {"target_id": str(target_id), "target_name": target_name}
        digest = self._prefix.copy()
        digest.update(canonicalize(values[self._fields[0]]))
        digest.update(self._middle)
        digest.update(canonicalize(values[self._fields[1]]))
        digest.update(self._suffix)
        template = self._sticker
        return {
            **template,
            "release": {**template["release"], "components": [dict(c) for c in template["release"]["components"]]},
            "deployment": {**template["deployment"], **values},
            "content_hash": HASH_PREFIX + digest.hexdigest(),
        }


def resume(job: JobState, tasks: Sequence[TaskState]) -> tuple[UUID, ...]:
    """The tasks a paused job runs again when it resumes: the failed ones of the batch that paused it.

    Each runs as a new attempt (an agent runs a failed task again when its attempt is newer); the batch then
    goes on as if it had just started them, and pauses again if one fails again.

    Raises:
        JobNotPaused: the job is not paused.
    """
    if job.status is not JobStatus.PAUSED:
        raise JobNotPaused(f"the job is {job.status.value}; only a paused job can be resumed")
    return tuple(t.id for t in tasks if t.batch == job.current_batch and t.status in FAILED)
