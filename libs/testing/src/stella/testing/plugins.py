"""A real integration service that owns plugins and plugin instances, for tests of the services that run plugins.

A tenant uses a gate or step plugin only through an enabled plugin instance: :func:`enable_plugin` installs a
plugin from the service's plugin path (once per installation) and enables it for the caller's tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from stella.contracts import integration as i
from stella.integration.app import MIGRATIONS, IntegrationApp, create_app
from stella.integration.keys import new_master_key
from stella.integration.settings import Settings
from stella.testing.services import TenantCaller

INTEGRATION_SCHEMA = ("integration", MIGRATIONS)
"""The integration service's schema, to add to a test database's schemas."""


@asynccontextmanager
async def plugin_service(
    dsn: str,
    nats_url: str,
    namespace: str,
    plugin_path: str,
    permissions: Sequence[str] = ("network", "execute"),
) -> AsyncIterator[IntegrationApp]:
    """An integration service on ``dsn`` (holding its schema) whose plugin path is ``plugin_path``."""
    settings = Settings(
        database_url=dsn,
        nats_url=nats_url,
        nats_namespace=namespace,
        master_key=new_master_key(),
        plugin_path=plugin_path,
        plugin_permissions=",".join(permissions),
        outbox_poll_s=0.2,
    )
    app = create_app(settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def enable_plugin(
    caller: TenantCaller, source: str, plugin_id: str, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Install ``source`` (unless a plugin is installed from it) and enable it for the caller's tenant.

    Returns:
        The plugin instance.
    """
    installed = await caller.command(i.INSTALL_PLUGIN, i.InstallPlugin, source=source)
    assert installed.ok or (installed.error is not None and installed.error.code == "PLUGIN_ALREADY_INSTALLED"), (
        installed.error
    )
    created = await caller.command(
        i.CREATE_PLUGIN_INSTANCE, i.CreatePluginInstance, plugin_id=plugin_id, config=config or {}
    )
    assert created.ok, created.error
    data: dict[str, Any] = created.data
    return data
