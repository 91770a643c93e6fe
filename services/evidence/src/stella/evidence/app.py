"""Composition root of the evidence service: the only place that builds its dependencies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypedDict
from uuid import UUID, uuid4

from faststream.nats import NatsRouter

from stella.contracts.envelope import utcnow
from stella.evidence import subscribers
from stella.evidence.exports import ExportStore
from stella.evidence.handlers import Handlers
from stella.evidence.proofs import ProofQueries
from stella.evidence.settings import Settings
from stella.evidence.signing import ActiveSigner
from stella.evidence.tree import Checkpointer, TimestampAuthority
from stella.kit.broker import CommandProcessor
from stella.kit.service import ServiceApp, ServiceRuntime

NAME = "evidence"
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class EvidenceApp(ServiceApp):
    """The running evidence service: its runtime and the objects tests may want to reach."""

    signer: ActiveSigner
    checkpointer: Checkpointer
    exports: ExportStore | None = field(default=None)
    handlers: Handlers | None = field(default=None)


class Overrides(TypedDict, total=False):
    """Dependencies a caller (a test) provides instead of having them built; each key is optional.

    Attributes:
        clock: Returns the current UTC time (defaults to :func:`stella.contracts.envelope.utcnow`).
        new_id: Returns a new id (defaults to :func:`uuid.uuid4`).
    """

    clock: Callable[[], datetime]
    new_id: Callable[[], UUID]


def create_app(settings: Settings, *, overrides: Overrides | None = None) -> EvidenceApp:
    """Build the evidence service.

    Args:
        settings: The service settings, built once by ``__main__`` (or a test).
        overrides: Dependencies to use instead of building them (see :class:`Overrides`).
    """
    overrides = overrides or Overrides()
    clock = overrides.get("clock", utcnow)
    signer = ActiveSigner(settings.key_source(), create=settings.key_create)
    checkpointer = Checkpointer(
        lambda: app.runtime.pool,
        signer,
        settings.checkpoint_origin,
        clock,
        interval_s=settings.checkpoint_interval_s,
        tsa=(
            None if settings.tsa_url is None else TimestampAuthority(settings.tsa_url, timeout_s=settings.tsa_timeout_s)
        ),
    )
    app = EvidenceApp(signer=signer, checkpointer=checkpointer)

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        exports = ExportStore(runtime.names, max_age_s=settings.export_max_age_s)
        app.exports = exports
        handlers = Handlers(
            lambda: runtime.pool,
            CommandProcessor(lambda: runtime.pool, f"{NAME}-commands"),
            lambda: runtime.client,
            signer,
            exports,
            checkpointer,
            append_batch_size=settings.append_batch_size,
            dependency_timeout_s=settings.dependency_timeout_s,
            export_max_packets=settings.export_max_packets,
            export_max_age_s=settings.export_max_age_s,
            max_reply_bytes=settings.max_reply_bytes,
            clock=clock,
            new_id=overrides.get("new_id", uuid4),
        )
        app.handlers = handlers
        subscribers.register(runtime, router, handlers, ProofQueries(lambda: runtime.pool, checkpointer))

    async def on_start(runtime: ServiceRuntime) -> None:
        # Before the broker starts: no packet is signed until the key is loaded and registered.
        await signer.start(runtime.pool, clock())
        assert app.exports is not None  # built by register, which runs before on_start
        await app.exports.start(runtime.js)
        checkpointer.start()

    async def on_stop(runtime: ServiceRuntime) -> None:
        await checkpointer.stop()
        signer.close()

    app.runtime = ServiceRuntime(NAME, settings, MIGRATIONS, register, on_start=on_start, on_stop=on_stop)
    return app
