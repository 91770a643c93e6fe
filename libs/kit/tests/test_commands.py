"""The command path (``CommandProcessor.run``) statement by statement, on real Postgres: no savepoint on
success, and a business error that keeps its inbox row and reply while undoing the change."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from stella.contracts.envelope import Command, Event, Reply
from stella.contracts.streams import EVENTS
from stella.kit.broker import CommandProcessor, EventRoutes, delivery_attempt
from stella.kit.errors import Conflict, ServiceError
from stella.kit.outbox import add_event, write_at_commit
from stella.kit.service import ServiceRuntime

ADDED = "stella.evt.kittest.item_added"
CONSUMER = "kittest-commands"


class AddItem(Command):
    name: str


class ItemAdded(Event):
    name: str


class _Logged:
    """A pool whose connections note every statement they send."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.statements: list[str] = []

    def _note(self, record: Any) -> None:
        self.statements.append(" ".join(record.query.split()).upper())

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn:
            conn.add_query_logger(self._note)
            try:
                yield conn
            finally:
                conn.remove_query_logger(self._note)


def _noop(runtime: ServiceRuntime, router: Any) -> None:
    return None


def _command(name: str) -> AddItem:
    return AddItem(name=name, tenant_id=uuid.uuid4(), correlation_id=uuid.uuid4())


async def _stored(runtime: ServiceRuntime, command: Command) -> Any:
    async with runtime.pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT reply FROM inbox WHERE consumer = $1 AND message_id = $2", CONSUMER, command.message_id
        )


async def _counts(runtime: ServiceRuntime) -> tuple[int, int]:
    async with runtime.pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM items"), await conn.fetchval("SELECT count(*) FROM outbox")


def _adding(fail: Exception | None = None, runs: list[str] | None = None) -> Any:
    async def execute(conn: asyncpg.Connection) -> object:
        if runs is not None:
            runs.append("run")
        await conn.execute("INSERT INTO items (tenant_id, name) VALUES ($1, 'x')", uuid.uuid4())
        await add_event(conn, ADDED, ItemAdded(name="x", tenant_id=uuid.uuid4(), correlation_id=uuid.uuid4()))
        if fail is not None:
            raise fail
        return {"added": True}

    return execute


async def test_a_successful_command_is_one_transaction_without_a_savepoint(start_runtime) -> None:
    runtime = await start_runtime(_noop)
    logged = _Logged(runtime.pool)
    processor = CommandProcessor(lambda: logged, CONSUMER)
    command = _command("one")
    reply = await processor.run(command, _adding())
    assert reply == Reply.success({"added": True})
    assert not [s for s in logged.statements if "SAVEPOINT" in s]
    # Three round trips: the transaction opens with the claim, then the change, then its event is written, the
    # reply kept and the transaction committed together.
    assert len(logged.statements) == 3, logged.statements
    assert logged.statements[0].startswith("BEGIN; INSERT INTO INBOX")
    assert logged.statements[1].startswith("INSERT INTO ITEMS")
    last = logged.statements[-1]
    assert last.startswith("SELECT PG_ADVISORY_XACT_LOCK(") and last.endswith("; COMMIT")
    assert last.index("INSERT INTO OUTBOX") < last.index("UPDATE INBOX SET REPLY") < last.index("COMMIT")
    assert await _stored(runtime, command) == reply.model_dump(mode="json")
    assert await _counts(runtime) == (1, 1)


@pytest.mark.parametrize(
    "text",
    [
        "it's",
        "back\\slash \\' and \\n",
        "'); DROP TABLE items; --",
        "$$ $tag$ E'x' \"quoted\"",
        "snow \u2603, beyond the BMP \U0001f600, private use \ue000",
        "line\nbreak\ttab\u0001control",
    ],
)
async def test_a_reply_is_stored_as_it_was_given_whatever_its_text(start_runtime, text: str) -> None:
    runtime = await start_runtime(_noop)
    processor = CommandProcessor(lambda: runtime.pool, CONSUMER)
    command = _command("text")

    async def execute(conn: asyncpg.Connection) -> object:
        await conn.execute("INSERT INTO items (tenant_id, name) VALUES ($1, $2)", uuid.uuid4(), text)
        return {"text": text, text: [text]}

    reply = await processor.run(command, execute)
    assert reply == Reply.success({"text": text, text: [text]})
    assert await _stored(runtime, command) == reply.model_dump(mode="json")
    assert await _counts(runtime) == (1, 0)
    assert await processor.run(command, execute) == reply  # the repeat is answered from the stored reply
    assert await _counts(runtime) == (1, 0)
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT name FROM items") == text


