"""Composition root of the deployment service: the only place that builds its dependencies."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypedDict
from uuid import UUID

from faststream.nats import NatsRouter

from stella.contracts.deployment import TASKS_READY_PREFIX
from stella.contracts.envelope import utcnow
from stella.deployment import metrics, subscribers
from stella.deployment.handlers import Handlers
from stella.deployment.settings import Settings
from stella.kit.broker import CommandProcessor
from stella.kit.faults import is_transient
from stella.kit.service import ServiceApp, ServiceRuntime
from stella.kit.timers import DueLoop

NAME = "deployment"
MIGRATIONS = Path(__file__).parent / "migrations"

log = logging.getLogger(__name__)


@dataclass
class DeploymentApp(ServiceApp):
    """The running deployment service: its runtime and the objects tests may want to reach."""

    handlers: Handlers | None = field(default=None)
    timers: DueLoop | None = field(default=None)


class Overrides(TypedDict, total=False):
    """Dependencies a caller (a test) provides instead of having them built; each key is optional.

    Attributes:
        clock: Returns the current UTC time (defaults to :func:`stella.contracts.envelope.utcnow`).
    """

    clock: Callable[[], datetime]


def create_app(settings: Settings, *, overrides: Overrides | None = None) -> DeploymentApp:
    """Build the deployment service.

    Args:
        settings: The service settings, built once by ``__main__`` (or a test).
        overrides: Dependencies to use instead of building them (see :class:`Overrides`).
    """
    overrides = overrides or Overrides()
    app = DeploymentApp()
    clock = overrides.get("clock", utcnow)

    def wake_timers() -> None:
        if app.timers is not None:
            app.timers.wake()

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        async def notify(tenants: set[UUID]) -> None:
            # Core NATS notices (not stored): waiting task feeds of these tenants poll again now.
            try:
                for tenant in tenants:
                    await runtime.nats.publish(runtime.names.subject(f"{TASKS_READY_PREFIX}.{tenant}"), b"")
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("could not announce released tasks", extra={"error": repr(exc)})

        handlers = Handlers(
            lambda: runtime.pool,
            CommandProcessor(lambda: runtime.pool, f"{NAME}-commands"),
            lambda: runtime.client,
            settings,
            clock=clock,
            notify=notify,
            on_scheduled=wake_timers,
        )
        app.handlers = handlers
        app.timers = DueLoop(
            f"{NAME}-timers", handlers.next_due, handlers.run_due, max_sleep_s=settings.timer_max_sleep_s, clock=clock
        )
        subscribers.register(runtime, router, handlers)

    async def on_start(_: ServiceRuntime) -> None:
        assert app.timers is not None  # built by register, which runs before on_start
        app.timers.start()

    async def on_stop(_: ServiceRuntime) -> None:
        if app.timers is not None:
            await app.timers.stop()

    app.runtime = ServiceRuntime(NAME, settings, MIGRATIONS, register, on_start=on_start, on_stop=on_stop)
    metrics.observe(app.runtime)
    return app
