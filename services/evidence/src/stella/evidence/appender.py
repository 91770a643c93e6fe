"""Group commit of packet appends: the commands waiting to append are appended together, in one transaction.

A chain needs order, not one transaction per packet. Commands that append a packet are handled at once (up to
the consumer's ``max_in_flight``); each reads what it needs from other services first, then hands its packet
to the :class:`ChainAppender` and waits. The appender takes whatever is waiting (up to ``max_batch``) and
appends it in one transaction: the commands' inbox rows claimed in one statement, the chain lock of every
tenant in the batch taken in sorted order, the signing key read once, each chain's head read once (one query
for all), the packets built on it in arrival order, each signed in memory, and the packets, the outbox events
and the stored replies written in one round trip each. One commit (one WAL flush) then serves the batch, and
each command is answered and acknowledged after it. Events that append a packet (a promotion's decision
announced) join the same batches: their inbox rows, of their own consumer, are claimed with the commands'
(no reply is kept for an event), and each is acknowledged after the commit.

What is kept from one transaction per command:

* exactly one packet per source: a command already in the inbox (a redelivery) is not appended again and is
  answered with its stored reply; a source key that already made a packet, in the table or earlier in the
  same batch, yields that packet and no second one;
* a crash before the commit loses nothing: no command was acknowledged, JetStream redelivers them;
* a command the batch cannot append (a value Postgres refuses, a fault) does not block the others: the
  batch is rolled back and every command in it is handled alone, one after the other, through the one
  transaction per command path (:meth:`~stella.kit.broker.CommandProcessor.run`), with its replies, retries
  and dead letters unchanged;
* Merkle leaves are added by the packets' insert trigger in the same transaction, in sequence order.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from stella.contracts.envelope import Command, Message, Reply
from stella.evidence import repo
from stella.evidence.domain import StoredPacket
from stella.evidence.packet import ChainHead, CheckedContent, PacketType, build_packet, sign_packet
from stella.evidence.signing import ActiveSigner
from stella.kit import tracing
from stella.kit.broker import claim_inbox_many, store_replies
from stella.kit.outbox import OutboxMessage, add_messages

log = logging.getLogger(__name__)

Effects = Callable[[StoredPacket, bool], tuple[list[tuple[str, Message]], Any]]
"""Given the packet a command appended (or found) and whether it created it: the events to record with it in
the outbox, and the command's reply data."""


@dataclass(frozen=True)
class PacketRequest:
    """The packet a command appends, unless its source already made one."""

    packet_type: PacketType
    promotion_id: UUID | None
    content: CheckedContent
    """Checked by the handler that made the request (:func:`~stella.evidence.packet.check_content`), so the
    batch does not check it again."""
    source_key: str


@dataclass
class _Pending:
    message: Message
    """The command, or the event, that appends the packet (its tenant's chain, its inbox row)."""
    consumer: str
    """The inbox consumer that handles ``message``."""
    keeps_reply: bool
    """Whether the reply is stored with the inbox row (a command, answered again when repeated; not an event)."""
    request: PacketRequest
    effects: Effects
    alone: Callable[[], Coroutine[Any, Any, Reply]]
    done: asyncio.Future[Reply] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    """The handler's context (its trace span, its log fields): what the command's own work runs in."""
    trace: dict[str, str] | None = field(default_factory=tracing.stored_context)
    """The handler's trace context, kept with the command's outbox rows."""


@dataclass
class AppendStats:
    """What the appender did since it was built (for tests and benchmarks)."""

    batches: int = 0
    """Transactions that appended a batch."""
    packets: int = 0
    """Packets those transactions created."""
    largest: int = 0
    """Most commands in one batch."""
    alone: int = 0
    """Commands handled alone because their batch failed, or because they were a redelivery."""


