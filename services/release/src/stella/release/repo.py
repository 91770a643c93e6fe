"""SQL of the release schema. Every statement filters by tenant."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from stella.contracts.release import (
    ComponentView,
    ReleaseComponent,
    ReleaseStatus,
    ReleaseView,
    VersionView,
)
from stella.kit.pagination import aware_datetime, decode_cursor, encode_cursor

_COMPONENT_COLUMNS = """id, name, display_name, image_repository, versioning_strategy, default_channel,
    registry_credential_ref, registry_integration_id, created_at, updated_at"""
_RELEASE_COLUMNS = """id, name, display_name, status, components, source_ref, created_by, created_at,
    updated_at, ready_at, deprecated_at, deprecation_reason"""
_VERSION_COLUMNS = "id, component_id, tag, digest, semver, channel, created_at, updated_at"

INSERT_COMPONENT = (
    """
    INSERT INTO components (id, tenant_id, name, display_name, image_repository, versioning_strategy,
                            default_channel, registry_credential_ref, registry_integration_id, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10, $9, $9)
    ON CONFLICT ON CONSTRAINT components_name_unique DO NOTHING
    RETURNING """
    + _COMPONENT_COLUMNS
)
GET_COMPONENT = f"SELECT {_COMPONENT_COLUMNS} FROM components WHERE tenant_id = $1 AND id = $2"
GET_COMPONENT_FOR_UPDATE = GET_COMPONENT + " FOR UPDATE"
GET_COMPONENTS_BY_REF = f"""
    SELECT {_COMPONENT_COLUMNS} FROM components
     WHERE tenant_id = $1 AND (name = ANY($2::text[]) OR id::text = ANY($2::text[]))
"""
UPDATE_COMPONENT = f"""
    UPDATE components
       SET display_name = $3, image_repository = $4, versioning_strategy = $5, default_channel = $6,
           registry_credential_ref = $7, updated_at = $8, registry_integration_id = $9
     WHERE tenant_id = $1 AND id = $2
    RETURNING {_COMPONENT_COLUMNS}
"""
COUNT_LEGACY_CREDENTIAL_REFS = "SELECT count(*) FROM components WHERE registry_credential_ref IS NOT NULL"
COMPONENT_IN_USE = "SELECT EXISTS (SELECT 1 FROM release_components WHERE tenant_id = $1 AND component_id = $2)"
DELETE_COMPONENT = "DELETE FROM components WHERE tenant_id = $1 AND id = $2 RETURNING name"
LIST_COMPONENTS = f"""
    SELECT {_COMPONENT_COLUMNS} FROM components
     WHERE tenant_id = $1
       AND ($2::text IS NULL OR name LIKE $2 || '%')
       AND ($3::text IS NULL OR (name, id::text) > ($3, $4))
     ORDER BY name, id
     LIMIT $5
"""

VERSIONS_BY_TAG = (
    f"SELECT {_VERSION_COLUMNS} FROM versions WHERE tenant_id = $1 AND component_id = $2 AND tag = ANY($3::text[])"
)
VERSIONS_BY_PAIRS = f"""
    SELECT {_VERSION_COLUMNS} FROM versions v
     WHERE tenant_id = $1
       AND (component_id, tag) IN (SELECT * FROM unnest($2::uuid[], $3::text[]))
"""
UPSERT_VERSIONS = f"""
    INSERT INTO versions (id, tenant_id, component_id, tag, digest, semver, channel, created_at, updated_at)
    SELECT v.id, $2, $3, v.tag, v.digest, v.semver, v.channel, $8, $8
      FROM unnest($1::uuid[], $4::text[], $5::text[], $6::text[], $7::text[]) AS v(id, tag, digest, semver, channel)
    ON CONFLICT ON CONSTRAINT versions_tag_unique
    DO UPDATE SET digest = EXCLUDED.digest, semver = EXCLUDED.semver, channel = EXCLUDED.channel,
                  updated_at = EXCLUDED.updated_at
    RETURNING {_VERSION_COLUMNS}
