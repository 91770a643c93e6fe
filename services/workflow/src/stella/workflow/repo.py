"""SQL of the workflow schema. Every statement filters by tenant, except the run timer's two statements
that look for due runs across the installation (the timer serves every tenant)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from stella.contracts import workflow as c
from stella.kit.outbox import write_at_commit
from stella.kit.pagination import decode_cursor, encode_cursor
from stella.workflow.domain.run import StepRun, WorkflowRun
from stella.workflow.domain.states import RunStatus, SkipReason, StepStatus
from stella.workflow.engine import step_run_id

_TEMPLATE_COLUMNS = "id, tenant_id, name, version, description, definition, is_builtin, created_at"
_RUN_COLUMNS = """id, tenant_id, template_id, template_name, template_version, subject_id, correlation_id, status,
    inputs, context, outputs, error, created_at, started_at, completed_at, next_wakeup_at"""
_STEP_COLUMNS = """id, run_id, node_id, status, attempt_number, started_at, finished_at, resume_at, inputs, outputs,
    error, skip_reason, logs"""

INSERT_BUILTIN_TEMPLATES = """
    INSERT INTO templates (id, tenant_id, name, version, description, definition, created_at)
    SELECT t.id, NULL, t.name, t.version, t.description, t.definition, $2
      FROM jsonb_to_recordset($1::jsonb) AS t(id uuid, name text, version integer, description text, definition jsonb)
    ON CONFLICT DO NOTHING
