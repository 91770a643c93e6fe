"""The tenants' Merkle trees in the database: roots, proofs and signed checkpoints.

The leaves and perfect subtrees are written by the ``packets_add_leaf`` trigger (migration 003) in the
transaction that inserts the packet, whatever inserted it; this module only reads them. Each root or proof
costs one query: the perfect subtrees it needs are named first (:mod:`stella.evidence.merkle`), then fetched
together.

The :class:`Checkpointer` signs a checkpoint of every tree that grew since its newest checkpoint: every
``checkpoint_interval_s`` (so the newest packet is covered within that time), and on demand before an export.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import aiohttp
import asyncpg

from stella.evidence import merkle
from stella.evidence.checkpoint import Checkpoint, origin_for, sign_checkpoint
from stella.evidence.merkle import Node, Range
from stella.evidence.signing import ActiveSigner
from stella.evidence.timestamp import (
    QUERY_MEDIA_TYPE,
    TimestampError,
    check_token,
    timestamp_request,
    token_from_reply,
)

log = logging.getLogger(__name__)

TREE_SIZE = "SELECT size FROM trees WHERE tenant_id = $1"
NODES = """
    SELECT n.level, n.idx, n.hash
      FROM unnest($2::smallint[], $3::bigint[]) AS w(level, idx)
      JOIN merkle_nodes n ON n.tenant_id = $1 AND n.level = w.level AND n.idx = w.idx
"""
LATEST_CHECKPOINT = """
    SELECT c.tree_size, c.root_hash, c.note, c.key_ref, c.created_at, t.token
      FROM checkpoints c LEFT JOIN checkpoint_timestamps t USING (tenant_id, tree_size)
     WHERE c.tenant_id = $1 ORDER BY c.tree_size DESC LIMIT 1
"""
CHECKPOINT_AT = """
    SELECT c.tree_size, c.root_hash, c.note, c.key_ref, c.created_at, t.token
      FROM checkpoints c LEFT JOIN checkpoint_timestamps t USING (tenant_id, tree_size)
     WHERE c.tenant_id = $1 AND c.tree_size = $2
"""
INSERT_TIMESTAMP = """
    INSERT INTO checkpoint_timestamps (tenant_id, tree_size, token, tsa_url, created_at)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (tenant_id, tree_size) DO NOTHING
"""
GROWN_TREES = """
    SELECT t.tenant_id, t.size FROM trees t
     WHERE t.size > COALESCE((SELECT max(c.tree_size) FROM checkpoints c WHERE c.tenant_id = t.tenant_id), 0)
     ORDER BY t.tenant_id
     LIMIT $1
"""
INSERT_CHECKPOINT = """
    INSERT INTO checkpoints (tenant_id, tree_size, root_hash, note, key_ref, created_at)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (tenant_id, tree_size) DO NOTHING
"""


class TreeIncomplete(RuntimeError):
    """A subtree the tree's size implies is missing from ``merkle_nodes`` (the table was tampered with)."""


@dataclass(frozen=True)
class StoredCheckpoint:
    """A signed checkpoint as stored.

    Attributes:
        tree_size: Packets it covers.
        root_hash: Root of those packets' tree.
        note: The signed note.
        key_ref: The key that signed it.
        created_at: When it was signed.
        timestamp: The RFC 3161 token of a time-stamping authority over the note, if one was obtained.
    """

    tree_size: int
    root_hash: bytes
    note: str
    key_ref: str
    created_at: datetime
    timestamp: bytes | None = None


def _checkpoint(row: asyncpg.Record | None) -> StoredCheckpoint | None:
    if row is None:
        return None
    token = row["token"]
    return StoredCheckpoint(
        row["tree_size"],
        bytes(row["root_hash"]),
        row["note"],
        row["key_ref"],
        row["created_at"],
        None if token is None else bytes(token),
    )


