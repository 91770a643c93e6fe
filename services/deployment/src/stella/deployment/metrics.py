"""The deployment service's business metrics (reference §9), counted from the events it publishes."""

from __future__ import annotations

import json
from datetime import datetime

from prometheus_client import Counter, Histogram

from stella.contracts import deployment as c
from stella.kit.service import ServiceRuntime

deployments_total = Counter(
    "stella_deployments_total", "Finished deployment jobs (deploy, rollback, remediate).", ["strategy", "status"]
)
deployment_tasks_total = Counter("stella_deployment_tasks_total", "Tasks of finished jobs.", ["type", "status"])
rollbacks_total = Counter("stella_rollbacks_total", "Jobs rolled back, automatically or by a rollback job.")
deployment_duration_seconds = Histogram(
    "stella_deployment_duration_seconds",
    "From a job's start to its end.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)
agents_status_changes_total = Counter(
    "stella_agent_status_changes_total",
    "Agents entering a status (registered, online, degraded, offline...).",
    ["status"],
)
_started: dict[str, datetime] = {}
_MAX_OPEN = 10_000


def _job_started(payload: str) -> None:
    event = json.loads(payload)
    if len(_started) < _MAX_OPEN:
        _started[event["job_id"]] = datetime.fromisoformat(event["started_at"])


def _job_completed(payload: str) -> None:
    event = json.loads(payload)
    deployments_total.labels(event.get("strategy") or "unknown", event.get("outcome") or "unknown").inc()
    for task in event.get("tasks") or []:
        deployment_tasks_total.labels(task.get("type") or "unknown", task.get("status") or "unknown").inc()
    if event.get("outcome") == "rolled_back" or event.get("rollback_of"):
        rollbacks_total.inc()
    started = _started.pop(event["job_id"], None)
    if started is not None:
        deployment_duration_seconds.observe(
            max(0.0, (datetime.fromisoformat(event["finished_at"]) - started).total_seconds())
        )


def _agent_status(payload: str) -> None:
    agents_status_changes_total.labels(json.loads(payload).get("status") or "unknown").inc()


def observe(runtime: ServiceRuntime) -> None:
    """Count each published job and agent event once."""
    runtime.observe(c.JOB_STARTED, _job_started)
    runtime.observe(c.JOB_COMPLETED, _job_completed)
    runtime.observe(c.AGENT_STATUS_CHANGED, _agent_status)
