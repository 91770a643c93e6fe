"""SQL of the promotion schema. Every statement filters by tenant, except the two timers' look-ups.

The timers (held promotions, freeze window transitions) look for due rows over every tenant, the way a
scheduler must; everything they then read or change is again addressed by tenant and id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from stella.contracts.promotion import (
    EnvironmentView,
    FreezeWindowView,
    PromotionCell,
    PromotionStatus,
    PromotionView,
    ScanResultView,
)
from stella.contracts.workflow import StepRef
from stella.kit.outbox import write_at_commit
from stella.kit.pagination import aware_datetime, decode_cursor, encode_cursor, int32
from stella.promotion import freeze
from stella.promotion.decision import DecisionRecord
from stella.promotion.domain.environment import Environment, FreezeBehavior
from stella.promotion.domain.promotion import Promotion
from stella.promotion.domain.status import PromotionStatus as Status

_ENVIRONMENT_COLUMNS = """id, name, display_name, order_index, required_approvals, require_sod, config,
    promotion_policy, created_at, updated_at"""
_WINDOW_COLUMNS = """id, tenant_id, environment_id, kind, definition, created_by, created_at, transitions_seen_until,
    next_transition_at"""
_SCAN_COLUMNS = "digest, critical, high, medium, low, max_epss, kev, scanner, scanned_at, recorded_at"
_PROMOTION_COLUMNS = """id, tenant_id, release_id, release_name, release_components, source_environment_id,
    target_environment_id, target_environment_name, status, reason, requested_by, requested_at, updated_at, version,
    required_approvals, require_sod, approver_groups, freeze_behavior, approval_timeout_s, decision_id,
    decision_record, reason_codes, status_message, next_evaluation_at, approval_deadline, approvals_granted_at,
    approved_at, deployment_job_id, rollback_job_id, rollback_succeeded, finished_at, cancelled_by,
    workflow_template, workflow_run_id, gate_step, freeze_override, correlation_id, run_check_at, run_checks,
    cleared_at, deploy_step, requested_by_name, requested_by_display_name"""

# --- environments ----------------------------------------------------------------------------------------

INSERT_ENVIRONMENT = f"""
    INSERT INTO environments (id, tenant_id, name, display_name, order_index, required_approvals, require_sod,
                              config, promotion_policy, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
    ON CONFLICT ON CONSTRAINT environments_name_unique DO NOTHING
    RETURNING {_ENVIRONMENT_COLUMNS}
"""
GET_ENVIRONMENT = f"SELECT {_ENVIRONMENT_COLUMNS} FROM environments WHERE tenant_id = $1 AND id = $2"
GET_ENVIRONMENT_FOR_UPDATE = GET_ENVIRONMENT + " FOR UPDATE"
ALL_ENVIRONMENTS = f"SELECT {_ENVIRONMENT_COLUMNS} FROM environments WHERE tenant_id = $1 ORDER BY order_index, name"
UPDATE_ENVIRONMENT = f"""
    UPDATE environments
       SET display_name = $3, order_index = $4, required_approvals = $5, require_sod = $6, config = $7,
           promotion_policy = $8, updated_at = $9
     WHERE tenant_id = $1 AND id = $2
    RETURNING {_ENVIRONMENT_COLUMNS}
"""
ENVIRONMENT_IN_USE = """
    SELECT EXISTS (SELECT 1 FROM promotions WHERE tenant_id = $1 AND target_environment_id = $2)
        OR EXISTS (SELECT 1 FROM promotions WHERE tenant_id = $1 AND source_environment_id = $2)
"""
DELETE_ENVIRONMENT = "DELETE FROM environments WHERE tenant_id = $1 AND id = $2"
LIST_ENVIRONMENTS = f"""
    SELECT {_ENVIRONMENT_COLUMNS} FROM environments
     WHERE tenant_id = $1
       AND ($2::integer IS NULL OR (order_index, name) > ($2, $3::text))
     ORDER BY order_index, name
     LIMIT $4
"""

BOARD_ENVIRONMENTS = f"""
    SELECT {_ENVIRONMENT_COLUMNS} FROM environments WHERE tenant_id = $1 ORDER BY order_index, name LIMIT $2
"""

# --- freeze windows --------------------------------------------------------------------------------------

INSERT_WINDOW = f"""
    INSERT INTO freeze_windows (id, tenant_id, environment_id, kind, definition, created_by, created_at,
                                transitions_seen_until, next_transition_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)
    RETURNING {_WINDOW_COLUMNS}
"""
GET_WINDOW = f"SELECT {_WINDOW_COLUMNS} FROM freeze_windows WHERE tenant_id = $1 AND environment_id = $2 AND id = $3"
DELETE_WINDOW = "DELETE FROM freeze_windows WHERE tenant_id = $1 AND environment_id = $2 AND id = $3"
WINDOWS_OF_ENVIRONMENT = f"""
    SELECT {_WINDOW_COLUMNS} FROM freeze_windows WHERE tenant_id = $1 AND environment_id = $2 ORDER BY created_at, id
"""
WINDOWS_OF_ENVIRONMENTS = f"""
    SELECT {_WINDOW_COLUMNS} FROM freeze_windows
     WHERE tenant_id = $1 AND environment_id = ANY($2::uuid[])
     ORDER BY created_at, id
"""
LIST_WINDOWS = f"""
    SELECT {_WINDOW_COLUMNS} FROM freeze_windows
     WHERE tenant_id = $1 AND environment_id = $2
       AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid))
     ORDER BY created_at, id
     LIMIT $5
