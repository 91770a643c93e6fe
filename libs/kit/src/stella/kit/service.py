"""The runtime every headless service shares: connect, migrate, declare streams, relay, serve, stop.

A service's ``app.py`` builds a :class:`ServiceRuntime` with its name, settings, migrations folder and a
function that registers its subscribers; ``__main__`` runs it. Tests use the same object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from faststream.nats import NatsBroker, NatsMessage, NatsRouter
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

from stella.contracts.streams import health_subject
from stella.kit import tracing
from stella.kit.broker import (
    FailureLedger,
    OrderedBatchConsumer,
    RetiredConsumer,
    ServiceClient,
    declare_consumers,
    declare_streams,
    undecoded,
)
from stella.kit.db import create_pool
from stella.kit.metrics import serve_metrics
from stella.kit.migrations import prepare_schema
from stella.kit.naming import Names
from stella.kit.outbox import OutboxRelay
from stella.kit.probes import ProbeServer
from stella.kit.settings import ServiceSettings
from stella.kit.startup import freeze_startup_heap

log = logging.getLogger(__name__)


class ServiceRuntime:
    """Owns a service's pool, broker, client and outbox relay for the life of the process."""

    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        migrations: Path,
        register: Callable[[ServiceRuntime, NatsRouter], None],
        *,
        schema: str | None = None,
        on_start: Callable[[ServiceRuntime], Awaitable[None]] | None = None,
        on_stop: Callable[[ServiceRuntime], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.schema = schema or name
        self.settings = settings
        self.migrations = migrations
        self._register = register
        self._on_start = on_start
        self._on_stop = on_stop
        self.names = Names(settings.nats_namespace)
        # Reconnect for as long as the process lives: NATS may be away for longer than a minute or two.
        # FastStream's "Received"/"Processed" lines for every message go at DEBUG: INFO is one line per
        # business event or error (the kit logs every failure itself).
        self.broker = NatsBroker(
            settings.nats_url,
            logger=logging.getLogger(f"stella.{name}.broker"),
            log_level=logging.DEBUG,
            max_reconnect_attempts=-1,
            # Every handler takes the delivery itself (``decoder=undecoded``) and parses it with its own model:
            # no dependency injection per message (it ran a sync step on a worker thread for each one) and no
            # JSON decoding of a body the handler parses again.
            apply_types=False,
        )
        self.failures = FailureLedger()
        """Failures of the messages this process handles (the poison budget's counter)."""
        self.consumers: list[tuple[str, ConsumerConfig]] = []
        """The durable consumers the routes registered: ``(stream, configuration)``."""
        self.retired_consumers: list[RetiredConsumer] = []
        """Durable consumers of earlier versions, replaced by some of ``consumers`` (deleted at start)."""
        self.batch_consumers: list[OrderedBatchConsumer] = []
        """The ordered, group-committing consumers the routes registered (started after the broker)."""
        self._pool: asyncpg.Pool | None = None
        self._js: JetStreamContext | None = None
        self._nats: NatsClient | None = None
        self._client: ServiceClient | None = None
        self.relay: OutboxRelay | None = None
        self.probes: ProbeServer | None = None
        self._observers: dict[str, Callable[[str], None]] = {}
        self.started_at = time.time()
        self._stopped = asyncio.Event()
        self._owns_tracing = False

    @property
    def pool(self) -> asyncpg.Pool:
        """The service's pool (after :meth:`start`)."""
        if self._pool is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._pool

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context (after :meth:`start`)."""
        if self._js is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._js

    @property
    def nats(self) -> NatsClient:
        """The NATS connection (after :meth:`start`)."""
        if self._nats is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._nats

    @property
    def client(self) -> ServiceClient:
        """The client for talking to other services (after :meth:`start`)."""
        if self._client is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._client

    def observe(self, subject: str, observer: Callable[[str], None]) -> None:
        """Call ``observer(payload_json)`` each time the relay has published an event on ``subject``.

        Business metrics hang here: every event is counted once, after it really went out, whatever
        transaction or replica wrote it.
        """
        self._observers[subject] = observer

    async def start(self) -> None:
        """Connect to Postgres and NATS, migrate, declare streams, start the relay and the subscribers.

        A start that fails stops what it had started before the error propagates.
        """
        try:
            await self._start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop()
            raise

    async def _start(self) -> None:
        settings = self.settings
        if not tracing.enabled():
            self._owns_tracing = tracing.configure_from_env(self.name)
        applied = await prepare_schema(
            # Migrating needs the schema's owner; waiting for a migration job only reads, as the service's role.
            settings.direct_database_url
            if settings.migrate_on_start
            else settings.as_service(settings.direct_database_url, self.schema),
            self.schema,
            self.migrations,
            migrate=settings.migrate_on_start,
            timeout_s=settings.startup_timeout_s,
            service_role=settings.service_role(self.schema),
            role_password=settings.role_password,
        )
        if applied:
            log.info("applied migrations", extra={"migrations": applied})
        self._pool = await create_pool(
            settings.as_service(settings.database_url, self.schema),
            self.schema,
            max_size=settings.db_pool_size,
            min_size=min(settings.db_pool_min_size, settings.db_pool_size),
            pool_mode=settings.database_pool_mode,
        )
        await self.broker.connect()
        nc = self.broker.connection
        self._nats = nc
        self._js = nc.jetstream()
        await declare_streams(self._js, self.names, replicas=settings.nats_stream_replicas)
        self._client = ServiceClient(nc, self._js, names=self.names)
        await self._client.start()
        router = NatsRouter()
        self._register(self, router)

        @router.subscriber(
            self.names.subject(health_subject(self.name)),
            queue=f"{self.name}-health",
            title=f"{self.name}-health",
            decoder=undecoded,
        )
        async def on_health(msg: NatsMessage) -> dict[str, Any]:
            return await self.health()

        self.broker.include_router(router)
        await declare_consumers(self._js, self.consumers, self.retired_consumers)
        # The relay holds a session lock and LISTENs: it needs a connection that bypasses a transaction pooler.
        self.relay = OutboxRelay(
            self.settings.as_service(self.settings.direct_database_url, self.schema),
            self.schema,
            self._js,
            names=self.names,
            observers=self._observers,
            batch_size=self.settings.outbox_batch_size,
            poll_s=self.settings.outbox_poll_s,
        )
        self.relay.start()
        if self._on_start is not None:
            await self._on_start(self)
        await self.broker.start()
        # The subscriptions are sent to the server with the connection's next write: a round trip makes sure it
        # has them, so a query sent once the service says it started finds its responders.
        await nc.flush(timeout=10)
        for consumer in self.batch_consumers:
            consumer.start()
        if self.settings.metrics_port:
            serve_metrics(self.settings.metrics_port)
        if self.settings.health_port is not None:
            self.probes = ProbeServer(self.health, port=self.settings.health_port)
            await self.probes.start()
        log.info("service started", extra={"service": self.name})

    async def health(self) -> dict[str, Any]:
        """Readiness: the database answers and NATS is connected."""
        checks: dict[str, str] = {}
        try:
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"failing: {type(exc).__name__}"
        checks["nats"] = "ok" if self.broker.connection.is_connected else "failing"
        ok = all(v == "ok" for v in checks.values())
        return {"service": self.name, "status": "ok" if ok else "failing", "checks": checks}

    async def stop(self) -> None:
        """Stop subscribers, the relay and the connections."""
        if self.probes is not None:
            await self.probes.stop()
        if self._on_stop is not None:
            with contextlib.suppress(Exception):
                await self._on_stop(self)
        for consumer in self.batch_consumers:
            with contextlib.suppress(Exception):
                await consumer.stop()
        with contextlib.suppress(Exception):
            await self.broker.stop()
        if self.relay is not None:
            await self.relay.stop()
        if self._client is not None:
            await self._client.stop()
        if self._pool is not None:
            await self._pool.close()
        if self._owns_tracing:
            tracing.uninstall()  # flushes the spans still buffered
        self._stopped.set()

    async def run(self) -> None:
        """Start, serve until SIGINT/SIGTERM, then stop cleanly."""
        await self.start()
        freeze_startup_heap()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping", extra={"service": self.name})
        await self.stop()


@dataclass
class ServiceApp:
    """A built service: its runtime, plus (in subclasses) the objects tests may want to reach.

    ``create_app`` builds the subclass first and the runtime after, because the runtime's route
    registration closes over the app.
    """

    runtime: ServiceRuntime = field(init=False)

    async def start(self) -> None:
        """Start the service (migrations, relay, subscribers, timers)."""
        await self.runtime.start()

    async def stop(self) -> None:
        """Stop the service."""
        await self.runtime.stop()

    async def run(self) -> None:
        """Serve until a signal arrives."""
        await self.runtime.run()
