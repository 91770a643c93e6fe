"""Fixtures of the kit's tests: a throwaway service runtime on real Postgres and NATS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from faststream.nats import NatsRouter

from stella.kit.service import ServiceRuntime
from stella.kit.settings import ServiceSettings

MIGRATIONS = Path(__file__).parent / "migrations"


@pytest_asyncio.fixture
async def kit_database(make_database: Callable[..., Awaitable[str]]) -> str:
    """A fresh database with the kit test schema."""
    return await make_database([("kittest", MIGRATIONS)])


@pytest.fixture
def settings(kit_database: str, nats_url: str, stella_namespace: str) -> ServiceSettings:
    """Settings with fast redelivery so retry tests stay quick."""
    return ServiceSettings(
        database_url=kit_database,
        nats_url=nats_url,
        nats_namespace=stella_namespace,
        max_deliver=3,
        redelivery_backoff_s=0.05,
        fault_retry_base_s=0.01,
        fault_retry_max_s=0.1,
        ack_wait_s=5,
        outbox_poll_s=0.2,
        db_pool_size=5,
    )


RuntimeFactory = Callable[[Callable[[ServiceRuntime, NatsRouter], None]], Awaitable[ServiceRuntime]]


@pytest_asyncio.fixture
async def start_runtime(settings: ServiceSettings) -> AsyncIterator[RuntimeFactory]:
    """Start a ``kittest`` service runtime with the given route registration; stopped after the test."""
    started: list[ServiceRuntime] = []

    async def start(register: Callable[[ServiceRuntime, NatsRouter], None]) -> ServiceRuntime:
        runtime = ServiceRuntime("kittest", settings, MIGRATIONS, register)
        await runtime.start()
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        await runtime.stop()