class ChainAppender:
    """Appends the packets of waiting commands in batches, one transaction per batch.

    Args:
        pool: The service's pool.
        signer: The active signing key.
        consumer: The inbox consumer of the commands (that of their :class:`~stella.kit.broker.CommandProcessor`).
        clock: Returns the current UTC time.
        new_id: Returns a new packet id.
        max_batch: Most commands appended in one transaction; 1 appends each command alone (one transaction
            per command, as before group commit).
    """

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        signer: ActiveSigner,
        consumer: str,
        clock: Callable[[], datetime],
        new_id: Callable[[], UUID],
        *,
        max_batch: int = 256,
    ) -> None:
        self._pool = pool
        self.signer = signer
        self.consumer = consumer
        self.clock = clock
        self.new_id = new_id
        self.max_batch = max_batch
        self.stats = AppendStats()
        self.writing = 0
        """Commands in the batch being appended now."""
        self._waiting: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Commands waiting for the next batch."""
        return len(self._waiting)

    async def append(
        self,
        command: Command,
        request: PacketRequest,
        effects: Effects,
        alone: Callable[[], Coroutine[Any, Any, Reply]],
    ) -> Reply:
        """Append ``request``'s packet for ``command`` with the next batch, and return the command's reply.

        Args:
            command: The command (its tenant's chain, its inbox row).
            request: The packet.
            effects: The outbox events and reply data of the packet (see :data:`Effects`).
            alone: Handles the command in a transaction of its own; used when the batch cannot be appended,
                for a command already handled, and for every command when ``max_batch`` is 1.

        Raises:
            Exception: What ``alone`` raised, when the command had to be handled alone and failed.
        """
        return await self._enqueue(_Pending(command, self.consumer, True, request, effects, alone))

    async def append_event(
        self,
        event: Message,
        consumer: str,
        request: PacketRequest,
        effects: Effects,
        alone: Callable[[], Coroutine[Any, Any, Reply]],
    ) -> None:
        """Append ``request``'s packet for an event of inbox consumer ``consumer`` with the next batch.

        The event's inbox row is claimed in the batch's transaction (no reply is kept); ``alone`` handles the
        event in a transaction of its own (claiming the same row) when the batch cannot be appended, and for an
        event handled before, which it then leaves alone. Returns once the packet is committed.
        """
        await self._enqueue(_Pending(event, consumer, False, request, effects, alone))

    async def _enqueue(self, pending: _Pending) -> Reply:
        if self.max_batch <= 1:
            return await pending.alone()
        self._waiting.append(pending)
        if self._writer is None or self._writer.done():
            # In a context of its own: the batch is no one command's work, each outbox row carries its command's
            # trace, and a command handled alone runs in its handler's context.
            self._writer = asyncio.create_task(
                self._write(), name="evidence-chain-appender", context=contextvars.Context()
            )
        return await pending.done

    async def _write(self) -> None:
        """Append batches until nothing waits (the first command to arrive starts this; the last one ends it)."""
        batch: list[_Pending] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                self.writing = len(batch)
                try:
                    replies = await self._commit(batch)
                except Exception as exc:
                    # The batch is rolled back: each command alone, in order, so one that fails fails by itself.
                    log.info(
                        "a batch of packets could not be appended; appending its commands one at a time",
                        extra={"commands": len(batch), "error": f"{type(exc).__name__}: {exc}"},
                    )
                    replies = [None] * len(batch)
                for pending, reply in zip(batch, replies, strict=True):
                    if reply is None:
                        self.stats.alone += 1
                        await self._alone(pending)
                    elif not pending.done.done():
                        pending.done.set_result(reply)
                self.writing = 0
        finally:
            # Stopped (the service shuts down): no command waits for ever; none was acknowledged, all redeliver.
            for pending in [*batch, *self._waiting]:
                if not pending.done.done():
                    pending.done.cancel()
            self._waiting = []
            self.writing = 0

    @staticmethod
    async def _alone(pending: _Pending) -> None:
        try:
            reply = await asyncio.create_task(pending.alone(), context=pending.context)
        except Exception as exc:
            if not pending.done.done():
                pending.done.set_exception(exc)
        else:
            if not pending.done.done():
                pending.done.set_result(reply)

    async def _commit(self, batch: list[_Pending]) -> list[Reply | None]:
        """Append ``batch`` in one transaction; a command's reply, or None for one to handle alone afterwards."""
        replies: list[Reply | None] = [None] * len(batch)
        async with self._pool().acquire() as conn, conn.transaction():
            # Claimed in (consumer, id) order: two replicas' batches holding the same redelivered messages cannot
            # deadlock.
            wanted: dict[str, set[UUID]] = {}
            for pending in batch:
                wanted.setdefault(pending.consumer, set()).add(pending.message.message_id)
            claimed: set[tuple[str, UUID]] = set()
            for consumer in sorted(wanted):
                ids = await claim_inbox_many(conn, consumer, sorted(wanted[consumer]))
                claimed.update((consumer, message_id) for message_id in ids)
            fresh: list[int] = []
            for i, pending in enumerate(batch):
                # A message handled before (or named twice in the batch) is left to ``alone`` after the commit:
                # a command is answered from its stored reply, an event is dropped.
                key = (pending.consumer, pending.message.message_id)
                if key in claimed:
                    claimed.discard(key)
                    fresh.append(i)
            if not fresh:
                return replies
            tenants = await repo.lock_chains(conn, (batch[i].message.tenant_id for i in fresh))
            signer = await self.signer.current(conn)
            found = await repo.packets_by_source(
                conn, list({(batch[i].message.tenant_id, batch[i].request.source_key) for i in fresh})
            )
            heads = await repo.chain_heads(conn, tenants)
            now = self.clock()
            created: list[tuple[StoredPacket, str]] = []
            events: list[OutboxMessage] = []
            stored_replies: list[tuple[UUID, Reply]] = []
            for i in fresh:
                pending = batch[i]
                tenant, request = pending.message.tenant_id, pending.request
                source = (tenant, request.source_key)
                stored = found.get(source)
                if stored is None:
                    head, last_created_at = heads[tenant]
                    # As for one packet (Handlers._append): creation times never go backwards along a chain,
                    # nor before the signing key became valid.
                    created_at = max(now, last_created_at) if last_created_at is not None else now
                    created_at = max(created_at, self.signer.valid_from)
                    packet = build_packet(
                        packet_id=self.new_id(),
                        tenant_id=tenant,
                        packet_type=request.packet_type,
                        content=request.content,
                        head=head,
                        created_at=created_at,
                        signer_key_ref=signer.key_ref,
                        promotion_id=request.promotion_id,
                    )
                    stored = StoredPacket(packet=packet, envelope=sign_packet(packet, signer))
                    heads[tenant] = (ChainHead(sequence=packet.sequence, content_hash=packet.content_hash), created_at)
                    found[source] = stored
                    created.append((stored, request.source_key))
                    messages, data = pending.effects(stored, True)
                else:
                    messages, data = pending.effects(stored, False)
                events.extend(
                    OutboxMessage(e.message_id, e.tenant_id, subject, e.model_dump_json(), pending.trace)
                    for subject, e in messages
                )
                reply = Reply.success(data)
                if pending.keeps_reply:
                    stored_replies.append((pending.message.message_id, reply))
                replies[i] = reply
            await repo.insert_packets(conn, created)
            await add_messages(conn, events)
            await store_replies(conn, self.consumer, stored_replies)
        self.stats.batches += 1
        self.stats.packets += len(created)
        self.stats.largest = max(self.stats.largest, len(batch))
        return replies
