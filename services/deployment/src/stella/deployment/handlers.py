"""Use cases of the deployment service: load -> domain -> save + outbox, in one transaction.

Jobs come from the workflow's ``deploy``, ``health-check`` and ``verify-drift`` steps and from people
(rollback, remediate, check-drift). Every change to a job happens with the job's row locked (results,
timers, cancellations), so its tasks' outcomes are applied one after the other; the lease query takes
only task rows (``SKIP LOCKED``), so agents polling never wait on a job.

After a transaction that released tasks commits, a notice on core NATS wakes the tenant's waiting task
feeds; a lost notice costs at most one poll interval.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final
from uuid import UUID, uuid4

import asyncpg
from pydantic import BaseModel, ConfigDict, ValidationError

from stella.contracts import deployment as c
from stella.contracts.agent import (
    AGENT_PROTOCOL_VERSION,
    AgentRegistered,
    AgentStatus,
    AgentTask,
    ComponentSpec,
    DeploymentRef,
    HealthCheckSpec,
    HeartbeatAck,
    TargetSpec,
    TargetType,
    TaskResult,
    TaskStatus,
    TaskType,
)
from stella.contracts.envelope import Command, ErrorDetail, Message, Page, Reply, utcnow
from stella.contracts.promotion import GET_ENVIRONMENT, EnvironmentView, GetEnvironment
from stella.contracts.release import GET_RELEASE, GetRelease, ReleaseView
from stella.contracts.workflow import COMPLETE_STEP, ExecuteStep, StepRef, StepStatus
from stella.deployment import domain, repo
from stella.deployment.pull_credentials import attach_pull_credentials
from stella.deployment.settings import Settings
from stella.kit.asking import Refused, ask
from stella.kit.broker import CommandProcessor, ServiceClient
from stella.kit.errors import TransientFault
from stella.kit.outbox import add_events
from stella.kit.pagination import aware_datetime, keyset_page

log = logging.getLogger(__name__)

REGISTRATION_PREFIX: Final[str] = "stra_"
"""Registration tokens: ``stra_<tenant hex>_<secret>`` (the tenant routes the registration; the secret proves it)."""

CREDENTIAL_PREFIX: Final[str] = "stag_"
"""Agent credentials: ``stag_<tenant hex>_<agent hex>_<secret>``."""

EVENT_KINDS: Final[frozenset[c.JobKind]] = frozenset({c.JobKind.DEPLOY, c.JobKind.ROLLBACK, c.JobKind.REMEDIATE})
"""Job kinds announced with ``job_started`` / ``job_completed`` (checks are answered to their step only)."""

_MAX_ADVANCE_ROUNDS: Final[int] = 8

MAX_TARGET_PAGE_SIZE: Final[int] = 200
"""Most targets one page of a target list holds (a target carries its sticker): a page stays one message."""

MAX_JOB_TARGETS: Final[int] = 1200
"""Most targets one environment's job deploys: its ``job_completed`` event (about 600 bytes a task) must fit
one NATS message."""

MAX_EVENT_BYTES: Final[int] = 768 * 1024
"""Largest ``job_completed`` payload sent whole; NATS carries at most 1 MiB per message by default."""


class DependencyUnavailable(TransientFault):
    """The promotion or release service did not answer; the command is retried later."""


@dataclass
class Effects:
    """What a transaction did that matters after it commits: tenants whose agents have tasks to lease."""

    tenants: set[UUID] = field(default_factory=set)
    wake: bool = False
    """Whether a due time (a pause between batches, a new deadline) may now come before the timer's next one."""


class StepInputs(BaseModel):
    """What a deployment step needs from the run's inputs; the run carries more, which is ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    release_id: UUID
    environment_id: UUID
    promotion_id: UUID | None = None


def new_secret(prefix: str, *ids: UUID) -> str:
    """A secret naming ``ids`` (hex) in clear, for routing, and 32 random bytes that prove it."""
    return prefix + "".join(f"{i.hex}_" for i in ids) + secrets.token_urlsafe(32)


def health_check_of(raw: Mapping[str, Any] | None) -> HealthCheckSpec | None:
    """An environment's default health check (its config's shape) as the agent's contract."""
    if not raw:
        return None
    fields = {k: v for k, v in raw.items() if v not in (None, [], ()) and k in HealthCheckSpec.model_fields}
    try:
        return HealthCheckSpec.model_validate(fields)
    except ValidationError:
        return None


def strategy_of(environment: EnvironmentView, step_config: Mapping[str, Any]) -> c.StrategySpec:
    """The strategy of a job: the step's settings overlaid by the environment's ``config.deployment``.

    The environment's default health check applies when neither names one.
    """
    known = set(c.StrategySpec.model_fields)
    merged: dict[str, Any] = {k: v for k, v in step_config.items() if k in known}
    merged.update(environment.config.get("deployment") or {})
    if "task_timeout_s" not in merged and isinstance(environment.config.get("deployment_timeout_s"), int | float):
        merged["task_timeout_s"] = min(86_400, environment.config["deployment_timeout_s"])
    spec = c.StrategySpec.model_validate(merged)
    if spec.health_check is None:
        default = health_check_of(environment.config.get("health_check"))
        if default is not None:
            spec = spec.model_copy(update={"health_check": default})
    return spec


