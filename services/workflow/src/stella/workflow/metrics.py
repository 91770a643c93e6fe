"""The workflow service's business metrics (reference §9), counted from the events it publishes."""

from __future__ import annotations

import json

from prometheus_client import Counter

from stella.contracts import workflow as c
from stella.kit.service import ServiceRuntime

workflow_runs_total = Counter("stella_workflow_runs_total", "Finished workflow runs.", ["template", "status"])


def _finished(payload: str) -> None:
    event = json.loads(payload)
    workflow_runs_total.labels(event.get("template_name") or "unknown", event.get("status") or "succeeded").inc()


def observe(runtime: ServiceRuntime) -> None:
    """Count each published run_completed / run_failed event once."""
    runtime.observe(c.RUN_COMPLETED, _finished)
    runtime.observe(c.RUN_FAILED, _finished)
