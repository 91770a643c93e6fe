"""Composition root of the evidence service: the only place that builds its dependencies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from faststream.nats import NatsRouter

from stella.evidence import subscribers
from stella.evidence.exports import ExportStore
from stella.evidence.handlers import Handlers
from stella.evidence.settings import Settings
from stella.evidence.signing import ActiveSigner, KeyFile
from stella.kit.broker import CommandProcessor
from stella.kit.service import ServiceApp, ServiceRuntime

NAME = "evidence"
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class EvidenceApp(ServiceApp):
    """The running evidence service: its runtime and the objects tests may want to reach."""

    signer: ActiveSigner
    exports: ExportStore
    handlers: Handlers | None = field(default=None)


def create_app(settings: Settings, *, overrides: dict[str, Any] | None = None) -> EvidenceApp:
    """Build the evidence service.

    Args:
        settings: The service settings, built once by ``__main__`` (or a test).
        overrides: Replacements for dependencies by name: ``clock``, ``new_id``.
    """
    overrides = overrides or {}
    clock: Callable[[], datetime] = overrides.get("clock") or (lambda: datetime.now(UTC))
    signer = ActiveSigner(KeyFile(settings.signing_key_path, settings.key_algorithm), create=settings.key_create)
    app = EvidenceApp(signer=signer, exports=None)

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        app.exports = ExportStore(runtime.names, max_age_s=settings.export_max_age_s)
        handlers = Handlers(
            lambda: runtime.pool,
            CommandProcessor(lambda: runtime.pool, f"{NAME}-commands"),
            lambda: runtime.client,
            signer,
            app.exports,
            dependency_timeout_s=settings.dependency_timeout_s,
            export_max_packets=settings.export_max_packets,
            export_max_age_s=settings.export_max_age_s,
            max_reply_bytes=settings.max_reply_bytes,
            clock=clock,
            **({"new_id": overrides["new_id"]} if "new_id" in overrides else {}),
        )
        app.handlers = handlers
        subscribers.register(runtime, router, handlers)

    async def on_start(runtime: ServiceRuntime) -> None:
        # Before the broker starts: no packet is signed until the key is loaded and registered.
        await signer.start(runtime.pool, clock())
        await app.exports.start(runtime.js)

    app.runtime = ServiceRuntime(NAME, settings, MIGRATIONS, register, on_start=on_start)
    return app
