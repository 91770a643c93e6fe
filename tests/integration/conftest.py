"""What the registry integration tests share: the integration and release services, and a tenant calling them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest_asyncio
from nats.aio.client import Client

from stella.integration.app import IntegrationApp
from stella.integration.app import create_app as integration_app
from stella.integration.keys import new_master_key
from stella.integration.settings import Settings as IntegrationSettings
from stella.release.app import ReleaseApp
from stella.release.app import create_app as release_app
from stella.release.settings import Settings as ReleaseSettings
from stella.testing.services import TenantCaller, service_client


@pytest_asyncio.fixture
async def services(
    fresh_database: str, nats_url: str, stella_namespace: str, tmp_path: Path
) -> AsyncIterator[tuple[IntegrationApp, ReleaseApp]]:
    """The integration service (its master key in a file) and the release service, both allowed to reach
    registries on loopback, where the tests' registries listen."""
    common: dict[str, Any] = {"database_url": fresh_database, "nats_url": nats_url, "nats_namespace": stella_namespace}
    key = tmp_path / "master.key"
    key.write_text(new_master_key())
    loopback = (ip_network("127.0.0.0/8"),)
    integration = integration_app(IntegrationSettings(**common, master_key_file=key, allowed_networks=loopback))
    release = release_app(ReleaseSettings(**common, registry_timeout_s=5, registry_allowed_networks=loopback))
    await integration.start()
    await release.start()
    try:
        yield integration, release
    finally:
        await release.stop()
        await integration.stop()


@pytest_asyncio.fixture
async def caller(services: tuple[IntegrationApp, ReleaseApp], nats: Client) -> AsyncIterator[TenantCaller]:
    """A new tenant asking the services over NATS."""
    async with service_client(nats, services[1].runtime.names) as client:
        yield TenantCaller(client, tenant_id=uuid.uuid4())
