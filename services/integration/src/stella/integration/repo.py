"""SQL of the integration schema. Every statement filters by tenant, except the scheduler's claim of due
health checks, which spans tenants by design and returns each row's tenant, and the installed plugins, which
belong to the server (each tenant's use of one is its plugin instance, filtered by tenant)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from stella.contracts.integration import (
    HealthStatus,
    IntegrationView,
    PluginInstanceView,
    PluginStatus,
    PluginView,
    ResolvedPlugin,
    SecretView,
)
from stella.kit.pagination import decode_cursor, encode_cursor

_COLUMNS = """id, type_id, name, display_name, config, credential_ref, health_status, health_detail,
    health_checked_at, created_at, updated_at"""

INSERT_INTEGRATION = f"""
    INSERT INTO integrations (id, tenant_id, type_id, name, display_name, config, credential_ref,
                              next_check_at, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8)
    ON CONFLICT ON CONSTRAINT integrations_name_unique DO NOTHING
    RETURNING {_COLUMNS}
"""
GET_INTEGRATION = f"SELECT {_COLUMNS} FROM integrations WHERE tenant_id = $1 AND id = $2"
GET_INTEGRATIONS = f"SELECT {_COLUMNS} FROM integrations WHERE tenant_id = $1 AND id = ANY($2::uuid[])"
GET_INTEGRATION_BY_NAME = f"SELECT {_COLUMNS} FROM integrations WHERE tenant_id = $1 AND name = $2"
UPDATE_INTEGRATION = f"""
    UPDATE integrations SET display_name = $3, config = $4, credential_ref = $5, updated_at = $6,
                            health_status = 'unknown', health_detail = '', next_check_at = $6
     WHERE tenant_id = $1 AND id = $2
    RETURNING {_COLUMNS}
"""
DELETE_INTEGRATION = "DELETE FROM integrations WHERE tenant_id = $1 AND id = $2 RETURNING name"
LIST_INTEGRATIONS = f"""
    SELECT {_COLUMNS} FROM integrations
     WHERE tenant_id = $1 AND ($2::text IS NULL OR type_id = $2)
       AND ($3::text IS NULL OR (name, id::text) > ($3, $4))
     ORDER BY name, id
     LIMIT $5
"""
RECORD_HEALTH = f"""
    WITH prior AS (SELECT health_status FROM integrations WHERE tenant_id = $1 AND id = $2 FOR UPDATE)
    UPDATE integrations i SET health_status = $3, health_detail = $4, health_checked_at = $5, next_check_at = $6
      FROM prior
     WHERE i.tenant_id = $1 AND i.id = $2
    RETURNING prior.health_status AS previous, {", ".join("i." + c.strip() for c in _COLUMNS.split(","))}
"""
NEXT_CHECK = "SELECT min(next_check_at) FROM integrations"
CLAIM_DUE = """
    UPDATE integrations SET next_check_at = $2
     WHERE id IN (SELECT id FROM integrations WHERE next_check_at <= $1
                   ORDER BY next_check_at LIMIT $3 FOR UPDATE SKIP LOCKED)
    RETURNING tenant_id, id
"""
CREDENTIAL_IN_USE = "SELECT name FROM integrations WHERE tenant_id = $1 AND credential_ref = $2 ORDER BY name LIMIT 1"

GET_DATA_KEY = "SELECT master_key_id, wrapped_key FROM data_keys WHERE tenant_id = $1"
INSERT_DATA_KEY = """
    INSERT INTO data_keys (tenant_id, master_key_id, wrapped_key, created_at) VALUES ($1, $2, $3, $4)
    ON CONFLICT (tenant_id) DO NOTHING
