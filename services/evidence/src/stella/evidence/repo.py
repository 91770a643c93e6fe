"""SQL of the evidence schema.

Every packet statement filters by tenant. The ``keys`` table is the exception: signing keys belong to the
installation (one key signs every tenant's packets) and public keys are public.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from stella.contracts.evidence import KeyView
from stella.evidence.domain import StoredPacket
from stella.evidence.keylog import key_id
from stella.evidence.keys import PublicKey, Signer
from stella.evidence.packet import ChainHead, EvidencePacket, PacketType

_PACKET_COLUMNS = """id, tenant_id, sequence, packet_type, promotion_id, previous_hash, content_hash, content,
    envelope, signer_key_ref, created_at"""
_KEY_COLUMNS = "key_ref, algorithm, public_key_pem, active, created_at, retired_at"

LOCK_CHAIN = "SELECT pg_advisory_xact_lock(hashtextextended('stella.evidence.chain:' || $1::text, 0))"
"""Serializes the writers of one tenant's chain until their transaction ends, so sequences stay contiguous."""
LOCK_KEYS = "SELECT pg_advisory_xact_lock(hashtextextended('stella.evidence.keys', 0))"
"""Serializes key registration and rotation, and waits for the packets being signed to commit."""
LOCK_KEYS_SHARED = "SELECT pg_advisory_xact_lock_shared(hashtextextended('stella.evidence.keys', 0))"
"""Taken by every packet append: a rotation (exclusive) waits for appends in flight and they wait for it, so
no packet signed by the retiring key is created after the time the rotation records."""

CHAIN_HEAD = """
    SELECT sequence, content_hash, created_at FROM packets
     WHERE tenant_id = $1
     ORDER BY sequence DESC
     LIMIT 1
"""
PACKET_BY_SOURCE = f"SELECT {_PACKET_COLUMNS} FROM packets WHERE tenant_id = $1 AND source_key = $2"
LOCK_CHAINS = """
    SELECT count(pg_advisory_xact_lock(hashtextextended('stella.evidence.chain:' || t, 0)))
      FROM unnest($1::text[]) AS t
"""
"""The chain locks of several tenants in one statement, taken in the array's order (a function scan over
``unnest`` yields the elements in order): callers pass the tenants sorted, so two writers never deadlock."""
CHAIN_HEADS = """
    SELECT t.tenant_id, h.sequence, h.content_hash, h.created_at
      FROM unnest($1::uuid[]) AS t (tenant_id)
      CROSS JOIN LATERAL (
          SELECT p.sequence, p.content_hash, p.created_at FROM packets p
           WHERE p.tenant_id = t.tenant_id
           ORDER BY p.sequence DESC
           LIMIT 1
      ) AS h
"""
PACKETS_BY_SOURCE = f"""
    SELECT {_PACKET_COLUMNS}, source_key FROM packets
     WHERE (tenant_id, source_key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))
"""
INSERT_PACKETS = """
    INSERT INTO packets (id, tenant_id, sequence, packet_type, promotion_id, previous_hash, content_hash, content,
                         envelope, signer_key_ref, created_at, source_key)
    SELECT id, tenant_id, sequence, packet_type, promotion_id, previous_hash, content_hash, content::json,
           envelope::json, signer_key_ref, created_at, source_key
      FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[],
                  $9::text[], $10::text[], $11::timestamptz[], $12::text[])
           AS p (id, tenant_id, sequence, packet_type, promotion_id, previous_hash, content_hash, content, envelope,
                 signer_key_ref, created_at, source_key)
"""
"""Several packets in one statement, inserted (and their Merkle leaves added by the row trigger) in the order
of the arrays: a function scan over ``unnest`` yields rows in order."""
GET_PACKET = f"SELECT {_PACKET_COLUMNS} FROM packets WHERE tenant_id = $1 AND id = $2"
GET_PACKET_AT = f"SELECT {_PACKET_COLUMNS} FROM packets WHERE tenant_id = $1 AND sequence = $2"
LIST_PACKETS = f"""
    SELECT {_PACKET_COLUMNS} FROM packets
     WHERE tenant_id = $1
       AND ($2::uuid IS NULL OR promotion_id = $2)
       AND ($3::text IS NULL OR packet_type = $3)
       AND ($4::bigint IS NULL OR sequence > $4)
     ORDER BY sequence
     LIMIT $5
"""
EXPORT_PACKETS = f"""
    SELECT {_PACKET_COLUMNS} FROM packets
     WHERE tenant_id = $1
       AND ($2::timestamptz IS NULL OR created_at >= $2)
       AND ($3::timestamptz IS NULL OR created_at < $3)
     ORDER BY sequence
     LIMIT $4
"""

