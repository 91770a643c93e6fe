"""SQL of the approval schema. Every statement filters by tenant, except the expiry timer's two reads,
which look across tenants for due requests on purpose and hand back each row with its tenant."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from stella.approval import domain
from stella.contracts.approval import ApprovalRequestView, VoteView
from stella.contracts.approval import ApprovalStatus as StatusView
from stella.contracts.approval import VoteAction as ActionView
from stella.contracts.workflow import StepRef

_REQUEST_COLUMNS = """tenant_id, promotion_id, environment_id, requester_id, required, require_sod, approver_groups,
    status, requested_at, expires_at, decided_at, step_run_id, step_node_id, step_attempt, correlation_id"""
_VOTE_COLUMNS = "tenant_id, promotion_id, approver_id, action, comment, cast_at, approver_name, approver_display_name"

INSERT_REQUEST = f"""
    INSERT INTO approval_requests ({_REQUEST_COLUMNS}, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
    ON CONFLICT (tenant_id, promotion_id) DO NOTHING
    RETURNING true
"""
GET_REQUEST = f"SELECT {_REQUEST_COLUMNS} FROM approval_requests WHERE tenant_id = $1 AND promotion_id = $2"
GET_REQUEST_FOR_UPDATE = GET_REQUEST + " FOR UPDATE"
SET_OUTCOMES = """
    UPDATE approval_requests AS r
       SET status = o.status, decided_at = o.decided_at, step_run_id = o.step_run_id,
           step_node_id = o.step_node_id, step_attempt = o.step_attempt, updated_at = $8
      FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::uuid[], $6::text[], $7::integer[])
           AS o(tenant_id, promotion_id, status, decided_at, step_run_id, step_node_id, step_attempt)
     WHERE r.tenant_id = o.tenant_id AND r.promotion_id = o.promotion_id
"""
VOTES_OF = f"""
    SELECT {_VOTE_COLUMNS} FROM approval_votes
     WHERE (tenant_id, promotion_id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))
     ORDER BY cast_at, id
"""
INSERT_VOTE = f"""
    INSERT INTO approval_votes ({_VOTE_COLUMNS})
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""
INSERT_CANCELLATION = """
    INSERT INTO approval_cancellations (tenant_id, promotion_id, reason, cancelled_at)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (tenant_id, promotion_id) DO NOTHING
"""
GET_CANCELLATION = "SELECT reason FROM approval_cancellations WHERE tenant_id = $1 AND promotion_id = $2"
# Serialises opening and cancelling one promotion's request, which may both find no row yet.
LOCK_PROMOTION = (
    "SELECT pg_advisory_xact_lock(hashtextextended('stella.approval:' || $1::uuid::text || ':' || $2::uuid::text, 0))"
)
# The timer's reads: the earliest expiry (answered from the partial index alone) and the due requests,
# oldest first, skipping rows another replica or a vote holds right now.
NEXT_EXPIRY = "SELECT min(expires_at) FROM approval_requests WHERE status = 'pending'"
LOCK_DUE = f"""
    SELECT {_REQUEST_COLUMNS} FROM approval_requests
     WHERE status = 'pending' AND expires_at <= $1
     ORDER BY expires_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
"""


@dataclass(frozen=True)
class StoredRequest:
    """An approval request as stored: the domain aggregate plus what only the I/O layer knows.

    Attributes:
        request: The domain aggregate with its votes.
        step: The workflow step attempt waiting on the request, if a workflow opened it.
        correlation_id: The correlation of the message that opened it.
    """

    request: domain.ApprovalRequest
    step: StepRef | None
    correlation_id: UUID

    @property
    def key(self) -> tuple[UUID, UUID]:
        """``(tenant_id, promotion_id)``."""
        return self.request.tenant_id, self.request.promotion_id


def request_view(stored: StoredRequest) -> ApprovalRequestView:
    """The wire view of a stored request."""
    request = stored.request
    return ApprovalRequestView(
        promotion_id=request.promotion_id,
        environment_id=request.environment_id,
        requester_id=request.requester_id,
        required=request.required,
        require_sod=request.require_sod,
        approver_groups=sorted(request.eligible_groups),
        status=StatusView(request.status.value),
        requested_at=request.requested_at,
        expires_at=request.expires_at,
        decided_at=request.decided_at,
        votes=[
            VoteView(
                approver_id=v.approver_id,
                action=ActionView(v.action.value),
                comment=v.comment,
                at=v.at,
                approver_name=v.approver_name,
                approver_display_name=v.approver_display_name,
            )
            for v in request.votes
        ],
        step=stored.step,
    )


def _vote(row: asyncpg.Record) -> domain.Vote:
    return domain.Vote(
        approver_id=row["approver_id"],
        action=domain.VoteAction(row["action"]),
        comment=row["comment"],
        at=row["cast_at"],
        approver_name=row["approver_name"],
        approver_display_name=row["approver_display_name"],
    )


