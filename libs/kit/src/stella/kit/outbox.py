"""Transactional outbox: write events with the state change, publish them after commit, in order.

Writers call :func:`add_event` inside their transaction. A per-tenant transaction-scoped advisory lock taken
before the row gets its id makes a tenant's ids follow commit order, so the relay, which publishes in id
order and stops at the first failure, never reorders a tenant's events. One relay per schema is active at a
time (a session advisory lock); the others stand by. A relay killed after publishing but before marking
rows republishes them on restart with the same ``Nats-Msg-Id``, which the stream's duplicate window drops
and consumers' inboxes absorb beyond it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import asyncpg
from nats.js import JetStreamContext

from stella.contracts.envelope import Message
from stella.contracts.streams import HEADER_MSG_ID
from stella.kit import metrics
from stella.kit.faults import is_transient
from stella.kit.naming import Names

log = logging.getLogger(__name__)

_LOCK_TENANT = "SELECT pg_advisory_xact_lock(hashtextextended('stella.outbox:' || $1::text, 0))"
# A message id names one message: writing it again (a deterministic id derived from what caused it, written
# by a retried or repeated handler) records nothing more.
_INSERT = """
    INSERT INTO outbox (message_id, tenant_id, subject, payload) VALUES ($1, $2, $3, $4)
    ON CONFLICT (message_id) DO NOTHING
"""
_PENDING = """
    SELECT id, message_id, subject, payload
      FROM outbox
     WHERE published_at IS NULL
     ORDER BY id
     LIMIT $1
"""
_MARK = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
_PURGE = "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)"
_PURGE_INBOX = "DELETE FROM inbox WHERE handled_at < now() - make_interval(secs => $1)"

FAULT_ENV = "STELLA_FAULT"
"""Fault-injection switch for crash tests: ``relay.before_publish`` kills the process after an event was
committed but before it is published; ``relay.after_publish`` after it was published but before it is marked."""


async def add_event(conn: asyncpg.Connection, subject: str, event: Message) -> None:
    """Record ``event`` (or a command for another service) for publication on ``subject`` in the open transaction."""
    await add_events(conn, [(subject, event)])


async def add_events(conn: asyncpg.Connection, events: Sequence[tuple[str, Message]]) -> None:
    """Record several events (in order) in the caller's open transaction; one already recorded is skipped."""
    if not events:
        return
    if not conn.is_in_transaction():
        raise RuntimeError("outbox writes must happen inside the state change's transaction")
    for tenant in sorted({str(e.tenant_id) for _, e in events}):
        await conn.execute(_LOCK_TENANT, tenant)
    await conn.executemany(
        _INSERT,
        [(e.message_id, e.tenant_id, subject, e.model_dump_json()) for subject, e in events],
    )


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
        conn: asyncpg.Connection = await asyncpg.connect(
            self.dsn,
            server_settings={"search_path": self.schema, "application_name": f"stella-relay-{self.schema}"},
        )
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

    async def publish_pending(self, conn: asyncpg.Connection) -> int:
        """Publish one batch in id order; returns how many were published and marked."""
        rows = await conn.fetch(_PENDING, self.batch_size)
        done: list[int] = []
        try:
            fault = os.environ.get(FAULT_ENV)
            for row in rows:
                if fault == "relay.before_publish":
                    os._exit(137)  # crash test: committed, not yet published
                await self.js.publish(
                    self.names.subject(row["subject"]),
                    row["payload"].encode(),
                    headers={HEADER_MSG_ID: str(row["message_id"])},
                    timeout=5,
                )
                done.append(row["id"])
                self._observe(row["subject"], row["payload"])
                if fault == "relay.after_publish":
                    os._exit(137)  # crash test: published, not yet marked
        finally:
            # Mark what went out even when a later publish failed; the rest is retried in order.
            if done:
                await conn.execute(_MARK, done)
                self.published += len(done)
                metrics.outbox_published.labels(self.schema).inc(len(done))
        return len(done)
