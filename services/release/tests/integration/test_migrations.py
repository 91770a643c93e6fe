"""Migration 003 on a database made by the migrations before it: deprecating ``registry_credential_ref``."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import asyncpg
import pytest

from stella.kit.migrations import apply_migrations
from stella.release.app import MIGRATIONS


async def test_a_dead_credential_reference_is_dropped_and_a_live_one_kept(make_database, tmp_path: Path) -> None:
    before = tmp_path / "before-003"
    before.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < "003":
            shutil.copy(path, before / path.name)
    dsn = await make_database([("release", before)])
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "release"})
    try:
        tenant, legacy, both = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        insert = """
            INSERT INTO components (id, tenant_id, name, display_name, image_repository, versioning_strategy,
                                    default_channel, registry_credential_ref, registry_integration_id,
                                    created_at, updated_at)
            VALUES ($1, $2, $3, $3, 'r.example/app', '{}', 'stable', 'env:REGISTRY_AUTH', $4, now(), now())
        """
        await conn.execute(insert, legacy, tenant, "legacy", None)
        await conn.execute(insert, both, tenant, "both", uuid.uuid4())

        applied = await apply_migrations(conn, "release", MIGRATIONS)
        assert [name for name in applied if name.startswith("003")] == ["003_registry_credential_ref_deprecated.sql"]
        refs = dict(await conn.fetch("SELECT name, registry_credential_ref FROM components"))
        # Only read as a fallback: kept where it is the component's only credential, gone where an integration won.
        assert refs == {"legacy": "env:REGISTRY_AUTH", "both": None}
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE components SET registry_integration_id = $1 WHERE id = $2", uuid.uuid4(), legacy)
    finally:
        await conn.close()