async def test_a_command_whose_handler_ends_the_transaction_is_refused_and_leaves_nothing(start_runtime) -> None:
    runtime = await start_runtime(_noop)
    processor = CommandProcessor(lambda: runtime.pool, CONSUMER)
    command = _command("ends")

    async def execute(conn: asyncpg.Connection) -> object:
        await conn.execute("INSERT INTO items (tenant_id, name) VALUES ($1, 'z')", uuid.uuid4())
        await conn.execute("ROLLBACK")
        return None

    with pytest.raises(RuntimeError, match="ended by the code run in it"):
        await processor.run(command, execute)
    assert await _counts(runtime) == (0, 0)
    assert await _stored(runtime, command) is None


async def test_a_business_error_keeps_the_inbox_row_and_reply_and_undoes_the_change(start_runtime) -> None:
    runtime = await start_runtime(_noop)
    logged = _Logged(runtime.pool)
    processor = CommandProcessor(lambda: logged, CONSUMER)
    command = _command("taken")
    runs: list[str] = []
    reply = await processor.run(command, _adding(Conflict("name taken", code="RES_DUPLICATE_NAME"), runs))
    assert reply.error is not None and (reply.error.code, reply.error.status) == ("RES_DUPLICATE_NAME", 409)
    assert not [s for s in logged.statements if "SAVEPOINT" in s]
    # The item and its event are gone; the inbox row holds the refusal.
    assert await _counts(runtime) == (0, 0)
    assert await _stored(runtime, command) == reply.model_dump(mode="json")
    # A repeat is answered from the inbox without running again.
    again = await processor.run(command, _adding(runs=runs))
    assert again == reply
    assert runs == ["run"]
    assert await _counts(runtime) == (0, 0)


_ADD_AT_COMMIT = "INSERT INTO items (tenant_id, name, created_at) VALUES ($1, $2, $3)"


async def test_a_write_kept_for_the_commit_is_made_by_the_statement_that_commits(start_runtime) -> None:
    runtime = await start_runtime(_noop)
    logged = _Logged(runtime.pool)
    processor = CommandProcessor(lambda: logged, CONSUMER)
    command = _command("at commit")
    tenant, at = uuid.uuid4(), datetime(2026, 12, 6, 9, 30, 1, 123456, tzinfo=timezone(timedelta(hours=9)))

    async def execute(conn: asyncpg.Connection) -> object:
        await write_at_commit(conn, _ADD_AT_COMMIT, (tenant, "it's \\ kept", at), ("uuid", "text", "timestamptz"))
        # Not made yet: nothing in the transaction may read it.
        assert await conn.fetchval("SELECT count(*) FROM items") == 0
        await add_event(conn, ADDED, ItemAdded(name="x", tenant_id=tenant, correlation_id=uuid.uuid4()))
        return {"kept": True}

    reply = await processor.run(command, execute)
    assert reply == Reply.success({"kept": True})
    # The claim, the read above, then the kept write, the event, the reply and the commit in one message.
    assert len(logged.statements) == 3, logged.statements
    last = logged.statements[-1]
    assert last.startswith("INSERT INTO ITEMS") and last.endswith("; COMMIT")
    assert last.index("INSERT INTO ITEMS") < last.index("INSERT INTO OUTBOX") < last.index("UPDATE INBOX SET REPLY")
    async with runtime.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT tenant_id, name, created_at FROM items")
    assert (row["tenant_id"], row["name"], row["created_at"]) == (tenant, "it's \\ kept", at)
    assert await _counts(runtime) == (1, 1)
    assert await _stored(runtime, command) == reply.model_dump(mode="json")


async def _refused_in_a_statement(conn: asyncpg.Connection) -> None:
    await conn.execute("INSERT INTO items (tenant_id, name) VALUES ($1, $2)", uuid.uuid4(), "a\x00b")


