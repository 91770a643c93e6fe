"""Transactional outbox: write events with the state change, publish them after commit, in order.

Writers call :func:`add_event` inside their transaction. A per-tenant transaction-scoped advisory lock taken
before the row gets its id makes a tenant's ids in that outbox follow commit order, so the relay, which publishes in id
order and stops at the first failure, never reorders a tenant's events. One relay per schema is active at a
time (a session advisory lock); the others stand by. A relay killed after publishing but before marking
rows republishes them on restart with the same ``Nats-Msg-Id``, which the stream's duplicate window drops
and consumers' inboxes absorb beyond it. A round's rows are marked by the next round's read, in the same
statement (or when the relay leaves), so a round costs one statement besides its publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg
from nats.js import JetStreamContext

from stella.contracts.envelope import Message
from stella.contracts.streams import HEADER_MSG_ID
from stella.kit import metrics, tracing
from stella.kit.db import sql_literal, sql_with_constants
from stella.kit.faults import is_transient
from stella.kit.naming import Names

log = logging.getLogger(__name__)

# Keyed by schema and tenant: ids need commit order only within one outbox table, and advisory locks are
# database-wide, so a key without the schema would make every service's writes for a tenant wait on each other.
_LOCK_KEY = "hashtextextended('stella.outbox:' || current_schema() || ':' || {tenant}::text, 0)"
_LOCK_TENANT = f"SELECT pg_advisory_xact_lock({_LOCK_KEY.format(tenant='$1')})"
# The same with the tenant written as a constant (``.format(tenant=...)`` with a UUID's text), for a statement
# sent in the simple protocol.
_LOCK_TENANT_CONSTANT = "SELECT pg_advisory_xact_lock(" + _LOCK_KEY.format(tenant="'{tenant}'::uuid") + ")"


# A message id names one message: writing it again (a deterministic id derived from what caused it, written
# by a retried or repeated handler) records nothing more. The row's tenant lock is taken in the same
# statement (re-entrant, so a second message of the tenant costs nothing more), before the row gets its id:
# the lock is in the FROM clause that produces the row (see ordered_insert_sql).
def ordered_insert_sql(
    message_id: str, tenant_id: str, subject: str, payload: str, headers: str, source: str | None = None
) -> str:
    """An ``INSERT INTO outbox`` of one row, or of a row for each row of ``source`` (a relation of the statement
    it goes in, a CTE), each taking its tenant's lock before it gets its id: the lock is in the ``FROM`` clause
    that produces the row, so one round trip records a message (a change and its message when it goes in
    that change's statement). The arguments are the SQL expressions (parameters, or columns of ``source``) of
    the row's values; ``headers`` is best :func:`message_headers`' text."""
    locked = f"(SELECT pg_advisory_xact_lock({_LOCK_KEY.format(tenant=f'({tenant_id})::uuid')})) AS locked"
    rows = f"{source}, LATERAL {locked}" if source is not None else locked
    return f"""
    INSERT INTO outbox (message_id, tenant_id, subject, payload, headers)
    SELECT ({message_id})::uuid, ({tenant_id})::uuid, ({subject})::text, ({payload})::text, ({headers})::text
      FROM {rows}
    ON CONFLICT (message_id) DO NOTHING"""


_INSERT = ordered_insert_sql("$1", "$2", "$3", "$4", "$5")
# Without the tenant's lock: for notes whose order against the tenant's other messages does not matter (see
# add_events' ``ordered``), so that writing one does not make the tenant's other writers wait for this commit.
_INSERT_UNORDERED = """
    INSERT INTO outbox (message_id, tenant_id, subject, payload, headers) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (message_id) DO NOTHING
"""
# A round marks what the round before it published and reads the next batch, in one statement. The read sees
# the snapshot taken before the mark, so the rows it marks are left out by id (not by a bound: ids of different
# tenants may commit out of order, so a smaller id can still be waiting).
_MARK_AND_READ = """
    WITH marked AS (UPDATE outbox SET published_at = now() WHERE id = ANY($2::bigint[]))
    SELECT id, message_id, subject, payload, headers
      FROM outbox
     WHERE published_at IS NULL AND id <> ALL($2::bigint[])
     ORDER BY id
     LIMIT $1
"""
_MARK = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
_PURGE = "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)"
_PURGE_INBOX = "DELETE FROM inbox WHERE handled_at < now() - make_interval(secs => $1)"

FAULT_ENV = "STELLA_FAULT"
"""Fault-injection switch for crash tests: ``relay.before_publish`` kills the process after an event was
committed but before it is published; ``relay.after_publish`` after it was published but before it is marked."""


@dataclass(frozen=True)
class OutboxMessage:
    """A message to publish that is not a contract message (a public event): its id, tenant, subject, bytes.

    Attributes:
        message_id: Its ``Nats-Msg-Id``.
        tenant_id: The tenant whose messages it is ordered with.
        subject: The contract subject it is published on.
        payload: Its body.
        headers: Headers of its own to publish with it.
    """

    message_id: UUID
    tenant_id: UUID
    subject: str
    payload: str
    headers: Mapping[str, str] | None = None


async def add_event(conn: asyncpg.Connection, subject: str, event: Message) -> None:
    """Record ``event`` (or a command for another service) for publication on ``subject`` in the open transaction."""
    await add_events(conn, [(subject, event)])


async def add_events(conn: asyncpg.Connection, events: Sequence[tuple[str, Message]], *, ordered: bool = True) -> None:
    """Record several events (in order) in the caller's open transaction; one already recorded is skipped.

    Args:
        conn: The connection of the state change's transaction.
        events: ``(subject, event)`` pairs.
        ordered: Whether the events must be published after every message of the tenant committed before
            them (the tenant's lock, held until the commit: the tenant's other writers wait for it). False for
            frequent notes ordered by the rows they describe (locked by the writer), whose place among the
            tenant's other messages does not matter: they are published at most one relay round out of
            commit order, still exactly once.
    """
    await add_messages(
        conn,
        [OutboxMessage(e.message_id, e.tenant_id, subject, e.model_dump_json()) for subject, e in events],
        ordered=ordered,
    )


async def add_messages(conn: asyncpg.Connection, messages: Sequence[OutboxMessage], *, ordered: bool = True) -> None:
    """Record messages (in order) in the caller's open transaction, with the trace context of the work in progress;
    one already recorded is skipped. ``ordered``: see :func:`add_events`."""
    if not messages:
        return
    if not conn.is_in_transaction():
        raise RuntimeError("outbox writes must happen inside the state change's transaction")
    deferred = _DEFERRED.get(id(conn))
    if deferred is not None:
        deferred.add(messages, ordered=ordered, trace=tracing.stored_context())
        return
    if not ordered:
        trace = tracing.stored_context()
        await conn.executemany(
            _INSERT_UNORDERED,
            [(m.message_id, m.tenant_id, m.subject, m.payload, _headers(m.headers, trace)) for m in messages],
        )
        return
    tenants = sorted({str(m.tenant_id) for m in messages})
    if len(tenants) > 1:
        # Several tenants: lock them in one order first, so two such writers cannot deadlock.
        for tenant in tenants:
            await conn.execute(_LOCK_TENANT, tenant)
    trace = tracing.stored_context()
    await conn.executemany(
        _INSERT,
        [(m.message_id, m.tenant_id, m.subject, m.payload, _headers(m.headers, trace)) for m in messages],
    )


class DeferredWrites:
    """What a transaction kept while :func:`deferring_writes` held its connection, to be written by the
    statement that commits it (:meth:`sql`): its last writes (:func:`write_at_commit`) and the outbox messages
    it recorded. They cost no round trip of their own, and the tenant's outbox lock is taken as the transaction
    ends instead of being held from the first message to the commit."""

    def __init__(self) -> None:
        self._statements: list[str] = []
        self._rows: list[tuple[OutboxMessage, bool, str | None]] = []

    def add_statement(self, statement: str) -> None:
        """Keep a write (one statement, its values written in) to run at the commit, before the messages."""
        self._statements.append(statement)

    def add(self, messages: Sequence[OutboxMessage], *, ordered: bool, trace: Mapping[str, str] | None) -> None:
        """Keep ``messages`` (in order) to write at the commit; ``ordered``: see :func:`add_events`."""
        self._rows.extend((m, ordered, _headers(m.headers, trace)) for m in messages)

    def sql(self) -> str:
        """Statements (simple protocol, values as constants): the kept writes in the order they were made, then
        the kept messages in order, each ordered one after its tenant's lock (tenants in one order, so two
        writers cannot deadlock); empty when nothing was kept."""
        statements = list(self._statements)
        if self._rows:
            tenants = sorted({str(UUID(str(m.tenant_id))) for m, ordered, _ in self._rows if ordered})
            statements += [_LOCK_TENANT_CONSTANT.format(tenant=tenant) for tenant in tenants]
            rows = ", ".join(
                f"('{UUID(str(m.message_id))}'::uuid, '{UUID(str(m.tenant_id))}'::uuid, {sql_literal(m.subject)}, "
                f"{sql_literal(m.payload)}, {sql_literal(headers) if headers is not None else 'NULL'})"
                for m, _, headers in self._rows
            )
            statements.append(
                f"INSERT INTO outbox (message_id, tenant_id, subject, payload, headers) VALUES {rows} "
                "ON CONFLICT (message_id) DO NOTHING"
            )
        return "; ".join(statements)


_DEFERRED: dict[int, DeferredWrites] = {}


@contextlib.contextmanager
def deferring_writes(conn: asyncpg.Connection) -> Iterator[DeferredWrites]:
    """While the block runs, what :func:`write_at_commit` and :func:`add_messages` are given on ``conn`` is
    kept, not written: the caller, who owns the transaction, writes it with :meth:`DeferredWrites.sql` in the
    statement that commits."""
    deferred = DeferredWrites()
    _DEFERRED[id(conn)] = deferred
    try:
        yield deferred
    finally:
        del _DEFERRED[id(conn)]


async def write_at_commit(conn: asyncpg.Connection, sql: str, args: Sequence[object], types: Sequence[str]) -> None:
    """Run the write ``sql`` with ``args`` (their SQL types ``types``, see :func:`stella.kit.db.sql_constant`)
    in the open transaction: in the statement that commits it when its owner defers the transaction's last
    writes (:func:`deferring_writes`; no round trip of its own, and locks the transaction holds are released
    one round trip sooner), else now.

    For the last write of a change only: nothing in the transaction may read what it writes, and what it
    returns is not known. A value Postgres refuses then fails the commit, which the transaction's owner
    reports as it would have reported the write failing (see :meth:`stella.kit.broker.CommandProcessor.run`);
    a value that cannot be written as its type (text holding a NUL, a str for an integer) raises
    ``asyncpg.DataError`` at once, as the connection's codec does.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("writes at commit must happen inside the state change's transaction")
    deferred = _DEFERRED.get(id(conn))
    if deferred is None:
        await conn.execute(sql, *args)
        return
    try:
        statement = sql_with_constants(sql, args, types)
    except ValueError as exc:
        # Refused as the connection's codec refuses a value it cannot send: a value Postgres cannot take.
        raise asyncpg.DataError(f"invalid input for the write kept for the commit: {exc}") from exc
    deferred.add_statement(statement)