"""
# The freeze timer: the earliest transition over every tenant (the partial index), then the due windows,
# locked so that two replicas never emit the same window's transitions at once.
NEXT_WINDOW_TRANSITION = "SELECT min(next_transition_at) FROM freeze_windows WHERE next_transition_at IS NOT NULL"
DUE_WINDOWS = f"""
    SELECT {_WINDOW_COLUMNS} FROM freeze_windows
     WHERE next_transition_at <= $1
     ORDER BY next_transition_at
     LIMIT $2
     FOR UPDATE SKIP LOCKED
"""
ADVANCE_WINDOWS = """
    UPDATE freeze_windows w
       SET transitions_seen_until = $3, next_transition_at = v.next_at
      FROM unnest($1::uuid[], $2::uuid[], $4::timestamptz[]) AS v(tenant_id, id, next_at)
     WHERE w.tenant_id = v.tenant_id AND w.id = v.id
"""

# --- scan results ----------------------------------------------------------------------------------------

# A scan older than the stored one is ignored: the gate always sees the latest verdict.
UPSERT_SCAN = f"""
    INSERT INTO scan_results (tenant_id, digest, critical, high, medium, low, max_epss, kev, scanner, scanned_at,
                              recorded_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (tenant_id, digest) DO UPDATE
       SET critical = EXCLUDED.critical, high = EXCLUDED.high, medium = EXCLUDED.medium, low = EXCLUDED.low,
           max_epss = EXCLUDED.max_epss, kev = EXCLUDED.kev, scanner = EXCLUDED.scanner,
           scanned_at = EXCLUDED.scanned_at, recorded_at = EXCLUDED.recorded_at
     WHERE scan_results.scanned_at <= EXCLUDED.scanned_at
    RETURNING {_SCAN_COLUMNS}
"""
GET_SCAN = f"SELECT {_SCAN_COLUMNS} FROM scan_results WHERE tenant_id = $1 AND digest = $2"
SCANS_BY_DIGEST = f"SELECT {_SCAN_COLUMNS} FROM scan_results WHERE tenant_id = $1 AND digest = ANY($2::text[])"

# --- promotions ------------------------------------------------------------------------------------------

# Serialises requests for one release, so the order and "one unfinished promotion" rules see every
# promotion committed before them.
LOCK_RELEASE = (
    "SELECT pg_advisory_xact_lock(hashtextextended('stella.promotion.release:' || $1::text || ':' || $2::text, 0))"
)
INSERT_PROMOTION = f"""
    INSERT INTO promotions ({_PROMOTION_COLUMNS})
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22,
            $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, $37, $38, $39, $40, $41, $42, $43)
"""
GET_PROMOTION = f"SELECT {_PROMOTION_COLUMNS} FROM promotions WHERE tenant_id = $1 AND id = $2"
GET_PROMOTION_FOR_UPDATE = GET_PROMOTION + " FOR UPDATE"
PROMOTIONS_OF_RELEASE = f"SELECT {_PROMOTION_COLUMNS} FROM promotions WHERE tenant_id = $1 AND release_id = $2"
UPDATE_PROMOTION = """
    UPDATE promotions
       SET status = $3, updated_at = $4, version = $5, required_approvals = $6, decision_id = $7,
           decision_record = $8, reason_codes = $9, status_message = $10, next_evaluation_at = $11,
           approval_deadline = $12, approvals_granted_at = $13, approved_at = $14, deployment_job_id = $15,
           rollback_job_id = $16, rollback_succeeded = $17, finished_at = $18, cancelled_by = $19, gate_step = $20,
           freeze_override = $21, run_check_at = $22, run_checks = $23, cleared_at = $24, deploy_step = $25
     WHERE tenant_id = $1 AND id = $2
"""
# The front of an environment's deployment queue: whoever holds its slot (at most one, by
# promotions_one_deploy_slot) and the first of the approved promotions waiting with their deploy step held,
# in the order of domain.deploy_order (an approved promotion with neither never deploys: its run had no deploy
# step). Nothing behind the first is read, so a long queue costs one row per change.
DEPLOY_QUEUE_FRONT = f"""
    (SELECT {_PROMOTION_COLUMNS} FROM promotions
      WHERE tenant_id = $1 AND target_environment_id = $2
        AND (status = 'deploying' OR (status = 'approved' AND cleared_at IS NOT NULL)))
    UNION ALL
    (SELECT {_PROMOTION_COLUMNS} FROM promotions
      WHERE tenant_id = $1 AND target_environment_id = $2
        AND status = 'approved' AND cleared_at IS NULL AND deploy_step IS NOT NULL
      ORDER BY COALESCE(approved_at, updated_at), requested_at, id
      LIMIT 1)
