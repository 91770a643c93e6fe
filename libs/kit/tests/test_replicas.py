"""Two replicas of one service on one schema and one NATS namespace: the work is shared, each effect happens
once, and when the replica whose relay publishes goes away the other one takes over in order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from nats.aio.client import Client

from stella.kit.service import ServiceRuntime
from stella.testing.messaging import collect_messages

from .test_broker import ADD, ADDED, AddItem, ItemAdded, _client, _register_items


async def test_two_replicas_share_commands_and_the_relay_fails_over(start_runtime, nats: Client) -> None:
    calls_a: list[str] = []
    calls_b: list[str] = []
    first = await start_runtime(_register_items(calls_a))
    second = await start_runtime(_register_items(calls_b))
    client = await _client(nats, first)
    tenant = {"tenant_id": uuid.uuid4(), "correlation_id": uuid.uuid4()}
    try:
        async with collect_messages(nats.jetstream(), first.names.subject(ADDED)) as published:
            before = [AddItem(name=f"before-{i}", **tenant) for i in range(30)]
            replies = await asyncio.gather(*(client.command(ADD, cmd) for cmd in before))
            assert all(reply.ok for reply in replies), replies
            events = await published.wait(30, timeout=30)
            # One shared durable consumer: every command handled by exactly one replica.
            assert sorted(calls_a + calls_b) == sorted(cmd.name for cmd in before)
            # One relay publishes a tenant's events, in commit order.
            assert [ItemAdded.model_validate_json(m.data).name for m in events] == [
                ItemAdded.model_validate_json(m.data).name
                for m in sorted(events, key=lambda m: m.metadata.sequence.stream)
            ]

            leader, standby = (first, second) if _published(first) else (second, first)
            await _eventually(lambda: _published(leader) == 30)
            assert _published(standby) == 0
            await leader.stop()
            if leader is first:
                await client.stop()
                client = await _client(nats, standby)

            after = [AddItem(name=f"after-{i}", **tenant) for i in range(10)]
            for cmd in after:
                assert (await client.command(ADD, cmd, timeout=30)).ok
            events = await published.wait(40, timeout=30)
        assert [ItemAdded.model_validate_json(m.data).name for m in events[30:]] == [cmd.name for cmd in after]
        await _eventually(lambda: _published(standby) == 10)
        async with standby.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM items WHERE tenant_id = $1", tenant["tenant_id"]) == 40
    finally:
        await client.stop()


def _published(runtime: ServiceRuntime) -> int:
    assert runtime.relay is not None
    return runtime.relay.published


async def _eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    """The relay counts an event once it marked it, a moment after subscribers received it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