def _stored(row: asyncpg.Record, votes: Sequence[domain.Vote]) -> StoredRequest:
    step = (
        StepRef(run_id=row["step_run_id"], node_id=row["step_node_id"], attempt=row["step_attempt"])
        if row["step_run_id"] is not None
        else None
    )
    request = domain.ApprovalRequest(
        promotion_id=row["promotion_id"],
        tenant_id=row["tenant_id"],
        environment_id=row["environment_id"],
        requester_id=row["requester_id"],
        required=row["required"],
        require_sod=row["require_sod"],
        requested_at=row["requested_at"],
        eligible_groups=frozenset(row["approver_groups"]),
        timeout=row["expires_at"] - row["requested_at"],
        votes=tuple(votes),
        status=domain.ApprovalStatus(row["status"]),
        decided_at=row["decided_at"],
    )
    return StoredRequest(request=request, step=step, correlation_id=row["correlation_id"])


async def _with_votes(conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> list[StoredRequest]:
    """Attach the votes of every row, read in one query."""
    if not rows:
        return []
    vote_rows = await conn.fetch(VOTES_OF, [r["tenant_id"] for r in rows], [r["promotion_id"] for r in rows])
    votes: dict[tuple[UUID, UUID], list[domain.Vote]] = {}
    for vote_row in vote_rows:
        votes.setdefault((vote_row["tenant_id"], vote_row["promotion_id"]), []).append(_vote(vote_row))
    return [_stored(r, votes.get((r["tenant_id"], r["promotion_id"]), [])) for r in rows]


async def insert_request(conn: asyncpg.Connection, stored: StoredRequest, now: datetime) -> bool:
    """Insert a request with its votes (none when new); False when the promotion already has one."""
    request, step = stored.request, stored.step
    inserted = await conn.fetchval(
        INSERT_REQUEST,
        request.tenant_id,
        request.promotion_id,
        request.environment_id,
        request.requester_id,
        request.required,
        request.require_sod,
        sorted(request.eligible_groups),
        request.status.value,
        request.requested_at,
        request.expires_at,
        request.decided_at,
        step.run_id if step else None,
        step.node_id if step else None,
        step.attempt if step else None,
        stored.correlation_id,
        now,
    )
    return bool(inserted)


async def lock_promotion(conn: asyncpg.Connection, tenant: UUID, promotion_id: UUID) -> None:
    """Hold the promotion's approval lock until the transaction ends (opening and cancelling take it)."""
    await conn.execute(LOCK_PROMOTION, tenant, promotion_id)


async def get_request(
    conn: asyncpg.Connection, tenant: UUID, promotion_id: UUID, *, lock: bool = False
) -> StoredRequest | None:
    """A promotion's request with its votes, optionally locked for the rest of the transaction.

    The lock serialises votes on one request, so two votes at once are both counted.
    """
    row = await conn.fetchrow(GET_REQUEST_FOR_UPDATE if lock else GET_REQUEST, tenant, promotion_id)
    if row is None:
        return None
    (stored,) = await _with_votes(conn, [row])
    return stored


async def insert_vote(conn: asyncpg.Connection, tenant: UUID, promotion_id: UUID, vote: domain.Vote) -> None:
    """Record one vote."""
    await conn.execute(
        INSERT_VOTE,
        tenant,
        promotion_id,
        vote.approver_id,
        vote.action.value,
        vote.comment,
        vote.at,
        vote.approver_name,
        vote.approver_display_name,
    )


async def set_outcomes(conn: asyncpg.Connection, stored: Sequence[StoredRequest], now: datetime) -> None:
    """Write the status, decision time and step of several requests in one statement."""
    if not stored:
        return
    await conn.execute(
        SET_OUTCOMES,
        [s.request.tenant_id for s in stored],
        [s.request.promotion_id for s in stored],
        [s.request.status.value for s in stored],
        [s.request.decided_at for s in stored],
        [s.step.run_id if s.step else None for s in stored],
        [s.step.node_id if s.step else None for s in stored],
        [s.step.attempt if s.step else None for s in stored],
        now,
    )


async def record_cancellation(
    conn: asyncpg.Connection, tenant: UUID, promotion_id: UUID, reason: str, now: datetime
) -> None:
    """Remember that a promotion was cancelled before its request was opened."""
    await conn.execute(INSERT_CANCELLATION, tenant, promotion_id, reason, now)


async def cancellation_of(conn: asyncpg.Connection, tenant: UUID, promotion_id: UUID) -> str | None:
    """The reason a promotion was cancelled before its request was opened, if it was."""
    return await conn.fetchval(GET_CANCELLATION, tenant, promotion_id)


async def next_expiry(conn: asyncpg.Connection) -> datetime | None:
    """The earliest expiry of any pending request, across tenants."""
    return await conn.fetchval(NEXT_EXPIRY)


async def lock_due(conn: asyncpg.Connection, now: datetime, limit: int) -> list[StoredRequest]:
    """Lock up to ``limit`` pending requests expired by ``now`` (skipping locked ones), with their votes."""
    rows = await conn.fetch(LOCK_DUE, now, limit)
    return await _with_votes(conn, rows)