"""
# Serialises the deployment queue of one environment until the transaction ends.
LOCK_DEPLOY_QUEUE = (
    "SELECT pg_advisory_xact_lock(hashtextextended('stella.promotion.deploy:' || $1::text || ':' || $2::text, 0))"
)
LIST_PROMOTIONS = f"""
    SELECT {_PROMOTION_COLUMNS} FROM promotions
     WHERE tenant_id = $1
       AND ($2::text IS NULL OR status = $2)
       AND ($3::uuid IS NULL OR release_id = $3)
       AND ($4::uuid IS NULL OR target_environment_id = $4)
       AND ($5::timestamptz IS NULL OR (requested_at, id) < ($5, $6::uuid))
     ORDER BY requested_at DESC, id DESC
     LIMIT $7
"""
# The board's cells: of the newest releases (by their latest promotion), the latest promotion into each
# environment (promotions_by_release serves both the grouping and the DISTINCT ON).
BOARD_CELLS = """
    WITH recent AS (
        SELECT release_id, max(requested_at) AS last_requested_at FROM promotions
         WHERE tenant_id = $1
         GROUP BY release_id
         ORDER BY last_requested_at DESC, release_id
         LIMIT $2
    )
    SELECT DISTINCT ON (recent.last_requested_at, p.release_id, p.target_environment_id)
           p.id, p.release_id, p.release_name, p.target_environment_id, p.status, p.requested_at, p.updated_at
      FROM recent JOIN promotions p ON p.tenant_id = $1 AND p.release_id = recent.release_id
     ORDER BY recent.last_requested_at DESC, p.release_id, p.target_environment_id, p.requested_at DESC, p.id DESC
"""
# A change of the environment's windows or gates may open it earlier than a held promotion expects: such
# promotions are re-evaluated now instead of at their recorded next opening.
REEVALUATE_HELD = """
    UPDATE promotions SET next_evaluation_at = $3
     WHERE tenant_id = $1 AND target_environment_id = $2 AND status IN ('pending_gate', 'approved')
       AND next_evaluation_at > $3
"""
# The hold timer, like the freeze timer: the earliest due promotion over every tenant, then each one locked
# on its own; a promotion another replica is handling is skipped, not waited for.
NEXT_HOLD = "SELECT min(next_evaluation_at) FROM promotions WHERE next_evaluation_at IS NOT NULL"
DUE_HOLDS = """
    SELECT tenant_id, id FROM promotions
     WHERE next_evaluation_at <= $1
     ORDER BY next_evaluation_at
     LIMIT $2
"""
LOCK_DUE_HOLD = GET_PROMOTION + " AND next_evaluation_at <= $3 FOR UPDATE SKIP LOCKED"
POSTPONE_HOLD = "UPDATE promotions SET next_evaluation_at = $3 WHERE tenant_id = $1 AND id = $2"
# The run watch: promotions whose workflow run has not brought them their gate step yet, by when to look.
NEXT_RUN_CHECK = "SELECT min(run_check_at) FROM promotions WHERE run_check_at IS NOT NULL"
DUE_RUN_CHECKS = """
    SELECT tenant_id, id FROM promotions
     WHERE run_check_at <= $1
     ORDER BY run_check_at
     LIMIT $2
