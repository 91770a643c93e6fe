"""Prometheus metrics shared by the kit; services add their own business metrics beside these."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

messages_handled = Counter(
    "stella_messages_handled_total",
    "Deliveries handled by a consumer, by outcome: ok, duplicate, held (a transient fault; tried again in "
    "place), retried (a failure; redelivered later), refused (a value Postgres refused; answered 400), "
    "dead_lettered.",
    ["consumer", "outcome"],
)
dead_letters = Counter(
    "stella_dead_letters_total",
    "Messages a consumer gave up on and moved to its dead-letter subject.",
    ["consumer"],
)
handle_seconds = Histogram(
    "stella_message_handle_seconds",
    "Time to handle one message.",
    ["consumer"],
)
outbox_published = Counter(
    "stella_outbox_published_total",
    "Events published by the outbox relay.",
    ["schema"],
)
error_total = Counter("stella_error_total", "Errors by type.", ["error_type"])


def serve_metrics(port: int) -> None:
    """Expose ``/metrics`` on ``port`` (a background thread of prometheus_client)."""
    start_http_server(port, addr="127.0.0.1")
