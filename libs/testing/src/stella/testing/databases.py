"""A fresh Postgres database per test, cloned from a template built by the real migrations.

Running every migration for every test is slow; cloning a database is fast. So a template database is built
once by applying the services' migration files with the kit's runner, and each test gets
``CREATE DATABASE test_<uuid> TEMPLATE <template>``, dropped when the test ends.

A template's name is derived from a hash of the migration files (and of the runner), so an edited or added
migration builds a new template. Building happens under an advisory lock and the finished database only
gets its final name once complete, so several test sessions can share one server.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from stella.kit import migrations as kit_migrations
from stella.kit.migrations import apply_migrations

TEMPLATE_PREFIX = "stella_tmpl_"
"""Name prefix of template databases built from migrations."""

TEST_DATABASE_PREFIX = "test_"
"""Name prefix of the per-test databases."""

# Bumped when the way templates are built changes, so older templates are not reused.
_TEMPLATE_FORMAT = b"stella-template-v1"


class MigrationSet(NamedTuple):
    """One service's migrations: the schema they build and the folder of ``NNN_name.sql`` files."""

    schema: str
    directory: Path


def find_workspace_root(start: Path | None = None) -> Path:
    """Return the root of the uv workspace holding ``start`` (the current directory by default).

    Args:
        start: Where to begin looking upwards.

    Returns:
        The directory whose ``pyproject.toml`` declares ``[tool.uv.workspace]``.

    Raises:
        LookupError: when no such directory is found above ``start`` or above this package.
    """
    origins = [(start or Path.cwd()).resolve(), Path(__file__).resolve().parent]
    for origin in origins:
        for candidate in (origin, *origin.parents):
            manifest = candidate / "pyproject.toml"
            if manifest.is_file() and "[tool.uv.workspace]" in manifest.read_text(encoding="utf-8"):
                return candidate
    raise LookupError(f"no uv workspace found above {origins[0]}")


def discover_migration_sets(root: Path | None = None) -> list[MigrationSet]:
    """Find every service's migrations in the workspace.

    A service ``services/<name>/src/stella/<package>/migrations/`` holding ``*.sql`` files yields the
    set ``(<package>, that folder)``: a service's schema is named after its package.

    Args:
        root: The workspace root; found with :func:`find_workspace_root` when None.

    Returns:
        The sets, ordered by schema name.
    """
    workspace = root or find_workspace_root()
    found = [
        MigrationSet(directory.parent.name, directory)
        for directory in workspace.glob("services/*/src/stella/*/migrations")
        if directory.is_dir() and any(directory.glob("*.sql"))
    ]
    return sorted(found, key=lambda item: (item.schema, str(item.directory)))