"""
LIST_VERSIONS = f"""
    SELECT {_VERSION_COLUMNS} FROM versions
     WHERE tenant_id = $1 AND component_id = $2
       AND ($3::text IS NULL OR channel = $3)
       AND ($4::timestamptz IS NULL OR (updated_at, id) < ($4, $5::uuid))
     ORDER BY updated_at DESC, id DESC
     LIMIT $6
"""

INSERT_RELEASE = f"""
    INSERT INTO releases (id, tenant_id, name, display_name, status, components, source_ref, created_by,
                          created_at, updated_at)
    VALUES ($1, $2, $3, $4, 'draft', $5, $6, $7, $8, $8)
    ON CONFLICT ON CONSTRAINT releases_name_unique DO NOTHING
    RETURNING {_RELEASE_COLUMNS}
"""
INSERT_RELEASE_COMPONENTS = """
    INSERT INTO release_components (release_id, component_id, tenant_id)
    SELECT $1, unnest($2::uuid[]), $3
"""
DELETE_RELEASE_COMPONENTS = "DELETE FROM release_components WHERE tenant_id = $1 AND release_id = $2"
GET_RELEASE = f"SELECT {_RELEASE_COLUMNS} FROM releases WHERE tenant_id = $1 AND id = $2"
GET_RELEASE_FOR_UPDATE = GET_RELEASE + " FOR UPDATE"
UPDATE_RELEASE = f"""
    UPDATE releases
       SET display_name = $3, components = $4, source_ref = $5, updated_at = $6
     WHERE tenant_id = $1 AND id = $2
    RETURNING {_RELEASE_COLUMNS}
"""
SET_RELEASE_STATUS = f"""
    UPDATE releases
       SET status = $3, updated_at = $4,
           ready_at = CASE WHEN $3 = 'ready' THEN $4 ELSE ready_at END,
           deprecated_at = CASE WHEN $3 = 'deprecated' THEN $4 ELSE deprecated_at END,
           deprecation_reason = CASE WHEN $3 = 'deprecated' THEN $5 ELSE deprecation_reason END
     WHERE tenant_id = $1 AND id = $2
    RETURNING {_RELEASE_COLUMNS}
"""
LIST_RELEASES = f"""
    SELECT {_RELEASE_COLUMNS} FROM releases r
     WHERE tenant_id = $1
       AND ($2::text IS NULL OR status = $2)
       AND ($3::text IS NULL OR name LIKE $3 || '%')
       AND ($4::uuid IS NULL OR EXISTS (SELECT 1 FROM release_components rc
                                         WHERE rc.tenant_id = $1 AND rc.release_id = r.id AND rc.component_id = $4))
       AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6::uuid))
     ORDER BY created_at DESC, id DESC
     LIMIT $7
