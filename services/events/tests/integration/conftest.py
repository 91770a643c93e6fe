"""The events service in-process on real Postgres and NATS, with a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio
from aiohttp import web
from nats.aio.client import Client

from stella.contracts import approval, promotion
from stella.contracts import events as c
from stella.contracts.envelope import Event
from stella.contracts.streams import HEADER_MSG_ID
from stella.events.app import MIGRATIONS, EventsApp, Overrides, create_app
from stella.events.settings import Settings
from stella.kit.embedded import free_port
from stella.kit.naming import Names
from stella.testing.services import TenantCaller, service_client


@dataclass
class Request:
    """A request the receiver got."""

    headers: dict[str, str]
    body: str
    answered: int


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: records every request and answers 200 unless told to fail."""

    port: int = field(default_factory=free_port)
    failures_left: int = 0
    status_when_failing: int = 500
    requests: list[Request] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` requests with ``status``."""
        self.failures_left, self.status_when_failing = count, status

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        status = 200
        if self.failures_left > 0:
            self.failures_left -= 1
            status = self.status_when_failing
        self.requests.append(Request(dict(request.headers), body, status))
        self._arrived.set()
        return web.Response(status=status, text="ok" if status == 200 else "try again")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait(self, check: Callable[[list[Request]], bool], timeout: float = 15.0) -> list[Request]:
        """Wait until ``check(requests)`` holds."""
        async with asyncio.timeout(timeout):
            while not check(self.requests):
                self._arrived.clear()
                await self._arrived.wait()
        return self.requests

    def accepted(self) -> list[Request]:
        """The requests answered 2xx."""
        return [r for r in self.requests if 200 <= r.answered < 300]


@dataclass
class Harness:
    """The running service, a caller for its commands and queries, and helpers to feed it internal events."""

    app: EventsApp
    nats: Client
    caller: TenantCaller

    @property
    def names(self) -> Names:
        return self.app.runtime.names

    async def publish_internal(self, subject: str, event: Event) -> None:
        """Publish an internal event as a service's outbox relay would."""
        await self.nats.jetstream().publish(
            self.names.subject(subject),
            event.model_dump_json().encode(),
            headers={HEADER_MSG_ID: str(event.message_id)},
        )

    async def deliveries(
        self, webhook_id: uuid.UUID, check: Callable[[list[dict[str, Any]]], bool], timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """Read the webhook's delivery log until ``check(items)`` holds (outcomes are recorded after the answer)."""
        items: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                reply = await self.caller.query(c.LIST_DELIVERIES, c.ListDeliveries, webhook_id=webhook_id)
                assert reply.ok, reply.error
                items = reply.data["items"]
                if check(items):
                    return items
                await asyncio.sleep(0.05)

    async def table_count(self, table: str) -> int:
        async with self.app.runtime.pool.acquire() as conn:
            return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


def promotion_changed(
    tenant_id: uuid.UUID, status: str = "approved", promotion_id: uuid.UUID | None = None
) -> promotion.PromotionChanged:
    """A promotion service event as it is published."""
    now = datetime.now(UTC)
    view = promotion.PromotionView(
        id=promotion_id or uuid.uuid4(),
        release_id=uuid.uuid4(),
        release_name="shop-1",
        release_components=[{"name": "api", "digest": "sha256:" + "a" * 64, "image_repository": "r/api"}],
        source_environment_id=None,
        target_environment_id=uuid.uuid4(),
        target_environment_name="dev",
        status=promotion.PromotionStatus(status),
        reason="ship it",
        requested_by=uuid.uuid4(),
        requested_at=now,
        updated_at=now,
        decision_record={"result": "allow", "reasons": [], "inputs_hash": "sha256:" + "b" * 64, "gates": []},
        workflow_run_id=uuid.uuid4(),
        next_evaluation_at=None,
        freeze_override=None,
    )
    return promotion.PromotionChanged(tenant_id=tenant_id, correlation_id=uuid.uuid4(), promotion=view)


def approval_changed(tenant_id: uuid.UUID, promotion_id: uuid.UUID) -> approval.ApprovalChanged:
    """An approval service event as it is published."""
    now = datetime.now(UTC)
    request = approval.ApprovalRequestView(
        promotion_id=promotion_id,
        environment_id=uuid.uuid4(),
        requester_id=uuid.uuid4(),
        required=1,
        require_sod=True,
        approver_groups=[],
        status=approval.ApprovalStatus.GRANTED,
        requested_at=now,
        expires_at=now + timedelta(days=7),
        decided_at=now,
        votes=[approval.VoteView(approver_id=uuid.uuid4(), action=approval.VoteAction.APPROVED, comment="ok", at=now)],
    )
    return approval.ApprovalChanged(tenant_id=tenant_id, correlation_id=uuid.uuid4(), request=request)


def body(msg: Any) -> dict[str, Any]:
    """The JSON body of a NATS message."""
    return json.loads(msg.data)


@pytest_asyncio.fixture
async def events_settings(make_database: Any, nats_url: str, stella_namespace: str, tmp_path: Any) -> Settings:
    """Settings of an events service on a fresh database and NATS namespace, allowed to reach loopback receivers."""
    dsn = await make_database([("events", MIGRATIONS)])
    return Settings(
        database_url=dsn,
        nats_url=nats_url,
        nats_namespace=stella_namespace,
        key_dir=tmp_path / "keys",
        webhook_require_https=False,
        webhook_allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        retry_base_s=0.05,
        retry_max_interval_s=0.2,
        outbox_poll_s=0.2,
        db_pool_size=5,
        redelivery_backoff_s=0.05,
    )


@asynccontextmanager
async def running(settings: Settings, nats: Client, overrides: Overrides | None = None) -> AsyncIterator[Harness]:
    """Run an events service with ``settings`` until the block ends."""
    app = create_app(settings, overrides=overrides)
    await app.start()
    try:
        async with service_client(nats, app.runtime.names) as client:
            yield Harness(app, nats, TenantCaller(client, actor_id=uuid.uuid4()))
    finally:
        await app.stop()


@pytest_asyncio.fixture
async def events(events_settings: Settings, nats: Client) -> AsyncIterator[Harness]:
    """A running events service."""
    async with running(events_settings, nats) as harness:
        yield harness


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on loopback."""
    server = Receiver()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
