"""SQL of the deployment schema. Every statement filters by tenant, except the timers' reads, which look
across tenants for due work on purpose and hand back each row with its tenant."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Final
from uuid import UUID

import asyncpg

from stella.contracts.agent import AgentStatus, TaskStatus, TaskType
from stella.contracts.deployment import (
    MAX_TASK_PAGE_SIZE,
    TASK_PAGE_SIZE,
    AgentView,
    DeployedComponent,
    JobKind,
    JobStatus,
    JobSummary,
    JobView,
    Strategy,
    StrategySpec,
    TargetView,
    TaskView,
)
from stella.contracts.envelope import PageRequest
from stella.deployment.domain import JobState, TaskState
from stella.kit.pagination import int32, keyset_page


def _get(table: str, columns: str) -> str:
    """One row of ``table`` by tenant and id."""
    return f"SELECT {columns} FROM {table} WHERE tenant_id = $1 AND id = $2"


def _by_name_page(table: str, columns: str, filter_sql: str) -> str:
    """A keyset page of ``table`` by ``(name, id)``: $1 tenant, $2 the value of the filter ``filter_sql``
    (which passes every row when it is NULL), $3 and $4 the last name and id of the previous page (NULL on the
    first), $5 the limit."""
    return f"""
    SELECT {columns} FROM {table}
     WHERE tenant_id = $1 AND ({filter_sql})
       AND ($3::text IS NULL OR (name, id) > ($3, $4::uuid))
     ORDER BY name, id
     LIMIT $5
"""


# --- targets ------------------------------------------------------------------------------------------------

_TARGET = """tenant_id, id, environment_id, name, target_type, connection, labels, health_check, agent_id,
    health_status, current, current_components, current_release_id, current_release_name, drift_detected, last_drift, sticker,
    last_inspected_at, created_at, updated_at"""

INSERT_TARGET = f"""
    INSERT INTO targets (tenant_id, id, environment_id, name, target_type, connection, labels, health_check, agent_id,
                         created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
    ON CONFLICT (tenant_id, environment_id, name) DO NOTHING
    RETURNING {_TARGET}
"""
GET_TARGET = _get("targets", _TARGET)
GET_TARGET_FOR_UPDATE = GET_TARGET + " FOR UPDATE"
TARGETS_OF_ENVIRONMENT = f"""
    SELECT {_TARGET} FROM targets WHERE tenant_id = $1 AND environment_id = $2 ORDER BY name, id LIMIT $3
"""
COUNT_TARGETS = "SELECT count(*) FROM targets WHERE tenant_id = $1 AND environment_id = $2"
TARGETS_BY_ID = f"SELECT {_TARGET} FROM targets WHERE tenant_id = $1 AND id = ANY($2::uuid[])"
LIST_TARGETS = _by_name_page("targets", _TARGET, "$2::uuid IS NULL OR environment_id = $2")
UPDATE_TARGET = f"""
    UPDATE targets SET name = $3, connection = $4, labels = $5, health_check = $6, agent_id = $7, updated_at = $8
     WHERE tenant_id = $1 AND id = $2
    RETURNING {_TARGET}
"""
DELETE_TARGET = "DELETE FROM targets WHERE tenant_id = $1 AND id = $2"
TARGET_HELD = """
    SELECT EXISTS (SELECT 1 FROM tasks WHERE tenant_id = $1 AND target_id = $2
                   AND status IN ('pending', 'assigned', 'running'))
"""
SET_TARGET_DEPLOYED = """
    UPDATE targets SET current = $3, current_components = $4, current_release_id = $5, current_release_name = $6,
                       sticker = $7, health_status = $8, drift_detected = false, updated_at = $9
     WHERE tenant_id = $1 AND id = $2
    RETURNING true
"""
LOCK_TARGETS = "SELECT id FROM targets WHERE tenant_id = $1 AND id = ANY($2::uuid[]) ORDER BY id FOR UPDATE"
SET_TARGETS_DEPLOYED = """
    UPDATE targets AS t
       SET current = u.current::jsonb, current_components = u.components::jsonb, current_release_id = u.release_id,
           current_release_name = u.release_name, sticker = u.sticker::jsonb, health_status = 'healthy',
           drift_detected = false, updated_at = $2
      FROM unnest($3::uuid[], $4::text[], $5::text[], $6::uuid[], $7::text[], $8::text[])
           AS u(id, current, components, release_id, release_name, sticker)
     WHERE t.tenant_id = $1 AND t.id = u.id
    RETURNING t.id
"""
""":data:`SET_TARGET_DEPLOYED` for several targets at once (each once; JSON as text): the ids updated."""
SET_TARGET_RUNNING = (
    "UPDATE targets SET current = current || $3, health_status = $4, updated_at = $5 WHERE tenant_id = $1 AND id = $2"
)
SET_TARGET_HEALTH = "UPDATE targets SET health_status = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2"
SET_TARGET_DRIFT = """
    UPDATE targets SET drift_detected = $3, last_drift = $4, last_inspected_at = $5, updated_at = $5
     WHERE tenant_id = $1 AND id = $2
"""

NEXT_DRIFT_CHECK = "SELECT min(coalesce(last_inspected_at, updated_at)) FROM targets WHERE sticker IS NOT NULL"
LOCK_DUE_DRIFT_CHECKS = f"""
    SELECT {_TARGET} FROM targets t
     WHERE sticker IS NOT NULL AND coalesce(last_inspected_at, updated_at) <= $1
       AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.tenant_id = t.tenant_id AND tasks.target_id = t.id
                       AND tasks.status IN ('pending', 'assigned', 'running'))
     ORDER BY coalesce(last_inspected_at, updated_at)
     LIMIT $2
       FOR UPDATE SKIP LOCKED
