"""The promotion service running in-process with the real release service (same database, same namespace),
and, for the whole protocol, the real workflow and approval services; on real Postgres and NATS.

Tests that do not start the workflow play it: they send the gate step's ``ExecuteStep`` themselves and
watch the ``CompleteStep`` the promotion service writes, exactly as the workflow would receive it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg

from stella.approval.app import MIGRATIONS as APPROVAL_MIGRATIONS
from stella.approval.app import create_app as create_approval
from stella.approval.settings import Settings as ApprovalSettings
from stella.contracts import deployment as d
from stella.contracts import release as r
from stella.contracts.workflow import ExecuteStep
from stella.kit.naming import Names
from stella.promotion.app import MIGRATIONS, PromotionApp, create_app
from stella.promotion.settings import Settings
from stella.release.app import MIGRATIONS as RELEASE_MIGRATIONS
from stella.release.app import ReleaseApp
from stella.release.app import create_app as create_release
from stella.release.settings import Settings as ReleaseSettings
from stella.testing.messaging import MessageCollector
from stella.testing.plugins import INTEGRATION_SCHEMA, plugin_service
from stella.testing.services import TenantCaller, service_client
from stella.workflow.app import MIGRATIONS as WORKFLOW_MIGRATIONS
from stella.workflow.app import create_app as create_workflow
from stella.workflow.settings import Settings as WorkflowSettings

SCHEMAS = [
    ("release", RELEASE_MIGRATIONS),
    ("promotion", MIGRATIONS),
    ("workflow", WORKFLOW_MIGRATIONS),
    ("approval", APPROVAL_MIGRATIONS),
    INTEGRATION_SCHEMA,
]


def digest(ch: str) -> str:
    """A well-formed sha256 digest made of one repeated hex character."""
    return "sha256:" + ch * 64


def payload(msg: Msg) -> dict[str, Any]:
    """The JSON body of a received message."""
    return json.loads(msg.data)


async def first_match(
    collector: MessageCollector, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 15.0
) -> dict[str, Any]:
    """Wait for the first collected message whose payload satisfies ``predicate``; return that payload."""
    async with asyncio.timeout(timeout):
        while True:
            for msg in collector.messages:
                body = payload(msg)
                if predicate(body):
                    return body
            await collector.wait(len(collector.messages) + 1, timeout=timeout)


@dataclass
class Caller(TenantCaller):
    """Sends commands and queries as one principal of one tenant, as the gateway would."""

    actor_id: uuid.UUID = field(default_factory=uuid.uuid4, kw_only=True)

    def gate_step(self, promotion: dict[str, Any], *, attempt: int = 1) -> ExecuteStep:
        """The ``ExecuteStep`` the workflow sends for standard-promotion's gates node of the promotion's run."""
        inputs = {
            "promotion_id": promotion["id"],
            "release_id": promotion["release_id"],
            "environment_id": promotion["target_environment_id"],
            "requested_by": str(promotion["requested_by"]),
        }
        return ExecuteStep(
            tenant_id=self.tenant_id,
            correlation_id=uuid.uuid4(),
            run_id=uuid.UUID(promotion["workflow_run_id"]),
            node_id="gates",
            attempt=attempt,
            step_type="gate",
            config={},
            inputs={"inputs": inputs, "steps": {}},
            subject_id=uuid.UUID(promotion["id"]),
        )

    async def ready_release(self, name: str, *digests: str) -> dict[str, Any]:
        """Create a component per digest (resolved from the version map), a release pinning them, mark it ready."""
        components = []
        for index, value in enumerate(digests or (digest("a"),)):
            component = f"{name}-c{index}"
            created = await self.command(
                r.CREATE_COMPONENT,
                r.CreateComponent,
                name=component,
                image_repository=f"registry.invalid/{component}",
                versioning_strategy={"resolve": "version-map"},
            )
            assert created.ok, created.error
            components.append({"component": component, "digest": value})
        release = await self.command(r.CREATE_RELEASE, r.CreateRelease, name=name, components=components)
        assert release.ok, release.error
        ready = await self.command(r.MARK_RELEASE_READY, r.MarkReleaseReady, release_id=release.data["id"])
        assert ready.ok, ready.error
        return ready.data


async def publish_event(stack: Stack, subject: str, event: Any) -> None:
    """Publish ``event`` on the events stream as its producer's outbox relay would (``Nats-Msg-Id`` set)."""
    await stack.nats.jetstream().publish(
        stack.wire(subject), event.model_dump_json().encode(), headers={"Nats-Msg-Id": str(event.message_id)}
    )


