"""Fresh databases cloned from templates built by the real migration runner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stella.kit.embedded import EmbeddedPostgres
from stella.testing.databases import (
    DatabaseFactory,
    MigrationSet,
    discover_migration_sets,
    drop_template,
    dsn_with_database,
    template_name,
)
from stella.testing.plugin import MakeDatabase

INVENTORY_V1 = "CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL);\n"


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


@pytest.fixture
def inventory(tmp_path: Path) -> MigrationSet:
    return MigrationSet("inventory", write_migrations(tmp_path / "inventory", {"001_init.sql": INVENTORY_V1}))


@pytest.fixture(scope="module")
def postgres_18() -> Iterator[str]:
    with EmbeddedPostgres() as server:
        yield server.url


@pytest.fixture(params=["session", "postgres-18"])
def admin_dsn(request: pytest.FixtureRequest) -> str:
    """The session's server (Postgres 15 on a developer machine) and an embedded Postgres 18."""
    if request.param == "session":
        return str(request.getfixturevalue("postgres_admin_dsn"))
    return str(request.getfixturevalue("postgres_18"))


@pytest.fixture
async def factory(admin_dsn: str) -> AsyncIterator[DatabaseFactory]:
    made = DatabaseFactory(admin_dsn)
    yield made
    await made.drop_created()


