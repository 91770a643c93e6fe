"""Composition root of the approval service: the only place that builds its dependencies."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faststream.nats import NatsRouter

from stella.approval import subscribers
from stella.approval.handlers import Handlers
from stella.approval.settings import Settings
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


def create_app(settings: Settings, *, overrides: dict[str, Any] | None = None) -> ApprovalApp:
    """Build the approval service.

    Args:
        settings: The service settings, built once by ``__main__`` (or a test).
        overrides: Replacements for dependencies by name: ``clock`` (used by the handlers and the expiry timer).
    """
    overrides = overrides or {}
    app = ApprovalApp()
    clock_override = {"clock": overrides["clock"]} if "clock" in overrides else {}

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
            **clock_override,
        )
        app.handlers = handlers
        app.expiry = DueLoop(
            f"{NAME}-expiry",
            handlers.next_expiry,
            handlers.expire_due,
            max_sleep_s=settings.timer_max_sleep_s,
            **clock_override,
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
