"""SQL of the events service's schema: public events, webhooks, deliveries and their attempts.

Every statement filters on ``tenant_id``; the only ones that do not know a tenant beforehand are the delivery
loop's (what is due, claiming it), which read the tenant from the rows they find.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from uuid import UUID

import asyncpg

from stella.contracts.events import AttemptView, DeliveryStatus, DeliveryView, WebhookView
from stella.kit.outbox import ordered_insert_sql, write_at_commit

# --- records ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookRow:
    """A webhook as stored (its secret sealed)."""

    id: UUID
    tenant_id: UUID
    url: str
    description: str
    event_types: tuple[str, ...]
    secret_sealed: bytes
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    consecutive_failures: int
    last_error: str | None
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime

    def view(self) -> WebhookView:
        """The webhook as clients see it (no secret)."""
        return WebhookView(
            id=self.id,
            url=self.url,
            description=self.description,
            event_types=list(self.event_types),
            enabled=self.enabled,
            disabled_reason=self.disabled_reason,
            disabled_at=self.disabled_at,
            failing_since=self.failing_since,
            consecutive_failures=self.consecutive_failures,
            created_by=self.created_by,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery whose attempt this worker now runs, with what sending it needs."""

    id: UUID
    tenant_id: UUID
    webhook_id: UUID
    attempt: int
    deadline: datetime
    event_id: UUID
    payload: str
    url: str
    secret_sealed: bytes


_WEBHOOK_COLUMNS: Final = """
    id, tenant_id, url, description, event_types, secret_sealed, enabled, disabled_reason, disabled_at,
    failing_since, consecutive_failures, last_error, created_by, created_at, updated_at
"""


