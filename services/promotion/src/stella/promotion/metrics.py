"""The promotion service's business metrics (reference §9), counted from the events it publishes."""

from __future__ import annotations

import json
from datetime import datetime

from prometheus_client import Counter, Histogram

from stella.contracts import promotion as c
from stella.kit.service import ServiceRuntime

promotions_total = Counter(
    "stella_promotions_total", "Promotion state changes, by target environment and new status.", ["env", "status"]
)
promotion_duration_seconds = Histogram(
    "stella_promotion_duration_seconds",
    "Time from a promotion's request to its decision (approved, rejected or cancelled).",
    buckets=(1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600),
)

_DECIDED = {c.PromotionStatus.APPROVED.value, c.PromotionStatus.REJECTED.value, c.PromotionStatus.CANCELLED.value}
_SUBJECTS = (
    c.PROMOTION_REQUESTED,
    c.PROMOTION_APPROVED,
    c.PROMOTION_REJECTED,
    c.PROMOTION_CANCELLED,
    c.PROMOTION_STARTED,
    c.PROMOTION_COMPLETED,
    c.PROMOTION_FAILED,
    c.PROMOTION_ROLLED_BACK,
)


def _count(payload: str) -> None:
    promotion = json.loads(payload)["promotion"]
    status = promotion["status"]
    promotions_total.labels(promotion["target_environment_name"], status).inc()
    if status in _DECIDED:
        took = datetime.fromisoformat(promotion["updated_at"]) - datetime.fromisoformat(promotion["requested_at"])
        promotion_duration_seconds.observe(max(0.0, took.total_seconds()))


def observe(runtime: ServiceRuntime) -> None:
    """Count each published promotion event once."""
    for subject in _SUBJECTS:
        runtime.observe(subject, _count)
