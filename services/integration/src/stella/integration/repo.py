"""SQL of the integration schema. Every statement filters by tenant, except the scheduler's claim of due
health checks, which spans tenants by design and returns each row's tenant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from stella.contracts.integration import HealthStatus, IntegrationView, SecretView
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
