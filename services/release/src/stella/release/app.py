"""Composition root of the release service: the only place that builds its dependencies."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypedDict

from faststream.nats import NatsRouter

from stella.contracts.envelope import utcnow
from stella.kit.addresses import AddressPolicy
from stella.kit.broker import CommandProcessor
from stella.kit.service import ServiceApp, ServiceRuntime
from stella.release import metrics, repo, subscribers
from stella.release.credentials import CredentialPolicy
from stella.release.handlers import Handlers
from stella.release.integrations import RegistryIntegrations
from stella.release.registry import RegistryClient
from stella.release.settings import Settings

log = logging.getLogger(__name__)

NAME = "release"
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class ReleaseApp(ServiceApp):
    """The running release service: its runtime and the objects tests may want to reach."""

    registry: RegistryClient
    handlers: Handlers | None = field(default=None)


class Overrides(TypedDict, total=False):
    """Dependencies a caller (a test) provides instead of having them built; each key is optional.

    Attributes:
        registry: The registry client (a test's stand-in registry).
        clock: Returns the current UTC time (defaults to :func:`stella.contracts.envelope.utcnow`).
    """

    registry: RegistryClient
    clock: Callable[[], datetime]


def create_app(settings: Settings, *, overrides: Overrides | None = None) -> ReleaseApp:
    """Build the release service.

    Args:
        settings: The service settings, built once by ``__main__`` (or a test).
        overrides: Dependencies to use instead of building them (see :class:`Overrides`).
    """
    overrides = overrides or Overrides()
    clock = overrides.get("clock", utcnow)
    registry = overrides.get("registry") or RegistryClient(
        timeout_s=settings.registry_timeout_s,
        concurrency=settings.registry_concurrency,
        insecure_hosts=settings.insecure_registries,
        addresses=AddressPolicy(settings.registry_allowed_networks),
    )
    app = ReleaseApp(registry=registry)

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        handlers = Handlers(
            lambda: runtime.pool,
            CommandProcessor(lambda: runtime.pool, f"{NAME}-commands"),
            registry,
            credentials=CredentialPolicy(settings.credential_refs),
            integrations=RegistryIntegrations(
                lambda: runtime.client, settings.insecure_registries, timeout_s=settings.registry_timeout_s
            ),
            max_tags_per_sync=settings.max_tags_per_sync,
            clock=clock,
        )
        app.handlers = handlers
        subscribers.register(runtime, router, handlers)

    async def on_start(runtime: ServiceRuntime) -> None:
        await registry.start()
        async with runtime.pool.acquire() as conn:
            legacy = await repo.count_legacy_credential_refs(conn)
        if legacy:
            log.warning(
                "components still read their registry through a deprecated registry_credential_ref; name a "
                "registry integration on them (registry_integration_id) before the column is removed",
                extra={"components": legacy},
            )

    async def on_stop(_: ServiceRuntime) -> None:
        await registry.close()

    app.runtime = ServiceRuntime(NAME, settings, MIGRATIONS, register, on_start=on_start, on_stop=on_stop)
    metrics.observe(app.runtime)
    return app
