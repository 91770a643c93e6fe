"""Metrics of webhook deliveries (Prometheus), counted once each attempt's outcome is committed."""

from __future__ import annotations

from prometheus_client import Counter

webhook_attempts = Counter(
    "stella_webhook_attempts_total",
    "Webhook delivery attempts, by outcome: succeeded, retried (will be tried again), failed (given up).",
    ["outcome"],
)
webhooks_disabled = Counter(
    "stella_webhooks_disabled_total", "Webhooks disabled because their deliveries kept failing."
)
