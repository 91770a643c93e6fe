"""The relay's statements keep a good plan while the outbox grows from empty and is never analyzed."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from stella.kit import outbox
from stella.kit.settings import ServiceSettings


def _scans(plan: dict[str, Any]) -> list[str]:
    """Every node type of a JSON plan, depth first."""
    found = [plan["Node Type"]]
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


async def _plan_of_prepared(conn: asyncpg.Connection, statement: str, arguments: str) -> list[str]:
    name = await conn.fetchval("SELECT name FROM pg_prepared_statements WHERE statement = $1", statement)
    assert name is not None, "the statement was not prepared on this connection"
    [row] = await conn.fetch(f'EXPLAIN (FORMAT JSON) EXECUTE "{name}"({arguments})')
    return _scans(json.loads(row[0])[0]["Plan"])


async def test_the_relays_statements_use_their_indexes_after_the_outbox_grew_without_being_analyzed(
    settings: ServiceSettings,
) -> None:
    """Postgres caches a generic plan for a prepared statement after a few executions; planned while the outbox
    held a few rows, the mark (``UPDATE ... WHERE id = ANY(...)``) scanned the whole table on every relay round
    once it held thousands (5-9 ms per round at 18,000 rows on the benchmark's database, where nothing
    analyzed the table). The relay's connection plans each execution for the table as it is: its round (the
    mark of the round before with the next read) and its last mark use the primary key and the index of
    unpublished rows."""
    conn = await outbox.relay_connection(settings.database_url, "kittest")
    writer = await asyncpg.connect(settings.database_url, server_settings={"search_path": "kittest"})
    try:
        await writer.execute("ALTER TABLE outbox SET (autovacuum_enabled = false)")
        insert = """
            INSERT INTO outbox (message_id, tenant_id, subject, payload, published_at)
            SELECT gen_random_uuid(), gen_random_uuid(), 'stella.evt.kittest.item_added', repeat('x', 500), $2
              FROM generate_series(1, $1)
        """
        await writer.execute(insert, 3, None)
        small = [r["id"] for r in await conn.fetch(outbox._MARK_AND_READ, 10, [])]
        assert len(small) == 3
        for _ in range(8):  # past the executions after which Postgres may keep a generic plan
            await conn.execute(outbox._MARK, small)
            await conn.fetch(outbox._MARK_AND_READ, 10, small)
        await writer.execute(insert, 20_000, None)
        await writer.execute("UPDATE outbox SET published_at = now() WHERE published_at IS NULL")
        mark = await _plan_of_prepared(conn, outbox._MARK, "'{1,2,3}'")
        round_ = await _plan_of_prepared(conn, outbox._MARK_AND_READ, "10, '{1,2,3}'")
    finally:
        await conn.close()
        await writer.close()
    assert "Seq Scan" not in mark, mark
    assert "Seq Scan" not in round_, round_
