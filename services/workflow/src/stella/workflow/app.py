"""Composition root of the workflow service: the only place that builds its dependencies."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faststream.nats import NatsRouter

from stella.kit.broker import CommandProcessor
from stella.kit.service import ServiceApp, ServiceRuntime
from stella.workflow import metrics, subscribers
from stella.workflow.handlers import Handlers
from stella.workflow.settings import Settings

NAME = "workflow"
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class WorkflowApp(ServiceApp):
    """The running workflow service: its runtime and the objects tests may want to reach."""

    handlers: Handlers | None = field(default=None)


def create_app(settings: Settings, *, overrides: dict[str, Any] | None = None) -> WorkflowApp:
    """Build the workflow service.

    Args:
        settings: The service settings, built once by ``__main__`` (or a test).
        overrides: Replacements for dependencies by name: ``clock``, ``new_id``.
    """
    overrides = overrides or {}
    app = WorkflowApp()

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        handlers = Handlers(
            lambda: runtime.pool,
            CommandProcessor(lambda: runtime.pool, f"{NAME}-commands"),
            timer_batch_size=settings.timer_batch_size,
            timer_retry_s=settings.timer_retry_s,
            timer_max_sleep_s=settings.timer_max_sleep_s,
            template_cache_size=settings.template_cache_size,
            **{key: overrides[key] for key in ("clock", "new_id") if key in overrides},
        )
        app.handlers = handlers
        subscribers.register(runtime, router, handlers)

    async def on_start(_: ServiceRuntime) -> None:
        assert app.handlers is not None
        await app.handlers.install_builtin_templates()
        # Runs whose wake-up passed while no replica was running are advanced as soon as the timer starts.
        app.handlers.due.start()

    async def on_stop(_: ServiceRuntime) -> None:
        if app.handlers is not None:
            await app.handlers.due.stop()

    app.runtime = ServiceRuntime(NAME, settings, MIGRATIONS, register, on_start=on_start, on_stop=on_stop)
    metrics.observe(app.runtime)
    return app