def migration_digest(migration_sets: Iterable[tuple[str, Path]]) -> str:
    """Hash migration sets: schema names, file names and file contents, plus the runner's code.

    Args:
        migration_sets: ``(schema, directory)`` pairs, in the order they are applied.

    Returns:
        A hex SHA-256 digest.
    """
    digest = hashlib.sha256(_TEMPLATE_FORMAT)
    # The runner decides what the bookkeeping table looks like, and every schema gets the kit's own tables:
    # a changed runner or kit migration needs new templates.
    digest.update(Path(kit_migrations.__file__).read_bytes())
    for path in sorted(kit_migrations.KIT_MIGRATIONS.glob("*.sql")):
        digest.update(b"\0kit\0" + path.name.encode() + b"\0")
        digest.update(path.read_bytes())
    for schema, directory in migration_sets:
        digest.update(b"\0schema\0" + schema.encode())
        for path in sorted(Path(directory).glob("*.sql")):
            digest.update(b"\0file\0" + path.name.encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def template_name(migration_sets: Iterable[tuple[str, Path]]) -> str:
    """Return the name of the template database for ``migration_sets``.

    Args:
        migration_sets: ``(schema, directory)`` pairs, in the order they are applied.

    Returns:
        ``stella_tmpl_`` followed by part of :func:`migration_digest`.
    """
    return TEMPLATE_PREFIX + migration_digest(migration_sets)[:24]


def dsn_with_database(dsn: str, database: str) -> str:
    """Return ``dsn`` pointing at another database on the same server.

    Args:
        dsn: A ``postgresql://`` URL.
        database: The database name to put in it.

    Returns:
        The URL with its path replaced.
    """
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


_TYPE_SPELLING = {"int2": "smallint", "int4": "integer", "int8": "bigint", "bool": "boolean"}


async def parameter_types(conn: asyncpg.Connection, sql: str) -> list[str]:
    """The SQL types Postgres gives ``sql``'s parameters, in order, spelled as
    :func:`stella.kit.db.sql_constant` takes them (``integer``, ``boolean``, ``text[]``): what a statement's
    hand-written types for :func:`stella.kit.outbox.write_at_commit` must say."""

    def spelled(name: str) -> str:
        element, array = (name[:-2], "[]") if name.endswith("[]") else (name, "")
        return _TYPE_SPELLING.get(element, element) + array

    statement = await conn.prepare(sql)
    return [spelled(parameter.name) for parameter in statement.get_parameters()]


def _quote(name: str) -> str:
    # Names here are built from fixed prefixes and hex digits; quoting guards against the unexpected.
    return '"' + name.replace('"', '""') + '"'


def _lineage(migration_sets: Sequence[tuple[str, Path]]) -> str:
    places = (f"{schema}={Path(directory).resolve()}" for schema, directory in migration_sets)
    return hashlib.sha256("\0".join(places).encode()).hexdigest()


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"stella.testing.{name}".encode()).digest()[:8], "big", signed=True)


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop a database, ending the sessions still connected to it first.

    Args:
        admin_dsn: DSN of a user allowed to drop the database.
        name: The database to drop; missing is fine.
    """
    conn = await asyncpg.connect(admin_dsn)
    try:
        # FORCE (Postgres 13+) terminates leftover sessions, e.g. a pool a failed test did not close.
        await conn.execute(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")
    finally:
        await conn.close()


async def drop_template(admin_dsn: str, name: str) -> None:
    """Drop a template database built by :func:`ensure_template`.

    Args:
        admin_dsn: Superuser DSN of the server.
        name: The template's name; missing is fine.
    """
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT true FROM pg_database WHERE datname = $1", name)
        if exists:
            # Postgres refuses to drop a database while it is marked as a template.
            await conn.execute(f"ALTER DATABASE {_quote(name)} WITH IS_TEMPLATE false")
            await conn.execute(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")
    finally:
        await conn.close()


async def ensure_template(admin_dsn: str, migration_sets: Sequence[tuple[str, Path]]) -> str:
    """Return the template database for ``migration_sets``, building it when it does not exist.

    Args:
        admin_dsn: Superuser (or CREATEDB) DSN of the server.
        migration_sets: ``(schema, directory)`` pairs, applied in this order.

    Returns:
        The template database's name.
    """
    name = template_name(migration_sets)
    conn = await asyncpg.connect(admin_dsn)
    try:
        # Advisory locks are per database; every session takes this one in the admin database.
        await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(name))
        try:
            exists = await conn.fetchval("SELECT true FROM pg_database WHERE datname = $1", name)
            if not exists:
                await _build_template(conn, admin_dsn, name, migration_sets)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(name))
    finally:
        await conn.close()
    return name


async def _build_template(
    conn: asyncpg.Connection, admin_dsn: str, name: str, migration_sets: Sequence[tuple[str, Path]]
) -> None:
    # Build under a scratch name and rename when done: a session that crashes half-way leaves a
    # stray scratch database, never a template that looks complete but is not.
    scratch = f"stella_build_{uuid.uuid4().hex}"
    await conn.execute(f"CREATE DATABASE {_quote(scratch)} TEMPLATE template0")
    try:
        build = await asyncpg.connect(dsn_with_database(admin_dsn, scratch))
        try:
            for schema, directory in migration_sets:
                await apply_migrations(build, schema, Path(directory))
        finally:
            await build.close()
        await conn.execute(f"ALTER DATABASE {_quote(scratch)} RENAME TO {_quote(name)}")
    except BaseException:
        await conn.execute(f"DROP DATABASE IF EXISTS {_quote(scratch)} WITH (FORCE)")
        raise
    # Nobody may connect to a template: one open session would make every clone fail.
    await conn.execute(f"ALTER DATABASE {_quote(name)} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
    await _replace_lineage(conn, admin_dsn, name, migration_sets)


async def _replace_lineage(
    conn: asyncpg.Connection, admin_dsn: str, name: str, migration_sets: Sequence[tuple[str, Path]]
) -> None:
    """Tag a new template with its lineage and drop the older templates of the same lineage.

    The lineage is the list of schemas and migration folders; every edit of a migration builds a new
    template of the same lineage, and without this a developer's server would collect one per edit.
    """
    comment = f"stella-template lineage={_lineage(migration_sets)}"
    # COMMENT takes no parameters; the text is built from a fixed prefix and hex digits only.
    await conn.execute(f"COMMENT ON DATABASE {_quote(name)} IS '{comment}'")
    older = await conn.fetch(
        "SELECT datname FROM pg_database WHERE datistemplate AND datname <> $1 AND datname LIKE $2"
        " AND shobj_description(oid, 'pg_database') = $3",
        name,
        TEMPLATE_PREFIX + "%",
        comment,
    )
    for row in older:
        # A session cloning that template right now makes the drop fail; it is dropped next time.
        with contextlib.suppress(asyncpg.PostgresError):
            await drop_template(admin_dsn, row["datname"])


class DatabaseFactory:
    """Creates fresh databases from migration templates and drops them again.

    Templates known to exist are remembered for the life of the factory, so each is looked up in the
    server once.

    Args:
        admin_dsn: Superuser (or CREATEDB) DSN of the server.
    """

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self._templates: set[str] = set()
        self._created: list[str] = []

    async def template(self, migration_sets: Sequence[tuple[str, Path]] = ()) -> str:
        """Return the name of the template database for ``migration_sets``, building it if needed.

        Args:
            migration_sets: ``(schema, directory)`` pairs, applied in this order.

        Returns:
            The template's name.
        """
        # Hashing the files on every call (they are small) notices a migration edited mid-session.
        name = template_name(migration_sets)
        if name not in self._templates:
            await ensure_template(self.admin_dsn, migration_sets)
            self._templates.add(name)
        return name

    async def create(self, migration_sets: Sequence[tuple[str, Path]] = ()) -> str:
        """Create a database holding the schemas that ``migration_sets`` build.

        Args:
            migration_sets: ``(schema, directory)`` pairs; empty gives an empty database.

        Returns:
            A DSN of the new database, with the admin DSN's credentials.
        """
        template = await self.template(migration_sets)
        try:
            return await self.clone(template)
        except asyncpg.InvalidCatalogNameError:
            # Another session replaced the template after it was looked up (its migrations were edited).
            self._templates.discard(template)
            return await self.clone(await self.template(migration_sets))

    def scoped(self) -> DatabaseFactory:
        """Return a factory sharing this one's known templates but dropping only what it creates itself.

        Returns:
            A new factory on the same server.
        """
        child = DatabaseFactory(self.admin_dsn)
        child._templates = self._templates
        return child

    async def clone(self, template: str) -> str:
        """Create a database as a copy of ``template``; it is dropped by :meth:`drop_created`.

        Args:
            template: Name of a template database, e.g. from :meth:`template`.

        Returns:
            A DSN of the new database, with the admin DSN's credentials.
        """
        name = f"{TEST_DATABASE_PREFIX}{uuid.uuid4().hex}"
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f"CREATE DATABASE {_quote(name)} TEMPLATE {_quote(template)}")
        finally:
            await conn.close()
        self._created.append(name)
        return dsn_with_database(self.admin_dsn, name)

    async def drop_created(self) -> None:
        """Drop every database this factory created."""
        while self._created:
            await drop_database(self.admin_dsn, self._created.pop())