"""
MARK_INSPECTED = "UPDATE targets SET last_inspected_at = $3 WHERE tenant_id = $1 AND id = $2"

# --- agents and tokens --------------------------------------------------------------------------------------

_AGENT = """tenant_id, id, name, version, capabilities, labels, credential_hash, status, checks, last_heartbeat_at,
    registered_at, revoked_at"""

INSERT_TOKEN = """
    INSERT INTO agent_tokens (tenant_id, id, token_hash, labels, created_by, created_at, expires_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
TOKEN_FOR_UPDATE = """
    SELECT id, labels, expires_at, used_at FROM agent_tokens WHERE tenant_id = $1 AND token_hash = $2 FOR UPDATE
"""
USE_TOKEN = "UPDATE agent_tokens SET used_at = $3, used_by = $4 WHERE tenant_id = $1 AND id = $2"
INSERT_AGENT = f"""
    INSERT INTO agents (tenant_id, id, name, version, capabilities, labels, credential_hash, status, checks,
                        last_heartbeat_at, registered_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, 'online', '[]', $8, $8)
    ON CONFLICT (tenant_id, name) WHERE status <> 'revoked' DO NOTHING
    RETURNING {_AGENT}
"""
GET_AGENT = _get("agents", _AGENT)
GET_AGENT_FOR_UPDATE = GET_AGENT + " FOR UPDATE"
LIST_AGENTS = _by_name_page("agents", _AGENT, "$2::text IS NULL OR status = $2")
HEARTBEAT = f"""
    UPDATE agents SET version = $3, checks = $4, status = $5, last_heartbeat_at = $6
     WHERE tenant_id = $1 AND id = $2
    RETURNING {_AGENT}
"""
SET_AGENT_STATUS = f"""
    UPDATE agents SET status = $3, revoked_at = $4 WHERE tenant_id = $1 AND id = $2 RETURNING {_AGENT}
"""
NEXT_SILENT_AGENT = "SELECT min(last_heartbeat_at) FROM agents WHERE status IN ('online', 'degraded')"
LOCK_SILENT_AGENTS = f"""
    SELECT {_AGENT} FROM agents
     WHERE status IN ('online', 'degraded') AND last_heartbeat_at <= $1
     ORDER BY last_heartbeat_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
"""

# --- jobs ---------------------------------------------------------------------------------------------------

_JOB = """tenant_id, id, kind, promotion_id, release_id, release_name, environment_id, environment_name, strategy,
    spec, status, rollback_of, reason, target_count, batch_count, current_batch, next_batch_at, switch_to,
    switch_from, step_run_id, step_node_id, step_attempt, step_key, correlation_id, created_by, created_at,
    started_at, finished_at"""

INSERT_JOB = f"""
    INSERT INTO jobs (tenant_id, id, kind, promotion_id, release_id, release_name, environment_id, environment_name,
                      strategy, spec, status, rollback_of, reason, target_count, batch_count, switch_to, switch_from,
                      step_run_id, step_node_id, step_attempt, step_key, correlation_id, created_by, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22,
            $23, $24)
    ON CONFLICT (tenant_id, step_key) WHERE step_key IS NOT NULL DO NOTHING
    RETURNING {_JOB}
"""
GET_JOB = f"SELECT {_JOB} FROM jobs WHERE tenant_id = $1 AND id = $2"
GET_JOB_FOR_UPDATE = GET_JOB + " FOR UPDATE"
JOBS_BY_ID = f"SELECT {_JOB} FROM jobs WHERE tenant_id = $1 AND id = ANY($2::uuid[])"
JOB_OF_STEP = f"SELECT {_JOB} FROM jobs WHERE tenant_id = $1 AND step_key = $2"
LATEST_JOB_OF_PROMOTION = f"""
    SELECT {_JOB} FROM jobs WHERE tenant_id = $1 AND promotion_id = $2 AND kind = 'deploy'
     ORDER BY created_at DESC, id DESC LIMIT 1
"""
LIST_JOBS = f"""
    SELECT {_JOB} FROM jobs
     WHERE tenant_id = $1 AND ($2::uuid IS NULL OR environment_id = $2) AND ($3::uuid IS NULL OR promotion_id = $3)
       AND ($4::text IS NULL OR status = $4)
       AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6::uuid))
     ORDER BY created_at DESC, id DESC
     LIMIT $7
"""
UPDATE_JOB = f"""
    UPDATE jobs SET status = $3, reason = $4, current_batch = $5, next_batch_at = $6, started_at = $7,
                    finished_at = $8
     WHERE tenant_id = $1 AND id = $2
    RETURNING {_JOB}
"""
ACTIVE_JOB_OF_ENVIRONMENT = """
    SELECT id FROM jobs WHERE tenant_id = $1 AND environment_id = $2
       AND status IN ('running', 'paused', 'rolling_back') AND kind IN ('deploy', 'rollback', 'remediate')
"""
NEXT_PENDING_JOB = f"""
    SELECT {_JOB} FROM jobs WHERE tenant_id = $1 AND environment_id = $2 AND status = 'pending'
     ORDER BY created_at, id LIMIT 1 FOR UPDATE
"""
# Serialises starting jobs of one environment (two pending jobs may both find it free otherwise).
LOCK_ENVIRONMENT = (
    "SELECT pg_advisory_xact_lock(hashtextextended('stella.deployment:' || $1::uuid::text || ':' || $2::uuid::text, 0))"
)
NEXT_BATCH_DUE = "SELECT min(next_batch_at) FROM jobs WHERE next_batch_at IS NOT NULL AND finished_at IS NULL"
DUE_BATCH_JOBS = """
    SELECT tenant_id, id FROM jobs WHERE next_batch_at IS NOT NULL AND finished_at IS NULL AND next_batch_at <= $1
     ORDER BY next_batch_at LIMIT $2
"""
ACTIVE_GROUP = "SELECT active_group FROM environment_groups WHERE tenant_id = $1 AND environment_id = $2"
SET_ACTIVE_GROUP = """
    INSERT INTO environment_groups (tenant_id, environment_id, active_group, switched_at, job_id)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (tenant_id, environment_id) DO UPDATE
       SET active_group = excluded.active_group, switched_at = excluded.switched_at, job_id = excluded.job_id
"""

# --- tasks --------------------------------------------------------------------------------------------------

_TASK = """tenant_id, id, job_id, target_id, target_name, type, batch, status, attempt, idempotency_key, capability,
    pinned_agent_id, agent_id, released_at, leased_at, lease_expires_at, deadline_at, timeout_s, body, components,
    previous, error_code, message, result, artifacts, log_lines, logs_truncated, created_at, started_at, finished_at"""

INSERT_TASKS = """
    INSERT INTO tasks (tenant_id, id, job_id, target_id, target_name, type, batch, status, attempt, idempotency_key,
                       capability, pinned_agent_id, timeout_s, body, components, previous, created_at)
    SELECT $1, t.id, $2, t.target_id, t.target_name, t.type, t.batch, 'pending', 0, t.key, t.capability, t.pinned,
           $3, t.body::jsonb, t.components::jsonb, t.previous::jsonb, $4
      FROM unnest($5::uuid[], $6::uuid[], $7::text[], $8::text[], $9::integer[], $10::text[], $11::text[],
                  $12::uuid[], $13::text[], $14::text[], $15::text[])
           AS t(id, target_id, target_name, type, batch, key, capability, pinned, body, components, previous)
"""
TASKS_OF_JOB = f"SELECT {_TASK} FROM tasks WHERE tenant_id = $1 AND job_id = $2 ORDER BY batch, target_name, id"
TASK_STATES_OF_JOB = """
    SELECT id, target_id, target_name, type, batch, status, released_at, attempt, components, previous,
           coalesce((result -> 'drift' ->> 'drifted')::boolean, false) AS drifted
      FROM tasks WHERE tenant_id = $1 AND job_id = $2 ORDER BY batch, target_name, id
"""
MOVING_JOBS = f"""
    SELECT {_JOB} FROM jobs WHERE status IN ('running', 'rolling_back') ORDER BY created_at LIMIT $1
"""
GET_TASK = f"SELECT {_TASK} FROM tasks WHERE tenant_id = $1 AND id = $2"
GET_TASK_FOR_UPDATE = GET_TASK + " FOR UPDATE"
RELEASE_TASKS = """
    UPDATE tasks SET released_at = $3::timestamptz, deadline_at = $3::timestamptz + make_interval(secs => timeout_s)
     WHERE tenant_id = $1 AND id = ANY($2::uuid[]) AND status = 'pending' AND released_at IS NULL
"""
CANCEL_TASKS = """
    UPDATE tasks SET status = 'cancelled', finished_at = $3, message = $4, lease_expires_at = NULL
     WHERE tenant_id = $1 AND id = ANY($2::uuid[]) AND status IN ('pending', 'assigned', 'running')
"""
LEASE_TASKS = f"""
    WITH picked AS (
        SELECT tenant_id, id FROM tasks
         WHERE tenant_id = $1 AND status = 'pending' AND released_at IS NOT NULL
           AND capability = ANY($3::text[]) AND (pinned_agent_id IS NULL OR pinned_agent_id = $2)
         ORDER BY released_at, id
         LIMIT $4
           FOR UPDATE SKIP LOCKED
    )
    UPDATE tasks AS t
       SET status = 'assigned', agent_id = $2, attempt = t.attempt + 1, leased_at = $5, lease_expires_at = $6,
           started_at = coalesce(t.started_at, $5)
      FROM picked
     WHERE t.tenant_id = picked.tenant_id AND t.id = picked.id
    RETURNING {", ".join("t." + c.strip() for c in _TASK.split(","))}
"""
REOFFER_TASKS = f"""
    WITH lost AS (
        SELECT tenant_id, id FROM tasks
         WHERE tenant_id = $1 AND agent_id = $2 AND status IN ('assigned', 'running') AND NOT (id = ANY($3::uuid[]))
         ORDER BY leased_at, id
         LIMIT $4
           FOR UPDATE SKIP LOCKED
    )
    UPDATE tasks AS t SET status = 'assigned', lease_expires_at = $5
      FROM lost
     WHERE t.tenant_id = lost.tenant_id AND t.id = lost.id
    RETURNING {", ".join("t." + c.strip() for c in _TASK.split(","))}
"""
"""Tasks leased to an agent ($2) that it does not hold ($3): handed over again, same attempt, lease renewed."""
EXTEND_LEASES = """
    UPDATE tasks SET lease_expires_at = $4, status = 'running'
     WHERE tenant_id = $1 AND agent_id = $2 AND id = ANY($3::uuid[]) AND status IN ('assigned', 'running')
    RETURNING id
"""
HELD_BY_AGENT = """
    SELECT id FROM tasks WHERE tenant_id = $1 AND agent_id = $2 AND status IN ('assigned', 'running')
"""
RETRY_TASKS = """
    UPDATE tasks SET status = 'pending', agent_id = NULL, lease_expires_at = NULL, error_code = NULL, message = $4,
                     result = NULL, artifacts = '[]', finished_at = NULL, released_at = $3,
                     deadline_at = $3::timestamptz + make_interval(secs => timeout_s)
     WHERE tenant_id = $1 AND id = ANY($2::uuid[]) AND status IN ('failed', 'timed_out')
"""
"""Failed tasks released again (a resumed job): the next lease is a new attempt, with a new deadline."""
REQUEUE_TASKS = """
    UPDATE tasks SET status = 'pending', agent_id = NULL, lease_expires_at = NULL, message = $3
     WHERE tenant_id = $1 AND id = ANY($2::uuid[]) AND status IN ('assigned', 'running')
    RETURNING id
"""
REQUEUE_AGENT_TASKS = """
    UPDATE tasks SET status = 'pending', agent_id = NULL, lease_expires_at = NULL, message = $3
     WHERE tenant_id = $1 AND agent_id = $2 AND status IN ('assigned', 'running')
    RETURNING id, job_id
"""
FINISH_TASK = f"""
    UPDATE tasks SET status = $3, error_code = $4, message = $5, result = $6, artifacts = $7, finished_at = $8,
                     lease_expires_at = NULL
     WHERE tenant_id = $1 AND id = $2
    RETURNING {_TASK}
"""
LOCK_TASKS = f"SELECT {_TASK} FROM tasks WHERE tenant_id = $1 AND id = ANY($2::uuid[]) ORDER BY id FOR UPDATE"
"""Several tasks, locked in id order (as every writer locking several tasks does)."""
FINISH_TASKS = f"""
    UPDATE tasks AS t
       SET status = u.status, error_code = u.error_code, message = u.message, result = u.result::jsonb,
           artifacts = u.artifacts::jsonb, finished_at = $2, lease_expires_at = NULL
      FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
           AS u(id, status, error_code, message, result, artifacts)
     WHERE t.tenant_id = $1 AND t.id = u.id
    RETURNING {", ".join("t." + c.strip() for c in _TASK.split(","))}
"""
""":data:`FINISH_TASK` for several tasks at once (result and artifacts as JSON text)."""
MARK_TASKS_RUNNING = """
    UPDATE tasks SET status = 'running', lease_expires_at = $3
     WHERE tenant_id = $1 AND id = ANY($2::uuid[]) AND status IN ('assigned', 'running')
"""
MARK_RUNNING = """
    UPDATE tasks SET status = 'running', lease_expires_at = $4
     WHERE tenant_id = $1 AND id = $2 AND attempt = $3 AND status IN ('assigned', 'running')
"""
NEXT_LEASE_EXPIRY = "SELECT min(lease_expires_at) FROM tasks WHERE status IN ('assigned', 'running')"
LOCK_EXPIRED_LEASES = """
    SELECT tenant_id, id, job_id FROM tasks WHERE status IN ('assigned', 'running') AND lease_expires_at <= $1
     ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
"""
NEXT_DEADLINE = "SELECT min(deadline_at) FROM tasks WHERE status IN ('pending', 'assigned', 'running')"
LOCK_PAST_DEADLINE = """
    SELECT tenant_id, id, job_id FROM tasks
     WHERE status IN ('pending', 'assigned', 'running') AND deadline_at <= $1
     ORDER BY deadline_at LIMIT $2 FOR UPDATE SKIP LOCKED
"""
TIME_OUT_TASK = """
    UPDATE tasks SET status = 'timed_out', error_code = 'AGT_TIMEOUT', message = $3, finished_at = $4,
                     lease_expires_at = NULL
     WHERE tenant_id = $1 AND id = $2 AND status IN ('pending', 'assigned', 'running') AND deadline_at <= $4
    RETURNING true
"""
LOCK_OPEN_TASKS_OF_JOB = """
    SELECT id FROM tasks WHERE tenant_id = $1 AND job_id = $2 AND status IN ('pending', 'assigned', 'running')
     ORDER BY id FOR UPDATE
"""
_BATCH_COUNTS = """
    SELECT count(*) FILTER (WHERE status IN ('pending', 'assigned', 'running')) AS open,
           count(*) FILTER (WHERE status IN ('failed', 'timed_out')) AS failed,
           count(*) FILTER (WHERE status = 'pending' AND released_at IS NULL) AS waiting
      FROM tasks
"""
BATCH_STATE = _BATCH_COUNTS + " WHERE tenant_id = $1 AND job_id = $2 AND batch = $3"
BATCH_STATE_FROM = _BATCH_COUNTS + " WHERE tenant_id = $1 AND job_id = $2 AND batch >= $3"

# --- logs, stickers, drift ----------------------------------------------------------------------------------

INSERT_LOG = """
    INSERT INTO task_logs (tenant_id, task_id, attempt, seq, lines, created_at) VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT DO NOTHING
    RETURNING true
"""
INSERT_LOGS = """
    INSERT INTO task_logs (tenant_id, task_id, attempt, seq, lines, created_at)
    SELECT $1, u.task_id, u.attempt, u.seq, ARRAY(SELECT line FROM jsonb_array_elements_text(u.lines::jsonb) WITH ORDINALITY AS l(line, n) ORDER BY n),
           $2
      FROM unnest($3::uuid[], $4::integer[], $5::integer[], $6::text[]) AS u(task_id, attempt, seq, lines)
    ON CONFLICT DO NOTHING
    RETURNING task_id, seq
"""
""":data:`INSERT_LOG` for several chunks at once (lines as a JSON array): the chunks stored."""
COUNT_TASKS_LOG_LINES = """
    UPDATE tasks AS t SET log_lines = t.log_lines + u.added, logs_truncated = t.logs_truncated OR u.truncated
      FROM unnest($2::uuid[], $3::integer[], $4::boolean[]) AS u(id, added, truncated)
     WHERE t.tenant_id = $1 AND t.id = u.id
"""
COUNT_LOG_LINES = "UPDATE tasks SET log_lines = log_lines + $3, logs_truncated = logs_truncated OR $4 WHERE tenant_id = $1 AND id = $2"
LOGS_OF_TASKS = """
    SELECT task_id, lines FROM task_logs WHERE tenant_id = $1 AND task_id = ANY($2::uuid[])
     ORDER BY task_id, attempt, seq
"""
INSERT_STICKER = """
    INSERT INTO stickers (tenant_id, id, target_id, release_id, promotion_id, job_id, task_id, content, content_hash,
                          written_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (tenant_id, task_id) DO NOTHING
"""
INSERT_STICKERS = """
    INSERT INTO stickers (tenant_id, id, target_id, release_id, promotion_id, job_id, task_id, content, content_hash,
                          written_at)
    SELECT $1, u.id, u.target_id, u.release_id, u.promotion_id, u.job_id, u.task_id, u.content::jsonb, u.content_hash, $2
      FROM unnest($3::uuid[], $4::uuid[], $5::uuid[], $6::uuid[], $7::uuid[], $8::uuid[], $9::text[], $10::text[])
           AS u(id, target_id, release_id, promotion_id, job_id, task_id, content, content_hash)
    ON CONFLICT (tenant_id, task_id) DO NOTHING
"""
FLAG_STICKER_DRIFT = """
    UPDATE stickers SET drift_detected = true
     WHERE tenant_id = $1 AND id = (SELECT id FROM stickers WHERE tenant_id = $1 AND target_id = $2
                                     ORDER BY written_at DESC LIMIT 1)
"""
INSERT_DRIFT = """
    INSERT INTO drift_records (tenant_id, id, target_id, task_id, release_id, drifted, sticker_found, differences,
                               detected_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (tenant_id, task_id) DO NOTHING
"""


# --- row -> view ---------------------------------------------------------------------------------------------


def target_view(row: Mapping[str, Any]) -> TargetView:
    """A target row as its view."""
    return TargetView(
        id=row["id"],
        environment_id=row["environment_id"],
        name=row["name"],
        target_type=row["target_type"],
        connection=row["connection"],
        labels=row["labels"],
        health_check=row["health_check"],
        agent_id=row["agent_id"],
        health_status=row["health_status"],
        current=row["current"],
        current_release_id=row["current_release_id"],
        drift_detected=row["drift_detected"],
        last_drift=row["last_drift"],
        sticker=row["sticker"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def agent_view(row: Mapping[str, Any]) -> AgentView:
    """An agent row as its view (never its credential)."""
    return AgentView(
        id=row["id"],
        name=row["name"],
        version=row["version"],
        capabilities=list(row["capabilities"]),
        labels=row["labels"],
        status=AgentStatus(row["status"]),
        checks=row["checks"],
        last_heartbeat_at=row["last_heartbeat_at"],
        registered_at=row["registered_at"],
        revoked_at=row["revoked_at"],
    )


def components_of(row: Mapping[str, Any]) -> tuple[DeployedComponent, ...]:
    """A task's components."""
    return tuple(DeployedComponent.model_validate(c) for c in row["components"])


def task_state(row: Mapping[str, Any]) -> TaskState:
    """A task row as the job state machine sees it."""
    return TaskState(
        id=row["id"],
        target_id=row["target_id"],
        type=TaskType(row["type"]),
        batch=row["batch"],
        status=TaskStatus(row["status"]),
        released=row["released_at"] is not None,
        leased=row["attempt"] > 0,
        components=components_of(row),
    )


def job_state(row: Mapping[str, Any]) -> JobState:
    """A job row as the job state machine sees it."""
    return JobState(
        status=JobStatus(row["status"]),
        kind=JobKind(row["kind"]),
        spec=StrategySpec.model_validate(row["spec"]),
        batch_count=row["batch_count"],
        current_batch=row["current_batch"],
        next_batch_at=row["next_batch_at"],
    )


def task_view(row: Mapping[str, Any], logs: Sequence[str] = ()) -> TaskView:
    """A task row (and its log lines) as its view."""
    return TaskView(
        id=row["id"],
        job_id=row["job_id"],
        target_id=row["target_id"],
        target_name=row["target_name"],
        type=TaskType(row["type"]),
        batch=row["batch"],
        status=TaskStatus(row["status"]),
        attempt=row["attempt"],
        agent_id=row["agent_id"],
        idempotency_key=row["idempotency_key"],
        components=list(components_of(row)),
        error_code=row["error_code"],
        message=row["message"],
        result=row["result"],
        artifacts=row["artifacts"],
        logs=list(logs),
        logs_truncated=row["logs_truncated"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def job_summary(row: Mapping[str, Any]) -> JobSummary:
    """A job row as its list item."""
    return JobSummary(
        id=row["id"],
        promotion_id=row["promotion_id"],
        release_id=row["release_id"],
        release_name=row["release_name"],
        environment_id=row["environment_id"],
        environment_name=row["environment_name"],
        kind=JobKind(row["kind"]),
        strategy=Strategy(row["strategy"]),
        status=JobStatus(row["status"]),
        rollback_of=row["rollback_of"],
        reason=row["reason"],
        target_count=row["target_count"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def job_view(row: Mapping[str, Any], tasks: Sequence[TaskView]) -> JobView:
    """A job row with its tasks as its view; the job's artifacts are its tasks' artifacts."""
    summary = job_summary(row)
    artifacts = [{**artifact, "task_id": str(task.id)} for task in tasks for artifact in task.artifacts]
    return JobView(**summary.model_dump(), spec=row["spec"], tasks=list(tasks), artifacts=artifacts)


async def logs_of(conn: asyncpg.Connection, tenant_id: UUID, task_ids: Sequence[UUID]) -> dict[UUID, list[str]]:
    """Log lines of each task, in one query."""
    logs: dict[UUID, list[str]] = {task_id: [] for task_id in task_ids}
    if task_ids:
        for record in await conn.fetch(LOGS_OF_TASKS, tenant_id, list(task_ids)):
            logs[record["task_id"]].extend(record["lines"])
    return logs


def logs_hash(lines: Iterable[str]) -> str:
    """``sha256:`` of a task's log lines, each followed by a newline."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


JOB_VIEW_LOG_CHARS: Final[int] = 400_000
"""Log characters one page of a job's view carries at most, shared by its tasks (the last lines of each), so a
page stays one message; ``logs_truncated`` says when a task's view holds fewer lines than it has."""

_RESULT_SUMMARY: Final[tuple[str, ...]] = ("status", "error_code", "message", "components", "drift", "attempt")

TASK_PAGE_OF_JOB = f"""
    SELECT {_TASK} FROM tasks
     WHERE tenant_id = $1 AND job_id = $2
       AND ($3::integer IS NULL OR (batch, target_name, id) > ($3, $4::text, $5::uuid))
     ORDER BY batch, target_name, id
     LIMIT $6
"""


def _last_lines(lines: Sequence[str], budget: int) -> list[str]:
    kept: list[str] = []
    for line in reversed(lines):
        budget -= len(line) + 1
        if budget < 0:
            break
        kept.append(line)
    kept.reverse()
    return kept


async def job_with_tasks(
    conn: asyncpg.Connection, tenant_id: UUID, row: Mapping[str, Any], page: PageRequest | None = None
) -> JobView:
    """A job's view with one page of its tasks and their logs (two queries, whatever the task count).

    Each task's view carries its result's summary (not the sticker, which the target shows), its artifacts'
    names and hashes (not their content), and the last of its log lines within its share of
    :data:`JOB_VIEW_LOG_CHARS`.
    """
    page = page or PageRequest(page_size=TASK_PAGE_SIZE)
    tasks, token = await keyset_page(
        partial(conn.fetch, TASK_PAGE_OF_JOB, tenant_id, row["id"]),
        page.page_token,
        int32,
        str,
        UUID,
        kind="deployment-job-tasks",
        size=min(page.page_size, MAX_TASK_PAGE_SIZE),
        key=lambda t: (t["batch"], t["target_name"], t["id"]),
    )
    logs = await logs_of(conn, tenant_id, [t["id"] for t in tasks])
    budget = JOB_VIEW_LOG_CHARS // max(1, len(tasks))
    views = []
    for task in tasks:
        lines = logs[task["id"]]
        kept = _last_lines(lines, budget)
        view = task_view(task, kept)
        result = task["result"]
        views.append(
            view.model_copy(
                update={
                    "logs_truncated": view.logs_truncated or len(kept) < len(lines),
                    "result": {k: result.get(k) for k in _RESULT_SUMMARY} if result else None,
                    "artifacts": [{k: v for k, v in a.items() if k != "content"} for a in task["artifacts"]],
                }
            )
        )
    return job_view(row, views).model_copy(update={"next_page_token": token})


def touched_at(row: Mapping[str, Any]) -> datetime | None:
    """When a task was last leased (None: never)."""
    value: datetime | None = row["leased_at"]
    return value
