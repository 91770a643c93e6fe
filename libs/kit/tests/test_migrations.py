"""The migration runner against a real Postgres: order, idempotence, concurrency, edited files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from stella.kit.migrations import MigrationError, apply_migrations, load_migrations


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


async def test_applies_in_order_once_and_records(make_database, tmp_path: Path) -> None:
    dsn = await make_database([])
    folder = _write(
        tmp_path / "m",
        {
            "002_more.sql": "ALTER TABLE t ADD COLUMN b int;",
            "001_init.sql": "CREATE TABLE t (a int);",
        },
    )
    conn = await asyncpg.connect(dsn)
    try:
        assert await apply_migrations(conn, "svc", folder) == [
            "001_outbox_inbox.sql",
            "002_outbox_headers.sql",
            "001_init.sql",
            "002_more.sql",
        ]
        assert await apply_migrations(conn, "svc", folder) == []
        versions = await conn.fetch("SELECT version, name FROM svc.schema_migrations ORDER BY version")
        assert [(r["version"], r["name"]) for r in versions] == [(1, "001_init.sql"), (2, "002_more.sql")]
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema='svc' AND table_name='t'"
        )
        assert {r["column_name"] for r in columns} == {"a", "b"}
        assert await conn.fetchval("SELECT count(*) FROM svc.outbox") == 0
    finally:
        await conn.close()


async def test_two_replicas_starting_at_once_apply_each_file_once(make_database, tmp_path: Path) -> None:
    dsn = await make_database([])
    # Not idempotent on purpose: a second run of the same file would fail.
    folder = _write(tmp_path / "m", {"001_init.sql": "CREATE TABLE once (a int); SELECT pg_sleep(0.2);"})
    conns = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(apply_migrations(c, "race", folder) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, 3]
    finally:
        for c in conns:
            await c.close()


async def test_an_edited_migration_is_refused(make_database, tmp_path: Path) -> None:
    dsn = await make_database([])
    folder = _write(tmp_path / "m", {"001_init.sql": "CREATE TABLE t (a int);"})
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn, "svc", folder)
        (folder / "001_init.sql").write_text("CREATE TABLE t (a bigint);")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply_migrations(conn, "svc", folder)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_half_applied(make_database, tmp_path: Path) -> None:
    dsn = await make_database([])
    folder = _write(tmp_path / "m", {"001_init.sql": "CREATE TABLE t (a int); SELECT * FROM missing;"})
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await apply_migrations(conn, "svc", folder)
        assert await conn.fetchval("SELECT to_regclass('svc.t')") is None
        assert await conn.fetchval("SELECT count(*) FROM svc.schema_migrations") == 0
    finally:
        await conn.close()


@pytest.mark.parametrize("name", ["1_x.sql", "001-init.sql", "001_Init.sql"])
def test_bad_file_names_are_refused(tmp_path: Path, name: str) -> None:
    _write(tmp_path, {name: "SELECT 1;"})
    with pytest.raises(MigrationError):
        load_migrations(tmp_path)
