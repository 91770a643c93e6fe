"""The evidence service as its own least-privilege database role: it works, and it cannot change evidence.

The role is what ``STELLA_DATABASE_SERVICE_ROLES=true`` gives the service (``stella.kit.roles`` and the
service's ``privileges.sql``); a prefix unique to the test keeps parallel tests' roles apart.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from stella.evidence.app import EvidenceApp
from stella.evidence.settings import Settings

from .conftest import Auditor


@pytest_asyncio.fixture
async def evidence_settings(evidence_settings: Settings) -> AsyncIterator[Settings]:
    """The usual settings with the service role switched on."""
    settings = evidence_settings.model_copy(
        update={"database_service_roles": True, "database_role_prefix": f"t{uuid.uuid4().hex[:10]}_"}
    )
    yield settings
    role = settings.service_role("evidence")
    conn = await asyncpg.connect(evidence_settings.database_url)
    try:
        await conn.execute(f'DROP OWNED BY "{role}"')
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
    finally:
        await conn.close()


async def test_the_service_runs_as_its_own_role_and_everything_verifies(
    evidence_app: EvidenceApp, evidence_settings: Settings, auditor: Auditor
) -> None:
    async with evidence_app.runtime.pool.acquire() as conn:
        who = await conn.fetchrow(
            """SELECT current_user AS name, r.rolsuper, r.rolcreaterole, r.rolbypassrls,
                      pg_has_role(current_user, (SELECT tableowner FROM pg_tables
                                                   WHERE schemaname = 'evidence' AND tablename = 'packets'),
                                  'MEMBER') AS owner
                 FROM pg_roles r WHERE r.rolname = current_user"""
        )
    assert who["name"] == evidence_settings.service_role("evidence")
    assert not who["rolsuper"] and not who["rolcreaterole"] and not who["rolbypassrls"] and not who["owner"]

    for i in range(4):
        await auditor.collect(i)
    code, out = await auditor.verify_offline(await auditor.export())
    assert code == 0, out


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE packets SET content_hash = content_hash",
        "DELETE FROM packets",
        "TRUNCATE packets",
        "ALTER TABLE packets DISABLE TRIGGER ALL",
        "ALTER TABLE packets DISABLE TRIGGER packets_append_only",
        "SET session_replication_role = replica",
        "DROP TRIGGER packets_append_only ON packets",
        "UPDATE checkpoints SET note = note",
        "DELETE FROM key_log",
        "INSERT INTO merkle_nodes VALUES (gen_random_uuid(), 0, 0, sha256(''::bytea))",
        "UPDATE trees SET size = 1",
        "UPDATE keys SET public_key_pem = public_key_pem",
        "SELECT merkle_add_leaf(gen_random_uuid(), 1, '')",
        "CREATE TABLE evidence.shadow (id int)",
    ],
)
async def test_the_service_role_cannot_change_evidence(
    evidence_app: EvidenceApp, evidence_settings: Settings, statement: str
) -> None:
    dsn = evidence_settings.as_service(evidence_settings.database_url, "evidence")
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "evidence"})
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    finally:
        await conn.close()
