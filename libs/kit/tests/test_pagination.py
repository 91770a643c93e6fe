"""Page tokens are bound to the list that issued them and never carry a value the database would refuse."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest

from stella.kit.errors import BadRequest
from stella.kit.pagination import aware_datetime, decode_cursor, encode_cursor, int32, int64


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