async def _refused_by_postgres_at_the_commit(conn: asyncpg.Connection) -> None:
    # Text that is no UUID: refused only when the commit makes the write.
    await write_at_commit(conn, _ADD_AT_COMMIT, ("not a uuid", "z", datetime.now(UTC)), ("uuid", "text", "timestamptz"))


async def _refused_before_it_is_kept(conn: asyncpg.Connection) -> None:
    # A NUL cannot be written as a constant, as the codec cannot send it.
    await write_at_commit(
        conn, _ADD_AT_COMMIT, (uuid.uuid4(), "a\x00b", datetime.now(UTC)), ("uuid", "text", "timestamptz")
    )


@pytest.mark.parametrize(
    "refuse",
    [_refused_in_a_statement, _refused_by_postgres_at_the_commit, _refused_before_it_is_kept],
    ids=["in a statement", "by postgres at the commit", "before it is kept"],
)
async def test_a_value_postgres_refuses_is_a_stored_business_error(start_runtime, refuse: Any) -> None:
    runtime = await start_runtime(_noop)
    processor = CommandProcessor(lambda: runtime.pool, CONSUMER)
    command = _command("bad")

    async def execute(conn: asyncpg.Connection) -> object:
        await conn.execute("INSERT INTO items (tenant_id, name) VALUES ($1, 'y')", uuid.uuid4())
        await add_event(conn, ADDED, ItemAdded(name="x", tenant_id=uuid.uuid4(), correlation_id=uuid.uuid4()))
        await refuse(conn)
        return {"kept": True}

    reply = await processor.run(command, execute)
    assert reply.error is not None and (reply.error.code, reply.error.status) == ("VAL_VALUE_REFUSED", 400)
    # The whole change is undone; the reply is stored and answers a repeat.
    assert await _counts(runtime) == (0, 0)
    assert await _stored(runtime, command) == reply.model_dump(mode="json")
    assert await processor.run(command, execute) == reply
    assert await _counts(runtime) == (0, 0)


async def test_a_write_at_commit_outside_a_deferring_transaction_is_made_at_once(start_runtime) -> None:
    runtime = await start_runtime(_noop)
    async with runtime.pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside the state change's transaction"):
            await write_at_commit(conn, _ADD_AT_COMMIT, (uuid.uuid4(), "a", None), ("uuid", "text", "timestamptz"))
        async with conn.transaction():
            at = datetime.now(UTC)
            await write_at_commit(conn, _ADD_AT_COMMIT, (uuid.uuid4(), "a", at), ("uuid", "text", "timestamptz"))
            assert await conn.fetchval("SELECT created_at FROM items") == at


async def test_a_5xx_reply_and_a_fault_store_nothing_so_a_repeat_runs_again(start_runtime) -> None:
    runtime = await start_runtime(_noop)
    processor = CommandProcessor(lambda: runtime.pool, CONSUMER)
    command = _command("later")
    runs: list[str] = []
    unavailable = ServiceError("the release service did not answer", code="SYS_UNAVAILABLE", status=503)
    reply = await processor.run(command, _adding(unavailable, runs))
    assert reply.error is not None and reply.error.status == 503
    assert await _stored(runtime, command) is None
    with pytest.raises(RuntimeError):
        await processor.run(command, _adding(RuntimeError("a fault"), runs))
    assert await _stored(runtime, command) is None
    assert await _counts(runtime) == (0, 0)
    reply = await processor.run(command, _adding(runs=runs))
    assert reply.ok and runs == ["run", "run", "run"]
    assert await _counts(runtime) == (1, 1)


