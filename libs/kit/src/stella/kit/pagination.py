"""Opaque keyset cursors for deterministic list pagination."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from stella.kit.errors import BadRequest


def encode_cursor(*values: Any) -> str:
    """Encode the sort key of the last item of a page as an opaque token."""
    raw = json.dumps([str(v) for v in values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str | None, *types: Callable[[str], Any]) -> list[Any] | None:
    """Decode a token made by :func:`encode_cursor`, converting each value with ``types``.

    A tampered or foreign token is a 400, never a crash.
    """
    if token is None:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(values, list) or len(values) != len(types):
            raise ValueError("wrong shape")
        return [convert(v) for convert, v in zip(types, values, strict=True)]
    except (ValueError, TypeError) as exc:
        raise BadRequest("page_token is not a token this list issued", code="VAL_PAGE_TOKEN") from exc
