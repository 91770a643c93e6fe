"""Forward-only migration runner: numbered plain-SQL files per service schema.

Each file ``NNN_name.sql`` in a service's ``migrations`` directory is applied once, in order, inside a
transaction, and recorded in ``<schema>.schema_migrations``. A session-level advisory lock keyed on the
schema makes two replicas that start at once apply each file exactly once: the second waits, then finds
nothing left to do. The lock is held by the session, so the runner needs a connection of its own to Postgres
(``STELLA_DATABASE_DIRECT_URL`` when the services go through a transaction pooler).

Where a migration job runs first (containers, Kubernetes), services start with ``STELLA_MIGRATE_ON_START=false``
and only check that what they need is applied (:func:`prepare_schema`). ``python -m stella.kit.migrate``
applies the migrations of every installed service (:func:`installed_migration_sets`).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from stella.kit.startup import ConfigurationError, DependencyUnavailable

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigrationError(ConfigurationError):
    """A migration set is malformed or a recorded migration no longer matches its file."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text, recorded so an edited migration is noticed."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path) -> list[Migration]:
    """Read and order the migration files of ``directory``.

    Raises:
        MigrationError: on a file name that is not ``NNN_name.sql`` or a repeated number.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"migration file name {path.name!r} is not NNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"migration number {version} is used twice in {directory}")
        found[version] = Migration(version, path.name, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def _lock_key(schema: str) -> int:
    # A stable signed 64-bit key per schema; hashing keeps schemas from sharing a lock.
    return int.from_bytes(hashlib.sha256(f"stella.migrate.{schema}".encode()).digest()[:8], "big", signed=True)


def quote_ident(name: str) -> str:
    """Quote a schema name after checking it against a strict pattern (it is never user input)."""
    if not _SCHEMA.match(name):
        raise MigrationError(f"invalid schema name {name!r}")
    return f'"{name}"'


KIT_MIGRATIONS = Path(__file__).parent / "sql"
"""The kit's own tables (outbox, inbox) that every service schema gets, tracked in ``kit_migrations``."""


async def apply_migrations(conn: asyncpg.Connection, schema: str, directory: Path) -> list[str]:
    """Bring ``schema`` up to date: the kit's tables first, then the service's migrations.

    Args:
        conn: A connection outside any transaction (the lock is session level).
        schema: The service's schema; created when missing.
        directory: Folder holding the service's ``NNN_name.sql`` files.

    Returns:
        The names of the files applied by this call, in order.
    """
    done = await _apply(conn, schema, KIT_MIGRATIONS, "kit_migrations")
    return done + await _apply(conn, schema, directory, "schema_migrations")


async def _apply(conn: asyncpg.Connection, schema: str, directory: Path, table: str) -> list[str]:
    """Apply the migrations of ``directory`` not yet recorded in ``schema.table``.

    Args:
        conn: A connection outside any transaction (the lock is session level).
        schema: The service's schema; created when missing.
        directory: Folder holding ``NNN_name.sql`` files.
        table: The bookkeeping table in ``schema``.

    Returns:
        The names of the files applied by this call, in order.

    Raises:
        MigrationError: when an applied migration's file changed since it was applied.
    """
    migrations = load_migrations(directory)
    ident = quote_ident(schema)
    key = _lock_key(schema)
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ident}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {ident}.{table} (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch(f"SELECT version, name, checksum FROM {ident}.{table}")
        applied = {r["version"]: r for r in rows}
        done: list[str] = []
        for migration in migrations:
            row = applied.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"{schema}: migration {migration.name} was changed after it was applied; "
                        "add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(f"SET LOCAL search_path TO {ident}, public")
                await conn.execute(migration.sql)
                await conn.execute(
                    f"INSERT INTO {ident}.{table} (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration.name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)


async def pending_migrations(conn: asyncpg.Connection, schema: str, directory: Path) -> list[str]:
    """The names of the kit's and the service's migration files not yet applied to ``schema``."""
    missing: list[str] = []
    for folder, table in ((KIT_MIGRATIONS, "kit_migrations"), (directory, "schema_migrations")):
        wanted = load_migrations(folder)
        applied: set[int] = set()
        if await conn.fetchval("SELECT to_regclass($1)", f"{quote_ident(schema)}.{table}") is not None:
            rows = await conn.fetch(f"SELECT version FROM {quote_ident(schema)}.{table}")
            applied = {row["version"] for row in rows}
        missing += [m.name for m in wanted if m.version not in applied]
    return missing


async def prepare_schema(
    dsn: str,
    schema: str,
    directory: Path,
    *,
    migrate: bool,
    timeout_s: float = 60.0,
    service_role: str | None = None,
    role_password: str | None = None,
) -> list[str]:
    """Bring ``schema`` up to date, or wait until a migration job has done it.

    Args:
        dsn: A direct DSN (the migration lock is held by the session).
        schema: The service's schema.
        directory: The service's migrations.
        migrate: Apply what is missing; when False, wait for it to be applied by someone else.
        timeout_s: How long to wait when ``migrate`` is False.
        service_role: After migrating, make sure this login role exists with the service's grants
            (:func:`stella.kit.roles.ensure_service_role`); the migration job does it when ``migrate`` is False.
        role_password: Its password, when Postgres asks for one.

    Returns:
        The migrations this call applied.

    Raises:
        DependencyUnavailable: when ``migrate`` is False and migrations are still missing after ``timeout_s``.
    """
    conn = await asyncpg.connect(dsn)
    try:
        if migrate:
            applied = await apply_migrations(conn, schema, directory)
            if service_role is not None:
                from stella.kit.roles import ensure_service_role  # roles builds on this module

                await ensure_service_role(conn, schema, service_role, directory, password=role_password)
            return applied
        deadline = time.monotonic() + timeout_s
        while missing := await pending_migrations(conn, schema, directory):
            if time.monotonic() >= deadline:
                raise DependencyUnavailable(
                    f"schema {schema!r} lacks the migrations {', '.join(missing)} and STELLA_MIGRATE_ON_START is false: "
                    "run the migration job (python -m stella.kit.migrate) first"
                )
            log.info("waiting for migrations", extra={"schema": schema, "missing": missing})
            await asyncio.sleep(2.0)
        return []
    finally:
        await conn.close()


def installed_migration_sets() -> list[tuple[str, Path]]:
    """``(schema, folder)`` of every installed Stella package with a ``migrations`` folder of SQL files.

    A service package ``stella.<name>`` keeps its migrations in ``stella/<name>/migrations`` and owns the
    schema ``<name>``; a service added later is found without being listed anywhere.
    """
    stella = importlib.import_module("stella")
    found: dict[str, Path] = {}
    for root in stella.__path__:
        for folder in sorted(Path(root).glob("*/migrations")):
            if folder.is_dir() and any(folder.glob("*.sql")) and _SCHEMA.match(folder.parent.name):
                found.setdefault(folder.parent.name, folder)
    return sorted(found.items())
