"""A deployment service running in-process on real Postgres and NATS, with agents played over its agent channel.

The promotion and release services are played by :class:`StandIns`, responders on the real NATS server
answering ``get_environment`` and ``get_release`` as the test set them up. Agents are played by
:class:`SimAgent`: the same request/reply calls the gateway makes for a real agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg

from stella.contracts import deployment as c
from stella.contracts.agent import (
    AgentTask,
    ComponentState,
    DriftReport,
    Heartbeat,
    RegisterAgent,
    TaskResult,
)
from stella.contracts.envelope import ErrorDetail, Reply
from stella.contracts.promotion import GET_ENVIRONMENT
from stella.contracts.release import GET_RELEASE
from stella.contracts.workflow import COMPLETE_STEP, ExecuteStep
from stella.deployment.app import MIGRATIONS, DeploymentApp, create_app
from stella.deployment.settings import Settings
from stella.kit.naming import Names
from stella.testing.services import TenantCaller, service_client


@dataclass
class Clock:
    """Real time plus an offset the test moves forward."""

    offset: timedelta = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def digest(seed: str) -> str:
    """A well-formed sha256 digest derived from ``seed``."""
    import hashlib

    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


@dataclass
class StandIns:
    """The promotion and release services' reads, answered from what the test stored."""

    environments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    releases: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    silent: bool = False
    """Whether the services are down (nothing answers)."""

    async def answer(self, msg: Msg, table: dict[tuple[str, str], dict[str, Any]], key: str) -> None:
        if self.silent:
            return
        payload = json.loads(msg.data)
        found = table.get((payload["tenant_id"], payload[key]))
        if found is None:
            reply = Reply.failure(
                ErrorDetail(code="RES_NOT_FOUND", status=404, title="Not found", detail="no such thing")
            )
        else:
            reply = Reply.success(found)
        await msg.respond(reply.model_dump_json().encode())