def message_headers(own: Mapping[str, str] | None = None) -> str | None:
    """The stored headers of a message written now: ``own`` and the trace context of the work in progress."""
    return _headers(own, tracing.stored_context())


def _headers(own: Mapping[str, str] | None, trace: Mapping[str, str] | None) -> str | None:
    if not own and not trace:
        return None
    return json.dumps({**(own or {}), **(trace or {})}, separators=(",", ":"))


async def relay_connection(dsn: str, schema: str) -> asyncpg.Connection:
    """The relay's own connection to ``schema``'s outbox.

    Everything it writes may be lost in a crash of Postgres without harm: a mark lost means events published
    again (the stream's duplicate window and every consumer's inbox drop them), a purge lost is done again. So
    its commits do not wait for the WAL flush, which other commits pay for.

    Its few statements run for the life of the process against a table that grows from empty: a plan Postgres
    cached while the outbox was small (a sequential scan for the mark, say) would be kept until the table is
    analyzed, which nothing promises (autovacuum may be off or behind). Each execution is planned for the
    table as it is instead (a few tens of microseconds; measured: the mark took 5-9 ms per round with 18,000
    published rows and a stale plan, 0.8 ms planned afresh).
    """
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn,
        server_settings={
            "search_path": schema,
            "application_name": f"stella-relay-{schema}",
            "synchronous_commit": "off",
            "plan_cache_mode": "force_custom_plan",
        },
    )
    return conn


