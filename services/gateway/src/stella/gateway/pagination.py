"""Cursor pagination: ``page_size`` (default 50, at most 500) and an opaque ``page_token``.

Lists served by services pass both through in the query's ``PageRequest``; the service owns its cursor.
The gateway's own lists (principals, tokens) use the kit's keyset cursors
(:func:`stella.kit.pagination.encode_cursor`), like the services do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final

from litestar.params import QueryParameter

from stella.contracts.envelope import PageRequest
from stella.gateway.problems import ProblemError
from stella.kit.errors import BadRequest
from stella.kit.pagination import decode_cursor

DEFAULT_PAGE_SIZE: Final[int] = 50
"""Items per page when ``page_size`` is not given."""

MAX_PAGE_SIZE: Final[int] = 500
"""Largest ``page_size`` accepted; more is a 400."""

MAX_PAGE_TOKEN_LENGTH: Final[int] = 512
"""Longest ``page_token`` accepted."""

PAGE_TOKEN_PATTERN: Final[str] = r"^[A-Za-z0-9_-]+$"
"""Page tokens are URL-safe base64 without padding; anything else was not made by a list."""

_PAGE_TOKEN: Final = re.compile(PAGE_TOKEN_PATTERN)


@dataclass(frozen=True)
class PageParams:
    """A validated page request."""

    size: int
    token: str | None

    def to_contract(self) -> PageRequest:
        """The ``PageRequest`` a service's list query carries."""
        return PageRequest(page_size=self.size, page_token=self.token)


def page_params(
    page_size: Annotated[
        int, QueryParameter(ge=1, le=MAX_PAGE_SIZE, description=f"Items per page, 1 to {MAX_PAGE_SIZE}.")
    ] = DEFAULT_PAGE_SIZE,
    page_token: Annotated[
        str | None,
        QueryParameter(
            min_length=1,
            max_length=MAX_PAGE_TOKEN_LENGTH,
            # Published in the API description; checked below so a bad token keeps its own code.
            schema_extra={"pattern": PAGE_TOKEN_PATTERN},
            description="The next_page_token of the previous page; omit for the first page.",
        ),
    ] = None,
) -> PageParams:
    """Litestar dependency reading ``page_size`` and ``page_token``; bad values are a 400."""
    if page_token is not None and not _PAGE_TOKEN.match(page_token):
        raise ProblemError(
            400,
            "VAL_PAGE_TOKEN",
            "page_token is not a token a list returned.",
            errors=[{"loc": ["query", "page_token"], "msg": "not a token this list returned"}],
        )
    return PageParams(size=page_size, token=page_token)


def decode_page_token(token: str | None, *types: Callable[[str], Any], kind: str) -> list[Any] | None:
    """Decode a page token of one of the gateway's own lists (None for the first page).

    Raises:
        ProblemError: 400 ``VAL_PAGE_TOKEN`` with a field error when the token was not made by that list.
    """
    try:
        return decode_cursor(token, *types, kind=kind)
    except BadRequest as exc:
        raise ProblemError(
            400,
            exc.code,
            exc.detail,
            errors=[{"loc": ["query", "page_token"], "msg": "not a token this list returned"}],
        ) from exc