@dataclass
class Recorder:
    """Messages seen on subjects, with a way to wait for one."""

    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, match: Callable[[str, dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for subject, payload in self.records:
                    if match(subject, payload):
                        return payload
                self.changed.clear()
                await self.changed.wait()

    def of(self, subject: str) -> list[dict[str, Any]]:
        return [p for s, p in self.records if s == subject]


class Caller(TenantCaller):
    """The deployment service's caller as one tenant."""

    async def ok(self, subject: str, model: type[Any], **fields: Any) -> Any:
        reply = await (self.command if subject.startswith("stella.cmd.") else self.query)(subject, model, **fields)
        assert reply.ok, reply.error
        return reply.data


@dataclass
class SimAgent:
    """An agent talking the agent channel (as the gateway relays it) and answering tasks as the test says."""

    caller: Caller
    agent_id: uuid.UUID
    credential: str

    async def call(self, subject: str, model: type[c.AgentCall], **fields: Any) -> Reply:
        return await self.caller.query(subject, model, agent_id=self.agent_id, credential=self.credential, **fields)

    async def heartbeat(self, *, running: list[uuid.UUID] | None = None, ok: bool = True) -> dict[str, Any]:
        checks = [{"name": "docker", "ok": ok, "message": "" if ok else "the engine does not answer"}]
        reply = await self.call(
            c.AGENT_HEARTBEAT,
            c.AgentHeartbeat,
            heartbeat=Heartbeat(version="1.0.0", checks=checks, running_tasks=running or []),
        )
        assert reply.ok, reply.error
        return reply.data

    async def poll(self, max_tasks: int = 10, held: list[uuid.UUID] | None = None) -> list[AgentTask]:
        reply = await self.call(c.AGENT_POLL, c.AgentPoll, max_tasks=max_tasks, held=held)
        assert reply.ok, reply.error
        return [AgentTask.model_validate(t) for t in reply.data["tasks"]]

    async def poll_until(self, count: int, timeout: float = 10.0) -> list[AgentTask]:
        got: list[AgentTask] = []
        async with asyncio.timeout(timeout):
            while len(got) < count:
                got.extend(await self.poll())
                if len(got) < count:
                    await asyncio.sleep(0.05)
        return got

    def result(self, task: AgentTask, *, ok: bool = True, error_code: str | None = None, **fields: Any) -> TaskResult:
        now = datetime.now(UTC)
        components = [
            ComponentState(name=comp.name, expected_digest=comp.digest, running_digest=comp.digest, state="running")
            for comp in task.components
        ]
        return TaskResult(
            task_id=task.task_id,
            idempotency_key=task.idempotency_key,
            attempt=task.attempt,
            status="succeeded" if ok else "failed",
            error_code=error_code if not ok else None,
            message="done" if ok else "it failed",
            components=fields.pop("components", components),
            sticker=task.sticker,
            started_at=now,
            finished_at=now,
            **fields,
        )

    async def report(
        self, task: AgentTask, *, ok: bool = True, error_code: str | None = "AGT_HEALTH_CHECK_FAILED", **fields: Any
    ) -> dict[str, Any]:
        reply = await self.call(
            c.AGENT_RESULT, c.AgentResult, result=self.result(task, ok=ok, error_code=error_code, **fields)
        )
        assert reply.ok, reply.error
        return reply.data

    async def report_drift(self, task: AgentTask, differences: list[dict[str, Any]]) -> dict[str, Any]:
        drift = DriftReport(drifted=bool(differences), sticker_found=True, differences=differences)
        return await self.report(task, drift=drift)


@dataclass
class Harness:
    """The running service, its clock, its stand-ins and what it published."""

    app: DeploymentApp
    clock: Clock
    nats: Client
    standins: StandIns
    seen: Recorder
    caller: Caller
    make_app: Callable[[], DeploymentApp]
    process: Process | None = None

    @property
    def names(self) -> Names:
        return self.app.runtime.names

    def advance(self, **delta: float) -> None:
        """Move the clock and let the timers look at it."""
        self.clock.offset += timedelta(**delta)
        assert self.app.timers is not None
        self.app.timers.wake()

    async def restart(self) -> None:
        """Stop the service and start a new one on the same database (a crashed and restarted process)."""
        await self.app.stop()
        self.app = self.make_app()
        await self.app.start()

    def environment(
        self, caller: Caller | None = None, *, deployment: dict[str, Any] | None = None, **config: Any
    ) -> uuid.UUID:
        caller = caller or self.caller
        environment_id = uuid.uuid4()
        now = datetime.now(UTC).isoformat()
        self.standins.environments[(str(caller.tenant_id), str(environment_id))] = {
            "id": str(environment_id),
            "name": f"env-{environment_id.hex[:6]}",
            "display_name": "Env",
            "order_index": 0,
            "required_approvals": 0,
            "require_sod": False,
            "config": {**config, **({"deployment": deployment} if deployment is not None else {})},
            "promotion_policy": {},
            "created_at": now,
            "updated_at": now,
        }
        return environment_id

    def release(
        self, caller: Caller | None = None, *, version: str = "1", components: tuple[str, ...] = ("api",)
    ) -> uuid.UUID:
        caller = caller or self.caller
        release_id = uuid.uuid4()
        now = datetime.now(UTC).isoformat()
        self.standins.releases[(str(caller.tenant_id), str(release_id))] = {
            "id": str(release_id),
            "name": f"rel-{version}-{release_id.hex[:6]}",
            "display_name": "Release",
            "status": "ready",
            "components": [
                {
                    "component_id": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                    "name": name,
                    "image_repository": f"registry.test/{name}",
                    "digest": digest(f"{name}:{version}"),
                    "tag": f"v{version}",
                    "semver": f"{version}.0.0",
                }
                for name in components
            ],
            "source_ref": {},
            "created_by": None,
            "created_at": now,
            "updated_at": now,
            "ready_at": now,
            "deprecated_at": None,
            "deprecation_reason": None,
        }
        return release_id

    async def target(
        self, environment_id: uuid.UUID, name: str, caller: Caller | None = None, **fields: Any
    ) -> dict[str, Any]:
        fields.setdefault("target_type", "docker_host")
        result: dict[str, Any] = await (caller or self.caller).ok(
            c.CREATE_TARGET, c.CreateTarget, environment_id=environment_id, name=name, **fields
        )
        return result

    async def agent(
        self, name: str = "agent-1", caller: Caller | None = None, capabilities: tuple[str, ...] = ("docker", "compose")
    ) -> SimAgent:
        caller = caller or self.caller
        token = await caller.ok(c.CREATE_AGENT_TOKEN, c.CreateAgentToken)
        registered = await caller.ok(
            c.AGENT_REGISTER,
            c.AgentRegister,
            registration=RegisterAgent(
                registration_token=token["token"], name=name, version="1.0.0", capabilities=list(capabilities)
            ),
        )
        return SimAgent(caller, uuid.UUID(registered["agent_id"]), registered["credential"])

    def step(
        self,
        environment_id: uuid.UUID,
        release_id: uuid.UUID,
        *,
        step_type: str = "deploy",
        config: dict[str, Any] | None = None,
        caller: Caller | None = None,
    ) -> ExecuteStep:
        caller = caller or self.caller
        promotion_id = uuid.uuid4()
        return ExecuteStep(
            tenant_id=caller.tenant_id,
            correlation_id=uuid.uuid4(),
            run_id=uuid.uuid4(),
            node_id=step_type,
            attempt=1,
            step_type=step_type,
            config=config or {},
            inputs={
                "inputs": {
                    "promotion_id": str(promotion_id),
                    "release_id": str(release_id),
                    "environment_id": str(environment_id),
                },
                "steps": {},
            },
            subject_id=promotion_id,
        )

    async def execute(self, step: ExecuteStep) -> dict[str, Any]:
        reply = await self.caller.client.command(c.EXECUTE_STEP, step)
        assert reply.ok, reply.error
        result: dict[str, Any] = reply.data
        return result

    async def completion(self, step: ExecuteStep) -> dict[str, Any]:
        """The ``CompleteStep`` the service answered ``step`` with."""
        return await self.seen.wait_for(
            lambda s, p: s == COMPLETE_STEP and p["run_id"] == str(step.run_id) and p["node_id"] == step.node_id
        )

    async def run_through(self, step: ExecuteStep, agent: SimAgent, timeout: float = 15.0) -> dict[str, Any]:
        """Execute ``step`` and have ``agent`` succeed at every task until the step is answered."""
        await self.execute(step)

        def answered() -> list[dict[str, Any]]:
            return [p for s, p in self.seen.records if s == COMPLETE_STEP and p["run_id"] == str(step.run_id)]

        async with asyncio.timeout(timeout):
            while not answered():
                for task in await agent.poll():
                    await agent.report(task)
                await asyncio.sleep(0.05)
        return answered()[0]

    async def job_completed(self, job_id: uuid.UUID | str) -> dict[str, Any]:
        return await self.seen.wait_for(lambda s, p: s == c.JOB_COMPLETED and p["job_id"] == str(job_id))

    async def job(self, job_id: uuid.UUID | str, caller: Caller | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await (caller or self.caller).ok(c.GET_JOB, c.GetJob, job_id=job_id)
        return result

    async def get_target(self, target_id: uuid.UUID | str) -> dict[str, Any]:
        result: dict[str, Any] = await self.caller.ok(c.GET_TARGET, c.GetTarget, target_id=target_id)
        return result

    async def counts(self) -> dict[str, int]:
        async with self.app.runtime.pool.acquire() as conn:
            return {
                t: await conn.fetchval(f"SELECT count(*) FROM {t}")
                for t in ("targets", "agents", "agent_tokens", "jobs", "tasks", "stickers", "drift_records")
            }


class Process:
    """``python -m stella.deployment`` on the test's database and NATS namespace (for tests that kill it)."""

    def __init__(self, settings: Settings) -> None:
        own = {"outbox_poll_s", "db_pool_size", "timer_max_sleep_s", "heartbeat_interval_s", "lease_s"}
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STELLA_")},
            "STELLA_DATABASE_URL": settings.database_url,
            "STELLA_NATS_URL": settings.nats_url,
            "STELLA_NATS_NAMESPACE": settings.nats_namespace,
            **{f"STELLA_DEPLOYMENT_{name.upper()}": str(getattr(settings, name)) for name in own},
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, caller: Caller) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "stella.deployment",
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(60):  # ready once it answers a query
            while not (await caller.query(c.LIST_AGENTS, c.ListAgents)).ok:
                await asyncio.sleep(0.2)

    async def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await self.process.wait()


@pytest.fixture
def as_process() -> bool:
    """Whether the service runs as its own process (a module overrides this to kill it) rather than in-process."""
    return False


@pytest_asyncio.fixture
async def harness(
    make_database: Any, nats_url: str, stella_namespace: str, nats: Client, as_process: bool
) -> AsyncIterator[Harness]:
    """The service with its stand-ins and recorder: in-process (``harness.app``), or as a process
    (``harness.process``; the harness then has no app and its clock does not reach the service)."""
    dsn = await make_database([("deployment", MIGRATIONS)])
    clock = Clock()
    settings = Settings(
        database_url=dsn,
        nats_url=nats_url,
        nats_namespace=stella_namespace,
        outbox_poll_s=0.2,
        heartbeat_interval_s=30,
        lease_s=90,
        timer_max_sleep_s=0.5,
        dependency_timeout_s=1,
        db_pool_size=5,
    )

    def make_app() -> DeploymentApp:
        return create_app(settings, overrides={"clock": clock})

    names = Names(stella_namespace)
    standins = StandIns()
    seen = Recorder()

    async def record(msg: Msg) -> None:
        seen.records.append((names.local(msg.subject), json.loads(msg.data)))
        seen.changed.set()

    async def environments(msg: Msg) -> None:
        await standins.answer(msg, standins.environments, "environment_id")

    async def releases(msg: Msg) -> None:
        await standins.answer(msg, standins.releases, "release_id")

    subscriptions = [
        await nats.subscribe(names.subject(GET_ENVIRONMENT), cb=environments),
        await nats.subscribe(names.subject(GET_RELEASE), cb=releases),
        await nats.subscribe(names.subject("stella.evt.deployment.>"), cb=record),
        await nats.subscribe(names.subject(COMPLETE_STEP), cb=record),
    ]
    try:
        async with service_client(nats, names) as client:
            caller = Caller(client)
            if as_process:
                process = Process(settings)
                harness = Harness(None, clock, nats, standins, seen, caller, make_app, process)  # type: ignore[arg-type]
                await process.start(caller)
                try:
                    yield harness
                finally:
                    await process.stop()
            else:
                harness = Harness(make_app(), clock, nats, standins, seen, caller, make_app)
                await harness.app.start()
                try:
                    yield harness
                finally:
                    await harness.app.stop()
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()