def _relay_lock_key(schema: str) -> int:
    return int.from_bytes(hashlib.sha256(f"stella.relay.{schema}".encode()).digest()[:8], "big", signed=True)


class OutboxRelay:
    """Publishes a schema's outbox to JetStream; survives restarts of itself, NATS and Postgres."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        js: JetStreamContext,
        *,
        names: Names | None = None,
        observers: Mapping[str, Callable[[str], None]] | None = None,
        batch_size: int = 200,
        poll_s: float = 1.0,
        retention_s: float = 24 * 3600,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.js = js
        self.names = names or Names()
        self.observers = observers or {}
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.retention_s = retention_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.published = 0
        self._unmarked: list[int] = []
        """Ids published and not yet marked: the next round marks them with its read (or :meth:`mark_published`)."""

    def start(self) -> None:
        """Run the relay in the background."""
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.schema}")

    async def stop(self) -> None:
        """Stop after the batch in flight."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        """Ask for a round now (after a local commit, or on NOTIFY)."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_transient(exc):
                    # Events stay in the outbox until the database and NATS answer again.
                    log.warning(
                        "outbox relay waits for a dependency", extra={"schema": self.schema, "error": repr(exc)}
                    )
                else:
                    log.exception("outbox relay failed; retrying", extra={"schema": self.schema})
                await asyncio.sleep(min(5.0, self.poll_s * 2))

    async def _lead(self) -> None:
        conn = await relay_connection(self.dsn, self.schema)
        try:
            # Only one relay per schema publishes, so ids are published strictly in order.
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _relay_lock_key(self.schema)):
                await asyncio.sleep(self.poll_s)
            await conn.add_listener(f"stella_outbox_{self.schema}", lambda *_: self._wake.set())
            rounds = 0
            while not self._stopping:
                self._wake.clear()
                sent = await self.publish_pending(conn)
                rounds += 1
                if rounds % 600 == 0:
                    await conn.execute(_PURGE, self.retention_s)
                    await conn.execute(_PURGE_INBOX, 7 * 24 * 3600.0)
                if sent >= self.batch_size:
                    continue  # more may be waiting
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()
        finally:
            # Leaving (stopped, or the connection failed): mark what went out, if the database still answers;
            # if not, the next leader publishes those rows again and the duplicate window and inboxes drop them.
            with contextlib.suppress(Exception):
                await self.mark_published(conn)
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    def _observe(self, subject: str, payload: str) -> None:
        """Tell the service an event went out (business metrics count published events, once each)."""
        observer = self.observers.get(subject)
        if observer is None:
            return
        try:
            observer(payload)
        except Exception:
            # A metric must never stop publication; the failure is logged with its traceback.
            log.exception("event observer failed", extra={"subject": subject})

    async def _publish(self, row: asyncpg.Record) -> None:
        subject = self.names.subject(row["subject"])
        headers = {HEADER_MSG_ID: str(row["message_id"])}
        if row["headers"] is None:
            await self.js.publish(subject, row["payload"].encode(), headers=headers, timeout=5)
            return
        stored: dict[str, str] = json.loads(row["headers"])
        headers.update(stored)
        with tracing.publish(row["subject"], self.schema, stored, headers):
            await self.js.publish(subject, row["payload"].encode(), headers=headers, timeout=5)

    async def publish_pending(self, conn: asyncpg.Connection) -> int:
        """Mark what the round before published and publish the next batch in id order; returns how many.

        What this round publishes is marked by the next round's read (one statement a round) or by
        :meth:`mark_published`. A crash in between publishes it again, like a crash between publish and mark.
        """
        rows = await conn.fetch(_MARK_AND_READ, self.batch_size, self._unmarked)
        self._unmarked = []
        fault = os.environ.get(FAULT_ENV)
        published = 0
        try:
            for row in rows:
                if fault == "relay.before_publish":
                    os._exit(137)  # crash test: committed, not yet published
                await self._publish(row)
                # Kept for the mark even when a later publish fails; the rest is retried in order.
                self._unmarked.append(row["id"])
                published += 1
                self._observe(row["subject"], row["payload"])
                if fault == "relay.after_publish":
                    os._exit(137)  # crash test: published, not yet marked
        finally:
            self.published += published
            metrics.outbox_published.labels(self.schema).inc(published)
        return published

    async def mark_published(self, conn: asyncpg.Connection) -> None:
        """Mark what was published and is not marked yet (the relay does it when it leaves)."""
        if self._unmarked:
            await conn.execute(_MARK, self._unmarked)
            self._unmarked = []