class TimestampAuthority:
    """An RFC 3161 time-stamping authority reached over HTTP (``STELLA_EVIDENCE_TSA_URL``).

    Args:
        url: Where requests are POSTed (``application/timestamp-query``); configured by the operator, never
            taken from a request.
        timeout_s: Seconds a request may take.
    """

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    async def timestamp(self, data: bytes) -> bytes:
        """Ask for a token over ``data``'s SHA-256 and return it (DER ``TimeStampToken``).

        Raises:
            TimestampError: The TSA answered no usable token, or one over other data or for another request.
            aiohttp.ClientError, TimeoutError: The TSA could not be reached in time.
        """
        nonce = secrets.randbits(63)
        query = timestamp_request(data, nonce)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(self.url, data=query, headers={"Content-Type": QUERY_MEDIA_TYPE}) as response,
        ):
            body = await response.read()
            if response.status != 200:
                raise TimestampError(f"the TSA answered HTTP {response.status}")
        token = token_from_reply(body)
        check_token(token, data, nonce)
        return token


async def tree_size(conn: asyncpg.Connection, tenant_id: UUID) -> int:
    """Number of leaves (packets) in the tenant's tree."""
    return int(await conn.fetchval(TREE_SIZE, tenant_id) or 0)


async def fetch_nodes(conn: asyncpg.Connection, tenant_id: UUID, nodes: Iterable[Node]) -> dict[Node, bytes]:
    """The stored hashes of ``nodes``, in one query.

    Raises:
        TreeIncomplete: When one of them is not stored.
    """
    wanted = sorted(set(nodes))
    if not wanted:
        return {}
    rows = await conn.fetch(NODES, tenant_id, [n[0] for n in wanted], [n[1] for n in wanted])
    found = {(r["level"], r["idx"]): bytes(r["hash"]) for r in rows}
    missing = [n for n in wanted if n not in found]
    if missing:
        raise TreeIncomplete(f"the tree of tenant {tenant_id} lacks the subtrees {missing[:5]}")
    return found


async def roots(conn: asyncpg.Connection, tenant_id: UUID, ranges: list[Range]) -> list[bytes]:
    """The roots of subtrees of the RFC 6962 recursion, from stored nodes in one query."""
    found = await fetch_nodes(conn, tenant_id, merkle.nodes_for(ranges))
    return merkle.roots_of(ranges, found.__getitem__)


async def root_at(conn: asyncpg.Connection, tenant_id: UUID, size: int) -> bytes:
    """The root of the tenant's tree at ``size`` leaves."""
    if size == 0:
        return merkle.EMPTY_ROOT
    return (await roots(conn, tenant_id, [(0, size)]))[0]


async def inclusion_proof(conn: asyncpg.Connection, tenant_id: UUID, index: int, size: int) -> list[bytes]:
    """The inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
    return await roots(conn, tenant_id, merkle.inclusion_ranges(index, size))


async def consistency_proof(conn: asyncpg.Connection, tenant_id: UUID, old_size: int, new_size: int) -> list[bytes]:
    """The consistency proof between the tree at ``old_size`` and at ``new_size``."""
    if old_size == new_size:
        return []
    return await roots(conn, tenant_id, merkle.consistency_ranges(old_size, new_size))


async def outside_roots(
    conn: asyncpg.Connection, tenant_id: UUID, size: int, first: int, last: int
) -> dict[Range, bytes]:
    """The roots of the subtrees around leaves ``[first, last)`` that recompute the root of ``size`` leaves."""
    ranges = merkle.outside_ranges(size, first, last)
    return dict(zip(ranges, await roots(conn, tenant_id, ranges), strict=True))


async def latest_checkpoint(conn: asyncpg.Connection, tenant_id: UUID) -> StoredCheckpoint | None:
    """The tenant's newest checkpoint."""
    return _checkpoint(await conn.fetchrow(LATEST_CHECKPOINT, tenant_id))


async def checkpoint_at(conn: asyncpg.Connection, tenant_id: UUID, size: int) -> StoredCheckpoint | None:
    """The tenant's checkpoint of ``size`` leaves, if one was signed."""
    return _checkpoint(await conn.fetchrow(CHECKPOINT_AT, tenant_id, size))


