"""Timestamps and the canonical JSON every hash of this context uses (decision ``inputs_hash``,
``policy_digest``), so that the modules built on top of it share a single definition.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Any
from uuid import UUID

from stella.contracts.canonical import CanonicalizationError, canonicalize
from stella.promotion.domain.errors import CanonicalizationFailed, InvalidTimestamp


def require_aware(value: datetime, what: str = "timestamp") -> datetime:
    """Return ``value`` converted to UTC, refusing naive datetimes.

    Args:
        value: The instant to check.
        what: Name used in the error message.

    Returns:
        The same instant with ``tzinfo=UTC``.

    Raises:
        InvalidTimestamp: ``value`` is not a datetime or has no time zone.
    """
    if not isinstance(value, datetime):
        raise InvalidTimestamp(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidTimestamp(f"{what} {value.isoformat()} has no time zone; give an aware datetime")
    return value.astimezone(UTC)


def format_utc(value: datetime) -> str:
    """Format an aware datetime as UTC ISO-8601 with a ``Z`` suffix (the canonical timestamp form)."""
    return require_aware(value).isoformat().replace("+00:00", "Z")


def parse_utc(value: str | datetime, what: str = "timestamp") -> datetime:
    """Parse an ISO-8601 timestamp with a time zone (or take an aware datetime) and return it in UTC.

    Raises:
        InvalidTimestamp: the text is not ISO-8601 or has no offset.
    """
    if isinstance(value, datetime):
        return require_aware(value, what)
    if not isinstance(value, str):
        raise InvalidTimestamp(f"{what} must be an ISO-8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidTimestamp(f"{what} {value!r} is not an ISO-8601 date-time") from None
    return require_aware(parsed, what)


def to_json_value(value: Any) -> Any:
    """Convert ``value`` to plain JSON data with one spelling per value.

    Datetimes become UTC ISO-8601 strings with ``Z``, UUIDs strings, enums their value, tuples lists,
    timedeltas a number of seconds, and objects with a ``to_dict()`` method their dictionary. Sets are
    refused because they have no order, and so are naive datetimes because they name no instant.

    Raises:
        CanonicalizationFailed: the value (or something inside it) has no canonical JSON form.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, Enum):
        return to_json_value(value.value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalizationFailed(f"{value!r} is not a JSON number")
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise CanonicalizationFailed(f"naive datetime {value.isoformat()} names no instant")
        return format_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalizationFailed(f"object key {key!r} is not a string")
            result[key] = to_json_value(item)
        return result
    if isinstance(value, list | tuple):
        return [to_json_value(item) for item in value]
    to_dict = getattr(type(value), "to_dict", None)
    if callable(to_dict):
        return to_json_value(to_dict(value))
    raise CanonicalizationFailed(f"a value of type {type(value).__name__} has no canonical JSON form")


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` as RFC 8785 canonical JSON (sorted keys, no whitespace, ES6 number form).

    The value is first passed through :func:`to_json_value`, so aware datetimes are hashed as UTC
    ISO-8601 strings.

    Raises:
        CanonicalizationFailed: the value has no canonical JSON form (including integers beyond 2**53).
    """
    plain = to_json_value(value)
    try:
        return canonicalize(plain)
    except CanonicalizationError as exc:
        raise CanonicalizationFailed(f"cannot canonicalise value: {exc}") from None


def sha256_digest(value: Any) -> str:
    """Return ``"sha256:<hex>"`` of the canonical JSON of ``value``."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def is_int(value: Any) -> bool:
    """An integer that is not a bool (JSON numbers as Python reads them)."""
    return isinstance(value, int) and not isinstance(value, bool)
