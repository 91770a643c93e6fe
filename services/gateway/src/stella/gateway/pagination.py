"""Cursor pagination: ``page_size`` (default 50, at most 500) and an opaque ``page_token``.

Lists served by services pass both through in the query's ``PageRequest``; the service owns its cursor.
The gateway's own lists (principals, tokens) use cursors made here: URL-safe base64 of a small JSON array
holding the sort key of the last item returned.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Final

from litestar.params import Parameter

from stella.contracts.envelope import PageRequest
from stella.gateway.problems import ProblemError

DEFAULT_PAGE_SIZE: Final[int] = 50
"""Items per page when ``page_size`` is not given."""

MAX_PAGE_SIZE: Final[int] = 500
"""Largest ``page_size`` accepted; more is a 400."""

MAX_PAGE_TOKEN_LENGTH: Final[int] = 512
"""Longest ``page_token`` accepted."""


@dataclass(frozen=True)
class PageParams:
    """A validated page request."""

    size: int
    token: str | None

    def to_contract(self) -> PageRequest:
        """The ``PageRequest`` a service's list query carries."""
        return PageRequest(page_size=self.size, page_token=self.token)


def page_params(
    page_size: int = Parameter(
        query="page_size",
        default=DEFAULT_PAGE_SIZE,
        ge=1,
        le=MAX_PAGE_SIZE,
        description=f"Items per page, 1 to {MAX_PAGE_SIZE}.",
    ),
    page_token: str | None = Parameter(
        query="page_token",
        default=None,
        min_length=1,
        max_length=MAX_PAGE_TOKEN_LENGTH,
        description="The next_page_token of the previous page; omit for the first page.",
    ),
) -> PageParams:
    """Litestar dependency reading ``page_size`` and ``page_token``; bad values are a 400."""
    return PageParams(size=page_size, token=page_token)


def encode_cursor(values: list[Any]) -> str:
    """Make an opaque page token from the sort key of the last item of a page."""
    raw = json.dumps(values, separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, length: int) -> list[Any]:
    """Read a page token made by :func:`encode_cursor` holding ``length`` values.

    Raises:
        ProblemError: 400 ``VAL_INVALID_PAGE_TOKEN`` when the token was not made here.
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise invalid_page_token() from exc
    if not isinstance(values, list) or len(values) != length:
        raise invalid_page_token()
    return values


def invalid_page_token() -> ProblemError:
    """The 400 of a page token that is not one this list handed out."""
    return ProblemError(
        400,
        "VAL_INVALID_PAGE_TOKEN",
        "page_token is not a token this list returned.",
        errors=[{"loc": ["query", "page_token"], "msg": "unknown page token"}],
    )