class Checkpointer:
    """Signs checkpoints of the trees that grew.

    Args:
        pool: Returns the service's pool.
        signer: The active signing key.
        origin_prefix: The installation's part of every origin (``<prefix>/<tenant id>``).
        clock: Returns the current UTC time.
        interval_s: Seconds between two rounds of the background task.
        batch: Trees signed per round at most (the rest wait for the next round).
        tsa: The time-stamping authority that timestamps every checkpoint, if one is configured.
    """

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        signer: ActiveSigner,
        origin_prefix: str,
        clock: Callable[[], datetime],
        *,
        interval_s: float = 1.0,
        batch: int = 500,
        tsa: TimestampAuthority | None = None,
    ) -> None:
        self._pool = pool
        self.signer = signer
        self.origin_prefix = origin_prefix
        self.clock = clock
        self.interval_s = interval_s
        self.batch = batch
        self.tsa = tsa
        self._task: asyncio.Task[None] | None = None

    async def sign(self, conn: asyncpg.Connection, tenant_id: UUID, size: int) -> StoredCheckpoint:
        """Sign and store the checkpoint of the tenant's tree at ``size`` leaves (or return the stored one), and
        have it timestamped when a TSA is configured and it has no timestamp yet."""
        stored = await checkpoint_at(conn, tenant_id, size)
        if stored is not None:
            return await self._timestamped(conn, tenant_id, stored)
        async with conn.transaction():
            key = await self.signer.current(conn)
            root = await root_at(conn, tenant_id, size)
            note = sign_checkpoint(
                Checkpoint(origin_for(self.origin_prefix, tenant_id), size, root), key, key.public_key
            )
            await conn.execute(INSERT_CHECKPOINT, tenant_id, size, root, note, key.key_ref, self.clock())
        stored = await checkpoint_at(conn, tenant_id, size)
        assert stored is not None  # inserted above, or by another replica at the same moment
        return await self._timestamped(conn, tenant_id, stored)

    async def _timestamped(
        self, conn: asyncpg.Connection, tenant_id: UUID, stored: StoredCheckpoint
    ) -> StoredCheckpoint:
        """The checkpoint with a TSA's token (asked for now when it has none); unchanged without a TSA, or
        when the TSA does not answer (logged; the next export or checkpoint asks again)."""
        if self.tsa is None or stored.timestamp is not None:
            return stored
        try:
            token = await self.tsa.timestamp(stored.note.encode("utf-8"))
        except (TimestampError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "the time-stamping authority gave no timestamp; the checkpoint stays without one for now",
                extra={"tenant_id": str(tenant_id), "tree_size": stored.tree_size, "error": str(exc)},
            )
            return stored
        await conn.execute(INSERT_TIMESTAMP, tenant_id, stored.tree_size, token, self.tsa.url, self.clock())
        return await checkpoint_at(conn, tenant_id, stored.tree_size) or stored

    async def current(self, conn: asyncpg.Connection, tenant_id: UUID) -> StoredCheckpoint | None:
        """A checkpoint of the tenant's whole tree as it is now (signed now when the newest one is older)."""
        size = await tree_size(conn, tenant_id)
        if size == 0:
            return None
        return await self.sign(conn, tenant_id, size)

    async def sign_grown(self) -> int:
        """Sign a checkpoint of every tree that grew since its newest one; return how many were signed."""
        async with self._pool().acquire() as conn:
            grown = await conn.fetch(GROWN_TREES, self.batch)
            for row in grown:
                await self.sign(conn, row["tenant_id"], row["size"])
        return len(grown)

    def start(self) -> None:
        """Start the background rounds."""
        self._task = asyncio.create_task(self._run(), name="evidence-checkpointer")

    async def stop(self) -> None:
        """Stop the background rounds."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sign_grown()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database outage or a tampered tree: logged, tried again next round
                log.exception("signing checkpoints failed; trying again next round")
            await asyncio.sleep(self.interval_s)