class Handlers:
    """The deployment service's command, query, agent-channel and timer handlers."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        commands: CommandProcessor,
        client: Callable[[], ServiceClient],
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        notify: Callable[[set[UUID]], Awaitable[None]] | None = None,
        on_scheduled: Callable[[], None] = lambda: None,
    ) -> None:
        self._pool = pool
        self.commands = commands
        self._client = client
        self.settings = settings
        self.clock = clock
        self._notify = notify
        self.on_scheduled = on_scheduled
        self._next_sweep: datetime = clock()
        """When the timer next looks at every running job (at once after a start: a crash may have left one
        whose last task ended without the job moving)."""

    async def _after(self, effects: Effects) -> None:
        if effects.tenants and self._notify is not None:
            await self._notify(set(effects.tenants))
        if effects.tenants or effects.wake:
            self.on_scheduled()

    async def _run(
        self, cmd: Command, execute: Callable[[asyncpg.Connection, Effects], Awaitable[object]], **kw: Any
    ) -> Reply:
        effects = Effects()

        async def run(conn: asyncpg.Connection) -> object:
            effects.tenants.clear()
            effects.wake = False
            return await execute(conn, effects)

        reply = await self.commands.run(cmd, run, **kw)
        await self._after(effects)
        return reply

    # --- other services ---------------------------------------------------------------------------------

    async def _environment(self, source: Message, environment_id: UUID) -> EnvironmentView:
        return await ask(
            self._client(),
            GET_ENVIRONMENT,
            source.caused(GetEnvironment, environment_id=environment_id),
            EnvironmentView,
            timeout=self.settings.dependency_timeout_s,
            unavailable=lambda error: DependencyUnavailable(f"the promotion service did not answer: {error.detail}"),
        )

    async def _release(self, source: Message, release_id: UUID) -> ReleaseView:
        return await ask(
            self._client(),
            GET_RELEASE,
            source.caused(GetRelease, release_id=release_id),
            ReleaseView,
            timeout=self.settings.dependency_timeout_s,
            unavailable=lambda error: DependencyUnavailable(f"the release service did not answer: {error.detail}"),
        )

    # --- targets ----------------------------------------------------------------------------------------

    async def _check_pinned_agent(
        self, conn: asyncpg.Connection, tenant_id: UUID, agent_id: UUID | None, target_type: TargetType
    ) -> None:
        if agent_id is None:
            return
        agent = await conn.fetchrow(repo.GET_AGENT, tenant_id, agent_id)
        if agent is None or agent["status"] == AgentStatus.REVOKED:
            raise domain.AgentNotFound(f"agent {agent_id} does not exist")
        capability = domain.CAPABILITY_OF[target_type]
        if not domain.can_serve(agent["capabilities"], capability):
            raise domain.AgentUnsuitable(
                f"agent {agent['name']} cannot serve a {target_type.value} target (it lacks the {capability!r} capability)"
            )

    async def create_target(self, cmd: c.CreateTarget) -> Reply:
        """Add a target to an environment of the caller's tenant (asked of the promotion service first)."""
        if (seen := await self.commands.seen(cmd)) is not None:
            return seen
        try:
            connection = domain.check_connection(cmd.target_type, cmd.connection)
            await self._environment(cmd, cmd.environment_id)
        except Refused as exc:
            refusal: Exception = exc
            if exc.status == 404:
                refusal = domain.EnvironmentNotFound(f"environment {cmd.environment_id} does not exist")
            return await self._refuse(cmd, refusal)
        except domain.InvalidConnection as exc:
            return await self._refuse(cmd, exc)
        except DependencyUnavailable as exc:
            # Answered, not stored: the same request repeated runs again once the promotion service is back.
            return Reply.failure(
                ErrorDetail(code="SYS_UNAVAILABLE", status=503, title="Dependency unavailable", detail=str(exc))
            )

        async def execute(conn: asyncpg.Connection, _: Effects) -> object:
            now = self.clock()
            await self._check_pinned_agent(conn, cmd.tenant_id, cmd.agent_id, cmd.target_type)
            row = await conn.fetchrow(
                repo.INSERT_TARGET,
                cmd.tenant_id,
                uuid4(),
                cmd.environment_id,
                cmd.name,
                cmd.target_type.value,
                connection,
                dict(cmd.labels),
                cmd.health_check.model_dump(mode="json") if cmd.health_check else None,
                cmd.agent_id,
                now,
            )
            if row is None:
                raise domain.TargetNameTaken(f"the environment already has a target named {cmd.name!r}")
            view = repo.target_view(row)
            await add_events(conn, [(c.TARGET_CHANGED, cmd.caused(c.TargetChanged, target=view))])
            return view.model_dump(mode="json")

        return await self._run(cmd, execute)

    async def _refuse(self, cmd: Command, exc: Exception) -> Reply:
        async def execute(conn: asyncpg.Connection, _: Effects) -> object:
            raise exc

        return await self._run(cmd, execute)

    async def update_target(self, cmd: c.UpdateTarget) -> Reply:
        """Change a target's name, connection, labels, health check or pinned agent."""

        async def execute(conn: asyncpg.Connection, _: Effects) -> object:
            row = await conn.fetchrow(repo.GET_TARGET_FOR_UPDATE, cmd.tenant_id, cmd.target_id)
            if row is None:
                raise domain.TargetNotFound(f"target {cmd.target_id} does not exist")
            target_type = TargetType(row["target_type"])
            fields = cmd.model_fields_set
            connection = (
                domain.check_connection(target_type, cmd.connection)
                if cmd.connection is not None
                else row["connection"]
            )
            agent_id = cmd.agent_id if "agent_id" in fields else row["agent_id"]
            if "agent_id" in fields:
                await self._check_pinned_agent(conn, cmd.tenant_id, agent_id, target_type)
            health_check = row["health_check"]
            if "health_check" in fields:
                health_check = cmd.health_check.model_dump(mode="json") if cmd.health_check else None
            try:
                updated = await conn.fetchrow(
                    repo.UPDATE_TARGET,
                    cmd.tenant_id,
                    cmd.target_id,
                    cmd.name or row["name"],
                    connection,
                    dict(cmd.labels) if cmd.labels is not None else row["labels"],
                    health_check,
                    agent_id,
                    self.clock(),
                )
            except asyncpg.UniqueViolationError:
                raise domain.TargetNameTaken(f"the environment already has a target named {cmd.name!r}") from None
            view = repo.target_view(updated)
            await add_events(conn, [(c.TARGET_CHANGED, cmd.caused(c.TargetChanged, target=view))])
            return view.model_dump(mode="json")

        return await self._run(cmd, execute)

    async def delete_target(self, cmd: c.DeleteTarget) -> Reply:
        """Remove a target no unfinished task works on."""

        async def execute(conn: asyncpg.Connection, _: Effects) -> object:
            row = await conn.fetchrow(repo.GET_TARGET_FOR_UPDATE, cmd.tenant_id, cmd.target_id)
            if row is None:
                raise domain.TargetNotFound(f"target {cmd.target_id} does not exist")
            if await conn.fetchval(repo.TARGET_HELD, cmd.tenant_id, cmd.target_id):
                raise domain.TargetBusy(f"target {row['name']} has unfinished tasks; cancel their job first")
            await conn.execute(repo.DELETE_TARGET, cmd.tenant_id, cmd.target_id)
            view = repo.target_view(row)
            await add_events(conn, [(c.TARGET_CHANGED, cmd.caused(c.TargetChanged, target=view, deleted=True))])
            return None

        return await self._run(cmd, execute)

    async def get_target(self, q: c.GetTarget) -> Reply:
        """One target."""
        async with self._pool().acquire() as conn:
            row = await conn.fetchrow(repo.GET_TARGET, q.tenant_id, q.target_id)
        if row is None:
            raise domain.TargetNotFound(f"target {q.target_id} does not exist")
        return Reply.success(repo.target_view(row).model_dump(mode="json"))

    async def list_targets(self, q: c.ListTargets) -> Reply:
        """Targets by name, of one environment when given."""
        async with self._pool().acquire() as conn:
            items, token = await keyset_page(
                partial(conn.fetch, repo.LIST_TARGETS, q.tenant_id, q.environment_id),
                q.page.page_token,
                str,
                UUID,
                kind="deployment-targets",
                size=min(q.page.page_size, MAX_TARGET_PAGE_SIZE),
                key=_by_name,
            )
        return _page([repo.target_view(r) for r in items], token)

    # --- agents: tokens, registration, revocation ------------------------------------------------------

    async def create_agent_token(self, cmd: c.CreateAgentToken) -> Reply:
        """A one-time registration token (shown in this reply only; a repeat of the command answers without it)."""

        async def execute(conn: asyncpg.Connection, _: Effects) -> object:
            now = self.clock()
            token = new_secret(REGISTRATION_PREFIX, cmd.tenant_id)
            token_id = uuid4()
            expires_at = now + timedelta(seconds=cmd.expires_in_s)
            await conn.execute(
                repo.INSERT_TOKEN,
                cmd.tenant_id,
                token_id,
                domain.hash_secret(token),
                dict(cmd.labels),
                cmd.actor_id,
                now,
                expires_at,
            )
            return c.AgentTokenCreated(id=token_id, token=token, expires_at=expires_at, labels=cmd.labels).model_dump(
                mode="json"
            )

        return await self._run(cmd, execute, keep=lambda data: {**data, "token": None})

    async def register_agent(self, q: c.AgentRegister) -> Reply:
        """Register an agent with a one-time token; answers its id and credential (stored hashed)."""
        body = q.registration
        if body.protocol_version != AGENT_PROTOCOL_VERSION:
            raise domain.ProtocolUnsupported(
                f"agent protocol {body.protocol_version!r} is not served; use {AGENT_PROTOCOL_VERSION!r}"
            )
        async with self._pool().acquire() as conn, conn.transaction():
            now = self.clock()
            token = await conn.fetchrow(repo.TOKEN_FOR_UPDATE, q.tenant_id, domain.hash_secret(body.registration_token))
            if token is None:
                raise domain.AgentUnauthenticated("the registration token is not valid", code="AGT_TOKEN_INVALID")
            if token["used_at"] is not None:
                raise domain.RegistrationTokenUsed("the registration token was used already; ask for a new one")
            if token["expires_at"] <= now:
                raise domain.RegistrationTokenExpired(
                    f"the registration token expired at {token['expires_at'].isoformat()}"
                )
            agent_id = uuid4()
            credential = new_secret(CREDENTIAL_PREFIX, q.tenant_id, agent_id)
            labels = {**body.labels, **token["labels"]}  # what the admin gave the token wins over the agent's say
            row = await conn.fetchrow(
                repo.INSERT_AGENT,
                q.tenant_id,
                agent_id,
                body.name,
                body.version,
                sorted(set(body.capabilities)),
                labels,
                domain.hash_secret(credential),
                now,
            )
            if row is None:
                raise domain.AgentNameTaken(f"an agent named {body.name!r} is registered; revoke it first")
            await conn.execute(repo.USE_TOKEN, q.tenant_id, token["id"], now, agent_id)
            await add_events(conn, [(c.AGENT_STATUS_CHANGED, self._agent_event(q, row, None))])
        return Reply.success(
            AgentRegistered(
                agent_id=agent_id,
                credential=credential,
                heartbeat_interval_s=self.settings.heartbeat_interval_s,
                task_poll_timeout_s=self.settings.task_poll_timeout_s,
            ).model_dump(mode="json")
        )

    def _agent_event(
        self,
        source: Message | None,
        row: Mapping[str, Any],
        previous: AgentStatus | None,
        *,
        correlation: UUID | None = None,
    ) -> c.AgentStatusChanged:
        fields = {
            "agent_id": row["id"],
            "name": row["name"],
            "status": AgentStatus(row["status"]),
            "previous_status": previous,
            "at": self.clock(),
        }
        if source is not None:
            return source.caused(c.AgentStatusChanged, **fields)
        return c.AgentStatusChanged(tenant_id=row["tenant_id"], correlation_id=correlation or uuid4(), **fields)

    async def _authenticate(self, conn: asyncpg.Connection, call: c.AgentCall, *, lock: bool = False) -> asyncpg.Record:
        row = await conn.fetchrow(repo.GET_AGENT_FOR_UPDATE if lock else repo.GET_AGENT, call.tenant_id, call.agent_id)
        if row is None or not secrets.compare_digest(
            bytes(row["credential_hash"]), domain.hash_secret(call.credential)
        ):
            raise domain.AgentUnauthenticated("the agent credential is not valid")
        if row["status"] == AgentStatus.REVOKED:
            raise domain.AgentUnauthenticated("the agent was revoked", code="AGT_CREDENTIAL_REVOKED")
        return row

    async def authenticate_agent(self, q: c.AgentAuthenticate) -> Reply:
        """Check an agent credential (401 for an unknown or revoked one)."""
        async with self._pool().acquire() as conn:
            row = await self._authenticate(conn, q)
        return Reply.success(repo.agent_view(row).model_dump(mode="json"))

    async def revoke_agent(self, cmd: c.RevokeAgent) -> Reply:
        """Revoke an agent: its credential is refused from now on; the tasks it holds go back to the queue."""

        async def execute(conn: asyncpg.Connection, effects: Effects) -> object:
            row = await conn.fetchrow(repo.GET_AGENT_FOR_UPDATE, cmd.tenant_id, cmd.agent_id)
            if row is None:
                raise domain.AgentNotFound(f"agent {cmd.agent_id} does not exist")
            if row["status"] == AgentStatus.REVOKED:
                return repo.agent_view(row).model_dump(mode="json")
            now = self.clock()
            updated = await conn.fetchrow(
                repo.SET_AGENT_STATUS, cmd.tenant_id, cmd.agent_id, AgentStatus.REVOKED.value, now
            )
            await add_events(
                conn, [(c.AGENT_STATUS_CHANGED, self._agent_event(cmd, updated, AgentStatus(row["status"])))]
            )
            if await conn.fetch(repo.REQUEUE_AGENT_TASKS, cmd.tenant_id, cmd.agent_id, "its agent was revoked"):
                effects.tenants.add(cmd.tenant_id)
            return repo.agent_view(updated).model_dump(mode="json")

        return await self._run(cmd, execute)

    async def get_agent(self, q: c.GetAgent) -> Reply:
        """One agent."""
        async with self._pool().acquire() as conn:
            row = await conn.fetchrow(repo.GET_AGENT, q.tenant_id, q.agent_id)
        if row is None:
            raise domain.AgentNotFound(f"agent {q.agent_id} does not exist")
        return Reply.success(repo.agent_view(row).model_dump(mode="json"))

    async def list_agents(self, q: c.ListAgents) -> Reply:
        """Agents by name."""
        async with self._pool().acquire() as conn:
            items, token = await keyset_page(
                partial(conn.fetch, repo.LIST_AGENTS, q.tenant_id, q.status.value if q.status else None),
                q.page.page_token,
                str,
                UUID,
                kind="deployment-agents",
                size=q.page.page_size,
                key=_by_name,
            )
        return _page([repo.agent_view(r) for r in items], token)

    # --- agent channel ----------------------------------------------------------------------------------

    async def heartbeat(self, q: c.AgentHeartbeat) -> Reply:
        """Record a heartbeat: status from the self-checks, leases of the tasks it runs extended."""
        async with self._pool().acquire() as conn, conn.transaction():
            row = await self._authenticate(conn, q, lock=True)
            now = self.clock()
            checks = [check.model_dump(mode="json") for check in q.heartbeat.checks]
            previous = AgentStatus(row["status"])
            status = domain.heartbeat_status(previous, checks)
            updated = await conn.fetchrow(
                repo.HEARTBEAT, q.tenant_id, q.agent_id, q.heartbeat.version, checks, status.value, now
            )
            lease = now + timedelta(seconds=self.settings.lease_s)
            kept = set()
            if q.heartbeat.running_tasks:
                kept = {
                    r["id"]
                    for r in await conn.fetch(
                        repo.EXTEND_LEASES, q.tenant_id, q.agent_id, list(q.heartbeat.running_tasks), lease
                    )
                }
            # Task rows before the tenant's outbox lock, the order of the agent calls that take both.
            if status is not previous:
                await add_events(conn, [(c.AGENT_STATUS_CHANGED, self._agent_event(q, updated, previous))])
        stop = [task_id for task_id in q.heartbeat.running_tasks if task_id not in kept]
        return Reply.success(HeartbeatAck(status=status, cancel_tasks=stop).model_dump(mode="json"))

    async def poll(self, q: c.AgentPoll) -> Reply:
        """Lease tasks of the targets this agent may serve (its pinned targets, and unpinned ones it is capable of).

        When the agent lists the tasks it holds, the ones leased to it that it does not hold were lost on the
        way to it (see :class:`~stella.contracts.deployment.AgentPoll`): they come first, handed over again.
        """
        async with self._pool().acquire() as conn, conn.transaction():
            row = await self._authenticate(conn, q)
            if row["status"] == AgentStatus.OFFLINE:
                return Reply.success(c.AgentTasks(tasks=[]).model_dump(mode="json"))
            now = self.clock()
            room = min(q.max_tasks, self.settings.max_tasks_per_poll)
            expires = now + timedelta(seconds=self.settings.lease_s)
            leased = []
            if q.held is not None:
                leased = list(await conn.fetch(repo.REOFFER_TASKS, q.tenant_id, q.agent_id, q.held, room, expires))
                if leased:
                    log.info("handing %d lost task(s) over to agent %s again", len(leased), q.agent_id)
            if len(leased) < room:
                leased += await conn.fetch(
                    repo.LEASE_TASKS,
                    q.tenant_id,
                    q.agent_id,
                    list(row["capabilities"]),
                    room - len(leased),
                    now,
                    expires,
                )
            if leased:
                await announce_progress(conn, q, [_progress(task) for task in leased], now)
        tasks = []
        for task in leased:
            body = dict(task["body"])
            body["attempt"] = task["attempt"]
            body["lease_expires_at"] = task["lease_expires_at"].isoformat()
            tasks.append(body)
        await attach_pull_credentials(self._client(), q.tenant_id, tasks, timeout=self.settings.dependency_timeout_s)
        return Reply.success(c.AgentTasks(tasks=tasks).model_dump(mode="json"))

    async def store_log(self, q: c.AgentLog) -> Reply:
        """Keep a log chunk of a task the agent holds (once per ``(task, attempt, seq)``, bounded per task)."""
        chunk = q.chunk
        async with self._pool().acquire() as conn, conn.transaction():
            await self._authenticate(conn, q)
            task = await conn.fetchrow(repo.GET_TASK_FOR_UPDATE, q.tenant_id, chunk.task_id)
            if task is None:
                raise domain.TaskNotLeased(
                    f"task {chunk.task_id} does not exist", status=404, code="AGT_TASK_NOT_FOUND"
                )
            if task["agent_id"] != q.agent_id or task["attempt"] != chunk.attempt:
                return Reply.success({"stored": False})
            room = self.settings.max_log_lines_per_task - task["log_lines"]
            lines = list(chunk.lines[: max(0, room)])
            truncated = len(lines) < len(chunk.lines)
            stored = False
            if lines:
                stored = bool(
                    await conn.fetchval(
                        repo.INSERT_LOG, q.tenant_id, chunk.task_id, chunk.attempt, chunk.seq, lines, self.clock()
                    )
                )
            if stored or truncated:
                await conn.execute(
                    repo.COUNT_LOG_LINES, q.tenant_id, chunk.task_id, len(lines) if stored else 0, truncated
                )
            status = TaskStatus(task["status"])
            if not status.is_terminal:
                await conn.execute(
                    repo.MARK_RUNNING,
                    q.tenant_id,
                    chunk.task_id,
                    chunk.attempt,
                    self.clock() + timedelta(seconds=self.settings.lease_s),
                )
                status = TaskStatus.RUNNING
            if stored or status != task["status"]:
                change = _progress(
                    task,
                    status=status,
                    log_lines=task["log_lines"] + (len(lines) if stored else 0),
                    log_seq=chunk.seq if stored else None,
                )
                await announce_progress(conn, q, [change], self.clock())
        return Reply.success({"stored": stored})

    async def record_result(self, q: c.AgentResult) -> Reply:
        """Apply the result of a task the agent holds; a result of an older attempt, or of another agent, is ignored."""
        effects = Effects()
        async with self._pool().acquire() as conn, conn.transaction():
            await self._authenticate(conn, q)
            answer, job = await self._apply_result(conn, q)
        # The job moves after the result committed, so results of one job are applied side by side; whichever
        # commits last sees every other. A crash in between is caught by the timer's sweep of running jobs.
        if job is not None:
            await self._move_job(job, effects)
        await self._after(effects)
        return Reply.success(answer)

    async def record_results(self, q: c.AgentResults) -> Reply:
        """Apply several results of tasks the agent holds in one transaction, each as :meth:`record_result` would.

        A result refused on its own (unknown task, wrong idempotency key) is answered with its status and
        code and changes nothing; the others are applied. The log chunks that come along are kept first, each
        as :meth:`store_log` would. The tasks named are locked in id order, like every writer that locks
        several tasks, and then their targets in id order; the accepted results are written with one
        statement each for the tasks, the targets deployed and their stickers. Each job they belong to then
        moves once.
        """
        outcomes: dict[int, c.ResultOutcome] = {}
        effects = Effects()
        now = self.clock()
        order = sorted(range(len(q.results)), key=lambda index: q.results[index].task_id)
        ids = sorted({result.task_id for result in q.results} | {chunk.task_id for chunk in q.logs})
        jobs: dict[UUID, Mapping[str, Any]] = {}
        async with self._pool().acquire() as conn, conn.transaction():
            await self._authenticate(conn, q)
            tasks = {row["id"]: row for row in await conn.fetch(repo.LOCK_TASKS, q.tenant_id, ids)}
            logged = await self._store_chunks(conn, q, tasks, now) if q.logs else {}
            accepted: dict[UUID, TaskResult] = {}
            for index in order:
                result = q.results[index]
                try:
                    answer = self._check_result(q.agent_id, tasks.get(result.task_id), result, accepted)
                except domain.TaskNotLeased as exc:
                    outcomes[index] = c.ResultOutcome(
                        task_id=result.task_id, accepted=False, reason=exc.detail, status=exc.status, code=exc.code
                    )
                    continue
                if answer is None:
                    accepted[result.task_id] = result
                    answer = {"accepted": True}
                outcomes[index] = c.ResultOutcome(
                    task_id=result.task_id, accepted=bool(answer["accepted"]), reason=answer.get("reason")
                )
            running = [
                task_id
                for task_id in logged
                if task_id not in accepted and not TaskStatus(tasks[task_id]["status"]).is_terminal
            ]
            if running:
                lease = now + timedelta(seconds=self.settings.lease_s)
                await conn.execute(repo.MARK_TASKS_RUNNING, q.tenant_id, running, lease)
            if accepted:
                jobs = await self._finish_tasks(conn, q, accepted, now)
            changes = []
            for task_id in sorted(set(accepted) | set(logged)):
                task = tasks[task_id]
                added, seq = logged.get(task_id, (0, None))
                ended = accepted.get(task_id)
                status = TaskStatus(ended.status if ended is not None else task["status"])
                if task_id in running:
                    status = TaskStatus.RUNNING
                if status == task["status"] and not added:
                    continue
                changes.append(
                    _progress(
                        task,
                        status=status,
                        log_lines=task["log_lines"] + added,
                        log_seq=seq,
                        error_code=ended.error_code if ended is not None else None,
                    )
                )
            await announce_progress(conn, q, changes, now, jobs=jobs)
        for job in jobs.values():
            await self._move_job(job, effects)
        await self._after(effects)
        answered = c.ResultOutcomes(results=[outcomes[index] for index in range(len(q.results))])
        return Reply.success(answered.model_dump(mode="json"))

    @staticmethod
    def _check_result(
        agent_id: UUID, task: Mapping[str, Any] | None, result: TaskResult, accepted: Mapping[UUID, TaskResult]
    ) -> dict[str, Any] | None:
        """Whether a result of a batch is to be applied (None), or the answer it gets without changing anything.

        ``accepted``: the results of the batch taken before this one (a task named twice has ended with the first).

        Raises:
            TaskNotLeased: 404 for an unknown task, 422 for an idempotency key that is not the task's.
        """
        if task is None:
            raise domain.TaskNotLeased(f"task {result.task_id} does not exist", status=404, code="AGT_TASK_NOT_FOUND")
        if task["agent_id"] != agent_id or task["attempt"] != result.attempt:
            return {"accepted": False, "reason": "not the current attempt of this agent"}
        if result.idempotency_key != task["idempotency_key"]:
            raise domain.TaskNotLeased(
                "the result's idempotency key is not the task's", status=422, code="AGT_RESULT_MISMATCH"
            )
        earlier = accepted.get(result.task_id)
        if earlier is not None:
            return {"accepted": earlier.status == result.status, "reason": "the task had ended already"}
        if TaskStatus(task["status"]).is_terminal:
            return {"accepted": task["status"] == result.status, "reason": "the task had ended already"}
        return None

    async def _store_chunks(
        self, conn: asyncpg.Connection, q: c.AgentResults, tasks: Mapping[UUID, Mapping[str, Any]], now: datetime
    ) -> dict[UUID, tuple[int, int | None]]:
        """Keep the log chunks of a results post (tasks locked by the caller), each as :meth:`store_log` would.

        Returns the tasks of the chunks kept or cut, each with the lines stored and the highest sequence
        number of its chunks stored (None: none was, a resent chunk or no room left).
        """
        room = {task_id: self.settings.max_log_lines_per_task - row["log_lines"] for task_id, row in tasks.items()}
        kept: dict[tuple[UUID, int], tuple[int, bool]] = {}
        rows: list[tuple[UUID, int, int, str]] = []
        for chunk in sorted(q.logs, key=lambda chunk: (chunk.task_id, chunk.attempt, chunk.seq)):
            task = tasks.get(chunk.task_id)
            if task is None or task["agent_id"] != q.agent_id or task["attempt"] != chunk.attempt:
                continue
            if (chunk.task_id, chunk.seq) in kept:
                continue
            lines = list(chunk.lines[: max(0, room[chunk.task_id])])
            room[chunk.task_id] -= len(lines)
            kept[(chunk.task_id, chunk.seq)] = (len(lines), len(lines) < len(chunk.lines))
            if lines:
                rows.append((chunk.task_id, chunk.attempt, chunk.seq, json.dumps(lines)))
        stored: set[tuple[UUID, int]] = set()
        if rows:
            columns = [list(column) for column in zip(*rows, strict=True)]
            stored = {(r["task_id"], r["seq"]) for r in await conn.fetch(repo.INSERT_LOGS, q.tenant_id, now, *columns)}
        counts: dict[UUID, tuple[int, bool]] = {}
        logged: dict[UUID, tuple[int, int | None]] = {}
        for (task_id, seq), (size, truncated) in kept.items():
            added, cut = counts.get(task_id, (0, False))
            if (task_id, seq) in stored or truncated:
                counts[task_id] = (added + (size if (task_id, seq) in stored else 0), cut or truncated)
            so_far, last = logged.get(task_id, (0, None))
            if (task_id, seq) in stored:
                logged[task_id] = (so_far + size, seq if last is None else max(last, seq))
            else:
                logged[task_id] = (so_far, last)
        if counts:
            await conn.execute(
                repo.COUNT_TASKS_LOG_LINES,
                q.tenant_id,
                list(counts),
                [added for added, _ in counts.values()],
                [cut for _, cut in counts.values()],
            )
        return logged

    async def _finish_tasks(
        self, conn: asyncpg.Connection, q: c.AgentResults, accepted: Mapping[UUID, TaskResult], now: datetime
    ) -> dict[UUID, asyncpg.Record]:
        """End the tasks of the accepted results (locked by the caller) and apply them to their targets.

        Returns the jobs of these tasks, by id.
        """
        results = [accepted[task_id] for task_id in sorted(accepted)]
        finished = await conn.fetch(
            repo.FINISH_TASKS,
            q.tenant_id,
            now,
            [r.task_id for r in results],
            [r.status for r in results],
            [r.error_code for r in results],
            [r.message for r in results],
            [json.dumps(r.model_dump(mode="json", exclude={"artifacts"})) for r in results],
            [json.dumps([a.model_dump(mode="json") for a in r.artifacts]) for r in results],
        )
        finished = sorted(finished, key=lambda row: row["id"])
        job_ids = sorted({row["job_id"] for row in finished if row["job_id"]})
        jobs = {row["id"]: row for row in await conn.fetch(repo.JOBS_BY_ID, q.tenant_id, job_ids)} if job_ids else {}
        target_ids = sorted({row["target_id"] for row in finished})
        await conn.execute(repo.LOCK_TARGETS, q.tenant_id, target_ids)
        # A target's first deploy or rollback that succeeded is written with the others at once; anything else
        # (failures, checks, inspections, a second task of the same target) goes on its own, in task order.
        together: list[asyncpg.Record] = []
        alone: list[asyncpg.Record] = []
        seen: set[UUID] = set()
        for row in finished:
            deployed = TaskType(row["type"]) in (TaskType.DEPLOY, TaskType.ROLLBACK)
            if deployed and accepted[row["id"]].status == "succeeded" and row["target_id"] not in seen:
                together.append(row)
            else:
                alone.append(row)
            seen.add(row["target_id"])
        if together:
            await self._deploy_targets(conn, q.tenant_id, together, accepted, jobs, now)
        for row in alone:
            one = c.AgentResult(
                tenant_id=q.tenant_id,
                correlation_id=q.correlation_id,
                agent_id=q.agent_id,
                credential=q.credential,
                result=accepted[row["id"]],
            )
            await self._apply_to_target(conn, one, row, jobs.get(row["job_id"]), now)
        return jobs

    @staticmethod
    async def _deploy_targets(
        conn: asyncpg.Connection,
        tenant_id: UUID,
        tasks: Sequence[Mapping[str, Any]],
        results: Mapping[UUID, TaskResult],
        jobs: Mapping[UUID, Mapping[str, Any]],
        now: datetime,
    ) -> None:
        """What succeeded deploys say about their targets (one task per target), as :meth:`_apply_to_target`."""
        rows = []
        for task in tasks:
            result = results[task["id"]]
            body = task["body"]
            components = body.get("components") or []
            running = {s.name: s.running_digest for s in result.components if s.running_digest}
            current = {s["name"]: s["digest"] for s in components} | running
            sticker = result.sticker or body.get("sticker")
            release = (body.get("sticker") or {}).get("release") or {}
            rows.append(
                (task, current, components, UUID(release["id"]) if release.get("id") else None, release, sticker)
            )
        updated = {
            r["id"]
            for r in await conn.fetch(
                repo.SET_TARGETS_DEPLOYED,
                tenant_id,
                now,
                [task["target_id"] for task, *_ in rows],
                [json.dumps(current) for _, current, *_ in rows],
                [json.dumps(components) for _, _, components, *_ in rows],
                [release_id for *_, release_id, _, _ in rows],
                [release.get("name") for *_, release, _ in rows],
                [json.dumps(sticker) if sticker is not None else None for *_, sticker in rows],
            )
        }
        stickers = [
            (task, release_id, sticker)
            for task, _, _, release_id, _, sticker in rows
            if sticker is not None and task["target_id"] in updated
        ]
        if stickers:
            await conn.execute(
                repo.INSERT_STICKERS,
                tenant_id,
                now,
                [uuid4() for _ in stickers],
                [task["target_id"] for task, _, _ in stickers],
                [release_id for _, release_id, _ in stickers],
                [jobs[task["job_id"]]["promotion_id"] if task["job_id"] in jobs else None for task, _, _ in stickers],
                [task["job_id"] for task, _, _ in stickers],
                [task["id"] for task, _, _ in stickers],
                [json.dumps(sticker) for _, _, sticker in stickers],
                [str(sticker.get("content_hash", "")) for _, _, sticker in stickers],
            )

    async def _apply_result(
        self, conn: asyncpg.Connection, q: c.AgentResult
    ) -> tuple[dict[str, Any], asyncpg.Record | None]:
        """Apply one result (the agent authenticated in the caller's transaction): the answer, and its job."""
        result = q.result
        # Locks: the task's row, then (in _drive) the job's; every writer of a job's tasks takes them in
        # that order, so results of one job are applied in parallel up to the short job-locked part.
        task = await conn.fetchrow(repo.GET_TASK_FOR_UPDATE, q.tenant_id, result.task_id)
        if task is None:
            raise domain.TaskNotLeased(f"task {result.task_id} does not exist", status=404, code="AGT_TASK_NOT_FOUND")
        if task["agent_id"] != q.agent_id or task["attempt"] != result.attempt:
            return {"accepted": False, "reason": "not the current attempt of this agent"}, None
        if result.idempotency_key != task["idempotency_key"]:
            raise domain.TaskNotLeased(
                "the result's idempotency key is not the task's", status=422, code="AGT_RESULT_MISMATCH"
            )
        if TaskStatus(task["status"]).is_terminal:
            same = task["status"] == result.status
            return {"accepted": same, "reason": "the task had ended already"}, None
        now = self.clock()
        finished = await conn.fetchrow(
            repo.FINISH_TASK,
            q.tenant_id,
            task["id"],
            result.status,
            result.error_code,
            result.message,
            result.model_dump(mode="json", exclude={"artifacts"}),
            [a.model_dump(mode="json") for a in result.artifacts],
            now,
        )
        job = await conn.fetchrow(repo.GET_JOB, q.tenant_id, task["job_id"]) if task["job_id"] else None
        await self._apply_to_target(conn, q, finished, job, now)
        if job is not None:
            change = _progress(finished, error_code=result.error_code)
            await announce_progress(conn, q, [change], now, jobs={job["id"]: job})
        return {"accepted": True}, job

    async def _move_job(self, job: Mapping[str, Any], effects: Effects) -> None:
        """Advance a job if what it waits for has happened (one cheap count otherwise).

        ``job`` may be a little old: the count then finds the batch it names over, and :meth:`_drive` reads
        the job again under its lock.
        """
        async with self._pool().acquire() as conn:
            if c.JobStatus(job["status"]).is_terminal or await self._nothing_to_do(conn, job):
                return
            async with conn.transaction():
                await self._drive(conn, job["tenant_id"], job["id"], self.clock(), effects)

    async def _apply_to_target(
        self,
        conn: asyncpg.Connection,
        source: c.AgentResult,
        task: asyncpg.Record,
        job: asyncpg.Record | None,
        now: datetime,
    ) -> None:
        """What a task's result says about its target: what runs, its health, its sticker, drift."""
        result = source.result
        tenant_id = source.tenant_id
        task_type = TaskType(task["type"])
        running = {s.name: s.running_digest for s in result.components if s.running_digest}
        if task_type in (TaskType.DEPLOY, TaskType.ROLLBACK) and result.status == "succeeded":
            body = AgentTask.model_validate(task["body"])
            specs = [s.model_dump(mode="json") for s in body.components]
            current = {s.name: s.digest for s in body.components} | running
            sticker = result.sticker or body.sticker
            release = (body.sticker or {}).get("release") or {}
            deployed = await conn.fetchval(
                repo.SET_TARGET_DEPLOYED,
                tenant_id,
                task["target_id"],
                current,
                specs,
                UUID(release["id"]) if release.get("id") else None,
                release.get("name"),
                sticker,
                "healthy",
                now,
            )
            if deployed and sticker is not None:
                await conn.execute(
                    repo.INSERT_STICKER,
                    tenant_id,
                    uuid4(),
                    task["target_id"],
                    UUID(release["id"]) if release.get("id") else None,
                    job["promotion_id"] if job else None,
                    task["job_id"],
                    task["id"],
                    sticker,
                    str(sticker.get("content_hash", "")),
                    now,
                )
            return
        target = await conn.fetchrow(repo.GET_TARGET_FOR_UPDATE, tenant_id, task["target_id"])
        if target is None:
            return  # deleted since
        if task_type in (TaskType.DEPLOY, TaskType.ROLLBACK):
            if running:
                health = "unhealthy" if result.error_code == "AGT_HEALTH_CHECK_FAILED" else target["health_status"]
                await conn.execute(repo.SET_TARGET_RUNNING, tenant_id, target["id"], running, health, now)
        elif task_type is TaskType.HEALTH_CHECK:
            await conn.execute(
                repo.SET_TARGET_HEALTH,
                tenant_id,
                target["id"],
                "healthy" if result.status == "succeeded" else "unhealthy",
                now,
            )
        elif task_type is TaskType.INSPECT and result.drift is not None:
            drift = result.drift
            await conn.execute(
                repo.INSERT_DRIFT,
                tenant_id,
                uuid4(),
                target["id"],
                task["id"],
                target["current_release_id"],
                drift.drifted,
                drift.sticker_found,
                drift.differences,
                now,
            )
            await conn.execute(
                repo.SET_TARGET_DRIFT,
                tenant_id,
                target["id"],
                drift.drifted,
                drift.model_dump(mode="json") | {"task_id": str(task["id"]), "detected_at": now.isoformat()},
                now,
            )
            if drift.drifted:
                await conn.execute(repo.FLAG_STICKER_DRIFT, tenant_id, target["id"])
                await add_events(
                    conn,
                    [
                        (
                            c.DRIFT_DETECTED,
                            source.caused(
                                c.DriftDetected,
                                target_id=target["id"],
                                target_name=target["name"],
                                environment_id=target["environment_id"],
                                release_id=target["current_release_id"],
                                differences=drift.differences,
                                detected_at=now,
                                sticker_found=drift.sticker_found,
                            ),
                        )
                    ],
                )

    # --- jobs: planning ---------------------------------------------------------------------------------

    async def execute_step(self, cmd: ExecuteStep) -> Reply:
        """Execute a workflow ``deploy``, ``health-check`` or ``verify-drift`` step: plan a job, answer when it ends."""
        if (seen := await self.commands.seen(cmd, only_reads_before_run=True)) is not None:
            return seen
        try:
            if cmd.step_type not in c.STEP_TYPES:
                raise domain.InvalidStep(f"step type {cmd.step_type!r} is not executed by the deployment service")
            run_inputs = cmd.inputs.get("inputs")
            try:
                inputs = StepInputs.model_validate(run_inputs if isinstance(run_inputs, dict) else {})
            except ValidationError as exc:
                raise domain.InvalidStep(
                    "the step's run inputs need release_id and environment_id",
                    errors=[{"loc": ["inputs", *e["loc"]], "msg": e["msg"]} for e in exc.errors()],
                ) from None
            environment = await self._environment(cmd, inputs.environment_id)
            release = await self._release(cmd, inputs.release_id)
            spec = strategy_of(environment, cmd.config)
        except (Refused, domain.InvalidStep, ValidationError) as exc:
            return await self._fail_step(cmd, exc)

        async def execute(conn: asyncpg.Connection, effects: Effects) -> object:
            # A step executed again under another message (a retried run) finds its job when the job is
            # inserted: the insert does nothing for a step key already planned, and the job planned is returned.
            key = cmd.idempotency_key
            kind = {"deploy": c.JobKind.DEPLOY, "health-check": c.JobKind.HEALTH_CHECK}.get(
                cmd.step_type, c.JobKind.VERIFY_DRIFT
            )
            try:
                job = await self._plan_job(
                    conn,
                    effects,
                    source=cmd,
                    kind=kind,
                    environment=environment,
                    release=release,
                    spec=spec,
                    promotion_id=inputs.promotion_id or cmd.subject_id,
                    step=cmd.step,
                    step_key=key,
                )
            except domain.InvalidStep as exc:  # raised before the job is written: the step fails instead
                return await _step_failed(conn, cmd, exc)
            return job.model_dump(mode="json")

        return await self._run(cmd, execute)

    async def _fail_step(self, cmd: ExecuteStep, exc: Exception) -> Reply:
        async def execute(conn: asyncpg.Connection, _: Effects) -> object:
            return await _step_failed(conn, cmd, exc)

        return await self._run(cmd, execute)

    async def _plan_job(
        self,
        conn: asyncpg.Connection,
        effects: Effects,
        *,
        source: Message,
        kind: c.JobKind,
        environment: EnvironmentView,
        release: ReleaseView,
        spec: c.StrategySpec,
        promotion_id: UUID | None,
        step: StepRef | None,
        step_key: str | None,
    ) -> c.JobSummary:
        """Plan and store a job of ``kind`` over the environment's targets, then start it when it may start.

        Raises:
            domain.InvalidStep: The environment has more targets than one job carries (nothing written).
        """
        now = self.clock()
        targets = await conn.fetch(repo.TARGETS_OF_ENVIRONMENT, source.tenant_id, environment.id, MAX_JOB_TARGETS + 1)
        if len(targets) > MAX_JOB_TARGETS:
            count = await conn.fetchval(repo.COUNT_TARGETS, source.tenant_id, environment.id)
            raise domain.InvalidStep(
                f"environment {environment.name} has {count} targets; one job deploys at most {MAX_JOB_TARGETS}",
                code="DEPLOY_TOO_MANY_TARGETS",
            )
        infos = [domain.TargetInfo(t["id"], t["name"], t["labels"], t["current"]) for t in targets]
        refs = [domain.ComponentRef(name=comp.name, digest=comp.digest) for comp in release.components]
        active_group = None
        if spec.strategy is c.Strategy.BLUE_GREEN:
            active_group = await conn.fetchval(repo.ACTIVE_GROUP, source.tenant_id, environment.id)
        if kind is c.JobKind.DEPLOY:
            planned = domain.plan(spec, infos, refs, active_group=active_group)
        else:
            task_type = TaskType.HEALTH_CHECK if kind is c.JobKind.HEALTH_CHECK else TaskType.INSPECT
            expected = tuple(c.DeployedComponent(name=r.name, digest=r.digest) for r in refs)
            planned = domain.Plan(
                tasks=tuple(domain.PlannedTask(t.id, t.name, task_type, 0, expected) for t in infos),
                batch_count=1 if infos else 0,
                note="" if infos else "the environment has no targets: nothing to check",
            )
            spec = spec.model_copy(update={"strategy": c.Strategy.ALL_AT_ONCE, "max_concurrent": 0})
        job_id = uuid4()
        row = await conn.fetchrow(
            repo.INSERT_JOB,
            source.tenant_id,
            job_id,
            kind.value,
            promotion_id,
            release.id,
            release.name,
            environment.id,
            environment.name,
            spec.strategy.value,
            spec.model_dump(mode="json"),
            c.JobStatus.PENDING.value,
            None,
            planned.note,
            len({t.target_id for t in planned.tasks}),
            planned.batch_count,
            planned.switch_to,
            planned.switch_from,
            step.run_id if step else None,
            step.node_id if step else None,
            step.attempt if step else None,
            step_key,
            source.correlation_id,
            getattr(source, "actor_id", None),
            now,
        )
        if row is None:  # a concurrent delivery of the same step planned it
            existing = await conn.fetchrow(repo.JOB_OF_STEP, source.tenant_id, step_key)
            return repo.job_summary(existing)
        by_id = {t["id"]: t for t in targets}
        components = {comp.name: comp for comp in release.components}
        ref = DeploymentRef(
            job_id=job_id,
            promotion_id=promotion_id,
            release_id=release.id,
            release_name=release.name,
            environment_id=environment.id,
            environment_name=environment.name,
            strategy=spec.strategy.value,
        )

        def component_specs(target: Mapping[str, Any], deployed: Sequence[c.DeployedComponent]) -> list[ComponentSpec]:
            specs = []
            for item in deployed:
                comp = components[item.name]
                runtime = spec.components.get(item.name) or c.ComponentRuntime()
                specs.append(
                    ComponentSpec(
                        component_id=comp.component_id,
                        name=comp.name,
                        image_repository=comp.image_repository,
                        digest=item.digest,
                        previous_digest=item.previous_digest,
                        tag=comp.tag,
                        semver=comp.semver,
                        ports=runtime.ports,
                        env=runtime.env,
                        command=runtime.command,
                        labels=runtime.labels,
                        registry_integration_id=comp.registry_integration_id,
                    )
                )
            return specs

        sticker_release = [
            {"name": comp.name, "digest": comp.digest, "semver": comp.semver, "tag": comp.tag}
            for comp in release.components
        ]
        # The job's stickers differ only in their target: canonicalized once (see domain.StickerTemplate).
        stickers = domain.StickerTemplate(
            domain.StickerInput(
                release_id=release.id,
                release_name=release.name,
                components=sticker_release,
                job_id=job_id,
                promotion_id=promotion_id,
                environment_id=environment.id,
                environment_name=environment.name,
                target_id=job_id,
                target_name="",
                strategy=spec.strategy.value,
                started_at=now,
            )
        )
        new_tasks: list[NewTask] = []
        for item in planned.tasks:
            target = by_id[item.target_id]
            task_id = uuid4()
            sticker = None
            task_spec = component_specs(target, item.components)
            if item.type is TaskType.INSPECT:
                task_spec = [ComponentSpec.model_validate(s) for s in target["current_components"]]
            if item.type is TaskType.DEPLOY:
                sticker = stickers.build(target["id"], target["name"])
            new_tasks.append(
                NewTask(
                    id=task_id,
                    target=target,
                    type=item.type,
                    batch=item.batch,
                    key=f"{job_id}:{target['id']}:{item.type.value}:{item.batch}",
                    components=item.components,
                    body=self._body(task_id, item, target, task_spec, ref, sticker, spec),
                    previous=_previous(target),
                )
            )
        await insert_tasks(conn, source.tenant_id, job_id, spec.task_timeout_s, new_tasks, now)
        started = await self._start_pending(
            conn, source.tenant_id, environment.id, now, effects, only=row if kind not in EVENT_KINDS else None
        )
        if started is None:  # another job changes the environment: the new one waits as it was inserted
            return repo.job_summary(row)
        if started["id"] != job_id:  # an older job started, and may have ended and started this one in turn
            started = await conn.fetchrow(repo.GET_JOB, source.tenant_id, job_id)
        return repo.job_summary(started)

    def _body(
        self,
        task_id: UUID,
        item: domain.PlannedTask,
        target: Mapping[str, Any],
        components: Sequence[ComponentSpec],
        ref: DeploymentRef | None,
        sticker: dict[str, Any] | None,
        spec: c.StrategySpec,
    ) -> dict[str, Any]:
        health_check = target["health_check"] or (
            spec.health_check.model_dump(mode="json") if spec.health_check else None
        )
        return AgentTask(
            task_id=task_id,
            idempotency_key=f"{ref.job_id if ref else 'inspect'}:{target['id']}:{item.type.value}:{item.batch}",
            type=item.type,
            target=TargetSpec(
                target_id=target["id"],
                name=target["name"],
                target_type=TargetType(target["target_type"]),
                connection=target["connection"],
                labels=target["labels"],
            ),
            components=list(components),
            deployment=ref,
            health_check=HealthCheckSpec.model_validate(health_check) if health_check else None,
            sticker=sticker,
            timeout_s=spec.task_timeout_s,
        ).model_dump(mode="json", exclude={"attempt", "lease_expires_at"})

    # --- jobs: running ----------------------------------------------------------------------------------

    async def _start_pending(
        self,
        conn: asyncpg.Connection,
        tenant_id: UUID,
        environment_id: UUID,
        now: datetime,
        effects: Effects,
        *,
        only: Mapping[str, Any] | None = None,
    ) -> Mapping[str, Any] | None:
        """Start the environment's oldest pending job when no other job changes it (checks start at once).

        Returns:
            The row of the job it started, as starting it left it; ``None`` when it started none.
        """
        if only is not None:
            return await self._begin(conn, only, now, effects)
        await conn.execute(repo.LOCK_ENVIRONMENT, tenant_id, environment_id)
        if await conn.fetchval(repo.ACTIVE_JOB_OF_ENVIRONMENT, tenant_id, environment_id) is not None:
            return None
        pending = await conn.fetchrow(repo.NEXT_PENDING_JOB, tenant_id, environment_id)
        if pending is None:
            return None
        return await self._begin(conn, pending, now, effects)

    async def _begin(
        self, conn: asyncpg.Connection, job: Mapping[str, Any], now: datetime, effects: Effects
    ) -> Mapping[str, Any]:
        """Start a pending job and drive it; return its row as that leaves it."""
        started = await conn.fetchrow(
            repo.UPDATE_JOB, job["tenant_id"], job["id"], c.JobStatus.RUNNING.value, job["reason"], 0, None, now, None
        )
        kind = c.JobKind(started["kind"])
        if kind in EVENT_KINDS:
            await add_events(
                conn,
                [
                    (
                        c.JOB_STARTED,
                        c.JobStarted(
                            tenant_id=started["tenant_id"],
                            correlation_id=started["correlation_id"],
                            job_id=started["id"],
                            promotion_id=started["promotion_id"],
                            release_id=started["release_id"],
                            environment_id=started["environment_id"],
                            strategy=started["strategy"],
                            target_count=started["target_count"],
                            rollback_of=started["rollback_of"],
                            started_at=now,
                            kind=kind,
                        ),
                    )
                ],
            )
        return await self._drive(conn, started["tenant_id"], started["id"], now, effects, job=started)

    async def _drive(
        self,
        conn: asyncpg.Connection,
        tenant_id: UUID,
        job_id: UUID,
        now: datetime,
        effects: Effects,
        *,
        job: Mapping[str, Any] | None = None,
    ) -> Mapping[str, Any]:
        """Advance a job (its row locked by the caller's transaction) until nothing more happens now.

        Args:
            job: The job's row as this transaction last wrote it (what an ``UPDATE ... RETURNING`` gave: locked
                and current), which spares reading it again; ``None`` reads it under its lock.

        Returns:
            The job's row as this leaves it.
        """
        if job is None:
            job = await conn.fetchrow(repo.GET_JOB_FOR_UPDATE, tenant_id, job_id)
        if await self._nothing_to_do(conn, job):
            return job
        for _ in range(_MAX_ADVANCE_ROUNDS):
            state = repo.job_state(job)
            if state.status.is_terminal or state.status in (c.JobStatus.PENDING, c.JobStatus.PAUSED):
                return job
            rows = await conn.fetch(repo.TASK_STATES_OF_JOB, tenant_id, job_id)
            progress = domain.advance(state, [repo.task_state(r) for r in rows], now)
            if not progress.changed:
                return job
            if progress.cancel:
                await conn.execute(
                    repo.CANCEL_TASKS, tenant_id, list(progress.cancel), now, "the job stopped before it ran"
                )
            if progress.rollback:
                await self._add_rollback_tasks(conn, job, rows, progress.rollback, now)
            if progress.release:
                await conn.execute(repo.RELEASE_TASKS, tenant_id, list(progress.release), now)
                effects.tenants.add(tenant_id)
            if progress.next_batch_at is not None:
                effects.wake = True
            status = progress.status
            reason = progress.reason if progress.reason is not None else job["reason"]
            if status is c.JobStatus.SUCCEEDED and c.JobKind(job["kind"]) is c.JobKind.VERIFY_DRIFT:
                drifted = [r["target_name"] for r in rows if r["drifted"]]
                if drifted:
                    status = c.JobStatus.FAILED
                    reason = f"drift detected on {', '.join(sorted(drifted))}"
            if status is c.JobStatus.SUCCEEDED and not reason:
                reason = _success_reason(job, rows)
            job = await conn.fetchrow(
                repo.UPDATE_JOB,
                tenant_id,
                job_id,
                status.value,
                reason,
                progress.current_batch,
                progress.next_batch_at,
                job["started_at"],
                now if status.is_terminal else None,
            )
            if status.is_terminal:
                await self._finished(conn, job, now, effects)
                return job
        return job

    async def _nothing_to_do(self, conn: asyncpg.Connection, job: Mapping[str, Any]) -> bool:
        """Whether a running job's current batch (or its rollback) is simply still under way: one cheap count.

        Most task results end a task of a batch that has others still running; only the last one, or a
        failure, or a freed slot under ``max_concurrent``, moves the job.
        """
        status = c.JobStatus(job["status"])
        if status is c.JobStatus.ROLLING_BACK:
            state = await conn.fetchrow(repo.BATCH_STATE_FROM, job["tenant_id"], job["id"], job["batch_count"])
        elif status is c.JobStatus.RUNNING and job["next_batch_at"] is None:
            state = await conn.fetchrow(repo.BATCH_STATE, job["tenant_id"], job["id"], job["current_batch"])
        else:
            return False
        return bool(state["open"] > 0 and state["failed"] == 0 and state["waiting"] == 0)

    async def _add_rollback_tasks(
        self,
        conn: asyncpg.Connection,
        job: Mapping[str, Any],
        rows: Sequence[asyncpg.Record],
        planned: Sequence[domain.PlannedTask],
        now: datetime,
    ) -> None:
        """Store the rollback tasks of a failed deployment: each towards the target's previous release."""
        latest: dict[UUID, asyncpg.Record] = {}
        for row in rows:
            if row["type"] in (TaskType.DEPLOY, TaskType.ROLLBACK) and row["attempt"] > 0:
                latest[row["target_id"]] = row
        targets = {
            t["id"]: t for t in await conn.fetch(repo.TARGETS_BY_ID, job["tenant_id"], [p.target_id for p in planned])
        }
        ref = DeploymentRef(
            job_id=job["id"],
            promotion_id=job["promotion_id"],
            release_id=job["release_id"],
            release_name=job["release_name"],
            environment_id=job["environment_id"],
            environment_name=job["environment_name"],
            strategy=job["strategy"],
            rollback_of=job["rollback_of"],
        )
        new_tasks = [
            task
            for item in planned
            if item.target_id in targets
            and (task := self._rollback_task(job, latest[item.target_id], targets[item.target_id], item, ref, now))
        ]
        await insert_tasks(conn, job["tenant_id"], job["id"], repo.job_state(job).spec.task_timeout_s, new_tasks, now)

    def _rollback_task(
        self,
        job: Mapping[str, Any],
        source: Mapping[str, Any],
        target: Mapping[str, Any],
        item: domain.PlannedTask,
        ref: DeploymentRef,
        now: datetime,
    ) -> NewTask | None:
        """A task deploying what ran on the target before ``source`` (its ``previous`` release)."""
        previous = source["previous"] or {}
        specs = [ComponentSpec.model_validate(s) for s in previous.get("components") or []]
        going_back = {comp.name: comp.previous_digest for comp in item.components}
        specs = [
            s.model_copy(update={"previous_digest": going_back.get(s.name)}) for s in specs if s.name in going_back
        ]
        if not specs:
            return None
        task_id = uuid4()
        release_id = previous.get("release_id")
        sticker = domain.build_sticker(
            domain.StickerInput(
                release_id=UUID(release_id) if release_id else job["release_id"],
                release_name=previous.get("release_name") or job["release_name"],
                components=[{"name": s.name, "digest": s.digest, "semver": s.semver, "tag": s.tag} for s in specs],
                job_id=job["id"],
                promotion_id=job["promotion_id"],
                environment_id=job["environment_id"],
                environment_name=job["environment_name"],
                target_id=target["id"],
                target_name=target["name"],
                strategy=job["strategy"],
                started_at=job["started_at"] or now,
            )
        )
        planned = domain.PlannedTask(target["id"], target["name"], TaskType.ROLLBACK, item.batch, item.components)
        return NewTask(
            id=task_id,
            target=target,
            type=TaskType.ROLLBACK,
            batch=item.batch,
            key=f"{job['id']}:{target['id']}:rollback:{item.batch}",
            components=item.components,
            body=self._body(task_id, planned, target, specs, ref, sticker, repo.job_state(job).spec),
            previous={
                "release_id": str(job["release_id"]),
                "release_name": job["release_name"],
                "components": [
                    s.model_copy(update={"digest": s.previous_digest or s.digest, "previous_digest": None}).model_dump(
                        mode="json"
                    )
                    for s in specs
                ],
            },
        )

    async def _finished(
        self, conn: asyncpg.Connection, job: Mapping[str, Any], now: datetime, effects: Effects
    ) -> None:
        """A job ended: announce it, answer its step, switch a blue-green group, start the environment's next job."""
        tenant_id = job["tenant_id"]
        status = c.JobStatus(job["status"])
        kind = c.JobKind(job["kind"])
        rows = await conn.fetch(repo.TASKS_OF_JOB, tenant_id, job["id"])
        logs = await repo.logs_of(conn, tenant_id, [r["id"] for r in rows])
        if status is c.JobStatus.SUCCEEDED and job["switch_to"] and kind is c.JobKind.DEPLOY:
            await conn.execute(
                repo.SET_ACTIVE_GROUP, tenant_id, job["environment_id"], job["switch_to"], now, job["id"]
            )
        if kind is c.JobKind.ROLLBACK and job["switch_from"] and status is c.JobStatus.SUCCEEDED:
            await conn.execute(
                repo.SET_ACTIVE_GROUP, tenant_id, job["environment_id"], job["switch_from"], now, job["id"]
            )
        events: list[tuple[str, Message]] = []
        if kind in EVENT_KINDS:
            outcomes = [_outcome(r, logs[r["id"]]) for r in rows]
            completed = c.JobCompleted(
                tenant_id=tenant_id,
                correlation_id=job["correlation_id"],
                job_id=job["id"],
                promotion_id=job["promotion_id"],
                release_id=job["release_id"],
                environment_id=job["environment_id"],
                strategy=job["strategy"],
                outcome=domain.outcome_of(status),
                rollback_of=job["rollback_of"],
                reason=job["reason"],
                tasks=outcomes,
                finished_at=now,
                release_name=job["release_name"],
                environment_name=job["environment_name"],
                artifacts=[
                    {k: a.get(k) for k in ("type", "name", "content_hash")} | {"target_id": str(r["target_id"])}
                    for r in rows
                    for a in r["artifacts"]
                ],
                kind=kind,
            )
            if len(completed.model_dump_json()) > MAX_EVENT_BYTES:
                # One message has a size limit: the artifact list goes (each task still names its sticker's and
                # lock file's hashes); a job too large even so is refused at planning (MAX_JOB_TARGETS).
                completed = completed.model_copy(update={"artifacts": []})
            events.append((c.JOB_COMPLETED, completed))
        if job["step_run_id"] is not None:
            step = StepRef(run_id=job["step_run_id"], node_id=job["step_node_id"], attempt=job["step_attempt"])
            ok = status is c.JobStatus.SUCCEEDED
            outputs = {
                c.STEP_OUTPUT_JOB_ID: str(job["id"]),
                "outcome": status.value,
                "target_count": job["target_count"],
                "reason": job["reason"],
            }
            events.append(
                (
                    COMPLETE_STEP,
                    step.completion(
                        tenant_id=tenant_id,
                        correlation_id=job["correlation_id"],
                        causation_id=None,
                        status=StepStatus.SUCCEEDED if ok else StepStatus.FAILED,
                        outputs=outputs,
                        error=None if ok else (job["reason"] or f"the deployment job ended {status.value}"),
                    ),
                )
            )
        await add_events(conn, events)
        if kind in EVENT_KINDS:
            await self._start_pending(conn, tenant_id, job["environment_id"], now, effects)

    # --- jobs: commands ---------------------------------------------------------------------------------

    async def cancel_job(self, cmd: c.CancelJob) -> Reply:
        """Cancel a job that has not ended; its agents are told to stop with their next heartbeat."""

        async def execute(conn: asyncpg.Connection, effects: Effects) -> object:
            await conn.execute(repo.LOCK_OPEN_TASKS_OF_JOB, cmd.tenant_id, cmd.job_id)  # tasks before the job
            job = await conn.fetchrow(repo.GET_JOB_FOR_UPDATE, cmd.tenant_id, cmd.job_id)
            if job is None:
                raise domain.JobNotFound(f"deployment job {cmd.job_id} does not exist")
            if c.JobStatus(job["status"]).is_terminal:
                raise domain.JobNotActive(f"deployment job {cmd.job_id} has ended ({job['status']})")
            now = self.clock()
            rows = await conn.fetch(repo.TASKS_OF_JOB, cmd.tenant_id, cmd.job_id)
            open_ids = [r["id"] for r in rows if not TaskStatus(r["status"]).is_terminal]
            await conn.execute(repo.CANCEL_TASKS, cmd.tenant_id, open_ids, now, "the job was cancelled")
            reason = f"cancelled: {cmd.reason}" if cmd.reason else "cancelled"
            updated = await conn.fetchrow(
                repo.UPDATE_JOB,
                cmd.tenant_id,
                cmd.job_id,
                c.JobStatus.CANCELLED.value,
                reason,
                job["current_batch"],
                None,
                job["started_at"],
                now,
            )
            await self._finished(conn, updated, now, effects)
            return (await repo.job_with_tasks(conn, cmd.tenant_id, updated)).model_dump(mode="json")

        return await self._run(cmd, execute)

    async def resume_job(self, cmd: c.ResumeJob) -> Reply:
        """Resume a paused job: the failed tasks of its current batch run again, then it goes on."""

        async def execute(conn: asyncpg.Connection, effects: Effects) -> object:
            await conn.execute(repo.LOCK_OPEN_TASKS_OF_JOB, cmd.tenant_id, cmd.job_id)  # tasks before the job
            job = await conn.fetchrow(repo.GET_JOB_FOR_UPDATE, cmd.tenant_id, cmd.job_id)
            if job is None:
                raise domain.JobNotFound(f"deployment job {cmd.job_id} does not exist")
            rows = await conn.fetch(repo.TASK_STATES_OF_JOB, cmd.tenant_id, cmd.job_id)
            again = domain.resume(repo.job_state(job), [repo.task_state(r) for r in rows])
            now = self.clock()
            why = f"resumed: {cmd.reason}" if cmd.reason else "resumed"
            await conn.execute(repo.RETRY_TASKS, cmd.tenant_id, list(again), now, f"{why}; run again")
            resumed = await conn.fetchrow(
                repo.UPDATE_JOB,
                cmd.tenant_id,
                cmd.job_id,
                c.JobStatus.RUNNING.value,
                f"{why} ({len(again)} failed tasks run again)",
                job["current_batch"],
                None,
                job["started_at"],
                None,
            )
            effects.tenants.add(cmd.tenant_id)
            updated = await self._drive(conn, cmd.tenant_id, cmd.job_id, now, effects, job=resumed)
            return (await repo.job_with_tasks(conn, cmd.tenant_id, updated)).model_dump(mode="json")

        return await self._run(cmd, execute)

    async def rollback_job(self, cmd: c.RollbackJob) -> Reply:
        """Roll an ended job's targets (all, or some) back to each task's previous digest, as a new job."""

        async def execute(conn: asyncpg.Connection, effects: Effects) -> object:
            source = await conn.fetchrow(repo.GET_JOB, cmd.tenant_id, cmd.job_id)
            if source is None:
                raise domain.JobNotFound(f"deployment job {cmd.job_id} does not exist")
            if not c.JobStatus(source["status"]).is_terminal:
                raise domain.JobNotActive(
                    f"deployment job {cmd.job_id} has not ended ({source['status']}); cancel it first"
                )
            if c.JobKind(source["kind"]) not in EVENT_KINDS:
                raise domain.NothingToRollBack(f"job {cmd.job_id} is a {source['kind']} job: it changed nothing")
            rows = await conn.fetch(repo.TASKS_OF_JOB, cmd.tenant_id, cmd.job_id)
            in_job = {r["target_id"] for r in rows}
            if cmd.target_ids is not None:
                unknown = sorted(str(t) for t in set(cmd.target_ids) - in_job)
                if unknown:
                    raise domain.InvalidTargetSelection(
                        f"targets not deployed by job {cmd.job_id}: {', '.join(unknown)}",
                        errors=[{"loc": ["body", "target_ids"], "msg": f"not part of the job: {t}"} for t in unknown],
                    )
            planned = domain.rollback_tasks([repo.task_state(r) for r in rows], batch=0, targets=cmd.target_ids)
            if not planned:
                raise domain.NothingToRollBack(
                    f"no target of job {cmd.job_id} has a previous digest to roll back to (a first deployment)"
                )
            await conn.execute(repo.LOCK_ENVIRONMENT, cmd.tenant_id, source["environment_id"])
            busy = await conn.fetchval(repo.ACTIVE_JOB_OF_ENVIRONMENT, cmd.tenant_id, source["environment_id"])
            if busy is not None:
                raise domain.EnvironmentBusy(f"job {busy} deploys to the environment now; roll back once it ends")
            now = self.clock()
            spec = repo.job_state(source).spec.model_copy(
                update={"strategy": c.Strategy.ALL_AT_ONCE, "failure_behavior": c.FailureBehavior.CONTINUE}
            )
            job_id = uuid4()
            reason = cmd.reason or f"rollback of job {cmd.job_id}"
            job = await conn.fetchrow(
                repo.INSERT_JOB,
                cmd.tenant_id,
                job_id,
                c.JobKind.ROLLBACK.value,
                source["promotion_id"],
                source["release_id"],
                source["release_name"],
                source["environment_id"],
                source["environment_name"],
                spec.strategy.value,
                spec.model_dump(mode="json"),
                c.JobStatus.PENDING.value,
                cmd.job_id,
                reason,
                len(planned),
                1,
                None,
                source["switch_from"] if source["switch_to"] else None,
                None,
                None,
                None,
                None,
                cmd.correlation_id,
                cmd.actor_id,
                now,
            )
            latest: dict[UUID, asyncpg.Record] = {}
            for row in rows:
                if row["type"] in (TaskType.DEPLOY, TaskType.ROLLBACK) and row["attempt"] > 0:
                    latest[row["target_id"]] = row
            targets = {
                t["id"]: t for t in await conn.fetch(repo.TARGETS_BY_ID, cmd.tenant_id, [p.target_id for p in planned])
            }
            ref = DeploymentRef(
                job_id=job_id,
                promotion_id=source["promotion_id"],
                release_id=source["release_id"],
                release_name=source["release_name"],
                environment_id=source["environment_id"],
                environment_name=source["environment_name"],
                strategy=spec.strategy.value,
                rollback_of=cmd.job_id,
            )
            new_tasks = [
                task
                for item in planned
                if item.target_id in targets
                and (task := self._rollback_task(job, latest[item.target_id], targets[item.target_id], item, ref, now))
            ]
            if not new_tasks:
                raise domain.NothingToRollBack(f"the targets of job {cmd.job_id} no longer exist")
            await insert_tasks(conn, cmd.tenant_id, job_id, spec.task_timeout_s, new_tasks, now)
            await self._begin(conn, job, now, effects)
            final = await conn.fetchrow(repo.GET_JOB, cmd.tenant_id, job_id)
            return (await repo.job_with_tasks(conn, cmd.tenant_id, final)).model_dump(mode="json")

        return await self._run(cmd, execute)

    async def check_drift(self, cmd: c.CheckDrift) -> Reply:
        """Ask the target's agent to inspect it against its sticker now (a one-target ``verify-drift`` job)."""

        async def execute(conn: asyncpg.Connection, effects: Effects) -> object:
            target = await conn.fetchrow(repo.GET_TARGET, cmd.tenant_id, cmd.target_id)
            if target is None:
                raise domain.TargetNotFound(f"target {cmd.target_id} does not exist")
            job = await self._single_target_job(conn, cmd, target, c.JobKind.VERIFY_DRIFT, TaskType.INSPECT, effects)
            tasks = await conn.fetch(repo.TASKS_OF_JOB, cmd.tenant_id, job["id"])
            return repo.task_view(tasks[0]).model_dump(mode="json")

        return await self._run(cmd, execute)

    async def remediate_target(self, cmd: c.RemediateTarget) -> Reply:
        """Redeploy a target's sticker release to it (a one-target ``remediate`` job)."""

        async def execute(conn: asyncpg.Connection, effects: Effects) -> object:
            target = await conn.fetchrow(repo.GET_TARGET, cmd.tenant_id, cmd.target_id)
            if target is None:
                raise domain.TargetNotFound(f"target {cmd.target_id} does not exist")
            if not target["sticker"] or not target["current_components"]:
                raise domain.NoSticker(f"target {target['name']} has no sticker: nothing was deployed to it yet")
            await conn.execute(repo.LOCK_ENVIRONMENT, cmd.tenant_id, target["environment_id"])
            busy = await conn.fetchval(repo.ACTIVE_JOB_OF_ENVIRONMENT, cmd.tenant_id, target["environment_id"])
            if busy is not None:
                raise domain.EnvironmentBusy(f"job {busy} deploys to the environment now; remediate once it ends")
            job = await self._single_target_job(conn, cmd, target, c.JobKind.REMEDIATE, TaskType.DEPLOY, effects)
            return (await repo.job_with_tasks(conn, cmd.tenant_id, job)).model_dump(mode="json")

        return await self._run(cmd, execute)

    async def _single_target_job(
        self,
        conn: asyncpg.Connection,
        cmd: Command,
        target: Mapping[str, Any],
        kind: c.JobKind,
        task_type: TaskType,
        effects: Effects,
    ) -> asyncpg.Record:
        """A job of one task on one target, from what the target last ran (its sticker's release)."""
        now = self.clock()
        sticker = target["sticker"] or {}
        release = sticker.get("release") or {}
        deployment = sticker.get("deployment") or {}
        specs = [ComponentSpec.model_validate(s) for s in target["current_components"]]
        job_id = uuid4()
        spec = c.StrategySpec(failure_behavior=c.FailureBehavior.CONTINUE)
        release_id = UUID(release["id"]) if release.get("id") else (target["current_release_id"] or UUID(int=0))
        release_name = release.get("name") or target["current_release_name"] or "unknown"
        environment_name = deployment.get("environment_name") or ""
        job = await conn.fetchrow(
            repo.INSERT_JOB,
            cmd.tenant_id,
            job_id,
            kind.value,
            None,
            release_id,
            release_name,
            target["environment_id"],
            environment_name,
            spec.strategy.value,
            spec.model_dump(mode="json"),
            c.JobStatus.PENDING.value,
            None,
            "",
            1,
            1,
            None,
            None,
            None,
            None,
            None,
            None,
            cmd.correlation_id,
            cmd.actor_id,
            now,
        )
        ref = DeploymentRef(
            job_id=job_id,
            release_id=release_id,
            release_name=release_name,
            environment_id=target["environment_id"],
            environment_name=environment_name,
            strategy=spec.strategy.value,
        )
        sticker_out = None
        deployed = tuple(
            c.DeployedComponent(name=s.name, digest=s.digest, previous_digest=target["current"].get(s.name))
            for s in specs
        )
        if task_type is TaskType.DEPLOY:
            specs = [s.model_copy(update={"previous_digest": target["current"].get(s.name)}) for s in specs]
            sticker_out = domain.build_sticker(
                domain.StickerInput(
                    release_id=release_id,
                    release_name=release_name,
                    components=release.get("components") or [{"name": s.name, "digest": s.digest} for s in specs],
                    job_id=job_id,
                    promotion_id=None,
                    environment_id=target["environment_id"],
                    environment_name=environment_name,
                    target_id=target["id"],
                    target_name=target["name"],
                    strategy=spec.strategy.value,
                    started_at=now,
                )
            )
        task_id = uuid4()
        item = domain.PlannedTask(target["id"], target["name"], task_type, 0, deployed)
        await insert_tasks(
            conn,
            cmd.tenant_id,
            job_id,
            spec.task_timeout_s,
            [
                NewTask(
                    id=task_id,
                    target=target,
                    type=task_type,
                    batch=0,
                    key=f"{job_id}:{target['id']}:{task_type.value}:0",
                    components=deployed,
                    body=self._body(
                        task_id, item, target, specs, ref if task_type is TaskType.DEPLOY else None, sticker_out, spec
                    ),
                    previous=_previous(target),
                )
            ],
            now,
        )
        await self._begin(conn, job, now, effects)
        final: asyncpg.Record = await conn.fetchrow(repo.GET_JOB, cmd.tenant_id, job_id)
        return final

    # --- jobs: queries ----------------------------------------------------------------------------------

    async def get_job(self, q: c.GetJob) -> Reply:
        """One job with its tasks, their logs and artifacts."""
        async with self._pool().acquire() as conn:
            row = await conn.fetchrow(repo.GET_JOB, q.tenant_id, q.job_id)
            if row is None:
                raise domain.JobNotFound(f"deployment job {q.job_id} does not exist")
            view = await repo.job_with_tasks(conn, q.tenant_id, row, q.tasks_page)
        return Reply.success(view.model_dump(mode="json"))

    async def get_promotion_deployment(self, q: c.GetPromotionDeployment) -> Reply:
        """The latest deploy job of a promotion."""
        async with self._pool().acquire() as conn:
            row = await conn.fetchrow(repo.LATEST_JOB_OF_PROMOTION, q.tenant_id, q.promotion_id)
            if row is None:
                raise domain.JobNotFound(f"promotion {q.promotion_id} has no deployment job")
            view = await repo.job_with_tasks(conn, q.tenant_id, row, q.tasks_page)
        return Reply.success(view.model_dump(mode="json"))

    async def list_jobs(self, q: c.ListJobs) -> Reply:
        """Jobs, newest first."""
        async with self._pool().acquire() as conn:
            items, token = await keyset_page(
                partial(
                    conn.fetch,
                    repo.LIST_JOBS,
                    q.tenant_id,
                    q.environment_id,
                    q.promotion_id,
                    q.status.value if q.status else None,
                ),
                q.page.page_token,
                aware_datetime,
                UUID,
                kind="deployment-jobs",
                size=q.page.page_size,
                key=lambda r: (r["created_at"].isoformat(), r["id"]),
            )
        return _page([repo.job_summary(r) for r in items], token)

    # --- timers -----------------------------------------------------------------------------------------

    async def _schedule_inspections(self, now: datetime, effects: Effects) -> int:
        """Queue an inspection of every deployed target not inspected for ``drift_check_interval_s``.

        The inspection is a task of no job: its result records drift on the target (and announces it).
        """
        cutoff = now - timedelta(seconds=self.settings.drift_check_interval_s)
        async with self._pool().acquire() as conn, conn.transaction():
            due = await conn.fetch(repo.LOCK_DUE_DRIFT_CHECKS, cutoff, self.settings.timer_batch_size)
            spec = c.StrategySpec()
            for target in due:
                task_id = uuid4()
                specs = [ComponentSpec.model_validate(s) for s in target["current_components"]]
                item = domain.PlannedTask(target["id"], target["name"], TaskType.INSPECT, 0, ())
                key = f"inspect:{target['id']}:{now.isoformat()}"
                new = NewTask(
                    task_id,
                    target,
                    TaskType.INSPECT,
                    0,
                    key,
                    (),
                    self._body(task_id, item, target, specs, None, None, spec),
                    None,
                )
                await insert_tasks(conn, target["tenant_id"], None, spec.task_timeout_s, [new], now)
                await conn.execute(repo.RELEASE_TASKS, target["tenant_id"], [task_id], now)
                await conn.execute(repo.MARK_INSPECTED, target["tenant_id"], target["id"], now)
                effects.tenants.add(target["tenant_id"])
        return len(due)

    async def next_due(self) -> datetime | None:
        """The earliest of: an agent's heartbeat running out, a lease expiring, a task deadline, a paused batch."""
        async with self._pool().acquire() as conn:
            silent = await conn.fetchval(repo.NEXT_SILENT_AGENT)
            due = [
                silent + domain.offline_after(self.settings.heartbeat_interval_s) if silent else None,
                await conn.fetchval(repo.NEXT_LEASE_EXPIRY),
                await conn.fetchval(repo.NEXT_DEADLINE),
                await conn.fetchval(repo.NEXT_BATCH_DUE),
            ]
        if self.settings.drift_check_interval_s > 0:
            async with self._pool().acquire() as conn:
                inspected = await conn.fetchval(repo.NEXT_DRIFT_CHECK)
            if inspected is not None:
                due.append(inspected + timedelta(seconds=self.settings.drift_check_interval_s))
        due.append(self._next_sweep)
        present = [d for d in due if d is not None]
        return min(present) if present else None

    async def run_due(self, now: datetime) -> int:
        """Handle everything due: silent agents go offline, expired leases and deadlines, paused batches."""
        handled = 0
        effects = Effects()
        batch = self.settings.timer_batch_size
        cutoff = now - domain.offline_after(self.settings.heartbeat_interval_s)
        async with self._pool().acquire() as conn, conn.transaction():
            offline: list[tuple[str, Message]] = []
            for agent in await conn.fetch(repo.LOCK_SILENT_AGENTS, cutoff, batch):
                updated = await conn.fetchrow(
                    repo.SET_AGENT_STATUS, agent["tenant_id"], agent["id"], AgentStatus.OFFLINE.value, None
                )
                offline.append((c.AGENT_STATUS_CHANGED, self._agent_event(None, updated, AgentStatus(agent["status"]))))
                if await conn.fetch(
                    repo.REQUEUE_AGENT_TASKS, agent["tenant_id"], agent["id"], "its agent went offline"
                ):
                    effects.tenants.add(agent["tenant_id"])
                handled += 1
            for lease in await conn.fetch(repo.LOCK_EXPIRED_LEASES, now, batch):
                await conn.execute(
                    repo.REQUEUE_TASKS, lease["tenant_id"], [lease["id"]], "its lease expired without a result"
                )
                effects.tenants.add(lease["tenant_id"])
                handled += 1
            # Task rows before the tenants' outbox locks, the order of the agent calls that take both.
            await add_events(conn, offline)
        async with self._pool().acquire() as conn:
            overdue = await conn.fetch(repo.LOCK_PAST_DEADLINE, now, batch)
            jobs = await conn.fetch(repo.DUE_BATCH_JOBS, now, batch)
        for task in overdue:
            async with self._pool().acquire() as conn, conn.transaction():
                timed_out = await conn.fetchval(
                    repo.TIME_OUT_TASK, task["tenant_id"], task["id"], "no result before the task's timeout", now
                )
                if timed_out and task["job_id"] is not None:
                    await self._drive(conn, task["tenant_id"], task["job_id"], now, effects)
            handled += 1
        for job in jobs:
            async with self._pool().acquire() as conn, conn.transaction():
                await self._drive(conn, job["tenant_id"], job["id"], now, effects)
            handled += 1
        if self.settings.drift_check_interval_s > 0:
            handled += await self._schedule_inspections(now, effects)
        if self._next_sweep <= now:
            self._next_sweep = now + timedelta(seconds=self.settings.job_sweep_s)
            async with self._pool().acquire() as conn:
                unfinished = await conn.fetch(repo.MOVING_JOBS, batch)
            for job in unfinished:
                await self._move_job(job, effects)
        await self._after(effects)
        return handled


