"""Composition root of the approval service: the only place that builds its dependencies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypedDict

from faststream.nats import NatsRouter

from stella.approval import subscribers
from stella.approval.handlers import Handlers
from stella.approval.settings import Settings
from stella.contracts.envelope import utcnow
from stella.kit.broker import CommandProcessor
from stella.kit.service import ServiceApp, ServiceRuntime
from stella.kit.timers import DueLoop

NAME = "approval"
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class ApprovalApp(ServiceApp):
    """The running approval service: its runtime and the objects tests may want to reach."""

    handlers: Handlers | None = field(default=None)
    expiry: DueLoop | None = field(default=None)


class Overrides(TypedDict, total=False):
    """Dependencies a caller (a test) provides instead of having them built; each key is optional.

    Attributes:
        clock: Returns the current UTC time, for the handlers and the expiry timer (defaults to :func:`stella.contracts.envelope.utcnow`).
    """

    clock: Callable[[], datetime]


def create_app(settings: Settings, *, overrides: Overrides | None = None) -> ApprovalApp:
    """Build the approval service.

    Args:
        settings: The service settings, built once by ``__main__`` (or a test).
        overrides: Dependencies to use instead of building them (see :class:`Overrides`).
    """
    overrides = overrides or Overrides()
    app = ApprovalApp()
    clock = overrides.get("clock", utcnow)

    def wake_expiry() -> None:
        if app.expiry is not None:
            app.expiry.wake()

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        handlers = Handlers(
            lambda: runtime.pool,
            CommandProcessor(lambda: runtime.pool, f"{NAME}-commands"),
            approval_timeout=settings.approval_timeout,
            expiry_batch_size=settings.expiry_batch_size,
            on_scheduled=wake_expiry,
            clock=clock,
        )
        app.handlers = handlers
        app.expiry = DueLoop(
            f"{NAME}-expiry",
            handlers.next_expiry,
            handlers.expire_due,
            max_sleep_s=settings.timer_max_sleep_s,
            clock=clock,
        )
        subscribers.register(runtime, router, handlers)

    async def on_start(_: ServiceRuntime) -> None:
        assert app.expiry is not None  # built by register, which runs before on_start
        app.expiry.start()

    async def on_stop(_: ServiceRuntime) -> None:
        if app.expiry is not None:
            await app.expiry.stop()

    app.runtime = ServiceRuntime(NAME, settings, MIGRATIONS, register, on_start=on_start, on_stop=on_stop)
    return app