"""
# Versions of one tenant's template name are numbered under this lock, so two saves at once get 1 and 2.
LOCK_TEMPLATE_NAME = (
    "SELECT pg_advisory_xact_lock(hashtextextended('stella.workflow.template:' || $1::uuid::text || ':' || $2, 0))"
)
NEXT_TEMPLATE_VERSION = "SELECT COALESCE(max(version), 0) + 1 FROM templates WHERE tenant_id = $1 AND name = $2"
INSERT_TEMPLATE = f"""
    INSERT INTO templates (id, tenant_id, name, version, description, definition, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    RETURNING {_TEMPLATE_COLUMNS}
"""
# A tenant sees its own templates and the built-in ones (tenant_id NULL).
GET_TEMPLATE = f"""
    SELECT {_TEMPLATE_COLUMNS} FROM templates
     WHERE (tenant_id = $1 OR tenant_id IS NULL) AND name = $2 AND ($3::integer IS NULL OR version = $3)
     ORDER BY version DESC
     LIMIT 1
"""
GET_TEMPLATE_BY_ID = (
    f"SELECT {_TEMPLATE_COLUMNS} FROM templates WHERE (tenant_id = $1 OR tenant_id IS NULL) AND id = $2"
)
LIST_TEMPLATES = f"""
    SELECT DISTINCT ON (name) {_TEMPLATE_COLUMNS} FROM templates
     WHERE (tenant_id = $1 OR tenant_id IS NULL)
       AND ($2::text IS NULL OR name > $2)
     ORDER BY name, version DESC
     LIMIT $3
"""

INSERT_RUN = """
    INSERT INTO runs (id, tenant_id, template_id, template_name, template_version, subject_id, correlation_id,
                      status, inputs, context, outputs, error, created_at, started_at, completed_at,
                      next_wakeup_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $13)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
"""
GET_RUN = f"SELECT {_RUN_COLUMNS} FROM runs WHERE tenant_id = $1 AND id = $2"
GET_RUN_FOR_UPDATE = GET_RUN + " FOR UPDATE"
UPDATE_RUN = """
    UPDATE runs
       SET status = $3, outputs = $4, error = $5, started_at = $6, completed_at = $7, next_wakeup_at = $8,
           updated_at = $9
     WHERE tenant_id = $1 AND id = $2
"""
# One statement for any number of steps: the rows travel as one JSON array.
UPSERT_STEPS = """
    INSERT INTO step_runs (id, tenant_id, run_id, node_id, position, status, attempt_number, started_at,
                           finished_at, resume_at, inputs, outputs, error, skip_reason, logs, updated_at)
    SELECT s.id, $1, $2, s.node_id, s.position, s.status, s.attempt_number, s.started_at, s.finished_at,
           s.resume_at, s.inputs, s.outputs, s.error, s.skip_reason, s.logs, $4
      FROM jsonb_to_recordset($3::jsonb) AS s(id uuid, node_id text, position integer, status text,
                                              attempt_number integer, started_at timestamptz,
                                              finished_at timestamptz, resume_at timestamptz, inputs jsonb,
                                              outputs jsonb, error text, skip_reason text, logs text)
    ON CONFLICT (run_id, node_id) DO UPDATE
       SET status = EXCLUDED.status, attempt_number = EXCLUDED.attempt_number, started_at = EXCLUDED.started_at,
           finished_at = EXCLUDED.finished_at, resume_at = EXCLUDED.resume_at, inputs = EXCLUDED.inputs,
           outputs = EXCLUDED.outputs, error = EXCLUDED.error, skip_reason = EXCLUDED.skip_reason,
           logs = EXCLUDED.logs, updated_at = EXCLUDED.updated_at
     WHERE step_runs.tenant_id = EXCLUDED.tenant_id
"""
GET_STEPS = f"SELECT {_STEP_COLUMNS} FROM step_runs WHERE tenant_id = $1 AND run_id = $2 ORDER BY position"

# The run timer: the earliest wake-up over every tenant (an index-only look at runs_next_wakeup), the due
# runs, then each due run locked on its own; a run another replica is advancing is skipped, not waited for.
NEXT_WAKEUP = "SELECT min(next_wakeup_at) FROM runs WHERE next_wakeup_at IS NOT NULL"
DUE_RUNS = """
    SELECT tenant_id, id FROM runs
     WHERE next_wakeup_at <= $1
     ORDER BY next_wakeup_at
     LIMIT $2
"""
LOCK_DUE_RUN = GET_RUN + " AND next_wakeup_at <= $3 FOR UPDATE SKIP LOCKED"
POSTPONE_RUN = "UPDATE runs SET next_wakeup_at = $3 WHERE tenant_id = $1 AND id = $2"


@dataclass(frozen=True)
class TemplateRecord:
    """A stored template version."""

    id: UUID
    tenant_id: UUID | None
    name: str
    version: int
    description: str
    definition: dict[str, Any]
    is_builtin: bool
    created_at: datetime


@dataclass(frozen=True)
class RunRecord:
    """A stored run: the domain run and what only the service keeps about it."""

    run: WorkflowRun
    subject_id: UUID | None
    correlation_id: UUID


@dataclass(frozen=True)
class StepRecords:
    """A run's stored steps in topological order, and each step's logs (kept beside the domain state)."""

    steps: tuple[StepRun, ...]
    logs: dict[str, str]


# --- mapping ------------------------------------------------------------------------------------------------


def template_record(row: asyncpg.Record) -> TemplateRecord:
    """Map a templates row."""
    return TemplateRecord(**dict(row))


def template_view(record: TemplateRecord) -> c.TemplateView:
    """The wire view of a template version (inputs keyed by name)."""
    definition = record.definition
    inputs = {
        spec["name"]: {k: copy.deepcopy(v) for k, v in spec.items() if k != "name"}
        for spec in definition.get("inputs") or []
    }
    return c.TemplateView(
        id=record.id,
        tenant_id=record.tenant_id,
        name=record.name,
        version=record.version,
        nodes=[c.NodeSpec.model_validate(node) for node in definition.get("nodes") or []],
        edges=[c.EdgeSpec.model_validate(edge) for edge in definition.get("edges") or []],
        inputs=inputs,
        outputs=dict(definition.get("outputs") or {}),
        is_builtin=record.is_builtin,
        created_at=record.created_at,
    )


def run_record(row: asyncpg.Record) -> RunRecord:
    """Map a runs row."""
    run = WorkflowRun(
        id=row["id"],
        tenant_id=row["tenant_id"],
        template_id=row["template_id"],
        template_name=row["template_name"],
        template_version=row["template_version"],
        status=RunStatus(row["status"]),
        inputs=row["inputs"],
        created_at=row["created_at"],
        context=row["context"],
        outputs=row["outputs"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        error=row["error"],
        next_wakeup_at=row["next_wakeup_at"],
    )
    return RunRecord(run=run, subject_id=row["subject_id"], correlation_id=row["correlation_id"])


def step_from_row(row: asyncpg.Record) -> StepRun:
    """Map a step_runs row to the domain's step state."""
    return StepRun(
        run_id=row["run_id"],
        node_id=row["node_id"],
        status=StepStatus(row["status"]),
        attempt_number=row["attempt_number"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        resume_at=row["resume_at"],
        inputs=row["inputs"],
        outputs=row["outputs"],
        error=row["error"],
        skip_reason=SkipReason(row["skip_reason"]) if row["skip_reason"] else None,
    )


def run_view(record: RunRecord, steps: Iterable[StepRun], logs: Mapping[str, str]) -> c.RunView:
    """The wire view of a run and its steps (each step's latest attempt)."""
    run = record.run
    return c.RunView(
        id=run.id,
        template_id=run.template_id,
        template_name=run.template_name,
        template_version=run.template_version,
        subject_id=record.subject_id,
        status=c.RunStatus(run.status.value),
        inputs=copy.deepcopy(dict(run.inputs)),
        outputs=copy.deepcopy(dict(run.outputs)),
        started_at=run.started_at,
        completed_at=run.completed_at,
        steps=[
            c.StepRunView(
                id=step_run_id(run.id, step.node_id),
                node_id=step.node_id,
                status=c.StepStatus(step.status.value),
                attempt_number=step.attempt_number,
                inputs=copy.deepcopy(dict(step.inputs)),
                outputs=copy.deepcopy(dict(step.outputs)),
                error=step.error,
                logs=logs.get(step.node_id, ""),
                started_at=step.started_at,
                completed_at=step.finished_at,
            )
            for step in steps
        ],
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- templates ----------------------------------------------------------------------------------------------


async def insert_builtin_templates(
    conn: asyncpg.Connection, templates: Sequence[dict[str, Any]], now: datetime
) -> None:
    """Store built-in template versions not stored yet (``{id, name, version, description, definition}``)."""
    await conn.execute(INSERT_BUILTIN_TEMPLATES, list(templates), now)


async def next_template_version(conn: asyncpg.Connection, tenant: UUID, name: str) -> int:
    """Lock the tenant's template name for this transaction and return its next version number."""
    await conn.execute(LOCK_TEMPLATE_NAME, tenant, name)
    return int(await conn.fetchval(NEXT_TEMPLATE_VERSION, tenant, name))


async def insert_template(
    conn: asyncpg.Connection,
    tenant: UUID,
    template_id: UUID,
    name: str,
    version: int,
    description: str,
    definition: dict[str, Any],
    now: datetime,
) -> TemplateRecord:
    """Store a tenant template version."""
    row = await conn.fetchrow(INSERT_TEMPLATE, template_id, tenant, name, version, description, definition, now)
    return template_record(row)


async def get_template(
    conn: asyncpg.Connection, tenant: UUID, name: str, version: int | None = None
) -> TemplateRecord | None:
    """A template version visible to the tenant: the given version, or the latest."""
    row = await conn.fetchrow(GET_TEMPLATE, tenant, name, version)
    return template_record(row) if row else None


async def get_template_by_id(conn: asyncpg.Connection, tenant: UUID, template_id: UUID) -> TemplateRecord | None:
    """A template version visible to the tenant, by row id."""
    row = await conn.fetchrow(GET_TEMPLATE_BY_ID, tenant, template_id)
    return template_record(row) if row else None


async def list_templates(
    conn: asyncpg.Connection, tenant: UUID, page_size: int, page_token: str | None
) -> tuple[list[TemplateRecord], str | None]:
    """A page of the latest version of every template the tenant sees, by name."""
    cursor = decode_cursor(page_token, str, kind="templates")
    after = cursor[0] if cursor else None
    rows = await conn.fetch(LIST_TEMPLATES, tenant, after, page_size + 1)
    records = [template_record(r) for r in rows[:page_size]]
    token = encode_cursor(records[-1].name, kind="templates") if len(rows) > page_size else None
    return records, token


# --- runs ---------------------------------------------------------------------------------------------------


async def insert_run(conn: asyncpg.Connection, record: RunRecord, now: datetime) -> bool:
    """Store a new run; False when a run with this id already exists."""
    run = record.run
    inserted = await conn.fetchval(
        INSERT_RUN,
        run.id,
        run.tenant_id,
        run.template_id,
        run.template_name,
        run.template_version,
        record.subject_id,
        record.correlation_id,
        run.status.value,
        dict(run.inputs),
        dict(run.context),
        dict(run.outputs),
        run.error,
        now,
        run.started_at,
        run.completed_at,
        run.next_wakeup_at,
    )
    return inserted is not None


async def get_run(conn: asyncpg.Connection, tenant: UUID, run_id: UUID, *, lock: bool = False) -> RunRecord | None:
    """A run of the tenant; with ``lock`` the row stays locked until the transaction ends."""
    row = await conn.fetchrow(GET_RUN_FOR_UPDATE if lock else GET_RUN, tenant, run_id)
    return run_record(row) if row else None


_UPDATE_RUN_TYPES = (
    "uuid",
    "uuid",
    "text",
    "jsonb",
    "text",
    "timestamptz",
    "timestamptz",
    "timestamptz",
    "timestamptz",
)
"""The SQL types of ``UPDATE_RUN``'s parameters, in order."""
_UPSERT_STEPS_TYPES = ("uuid", "uuid", "jsonb", "timestamptz")
"""The SQL types of ``UPSERT_STEPS``'s parameters, in order."""


async def update_run_at_commit(conn: asyncpg.Connection, run: WorkflowRun, now: datetime) -> None:
    """Write a run's mutable state with the statement that commits the transaction when its owner defers the
    last writes (:func:`stella.kit.outbox.write_at_commit`), else now: nothing in the transaction reads it after."""
    await write_at_commit(
        conn,
        UPDATE_RUN,
        (
            run.tenant_id,
            run.id,
            run.status.value,
            dict(run.outputs),
            run.error,
            run.started_at,
            run.completed_at,
            run.next_wakeup_at,
            now,
        ),
        _UPDATE_RUN_TYPES,
    )


async def upsert_steps_at_commit(
    conn: asyncpg.Connection,
    run: WorkflowRun,
    steps: Sequence[StepRun],
    logs: Mapping[str, str],
    order: Sequence[str],
    now: datetime,
) -> None:
    """Insert or update steps of a run in one statement (``order`` is the template's topological order), with
    the statement that commits the transaction when its owner defers the last writes, else now."""
    if not steps:
        return
    position = {node_id: index for index, node_id in enumerate(order)}
    rows = [
        {
            "id": str(step_run_id(run.id, step.node_id)),
            "node_id": step.node_id,
            "position": position[step.node_id],
            "status": step.status.value,
            "attempt_number": step.attempt_number,
            "started_at": _iso(step.started_at),
            "finished_at": _iso(step.finished_at),
            "resume_at": _iso(step.resume_at),
            "inputs": dict(step.inputs),
            "outputs": dict(step.outputs),
            "error": step.error,
            "skip_reason": step.skip_reason.value if step.skip_reason else None,
            "logs": logs.get(step.node_id, ""),
        }
        for step in steps
    ]
    await write_at_commit(conn, UPSERT_STEPS, (run.tenant_id, run.id, rows, now), _UPSERT_STEPS_TYPES)


async def get_steps(conn: asyncpg.Connection, tenant: UUID, run_id: UUID) -> StepRecords:
    """A run's steps in topological order, with their logs."""
    rows = await conn.fetch(GET_STEPS, tenant, run_id)
    return StepRecords(steps=tuple(step_from_row(r) for r in rows), logs={r["node_id"]: r["logs"] for r in rows})


# --- run timer ----------------------------------------------------------------------------------------------


async def next_wakeup(conn: asyncpg.Connection) -> datetime | None:
    """The earliest wake-up of any run, or None."""
    value: datetime | None = await conn.fetchval(NEXT_WAKEUP)
    return value


async def due_runs(conn: asyncpg.Connection, now: datetime, limit: int) -> list[tuple[UUID, UUID]]:
    """``(tenant_id, run_id)`` of runs due at ``now``, earliest first."""
    rows = await conn.fetch(DUE_RUNS, now, limit)
    return [(r["tenant_id"], r["id"]) for r in rows]


async def lock_due_run(conn: asyncpg.Connection, tenant: UUID, run_id: UUID, now: datetime) -> RunRecord | None:
    """Lock a run that is still due at ``now``; None when it is not due any more or another transaction holds it."""
    row = await conn.fetchrow(LOCK_DUE_RUN, tenant, run_id, now)
    return run_record(row) if row else None


async def postpone_run(conn: asyncpg.Connection, tenant: UUID, run_id: UUID, until: datetime) -> None:
    """Move a run's wake-up to ``until``."""
    await conn.execute(POSTPONE_RUN, tenant, run_id, until)


OUTBOX_HOLDS = "SELECT true FROM outbox WHERE message_id = $1"


async def outbox_holds(conn: asyncpg.Connection, message_id: UUID) -> bool:
    """Whether the outbox already holds the message ``message_id`` (written by an earlier delivery)."""
    return bool(await conn.fetchval(OUTBOX_HOLDS, message_id))