ALL_KEYS = f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY created_at, key_ref"
GET_KEY = f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_ref = $1"
ACTIVE_KEY = "SELECT key_ref, created_at FROM keys WHERE active"
NEWEST_PACKET_TIME = """
    SELECT max(p.created_at) FROM trees t JOIN packets p ON p.tenant_id = t.tenant_id AND p.sequence = t.size
"""
KEY_LOG = "SELECT idx, key_ref, envelope FROM key_log ORDER BY idx"
INSERT_KEY_LOG = "INSERT INTO key_log (idx, key_ref, envelope, created_at) VALUES ($1, $2, $3, $4)"
RETIRE_ACTIVE_KEY = "UPDATE keys SET active = false, retired_at = $1 WHERE active RETURNING key_ref"
INSERT_KEY = """
    INSERT INTO keys (key_ref, algorithm, public_key_pem, active, created_at)
    VALUES ($1, $2, $3, true, $4)
"""


def _stored(row: asyncpg.Record) -> StoredPacket:
    packet = EvidencePacket(
        id=row["id"],
        tenant_id=row["tenant_id"],
        packet_type=PacketType(row["packet_type"]),
        promotion_id=row["promotion_id"],
        sequence=row["sequence"],
        previous_hash=row["previous_hash"],
        content=row["content"],
        content_hash=row["content_hash"],
        created_at=row["created_at"],
        signer_key_ref=row["signer_key_ref"],
    )
    return StoredPacket(packet=packet, envelope=row["envelope"])


async def lock_chain(conn: asyncpg.Connection, tenant_id: UUID) -> None:
    """Take the tenant's chain lock for the rest of the open transaction."""
    await conn.execute(LOCK_CHAIN, str(tenant_id))


async def chain_head(conn: asyncpg.Connection, tenant_id: UUID) -> tuple[ChainHead, datetime | None]:
    """The tenant's chain head and the creation time of its last packet (``None`` without packets)."""
    row = await conn.fetchrow(CHAIN_HEAD, tenant_id)
    if row is None:
        return ChainHead.empty(), None
    return ChainHead(sequence=row["sequence"], content_hash=row["content_hash"]), row["created_at"]


async def packet_by_source(conn: asyncpg.Connection, tenant_id: UUID, source_key: str) -> StoredPacket | None:
    """The packet already made for ``source_key`` (a promotion's decision, a command), if any."""
    row = await conn.fetchrow(PACKET_BY_SOURCE, tenant_id, source_key)
    return None if row is None else _stored(row)


async def insert_packet(
    conn: asyncpg.Connection, packet: EvidencePacket, envelope: dict[str, Any], source_key: str
) -> StoredPacket:
    """Append a signed packet to its tenant's chain (:func:`insert_packets` with one packet)."""
    stored = StoredPacket(packet=packet, envelope=envelope)
    await insert_packets(conn, [(stored, source_key)])
    return stored


async def lock_chains(conn: asyncpg.Connection, tenant_ids: Iterable[UUID]) -> list[UUID]:
    """Take the chain locks of ``tenant_ids`` (sorted, once each) for the rest of the open transaction.

    Returns:
        The tenants, in the order their locks were taken.
    """
    tenants = sorted(set(tenant_ids), key=str)
    if len(tenants) == 1:
        await lock_chain(conn, tenants[0])
    elif tenants:
        await conn.fetchval(LOCK_CHAINS, [str(t) for t in tenants])
    return tenants


async def chain_heads(
    conn: asyncpg.Connection, tenant_ids: list[UUID]
) -> dict[UUID, tuple[ChainHead, datetime | None]]:
    """Each tenant's chain head and the creation time of its last packet, in one query (see :func:`chain_head`)."""
    heads: dict[UUID, tuple[ChainHead, datetime | None]] = {t: (ChainHead.empty(), None) for t in tenant_ids}
    for row in await conn.fetch(CHAIN_HEADS, tenant_ids):
        heads[row["tenant_id"]] = (
            ChainHead(sequence=row["sequence"], content_hash=row["content_hash"]),
            row["created_at"],
        )
    return heads


async def packets_by_source(
    conn: asyncpg.Connection, keys: list[tuple[UUID, str]]
) -> dict[tuple[UUID, str], StoredPacket]:
    """The packets already made for each ``(tenant_id, source_key)`` of ``keys``, in one query."""
    if not keys:
        return {}
    rows = await conn.fetch(PACKETS_BY_SOURCE, [k[0] for k in keys], [k[1] for k in keys])
    return {(row["tenant_id"], row["source_key"]): _stored(row) for row in rows}


def _content_text(packet: EvidencePacket) -> str:
    known = packet.content_bytes
    return known.decode() if known is not None else json.dumps(packet.content, separators=(",", ":"))