"""


def _like_escape(prefix: str | None) -> str | None:
    if prefix is None:
        return None
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def component_view(row: asyncpg.Record) -> ComponentView:
    """Map a components row."""
    return ComponentView(**dict(row))


def version_view(row: asyncpg.Record) -> VersionView:
    """Map a versions row."""
    return VersionView(**dict(row))


def release_view(row: asyncpg.Record) -> ReleaseView:
    """Map a releases row."""
    data = dict(row)
    data["status"] = ReleaseStatus(data["status"])
    data["components"] = [ReleaseComponent(**c) for c in data["components"]]
    return ReleaseView(**data)


async def insert_component(
    conn: asyncpg.Connection, tenant: UUID, cid: UUID, fields: dict[str, Any], now: datetime
) -> ComponentView | None:
    """Insert a component; None when the name is taken."""
    row = await conn.fetchrow(
        INSERT_COMPONENT,
        cid,
        tenant,
        fields["name"],
        fields["display_name"],
        fields["image_repository"],
        fields["versioning_strategy"],
        fields["default_channel"],
        fields["registry_credential_ref"],
        now,
        fields.get("registry_integration_id"),
    )
    return component_view(row) if row else None


async def get_component(
    conn: asyncpg.Connection, tenant: UUID, cid: UUID, *, lock: bool = False
) -> ComponentView | None:
    """One component, optionally locked for the rest of the transaction."""
    row = await conn.fetchrow(GET_COMPONENT_FOR_UPDATE if lock else GET_COMPONENT, tenant, cid)
    return component_view(row) if row else None


async def components_by_ref(conn: asyncpg.Connection, tenant: UUID, refs: list[str]) -> dict[str, ComponentView]:
    """Components named by name or id, keyed by both, in one query."""
    rows = await conn.fetch(GET_COMPONENTS_BY_REF, tenant, refs)
    found: dict[str, ComponentView] = {}
    for row in rows:
        view = component_view(row)
        found[view.name] = view
        found[str(view.id)] = view
    return found


async def update_component(conn: asyncpg.Connection, tenant: UUID, view: ComponentView, now: datetime) -> ComponentView:
    """Write a component's mutable fields."""
    row = await conn.fetchrow(
        UPDATE_COMPONENT,
        tenant,
        view.id,
        view.display_name,
        view.image_repository,
        view.versioning_strategy,
        view.default_channel,
        view.registry_credential_ref,
        now,
        view.registry_integration_id,
    )
    return component_view(row)


async def component_in_use(conn: asyncpg.Connection, tenant: UUID, cid: UUID) -> bool:
    """Whether any release uses the component."""
    return bool(await conn.fetchval(COMPONENT_IN_USE, tenant, cid))


async def delete_component(conn: asyncpg.Connection, tenant: UUID, cid: UUID) -> str | None:
    """Delete a component; its name, or None when it did not exist."""
    return await conn.fetchval(DELETE_COMPONENT, tenant, cid)


async def list_components(
    conn: asyncpg.Connection, tenant: UUID, name_prefix: str | None, page_size: int, page_token: str | None
) -> tuple[list[ComponentView], str | None]:
    """A page of components by name."""
    cursor = decode_cursor(page_token, str, UUID, kind="components")
    rows = await conn.fetch(
        LIST_COMPONENTS,
        tenant,
        _like_escape(name_prefix),
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        page_size + 1,
    )
    items = [component_view(r) for r in rows[:page_size]]
    token = encode_cursor(items[-1].name, items[-1].id, kind="components") if len(rows) > page_size else None
    return items, token


async def versions_by_tag(conn: asyncpg.Connection, tenant: UUID, cid: UUID, tags: list[str]) -> dict[str, VersionView]:
    """The version map entries of ``tags``, keyed by tag, in one query."""
    rows = await conn.fetch(VERSIONS_BY_TAG, tenant, cid, tags)
    return {r["tag"]: version_view(r) for r in rows}


async def versions_by_pairs(
    conn: asyncpg.Connection, tenant: UUID, pairs: list[tuple[UUID, str]]
) -> dict[tuple[UUID, str], VersionView]:
    """The version map entries of several (component, tag) pairs, in one query."""
    if not pairs:
        return {}
    rows = await conn.fetch(VERSIONS_BY_PAIRS, tenant, [p[0] for p in pairs], [p[1] for p in pairs])
    return {(r["component_id"], r["tag"]): version_view(r) for r in rows}


async def upsert_versions(
    conn: asyncpg.Connection,
    tenant: UUID,
    cid: UUID,
    entries: list[tuple[UUID, str, str, str | None, str]],
    now: datetime,
) -> list[VersionView]:
    """Insert or move tags in one statement: entries are (new id, tag, digest, semver, channel)."""
    if not entries:
        return []
    ids, tags, digests, semvers, channels = (list(col) for col in zip(*entries, strict=True))
    rows = await conn.fetch(UPSERT_VERSIONS, ids, tenant, cid, tags, digests, semvers, channels, now)
    return [version_view(r) for r in rows]


