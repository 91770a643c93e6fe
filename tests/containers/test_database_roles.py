"""In the compose stack every service logs in as its own role, and the evidence role cannot change evidence.

The bootstrap step applies the migrations as the owner and creates the roles (``python -m stella.kit.migrate``
with ``STELLA_DATABASE_SERVICE_ROLES=true``); the services' environments hold no owner's credentials. Here
the evidence service runs from the image, and its role then tries every way around the append-only
evidence, directly and through PgBouncer: each is refused by Postgres.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from .conftest import ComposeProject

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

BYPASSES = (
    "UPDATE evidence.packets SET content = content",
    "DELETE FROM evidence.packets",
    "TRUNCATE evidence.packets",
    "ALTER TABLE evidence.packets DISABLE TRIGGER ALL",
    "SET session_replication_role = replica",
    "DROP TABLE evidence.packets",
    "ALTER ROLE stella_evidence SUPERUSER",
)


async def _wait_healthy(project: ComposeProject, service: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        containers = project.containers(service)
        if containers:
            state = project.inspect(containers[0])["State"]
            status = state.get("Health", {}).get("Status")
            if status == "healthy":
                return
            if state["Status"] == "exited":
                pytest.fail(f"{service} exited with {state['ExitCode']}")
        await asyncio.sleep(2)
    pytest.fail(f"{service} not healthy after {timeout}s (health: {status})")


async def _refused(conn: asyncpg.Connection, statement: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute(statement)


async def test_the_evidence_role_cannot_change_evidence(compose_project: ComposeProject) -> None:
    project = compose_project
    project.compose("up", "-d", "evidence", timeout=900)
    await _wait_healthy(project, "evidence")

    postgres = project.address("postgres")
    owner = await asyncpg.connect(
        f"postgresql://stella:{project.variables['POSTGRES_PASSWORD']}@{postgres}:5432/stella"
    )
    try:
        role = await owner.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles WHERE rolname = 'stella_evidence'"
        )
        assert role is not None, "the bootstrap step did not create the evidence role"
        assert not any(role.values()), dict(role)
        owners = await owner.fetch("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'evidence'")
        assert [row["tableowner"] for row in owners] == ["stella"]
        # The running service (its relay's direct connection, its pool through PgBouncer) is the role.
        users = await owner.fetch(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = 'stella' AND usename <> 'stella'"
        )
        assert "stella_evidence" in {row["usename"] for row in users}
    finally:
        await owner.close()

    password = project.variables["STELLA_EVIDENCE_DATABASE_PASSWORD"]
    direct = await asyncpg.connect(f"postgresql://stella_evidence:{password}@{postgres}:5432/stella")
    try:
        assert await direct.fetchval("SELECT current_user") == "stella_evidence"
        await direct.fetchval("SELECT count(*) FROM evidence.packets")  # reading is allowed
        for statement in BYPASSES:
            await _refused(direct, statement)
    finally:
        await direct.close()

    # The service's own path: its pooler database, where PgBouncer logs in to Postgres as the role.
    pooled = await asyncpg.connect(
        f"postgresql://stella_evidence:{password}@{project.address('pgbouncer')}:6432/evidence",
        statement_cache_size=0,
    )
    try:
        assert await pooled.fetchval("SELECT current_user") == "stella_evidence"
        for statement in BYPASSES[:4]:
            await _refused(pooled, statement)
    finally:
        await pooled.close()

    # Someone with only the owner's name and no password gets nowhere either.
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://stella:wrong@{postgres}:5432/stella")
