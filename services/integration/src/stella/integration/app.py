"""Composition root of the integration service: the only place that builds its dependencies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypedDict

from faststream.nats import NatsRouter

from stella.contracts.envelope import utcnow
from stella.integration import subscribers
from stella.integration.connectors import Connectors
from stella.integration.handlers import Handlers
from stella.integration.keys import Keyring, MasterKey, MasterKeyError
from stella.integration.plugin_handlers import PluginHandlers
from stella.integration.settings import Settings
from stella.integration.vault import VaultClient
from stella.kit.addresses import AddressPolicy
from stella.kit.broker import CommandProcessor
from stella.kit.credentials import HostCredentialAllowList
from stella.kit.service import ServiceApp, ServiceRuntime
from stella.kit.timers import DueLoop
from stella.plugins import split_path

NAME = "integration"
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class IntegrationApp(ServiceApp):
    """The running integration service: its runtime and the objects tests may want to reach."""

    handlers: Handlers | None = field(default=None)
    plugins: PluginHandlers | None = field(default=None)
    health: DueLoop | None = field(default=None)


class Overrides(TypedDict, total=False):
    """Dependencies a caller (a test) provides instead of having them built; each key is optional.

    Attributes:
        clock: Returns the current UTC time (defaults to :func:`stella.contracts.envelope.utcnow`).
    """

    clock: Callable[[], datetime]


def load_keyring(settings: Settings) -> Keyring:
    """The master key (file or environment) and the former ones.

    Raises:
        MasterKeyError: no master key is configured, or one is not 32 bytes of base64.
    """
    if settings.master_key is not None:
        current = MasterKey.parse(settings.master_key.get_secret_value())
    elif settings.master_key_file is not None:
        try:
            current = MasterKey.parse(settings.master_key_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise MasterKeyError(f"cannot read the master key file: {exc.strerror}") from None
    else:
        raise MasterKeyError(
            "no master key: set STELLA_INTEGRATION_MASTER_KEY_FILE (or STELLA_INTEGRATION_MASTER_KEY) to 32 "
            "random bytes in base64 (`head -c32 /dev/urandom | base64`)"
        )
    previous = tuple(MasterKey.parse(p.read_text(encoding="utf-8")) for p in settings.previous_master_key_files)
    return Keyring(current, previous)


def create_app(settings: Settings, *, overrides: Overrides | None = None) -> IntegrationApp:
    """Build the integration service.

    Args:
        settings: The service settings, built once by ``__main__`` (or a test).
        overrides: Dependencies to use instead of building them (see :class:`Overrides`).

    Raises:
        MasterKeyError: no usable master key is configured.
    """
    overrides = overrides or Overrides()
    clock = overrides.get("clock", utcnow)
    keyring = load_keyring(settings)
    addresses = AddressPolicy(settings.allowed_networks)
    connectors = Connectors(timeout_s=settings.request_timeout_s, addresses=addresses)
    vault = VaultClient(timeout_s=settings.request_timeout_s, addresses=addresses)
    app = IntegrationApp()

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        handlers = Handlers(
            lambda: runtime.pool,
            CommandProcessor(lambda: runtime.pool, f"{NAME}-commands"),
            connectors,
            keyring,
            vault=vault,
            host_refs=HostCredentialAllowList(settings.credential_refs),
            insecure_hosts=settings.insecure_registries,
            health_interval=timedelta(seconds=settings.health_interval_s),
            clock=clock,
        )
        app.handlers = handlers
        app.health = DueLoop(
            f"{NAME}-health", handlers.next_check, handlers.run_due_checks, clock=clock, max_sleep_s=60.0
        )
        app.plugins = PluginHandlers(
            lambda: runtime.pool,
            handlers.commands,
            roots=split_path(settings.plugin_path),
            install_dir=settings.plugin_install_dir,
            permissions=settings.plugin_permissions,
            clock=clock,
        )
        subscribers.register(runtime, router, handlers, app.plugins)

    async def on_start(_: ServiceRuntime) -> None:
        assert app.handlers is not None and app.health is not None  # built by register, which runs first
        await connectors.start()
        await app.handlers.rotate_data_keys()
        app.health.start()

    async def on_stop(_: ServiceRuntime) -> None:
        if app.health is not None:
            await app.health.stop()
        await connectors.close()

    app.runtime = ServiceRuntime(NAME, settings, MIGRATIONS, register, on_start=on_start, on_stop=on_stop)
    return app