def _job(caller: Caller, promotion: dict[str, Any], job_id: uuid.UUID, fields: dict[str, Any]) -> dict[str, Any]:
    """The fields every job event of the promotion carries (``fields`` may override them)."""
    return {
        "tenant_id": caller.tenant_id,
        "correlation_id": uuid.uuid4(),
        "job_id": job_id,
        "promotion_id": uuid.UUID(promotion["id"]),
        "release_id": uuid.UUID(promotion["release_id"]),
        "environment_id": uuid.UUID(promotion["target_environment_id"]),
        "strategy": "all-at-once",
        **fields,
    }


def job_started(caller: Caller, promotion: dict[str, Any], job_id: uuid.UUID, **fields: Any) -> d.JobStarted:
    """The ``deployment.job_started`` the deployment service publishes for the promotion's job."""
    return d.JobStarted(
        **_job(caller, promotion, job_id, {"target_count": 0, "started_at": datetime.now(UTC), **fields})
    )


def job_completed(
    caller: Caller, promotion: dict[str, Any], job_id: uuid.UUID, outcome: str, **fields: Any
) -> d.JobCompleted:
    """The ``deployment.job_completed`` the deployment service publishes when the promotion's job ends."""
    defaults = {"outcome": outcome, "reason": "", "tasks": [], "finished_at": datetime.now(UTC)}
    return d.JobCompleted(**_job(caller, promotion, job_id, {**defaults, **fields}))


@dataclass
class Stack:
    """The services of one test, sharing a database and a NATS namespace."""

    promotion: PromotionApp
    release: ReleaseApp
    nats: Client
    namespace: str
    extra: list[Any] = field(default_factory=list)
    stopped: set[int] = field(default_factory=set)

    @property
    def names(self) -> Names:
        return self.promotion.runtime.names

    def wire(self, subject: str) -> str:
        return self.names.subject(subject)

    async def stop(self, app: Any) -> None:
        """Stop one service now (the stack does not stop it again)."""
        if id(app) not in self.stopped:
            self.stopped.add(id(app))
            await app.stop()

    async def table_count(self, table: str) -> int:
        async with self.promotion.runtime.pool.acquire() as conn:
            return await conn.fetchval(f"SELECT count(*) FROM {table}")


async def _stack(
    make_database: Any,
    nats_url: str,
    nats: Client,
    namespace: str,
    *,
    full: bool,
    plugins: dict[str, Any] | None = None,
) -> AsyncIterator[Stack]:
    dsn = await make_database(SCHEMAS)
    common = {"database_url": dsn, "nats_url": nats_url, "nats_namespace": namespace, "outbox_poll_s": 0.2}
    release = create_release(ReleaseSettings(**common))
    promotion = create_app(Settings(**common, **(plugins or {}), timer_max_sleep_s=5))
    stack = Stack(promotion=promotion, release=release, nats=nats, namespace=namespace)
    if full:
        stack.extra = [
            create_workflow(WorkflowSettings(**common, **(plugins or {}))),
            create_approval(ApprovalSettings(**common)),
        ]
    async with AsyncExitStack() as cleanup:
        services = (release, promotion, *stack.extra)
        if plugins is not None:
            # Plugin instances live in the integration service: a tenant uses only the plugins it enabled.
            stack.extra.append(
                await cleanup.enter_async_context(plugin_service(dsn, nats_url, namespace, plugins["plugin_path"]))
            )
        for app in services:
            await app.start()
            cleanup.push_async_callback(stack.stop, app)
        yield stack


@pytest_asyncio.fixture
async def stack(make_database, nats_url: str, nats: Client, stella_namespace: str) -> AsyncIterator[Stack]:
    """Promotion and release services; the test plays the workflow."""
    async for value in _stack(make_database, nats_url, nats, stella_namespace, full=False):
        yield value


@pytest_asyncio.fixture
async def full_stack(make_database, nats_url: str, nats: Client, stella_namespace: str) -> AsyncIterator[Stack]:
    """Promotion, release, workflow and approval services."""
    async for value in _stack(make_database, nats_url, nats, stella_namespace, full=True):
        yield value


async def plugin_stack(
    make_database: Any, nats_url: str, nats: Client, namespace: str, plugins: dict[str, Any]
) -> AsyncIterator[Stack]:
    """Promotion, release, workflow, approval and integration services with plugin settings (a plugin path,
    limits); the integration service installs plugins from the same plugin path."""
    async for value in _stack(make_database, nats_url, nats, namespace, full=True, plugins=plugins):
        yield value


async def _caller(stack: Stack, nats: Client) -> AsyncIterator[Caller]:
    async with service_client(nats, stack.names) as client:
        yield Caller(client)


@pytest_asyncio.fixture
async def caller(stack: Stack, nats: Client) -> AsyncIterator[Caller]:
    async for value in _caller(stack, nats):
        yield value


@pytest_asyncio.fixture
async def full_caller(full_stack: Stack, nats: Client) -> AsyncIterator[Caller]:
    async for value in _caller(full_stack, nats):
        yield value
