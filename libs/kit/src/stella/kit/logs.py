"""JSON logs carrying the correlation id of the message or request being handled."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
"""Correlation id of the work in progress; set by the broker wiring and the gateway."""

tenant_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant_id", default=None)
"""Tenant of the work in progress."""

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, service, correlation and extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = correlation_id.get()
        if cid:
            entry["correlation_id"] = cid
        tid = tenant_id.get()
        if tid:
            entry["tenant_id"] = tid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class QuietFetchTimeouts(logging.Filter):
    """Drop FastStream's report of an idle JetStream pull that timed out (logged only at DEBUG).

    nats-py ends an idle batch fetch with the built-in ``TimeoutError`` on some paths, where FastStream
    only expects its own subclass; FastStream then logs the timeout as an error and restarts the fetch
    loop, which is exactly what should happen on an idle consumer. Real errors are untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TimeoutError) and "raised an exception, retrying" in record.getMessage():
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


class QuietTaskCallbacks(logging.Filter):
    """Drop FastStream's INFO line "callback for Task-N is being executed..." unless DEBUG is on.

    FastStream logs it for every background task of a subscriber that ends (at stop, and on every restart of
    a fetch loop): it says nothing an operator acts on, and INFO is one line per business event or error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and str(record.msg).endswith("is being executed..."):
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every log record to stderr as JSON; called once by a service's ``__main__``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(QuietFetchTimeouts())
    handler.addFilter(QuietTaskCallbacks())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter at INFO drowns the service's own records.
    for noisy in ("faststream", "nats", "asyncio", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
