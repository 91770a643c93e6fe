"""Values written into a statement as constants (``stella.kit.db.sql_constant``) reach Postgres exactly as the
connection's codecs send them as parameters, whatever they hold."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from stella.kit.db import create_pool, sql_constant, sql_with_constants


class Colour(str, enum.Enum):  # noqa: UP042 - a str mixin, whose str() is not its value, unlike StrEnum's
    RED = "red"


TRICKY = "it's \\ a \\' $1 $$ $tag$ E'x' \"q\" \u2603 \U0001f600 \ue000 line\nbreak\ttab\u0001"

CASES: list[tuple[Any, str]] = [
    (None, "text"),
    (None, "jsonb"),
    (TRICKY, "text"),
    (Colour.RED, "text"),
    (uuid.UUID("1efee30d-7b28-4a88-b802-17716bf54f6e"), "uuid"),
    (0, "integer"),
    (-(2**31), "integer"),
    (2**62, "bigint"),
    (True, "boolean"),
    (False, "boolean"),
    (datetime(2026, 12, 6, 9, 30, 1, 123456, tzinfo=UTC), "timestamptz"),
    (datetime(2026, 12, 6, 9, 30, 1, 1, tzinfo=timezone(timedelta(hours=-3, minutes=-30))), "timestamptz"),
    (datetime(2026, 12, 6, 9, 30), "timestamptz"),  # naive: read as UTC by both
    ({"k": [1, 2.5, None, True, TRICKY], TRICKY: {"n": -0.0, "e": 1e21}}, "jsonb"),
    ([TRICKY, "plain", Colour.RED], "jsonb"),
    ([TRICKY, "", Colour.RED], "text[]"),
    ([], "text[]"),
]


@pytest.mark.parametrize(("value", "sql_type"), CASES)
async def test_a_constant_is_what_the_codec_sends_as_a_parameter(kit_database: str, value: Any, sql_type: str) -> None:
    pool = await create_pool(kit_database, "kittest", max_size=1)
    try:
        async with pool.acquire() as conn:
            as_parameter = await conn.fetchval(f"SELECT $1::{sql_type}::text", value)
            as_constant = await conn.fetchval(f"SELECT {sql_constant(value, sql_type)}::text")
            assert as_constant == as_parameter
            # And in a statement with several, each in its place.
            both = await conn.fetchval(
                sql_with_constants(f"SELECT ARRAY[$2::{sql_type}::text, $1::text]", [TRICKY, value], ["text", sql_type])
            )
            assert both == [as_parameter, TRICKY]
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("value", "sql_type"),
    [
        ("12", "integer"),
        (True, "integer"),
        (1, "boolean"),
        ("2026-12-06", "jsonb[]"),
        ("a,b", "text[]"),
        ("a\x00b", "text"),
        (1.5, "timestamptz"),
        ("2026-12-06T09:30:00+00:00", "timestamptz"),  # the codec takes a datetime only, and so does this
    ],
)
def test_a_value_that_is_not_of_its_type_is_refused_before_anything_is_sent(value: Any, sql_type: str) -> None:
    with pytest.raises(ValueError, match=r"takes|NUL"):
        sql_constant(value, sql_type)


def test_every_parameter_needs_its_value() -> None:
    with pytest.raises(TypeError, match="2 values for 1 types"):
        sql_with_constants("SELECT $1", [1, 2], ["integer"])
    with pytest.raises(TypeError, match=r"\$2 names no value"):
        sql_with_constants("SELECT $1, $2", [1], ["integer"])
    assert (
        sql_with_constants("SELECT $1, $10", list(range(10)), ["integer"] * 10) == "SELECT '0'::integer, '9'::integer"
    )


async def test_a_refused_constant_is_a_data_error(kit_database: str) -> None:
    conn = await asyncpg.connect(kit_database)
    try:
        with pytest.raises(asyncpg.DataError):
            await conn.fetchval(f"SELECT {sql_constant('not a uuid', 'uuid')}")
        # JSON may spell a NUL, which Postgres refuses in jsonb as it does from the codec.
        with pytest.raises(asyncpg.DataError):
            await conn.fetchval("SELECT " + sql_constant(["a\x00b"], "jsonb"))
    finally:
        await conn.close()
