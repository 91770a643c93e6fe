"""JSON logs: correlation ids, extras, and the idle-fetch noise filter."""

from __future__ import annotations

import json
import logging

from stella.kit.logs import JsonFormatter, QuietFetchTimeouts, QuietTaskCallbacks, correlation_id


def _record(msg: str, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "stella.test", logging.ERROR, __file__, 1, msg, (), (type(exc), exc, None) if exc else None
    )
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_records_are_json_with_the_correlation_id_and_extras() -> None:
    token = correlation_id.set("c-123")
    try:
        line = JsonFormatter("release").format(_record("hello", subject="x.y"))
    finally:
        correlation_id.reset(token)
    entry = json.loads(line)
    assert entry["service"] == "release"
    assert entry["msg"] == "hello"
    assert entry["correlation_id"] == "c-123"
    assert entry["subject"] == "x.y"
    assert entry["level"] == "ERROR"


def test_only_the_idle_fetch_timeout_report_is_dropped() -> None:
    quiet = QuietFetchTimeouts()
    assert not quiet.filter(_record("Task-16 raised an exception, retrying...", TimeoutError()))
    assert quiet.filter(_record("Task-16 raised an exception, retrying...", RuntimeError("real")))
    assert quiet.filter(_record("handler failed", TimeoutError()))


def test_task_callback_lines_are_dropped_at_info_and_nothing_else() -> None:
    quiet = QuietTaskCallbacks()
    callback = _record("callback for Task-42 is being executed...")
    callback.levelno = logging.INFO
    assert not quiet.filter(callback)
    business = _record("promotion approved")
    business.levelno = logging.INFO
    assert quiet.filter(business)
    assert quiet.filter(_record("callback for Task-42 is being executed..."))  # at ERROR: kept
