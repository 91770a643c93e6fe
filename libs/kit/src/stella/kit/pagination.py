"""Opaque keyset cursors for deterministic list pagination, each bound to the list that issued it.

A token carries the name of its list (``kind``) and the sort key of the last item of the page. A token of
one list given to another, a tampered token, or one whose values do not fit the list's columns (an integer
beyond the column type, a control character Postgres refuses, a time without an offset) is a 400
``VAL_PAGE_TOKEN``, never a fault.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

from stella.kit.errors import BadRequest

_FORBIDDEN: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_INT64: Final = 2**63

R = TypeVar("R")


def encode_cursor(*values: Any, kind: str) -> str:
    """Encode the sort key of the last item of a page of the list ``kind`` as an opaque token."""
    raw = json.dumps([kind, *(str(v) for v in values)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def int32(value: str) -> int:
    """A cursor value for an ``integer`` column."""
    return _bounded(value, 2**31)


def int64(value: str) -> int:
    """A cursor value for a ``bigint`` column."""
    return _bounded(value, _INT64)


def aware_datetime(value: str) -> datetime:
    """A cursor value for a ``timestamptz`` column: an ISO 8601 time with its offset."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("a cursor time carries its offset")
    return parsed


def _bounded(value: str, limit: int) -> int:
    if not value.isascii() or len(value) > 20:
        raise ValueError("not an integer")
    number = int(value)
    if not -limit <= number < limit:
        raise ValueError("out of range")
    return number


def decode_cursor(token: str | None, *types: Callable[[str], Any], kind: str) -> list[Any] | None:
    """Decode a token made by :func:`encode_cursor` for the list ``kind``, converting each value with ``types``.

    Use :func:`int32`, :func:`int64` and :func:`aware_datetime` for integer and time columns (plain ``int``
    and ``datetime.fromisoformat`` accept values the database refuses).

    Raises:
        BadRequest: ``VAL_PAGE_TOKEN`` when the token was not issued by this list or its values are unusable.
    """
    if token is None:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(values, list) or len(values) != len(types) + 1 or values[0] != kind:
            raise ValueError("not a token of this list")
        if not all(isinstance(v, str) and not _FORBIDDEN.search(v) for v in values):
            raise ValueError("unusable value")
        return [convert(v) for convert, v in zip(types, values[1:], strict=True)]
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest("page_token is not a token this list issued", code="VAL_PAGE_TOKEN") from exc


async def keyset_page(
    fetch: Callable[..., Awaitable[Sequence[R]]],
    token: str | None,
    *types: Callable[[str], Any],
    kind: str,
    size: int,
    key: Callable[[R], Sequence[Any]],
) -> tuple[list[R], str | None]:
    """One page of a keyset-ordered list and the token of the next (None on the last page).

    ``fetch`` is called with the decoded sort key of the token (a None per value on the first page) and a
    limit of ``size + 1``: the extra row, never returned, tells whether a next page exists. ``key`` gives the
    sort key of a row, which the next page's token carries.

    Raises:
        BadRequest: ``VAL_PAGE_TOKEN`` as :func:`decode_cursor`.
    """
    after = decode_cursor(token, *types, kind=kind)
    rows = await fetch(*(after if after is not None else [None] * len(types)), size + 1)
    items = list(rows[:size])
    return items, (encode_cursor(*key(items[-1]), kind=kind) if len(rows) > size else None)
