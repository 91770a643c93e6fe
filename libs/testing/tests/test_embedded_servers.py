"""The embedded NATS and Postgres servers start for real, serve on TCP and keep data when asked to."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest

from stella.kit.embedded import (
    BinaryNotFoundError,
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServerError,
    free_port,
    probe_nats,
)


@pytest.fixture(scope="module")
def embedded_nats() -> Iterator[EmbeddedNats]:
    with EmbeddedNats() as server:
        yield server


@pytest.fixture(scope="module")
def embedded_postgres() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as server:
        yield server


async def test_embedded_nats_serves_jetstream(embedded_nats: EmbeddedNats) -> None:
    assert embedded_nats.url.startswith("nats://127.0.0.1:")
    client = await nats.connect(embedded_nats.url)
    try:
        js = client.jetstream()
        await js.add_stream(name="EMBEDDED", subjects=["embedded.>"])
        ack = await js.publish("embedded.hello", b"payload")
        stored = await js.get_msg("EMBEDDED", ack.seq)
    finally:
        await client.close()
    assert ack.stream == "EMBEDDED"
    assert stored.data == b"payload"


async def test_embedded_nats_keeps_streams_across_restarts(tmp_path: Path) -> None:
    server = EmbeddedNats(data_dir=tmp_path / "nats", port=free_port())
    with server:
        client = await nats.connect(server.url)
        await client.jetstream().add_stream(name="KEPT", subjects=["kept.>"])
        await client.jetstream().publish("kept.one", b"1")
        await client.close()
    assert not probe_nats("127.0.0.1", server.port or 0, timeout=0.2)
    with server:
        client = await nats.connect(server.url)
        info = await client.jetstream().stream_info("KEPT")
        await client.close()
    assert info.state.messages == 1


def test_embedded_nats_deletes_its_temporary_directory() -> None:
    server = EmbeddedNats().start()
    store = server.log_path.parent
    assert store.is_dir()
    server.stop()
    assert not store.exists()
    assert not server.running


def test_embedded_nats_reports_a_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFoundError, match="nats-server"):
        EmbeddedNats(binary=tmp_path / "nats-server").start()


async def test_embedded_postgres_accepts_queries_on_tcp(embedded_postgres: EmbeddedPostgres) -> None:
    conn = await asyncpg.connect(embedded_postgres.url)
    try:
        row = await conn.fetchrow(
            "SELECT inet_server_addr()::text AS addr, inet_server_port() AS port,"
            " current_setting('server_version_num')::int AS version,"
            " current_setting('unix_socket_directories') AS sockets"
        )
    finally:
        await conn.close()
    assert row is not None
    # inet_server_addr() is NULL over a Unix socket: a value proves the session came over TCP.
    assert row["addr"] == "127.0.0.1/32"
    assert row["port"] == embedded_postgres.port
    assert row["version"] // 10000 == 18
    assert row["sockets"] == ""


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A directory of the test's own outside pytest's base directory, which another pytest run on the machine
    resets to mode 0700 (locking out the Postgres server's unprivileged user when the tests run as root)."""
    path = Path(tempfile.mkdtemp(prefix="stella-embedded-pg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_embedded_postgres_keeps_data_across_restarts(pg_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir=pg_dir / "pgdata", port=free_port())
    assert server.durable
    with server:
        conn = await asyncpg.connect(server.url)
        await conn.execute("CREATE TABLE kept (value text); INSERT INTO kept VALUES ('still here')")
        await conn.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(server.url, timeout=2)
    with server:
        conn = await asyncpg.connect(server.url)
        value = await conn.fetchval("SELECT value FROM kept")
        fsync = await conn.fetchval("SHOW fsync")
        await conn.close()
    assert value == "still here"
    assert fsync == "on"


def test_embedded_postgres_refuses_a_directory_holding_other_files(pg_dir: Path) -> None:
    data_dir = pg_dir / "not-a-cluster"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("unrelated")
    with pytest.raises(EmbeddedServerError, match="not empty"):
        EmbeddedPostgres(data_dir=data_dir).start()
    assert (data_dir / "notes.txt").read_text() == "unrelated"


def test_embedded_postgres_deletes_its_temporary_directory() -> None:
    server = EmbeddedPostgres().start()
    pgdata = server.pgdata
    assert (pgdata / "PG_VERSION").read_text().strip() == "18"
    server.stop()
    assert not pgdata.exists()
    assert not server.running


async def test_embedded_postgres_takes_over_a_server_left_running(pg_dir: Path) -> None:
    left_running = EmbeddedPostgres(data_dir=pg_dir / "pgdata").start()
    try:
        # A second run (e.g. after the first process was killed) finds the server and uses it.
        again = EmbeddedPostgres(data_dir=pg_dir / "pgdata").start()
        assert again.port == left_running.port
        conn = await asyncpg.connect(again.url)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
        with pytest.raises(EmbeddedServerError, match="already runs"):
            EmbeddedPostgres(data_dir=pg_dir / "pgdata", port=free_port()).start()
        again.stop()
        with pytest.raises(ConnectionRefusedError):
            await asyncpg.connect(left_running.url, timeout=2)
    finally:
        left_running.stop()