"""
DATA_KEYS_NOT_UNDER = (
    "SELECT tenant_id, master_key_id, wrapped_key FROM data_keys WHERE master_key_id <> $1 FOR UPDATE SKIP LOCKED"
)
REWRAP_DATA_KEY = "UPDATE data_keys SET master_key_id = $2, wrapped_key = $3, rewrapped_at = $4 WHERE tenant_id = $1"

_SECRET_COLUMNS = "name, description, created_at, updated_at"
INSERT_SECRET = f"""
    INSERT INTO secrets (tenant_id, name, description, nonce, ciphertext, created_by, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
    ON CONFLICT (tenant_id, name) DO NOTHING
    RETURNING {_SECRET_COLUMNS}
"""
GET_SECRET_CIPHERTEXT = "SELECT nonce, ciphertext FROM secrets WHERE tenant_id = $1 AND name = $2"
GET_SECRET = f"SELECT {_SECRET_COLUMNS} FROM secrets WHERE tenant_id = $1 AND name = $2"
DELETE_SECRET = "DELETE FROM secrets WHERE tenant_id = $1 AND name = $2 RETURNING name"
LIST_SECRETS = f"""
    SELECT {_SECRET_COLUMNS} FROM secrets
     WHERE tenant_id = $1 AND ($2::text IS NULL OR name > $2)
     ORDER BY name
     LIMIT $3
"""


def integration_view(row: asyncpg.Record) -> IntegrationView:
    """A row as the contract view."""
    return IntegrationView(
        id=row["id"],
        type_id=row["type_id"],
        name=row["name"],
        display_name=row["display_name"],
        config=row["config"],
        credential_ref=row["credential_ref"],
        health_status=HealthStatus(row["health_status"]),
        health_detail=row["health_detail"],
        health_checked_at=row["health_checked_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def secret_view(row: asyncpg.Record) -> SecretView:
    """A secret's metadata row as the contract view."""
    return SecretView(
        name=row["name"], description=row["description"], created_at=row["created_at"], updated_at=row["updated_at"]
    )


async def insert_integration(
    conn: asyncpg.Connection, tenant: UUID, iid: UUID, fields: dict[str, Any], now: datetime
) -> IntegrationView | None:
    """Insert an integration; None when the name is taken."""
    row = await conn.fetchrow(
        INSERT_INTEGRATION,
        iid,
        tenant,
        fields["type_id"],
        fields["name"],
        fields["display_name"],
        fields["config"],
        fields["credential_ref"],
        now,
    )
    return integration_view(row) if row else None


async def get_integration(conn: asyncpg.Connection, tenant: UUID, iid: UUID) -> IntegrationView | None:
    """One integration of the tenant."""
    row = await conn.fetchrow(GET_INTEGRATION, tenant, iid)
    return integration_view(row) if row else None


async def get_integrations(conn: asyncpg.Connection, tenant: UUID, ids: list[UUID]) -> list[IntegrationView]:
    """The tenant's integrations among ``ids`` (one query)."""
    return [integration_view(row) for row in await conn.fetch(GET_INTEGRATIONS, tenant, ids)]


async def get_integration_by_name(conn: asyncpg.Connection, tenant: UUID, name: str) -> IntegrationView | None:
    """The integration of the tenant with this name."""
    row = await conn.fetchrow(GET_INTEGRATION_BY_NAME, tenant, name)
    return integration_view(row) if row else None


async def update_integration(
    conn: asyncpg.Connection, tenant: UUID, view: IntegrationView, now: datetime
) -> IntegrationView:
    """Write an integration's mutable fields; its health is unknown until the next test."""
    row = await conn.fetchrow(
        UPDATE_INTEGRATION, tenant, view.id, view.display_name, view.config, view.credential_ref, now
    )
    return integration_view(row)


async def delete_integration(conn: asyncpg.Connection, tenant: UUID, iid: UUID) -> str | None:
    """Delete an integration; its name, or None when there was none."""
    name: str | None = await conn.fetchval(DELETE_INTEGRATION, tenant, iid)
    return name


async def list_integrations(
    conn: asyncpg.Connection, tenant: UUID, type_id: str | None, page_size: int, page_token: str | None
) -> tuple[list[IntegrationView], str | None]:
    """A page of integrations by name."""
    cursor = decode_cursor(page_token, str, UUID, kind="integrations")
    rows = await conn.fetch(
        LIST_INTEGRATIONS,
        tenant,
        type_id,
        cursor[0] if cursor else None,
        str(cursor[1]) if cursor else None,
        page_size + 1,
    )
    items = [integration_view(r) for r in rows[:page_size]]
    token = encode_cursor(items[-1].name, items[-1].id, kind="integrations") if len(rows) > page_size else None
    return items, token


async def record_health(
    conn: asyncpg.Connection,
    tenant: UUID,
    iid: UUID,
    status: HealthStatus,
    detail: str,
    now: datetime,
    next_check: datetime,
) -> tuple[HealthStatus, IntegrationView] | None:
    """Record a connection test's outcome; the status before it and the integration, None if it is gone."""
    row = await conn.fetchrow(RECORD_HEALTH, tenant, iid, status.value, detail, now, next_check)
    return (HealthStatus(row["previous"]), integration_view(row)) if row else None


async def next_check(conn: asyncpg.Connection) -> datetime | None:
    """When the next scheduled health check is due."""
    due: datetime | None = await conn.fetchval(NEXT_CHECK)
    return due


async def claim_due(conn: asyncpg.Connection, now: datetime, push_to: datetime, limit: int) -> list[tuple[UUID, UUID]]:
    """Claim integrations whose check is due (moving their next check to ``push_to``): ``(tenant, id)``."""
    rows = await conn.fetch(CLAIM_DUE, now, push_to, limit)
    return [(r["tenant_id"], r["id"]) for r in rows]


async def integration_using(conn: asyncpg.Connection, tenant: UUID, credential_ref: str) -> str | None:
    """The name of an integration whose credential is ``credential_ref``, if any."""
    name: str | None = await conn.fetchval(CREDENTIAL_IN_USE, tenant, credential_ref)
    return name


@dataclass(frozen=True)
class WrappedKey:
    """A tenant's data key as stored."""

    master_key_id: str
    wrapped: bytes


async def get_data_key(conn: asyncpg.Connection, tenant: UUID) -> WrappedKey | None:
    """The tenant's wrapped data key."""
    row = await conn.fetchrow(GET_DATA_KEY, tenant)
    return WrappedKey(row["master_key_id"], bytes(row["wrapped_key"])) if row else None


async def insert_data_key(conn: asyncpg.Connection, tenant: UUID, key: WrappedKey, now: datetime) -> None:
    """Store a tenant's first data key (a concurrent first store wins; the caller reads it back)."""
    await conn.execute(INSERT_DATA_KEY, tenant, key.master_key_id, key.wrapped, now)


async def data_keys_not_under(conn: asyncpg.Connection, key_id: str) -> list[tuple[UUID, WrappedKey]]:
    """Data keys wrapped by another master key than ``key_id``, locked for re-wrapping."""
    rows = await conn.fetch(DATA_KEYS_NOT_UNDER, key_id)
    return [(r["tenant_id"], WrappedKey(r["master_key_id"], bytes(r["wrapped_key"]))) for r in rows]


async def rewrap_data_key(conn: asyncpg.Connection, tenant: UUID, key: WrappedKey, now: datetime) -> None:
    """Replace a tenant's wrapped data key."""
    await conn.execute(REWRAP_DATA_KEY, tenant, key.master_key_id, key.wrapped, now)


async def insert_secret(
    conn: asyncpg.Connection,
    tenant: UUID,
    name: str,
    description: str,
    nonce: bytes,
    ciphertext: bytes,
    actor: UUID | None,
    now: datetime,
) -> SecretView | None:
    """Store an encrypted secret; None when the name is taken (nothing stored)."""
    row = await conn.fetchrow(INSERT_SECRET, tenant, name, description, nonce, ciphertext, actor, now)
    return secret_view(row) if row else None


async def get_secret_ciphertext(conn: asyncpg.Connection, tenant: UUID, name: str) -> tuple[bytes, bytes] | None:
    """A secret's ``(nonce, ciphertext)``."""
    row = await conn.fetchrow(GET_SECRET_CIPHERTEXT, tenant, name)
    return (bytes(row["nonce"]), bytes(row["ciphertext"])) if row else None


async def get_secret(conn: asyncpg.Connection, tenant: UUID, name: str) -> SecretView | None:
    """A secret's metadata."""
    row = await conn.fetchrow(GET_SECRET, tenant, name)
    return secret_view(row) if row else None


async def delete_secret(conn: asyncpg.Connection, tenant: UUID, name: str) -> bool:
    """Delete a secret; whether there was one."""
    return await conn.fetchval(DELETE_SECRET, tenant, name) is not None


async def list_secrets(
    conn: asyncpg.Connection, tenant: UUID, page_size: int, page_token: str | None
) -> tuple[list[SecretView], str | None]:
    """A page of secrets' metadata by name."""
    cursor = decode_cursor(page_token, str, kind="secrets")
    rows = await conn.fetch(LIST_SECRETS, tenant, cursor[0] if cursor else None, page_size + 1)
    items = [secret_view(r) for r in rows[:page_size]]
    token = encode_cursor(items[-1].name, kind="secrets") if len(rows) > page_size else None
    return items, token


# --- plugins and plugin instances ----------------------------------------------------------------------

_PLUGIN_COLUMNS = "plugin_id, version, vendor, manifest, status, entrypoint, source, directory, installed_at"
INSERT_PLUGIN = f"""
    INSERT INTO plugins (plugin_id, version, vendor, manifest, entrypoint, source, directory, installed_by,
                         installed_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (plugin_id) DO NOTHING
    RETURNING {_PLUGIN_COLUMNS}
"""
GET_PLUGIN = f"SELECT {_PLUGIN_COLUMNS} FROM plugins WHERE plugin_id = $1"
PLUGIN_OF_SOURCE = "SELECT plugin_id FROM plugins WHERE source = $1"
LIST_PLUGINS = f"""
    SELECT {_PLUGIN_COLUMNS} FROM plugins
     WHERE ($1::text IS NULL OR manifest -> 'capabilities' ? $1)
       AND ($2::text IS NULL OR plugin_id > $2)
     ORDER BY plugin_id
     LIMIT $3
"""

_INSTANCE_COLUMNS = "id, plugin_id, config, enabled, created_at, updated_at"
INSERT_INSTANCE = f"""
    INSERT INTO plugin_instances (id, tenant_id, plugin_id, config, enabled, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $6)
    ON CONFLICT ON CONSTRAINT plugin_instances_one_per_tenant DO NOTHING
    RETURNING {_INSTANCE_COLUMNS}
"""
GET_INSTANCE = f"SELECT {_INSTANCE_COLUMNS} FROM plugin_instances WHERE tenant_id = $1 AND id = $2"
UPDATE_INSTANCE = f"""
    UPDATE plugin_instances SET config = $3, enabled = $4, updated_at = $5
     WHERE tenant_id = $1 AND id = $2
    RETURNING {_INSTANCE_COLUMNS}
"""
DELETE_INSTANCE = f"DELETE FROM plugin_instances WHERE tenant_id = $1 AND id = $2 RETURNING {_INSTANCE_COLUMNS}"
LIST_INSTANCES = f"""
    SELECT {_INSTANCE_COLUMNS} FROM plugin_instances
     WHERE tenant_id = $1 AND ($2::text IS NULL OR plugin_id > $2)
     ORDER BY plugin_id
     LIMIT $3
"""
RESOLVE_PLUGINS = """
    SELECT p.plugin_id, p.version, p.directory, p.manifest, i.id AS instance_id, i.enabled, i.config
      FROM plugin_instances i JOIN plugins p ON p.plugin_id = i.plugin_id
     WHERE i.tenant_id = $1 AND i.plugin_id = ANY($2::text[]) AND p.manifest -> 'capabilities' ? $3
     ORDER BY p.plugin_id
"""


def plugin_view(row: asyncpg.Record) -> PluginView:
    """A plugin row as the contract view."""
    manifest = row["manifest"]
    return PluginView(
        plugin_id=row["plugin_id"],
        version=row["version"],
        vendor=row["vendor"],
        description=manifest.get("description", ""),
        capabilities=list(manifest.get("capabilities", [])),
        permissions=list(manifest.get("permissions", [])),
        config_schema=manifest.get("config_schema", {}),
        entrypoint=row["entrypoint"],
        source=row["source"],
        status=PluginStatus(row["status"]),
        manifest=manifest,
        installed_at=row["installed_at"],
    )


def instance_view(row: asyncpg.Record) -> PluginInstanceView:
    """A plugin instance row as the contract view."""
    return PluginInstanceView(
        id=row["id"],
        plugin_id=row["plugin_id"],
        config=row["config"],
        enabled=row["enabled"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def insert_plugin(
    conn: asyncpg.Connection, fields: dict[str, Any], actor: UUID | None, now: datetime
) -> PluginView | None:
    """Record an installed plugin; None when one with the same id is installed."""
    row = await conn.fetchrow(
        INSERT_PLUGIN,
        fields["plugin_id"],
        fields["version"],
        fields["vendor"],
        fields["manifest"],
        fields["entrypoint"],
        fields["source"],
        fields["directory"],
        actor,
        now,
    )
    return plugin_view(row) if row else None


async def get_plugin(conn: asyncpg.Connection, plugin_id: str) -> PluginView | None:
    """One installed plugin."""
    row = await conn.fetchrow(GET_PLUGIN, plugin_id)
    return plugin_view(row) if row else None


async def get_plugin_id_of_source(conn: asyncpg.Connection, source: str) -> str | None:
    """The id of the plugin installed from ``source``, if one was."""
    plugin_id: str | None = await conn.fetchval(PLUGIN_OF_SOURCE, source)
    return plugin_id


async def list_plugins(
    conn: asyncpg.Connection, capability: str | None, page_size: int, page_token: str | None
) -> tuple[list[PluginView], str | None]:
    """A page of installed plugins by id."""
    cursor = decode_cursor(page_token, str, kind="plugins")
    rows = await conn.fetch(LIST_PLUGINS, capability, cursor[0] if cursor else None, page_size + 1)
    items = [plugin_view(r) for r in rows[:page_size]]
    token = encode_cursor(items[-1].plugin_id, kind="plugins") if len(rows) > page_size else None
    return items, token


async def insert_instance(
    conn: asyncpg.Connection,
    tenant: UUID,
    iid: UUID,
    plugin_id: str,
    config: dict[str, Any],
    enabled: bool,
    now: datetime,
) -> PluginInstanceView | None:
    """Create the tenant's instance of a plugin; None when it has one already."""
    row = await conn.fetchrow(INSERT_INSTANCE, iid, tenant, plugin_id, config, enabled, now)
    return instance_view(row) if row else None


async def get_instance(conn: asyncpg.Connection, tenant: UUID, iid: UUID) -> PluginInstanceView | None:
    """One plugin instance of the tenant."""
    row = await conn.fetchrow(GET_INSTANCE, tenant, iid)
    return instance_view(row) if row else None


async def update_instance(
    conn: asyncpg.Connection, tenant: UUID, view: PluginInstanceView, now: datetime
) -> PluginInstanceView:
    """Write an instance's config and enabled flag."""
    row = await conn.fetchrow(UPDATE_INSTANCE, tenant, view.id, view.config, view.enabled, now)
    return instance_view(row)


async def delete_instance(conn: asyncpg.Connection, tenant: UUID, iid: UUID) -> PluginInstanceView | None:
    """Delete an instance; it as it was, or None when there was none."""
    row = await conn.fetchrow(DELETE_INSTANCE, tenant, iid)
    return instance_view(row) if row else None


async def list_instances(
    conn: asyncpg.Connection, tenant: UUID, page_size: int, page_token: str | None
) -> tuple[list[PluginInstanceView], str | None]:
    """A page of the tenant's plugin instances by plugin id."""
    cursor = decode_cursor(page_token, str, kind="plugin-instances")
    rows = await conn.fetch(LIST_INSTANCES, tenant, cursor[0] if cursor else None, page_size + 1)
    items = [instance_view(r) for r in rows[:page_size]]
    token = encode_cursor(items[-1].plugin_id, kind="plugin-instances") if len(rows) > page_size else None
    return items, token


async def resolve_plugins(
    conn: asyncpg.Connection, tenant: UUID, plugin_ids: list[str], capability: str
) -> list[ResolvedPlugin]:
    """The tenant's instances of ``plugin_ids`` whose plugin offers ``capability``, with the plugin's place."""
    rows = await conn.fetch(RESOLVE_PLUGINS, tenant, plugin_ids, capability)
    return [ResolvedPlugin(**dict(r)) for r in rows]