def _webhook(row: asyncpg.Record) -> WebhookRow:
    return WebhookRow(
        id=row["id"],
        tenant_id=row["tenant_id"],
        url=row["url"],
        description=row["description"],
        event_types=tuple(row["event_types"]),
        secret_sealed=bytes(row["secret_sealed"]),
        enabled=row["enabled"],
        disabled_reason=row["disabled_reason"],
        disabled_at=row["disabled_at"],
        failing_since=row["failing_since"],
        consecutive_failures=row["consecutive_failures"],
        last_error=row["last_error"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


# --- public events ---------------------------------------------------------------------------------------

# The event, its deliveries and its outbox row in one statement: the deliveries are queued and the event written
# for publication (on ``$12`` with the headers ``$13``) only when the event is new (a redelivered internal event
# records nothing, queues nothing and publishes nothing), for every enabled webhook of the tenant whose filters
# take its type or its context (``$9``, ``<prefix><context>.*``), except ``$11``.
_RECORD_EVENT_TEMPLATE: Final = """
    WITH recorded AS (
        INSERT INTO public_events (id, tenant_id, type, context, time, related, payload, recorded_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (id) DO NOTHING
        RETURNING seq
    ), queued AS (
        INSERT INTO deliveries (id, tenant_id, webhook_id, event_seq, event_id, event_type, status, attempts,
                                next_attempt_at, deadline, created_at)
        SELECT gen_random_uuid(), w.tenant_id, w.id, recorded.seq, $1, $3, 'pending', 0, $8, $10, $8
          FROM recorded, webhooks w
         WHERE w.tenant_id = $2 AND w.enabled
           AND (cardinality(w.event_types) = 0 OR $3 = ANY(w.event_types) OR $9 = ANY(w.event_types))
           AND w.id IS DISTINCT FROM $11
        RETURNING 1
    ), published AS ({publish}
    )
    SELECT seq, (SELECT count(*) FROM queued) AS queued FROM recorded
"""

_RECORD_EVENT: Final = _RECORD_EVENT_TEMPLATE.format(
    publish=ordered_insert_sql("$1", "$2", "$12", "$7", "$13", source="recorded")
)

_LIST_EVENTS: Final = """
    SELECT seq, payload FROM public_events
    WHERE tenant_id = $1
      AND ($2::text IS NULL OR related @> ARRAY[$2::text])
      AND ((cardinality($3::text[]) = 0 AND cardinality($4::text[]) = 0) OR type = ANY($3) OR context = ANY($4))
      AND ($5::bigint IS NULL OR seq > $5)
    ORDER BY seq
    LIMIT $6
"""

_PURGE_EVENTS: Final = "DELETE FROM public_events WHERE recorded_at < $1"


_RECORD_EVENT_TYPES: Final = (
    "uuid", "uuid", "text", "text", "timestamptz", "text[]", "text", "timestamptz", "text", "timestamptz", "uuid",
    "text", "text",
)  # fmt: skip
"""The SQL types of ``_RECORD_EVENT``'s parameters, in order."""


async def record_event_at_commit(
    conn: asyncpg.Connection,
    *,
    event_id: UUID,
    tenant_id: UUID,
    event_type: str,
    context: str,
    context_filter: str,
    time: datetime,
    related: Sequence[str],
    payload: str,
    now: datetime,
    deadline: datetime,
    subject: str,
    headers: str | None,
    except_webhook: UUID | None = None,
) -> None:
    """Record a public event, queue it for every enabled webhook of its tenant whose filters take it and write
    it to the outbox for publication on ``subject`` (ordered with the tenant's other messages), in one statement:
    the statement that commits the transaction when its owner defers the last writes
    (:func:`stella.kit.outbox.write_at_commit`; an event recorded before is left as it is), else now.
    """
    await write_at_commit(
        conn,
        _RECORD_EVENT,
        (
            event_id,
            tenant_id,
            event_type,
            context,
            time,
            list(related),
            payload,
            now,
            context_filter,
            deadline,
            except_webhook,
            subject,
            headers,
        ),
        _RECORD_EVENT_TYPES,
    )


async def list_events(
    pool: asyncpg.Pool,
    tenant_id: UUID,
    *,
    resource: str | None,
    types: Sequence[str],
    contexts: Sequence[str],
    after: int | None,
    limit: int,
) -> list[tuple[int, str]]:
    """Public events of a tenant in order, optionally about ``resource`` and of ``types`` or ``contexts``."""
    rows = await pool.fetch(_LIST_EVENTS, tenant_id, resource, list(types), list(contexts), after, limit)
    return [(int(r["seq"]), r["payload"]) for r in rows]


async def purge_events(conn: asyncpg.Connection, before: datetime) -> int:
    """Delete public events recorded before ``before``, with their deliveries; returns how many."""
    status = await conn.execute(_PURGE_EVENTS, before)
    return int(status.split()[-1])


# --- webhooks --------------------------------------------------------------------------------------------

_INSERT_WEBHOOK: Final = f"""
    INSERT INTO webhooks (id, tenant_id, url, description, event_types, secret_sealed, enabled,
                          created_by, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
    RETURNING {_WEBHOOK_COLUMNS}
"""

_GET_WEBHOOK: Final = f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE tenant_id = $1 AND id = $2"

_LOCK_WEBHOOK: Final = f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE tenant_id = $1 AND id = $2 FOR UPDATE"

_LIST_WEBHOOKS: Final = f"""
    SELECT {_WEBHOOK_COLUMNS} FROM webhooks
    WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
    ORDER BY created_at, id
    LIMIT $4
"""

# Enabling a webhook (again) starts its health afresh; disabling it by hand records no reason.
_UPDATE_WEBHOOK: Final = f"""
    UPDATE webhooks SET
        url = coalesce($3, url),
        description = coalesce($4, description),
        event_types = coalesce($5, event_types),
        enabled = coalesce($6::boolean, enabled),
        disabled_reason = CASE WHEN $6::boolean IS NULL THEN disabled_reason ELSE NULL END,
        disabled_at = CASE WHEN $6::boolean IS NULL THEN disabled_at
                           WHEN $6::boolean THEN NULL
                           ELSE coalesce(disabled_at, $7) END,
        failing_since = CASE WHEN $6::boolean THEN NULL ELSE failing_since END,
        consecutive_failures = CASE WHEN $6::boolean THEN 0 ELSE consecutive_failures END,
        updated_at = $7
    WHERE tenant_id = $1 AND id = $2
    RETURNING {_WEBHOOK_COLUMNS}
"""

_DELETE_WEBHOOK: Final = "DELETE FROM webhooks WHERE tenant_id = $1 AND id = $2 RETURNING id"

_WEBHOOK_SUCCEEDED: Final = """
    UPDATE webhooks SET consecutive_failures = 0, failing_since = NULL, last_error = NULL
    WHERE tenant_id = $1 AND id = $2 AND (consecutive_failures <> 0 OR last_error IS NOT NULL)
"""

_WEBHOOK_FAILED: Final = """
    UPDATE webhooks SET consecutive_failures = consecutive_failures + 1,
                        failing_since = coalesce(failing_since, $3),
                        last_error = $4
    WHERE tenant_id = $1 AND id = $2
    RETURNING consecutive_failures, failing_since, enabled
"""

_DISABLE_WEBHOOK: Final = """
    UPDATE webhooks SET enabled = false, disabled_reason = $3, disabled_at = $4, updated_at = $4
    WHERE tenant_id = $1 AND id = $2 AND enabled
    RETURNING id
"""


async def insert_webhook(
    conn: asyncpg.Connection,
    *,
    webhook_id: UUID,
    tenant_id: UUID,
    url: str,
    description: str,
    event_types: Sequence[str],
    secret_sealed: bytes,
    enabled: bool,
    created_by: UUID | None,
    now: datetime,
) -> WebhookRow:
    """Store a new webhook."""
    row = await conn.fetchrow(
        _INSERT_WEBHOOK,
        webhook_id,
        tenant_id,
        url,
        description,
        list(event_types),
        secret_sealed,
        enabled,
        created_by,
        now,
    )
    assert row is not None
    return _webhook(row)


async def get_webhook(db: asyncpg.Pool | asyncpg.Connection, tenant_id: UUID, webhook_id: UUID) -> WebhookRow | None:
    """Read one webhook of the tenant."""
    row = await db.fetchrow(_GET_WEBHOOK, tenant_id, webhook_id)
    return _webhook(row) if row is not None else None


async def lock_webhook(conn: asyncpg.Connection, tenant_id: UUID, webhook_id: UUID) -> WebhookRow | None:
    """Read one webhook of the tenant and lock it until the transaction ends."""
    row = await conn.fetchrow(_LOCK_WEBHOOK, tenant_id, webhook_id)
    return _webhook(row) if row is not None else None


async def list_webhooks(
    pool: asyncpg.Pool, tenant_id: UUID, *, after: tuple[datetime, UUID] | None, limit: int
) -> list[WebhookRow]:
    """The tenant's webhooks, oldest first, after the keyset ``after``."""
    rows = await pool.fetch(_LIST_WEBHOOKS, tenant_id, after[0] if after else None, after[1] if after else None, limit)
    return [_webhook(r) for r in rows]


async def update_webhook(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    webhook_id: UUID,
    *,
    url: str | None,
    description: str | None,
    event_types: Sequence[str] | None,
    enabled: bool | None,
    now: datetime,
) -> WebhookRow | None:
    """Change a webhook; None fields keep their value."""
    row = await conn.fetchrow(
        _UPDATE_WEBHOOK,
        tenant_id,
        webhook_id,
        url,
        description,
        list(event_types) if event_types is not None else None,
        enabled,
        now,
    )
    return _webhook(row) if row is not None else None


async def delete_webhook(conn: asyncpg.Connection, tenant_id: UUID, webhook_id: UUID) -> bool:
    """Delete a webhook and its deliveries; False when there was none."""
    return await conn.fetchval(_DELETE_WEBHOOK, tenant_id, webhook_id) is not None


async def webhook_succeeded(conn: asyncpg.Connection, tenant_id: UUID, webhook_id: UUID) -> None:
    """End the webhook's run of failures."""
    await conn.execute(_WEBHOOK_SUCCEEDED, tenant_id, webhook_id)


async def webhook_failed(
    conn: asyncpg.Connection, tenant_id: UUID, webhook_id: UUID, now: datetime, error: str
) -> tuple[int, datetime, bool] | None:
    """Count a failed attempt; returns (failures in a row, failing since, enabled), None for a deleted webhook."""
    row = await conn.fetchrow(_WEBHOOK_FAILED, tenant_id, webhook_id, now, error)
    return (row["consecutive_failures"], row["failing_since"], row["enabled"]) if row is not None else None


async def disable_webhook(
    conn: asyncpg.Connection, tenant_id: UUID, webhook_id: UUID, reason: str, now: datetime
) -> bool:
    """Disable an enabled webhook; False when it was not enabled."""
    return await conn.fetchval(_DISABLE_WEBHOOK, tenant_id, webhook_id, reason, now) is not None


# --- deliveries ------------------------------------------------------------------------------------------

_REDELIVER: Final = """
    INSERT INTO deliveries (id, tenant_id, webhook_id, event_seq, event_id, event_type, status, attempts,
                            next_attempt_at, deadline, created_at, redelivery_of)
    SELECT $4, d.tenant_id, d.webhook_id, d.event_seq, d.event_id, d.event_type, 'pending', 0, $5, $6, $5, d.id
    FROM deliveries d
    WHERE d.tenant_id = $1 AND d.webhook_id = $2 AND d.id = $3
    RETURNING id
"""

_DELIVERY_COLUMNS: Final = """
    id, webhook_id, event_id, event_type, status, attempts, next_attempt_at, created_at, completed_at,
    last_status_code, last_error, redelivery_of
"""

_GET_DELIVERY: Final = (
    f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE tenant_id = $1 AND webhook_id = $2 AND id = $3"
)

_LIST_DELIVERIES: Final = f"""
    SELECT {_DELIVERY_COLUMNS} FROM deliveries
    WHERE tenant_id = $1 AND webhook_id = $2
      AND ($3::text IS NULL OR status = $3)
      AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))
    ORDER BY created_at DESC, id DESC
    LIMIT $6
"""

_ATTEMPTS: Final = """
    SELECT delivery_id, attempt, started_at, duration_ms, status_code, error, response_excerpt
    FROM delivery_attempts
    WHERE tenant_id = $1 AND delivery_id = ANY($2::uuid[])
    ORDER BY delivery_id, attempt
"""

_NEXT_DUE: Final = """
    SELECT min(d.next_attempt_at) FROM deliveries d
    JOIN webhooks w ON w.tenant_id = d.tenant_id AND w.id = d.webhook_id
    WHERE d.status = 'pending' AND w.enabled
"""

# Claiming sets the lease: should this worker die mid-attempt, the delivery is due again when it ends.
_CLAIM: Final = """
    WITH due AS (
        SELECT d.id FROM deliveries d
        JOIN webhooks w ON w.tenant_id = d.tenant_id AND w.id = d.webhook_id
        WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND w.enabled
        ORDER BY d.next_attempt_at
        LIMIT $3
        FOR UPDATE OF d SKIP LOCKED
    )
    UPDATE deliveries d SET attempts = d.attempts + 1, next_attempt_at = $2
    FROM due, webhooks w, public_events e
    WHERE d.id = due.id
      AND w.tenant_id = d.tenant_id AND w.id = d.webhook_id
      AND e.tenant_id = d.tenant_id AND e.seq = d.event_seq
    RETURNING d.id, d.tenant_id, d.webhook_id, d.attempts, d.deadline, d.event_id, e.payload, w.url, w.secret_sealed
"""

_INSERT_ATTEMPT: Final = """
    INSERT INTO delivery_attempts (delivery_id, attempt, tenant_id, started_at, duration_ms, status_code, error,
                                   response_excerpt)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (delivery_id, attempt) DO NOTHING
"""

_FINISH: Final = """
    UPDATE deliveries SET status = $3, next_attempt_at = $4, completed_at = $5, last_status_code = $6, last_error = $7
    WHERE tenant_id = $1 AND id = $2
"""


async def redeliver(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    webhook_id: UUID,
    delivery_id: UUID,
    *,
    new_id: UUID,
    now: datetime,
    deadline: datetime,
) -> bool:
    """Queue the event of ``delivery_id`` again as the delivery ``new_id``; False when there is no such delivery."""
    return await conn.fetchval(_REDELIVER, tenant_id, webhook_id, delivery_id, new_id, now, deadline) is not None


async def get_delivery(
    db: asyncpg.Pool | asyncpg.Connection, tenant_id: UUID, webhook_id: UUID, delivery_id: UUID
) -> DeliveryView | None:
    """Read one delivery with its attempts."""
    row = await db.fetchrow(_GET_DELIVERY, tenant_id, webhook_id, delivery_id)
    if row is None:
        return None
    return (await _with_attempts(db, tenant_id, [row]))[0]


async def list_deliveries(
    pool: asyncpg.Pool,
    tenant_id: UUID,
    webhook_id: UUID,
    *,
    status: DeliveryStatus | None,
    before: tuple[datetime, UUID] | None,
    limit: int,
) -> list[DeliveryView]:
    """A webhook's deliveries, newest first, with their attempts (two queries, whatever the page size)."""
    rows = await pool.fetch(
        _LIST_DELIVERIES,
        tenant_id,
        webhook_id,
        status.value if status is not None else None,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )
    return await _with_attempts(pool, tenant_id, rows)


async def _with_attempts(
    db: asyncpg.Pool | asyncpg.Connection, tenant_id: UUID, rows: Sequence[asyncpg.Record]
) -> list[DeliveryView]:
    attempts: dict[UUID, list[AttemptView]] = {}
    if rows:
        for a in await db.fetch(_ATTEMPTS, tenant_id, [r["id"] for r in rows]):
            attempts.setdefault(a["delivery_id"], []).append(
                AttemptView(
                    attempt=a["attempt"],
                    started_at=a["started_at"],
                    duration_ms=a["duration_ms"],
                    status_code=a["status_code"],
                    error=a["error"],
                    response_excerpt=a["response_excerpt"],
                )
            )
    return [
        DeliveryView(
            id=r["id"],
            webhook_id=r["webhook_id"],
            event_id=str(r["event_id"]),
            event_type=r["event_type"],
            status=DeliveryStatus(r["status"]),
            attempts=r["attempts"],
            next_attempt_at=r["next_attempt_at"] if r["status"] == DeliveryStatus.PENDING else None,
            created_at=r["created_at"],
            completed_at=r["completed_at"],
            last_status_code=r["last_status_code"],
            last_error=r["last_error"],
            redelivery_of=r["redelivery_of"],
            attempt_log=attempts.get(r["id"], []),
        )
        for r in rows
    ]


async def next_due(pool: asyncpg.Pool) -> datetime | None:
    """When the earliest pending delivery of an enabled webhook is due."""
    value: datetime | None = await pool.fetchval(_NEXT_DUE)
    return value


async def claim_due(
    conn: asyncpg.Connection, now: datetime, lease_until: datetime, limit: int
) -> list[ClaimedDelivery]:
    """Claim up to ``limit`` due deliveries for an attempt each (others replicas skip them)."""
    rows = await conn.fetch(_CLAIM, now, lease_until, limit)
    return [
        ClaimedDelivery(
            id=r["id"],
            tenant_id=r["tenant_id"],
            webhook_id=r["webhook_id"],
            attempt=r["attempts"],
            deadline=r["deadline"],
            event_id=r["event_id"],
            payload=r["payload"],
            url=r["url"],
            secret_sealed=bytes(r["secret_sealed"]),
        )
        for r in rows
    ]


async def record_attempt(
    conn: asyncpg.Connection,
    claimed: ClaimedDelivery,
    *,
    started_at: datetime,
    duration_ms: float,
    status_code: int | None,
    error: str | None,
    response_excerpt: str | None,
) -> None:
    """Log one attempt of a delivery."""
    await conn.execute(
        _INSERT_ATTEMPT,
        claimed.id,
        claimed.attempt,
        claimed.tenant_id,
        started_at,
        duration_ms,
        status_code,
        error,
        response_excerpt,
    )


async def finish_attempt(
    conn: asyncpg.Connection,
    claimed: ClaimedDelivery,
    *,
    status: DeliveryStatus,
    next_attempt_at: datetime | None,
    completed_at: datetime | None,
    status_code: int | None,
    error: str | None,
) -> None:
    """Set where a delivery stands after an attempt."""
    await conn.execute(
        _FINISH, claimed.tenant_id, claimed.id, status.value, next_attempt_at, completed_at, status_code, error
    )
