"""The asyncpg pool of a service, pinned to the service's schema.

Two ways to reach Postgres (``STELLA_DATABASE_POOL_MODE``):

``session``
    Directly (or through a pooler in session mode). ``search_path`` is sent when a connection opens, and
    asyncpg keeps its prepared statements.
``transaction``
    Through PgBouncer in transaction pooling mode, where consecutive statements of one client may run on
    different server connections. Nothing may outlive a transaction: asyncpg keeps no prepared statements
    (``statement_cache_size=0``; its unnamed statements are parsed again with each execution), sends no
    ``search_path`` (PgBouncer refuses unknown start-up parameters) and sends no reset query when a
    connection goes back to the pool (``RESET ALL`` would run on whichever server connection is at hand).
    The pooler sets ``search_path`` instead, and :func:`create_pool` checks that it does.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from stella.kit.migrations import quote_ident
from stella.kit.settings import PoolMode
from stella.kit.startup import ConfigurationError


async def init_connection(conn: asyncpg.Connection) -> None:
    """Prepare a connection as the pool's are: JSON columns come back as Python objects and go in from them.

    For a connection opened on its own (a command-line tool) that runs the service's repository code.
    """
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=_dumps, decoder=json.loads, schema="pg_catalog", format="text")


def sql_literal(text: str) -> str:
    """``text`` as an SQL string constant, read the same whatever ``standard_conforming_strings`` says (the
    ``E''`` form, backslashes and quotes doubled). Text holding a NUL character is refused: Postgres cannot
    store it, and it must not end a statement early."""
    if "\x00" in text:
        raise ValueError("text holding a NUL character cannot be sent to Postgres")
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def sql_constant(value: object, sql_type: str) -> str:
    """``value`` as an SQL constant of ``sql_type``, for a statement sent with its values written in (simple
    protocol): what the connection's codecs would send as a parameter of that type.

    ``NULL`` for None; JSON types hold ``value`` encoded as the pool's codec encodes it; an array type
    (``text[]``) holds each element as text; ``boolean`` and ``integer`` / ``bigint`` take a ``bool`` and an
    ``int`` only; ``timestamptz`` takes a ``datetime`` (a naive one is read as UTC, as the codec reads it); any
    other type is the value's text cast to it (a UUID, text; a str-valued enum is the text it holds). Text goes through :func:`sql_literal`.

    Raises:
        ValueError: a value this function cannot write as that type, or text holding a NUL.
    """
    if value is None:
        return f"NULL::{sql_type}"
    if sql_type in ("json", "jsonb"):
        return f"{sql_literal(_dumps(value))}::{sql_type}"
    if sql_type.endswith("[]"):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ValueError(f"{sql_type} takes a list, not {type(value).__name__}")
        element = sql_type[:-2]
        return f"ARRAY[{', '.join(sql_constant(v, element) for v in value)}]::{sql_type}"
    if sql_type == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"boolean takes a bool, not {type(value).__name__}")
        return "true" if value else "false"
    if sql_type in ("integer", "bigint", "smallint"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{sql_type} takes an int, not {type(value).__name__}")
        # Quoted: a cast binds tighter than a minus sign, so -2147483648::integer would overflow.
        return f"'{int(value)}'::{sql_type}"
    if sql_type == "timestamptz":
        if not isinstance(value, datetime):
            raise ValueError(f"timestamptz takes a datetime, not {type(value).__name__}")
        # A naive datetime is read as UTC, as the connection's codec reads it.
        instant = value if value.utcoffset() is not None else value.replace(tzinfo=UTC)
        return f"{sql_literal(instant.isoformat())}::timestamptz"
    # A str subclass (a str-valued enum) is written as the text it holds, as the codec writes it.
    return f"{sql_literal(str.__str__(value) if isinstance(value, str) else str(value))}::{sql_type}"


_PARAMETER = re.compile(r"\$(\d+)")


def sql_with_constants(sql: str, args: Sequence[object], types: Sequence[str]) -> str:
    """``sql`` with each parameter ``$n`` replaced by ``args[n-1]`` written as a constant of ``types[n-1]``
    (:func:`sql_constant`). ``sql`` is one of the code's statements: its text holds ``$`` only in parameters.

    Raises:
        TypeError: ``args`` and ``types`` differ in length, or a parameter names no argument (the code's error).
        ValueError: a value that cannot be written as its type (:func:`sql_constant`).
    """
    if len(args) != len(types):
        raise TypeError(f"{len(args)} values for {len(types)} types")
    constants = [sql_constant(value, sql_type) for value, sql_type in zip(args, types, strict=True)]

    def constant(match: re.Match[str]) -> str:
        index = int(match.group(1)) - 1
        if not 0 <= index < len(constants):
            raise TypeError(f"${index + 1} names no value")
        return constants[index]

    return _PARAMETER.sub(constant, sql)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset: there is no session state of ours to clear.

    Before calling it asyncpg rolls back a transaction left open and drops listener callbacks. Its default
    reset would also send ``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL`` and ``pg_advisory_unlock_all()``: one
    more round trip for every message handled, for state pool connections never hold here (no ``SET``, no
    ``LISTEN``, no session advisory lock, no cursor outside a transaction; the relay, migrations and
    listeners use connections of their own). In transaction pooling mode ``RESET ALL`` would moreover run on
    whichever server connection is at hand.
    """


def plain_on_loopback(dsn: str) -> bool | None:
    """``False`` (no TLS) for a DSN that names a loopback host and no ``sslmode``; None (the DSN decides) otherwise.

    asyncpg's default (``prefer``) asks every new connection for TLS first: a wasted round trip to a local
    server without TLS, and a TLS handshake per connection to one with it, for no protection on loopback.
    """
    parts = urlsplit(dsn)
    if "sslmode" in parse_qs(parts.query) or parts.hostname is None:
        return None
    try:
        loopback = ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        loopback = parts.hostname == "localhost"
    return False if loopback else None


async def create_pool(
    dsn: str, schema: str, *, max_size: int = 20, min_size: int = 1, pool_mode: PoolMode = "session"
) -> asyncpg.Pool:
    """Create the service's pool with ``search_path`` set to its own schema.

    Args:
        dsn: PostgreSQL DSN.
        schema: The service's schema; every connection resolves unqualified names there.
        max_size: Upper bound on connections (reference default 20 per service).
        min_size: Connections opened at start.
        pool_mode: ``transaction`` when ``dsn`` goes through PgBouncer in transaction pooling mode.

    Raises:
        ConfigurationError: in ``transaction`` mode, when the pooler's connections do not use ``schema``.
    """
    quote_ident(schema)  # validates the name
    if pool_mode == "transaction":
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=init_connection,
            reset=_keep_session,
            statement_cache_size=0,
            ssl=plain_on_loopback(dsn),
            server_settings={"application_name": f"stella-{schema}"},
            command_timeout=60,
        )
        assert pool is not None
        try:
            await check_search_path(pool, schema)
        except BaseException:
            await pool.close()
            raise
        return pool
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        reset=_keep_session,
        ssl=plain_on_loopback(dsn),
        server_settings={"search_path": f"{schema},public", "application_name": f"stella-{schema}"},
        command_timeout=60,
    )
    assert pool is not None
    return pool


async def check_search_path(pool: asyncpg.Pool, schema: str) -> None:
    """Check that connections of a transaction-pooled ``pool`` resolve names in ``schema`` first.

    Raises:
        ConfigurationError: naming the ``search_path`` the pooler gave and how to fix it.
    """
    async with pool.acquire() as conn:
        search_path = await conn.fetchval("SELECT current_setting('search_path')")
    first = str(search_path).split(",", 1)[0].strip().strip('"')
    if first != schema:
        raise ConfigurationError(
            f"connections through STELLA_DATABASE_URL use search_path {search_path!r}, not the {schema!r} schema: "
            f"with STELLA_DATABASE_POOL_MODE=transaction the pooler must set it (a PgBouncer database for this "
            f"service with connect_query 'SET search_path TO {schema}, public', or a role whose search_path is set)"
        )
