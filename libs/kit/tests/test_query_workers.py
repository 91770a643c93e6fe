"""Queries answered at once by one replica: the routes' own number, or the service's ``query_workers`` setting."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from faststream.nats import NatsRouter
from nats.aio.client import Client

from stella.contracts.envelope import Query, Reply
from stella.kit.broker import QueryRoutes, ServiceClient
from stella.kit.service import ServiceRuntime
from stella.kit.settings import ServiceSettings

MIGRATIONS = Path(__file__).parent / "migrations"
WAIT = "stella.rpc.kitworkers.wait"


class Wait(Query):
    n: int


class Gauge:
    """How many queries are inside the handler now, and the most there were at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.answered: list[int] = []


def _register(gauge: Gauge, workers: int) -> Callable[[ServiceRuntime, NatsRouter], None]:
    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        async def wait(q: Wait) -> Reply:
            gauge.inside += 1
            gauge.most = max(gauge.most, gauge.inside)
            try:
                # Long enough that every query sent together arrives while the first ones are still inside.
                await asyncio.sleep(0.3)
            finally:
                gauge.inside -= 1
            gauge.answered.append(q.n)
            return Reply.success({"n": q.n})

        queries = QueryRoutes("kitworkers", "kitworkers", workers=workers)
        queries.on(WAIT, Wait, wait)
        queries.attach(router, runtime)

    return register


async def _ask_together(nats: Client, runtime: ServiceRuntime, count: int) -> list[Reply]:
    client = ServiceClient(nats, nats.jetstream(), names=runtime.names)
    await client.start()
    try:
        tenant = {"tenant_id": uuid.uuid4(), "correlation_id": uuid.uuid4()}
        return await asyncio.gather(*(client.query(WAIT, Wait(n=i, **tenant), timeout=10) for i in range(count)))
    finally:
        await client.stop()


@pytest.mark.parametrize(("setting", "routes", "expected"), [(None, 2, 2), (3, 1, 3), (1, 8, 1)])
async def test_a_replica_answers_as_many_queries_at_once_as_its_setting_or_its_routes_say(
    settings: ServiceSettings, nats: Client, setting: int | None, routes: int, expected: int
) -> None:
    gauge = Gauge()
    configured = settings.model_copy(update={"query_workers": setting})
    runtime = ServiceRuntime("kittest", configured, MIGRATIONS, _register(gauge, routes))
    await runtime.start()
    try:
        replies = await _ask_together(nats, runtime, 6)
    finally:
        await runtime.stop()
    assert [r.ok for r in replies] == [True] * 6, [r.error for r in replies]
    assert sorted(gauge.answered) == list(range(6))
    assert gauge.most == expected


def test_the_query_workers_setting_is_read_per_service_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    class Settings(ServiceSettings):
        model_config = ServiceSettings.model_config | {"env_prefix": "STELLA_KITWORKERS_"}

    monkeypatch.setenv("STELLA_KITWORKERS_QUERY_WORKERS", "12")
    assert Settings().query_workers == 12
    monkeypatch.setenv("STELLA_KITWORKERS_QUERY_WORKERS", "0")
    with pytest.raises(ValueError, match="query_workers"):
        Settings()
    monkeypatch.delenv("STELLA_KITWORKERS_QUERY_WORKERS")
    assert Settings().query_workers is None