async def list_versions(
    conn: asyncpg.Connection, tenant: UUID, cid: UUID, channel: str | None, page_size: int, page_token: str | None
) -> tuple[list[VersionView], str | None]:
    """A page of a component's versions, most recently changed first."""
    cursor = decode_cursor(page_token, aware_datetime, UUID, kind="versions")
    rows = await conn.fetch(
        LIST_VERSIONS,
        tenant,
        cid,
        channel,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        page_size + 1,
    )
    items = [version_view(r) for r in rows[:page_size]]
    token = (
        encode_cursor(items[-1].updated_at.isoformat(), items[-1].id, kind="versions")
        if len(rows) > page_size
        else None
    )
    return items, token


async def insert_release(
    conn: asyncpg.Connection,
    tenant: UUID,
    rid: UUID,
    name: str,
    display_name: str,
    components: list[ReleaseComponent],
    source_ref: dict[str, Any],
    created_by: UUID | None,
    now: datetime,
) -> ReleaseView | None:
    """Insert a draft release and its component links; None when the name is taken."""
    row = await conn.fetchrow(
        INSERT_RELEASE,
        rid,
        tenant,
        name,
        display_name,
        [c.model_dump(mode="json") for c in components],
        source_ref,
        created_by,
        now,
    )
    if row is None:
        return None
    await conn.execute(INSERT_RELEASE_COMPONENTS, rid, [c.component_id for c in components], tenant)
    return release_view(row)


async def get_release(conn: asyncpg.Connection, tenant: UUID, rid: UUID, *, lock: bool = False) -> ReleaseView | None:
    """One release, optionally locked for the rest of the transaction."""
    row = await conn.fetchrow(GET_RELEASE_FOR_UPDATE if lock else GET_RELEASE, tenant, rid)
    return release_view(row) if row else None


async def update_release(
    conn: asyncpg.Connection,
    tenant: UUID,
    rid: UUID,
    display_name: str,
    components: list[ReleaseComponent],
    source_ref: dict[str, Any],
    now: datetime,
    *,
    relink: bool,
) -> ReleaseView:
    """Rewrite a draft release (and its component links when the components changed)."""
    row = await conn.fetchrow(
        UPDATE_RELEASE, tenant, rid, display_name, [c.model_dump(mode="json") for c in components], source_ref, now
    )
    if relink:
        await conn.execute(DELETE_RELEASE_COMPONENTS, tenant, rid)
        await conn.execute(INSERT_RELEASE_COMPONENTS, rid, [c.component_id for c in components], tenant)
    return release_view(row)


async def set_release_status(
    conn: asyncpg.Connection, tenant: UUID, rid: UUID, status: ReleaseStatus, now: datetime, reason: str | None = None
) -> ReleaseView:
    """Move a release to ``status`` (stamping ready_at / deprecated_at)."""
    row = await conn.fetchrow(SET_RELEASE_STATUS, tenant, rid, status.value, now, reason)
    return release_view(row)


async def list_releases(
    conn: asyncpg.Connection,
    tenant: UUID,
    status: str | None,
    name_prefix: str | None,
    component_id: UUID | None,
    page_size: int,
    page_token: str | None,
) -> tuple[list[ReleaseView], str | None]:
    """A page of releases, newest first."""
    cursor = decode_cursor(page_token, aware_datetime, UUID, kind="releases")
    rows = await conn.fetch(
        LIST_RELEASES,
        tenant,
        status,
        _like_escape(name_prefix),
        component_id,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        page_size + 1,
    )
    items = [release_view(r) for r in rows[:page_size]]
    token = (
        encode_cursor(items[-1].created_at.isoformat(), items[-1].id, kind="releases")
        if len(rows) > page_size
        else None
    )
    return items, token


async def count_legacy_credential_refs(conn: asyncpg.Connection) -> int:
    """How many components (of every tenant) still name a deprecated ``registry_credential_ref``."""
    return int(await conn.fetchval(COUNT_LEGACY_CREDENTIAL_REFS))
