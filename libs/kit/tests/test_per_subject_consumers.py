"""Event consumers split per subject: only handled events are delivered, and a wildcard consumer is retired."""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import pytest
from faststream.nats import NatsRouter
from nats.aio.client import Client
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from stella.contracts.envelope import Event
from stella.contracts.streams import EVENTS
from stella.kit.broker import EventRoutes, claim_inbox, consumer_config, declare_streams
from stella.kit.naming import Names
from stella.kit.service import ServiceRuntime
from stella.kit.settings import ServiceSettings

ADDED = "stella.evt.kittest.item_added"
REMOVED = "stella.evt.kittest.item_removed"
OTHER = "stella.evt.kittest.item_viewed"


class ItemEvent(Event):
    name: str


def _event(name: str) -> bytes:
    return ItemEvent(name=name, tenant_id=uuid.uuid4(), correlation_id=uuid.uuid4()).model_dump_json().encode()


def _register(seen: list[tuple[str, str]]):
    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        def handler(kind: str):
            async def handle(event: ItemEvent, conn: asyncpg.Connection) -> None:
                seen.append((kind, event.name))
                await conn.execute("INSERT INTO items (tenant_id, name) VALUES ($1, $2)", event.tenant_id, event.name)

            return handle

        routes = EventRoutes("kittest", "items", "stella.evt.kittest.>", lambda: runtime.pool, per_subject=True)
        routes.on(ADDED, ItemEvent, handler("added"))
        routes.on(REMOVED, ItemEvent, handler("removed"))
        routes.attach(router, runtime)

    return register


