"""Composition root of the promotion service: the only place that builds its dependencies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypedDict
from uuid import UUID, uuid4

from faststream.nats import NatsRouter

from stella.contracts.envelope import utcnow
from stella.kit.broker import CommandProcessor
from stella.kit.service import ServiceApp, ServiceRuntime
from stella.kit.startup import ConfigurationError
from stella.plugins import Limits, PluginRunner, split_path
from stella.promotion import metrics, subscribers
from stella.promotion.gates import GateRegistry, PluginGate, default_registry
from stella.promotion.handlers import Handlers
from stella.promotion.plugin_gates import PluginGates
from stella.promotion.settings import Settings

NAME = "promotion"
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class PromotionApp(ServiceApp):
    """The running promotion service: its runtime and the objects tests may want to reach."""

    handlers: Handlers | None = field(default=None)


class Overrides(TypedDict, total=False):
    """Dependencies a caller (a test) provides instead of having them built; each key is optional.

    Attributes:
        registry: The gate registry (built-in gates plus a test's own gate types).
        clock: Returns the current UTC time (defaults to :func:`stella.contracts.envelope.utcnow`).
        new_id: Returns a new id (defaults to :func:`uuid.uuid4`).
    """

    registry: GateRegistry
    clock: Callable[[], datetime]
    new_id: Callable[[], UUID]


def plugin_roots(plugin_path: str) -> list[Path]:
    """The directories on the plugin path: the only ones plugins are run from.

    Raises:
        ConfigurationError: an entry is not a directory (the process exits with 78).
    """
    roots = split_path(plugin_path)
    missing = [str(root) for root in roots if not root.is_dir()]
    if missing:
        raise ConfigurationError(f"STELLA_PLUGIN_PATH: not a directory: {', '.join(missing)}")
    return roots


def create_app(settings: Settings, *, overrides: Overrides | None = None) -> PromotionApp:
    """Build the promotion service.

    Args:
        settings: The service settings, built once by ``__main__`` (or a test).
        overrides: Dependencies to use instead of building them (see :class:`Overrides`).
    """
    overrides = overrides or Overrides()
    runner = PluginRunner(
        Limits(
            wall_s=settings.plugin_timeout_s,
            cpu_s=settings.plugin_cpu_s,
            memory_bytes=settings.plugin_memory_mb * 1024 * 1024,
        ),
        max_concurrent=settings.plugin_concurrency,
        require_network_isolation=settings.plugin_require_network_isolation,
    )
    app = PromotionApp()
    plugin_gates = PluginGates(
        plugin_roots(settings.plugin_path),
        runner,
        lambda: app.runtime.client,
        timeout_s=settings.release_query_timeout_s,
    )
    registry = overrides.get("registry")
    if registry is None:
        # Which plugins a tenant may use is checked when its environment is saved (against its plugin
        # instances); the registry decisions replay with checks only a plugin gate's shape.
        registry = default_registry()
        registry.register(PluginGate(None))

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        handlers = Handlers(
            lambda: runtime.pool,
            CommandProcessor(lambda: runtime.pool, f"{NAME}-commands"),
            lambda: runtime.client,
            registry=registry,
            plugin_gates=plugin_gates,
            release_query_timeout_s=settings.release_query_timeout_s,
            default_workflow_template=settings.default_workflow_template,
            timer_batch_size=settings.timer_batch_size,
            timer_retry_s=settings.timer_retry_s,
            timer_max_sleep_s=settings.timer_max_sleep_s,
            run_start_timeout_s=settings.run_start_timeout_s,
            run_start_attempts=settings.run_start_attempts,
            clock=overrides.get("clock", utcnow),
            new_id=overrides.get("new_id", uuid4),
        )
        app.handlers = handlers
        subscribers.register(runtime, router, handlers)

    async def on_start(_: ServiceRuntime) -> None:
        assert app.handlers is not None
        # Holds and window transitions that fell due while no replica ran are handled as soon as these start.
        app.handlers.holds.start()
        app.handlers.freezes.start()
        app.handlers.runs.start()

    async def on_stop(_: ServiceRuntime) -> None:
        if app.handlers is not None:
            await app.handlers.holds.stop()
            await app.handlers.freezes.stop()
            await app.handlers.runs.stop()

    app.runtime = ServiceRuntime(NAME, settings, MIGRATIONS, register, on_start=on_start, on_stop=on_stop)
    metrics.observe(app.runtime)
    return app
