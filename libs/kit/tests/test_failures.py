"""Failure classification against real NATS and Postgres: outages are waited out, refused values answered at
once, poison dead-lettered after its budget; dead letters are read by tenant and replayed with one effect."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import asyncpg
import pytest
from faststream.nats import NatsRouter
from nats.aio.client import Client
from prometheus_client import REGISTRY

from stella.contracts.envelope import Command, Event, Query, Reply
from stella.contracts.streams import COMMANDS, HEADER_REPLAY_OF, dead_letters_filter
from stella.kit.broker import CommandProcessor, CommandRoutes, EventRoutes, QueryRoutes, ServiceClient
from stella.kit.deadletters import DeadLetterStore
from stella.kit.embedded import free_port
from stella.kit.errors import TransientFault
from stella.kit.faults import Failure, classify
from stella.kit.outbox import add_event
from stella.kit.service import ServiceRuntime
from stella.testing.messaging import collect_messages

ADD = "stella.cmd.kitfault.add_item"
COUNT = "stella.cmd.kitfault.count_up"
LOOK = "stella.rpc.kitfault.look"
ADDED = "stella.evt.kitfault.item_added"
CONSUMER = "kitfault-commands"


class AddItem(Command):
    name: str


class CountUp(Command):
    value: int


class Look(Query):
    mode: str


class ItemAdded(Event):
    name: str


class Switches:
    """What the test's handlers do: fail while the database is 'away', fail like a bug while 'broken'."""

    def __init__(self) -> None:
        self.outage_tries = 0
        self.broken = False
        self.calls: list[str] = []


def _register(switches: Switches) -> Callable[[ServiceRuntime, NatsRouter], None]:
    dead_database = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        processor = CommandProcessor(lambda: runtime.pool, CONSUMER)

        async def add_item(cmd: AddItem) -> Reply:
            switches.calls.append(cmd.name)
            if switches.outage_tries > 0:
                switches.outage_tries -= 1
                # A real connection attempt to a database that is not there: what an outage raises.
                await asyncpg.connect(dead_database, timeout=2)
            if switches.broken:
                raise RuntimeError("a bug in the handler")

            async def execute(conn: asyncpg.Connection) -> object:
                row_id = await conn.fetchval(
                    "INSERT INTO items (tenant_id, name) VALUES ($1, $2) RETURNING id", cmd.tenant_id, cmd.name
                )
                await add_event(conn, ADDED, cmd.caused(ItemAdded, name=cmd.name))
                return {"id": row_id}

            return await processor.run(cmd, execute)

        async def count_up(cmd: CountUp) -> Reply:
            switches.calls.append(f"count:{cmd.value}")
            async with runtime.pool.acquire() as conn:
                # Outside the inbox on purpose: the kit itself answers the refused value.
                await conn.fetchval("SELECT $1::smallint", cmd.value)
            return Reply.success({"value": cmd.value})

        async def look(q: Look) -> Reply:
            if q.mode == "outage":
                raise TransientFault("the other service does not answer")
            if q.mode == "refused":
                async with runtime.pool.acquire() as conn:
                    await conn.fetchval("SELECT $1::text", "nul\x00byte")
            return Reply.success({"mode": q.mode})

        commands = CommandRoutes("kitfault", "kitfault")
        commands.on(ADD, AddItem, add_item)
        commands.on(COUNT, CountUp, count_up)
        commands.attach(router, runtime)
        queries = QueryRoutes("kitfault", "kitfault")
        queries.on(LOOK, Look, look)
        queries.attach(router, runtime)

    return register


def _ids(tenant: uuid.UUID | None = None) -> dict[str, uuid.UUID]:
    return {"tenant_id": tenant or uuid.uuid4(), "correlation_id": uuid.uuid4()}


async def _count(runtime: ServiceRuntime, name: str) -> int:
    async with runtime.pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM items WHERE name = $1", name)


async def _client(nats: Client, runtime: ServiceRuntime) -> ServiceClient:
    client = ServiceClient(nats, nats.jetstream(), names=runtime.names)
    await client.start()
    return client


def _dead_letters_total(consumer: str) -> float:
    return REGISTRY.get_sample_value("stella_dead_letters_total", {"consumer": consumer}) or 0.0


