"""The gateway on a fresh database and its own NATS namespace, driven in-process over HTTP.

Requests that the release service would answer are answered by :class:`StandIn`, a small responder on the
real NATS server that plays that other process: it records what the gateway sent and answers with what
the test tells it to.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest_asyncio
from litestar import Litestar
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from stella.contracts.envelope import ErrorDetail, Reply
from stella.contracts.streams import COMMANDS, HEADER_REPLY_TO
from stella.gateway.admin import bootstrap
from stella.gateway.app import MIGRATIONS, create_app
from stella.gateway.dependencies import RUNTIME_STATE_KEY
from stella.gateway.runtime import Runtime
from stella.gateway.settings import Settings
from stella.kit.naming import Names

PROBLEM = "application/problem+json"


class Clock:
    """The gateway's clock: real time plus an offset a test can move forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **delta: float) -> None:
        """Move the clock forward by ``timedelta(**delta)``."""
        self.offset += timedelta(**delta)


@dataclass
class Tenant:
    """A bootstrapped tenant and its first admin's token."""

    id: uuid.UUID
    name: str
    admin_id: uuid.UUID
    token: str


@dataclass
class Gateway:
    """A running gateway and a way to call it."""

    app: Litestar
    client: httpx.AsyncClient
    clock: Clock
    names: Names
    unique_id: str

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state[RUNTIME_STATE_KEY]
        return runtime

    async def tenant(self, suffix: str = "a") -> Tenant:
        """Bootstrap a tenant named after the test."""
        name = f"t-{self.unique_id}-{suffix}"
        assert self.runtime.pool is not None
        async with self.runtime.pool.acquire() as conn:
            credential = await bootstrap(conn, name, "admin", self.clock())
        assert credential is not None
        return Tenant(credential.tenant_id, name, credential.principal_id, credential.token)

    async def call(
        self,
        method: str,
        path: str,
        token: str | None,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request with ``token`` as bearer token (none when None)."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return await self.client.request(method, path, json=json, headers=sent, **kwargs)

    async def principal_token(
        self,
        tenant: Tenant,
        name: str,
        roles: list[str],
        groups: list[str] | None = None,
        *,
        display_name: str | None = None,
    ) -> Issued:
        """Create a principal with ``roles`` (and ``groups``, a display name) in ``tenant`` and a token of it."""
        body: dict[str, Any] = {"name": name, "kind": "user", "roles": roles}
        if groups is not None:
            body["groups"] = groups
        if display_name is not None:
            body["display_name"] = display_name
        created = await self.call("POST", "/api/v1/principals", tenant.token, json=body)
        assert created.status_code == 201, created.text
        principal_id = uuid.UUID(created.json()["id"])
        token = await self.call("POST", "/api/v1/tokens", tenant.token, json={"principal_id": str(principal_id)})
        assert token.status_code == 201, token.text
        return Issued(token.json()["token"], uuid.UUID(token.json()["id"]), principal_id)


@dataclass(frozen=True)
class Issued:
    """A token made through the API for a new principal."""

    token: str
    token_id: uuid.UUID
    principal_id: uuid.UUID


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check that ``response`` is a problem+json with ``status`` and ``code``; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status
    assert body["type"] == f"urn:stella:problem:{code.lower()}"
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["instance"] == response.request.url.path
    assert body["trace_id"] == response.headers["x-trace-id"]
    uuid.UUID(body["trace_id"])
    return body


@asynccontextmanager
async def _running(app: Litestar) -> AsyncIterator[None]:
    """Run the application's lifespan in a task of its own (entered and left in the same task)."""
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stopping = asyncio.Event()

    async def lifespan() -> None:
        try:
            async with app.lifespan():
                started.set_result(None)
                await stopping.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    task = asyncio.create_task(lifespan())
    await started
    try:
        yield
    finally:
        stopping.set()
        await task


@pytest_asyncio.fixture
async def gateway_settings(make_database: Any, nats_url: str, stella_namespace: str) -> Settings:
    """Settings of a gateway on a fresh database and a NATS namespace of the test's own."""
    dsn = await make_database([("gateway", MIGRATIONS)])
    return Settings(
        database_url=dsn,
        nats_url=nats_url,
        nats_namespace=stella_namespace,
        command_timeout_s=3.0,
        query_timeout_s=3.0,
        # Tests write token uses explicitly (flush_usage) instead of waiting for the batch.
        token_touch_interval_s=3600,
        db_pool_size=5,
    )


@pytest_asyncio.fixture
async def gateway(gateway_settings: Settings, unique_id: str) -> AsyncIterator[Gateway]:
    """A started gateway in the namespace of ``gateway_settings``."""
    clock = Clock()
    app = create_app(gateway_settings, overrides={"clock": clock})
    names = Names(gateway_settings.nats_namespace)
    # Litestar's AsyncTestClient runs the application on an event loop of its own in another thread and
    # blocks the test's loop during each request; the stand-in service and the test's own database and
    # NATS work need the application on the test's loop, as uvicorn would run it. So the application's
    # lifespan is entered here and requests go through httpx's ASGI transport.
    # Litestar is an ASGI application; httpx types its parameter with plain MutableMapping scopes.
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with _running(app), httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield Gateway(app, client, clock, names, unique_id)


Handler = Callable[[dict[str, Any]], Awaitable[Reply | None] | Reply | None]
"""Answers a message's payload; None sends no reply (a service that died before replying)."""


@dataclass
class Received:
    """A message the stand-in received."""

    subject: str
    payload: dict[str, Any]
    headers: dict[str, str]


@dataclass
class StandIn:
    """Plays services on NATS (the release service unless told others): answers the subjects it has handlers for.

    Queries are answered on core NATS request/reply, commands from the namespace's command stream with a
    publish to the command's ``Stella-Reply-To`` subject, as the real services do.
    """

    nats: Client
    names: Names
    contexts: tuple[str, ...] = ("release",)
    handlers: dict[str, Handler] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    _subscriptions: list[Any] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _replies: set[asyncio.Task[None]] = field(default_factory=set)

    def on(self, subject: str, handler: Handler) -> None:
        """Answer ``subject`` with ``handler(payload)``."""
        self.handlers[subject] = handler

    def answer(self, subject: str, data: Any = None, error: ErrorDetail | None = None) -> None:
        """Answer ``subject`` always with the same data (or error)."""
        reply = Reply.failure(error) if error is not None else Reply.success(data)
        self.handlers[subject] = lambda _: reply

    def last(self, subject: str) -> Received:
        """The last message received on ``subject``."""
        for item in reversed(self.received):
            if item.subject == subject:
                return item
        raise AssertionError(f"nothing received on {subject}; got {[r.subject for r in self.received]}")

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` messages have been received."""
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()

    async def start(self) -> None:
        js = self.nats.jetstream()
        for context in self.contexts:
            self._subscriptions.append(
                await self.nats.subscribe(self.names.subject(f"stella.rpc.{context}.>"), cb=self._on_query)
            )
            # One consumer per context: NATS 2.9 has no consumers with several filter subjects.
            self._subscriptions.append(
                await js.subscribe(
                    self.names.subject(f"stella.cmd.{context}.>"),
                    stream=self.names.stream(COMMANDS),
                    cb=self._on_command,
                    deliver_policy=DeliverPolicy.NEW,
                    manual_ack=True,
                )
            )
        await self.nats.flush()

    async def stop(self) -> None:
        for task in list(self._replies):
            task.cancel()
        for subscription in self._subscriptions:
            with suppress(Exception):
                await subscription.unsubscribe()

    def _record(self, msg: Msg) -> tuple[str, dict[str, Any]]:
        subject = self.names.local(msg.subject)
        payload = json.loads(msg.data)
        self.received.append(Received(subject, payload, dict(msg.headers or {})))
        self._arrived.set()
        return subject, payload

    async def _answer(self, subject: str, payload: dict[str, Any]) -> Reply | None:
        handler = self.handlers.get(subject)
        if handler is None:
            return None
        result = handler(payload)
        return await result if asyncio.iscoroutine(result) else result  # type: ignore[return-value]

    async def _on_query(self, msg: Msg) -> None:
        subject, payload = self._record(msg)
        reply = await self._answer(subject, payload)
        if reply is not None:
            await msg.respond(reply.model_dump_json().encode())

    async def _on_command(self, msg: Msg) -> None:
        await msg.ack()
        subject, payload = self._record(msg)
        # Handlers may wait (to play a slow service); answering must not block the next delivery.
        task = asyncio.get_running_loop().create_task(self._reply_command(msg, subject, payload))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _reply_command(self, msg: Msg, subject: str, payload: dict[str, Any]) -> None:
        reply = await self._answer(subject, payload)
        reply_to = (msg.headers or {}).get(HEADER_REPLY_TO)
        if reply is not None and reply_to:
            await self.nats.publish(reply_to, reply.model_dump_json().encode())


@pytest_asyncio.fixture
async def release_service(gateway: Gateway, nats: Client) -> AsyncIterator[StandIn]:
    """A stand-in for the release service in the gateway's namespace."""
    stand_in = StandIn(nats, gateway.names)
    await stand_in.start()
    try:
        yield stand_in
    finally:
        await stand_in.stop()


@pytest_asyncio.fixture
async def services(gateway: Gateway, nats: Client) -> AsyncIterator[StandIn]:
    """A stand-in for the promotion, approval, workflow and evidence services in the gateway's namespace."""
    stand_in = StandIn(nats, gateway.names, contexts=("promotion", "approval", "workflow", "evidence"))
    await stand_in.start()
    try:
        yield stand_in
    finally:
        await stand_in.stop()
