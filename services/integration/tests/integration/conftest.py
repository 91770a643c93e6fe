"""An integration service running in-process on real Postgres and NATS, with a master key in a file."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import TypeAlias

import pytest
import pytest_asyncio
from nats.aio.client import Client

from stella.integration.app import MIGRATIONS, IntegrationApp, create_app
from stella.integration.keys import new_master_key
from stella.integration.settings import Settings
from stella.testing.services import TenantCaller, service_client

Caller: TypeAlias = TenantCaller
"""Sends commands and queries to the service as one tenant."""


@pytest.fixture
def tenant_id() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture
def master_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "master.key"
    path.write_text(new_master_key())
    return path


@pytest.fixture
def credential_refs(request: pytest.FixtureRequest) -> list[str]:
    """Host credential references the operator allows the caller's tenant (parametrize indirectly)."""
    return list(getattr(request, "param", []))


@pytest_asyncio.fixture
async def integration_dsn(make_database) -> str:
    return await make_database([("integration", MIGRATIONS)])


@pytest.fixture
def make_settings(integration_dsn: str, nats_url: str, stella_namespace: str, tenant_id: uuid.UUID, credential_refs):
    def make(master_key_file: Path, previous: tuple[Path, ...] = ()) -> Settings:
        return Settings(
            database_url=integration_dsn,
            nats_url=nats_url,
            nats_namespace=stella_namespace,
            master_key_file=master_key_file,
            previous_master_key_files=previous,
            request_timeout_s=3,
            allowed_networks=(ip_network("127.0.0.0/8"),),
            credential_refs={str(tenant_id): credential_refs},
        )

    return make


@pytest_asyncio.fixture
async def integration_app(make_settings, master_key_file: Path) -> AsyncIterator[IntegrationApp]:
    app = create_app(make_settings(master_key_file))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest_asyncio.fixture
async def caller(integration_app: IntegrationApp, nats: Client, tenant_id: uuid.UUID) -> AsyncIterator[Caller]:
    async with service_client(nats, integration_app.runtime.names) as client:
        yield Caller(client, tenant_id=tenant_id)


class RecordCollector(logging.Handler):
    """Every log record of the process, formatted with its extra fields, for leak checks."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {record.__dict__!r} {record.exc_text or ''}")

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def all_logs() -> Iterator[RecordCollector]:
    """Captures every log line at DEBUG and above from every logger while the test runs."""
    root = logging.getLogger()
    handler = RecordCollector()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
