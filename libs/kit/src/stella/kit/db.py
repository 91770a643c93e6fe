"""The asyncpg pool of a service, pinned to the service's schema."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from stella.kit.migrations import quote_ident


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns come back as Python objects and go in from Python objects.
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=_dumps, decoder=json.loads, schema="pg_catalog", format="text")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


async def create_pool(dsn: str, schema: str, *, max_size: int = 20, min_size: int = 1) -> asyncpg.Pool:
    """Create the service's pool with ``search_path`` set to its own schema.

    Args:
        dsn: PostgreSQL DSN.
        schema: The service's schema; every connection resolves unqualified names there.
        max_size: Upper bound on connections (reference default 20 per service).
        min_size: Connections opened at start.
    """
    quote_ident(schema)  # validates the name
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings={"search_path": f"{schema},public", "application_name": f"stella-{schema}"},
        command_timeout=60,
    )
    assert pool is not None
    return pool