async def fetch_column(dsn: str, query: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return [row[0] for row in await conn.fetch(query)]
    finally:
        await conn.close()


async def database_exists(admin_dsn: str, name: str) -> bool:
    return bool(await fetch_column(admin_dsn, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"))


async def test_fresh_database_holds_the_migrated_schema(factory: DatabaseFactory, inventory: MigrationSet) -> None:
    dsn = await factory.create([inventory])
    assert await fetch_column(dsn, "SELECT name FROM inventory.schema_migrations") == ["001_init.sql"]
    assert await fetch_column(dsn, "SELECT count(*) FROM inventory.items") == [0]
    assert (await fetch_column(dsn, "SELECT current_database()"))[0].startswith("test_")


async def test_databases_are_isolated(factory: DatabaseFactory, inventory: MigrationSet) -> None:
    first = await factory.create([inventory])
    second = await factory.create([inventory])
    assert first != second
    await fetch_column(first, "INSERT INTO inventory.items VALUES (1, 'bolt') RETURNING id")
    assert await fetch_column(first, "SELECT name FROM inventory.items") == ["bolt"]
    assert await fetch_column(second, "SELECT name FROM inventory.items") == []


async def test_created_databases_are_dropped_even_with_open_sessions(admin_dsn: str, inventory: MigrationSet) -> None:
    factory = DatabaseFactory(admin_dsn)
    dsn = await factory.create([inventory])
    name = dsn.rsplit("/", 1)[1]
    leftover = await asyncpg.connect(dsn)  # e.g. a pool a failing test never closed
    await factory.drop_created()
    assert not await database_exists(admin_dsn, name)
    assert leftover.is_closed() or not await _still_usable(leftover)
    leftover.terminate()


async def _still_usable(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    return True


async def test_a_changed_migration_builds_a_new_template(
    factory: DatabaseFactory, tmp_path: Path, unique_id: str
) -> None:
    directory = write_migrations(tmp_path / "catalog", {"001_init.sql": f"CREATE TABLE t_{unique_id} (a int);\n"})
    migration_set = MigrationSet("catalog", directory)
    before = await factory.template([migration_set])
    try:
        (directory / "002_more.sql").write_text(f"ALTER TABLE t_{unique_id} ADD COLUMN b int;\n")
        after = await factory.template([migration_set])
        try:
            assert after != before
            # The superseded template of the same migration folders is dropped, not left to pile up.
            assert not await database_exists(factory.admin_dsn, before)
            dsn = await factory.create([migration_set])
            assert await fetch_column(dsn, "SELECT name FROM catalog.schema_migrations ORDER BY version") == [
                "001_init.sql",
                "002_more.sql",
            ]
            assert await fetch_column(dsn, f"SELECT b FROM catalog.t_{unique_id}") == []
        finally:
            await factory.drop_created()
            await drop_template(factory.admin_dsn, after)
    finally:
        await drop_template(factory.admin_dsn, before)


async def test_concurrent_sessions_build_a_template_once(admin_dsn: str, tmp_path: Path, unique_id: str) -> None:
    directory = write_migrations(
        tmp_path / "ledger",
        {
            "001_init.sql": f"CREATE TABLE entries_{unique_id} (id int);\n",
            "002_index.sql": f"CREATE INDEX ON entries_{unique_id} (id);\n",
        },
    )
    sets = [MigrationSet("ledger", directory)]
    sessions = [DatabaseFactory(admin_dsn) for _ in range(4)]
    try:
        names = await asyncio.gather(*(session.template(sets) for session in sessions))
        assert set(names) == {template_name(sets)}
        dsn = await sessions[0].create(sets)
        assert await fetch_column(dsn, "SELECT name FROM ledger.schema_migrations ORDER BY version") == [
            "001_init.sql",
            "002_index.sql",
        ]
    finally:
        await sessions[0].drop_created()
        await drop_template(admin_dsn, template_name(sets))


async def test_a_failing_migration_leaves_no_template(factory: DatabaseFactory, tmp_path: Path, unique_id: str) -> None:
    directory = write_migrations(tmp_path / "broken", {"001_init.sql": f"CREATE TABLE b_{unique_id} (a nosuchtype);\n"})
    sets = [MigrationSet("broken", directory)]
    with pytest.raises(asyncpg.PostgresError):
        await factory.template(sets)
    assert not await database_exists(factory.admin_dsn, template_name(sets))


async def test_make_database_fixture_gives_each_call_its_own_database(
    make_database: MakeDatabase, inventory: MigrationSet
) -> None:
    first = await make_database([inventory])
    second = await make_database([inventory])
    empty = await make_database([])
    assert len({first, second, empty}) == 3
    assert await fetch_column(first, "SELECT count(*) FROM inventory.items") == [0]
    assert await fetch_column(empty, "SELECT count(*) FROM pg_namespace WHERE nspname = 'inventory'") == [0]


async def test_fresh_database_fixture_holds_every_service_schema(fresh_database: str) -> None:
    expected = {migration_set.schema for migration_set in discover_migration_sets()}
    present = set(await fetch_column(fresh_database, "SELECT nspname FROM pg_namespace"))
    assert expected <= present
    assert (await fetch_column(fresh_database, "SELECT current_database()"))[0].startswith("test_")


def test_discover_migration_sets_finds_services_with_migrations(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.uv.workspace]\nmembers = ['services/*']\n")
    billing = write_migrations(
        tmp_path / "services/billing/src/stella/billing/migrations", {"001_init.sql": "SELECT 1;"}
    )
    write_migrations(tmp_path / "services/gateway/src/stella/gateway/migrations", {})
    (tmp_path / "services/notes/src/stella/notes").mkdir(parents=True)
    assert discover_migration_sets(tmp_path) == [MigrationSet("billing", billing)]


def test_dsn_with_database_keeps_credentials_and_options() -> None:
    dsn = "postgresql://user:secret@db.example:6543/postgres?sslmode=disable"
    assert dsn_with_database(dsn, "test_1") == "postgresql://user:secret@db.example:6543/test_1?sslmode=disable"


async def test_a_template_dropped_by_another_session_is_rebuilt(
    factory: DatabaseFactory, tmp_path: Path, unique_id: str
) -> None:
    directory = write_migrations(tmp_path / "audit", {"001_init.sql": f"CREATE TABLE a_{unique_id} (a int);\n"})
    sets = [MigrationSet("audit", directory)]
    template = await factory.template(sets)
    try:
        await drop_template(factory.admin_dsn, template)
        dsn = await factory.create(sets)
        assert await fetch_column(dsn, f"SELECT count(*) FROM audit.a_{unique_id}") == [0]
    finally:
        await factory.drop_created()
        await drop_template(factory.admin_dsn, template)