@dataclass(frozen=True)
class NewTask:
    """A task ready to be stored."""

    id: UUID
    target: Mapping[str, Any]
    type: TaskType
    batch: int
    key: str
    components: Sequence[c.DeployedComponent]
    body: dict[str, Any]
    previous: dict[str, Any] | None


async def _step_failed(conn: asyncpg.Connection, cmd: ExecuteStep, exc: Exception) -> object:
    """Complete a step as failed with ``exc``'s code and detail (in the caller's transaction); the reply data."""
    detail = getattr(exc, "detail", None) or str(exc)
    code = getattr(exc, "code", "DEPLOY_INVALID_STEP")
    complete = cmd.complete(StepStatus.FAILED, outputs={"result": "error", "code": code}, error=detail)
    await add_events(conn, [(COMPLETE_STEP, complete)])
    return {"step": cmd.step.model_dump(mode="json"), "status": "failed", "error": detail}


def _previous(target: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a target ran before a task: the rollback's destination."""
    if not target["current_components"]:
        return None
    return {
        "release_id": str(target["current_release_id"]) if target["current_release_id"] else None,
        "release_name": target["current_release_name"],
        "components": target["current_components"],
    }


async def insert_tasks(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    job_id: UUID | None,
    timeout_s: float,
    tasks: Sequence[NewTask],
    now: datetime,
) -> None:
    """Store tasks in one statement."""
    if not tasks:
        return
    await conn.execute(
        repo.INSERT_TASKS,
        tenant_id,
        job_id,
        timeout_s,
        now,
        [t.id for t in tasks],
        [t.target["id"] for t in tasks],
        [t.target["name"] for t in tasks],
        [t.type.value for t in tasks],
        [t.batch for t in tasks],
        [t.key for t in tasks],
        [domain.CAPABILITY_OF[TargetType(t.target["target_type"])] for t in tasks],
        [t.target["agent_id"] for t in tasks],
        [json.dumps({**t.body, "idempotency_key": t.key}) for t in tasks],
        [json.dumps([comp.model_dump(mode="json") for comp in t.components]) for t in tasks],
        [json.dumps(t.previous) if t.previous is not None else None for t in tasks],
    )


def _progress(
    task: Mapping[str, Any],
    *,
    status: TaskStatus | str | None = None,
    log_lines: int | None = None,
    log_seq: int | None = None,
    error_code: str | None = None,
) -> tuple[UUID | None, c.TaskProgress]:
    """A task's change for :func:`announce_progress`: its row, with what the call changed (its row's otherwise)."""
    return task["job_id"], c.TaskProgress(
        task_id=task["id"],
        target_id=task["target_id"],
        target_name=task["target_name"],
        type=TaskType(task["type"]),
        batch=task["batch"],
        status=TaskStatus(status if status is not None else task["status"]),
        attempt=task["attempt"],
        log_lines=log_lines if log_lines is not None else task["log_lines"],
        log_seq=log_seq,
        error_code=error_code if error_code is not None else task["error_code"],
    )


async def announce_progress(
    conn: asyncpg.Connection,
    call: c.AgentCall,
    changes: Sequence[tuple[UUID | None, c.TaskProgress]],
    now: datetime,
    *,
    jobs: Mapping[UUID, Mapping[str, Any]] | None = None,
) -> None:
    """Record ``tasks_progressed`` for what one agent call changed: one event per job, in the call's transaction.

    ``jobs``: job rows the caller has read already; the others are read with one statement. Tasks of jobs that
    announce nothing (checks, inspections without a job) are left out.

    Written without the tenant's outbox lock (``ordered=False``): the events of one task follow each other
    because every writer of a task locks its row first, and their place among the tenant's other events does
    not matter, so a tenant's agents posting at once do not wait for each other's commits. (Writers that do take
    the tenant's lock, such as an inspection's drift event, take it after their task rows, as the heartbeat and
    the timers do.)
    """
    by_job: dict[UUID, list[c.TaskProgress]] = {}
    for job_id, change in changes:
        if job_id is not None:
            by_job.setdefault(job_id, []).append(change)
    if not by_job:
        return
    known = dict(jobs or {})
    missing = sorted(job_id for job_id in by_job if job_id not in known)
    if missing:
        known.update({row["id"]: row for row in await conn.fetch(repo.JOBS_BY_ID, call.tenant_id, missing)})
    events: list[tuple[str, Message]] = []
    for job_id, tasks in sorted(by_job.items()):
        job = known.get(job_id)
        if job is None or c.JobKind(job["kind"]) not in EVENT_KINDS:
            continue
        events.append(
            (
                c.TASKS_PROGRESSED,
                c.TasksProgressed(
                    tenant_id=call.tenant_id,
                    correlation_id=job["correlation_id"],
                    causation_id=call.message_id,
                    job_id=job_id,
                    promotion_id=job["promotion_id"],
                    release_id=job["release_id"],
                    environment_id=job["environment_id"],
                    strategy=job["strategy"],
                    kind=c.JobKind(job["kind"]),
                    job_status=c.JobStatus(job["status"]),
                    current_batch=job["current_batch"],
                    batch_count=job["batch_count"],
                    target_count=job["target_count"],
                    agent_id=call.agent_id,
                    tasks=tasks,
                    at=now,
                ),
            )
        )
    await add_events(conn, events, ordered=False)


def _artifact_hash(row: Mapping[str, Any], kind: str) -> str | None:
    for artifact in row["artifacts"]:
        if artifact.get("type") == kind:
            value: str | None = artifact.get("content_hash")
            return value
    return None


def _outcome(row: Mapping[str, Any], logs: Sequence[str]) -> c.TaskOutcome:
    return c.TaskOutcome(
        task_id=row["id"],
        target_id=row["target_id"],
        target_name=row["target_name"],
        type=TaskType(row["type"]),
        status=TaskStatus(row["status"]),
        components=list(repo.components_of(row)),
        error_code=row["error_code"],
        lock_file_hash=_artifact_hash(row, "compose-lock"),
        logs_hash=repo.logs_hash(logs) if logs else None,
        sticker_hash=_artifact_hash(row, "sticker"),
    )


def _success_reason(job: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return job["reason"] or "the environment has no targets: nothing to deploy"
    targets = len({r["target_id"] for r in rows})
    kind = c.JobKind(job["kind"])
    if kind is c.JobKind.HEALTH_CHECK:
        return f"{targets} targets are healthy"
    if kind is c.JobKind.VERIFY_DRIFT:
        return f"no drift on {targets} targets"
    if kind is c.JobKind.ROLLBACK:
        return f"rolled {targets} targets back to their previous digests"
    if job["switch_to"]:
        return f"deployed to {targets} targets of group {job['switch_to']}, which is now active"
    return f"deployed to {targets} targets"


def _by_name(row: Mapping[str, Any]) -> tuple[str, UUID]:
    """The sort key of a list ordered by name."""
    return row["name"], row["id"]


def _page(items: Sequence[BaseModel], token: str | None) -> Reply:
    return Reply.success(
        Page(items=[i.model_dump(mode="json") for i in items], next_page_token=token).model_dump(mode="json")
    )
