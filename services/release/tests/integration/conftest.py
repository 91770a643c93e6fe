"""A release service running in-process on real Postgres, NATS and (where needed) a real OCI registry."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import TypeAlias

import pytest
import pytest_asyncio
from nats.aio.client import Client

from stella.release.app import MIGRATIONS, ReleaseApp, create_app
from stella.release.settings import Settings
from stella.testing.services import TenantCaller, service_client

Caller: TypeAlias = TenantCaller
"""Sends commands and queries to the service as one tenant."""


@pytest.fixture
def tenant_id() -> uuid.UUID:
    """The tenant the caller sends as."""
    return uuid.uuid4()


@pytest.fixture
def credential_refs(request: pytest.FixtureRequest) -> list[str]:
    """The credential references the operator allows the caller's tenant (parametrize indirectly to set some)."""
    return list(getattr(request, "param", []))


@pytest.fixture
def registry_networks(request: pytest.FixtureRequest) -> tuple[IPv4Network | IPv6Network, ...]:
    """Non-public networks the operator lets the service reach registries in: loopback, where the tests'
    registries listen (parametrize indirectly with ``[]`` for the installation default, none)."""
    return tuple(ip_network(n) for n in getattr(request, "param", ["127.0.0.0/8"]))


@pytest_asyncio.fixture
async def release_app(
    make_database,
    nats_url: str,
    stella_namespace: str,
    tenant_id: uuid.UUID,
    credential_refs: list[str],
    registry_networks: tuple[IPv4Network | IPv6Network, ...],
) -> AsyncIterator[ReleaseApp]:
    dsn = await make_database([("release", MIGRATIONS)])
    app = create_app(
        Settings(
            database_url=dsn,
            nats_url=nats_url,
            nats_namespace=stella_namespace,
            registry_timeout_s=3,
            credential_refs={str(tenant_id): credential_refs},
            registry_allowed_networks=registry_networks,
        )
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest_asyncio.fixture
async def caller(release_app: ReleaseApp, nats: Client, tenant_id: uuid.UUID) -> AsyncIterator[Caller]:
    async with service_client(nats, release_app.runtime.names) as client:
        yield Caller(client, tenant_id=tenant_id)