async def _wait_for(seen: list[tuple[str, str]], wanted: set[tuple[str, str]], timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if wanted <= set(seen):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not handled: {wanted - set(seen)}; handled {seen}")


async def test_each_handled_subject_has_its_own_consumer_and_nothing_else_is_delivered(
    start_runtime, nats: Client
) -> None:
    seen: list[tuple[str, str]] = []
    runtime = await start_runtime(_register(seen))
    js = nats.jetstream()
    for i in range(5):
        await js.publish(runtime.names.subject(OTHER), _event(f"viewed-{i}"))
    await js.publish(runtime.names.subject(ADDED), _event("a"))
    await js.publish(runtime.names.subject(REMOVED), _event("r"))
    await _wait_for(seen, {("added", "a"), ("removed", "r")})

    stream = runtime.names.stream(EVENTS)
    added = await js.consumer_info(stream, "kittest-items-item-added")
    removed = await js.consumer_info(stream, "kittest-items-item-removed")
    assert added.config.filter_subject == runtime.names.subject(ADDED)
    assert removed.config.filter_subject == runtime.names.subject(REMOVED)
    # Each consumer was handed its own event only: the five others never left the server.
    assert added.delivered.consumer_seq == 1 and removed.delivered.consumer_seq == 1
    assert seen.count(("added", "a")) == 1 and seen.count(("removed", "r")) == 1
    with pytest.raises(NotFoundError):
        await js.consumer_info(stream, "kittest-items")


def test_an_ordered_batch_consumer_cannot_be_split() -> None:
    with pytest.raises(ValueError, match="cannot be split"):
        EventRoutes("kittest", "items", "stella.evt.kittest.>", lambda: None, batch_size=8, per_subject=True)


async def test_a_wildcard_consumer_of_an_earlier_version_is_retired_without_losing_or_repeating_events(
    start_runtime, nats: Client, settings: ServiceSettings, caplog: pytest.LogCaptureFixture
) -> None:
    names = Names(settings.nats_namespace)
    js = nats.jetstream()
    await declare_streams(js, names)
    stream = names.stream(EVENTS)
    # The consumer an earlier version made: one wildcard filter, named after the logical consumer.
    old = consumer_config("kittest-items", names.subject("stella.evt.kittest.>"), settings)
    await js.add_consumer(stream, old)
    assert old.deliver_policy == DeliverPolicy.ALL
    await js.publish(names.subject(ADDED), _event("handled-before"))
    await js.publish(names.subject(OTHER), _event("viewed"))
    # The earlier version handled and acknowledged the first event, then stopped.
    pull = await js.pull_subscribe_bind("kittest-items", stream)
    [first] = await pull.fetch(1, timeout=5)
    await first.ack_sync()
    await pull.unsubscribe()
    floor = (await js.consumer_info(stream, "kittest-items")).ack_floor.stream_seq
    # Published while no version ran: the new consumers must not miss them.
    await js.publish(names.subject(ADDED), _event("waiting"))
    await js.publish(names.subject(REMOVED), _event("waiting-removal"))

    seen: list[tuple[str, str]] = []
    with caplog.at_level(logging.INFO, logger="stella.kit.broker"):
        runtime = await start_runtime(_register(seen))
    await _wait_for(seen, {("added", "waiting"), ("removed", "waiting-removal")})
    assert ("added", "handled-before") not in seen  # acknowledged by the consumer it retired
    assert any(r.getMessage() == "durable consumer retired" for r in caplog.records)
    with pytest.raises(NotFoundError):
        await js.consumer_info(stream, "kittest-items")
    for name in ("kittest-items-item-added", "kittest-items-item-removed"):
        info = await js.consumer_info(stream, name)
        assert info.config.deliver_policy == DeliverPolicy.BY_START_SEQUENCE
        assert info.config.opt_start_seq == floor + 1

    # A second replica (or a restart) keeps where the consumers start and warns of nothing.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stella.kit.broker"):
        await start_runtime(_register(seen))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
    info = await js.consumer_info(stream, "kittest-items-item-added")
    assert info.config.opt_start_seq == floor + 1
    await js.publish(runtime.names.subject(ADDED), _event("after"))
    await _wait_for(seen, {("added", "after")})
    await asyncio.sleep(0.3)
    assert sorted(seen) == sorted([("added", "waiting"), ("removed", "waiting-removal"), ("added", "after")])


async def test_a_handler_that_owns_its_transaction_gets_what_was_prepared_and_its_event_is_acked_after_it(
    start_runtime, nats: Client
) -> None:
    calls: list[tuple[str, str, bool]] = []

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        routes = EventRoutes("kittest", "owned", "stella.evt.kittest.>", lambda: runtime.pool, per_subject=True)

        async def prepare(event: ItemEvent) -> str:
            return event.name.upper()

        async def handle(event: ItemEvent, prepared: str) -> None:
            # Its own transaction, the inbox row of the route's consumer claimed in it.
            async with runtime.pool.acquire() as conn, conn.transaction():
                claimed = await claim_inbox(conn, routes.consumer, event.message_id)
                if claimed:
                    await conn.execute("INSERT INTO items (tenant_id, name) VALUES ($1, $2)", event.tenant_id, prepared)
            calls.append((event.name, prepared, claimed))

        routes.on_owned(ADDED, ItemEvent, prepare, handle)
        routes.attach(router, runtime)

    runtime = await start_runtime(register)
    js = nats.jetstream()
    event = ItemEvent(name="owned", tenant_id=uuid.uuid4(), correlation_id=uuid.uuid4())
    await js.publish(runtime.names.subject(ADDED), event.model_dump_json().encode())
    # The same event again, past the stream's duplicate window: its inbox row makes it a no-op.
    await js.publish(runtime.names.subject(ADDED), event.model_dump_json().encode())
    for _ in range(300):
        if len(calls) == 2:
            break
        await asyncio.sleep(0.05)
    # One delivery claims and inserts, the other finds the claim (either may report first: the second waits
    # on the first's inbox row and both resume at its commit).
    assert sorted(calls) == [("owned", "OWNED", False), ("owned", "OWNED", True)]
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM items WHERE name = 'OWNED'") == 1
    info = await js.consumer_info(runtime.names.stream(EVENTS), "kittest-owned-item-added")
    for _ in range(100):
        if info.num_ack_pending == 0 and info.num_pending == 0:
            break
        await asyncio.sleep(0.05)
        info = await js.consumer_info(runtime.names.stream(EVENTS), "kittest-owned-item-added")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


def test_an_ordered_batch_consumer_cannot_take_a_handler_that_owns_its_transaction() -> None:
    routes = EventRoutes("kittest", "items", "stella.evt.kittest.>", lambda: None, batch_size=8)

    async def handle(event: ItemEvent, prepared: None) -> None:
        return None

    async def prepare(event: ItemEvent) -> None:
        return None

    with pytest.raises(ValueError, match="its own transaction"):
        routes.on_owned(ADDED, ItemEvent, prepare, handle)