def test_failures_are_classified_by_what_they_say_about_the_message() -> None:
    assert classify(ConnectionRefusedError(111, "refused")) is Failure.TRANSIENT
    assert classify(asyncpg.exceptions.TooManyConnectionsError("too many")) is Failure.TRANSIENT
    assert classify(asyncpg.exceptions.SerializationError("could not serialize")) is Failure.TRANSIENT
    assert classify(asyncpg.exceptions.DeadlockDetectedError("deadlock")) is Failure.TRANSIENT
    assert classify(asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed")) is Failure.TRANSIENT
    assert classify(asyncpg.InterfaceError("another operation is in progress")) is Failure.POISON
    assert classify(asyncpg.exceptions.CharacterNotInRepertoireError("0x00")) is Failure.PERMANENT
    assert classify(asyncpg.exceptions.NumericValueOutOfRangeError("out of range")) is Failure.PERMANENT
    assert classify(asyncpg.exceptions.UniqueViolationError("duplicate")) is Failure.POISON
    assert classify(FileNotFoundError(2, "missing")) is Failure.POISON
    wrapped = RuntimeError("lost")
    wrapped.__cause__ = ConnectionResetError(104, "reset")
    assert classify(wrapped) is Failure.TRANSIENT
    assert classify(ValueError("a bug")) is Failure.POISON


async def test_an_outage_is_waited_out_without_spending_the_poison_budget(start_runtime, nats: Client) -> None:
    switches = Switches()
    runtime = await start_runtime(_register(switches))
    client = await _client(nats, runtime)
    # Far more failed tries than the poison budget (max_deliver) allows, all of them an unreachable database.
    switches.outage_tries = runtime.settings.max_deliver * 4
    dlq = runtime.names.subject(dead_letters_filter(CONSUMER))
    async with collect_messages(nats.jetstream(), dlq) as dead:
        reply = await client.command(ADD, AddItem(name="patient", **_ids()), timeout=30)
        assert reply.ok, reply
        with pytest.raises(TimeoutError):
            await dead.wait(1, timeout=0.5)
    assert switches.calls.count("patient") == runtime.settings.max_deliver * 4 + 1
    assert await _count(runtime, "patient") == 1
    # Held in place: JetStream delivered the message once.
    info = await nats.jetstream().consumer_info(runtime.names.stream(COMMANDS), CONSUMER)
    assert info.num_redelivered == 0
    await client.stop()


async def test_a_value_the_database_refuses_is_answered_400_at_once(start_runtime, nats: Client) -> None:
    switches = Switches()
    runtime = await start_runtime(_register(switches))
    client = await _client(nats, runtime)
    dlq = runtime.names.subject(dead_letters_filter(CONSUMER))
    async with collect_messages(nats.jetstream(), dlq) as dead:
        # Inside the command's transaction: the refusal is stored and answers a repeat.
        cmd = AddItem(name="nul\x00name", **_ids())
        reply = await client.command(ADD, cmd)
        assert not reply.ok
        assert reply.error is not None
        assert (reply.error.status, reply.error.code) == (400, "VAL_VALUE_REFUSED")
        assert await client.command(ADD, cmd, resend=True) == reply
        # Outside any transaction: the kit answers it.
        out_of_range = await client.command(COUNT, CountUp(value=70_000, **_ids()))
        assert out_of_range.error is not None
        assert (out_of_range.error.status, out_of_range.error.code) == (400, "VAL_VALUE_REFUSED")
        assert "70000" in out_of_range.error.detail
        with pytest.raises(TimeoutError):
            await dead.wait(1, timeout=0.5)
    # Each delivery was handled once, none retried (the second "nul" is the repeat, answered from the inbox).
    assert switches.calls == ["nul\x00name", "nul\x00name", "count:70000"]
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM items") == 0
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    await client.stop()


async def test_reads_answer_503_during_an_outage_and_400_for_a_refused_value(start_runtime, nats: Client) -> None:
    runtime = await start_runtime(_register(Switches()))
    client = await _client(nats, runtime)
    tenant = _ids()
    outage = await client.query(LOOK, Look(mode="outage", **tenant))
    assert outage.error is not None
    assert (outage.error.status, outage.error.code) == (503, "SYS_UNAVAILABLE")
    refused = await client.query(LOOK, Look(mode="refused", **tenant))
    assert refused.error is not None
    assert (refused.error.status, refused.error.code) == (400, "VAL_VALUE_REFUSED")
    assert (await client.query(LOOK, Look(mode="fine", **tenant))).ok
    await client.stop()


async def test_an_event_with_a_refused_value_is_dead_lettered_at_once(start_runtime, nats: Client) -> None:
    handled: list[str] = []

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        async def on_added(event: ItemAdded, conn: asyncpg.Connection) -> None:
            handled.append(event.name)
            await conn.execute("INSERT INTO items (tenant_id, name) VALUES ($1, $2)", event.tenant_id, event.name)

        routes = EventRoutes("kitfault", "copies", "stella.evt.kitfault.>", lambda: runtime.pool)
        routes.on(ADDED, ItemAdded, on_added)
        routes.attach(router, runtime)

    runtime = await start_runtime(register)
    event = ItemAdded(name="bad\x00name", **_ids())
    dlq = runtime.names.subject(dead_letters_filter("kitfault-copies", event.tenant_id))
    async with collect_messages(nats.jetstream(), dlq) as dead:
        await nats.jetstream().publish(runtime.names.subject(ADDED), event.model_dump_json().encode())
        [letter] = await dead.wait(1, timeout=10)
    assert handled == ["bad\x00name"]
    assert letter.headers is not None
    assert "CharacterNotInRepertoireError" in letter.headers["Stella-Error"]


async def test_poison_is_dead_lettered_after_its_budget_and_replayed_once_with_one_effect(
    start_runtime, nats: Client
) -> None:
    switches = Switches()
    runtime = await start_runtime(_register(switches))
    client = await _client(nats, runtime)
    store = DeadLetterStore(nats.jetstream(), runtime.names)
    tenant = uuid.uuid4()
    before = _dead_letters_total(CONSUMER)
    switches.broken = True
    cmd = AddItem(name="replayed", **_ids(tenant))
    dlq = runtime.names.subject(dead_letters_filter(CONSUMER))
    async with collect_messages(nats.jetstream(), dlq) as dead:
        reply = await client.command(ADD, cmd, timeout=20)
        await dead.wait(1, timeout=20)
    assert reply.error is not None
    assert reply.error.code == "SYS_COMMAND_FAILED"
    assert switches.calls.count("replayed") == runtime.settings.max_deliver
    assert _dead_letters_total(CONSUMER) == before + 1

    [letter] = await store.list(tenant)
    assert (letter.consumer, letter.subject, letter.message_id) == (CONSUMER, ADD, cmd.message_id)
    assert letter.deliveries == runtime.settings.max_deliver
    assert "a bug in the handler" in letter.error
    assert letter.payload_json()["name"] == "replayed"
    # Another tenant sees nothing of it and cannot replay it.
    other = uuid.uuid4()
    assert await store.list(other) == []
    assert await store.get(other, letter.id) is None
    assert await store.replay(other, letter.id) is None
    assert await _count(runtime, "replayed") == 0

    switches.broken = False
    async with collect_messages(nats.jetstream(), runtime.names.subject(ADD)) as republished:
        # Two replays at the same moment publish it once.
        first, second = await asyncio.gather(store.replay(tenant, letter.id), store.replay(tenant, letter.id))
        assert first is not None or second is not None
        # The stream holds the original command and one replay of it.
        original, again = await republished.wait(2, timeout=10)
        with pytest.raises(TimeoutError):
            await republished.wait(3, timeout=0.5)
    assert original.headers is not None
    assert HEADER_REPLAY_OF not in original.headers
    assert again.headers is not None
    assert again.headers[HEADER_REPLAY_OF].endswith(f":{letter.id}")
    assert AddItem.model_validate_json(again.data).message_id == cmd.message_id
    for _ in range(200):
        if await _count(runtime, "replayed") == 1:
            break
        await asyncio.sleep(0.05)
    assert await _count(runtime, "replayed") == 1
    # Replayed once: it is gone, a further replay finds nothing, and the effect stays one.
    assert await store.list(tenant) == []
    assert await store.replay(tenant, letter.id) is None
    assert await store.count(CONSUMER) == 0
    # The same command sent again (say a client's retry) is answered from the inbox: still one item.
    assert (await client.command(ADD, cmd, resend=True)).ok
    assert await _count(runtime, "replayed") == 1
    await client.stop()
