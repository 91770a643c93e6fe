"""Composition root of the workflow service: the only place that builds its dependencies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypedDict
from uuid import UUID, uuid4

from faststream.nats import NatsRouter

from stella.contracts.envelope import utcnow
from stella.kit.addresses import AddressPolicy
from stella.kit.broker import CommandProcessor
from stella.kit.service import ServiceApp, ServiceRuntime
from stella.kit.startup import ConfigurationError
from stella.plugins import Limits, PluginRunner, split_path
from stella.workflow import metrics, subscribers
from stella.workflow.executors import StepExecutors
from stella.workflow.handlers import Handlers
from stella.workflow.settings import Settings

NAME = "workflow"
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class WorkflowApp(ServiceApp):
    """The running workflow service: its runtime and the objects tests may want to reach."""

    handlers: Handlers | None = field(default=None)


class Overrides(TypedDict, total=False):
    """Dependencies a caller (a test) provides instead of having them built; each key is optional.

    Attributes:
        clock: Returns the current UTC time (defaults to :func:`stella.contracts.envelope.utcnow`).
        new_id: Returns a new id (defaults to :func:`uuid.uuid4`).
    """

    clock: Callable[[], datetime]
    new_id: Callable[[], UUID]


def plugin_roots(plugin_path: str) -> list[Path]:
    """The directories on the plugin path: the only ones step plugins are run from.

    Raises:
        ConfigurationError: an entry is not a directory (the process exits with 78).
    """
    roots = split_path(plugin_path)
    missing = [str(root) for root in roots if not root.is_dir()]
    if missing:
        raise ConfigurationError(f"STELLA_PLUGIN_PATH: not a directory: {', '.join(missing)}")
    return roots


def create_app(settings: Settings, *, overrides: Overrides | None = None) -> WorkflowApp:
    """Build the workflow service.

    Args:
        settings: The service settings, built once by ``__main__`` (or a test).
        overrides: Dependencies to use instead of building them (see :class:`Overrides`).
    """
    overrides = overrides or Overrides()
    app = WorkflowApp()
    executors = StepExecutors(
        plugin_roots(settings.plugin_path),
        PluginRunner(
            Limits(
                wall_s=settings.plugin_timeout_s,
                cpu_s=settings.plugin_cpu_s,
                memory_bytes=settings.plugin_memory_mb * 1024 * 1024,
            ),
            max_concurrent=settings.plugin_concurrency,
            require_network_isolation=settings.plugin_require_network_isolation,
        ),
        http_allowed_hosts=settings.http_allowed_hosts,
        http_addresses=AddressPolicy(settings.http_allowed_networks),
        client=lambda: app.runtime.client,
    )

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        handlers = Handlers(
            lambda: runtime.pool,
            CommandProcessor(lambda: runtime.pool, f"{NAME}-commands"),
            timer_batch_size=settings.timer_batch_size,
            timer_retry_s=settings.timer_retry_s,
            timer_max_sleep_s=settings.timer_max_sleep_s,
            template_cache_size=settings.template_cache_size,
            executors=executors,
            clock=overrides.get("clock", utcnow),
            new_id=overrides.get("new_id", uuid4),
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
            await app.handlers.stop_executions()

    app.runtime = ServiceRuntime(NAME, settings, MIGRATIONS, register, on_start=on_start, on_stop=on_stop)
    metrics.observe(app.runtime)
    return app