"""
LOCK_DUE_RUN_CHECK = GET_PROMOTION + " AND run_check_at <= $3 FOR UPDATE SKIP LOCKED"
POSTPONE_RUN_CHECK = "UPDATE promotions SET run_check_at = $3 WHERE tenant_id = $1 AND id = $2"

# --- decisions -------------------------------------------------------------------------------------------

INSERT_DECISION = """
    INSERT INTO decisions (id, tenant_id, promotion_id, trigger, inputs, clock, record, record_json, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
GET_DECISION = """
    SELECT id, promotion_id, trigger, inputs, clock, record, record_json
      FROM decisions WHERE tenant_id = $1 AND id = $2
"""


# --- mapping ---------------------------------------------------------------------------------------------


def environment_view(row: asyncpg.Record) -> EnvironmentView:
    """Map an environments row."""
    return EnvironmentView(**dict(row))


def environment_of(view: EnvironmentView, tenant: UUID) -> Environment:
    """The domain aggregate of a stored environment (its config was validated when it was written)."""
    return Environment.create(
        id=view.id,
        tenant_id=tenant,
        name=view.name,
        order_index=view.order_index,
        created_at=view.created_at,
        display_name=view.display_name,
        required_approvals=view.required_approvals,
        require_sod=view.require_sod,
        config=view.config,
    )


@dataclass(frozen=True)
class StoredWindow:
    """A freeze window row: the validated window, its view, and the freeze timer's bookkeeping."""

    tenant_id: UUID
    view: FreezeWindowView
    window: freeze.FreezeWindow
    transitions_seen_until: datetime
    next_transition_at: datetime | None


def window_view(
    window: freeze.FreezeWindow, environment_id: UUID, created_by: UUID | None, created_at: datetime
) -> FreezeWindowView:
    """The client view of a validated window."""
    return FreezeWindowView(
        id=UUID(window.id),
        environment_id=environment_id,
        kind=window.kind.value,
        start=window.start,
        end=window.end,
        rrule=window.rrule,
        duration_s=window.duration.total_seconds() if window.duration is not None else None,
        dtstart=window.dtstart,
        timezone=window.timezone,
        reason=window.reason,
        created_by=created_by,
        exceptions=[UUID(p) for p in window.exceptions],
        created_at=created_at,
    )


def stored_window(row: asyncpg.Record) -> StoredWindow:
    """Map a freeze_windows row."""
    window = freeze.parse_window(row["definition"])
    return StoredWindow(
        tenant_id=row["tenant_id"],
        view=window_view(window, row["environment_id"], row["created_by"], row["created_at"]),
        window=window,
        transitions_seen_until=row["transitions_seen_until"],
        next_transition_at=row["next_transition_at"],
    )


def scan_view(row: asyncpg.Record) -> ScanResultView:
    """Map a scan_results row."""
    return ScanResultView(**dict(row))


@dataclass
class StoredPromotion:
    """A promotion row: the domain aggregate and what the service keeps beside it.

    Attributes:
        promotion: The state machine.
        release_name: The release's name when it was requested.
        release_components: The release's digest-pinned components, snapshotted at request time.
        target_environment_name: The target environment's name.
        reason: Why the promotion was requested.
        approver_groups: Groups whose members may approve (from the environment's promotion policy).
        workflow_template: The template of the workflow run executing the promotion.
        workflow_run_id: That run's id, chosen by this service.
        gate_step: The gate step attempt waiting on the gates' decision (completed when they decide).
        freeze_override: The freeze override given for this promotion, if any.
        correlation_id: Correlation id of the request; messages the timers cause carry it.
        decision_id: Id of the latest stored decision (its record is ``promotion.decision``).
        run_check_at: When to look whether the workflow run started, while it has not brought the gate step.
        run_checks: How often the run's start was sent again.
        deploy_step: The held completion of the step before the deploy step (``{run_id, node_id, attempt,
            outputs}``) while the promotion is queued behind another one of its environment.
        requested_by_name: The requester's name when it asked (from the gateway, with the request).
        requested_by_display_name: The requester's display name when it asked, if it had one.
    """

    promotion: Promotion
    release_name: str
    release_components: list[dict[str, Any]]
    target_environment_name: str
    reason: str
    approver_groups: list[str]
    workflow_template: str
    workflow_run_id: UUID
    gate_step: StepRef | None
    freeze_override: dict[str, Any] | None
    correlation_id: UUID
    decision_id: UUID | None = None
    run_check_at: datetime | None = None
    run_checks: int = 0
    deploy_step: dict[str, Any] | None = None
    requested_by_name: str | None = None
    requested_by_display_name: str | None = None

    @property
    def awaits_run(self) -> bool:
        """Whether the promotion waits for its workflow run to bring the gate step (the run watch applies)."""
        return self.promotion.status is Status.PENDING_GATE and self.gate_step is None


def stored_promotion(row: asyncpg.Record) -> StoredPromotion:
    """Map a promotions row."""
    promotion = Promotion(
        id=row["id"],
        tenant_id=row["tenant_id"],
        release_id=row["release_id"],
        target_environment_id=row["target_environment_id"],
        source_environment_id=row["source_environment_id"],
        requested_by=row["requested_by"],
        requested_at=row["requested_at"],
        status=Status(row["status"]),
        updated_at=row["updated_at"],
        required_approvals=row["required_approvals"],
        require_sod=row["require_sod"],
        freeze_behavior=FreezeBehavior(row["freeze_behavior"]),
        approval_timeout_s=row["approval_timeout_s"],
        version=row["version"],
        decision=row["decision_record"],
        reason_codes=tuple(row["reason_codes"]),
        status_message=row["status_message"],
        next_open=row["next_evaluation_at"],
        approval_deadline=row["approval_deadline"],
        approvals_granted_at=row["approvals_granted_at"],
        approved_at=row["approved_at"],
        deployment_job_id=row["deployment_job_id"],
        rollback_job_id=row["rollback_job_id"],
        rollback_succeeded=row["rollback_succeeded"],
        finished_at=row["finished_at"],
        cancelled_by=row["cancelled_by"],
        cleared_at=row["cleared_at"],
    )
    return StoredPromotion(
        promotion=promotion,
        release_name=row["release_name"],
        release_components=row["release_components"],
        target_environment_name=row["target_environment_name"],
        reason=row["reason"],
        approver_groups=row["approver_groups"],
        workflow_template=row["workflow_template"],
        workflow_run_id=row["workflow_run_id"],
        gate_step=StepRef.model_validate(row["gate_step"]) if row["gate_step"] is not None else None,
        freeze_override=row["freeze_override"],
        correlation_id=row["correlation_id"],
        decision_id=row["decision_id"],
        run_check_at=row["run_check_at"],
        run_checks=row["run_checks"],
        deploy_step=row["deploy_step"],
        requested_by_name=row["requested_by_name"],
        requested_by_display_name=row["requested_by_display_name"],
    )


def _principal(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


def promotion_view(stored: StoredPromotion) -> PromotionView:
    """The client view of a promotion."""
    p = stored.promotion
    return PromotionView(
        id=p.id,
        release_id=p.release_id,
        release_name=stored.release_name,
        release_components=stored.release_components,
        source_environment_id=p.source_environment_id,
        target_environment_id=p.target_environment_id,
        target_environment_name=stored.target_environment_name,
        status=PromotionStatus(p.status.value),
        reason=stored.reason,
        requested_by=_principal(p.requested_by),
        requested_at=p.requested_at,
        updated_at=p.updated_at,
        decision_record=dict(p.decision) if p.decision is not None else None,
        workflow_run_id=stored.workflow_run_id,
        next_evaluation_at=p.next_open,
        freeze_override=stored.freeze_override,
        status_message=p.status_message,
        reason_codes=list(p.reason_codes),
        deployment_job_id=p.deployment_job_id,
        rollback_job_id=p.rollback_job_id,
        requested_by_name=stored.requested_by_name,
        requested_by_display_name=stored.requested_by_display_name,
    )


@dataclass(frozen=True)
class StoredDecision:
    """A stored decision: the inputs and clock reading it was computed from, and its record."""

    id: UUID
    promotion_id: UUID
    trigger: str
    inputs: dict[str, Any]
    clock: datetime
    record: dict[str, Any]
    record_json: str


# --- environments ----------------------------------------------------------------------------------------


async def insert_environment(
    conn: asyncpg.Connection, tenant: UUID, environment: Environment, policy: dict[str, Any], now: datetime
) -> EnvironmentView | None:
    """Insert an environment; None when the name is taken."""
    row = await conn.fetchrow(
        INSERT_ENVIRONMENT,
        environment.id,
        tenant,
        environment.name,
        environment.display_name,
        environment.order_index,
        environment.required_approvals,
        environment.require_sod,
        environment.config.to_dict(),
        policy,
        now,
    )
    return environment_view(row) if row else None


async def get_environment(
    conn: asyncpg.Connection, tenant: UUID, eid: UUID, *, lock: bool = False
) -> EnvironmentView | None:
    """One environment, optionally locked for the rest of the transaction."""
    row = await conn.fetchrow(GET_ENVIRONMENT_FOR_UPDATE if lock else GET_ENVIRONMENT, tenant, eid)
    return environment_view(row) if row else None


async def all_environments(conn: asyncpg.Connection, tenant: UUID) -> list[EnvironmentView]:
    """Every environment of the tenant, in promotion order (the order rule needs them all)."""
    return [environment_view(r) for r in await conn.fetch(ALL_ENVIRONMENTS, tenant)]


async def board_environments(conn: asyncpg.Connection, tenant: UUID, limit: int) -> list[EnvironmentView]:
    """The first ``limit`` environments of the tenant, in promotion order."""
    return [environment_view(r) for r in await conn.fetch(BOARD_ENVIRONMENTS, tenant, limit)]


async def update_environment(
    conn: asyncpg.Connection, tenant: UUID, environment: Environment, policy: dict[str, Any], now: datetime
) -> EnvironmentView:
    """Write an environment's mutable fields."""
    row = await conn.fetchrow(
        UPDATE_ENVIRONMENT,
        tenant,
        environment.id,
        environment.display_name,
        environment.order_index,
        environment.required_approvals,
        environment.require_sod,
        environment.config.to_dict(),
        policy,
        now,
    )
    return environment_view(row)


async def environment_in_use(conn: asyncpg.Connection, tenant: UUID, eid: UUID) -> bool:
    """Whether any promotion names the environment as its target or source."""
    return bool(await conn.fetchval(ENVIRONMENT_IN_USE, tenant, eid))


async def delete_environment(conn: asyncpg.Connection, tenant: UUID, eid: UUID) -> None:
    """Delete an environment (its windows go with it)."""
    await conn.execute(DELETE_ENVIRONMENT, tenant, eid)


async def list_environments(
    conn: asyncpg.Connection, tenant: UUID, page_size: int, page_token: str | None
) -> tuple[list[EnvironmentView], str | None]:
    """A page of environments in promotion order."""
    cursor = decode_cursor(page_token, int32, str, kind="environments")
    rows = await conn.fetch(
        LIST_ENVIRONMENTS, tenant, cursor[0] if cursor else None, cursor[1] if cursor else None, page_size + 1
    )
    items = [environment_view(r) for r in rows[:page_size]]
    token = encode_cursor(items[-1].order_index, items[-1].name, kind="environments") if len(rows) > page_size else None
    return items, token


async def reevaluate_held(conn: asyncpg.Connection, tenant: UUID, eid: UUID, now: datetime) -> None:
    """Make the environment's held promotions due now."""
    await conn.execute(REEVALUATE_HELD, tenant, eid, now)


# --- freeze windows --------------------------------------------------------------------------------------


async def insert_window(
    conn: asyncpg.Connection,
    tenant: UUID,
    environment_id: UUID,
    window: freeze.FreezeWindow,
    created_by: UUID | None,
    now: datetime,
    next_transition_at: datetime | None,
) -> StoredWindow:
    """Insert a validated window; its transitions are watched from ``now`` on."""
    row = await conn.fetchrow(
        INSERT_WINDOW,
        UUID(window.id),
        tenant,
        environment_id,
        window.kind.value,
        window.to_dict(),
        created_by,
        now,
        next_transition_at,
    )
    return stored_window(row)


async def get_window(conn: asyncpg.Connection, tenant: UUID, eid: UUID, wid: UUID) -> StoredWindow | None:
    """One window of an environment."""
    row = await conn.fetchrow(GET_WINDOW, tenant, eid, wid)
    return stored_window(row) if row else None


async def delete_window(conn: asyncpg.Connection, tenant: UUID, eid: UUID, wid: UUID) -> None:
    """Delete a window."""
    await conn.execute(DELETE_WINDOW, tenant, eid, wid)


async def windows_of_environment(conn: asyncpg.Connection, tenant: UUID, eid: UUID) -> list[StoredWindow]:
    """Every window of an environment, oldest first."""
    return [stored_window(r) for r in await conn.fetch(WINDOWS_OF_ENVIRONMENT, tenant, eid)]


async def windows_of_environments(
    conn: asyncpg.Connection, tenant: UUID, eids: Sequence[UUID]
) -> dict[UUID, list[StoredWindow]]:
    """The windows of each of the environments, oldest first (one statement for them all)."""
    found: dict[UUID, list[StoredWindow]] = {eid: [] for eid in eids}
    for row in await conn.fetch(WINDOWS_OF_ENVIRONMENTS, tenant, list(eids)):
        found[row["environment_id"]].append(stored_window(row))
    return found


async def list_windows(
    conn: asyncpg.Connection, tenant: UUID, eid: UUID, page_size: int, page_token: str | None
) -> tuple[list[FreezeWindowView], str | None]:
    """A page of an environment's windows, oldest first."""
    cursor = decode_cursor(page_token, aware_datetime, UUID, kind="freeze-windows")
    rows = await conn.fetch(
        LIST_WINDOWS, tenant, eid, cursor[0] if cursor else None, cursor[1] if cursor else None, page_size + 1
    )
    items = [stored_window(r).view for r in rows[:page_size]]
    token = (
        encode_cursor(items[-1].created_at.isoformat(), items[-1].id, kind="freeze-windows")
        if len(rows) > page_size
        else None
    )
    return items, token


async def next_window_transition(conn: asyncpg.Connection) -> datetime | None:
    """When the next window of any tenant opens or closes."""
    return await conn.fetchval(NEXT_WINDOW_TRANSITION)


async def due_windows(conn: asyncpg.Connection, now: datetime, limit: int) -> list[StoredWindow]:
    """Windows whose next transition has come, locked (others' locked rows are skipped)."""
    return [stored_window(r) for r in await conn.fetch(DUE_WINDOWS, now, limit)]


async def advance_windows(
    conn: asyncpg.Connection, seen_until: datetime, windows: Sequence[tuple[UUID, UUID, datetime | None]]
) -> None:
    """Move the watermark of several windows to ``seen_until`` and set each one's next transition, in one
    statement: ``windows`` holds (tenant, window id, next transition)."""
    if windows:
        await conn.execute(
            ADVANCE_WINDOWS,
            [w[0] for w in windows],
            [w[1] for w in windows],
            seen_until,
            [w[2] for w in windows],
        )


# --- scan results ----------------------------------------------------------------------------------------


async def upsert_scan(conn: asyncpg.Connection, tenant: UUID, scan: ScanResultView) -> ScanResultView | None:
    """Store a scan verdict unless a newer one is stored; None when the stored one is newer."""
    row = await conn.fetchrow(
        UPSERT_SCAN,
        tenant,
        scan.digest,
        scan.critical,
        scan.high,
        scan.medium,
        scan.low,
        scan.max_epss,
        scan.kev,
        scan.scanner,
        scan.scanned_at,
        scan.recorded_at,
    )
    return scan_view(row) if row else None


async def get_scan(conn: asyncpg.Connection, tenant: UUID, digest: str) -> ScanResultView | None:
    """The stored verdict of one digest."""
    row = await conn.fetchrow(GET_SCAN, tenant, digest)
    return scan_view(row) if row else None


async def scans_by_digest(conn: asyncpg.Connection, tenant: UUID, digests: list[str]) -> dict[str, ScanResultView]:
    """The stored verdicts of several digests, in one query."""
    if not digests:
        return {}
    return {r["digest"]: scan_view(r) for r in await conn.fetch(SCANS_BY_DIGEST, tenant, digests)}


# --- promotions ------------------------------------------------------------------------------------------


async def lock_release(conn: asyncpg.Connection, tenant: UUID, release_id: UUID) -> None:
    """Serialise promotion requests of one release until the transaction ends."""
    await conn.execute(LOCK_RELEASE, str(tenant), str(release_id))


def _step_json(step: StepRef | None) -> dict[str, Any] | None:
    return step.model_dump(mode="json") if step is not None else None


_INSERT_PROMOTION_TYPES = (
    "uuid", "uuid", "uuid", "text", "jsonb", "uuid", "uuid", "text", "text", "text", "text", "timestamptz",
    "timestamptz", "integer", "integer", "boolean", "jsonb", "text", "integer", "uuid", "jsonb", "text[]", "text",
    "timestamptz", "timestamptz", "timestamptz", "timestamptz", "uuid", "uuid", "boolean", "timestamptz", "text",
    "text", "uuid", "jsonb", "jsonb", "uuid", "timestamptz", "integer", "timestamptz", "jsonb", "text", "text",
)  # fmt: skip
"""The SQL types of ``INSERT_PROMOTION``'s parameters, in the order of ``_PROMOTION_COLUMNS``."""


async def insert_promotion_at_commit(conn: asyncpg.Connection, stored: StoredPromotion) -> None:
    """Insert a new promotion with the statement that commits the transaction when its owner defers the last
    writes (:func:`stella.kit.outbox.write_at_commit`), else now: nothing in the transaction reads it after."""
    await write_at_commit(conn, INSERT_PROMOTION, _insert_args(stored), _INSERT_PROMOTION_TYPES)


def _insert_args(stored: StoredPromotion) -> tuple[object, ...]:
    p = stored.promotion
    return (
        p.id,
        p.tenant_id,
        p.release_id,
        stored.release_name,
        stored.release_components,
        p.source_environment_id,
        p.target_environment_id,
        stored.target_environment_name,
        p.status.value,
        stored.reason,
        p.requested_by,
        p.requested_at,
        p.updated_at,
        p.version,
        p.required_approvals,
        p.require_sod,
        stored.approver_groups,
        p.freeze_behavior.value,
        p.approval_timeout_s,
        stored.decision_id,
        dict(p.decision) if p.decision is not None else None,
        list(p.reason_codes),
        p.status_message,
        p.next_open,
        p.approval_deadline,
        p.approvals_granted_at,
        p.approved_at,
        p.deployment_job_id,
        p.rollback_job_id,
        p.rollback_succeeded,
        p.finished_at,
        p.cancelled_by,
        stored.workflow_template,
        stored.workflow_run_id,
        _step_json(stored.gate_step),
        stored.freeze_override,
        stored.correlation_id,
        _run_check_at(stored),
        stored.run_checks,
        p.cleared_at,
        stored.deploy_step,
        stored.requested_by_name,
        stored.requested_by_display_name,
    )


async def get_promotion(
    conn: asyncpg.Connection, tenant: UUID, pid: UUID, *, lock: bool = False
) -> StoredPromotion | None:
    """One promotion, optionally locked for the rest of the transaction."""
    row = await conn.fetchrow(GET_PROMOTION_FOR_UPDATE if lock else GET_PROMOTION, tenant, pid)
    return stored_promotion(row) if row else None


async def promotions_of_release(conn: asyncpg.Connection, tenant: UUID, release_id: UUID) -> list[StoredPromotion]:
    """Every promotion of a release, in any environment (the order rule reads them)."""
    return [stored_promotion(r) for r in await conn.fetch(PROMOTIONS_OF_RELEASE, tenant, release_id)]


_UPDATE_PROMOTION_TYPES = (
    "uuid", "uuid", "text", "timestamptz", "integer", "integer", "uuid", "jsonb", "text[]", "text", "timestamptz",
    "timestamptz", "timestamptz", "timestamptz", "uuid", "uuid", "boolean", "timestamptz", "text", "jsonb", "jsonb",
    "timestamptz", "integer", "timestamptz", "jsonb",
)  # fmt: skip
"""The SQL types of ``UPDATE_PROMOTION``'s parameters, in order (for :func:`update_promotion_at_commit`)."""


async def update_promotion(conn: asyncpg.Connection, stored: StoredPromotion) -> None:
    """Write a promotion's mutable fields."""
    await conn.execute(UPDATE_PROMOTION, *_update_args(stored))


async def update_promotion_at_commit(conn: asyncpg.Connection, stored: StoredPromotion) -> None:
    """Write a promotion's mutable fields with the statement that commits the transaction, when its owner
    defers the last writes (:func:`stella.kit.outbox.write_at_commit`), else now: for a change's last write
    of the promotion, which nothing in the transaction reads afterwards."""
    await write_at_commit(conn, UPDATE_PROMOTION, _update_args(stored), _UPDATE_PROMOTION_TYPES)


def _update_args(stored: StoredPromotion) -> tuple[object, ...]:
    p = stored.promotion
    return (
        p.tenant_id,
        p.id,
        p.status.value,
        p.updated_at,
        p.version,
        p.required_approvals,
        stored.decision_id,
        dict(p.decision) if p.decision is not None else None,
        list(p.reason_codes),
        p.status_message,
        p.next_open,
        p.approval_deadline,
        p.approvals_granted_at,
        p.approved_at,
        p.deployment_job_id,
        p.rollback_job_id,
        p.rollback_succeeded,
        p.finished_at,
        p.cancelled_by,
        _step_json(stored.gate_step),
        stored.freeze_override,
        _run_check_at(stored),
        stored.run_checks,
        p.cleared_at,
        stored.deploy_step,
    )


async def lock_deploy_queue(conn: asyncpg.Connection, tenant: UUID, environment_id: UUID) -> None:
    """Serialise changes to one environment's deployment queue until the transaction ends."""
    await conn.execute(LOCK_DEPLOY_QUEUE, str(tenant), str(environment_id))


async def deploy_queue_front(conn: asyncpg.Connection, tenant: UUID, environment_id: UUID) -> list[StoredPromotion]:
    """Who holds the environment's deployment slot, and the first approved promotion waiting in line.

    Enough for :func:`~stella.promotion.domain.promotion.next_to_deploy` and ``clear_to_deploy``: a holder
    answers "none may start", and otherwise only the first in line can be next.
    """
    return [stored_promotion(r) for r in await conn.fetch(DEPLOY_QUEUE_FRONT, tenant, environment_id)]


def _run_check_at(stored: StoredPromotion) -> datetime | None:
    # Watched only while the run has not brought the gate step: its arrival or any decision ends the watch.
    return stored.run_check_at if stored.awaits_run else None


async def list_promotions(
    conn: asyncpg.Connection,
    tenant: UUID,
    status: str | None,
    release_id: UUID | None,
    environment_id: UUID | None,
    page_size: int,
    page_token: str | None,
) -> tuple[list[PromotionView], str | None]:
    """A page of promotions, newest first."""
    cursor = decode_cursor(page_token, aware_datetime, UUID, kind="promotions")
    rows = await conn.fetch(
        LIST_PROMOTIONS,
        tenant,
        status,
        release_id,
        environment_id,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        page_size + 1,
    )
    items = [promotion_view(stored_promotion(r)) for r in rows[:page_size]]
    token = (
        encode_cursor(items[-1].requested_at.isoformat(), items[-1].id, kind="promotions")
        if len(rows) > page_size
        else None
    )
    return items, token


async def board_cells(conn: asyncpg.Connection, tenant: UUID, releases: int) -> list[PromotionCell]:
    """The latest promotion of each of the ``releases`` newest releases into each environment, newest release
    first (a release's latest promotion decides how new it is)."""
    if releases <= 0:
        return []
    return [
        PromotionCell(
            promotion_id=r["id"],
            release_id=r["release_id"],
            release_name=r["release_name"],
            environment_id=r["target_environment_id"],
            status=PromotionStatus(r["status"]),
            requested_at=r["requested_at"],
            updated_at=r["updated_at"],
        )
        for r in await conn.fetch(BOARD_CELLS, tenant, releases)
    ]


async def next_hold(conn: asyncpg.Connection) -> datetime | None:
    """When the next held promotion of any tenant is due for re-evaluation."""
    return await conn.fetchval(NEXT_HOLD)


async def due_holds(conn: asyncpg.Connection, now: datetime, limit: int) -> list[tuple[UUID, UUID]]:
    """(tenant, promotion) of the held promotions due at ``now``, earliest first."""
    return [(r["tenant_id"], r["id"]) for r in await conn.fetch(DUE_HOLDS, now, limit)]


async def lock_due_hold(conn: asyncpg.Connection, tenant: UUID, pid: UUID, now: datetime) -> StoredPromotion | None:
    """Lock a held promotion that is still due; None when it is not, or another replica holds it."""
    row = await conn.fetchrow(LOCK_DUE_HOLD, tenant, pid, now)
    return stored_promotion(row) if row else None


async def postpone_hold(conn: asyncpg.Connection, tenant: UUID, pid: UUID, delay: timedelta, now: datetime) -> None:
    """Try a held promotion whose re-evaluation failed again later."""
    await conn.execute(POSTPONE_HOLD, tenant, pid, now + delay)


async def next_run_check(conn: asyncpg.Connection) -> datetime | None:
    """When the run watch must next look at a promotion of any tenant."""
    return await conn.fetchval(NEXT_RUN_CHECK)


async def due_run_checks(conn: asyncpg.Connection, now: datetime, limit: int) -> list[tuple[UUID, UUID]]:
    """(tenant, promotion) of the promotions whose run check is due at ``now``, earliest first."""
    return [(r["tenant_id"], r["id"]) for r in await conn.fetch(DUE_RUN_CHECKS, now, limit)]


async def lock_due_run_check(
    conn: asyncpg.Connection, tenant: UUID, pid: UUID, now: datetime
) -> StoredPromotion | None:
    """Lock a promotion whose run check is still due; None when it is not, or another replica holds it."""
    row = await conn.fetchrow(LOCK_DUE_RUN_CHECK, tenant, pid, now)
    return stored_promotion(row) if row else None


async def postpone_run_check(conn: asyncpg.Connection, tenant: UUID, pid: UUID, at: datetime) -> None:
    """Look at a promotion whose run check failed again at ``at``."""
    await conn.execute(POSTPONE_RUN_CHECK, tenant, pid, at)


# --- decisions -------------------------------------------------------------------------------------------


_INSERT_DECISION_TYPES = ("uuid", "uuid", "uuid", "text", "jsonb", "timestamptz", "jsonb", "text", "timestamptz")
"""The SQL types of ``INSERT_DECISION``'s parameters, in order."""


async def insert_decision_at_commit(
    conn: asyncpg.Connection,
    tenant: UUID,
    did: UUID,
    promotion_id: UUID,
    trigger: str,
    inputs: dict[str, Any],
    clock: datetime,
    record: DecisionRecord,
    now: datetime,
) -> None:
    """Store a decision with the inputs and clock reading it was computed from, with the statement that commits
    the transaction when its owner defers the last writes (:func:`stella.kit.outbox.write_at_commit`), else now:
    no transaction reads the decision it stores."""
    await write_at_commit(
        conn,
        INSERT_DECISION,
        (did, tenant, promotion_id, trigger, inputs, clock, record.to_dict(), record.to_json().decode(), now),
        _INSERT_DECISION_TYPES,
    )


async def get_decision(conn: asyncpg.Connection, tenant: UUID, did: UUID) -> StoredDecision | None:
    """One stored decision."""
    row = await conn.fetchrow(GET_DECISION, tenant, did)
    return StoredDecision(**dict(row)) if row else None