@pytest.mark.parametrize("batch_size", [1, 8])
async def test_an_event_the_consumer_does_not_handle_is_acked_without_a_transaction(
    start_runtime, nats, batch_size: int
) -> None:
    handled: list[str] = []
    logged: list[_Logged] = []

    def register(runtime: ServiceRuntime, router: Any) -> None:
        logged.append(_Logged(runtime.pool))

        async def on_added(event: ItemAdded, conn: asyncpg.Connection) -> None:
            handled.append(event.name)

        routes = EventRoutes("kittest", "skips", "stella.evt.kittest.>", lambda: logged[0], batch_size=batch_size)
        routes.on(ADDED, ItemAdded, on_added)
        routes.attach(router, runtime)

    runtime = await start_runtime(register)
    js = nats.jetstream()
    stream = runtime.names.stream(EVENTS)

    async def settled() -> None:
        for _ in range(200):
            info = await js.consumer_info(stream, "kittest-skips")
            if (info.num_ack_pending, info.num_pending) == (0, 0):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"events left unacknowledged: {info}")

    other = ItemAdded(name="other", tenant_id=uuid.uuid4(), correlation_id=uuid.uuid4())
    for _ in range(3):
        await js.publish(runtime.names.subject("stella.evt.kittest.something_else"), other.model_dump_json().encode())
    await settled()
    assert not logged[0].statements  # acknowledged without a connection
    marker = ItemAdded(name="marker", tenant_id=uuid.uuid4(), correlation_id=uuid.uuid4())
    await js.publish(runtime.names.subject(ADDED), marker.model_dump_json().encode())
    await settled()
    assert handled == ["marker"]
    # One transaction, the handled event's, opened by its claim.
    begun = [s for s in logged[0].statements if s.startswith("BEGIN")]
    assert len(begun) == 1 and begun[0].startswith("BEGIN; INSERT INTO INBOX"), logged[0].statements


async def test_a_commands_messages_are_written_as_it_commits_so_its_handler_holds_no_lock_of_the_tenant(
    start_runtime,
) -> None:
    runtime = await start_runtime(_noop)
    processor = CommandProcessor(lambda: runtime.pool, CONSUMER)
    tenant = uuid.uuid4()
    recorded, go_on = asyncio.Event(), asyncio.Event()

    def added(name: str) -> ItemAdded:
        return ItemAdded(name=name, tenant_id=tenant, correlation_id=uuid.uuid4())

    async def execute(conn: asyncpg.Connection) -> object:
        await add_event(conn, ADDED, added("slow"))
        recorded.set()
        await go_on.wait()
        return None

    command = AddItem(name="slow", tenant_id=tenant, correlation_id=uuid.uuid4())
    running = asyncio.create_task(processor.run(command, execute))
    await asyncio.wait_for(recorded.wait(), timeout=10)
    # Another writer of the tenant's ordered messages commits while the handler is still running.
    async with asyncio.timeout(5), runtime.pool.acquire() as conn, conn.transaction():
        await add_event(conn, ADDED, added("other"))
    go_on.set()
    assert (await running).ok
    async with runtime.pool.acquire() as conn:
        names = [r["name"] for r in await conn.fetch("SELECT payload::json->>'name' AS name FROM outbox ORDER BY id")]
    assert names == ["other", "slow"]  # ids in commit order


async def test_a_first_delivery_of_a_command_that_only_reads_first_is_not_looked_up_twice(start_runtime) -> None:
    """``seen(only_reads_before_run=True)`` asks the inbox about a redelivery, or outside a delivery, but not on
    a first delivery: ``run`` answers a repeat from the inbox all the same, with the stored reply."""
    runtime = await start_runtime(_noop)
    logged = _Logged(runtime.pool)
    processor = CommandProcessor(lambda: logged, CONSUMER)
    command = _command("once")

    async def execute(conn: asyncpg.Connection) -> object:
        await conn.execute("INSERT INTO items (tenant_id, name) VALUES ($1, $2)", uuid.uuid4(), "once")
        return {"done": True}

    reply = await processor.run(command, execute)
    for attempt, asked in ((None, True), (2, True), (1, False)):
        token = delivery_attempt.set(attempt)
        try:
            logged.statements.clear()
            stored = await processor.seen(command, only_reads_before_run=True)
            assert (stored == reply, bool(logged.statements)) == (asked, asked), attempt
            assert await processor.seen(command) == reply  # without the flag the inbox is always asked
            assert await processor.run(command, execute) == reply  # the repeat is answered, nothing run again
        finally:
            delivery_attempt.reset(token)
    assert await _counts(runtime) == (1, 0)
    fresh = _command("new")
    token = delivery_attempt.set(1)
    try:
        logged.statements.clear()
        assert await processor.seen(fresh, only_reads_before_run=True) is None
        assert logged.statements == []
    finally:
        delivery_attempt.reset(token)
