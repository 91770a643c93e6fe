"""Delivery guarantees against real NATS and Postgres: one effect per message, bounded retries, dead letters."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import ClassVar

import asyncpg
import pytest
from faststream.nats import NatsRouter
from nats import connect as nats_connect
from nats.aio.client import Client
from nats.js import JetStreamContext

from stella.contracts.envelope import Command, ErrorDetail, Event, Reply
from stella.contracts.streams import (
    EVENTS,
    HEADER_CONSUMER,
    HEADER_DELIVERIES,
    HEADER_ERROR,
    HEADER_MSG_ID,
    dead_letters_filter,
)
from stella.kit.broker import (
    CommandProcessor,
    CommandRoutes,
    EventRoutes,
    OrderedBatchConsumer,
    ServiceClient,
    consumer_config,
    declare_streams,
    delivery_attempt,
    takes_many_filters,
)
from stella.kit.embedded import EmbeddedNats
from stella.kit.errors import Conflict
from stella.kit.naming import Names
from stella.kit.outbox import OutboxRelay, add_event, add_events
from stella.kit.service import ServiceRuntime
from stella.kit.settings import ServiceSettings
from stella.testing.messaging import collect_messages

MIGRATIONS = Path(__file__).parent / "migrations"
ADD = "stella.cmd.kittest.add_item"
BREAK = "stella.cmd.kittest.always_fail"
ADDED = "stella.evt.kittest.item_added"


class AddItem(Command):
    name: str


class AlwaysFail(Command):
    reason: str = "boom"


class ItemAdded(Event):
    name: str


def _register_items(calls: list[str], attempts: list[int | None] | None = None):
    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        processor = CommandProcessor(lambda: runtime.pool, "kittest-commands")

        async def add_item(cmd: AddItem) -> Reply:
            calls.append(cmd.name)
            if attempts is not None:
                attempts.append(delivery_attempt.get())
                # Nothing but reads before run(): a first delivery is not looked up in the inbox here.
                if (stored := await processor.seen(cmd, only_reads_before_run=True)) is not None:
                    return stored

            async def execute(conn: asyncpg.Connection) -> object:
                if cmd.name == "taken":
                    raise Conflict("name taken", code="RES_DUPLICATE_NAME")
                row_id = await conn.fetchval(
                    "INSERT INTO items (tenant_id, name) VALUES ($1, $2) RETURNING id", cmd.tenant_id, cmd.name
                )
                await add_event(conn, ADDED, cmd.caused(ItemAdded, name=cmd.name))
                return {"id": row_id}

            return await processor.run(cmd, execute)

        async def always_fail(cmd: AlwaysFail) -> Reply:
            calls.append("fail")
            raise RuntimeError(cmd.reason)

        routes = CommandRoutes("kittest", "kittest")
        routes.on(ADD, AddItem, add_item)
        routes.on(BREAK, AlwaysFail, always_fail)
        routes.attach(router, runtime)

    return register


def _ids() -> dict[str, uuid.UUID]:
    return {"tenant_id": uuid.uuid4(), "correlation_id": uuid.uuid4()}


async def _client(nats: Client, runtime: ServiceRuntime) -> ServiceClient:
    client = ServiceClient(nats, nats.jetstream(), names=runtime.names)
    await client.start()
    return client


async def _count(runtime: ServiceRuntime, name: str) -> int:
    async with runtime.pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM items WHERE name = $1", name)


async def test_command_delivered_twice_has_one_effect_and_the_same_reply(start_runtime, nats: Client) -> None:
    calls: list[str] = []
    attempts: list[int | None] = []
    runtime = await start_runtime(_register_items(calls, attempts))
    client = await _client(nats, runtime)
    cmd = AddItem(name="one", **_ids())
    first = await client.command(ADD, cmd)
    assert first.ok
    # The same command again, past JetStream's duplicate window (another Nats-Msg-Id): the inbox answers.
    reply_to = f"_INBOX.again.{uuid.uuid4().hex}"
    sub = await nats.subscribe(reply_to, max_msgs=1)
    await nats.jetstream().publish(
        runtime.names.subject(ADD),
        cmd.model_dump_json().encode(),
        headers={HEADER_MSG_ID: "other-id", "Stella-Reply-To": reply_to},
    )
    second = Reply.model_validate_json((await sub.next_msg(timeout=10)).data)
    assert second == first
    assert await _count(runtime, "one") == 1
    assert attempts == [1, 1]  # both first deliveries: the repeat was answered by run() from the inbox
    await client.stop()


async def test_business_error_is_a_reply_that_changes_nothing(start_runtime, nats: Client) -> None:
    runtime = await start_runtime(_register_items([]))
    client = await _client(nats, runtime)
    reply = await client.command(ADD, AddItem(name="taken", **_ids()))
    assert not reply.ok
    assert reply.error is not None
    assert (reply.error.code, reply.error.status) == ("RES_DUPLICATE_NAME", 409)
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM items") == 0
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    await client.stop()


async def test_always_failing_message_is_dead_lettered_and_blocks_nothing(start_runtime, nats: Client) -> None:
    calls: list[str] = []
    runtime = await start_runtime(_register_items(calls))
    client = await _client(nats, runtime)
    dlq = runtime.names.subject(dead_letters_filter("kittest-commands"))
    async with collect_messages(nats.jetstream(), dlq) as dead:
        failing = asyncio.create_task(client.command(BREAK, AlwaysFail(reason="disk on fire", **_ids()), timeout=20))
        # Others keep flowing while the poison one is retried.
        for i in range(5):
            assert (await client.command(ADD, AddItem(name=f"ok-{i}", **_ids()))).ok
        [letter] = await dead.wait(1, timeout=20)
        reply = await failing
    assert calls.count("fail") == runtime.settings.max_deliver
    assert letter.headers is not None
    assert letter.headers[HEADER_CONSUMER] == "kittest-commands"
    assert letter.headers[HEADER_DELIVERIES] == str(runtime.settings.max_deliver)
    assert "disk on fire" in letter.headers[HEADER_ERROR]
    assert AlwaysFail.model_validate_json(letter.data).reason == "disk on fire"
    assert not reply.ok
    assert reply.error == ErrorDetail(
        code="SYS_COMMAND_FAILED",
        status=500,
        title="The command could not be handled",
        detail=reply.error.detail,
    )
    await client.stop()


async def test_unparseable_message_is_dead_lettered_at_once(start_runtime, nats: Client) -> None:
    calls: list[str] = []
    runtime = await start_runtime(_register_items(calls))
    dlq = runtime.names.subject(dead_letters_filter("kittest-commands"))
    async with collect_messages(nats.jetstream(), dlq) as dead:
        await nats.jetstream().publish(runtime.names.subject(ADD), b'{"name": 42}')
        [letter] = await dead.wait(1, timeout=10)
    assert letter.headers is not None
    assert letter.headers[HEADER_DELIVERIES] == "1"
    assert letter.headers[HEADER_ERROR].startswith("unprocessable")
    assert calls == []


async def test_event_consumer_handles_a_redelivered_event_once(start_runtime, nats: Client) -> None:
    seen: list[str] = []

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        async def on_added(event: ItemAdded, conn: asyncpg.Connection) -> None:
            seen.append(event.name)
            await conn.execute(
                "INSERT INTO items (tenant_id, name) VALUES ($1, $2)", event.tenant_id, "copy-" + event.name
            )

        routes = EventRoutes("kittest", "copies", "stella.evt.kittest.>", lambda: runtime.pool)
        routes.on(ADDED, ItemAdded, on_added)
        routes.attach(router, runtime)

    runtime = await start_runtime(register)
    event = ItemAdded(name="x", **_ids())
    js = nats.jetstream()
    # An event this consumer does not handle is acknowledged and skipped, not dead-lettered.
    await js.publish(runtime.names.subject("stella.evt.kittest.something_else"), b"{}")
    for msg_id in ("a", "b"):  # two publications of the same event, different Nats-Msg-Id
        await js.publish(
            runtime.names.subject(ADDED), event.model_dump_json().encode(), headers={HEADER_MSG_ID: msg_id}
        )
    marker = ItemAdded(name="marker", **_ids())
    await js.publish(runtime.names.subject(ADDED), marker.model_dump_json().encode())
    for _ in range(200):
        if await _count(runtime, "copy-marker") == 1:
            break
        await asyncio.sleep(0.05)
    assert await _count(runtime, "copy-x") == 1
    assert seen.count("x") <= 2


async def test_relay_publishes_each_event_once_with_its_message_id(start_runtime, nats: Client) -> None:
    runtime = await start_runtime(_register_items([]))
    client = await _client(nats, runtime)
    async with collect_messages(nats.jetstream(), runtime.names.subject(ADDED)) as published:
        cmds = [AddItem(name=f"e{i}", **_ids()) for i in range(20)]
        for cmd in cmds:
            assert (await client.command(ADD, cmd)).ok
        msgs = await published.wait(20, timeout=15)
    assert [ItemAdded.model_validate_json(m.data).name for m in msgs] == [c.name for c in cmds]
    assert all(
        m.headers and m.headers[HEADER_MSG_ID] == str(ItemAdded.model_validate_json(m.data).message_id) for m in msgs
    )
    await client.stop()


class _Ordered(Event):
    n: int
    SCHEMA_VERSION: ClassVar[int] = 1


async def test_a_tenants_events_are_published_in_commit_order(start_runtime, nats: Client) -> None:
    """A transaction that wrote first but commits last must not have its event published first."""
    runtime = await start_runtime(lambda runtime, router: None)
    # Hold publication until both transactions are done, the case where reading in id order could reorder.
    assert runtime.relay is not None
    await runtime.relay.stop()
    tenant = uuid.uuid4()
    committed: list[int] = []
    first_inserted = asyncio.Event()

    async def slow() -> None:
        async with runtime.pool.acquire() as conn:
            async with conn.transaction():
                await add_event(conn, ADDED, _Ordered(n=1, tenant_id=tenant, correlation_id=uuid.uuid4()))
                first_inserted.set()
                await asyncio.sleep(0.5)
            committed.append(1)

    async def fast() -> None:
        await first_inserted.wait()
        async with runtime.pool.acquire() as conn:
            async with conn.transaction():
                await add_event(conn, ADDED, _Ordered(n=2, tenant_id=tenant, correlation_id=uuid.uuid4()))
            committed.append(2)

    async with collect_messages(nats.jetstream(), runtime.names.subject(ADDED)) as published:
        await asyncio.gather(slow(), fast())
        relay = OutboxRelay(runtime.settings.database_url, runtime.schema, runtime.js, names=runtime.names, poll_s=0.1)
        relay.start()
        msgs = await published.wait(2, timeout=10)
        await relay.stop()
    assert [_Ordered.model_validate_json(m.data).n for m in msgs] == committed


async def test_a_relay_round_marks_what_the_round_before_published_and_never_reads_it_again(
    start_runtime, nats: Client
) -> None:
    """The relay marks a round's published rows with the next round's read (one statement a round): the rows it
    marks are not read and published again by that same statement, those of another tenant committed in
    between are, and what is left is marked on demand and when the relay leaves."""
    runtime = await start_runtime(lambda runtime, router: None)
    assert runtime.relay is not None
    await runtime.relay.stop()

    async def write(n: int, tenant: uuid.UUID) -> None:
        async with runtime.pool.acquire() as conn, conn.transaction():
            await add_event(conn, ADDED, _Ordered(n=n, tenant_id=tenant, correlation_id=uuid.uuid4()))

    async def unpublished() -> int:
        return await runtime.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")

    first, second = uuid.uuid4(), uuid.uuid4()
    relay = OutboxRelay(runtime.settings.database_url, runtime.schema, runtime.js, names=runtime.names)
    conn = await asyncpg.connect(runtime.settings.database_url, server_settings={"search_path": runtime.schema})
    try:
        async with collect_messages(nats.jetstream(), runtime.names.subject(ADDED)) as published:
            for n in (1, 2, 3):
                await write(n, first)
            assert await relay.publish_pending(conn) == 3
            assert await unpublished() == 3  # published, marked by the next round
            await write(4, second)
            await write(5, first)
            assert await relay.publish_pending(conn) == 2
            assert await unpublished() == 2
            assert await relay.publish_pending(conn) == 0
            assert await unpublished() == 0
            await write(6, second)
            assert await relay.publish_pending(conn) == 1
            assert await unpublished() == 1
            await relay.mark_published(conn)
            assert await unpublished() == 0
            msgs = await published.wait(6, timeout=10)
            await asyncio.sleep(0.3)
            assert len(published.messages) == 6
    finally:
        await conn.close()
    assert [_Ordered.model_validate_json(m.data).n for m in msgs] == [1, 2, 3, 4, 5, 6]

    # The relay's own loop: what it published is marked when it leaves.
    await write(7, first)
    relay = OutboxRelay(runtime.settings.database_url, runtime.schema, runtime.js, names=runtime.names, poll_s=30.0)
    async with collect_messages(nats.jetstream(), runtime.names.subject(ADDED)) as published:
        relay.start()
        msgs = await published.wait(7, timeout=10)  # the stream's six, then the seventh
        assert await unpublished() == 1  # the next round (30 s away) would mark it
        await relay.stop()
    assert await unpublished() == 0
    assert _Ordered.model_validate_json(msgs[-1].data).n == 7


async def test_an_unordered_note_does_not_wait_for_the_tenants_open_transaction(start_runtime, nats: Client) -> None:
    """A note written with ``ordered=False`` commits while another transaction holds the tenant's lock, and is
    published once like any event (an ordered one would wait for that transaction's commit)."""
    runtime = await start_runtime(lambda runtime, router: None)
    tenant = uuid.uuid4()
    async with collect_messages(nats.jetstream(), runtime.names.subject(ADDED)) as published:
        async with runtime.pool.acquire() as holder, holder.transaction():
            await add_event(holder, ADDED, _Ordered(n=1, tenant_id=tenant, correlation_id=uuid.uuid4()))
            async with runtime.pool.acquire() as conn, asyncio.timeout(5), conn.transaction():
                note = _Ordered(n=2, tenant_id=tenant, correlation_id=uuid.uuid4())
                await add_events(conn, [(ADDED, note)], ordered=False)
            [first] = await published.wait(1, timeout=10)  # published while the tenant's lock is still held
        await published.wait(2, timeout=10)
        await asyncio.sleep(0.3)
    assert _Ordered.model_validate_json(first.data).n == 2
    assert sorted(_Ordered.model_validate_json(m.data).n for m in published.messages) == [1, 2]


def test_names_map_subjects_into_a_namespace_and_back() -> None:
    names = Names("blue")
    assert names.subject(ADD) == "stella.blue.cmd.kittest.add_item"
    assert names.local("stella.blue.cmd.kittest.add_item") == ADD
    assert Names().subject(ADD) == ADD


async def test_a_batched_event_consumer_keeps_stream_order_and_one_effect_per_event(
    start_runtime, settings, nats: Client
) -> None:
    """Events waiting when the consumer starts come in batches: handled in order, a repeat once (in its batch or
    a later one), poison aside."""
    seen: list[str] = []
    js = nats.jetstream()
    names = Names(settings.nats_namespace)
    await declare_streams(js, names)
    events = [ItemAdded(name=f"e{i}", **_ids()) for i in range(40)]
    published: list[tuple[str, bytes]] = []
    for i, event in enumerate(events):
        published.append((f"m{i}", event.model_dump_json().encode()))
        if i == 10:
            published.append(("repeat", event.model_dump_json().encode()))  # the same event once more
        if i == 20:
            published.append(("poison", b'{"name": 42}'))
        if i == 30:
            # An event handled in an earlier batch, again: its batch goes one event at a time.
            published.append(("repeat-later", events[2].model_dump_json().encode()))
    for msg_id, data in published:
        await js.publish(names.subject(ADDED), data, headers={HEADER_MSG_ID: msg_id})

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        async def on_added(event: ItemAdded, conn: asyncpg.Connection) -> None:
            seen.append(event.name)
            await conn.execute("INSERT INTO items (tenant_id, name) VALUES ($1, $2)", event.tenant_id, event.name)

        routes = EventRoutes("kittest", "ordered", "stella.evt.kittest.>", lambda: runtime.pool, batch_size=16)
        routes.on(ADDED, ItemAdded, on_added)
        routes.attach(router, runtime)

    dlq = names.subject(dead_letters_filter("kittest-ordered"))
    async with collect_messages(js, dlq) as dead:
        runtime = await start_runtime(register)
        [letter] = await dead.wait(1, timeout=15)
        for _ in range(200):
            if await _count(runtime, "e39") == 1:
                break
            await asyncio.sleep(0.05)
    assert letter.headers is not None and letter.headers[HEADER_ERROR].startswith("unprocessable")
    async with runtime.pool.acquire() as conn:
        stored = [r["name"] for r in await conn.fetch("SELECT name FROM items ORDER BY id")]
    assert stored == [e.name for e in events]  # each once, in stream order
    # Handlers of a failed batch ran and were rolled back; what committed is the order above.
    assert set(seen) == {e.name for e in events}
    # Everything is acknowledged (acks follow the commit, so they may still be on their way).
    for _ in range(100):
        info = await js.consumer_info(names.stream(EVENTS), "kittest-ordered")
        if info.num_ack_pending == 0 and info.num_pending == 0:
            break
        await asyncio.sleep(0.05)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


OTHER = "stella.evt.kittest.item_renamed"


def _ordered_items(runtime: ServiceRuntime, router: NatsRouter) -> None:
    """An ordered batch consumer (``kittest-ordered``, 8 a batch) storing each added item."""

    async def on_added(event: ItemAdded, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO items (tenant_id, name) VALUES ($1, $2)", event.tenant_id, event.name)

    routes = EventRoutes("kittest", "ordered", "stella.evt.kittest.>", lambda: runtime.pool, batch_size=8)
    routes.on(ADDED, ItemAdded, on_added)
    routes.attach(router, runtime)


async def test_an_ordered_consumer_is_delivered_only_the_events_it_handles_by_a_server_that_filters_many_subjects(
    settings: ServiceSettings, nats: Client
) -> None:
    """On NATS 2.10 and later an ordered batch consumer is filtered on its routed subjects: the server does not
    deliver the other events under its wildcard (the events service's projection handled 8 of the 19 events a
    promotion publishes and fetched and acknowledged the rest). A consumer made with the wildcard by an earlier
    version is narrowed where it stands. On an older server (2.9 takes one filter) the wildcard stays."""
    server = EmbeddedNats().start()
    try:
        modern = settings.model_copy(update={"nats_url": server.url})
        names = Names(modern.nats_namespace)
        client = await nats_connect(server.url)
        js = client.jetstream()
        await declare_streams(js, names)
        # The consumer as an earlier version made it: the wildcard alone.
        await js.add_consumer(
            names.stream(EVENTS), consumer_config("kittest-ordered", names.subject("stella.evt.kittest.>"), modern)
        )
        handled = [ItemAdded(name=f"f{i}", **_ids()) for i in range(3)]
        for i, event in enumerate(handled):
            for subject, message in ((OTHER, ItemAdded(name=f"other{i}", **_ids())), (ADDED, event)):
                await js.publish(
                    names.subject(subject),
                    message.model_dump_json().encode(),
                    headers={HEADER_MSG_ID: str(message.message_id)},
                )

        runtime = ServiceRuntime("kittest", modern, MIGRATIONS, _ordered_items)
        await runtime.start()
        try:
            for _ in range(200):
                if await _count(runtime, "f2") == 1:
                    break
                await asyncio.sleep(0.05)
            async with runtime.pool.acquire() as conn:
                stored = [r["name"] for r in await conn.fetch("SELECT name FROM items ORDER BY id")]
            assert stored == ["f0", "f1", "f2"]
            info = await js.consumer_info(names.stream(EVENTS), "kittest-ordered")
            assert info.config.filter_subjects == [names.subject(ADDED)]
            assert info.delivered.consumer_seq == 3  # the three it handles, not the six under the wildcard
            assert info.num_pending == 0
        finally:
            await runtime.stop()
            await client.close()
    finally:
        server.stop()
    if takes_many_filters(nats):
        return  # the session's server is no older than the embedded one
    # The session's older server keeps the one wildcard filter.
    session = ServiceRuntime("kittest", settings, MIGRATIONS, _ordered_items)
    await session.start()
    try:
        info = await nats.jetstream().consumer_info(session.names.stream(EVENTS), "kittest-ordered")
        assert info.config.filter_subject == session.names.subject("stella.evt.kittest.>")
        assert not info.config.filter_subjects
    finally:
        await session.stop()


async def test_a_batched_event_consumer_outlives_an_empty_fetch_and_a_batch_that_fails_outside_its_handlers(
    start_runtime, settings, nats: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch may end with no message (its pull request expired on the server, or a status answered it), and a
    batch may fail outside the handlers: the consumer goes on fetching, and every event is handled once, in order.

    Before, an empty fetch raised in the batch's timing and ended the consumer's task without a word: a
    service's projection stopped after a quiet minute until it was restarted.
    """
    js = nats.jetstream()
    names = Names(settings.nats_namespace)
    await declare_streams(js, names)
    fetches: list[int] = []
    real_fetch = JetStreamContext.PullSubscription.fetch

    async def fetch(self: JetStreamContext.PullSubscription, batch: int = 1, timeout: float | None = 5) -> list:
        fetches.append(batch)
        if len(fetches) <= 2:
            await asyncio.sleep(0.05)
            return []  # what nats-py returns when the server ends a pull request without a message
        return await real_fetch(self, batch, timeout)

    monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", fetch)
    failed: list[int] = []
    real_handle = OrderedBatchConsumer.handle

    async def handle(self: OrderedBatchConsumer, msgs: list) -> None:
        if msgs and not failed:
            failed.append(len(msgs))
            raise RuntimeError("the batch failed outside its handlers")
        await real_handle(self, msgs)

    monkeypatch.setattr(OrderedBatchConsumer, "handle", handle)

    runtime = await start_runtime(_ordered_items)
    for _ in range(100):
        if len(fetches) > 2:
            break
        await asyncio.sleep(0.05)
    assert len(fetches) > 2  # the consumer fetched again after two empty fetches
    events = [ItemAdded(name=f"q{i}", **_ids()) for i in range(12)]
    for event in events:
        await js.publish(
            names.subject(ADDED), event.model_dump_json().encode(), headers={HEADER_MSG_ID: f"{event.message_id}"}
        )
    for _ in range(300):
        if await _count(runtime, "q11") == 1:
            break
        await asyncio.sleep(0.05)
    assert failed  # a batch failed, and its events came again
    async with runtime.pool.acquire() as conn:
        stored = [r["name"] for r in await conn.fetch("SELECT name FROM items WHERE name LIKE 'q%' ORDER BY id")]
    assert stored == [e.name for e in events]  # each once, in stream order
