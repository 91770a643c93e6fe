"""Composition root of the events service: the only place that builds its dependencies."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypedDict

import asyncpg
from faststream.nats import NatsRouter

from stella.contracts.envelope import utcnow
from stella.events import subscribers
from stella.events.delivery import Sender
from stella.events.domain import AddressPolicy, DisablePolicy, RetryPolicy
from stella.events.handlers import Handlers, Resolve, system_resolve
from stella.events.sealing import Sealer, load_or_create_key
from stella.events.settings import Settings
from stella.kit.broker import CommandProcessor
from stella.kit.service import ServiceApp, ServiceRuntime
from stella.kit.timers import DueLoop

NAME = "events"
MIGRATIONS = Path(__file__).parent / "migrations"
PURGE_INTERVAL = timedelta(hours=1)
"""How often public events older than the retention are deleted."""


@dataclass
class EventsApp(ServiceApp):
    """The running events service: its runtime and the objects tests may want to reach."""

    handlers: Handlers | None = field(default=None)
    deliveries: DueLoop | None = field(default=None)
    purger: DueLoop | None = field(default=None)
    _listener: asyncpg.Connection | None = field(default=None)


class Overrides(TypedDict, total=False):
    """Dependencies a caller (a test) provides instead of having them built; each key is optional.

    Attributes:
        clock: Returns the current UTC time (defaults to :func:`stella.contracts.envelope.utcnow`).
        jitter: Returns the jitter of a retry's delay, in [0, 1) (defaults to :func:`random.random`).
        resolve: Resolves a webhook URL's host name when the webhook is saved (defaults to the system's).
    """

    clock: Callable[[], datetime]
    jitter: Callable[[], float]
    resolve: Resolve


def create_app(settings: Settings, *, overrides: Overrides | None = None) -> EventsApp:
    """Build the events service.

    Args:
        settings: The service settings, built once by ``__main__`` (or a test).
        overrides: Dependencies to use instead of building them (see :class:`Overrides`).
    """
    overrides = overrides or Overrides()
    clock = overrides.get("clock", utcnow)
    app = EventsApp()
    policy = AddressPolicy(
        require_https=settings.webhook_require_https, allowed_networks=tuple(settings.webhook_allowed_networks)
    )
    sender = Sender(policy, timeout_s=settings.webhook_timeout_s, connections=settings.webhook_concurrency)
    next_purge: list[datetime] = [clock()]

    def wake_deliveries() -> None:
        if app.deliveries is not None:
            app.deliveries.wake()

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        handlers = Handlers(
            lambda: runtime.pool,
            CommandProcessor(lambda: runtime.pool, f"{NAME}-commands"),
            sealer=Sealer(load_or_create_key(settings.secret_key_path)),
            sender=sender,
            policy=policy,
            retry=RetryPolicy(
                base=timedelta(seconds=settings.retry_base_s),
                max_interval=timedelta(seconds=settings.retry_max_interval_s),
                window=timedelta(seconds=settings.retry_window_s),
            ),
            disable=DisablePolicy(
                after=timedelta(seconds=settings.disable_after_s), after_failures=settings.disable_after_failures
            ),
            concurrency=settings.webhook_concurrency,
            resolve_timeout_s=settings.resolve_timeout_s,
            clock=clock,
            jitter=overrides.get("jitter", random.random),
            resolve=overrides.get("resolve", system_resolve),
            on_queued=wake_deliveries,
        )
        app.handlers = handlers
        app.deliveries = DueLoop(
            f"{NAME}-deliveries",
            handlers.next_due,
            handlers.run_due,
            clock=clock,
            max_sleep_s=settings.timer_max_sleep_s,
        )

        async def next_purge_due() -> datetime:
            return next_purge[0]

        async def purge(now: datetime) -> None:
            await handlers.purge(now - timedelta(seconds=settings.event_retention_s))
            next_purge[0] = now + PURGE_INTERVAL

        app.purger = DueLoop(
            f"{NAME}-purge", next_purge_due, purge, clock=clock, max_sleep_s=PURGE_INTERVAL.total_seconds()
        )
        subscribers.register(runtime, router, handlers, projection_batch_size=settings.projection_batch_size)

    async def on_start(runtime: ServiceRuntime) -> None:
        assert app.deliveries is not None and app.purger is not None  # built by register, which runs first
        await sender.start()
        # Deliveries queued by any replica (or whose webhook came back) wake this one's loop on commit.
        app._listener = await asyncpg.connect(settings.as_service(settings.database_url, runtime.schema))
        await app._listener.add_listener(f"stella_deliveries_{runtime.schema}", lambda *_: wake_deliveries())
        app.deliveries.start()
        app.purger.start()

    async def on_stop(_: ServiceRuntime) -> None:
        for loop in (app.deliveries, app.purger):
            if loop is not None:
                await loop.stop()
        if app.handlers is not None:
            await app.handlers.drain()
        if app._listener is not None:
            with contextlib.suppress(Exception):
                await app._listener.close(timeout=2)
        await sender.stop()

    app.runtime = ServiceRuntime(NAME, settings, MIGRATIONS, register, on_start=on_start, on_stop=on_stop)
    return app
