"""A release service running in-process on real Postgres, NATS and (where needed) a real OCI registry."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import pytest_asyncio
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from stella.contracts.envelope import Command, Query, Reply
from stella.contracts.streams import ALL_STREAMS
from stella.kit.broker import ServiceClient
from stella.kit.naming import Names
from stella.release.app import MIGRATIONS, ReleaseApp, create_app
from stella.release.settings import Settings


@dataclass
class Caller:
    """Sends commands and queries to the service as one tenant."""

    client: ServiceClient
    tenant_id: uuid.UUID

    async def command(self, subject: str, model: type[Command], **fields: Any) -> Reply:
        return await self.client.command(
            subject, model(tenant_id=self.tenant_id, correlation_id=uuid.uuid4(), **fields)
        )

    async def query(self, subject: str, model: type[Query], **fields: Any) -> Reply:
        return await self.client.query(subject, model(tenant_id=self.tenant_id, correlation_id=uuid.uuid4(), **fields))

    def other_tenant(self) -> Caller:
        return Caller(self.client, uuid.uuid4())


@pytest_asyncio.fixture
async def release_app(make_database, nats_url: str, nats: Client, unique_id: str) -> AsyncIterator[ReleaseApp]:
    dsn = await make_database([("release", MIGRATIONS)])
    namespace = f"t{unique_id}"
    app = create_app(Settings(database_url=dsn, nats_url=nats_url, nats_namespace=namespace, registry_timeout_s=3))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
        for spec in ALL_STREAMS:
            with suppress(NotFoundError):
                await nats.jetstream().delete_stream(Names(namespace).stream(spec))


@pytest_asyncio.fixture
async def caller(release_app: ReleaseApp, nats: Client) -> AsyncIterator[Caller]:
    client = ServiceClient(nats, nats.jetstream(), names=release_app.runtime.names)
    await client.start()
    yield Caller(client, uuid.uuid4())
    await client.stop()