async def insert_packets(conn: asyncpg.Connection, packets: list[tuple[StoredPacket, str]]) -> None:
    """Append signed packets ``(packet and envelope, source key)``, in the order given, in one statement."""
    if not packets:
        return
    columns: list[list[Any]] = [[] for _ in range(12)]
    for stored, source_key in packets:
        p = stored.packet
        values = (
            p.id,
            p.tenant_id,
            p.sequence,
            str(p.packet_type),
            p.promotion_id,
            p.previous_hash,
            p.content_hash,
            _content_text(p),
            json.dumps(stored.envelope, separators=(",", ":")),
            p.signer_key_ref,
            p.created_at,
            source_key,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    await conn.execute(INSERT_PACKETS, *columns)


async def get_packet(conn: asyncpg.Connection, tenant_id: UUID, packet_id: UUID) -> StoredPacket | None:
    """One packet of the tenant."""
    row = await conn.fetchrow(GET_PACKET, tenant_id, packet_id)
    return None if row is None else _stored(row)


async def get_packet_at(conn: asyncpg.Connection, tenant_id: UUID, sequence: int) -> StoredPacket | None:
    """The tenant's packet at a chain position."""
    row = await conn.fetchrow(GET_PACKET_AT, tenant_id, sequence)
    return None if row is None else _stored(row)


async def list_packets(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    promotion_id: UUID | None,
    packet_type: str | None,
    after_sequence: int | None,
    limit: int,
) -> list[StoredPacket]:
    """Up to ``limit`` packets in chain order after ``after_sequence``."""
    rows = await conn.fetch(LIST_PACKETS, tenant_id, promotion_id, packet_type, after_sequence, limit)
    return [_stored(r) for r in rows]


async def export_packets(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    created_from: datetime | None,
    created_to: datetime | None,
    limit: int,
) -> list[StoredPacket]:
    """Up to ``limit`` packets created in ``[created_from, created_to)``, in chain order."""
    rows = await conn.fetch(EXPORT_PACKETS, tenant_id, created_from, created_to, limit)
    return [_stored(r) for r in rows]


def _key_view(row: asyncpg.Record) -> KeyView:
    return KeyView(
        key_ref=row["key_ref"],
        algorithm=row["algorithm"],
        public_key_pem=row["public_key_pem"],
        active=row["active"],
        created_at=row["created_at"],
        retired_at=row["retired_at"],
    )


async def list_keys(conn: asyncpg.Connection) -> list[KeyView]:
    """Every key that ever signed evidence, oldest first."""
    return [_key_view(r) for r in await conn.fetch(ALL_KEYS)]


async def published_keys(conn: asyncpg.Connection) -> list[KeyView]:
    """Every key with its full fingerprint and its signed key log entry, oldest first."""
    entries = dict(await key_log(conn))
    return [
        view.model_copy(
            update={
                "key_id": key_id(PublicKey.from_pem(view.public_key_pem.encode())),
                "log_entry": entries.get(view.key_ref),
            }
        )
        for view in await list_keys(conn)
    ]


async def get_key(conn: asyncpg.Connection, key_ref: str) -> KeyView | None:
    """One key by reference."""
    row = await conn.fetchrow(GET_KEY, key_ref)
    return None if row is None else _key_view(row)


async def active_key(conn: asyncpg.Connection) -> tuple[str, datetime] | None:
    """The reference of the key that signs new packets, and when it became valid."""
    row = await conn.fetchrow(ACTIVE_KEY)
    return None if row is None else (row["key_ref"], row["created_at"])


async def key_log(conn: asyncpg.Connection) -> list[tuple[str, dict[str, Any]]]:
    """The key log's entries in order: ``(key_ref, envelope)``."""
    return [(r["key_ref"], r["envelope"]) for r in await conn.fetch(KEY_LOG)]


async def append_key_log(
    conn: asyncpg.Connection, index: int, key_ref: str, envelope: dict[str, Any], now: datetime
) -> None:
    """Append an entry to the key log."""
    await conn.execute(INSERT_KEY_LOG, index, key_ref, envelope, now)


async def activation_time(conn: asyncpg.Connection, now: datetime) -> datetime:
    """When a key activated now starts: ``now``, or just after the newest packet (whose clock may run ahead),
    so every packet signed by the retiring key was created before it is retired."""
    newest = await conn.fetchval(NEWEST_PACKET_TIME)
    return now if newest is None or newest < now else newest + timedelta(microseconds=1)


async def activate_key(conn: asyncpg.Connection, key: Signer, now: datetime) -> str | None:
    """Retire the active key (if any) and make ``key`` the active one from ``now``; returns the retired key's
    reference."""
    retired = await conn.fetchval(RETIRE_ACTIVE_KEY, now)
    await conn.execute(INSERT_KEY, key.key_ref, key.algorithm.value, key.public_key.to_pem().decode("ascii"), now)
    return retired
