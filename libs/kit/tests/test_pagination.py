"""Page tokens are bound to the list that issued them and never carry a value the database would refuse."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest

from stella.kit.errors import BadRequest
from stella.kit.pagination import aware_datetime, decode_cursor, encode_cursor, int32, int64, keyset_page


def _forge(*values: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def test_a_token_decodes_on_the_list_that_issued_it() -> None:
    ident = uuid.uuid4()
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    token = encode_cursor(at.isoformat(), ident, kind="releases")
    assert decode_cursor(token, aware_datetime, uuid.UUID, kind="releases") == [at, ident]
    assert decode_cursor(None, str, kind="releases") is None


def test_a_token_of_another_list_with_the_same_shape_is_refused() -> None:
    token = encode_cursor("name", uuid.uuid4(), kind="components")
    with pytest.raises(BadRequest) as caught:
        decode_cursor(token, str, uuid.UUID, kind="principals")
    assert caught.value.code == "VAL_PAGE_TOKEN"


@pytest.mark.parametrize(
    ("token", "types"),
    [
        (_forge("environments", "3000000000", "x"), (int32, str)),
        (_forge("packets", "99999999999999999999"), (int64,)),
        (_forge("packets", "١٢"), (int64,)),  # Arabic-Indic digits: int() takes them, Postgres never sees them
        (_forge("templates", "a\u0000b"), (str,)),
        (_forge("releases", "2026-01-01T00:00:00", str(uuid.uuid4())), (aware_datetime, uuid.UUID)),
        (_forge("templates", 5), (str,)),
        ("not base64 at all!", (str,)),
        (_forge("templates"), (str,)),
    ],
)
def test_forged_tokens_are_400_not_faults(token: str, types: tuple) -> None:
    kind = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))[0] if "!" not in token else "x"
    with pytest.raises(BadRequest):
        decode_cursor(token, *types, kind=kind)


async def test_keyset_page_walks_a_list_page_by_page_and_ends_without_a_token() -> None:
    rows = [(f"n{i:02d}", uuid.uuid4()) for i in range(5)]
    calls: list[tuple[object, ...]] = []

    async def fetch(name: str | None, ident: uuid.UUID | None, limit: int) -> list[tuple[str, uuid.UUID]]:
        calls.append((name, ident, limit))
        return [r for r in rows if name is None or r > (name, ident)][:limit]

    seen: list[tuple[str, uuid.UUID]] = []
    token: str | None = None
    while True:
        items, token = await keyset_page(fetch, token, str, uuid.UUID, kind="things", size=2, key=lambda r: r)
        seen += items
        if token is None:
            break
    assert seen == rows
    assert calls[0] == (None, None, 3)
    assert calls[1] == (*rows[1], 3)
    assert len(calls) == 3


async def test_keyset_page_refuses_a_token_of_another_list_before_fetching() -> None:
    async def fetch(*_: object) -> list[object]:
        raise AssertionError("fetched despite a foreign token")

    with pytest.raises(BadRequest):
        await keyset_page(fetch, encode_cursor("x", kind="other"), str, kind="things", size=2, key=lambda r: [r])
