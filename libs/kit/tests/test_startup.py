"""Starting a process: settings errors in one line, waiting for dependencies, migration checks, probes, pooling."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
from pydantic import ValidationError

from stella.kit import migrations as kit_migrations
from stella.kit.db import create_pool, plain_on_loopback
from stella.kit.embedded import free_port
from stella.kit.healthcheck import main as healthcheck
from stella.kit.migrations import apply_migrations, installed_migration_sets, pending_migrations, prepare_schema
from stella.kit.probes import ProbeServer
from stella.kit.settings import ServiceSettings, database_host
from stella.kit.startup import (
    ConfigurationError,
    DependencyUnavailable,
    describe_invalid_settings,
    wait_for_nats,
    wait_for_postgres,
)
from stella.testing import dsn_with_database

MIGRATIONS = Path(__file__).parent / "migrations"


def test_invalid_settings_are_one_line_naming_the_variables() -> None:
    with pytest.raises(ValidationError) as caught:
        ServiceSettings(database_url="db:5432", nats_url="http://nats:4222")
    line = describe_invalid_settings(ServiceSettings, caught.value)
    assert "\n" not in line
    assert "STELLA_DATABASE_URL: must be a postgresql://" in line
    assert "STELLA_NATS_URL: 'http://nats:4222' is not a nats://host:port URL" in line


def test_transaction_pooling_needs_a_direct_url() -> None:
    with pytest.raises(ValidationError, match="STELLA_DATABASE_DIRECT_URL"):
        ServiceSettings(database_url="postgresql://u@pgbouncer:6432/svc", database_pool_mode="transaction")
    settings = ServiceSettings(
        database_url="postgresql://u@pgbouncer:6432/svc",
        database_pool_mode="transaction",
        database_direct_url="postgresql://u@postgres:5432/stella",
    )
    assert settings.direct_database_url == "postgresql://u@postgres:5432/stella"
    assert ServiceSettings(nats_url="nats://a:4222, nats://b:4222").nats_servers == ["nats://a:4222", "nats://b:4222"]


def test_a_unix_socket_directory_is_a_host_and_a_url_naming_no_server_is_refused() -> None:
    settings = ServiceSettings(
        database_url="postgresql://postgres@/stella?host=/run/postgresql&port=5433", database_service_roles=True
    )
    assert database_host(settings.database_url) == "/run/postgresql"
    # The service's own role replaces the user; the socket and port stay.
    assert settings.as_service(settings.database_url, "release") == (
        "postgresql://stella_release@/stella?host=/run/postgresql&port=5433"
    )
    assert plain_on_loopback(settings.database_url) is None  # no TLS question over a socket: the DSN decides
    for nowhere in (
        "postgresql://postgres@/stella",
        "postgresql://postgres@/stella?host=run/postgresql",
        "postgresql:///x",
    ):
        with pytest.raises(ValidationError) as caught:
            ServiceSettings(database_url=nowhere)
        assert "?host=/run/postgresql for a server's Unix socket directory" in str(caught.value)


async def test_a_service_reaches_postgres_through_its_unix_socket(make_database) -> None:
    dsn = await make_database([("kittest", MIGRATIONS)])
    conn = await asyncpg.connect(dsn)
    try:
        directories = str(await conn.fetchval("SHOW unix_socket_directories"))
        port = int(await conn.fetchval("SHOW port"))
    finally:
        await conn.close()
    directory = next((d.strip() for d in directories.split(",") if d.strip().startswith("/")), None)
    if directory is None or not (Path(directory) / f".s.PGSQL.{port}").exists():
        pytest.skip(f"the test server's socket ({directories!r}, port {port}) is not on this machine")
    parts = urlsplit(dsn)
    socket_dsn = urlunsplit(parts._replace(netloc=f"{parts.username}@", query=f"host={quote(directory)}&port={port}"))
    settings = ServiceSettings(database_url=socket_dsn)
    await wait_for_postgres(settings.database_url, "STELLA_DATABASE_URL", configured=True, timeout_s=5)
    pool = await create_pool(settings.database_url, "kittest", max_size=2)
    try:
        async with pool.acquire() as conn:
            # A connection over a Unix socket has no server address.
            assert await conn.fetchval("SELECT inet_server_addr()") is None
            assert await conn.fetchval("SELECT current_schema()") == "kittest"
    finally:
        await pool.close()


async def test_an_unset_url_that_does_not_answer_fails_at_once() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(ConfigurationError, match="STELLA_DATABASE_URL is not set"):
        await wait_for_postgres(url, "STELLA_DATABASE_URL", configured=False, timeout_s=30)


async def test_a_configured_server_is_waited_for_then_given_up(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(DependencyUnavailable) as caught:
        await wait_for_postgres(url, "STELLA_DATABASE_URL", configured=True, timeout_s=1.5)
    assert "did not answer within 1.5s" in str(caught.value)
    assert "secret" not in str(caught.value)
    with pytest.raises(DependencyUnavailable, match=r"NATS at nats://127\.0\.0\.1"):
        await wait_for_nats([f"nats://127.0.0.1:{free_port()}"], configured=True, timeout_s=1.5)
    # Waiting is quiet: no traceback from the client for each refused attempt.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_refused_login_and_an_unknown_database_are_configuration_errors(postgres_admin_dsn: str) -> None:
    missing = dsn_with_database(postgres_admin_dsn, "no_such_database_here")
    with pytest.raises(ConfigurationError, match="no_such_database_here"):
        await wait_for_postgres(missing, "STELLA_DATABASE_URL", configured=True, timeout_s=30)


async def test_a_server_that_is_not_nats_is_named(postgres_admin_dsn: str) -> None:
    from urllib.parse import urlsplit

    address = urlsplit(postgres_admin_dsn)
    # Postgres waits for the client to speak first: connected, but no greeting.
    with pytest.raises(DependencyUnavailable, match="accepts connections but sends no NATS greeting"):
        await wait_for_nats([f"nats://{address.hostname}:{address.port}"], configured=True, timeout_s=1)


async def test_servers_that_answer_pass(postgres_admin_dsn: str, nats_url: str) -> None:
    await wait_for_postgres(postgres_admin_dsn, "STELLA_DATABASE_URL", configured=True, timeout_s=5)
    await wait_for_nats([nats_url], configured=True, timeout_s=5)


async def test_without_migrating_a_service_waits_for_the_migration_job(make_database) -> None:
    dsn = await make_database([])
    conn = await asyncpg.connect(dsn)
    try:
        pending = await pending_migrations(conn, "kittest", MIGRATIONS)
        kit_files = sorted(p.name for p in (Path(kit_migrations.__file__).parent / "sql").glob("*.sql"))
        assert pending == [*kit_files, "001_items.sql"]
    finally:
        await conn.close()
    with pytest.raises(DependencyUnavailable, match=r"lacks the migrations 001_outbox_inbox.sql, .*001_items.sql"):
        await prepare_schema(dsn, "kittest", MIGRATIONS, migrate=False, timeout_s=0.1)

    async def migrate_later() -> None:
        await asyncio.sleep(0.5)
        conn = await asyncpg.connect(dsn)
        try:
            await apply_migrations(conn, "kittest", MIGRATIONS)
        finally:
            await conn.close()

    waiting = asyncio.create_task(prepare_schema(dsn, "kittest", MIGRATIONS, migrate=False, timeout_s=30))
    await migrate_later()
    assert await waiting == []


def test_every_installed_service_has_its_migrations_found() -> None:
    schemas = dict(installed_migration_sets())
    assert {"gateway", "release", "promotion", "approval", "workflow", "evidence"} <= set(schemas)
    assert "kit" not in schemas
    for schema, folder in schemas.items():
        assert folder.name == "migrations" and folder.parent.name == schema


async def test_a_pooled_connection_outside_the_schema_is_refused(make_database) -> None:
    dsn = await make_database([("kittest", MIGRATIONS)])
    with pytest.raises(ConfigurationError, match="not the 'kittest' schema"):
        await create_pool(dsn, "kittest", max_size=2, pool_mode="transaction")
    # What a pooler with a per-service search_path gives: the database default set for this one.
    conn = await asyncpg.connect(dsn)
    try:
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{database}" SET search_path TO kittest, public')
    finally:
        await conn.close()
    pool = await create_pool(dsn, "kittest", max_size=2, pool_mode="transaction")
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_schema()") == "kittest"
            assert await conn.fetchval("SELECT count(*) FROM items") == 0
            # No prepared statement outlives its use: the pooler may hand the next one another server session.
            assert await conn.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0
    finally:
        await pool.close()


async def test_probes_answer_liveness_readiness_and_metrics() -> None:
    state: dict[str, object] = {"status": "ok", "checks": {"database": "ok"}}

    async def health() -> dict[str, object]:
        return state

    server = ProbeServer(health, host="127.0.0.1", port=0)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"

        def get(path: str) -> int:
            return healthcheck([f"{base}{path}"])

        assert await asyncio.to_thread(get, "/healthz") == 0
        assert await asyncio.to_thread(get, "/readyz") == 0
        assert await asyncio.to_thread(get, "/metrics") == 0
        state["status"] = "failing"
        assert await asyncio.to_thread(get, "/readyz") == 1
        assert await asyncio.to_thread(get, "/nothing") == 1
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
        answer = await reader.read()
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 503")
        assert json.loads(body)["status"] == "failing"
    finally:
        await server.stop()
    assert healthcheck(["ftp://x"]) == 2
