"""SQL of the gateway's own schema: tenants, principals, role bindings, group memberships, tokens, idempotency keys.

Every statement that reads or writes tenant data filters on ``tenant_id``; the only lookup that does not know
the tenant yet is the token lookup, which finds it from the token's hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID, uuid4

import asyncpg

# --- records --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenAuth:
    """What authenticating a token needs: the token's state, its principal and the principal's roles and groups."""

    token_id: UUID
    tenant_id: UUID
    principal_id: UUID
    principal_name: str
    principal_kind: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    expires_at: datetime | None
    revoked_at: datetime | None
    principal_deleted_at: datetime | None
    tenant_is_platform: bool = False
    principal_display_name: str | None = None


@dataclass(frozen=True)
class TenantRow:
    """A tenant, as the platform API shows it."""

    id: UUID
    name: str
    is_platform: bool
    created_at: datetime


@dataclass(frozen=True)
class PrincipalRow:
    """A principal, its roles and the groups it belongs to."""

    id: UUID
    name: str
    kind: str
    display_name: str | None
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    created_at: datetime
    created_by: UUID | None


@dataclass(frozen=True)
class TokenRow:
    """A token's metadata (never its value)."""

    id: UUID
    principal_id: UUID
    name: str
    prefix: str
    created_at: datetime
    created_by: UUID | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True)
class IdempotencyRow:
    """The stored state of one idempotency key."""

    principal_id: UUID | None
    request_hash: bytes
    message_id: UUID
    state: str
    response_status: int | None
    response_headers: dict[str, str] | None
    response_body: bytes | None
    late_reply: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime


# --- tokens ---------------------------------------------------------------------------------------------

_FIND_TOKEN: Final = """
    SELECT t.id, t.tenant_id, t.principal_id, t.expires_at, t.revoked_at,
           p.name, p.display_name, p.kind, p.deleted_at,
           (SELECT n.is_platform FROM tenants n WHERE n.id = t.tenant_id) AS tenant_is_platform,
           ARRAY(SELECT b.role FROM role_bindings b
                 WHERE b.tenant_id = t.tenant_id AND b.principal_id = t.principal_id
                 ORDER BY b.role) AS roles,
           ARRAY(SELECT g.group_name FROM group_memberships g
                 WHERE g.tenant_id = t.tenant_id AND g.principal_id = t.principal_id
                 ORDER BY g.group_name) AS groups
    FROM tokens t
    JOIN principals p ON p.tenant_id = t.tenant_id AND p.id = t.principal_id
    WHERE t.token_hash = $1
"""

_FIND_SESSION: Final = """
    SELECT t.id, t.tenant_id, t.principal_id, t.expires_at, t.revoked_at,
           p.name, p.display_name, p.kind, p.deleted_at,
           (SELECT n.is_platform FROM tenants n WHERE n.id = t.tenant_id) AS tenant_is_platform,
           ARRAY(SELECT b.role FROM role_bindings b
                 WHERE b.tenant_id = t.tenant_id AND b.principal_id = t.principal_id
                 ORDER BY b.role) AS roles,
           ARRAY(SELECT g.group_name FROM group_memberships g
                 WHERE g.tenant_id = t.tenant_id AND g.principal_id = t.principal_id
                 ORDER BY g.group_name) AS groups
    FROM ui_sessions s
    JOIN tokens t ON t.tenant_id = s.tenant_id AND t.id = s.token_id
    JOIN principals p ON p.tenant_id = t.tenant_id AND p.id = t.principal_id
    WHERE s.session_hash = $1 AND s.ended_at IS NULL AND s.expires_at > $2
"""

_INSERT_SESSION: Final = """
    INSERT INTO ui_sessions (session_hash, tenant_id, token_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)
"""

_END_SESSION: Final = """
    UPDATE ui_sessions SET ended_at = coalesce(ended_at, $2) WHERE session_hash = $1 RETURNING tenant_id
"""

_PURGE_SESSIONS: Final = """
    DELETE FROM ui_sessions WHERE session_hash IN (
        SELECT session_hash FROM ui_sessions WHERE expires_at <= $1 OR ended_at IS NOT NULL LIMIT $2
    )
"""

_TOUCH_TOKENS: Final = """
    UPDATE tokens AS t SET last_used_at = u.used_at
    FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) AS u(tenant_id, id, used_at)
    WHERE t.tenant_id = u.tenant_id AND t.id = u.id
      AND (t.last_used_at IS NULL OR t.last_used_at < u.used_at)
"""

_INSERT_TOKEN: Final = """
    INSERT INTO tokens (id, tenant_id, principal_id, name, token_hash, prefix, created_at, created_by, expires_at)
    SELECT $1, p.tenant_id, p.id, $4, $5, $6, $7, $8, $9
    FROM principals p
    WHERE p.tenant_id = $2 AND p.id = $3 AND p.deleted_at IS NULL
    RETURNING id, principal_id, name, prefix, created_at, created_by, expires_at, revoked_at, last_used_at
"""

_TOKEN_COLUMNS: Final = "id, principal_id, name, prefix, created_at, created_by, expires_at, revoked_at, last_used_at"

_GET_TOKEN: Final = f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE tenant_id = $1 AND id = $2"

_LIST_TOKENS: Final = f"""
    SELECT {_TOKEN_COLUMNS} FROM tokens
    WHERE tenant_id = $1
      AND ($2::uuid IS NULL OR principal_id = $2)
      AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid))
    ORDER BY created_at, id
    LIMIT $5
"""

_REVOKE_TOKEN: Final = """
    UPDATE tokens SET revoked_at = coalesce(revoked_at, $3)
    WHERE tenant_id = $1 AND id = $2
    RETURNING id
"""

# --- tenants and principals -----------------------------------------------------------------------------

_INSERT_TENANT: Final = """
    INSERT INTO tenants (id, name, created_at, is_platform) VALUES ($1, $2, $3, $4)
    ON CONFLICT DO NOTHING
    RETURNING id
"""

_TENANT_COLUMNS: Final = "id, name, is_platform, created_at"

_GET_TENANT: Final = f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE id = $1"

_LIST_TENANTS: Final = f"""
    SELECT {_TENANT_COLUMNS} FROM tenants
    WHERE $1::text IS NULL OR name > $1
    ORDER BY name
    LIMIT $2
"""

_PLATFORM_TENANT: Final = "SELECT id FROM tenants WHERE is_platform"

_TENANT_BY_NAME: Final = "SELECT id FROM tenants WHERE name = $1"

_LOCK_TENANT: Final = "SELECT id FROM tenants WHERE id = $1 FOR UPDATE"

_INSERT_PRINCIPAL: Final = """
    INSERT INTO principals (id, tenant_id, name, kind, display_name, created_at, created_by)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (tenant_id, name) WHERE deleted_at IS NULL DO NOTHING
    RETURNING id
"""

_INSERT_ROLES: Final = """
    INSERT INTO role_bindings (tenant_id, principal_id, role, created_at)
    SELECT $1, $2, role, $4 FROM unnest($3::text[]) AS role
    ON CONFLICT DO NOTHING
"""

_INSERT_GROUPS: Final = """
    INSERT INTO group_memberships (tenant_id, principal_id, group_name, created_at)
    SELECT $1, $2, group_name, $4 FROM unnest($3::text[]) AS group_name
    ON CONFLICT DO NOTHING
"""

# Replacing a principal's roles or groups keeps the bindings it already had (and when they were made).
_DROP_OTHER_ROLES: Final = """
    DELETE FROM role_bindings
    WHERE tenant_id = $1 AND principal_id = $2 AND role <> ALL($3::text[])
"""

_DROP_OTHER_GROUPS: Final = """
    DELETE FROM group_memberships
    WHERE tenant_id = $1 AND principal_id = $2 AND group_name <> ALL($3::text[])
"""

_PRINCIPAL_COLUMNS: Final = """
    p.id, p.name, p.kind, p.display_name, p.created_at, p.created_by,
    ARRAY(SELECT b.role FROM role_bindings b
          WHERE b.tenant_id = p.tenant_id AND b.principal_id = p.id ORDER BY b.role) AS roles,
    ARRAY(SELECT g.group_name FROM group_memberships g
          WHERE g.tenant_id = p.tenant_id AND g.principal_id = p.id ORDER BY g.group_name) AS groups
"""

_GET_PRINCIPAL: Final = f"""
    SELECT {_PRINCIPAL_COLUMNS} FROM principals p
    WHERE p.tenant_id = $1 AND p.id = $2 AND p.deleted_at IS NULL
"""

_PRINCIPAL_BY_NAME: Final = f"""
    SELECT {_PRINCIPAL_COLUMNS} FROM principals p
    WHERE p.tenant_id = $1 AND p.name = $2 AND p.deleted_at IS NULL
"""

_LIST_PRINCIPALS: Final = f"""
    SELECT {_PRINCIPAL_COLUMNS} FROM principals p
    WHERE p.tenant_id = $1 AND p.deleted_at IS NULL
      AND ($2::text IS NULL OR (p.name, p.id) > ($2, $3::uuid))
    ORDER BY p.name, p.id
    LIMIT $4
"""

_OTHER_ADMINS: Final = """
    SELECT count(*) FROM role_bindings b
    JOIN principals p ON p.tenant_id = b.tenant_id AND p.id = b.principal_id
    WHERE b.tenant_id = $1 AND b.role = 'tenant-admin' AND p.deleted_at IS NULL AND p.id <> $2
"""

_DELETE_PRINCIPAL: Final = """
    UPDATE principals SET deleted_at = $3
    WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
    RETURNING id
"""

_REVOKE_PRINCIPAL_TOKENS: Final = """
    UPDATE tokens SET revoked_at = $3
    WHERE tenant_id = $1 AND principal_id = $2 AND revoked_at IS NULL
"""

# --- idempotency keys -----------------------------------------------------------------------------------

_IDEMPOTENCY_COLUMNS: Final = """
    principal_id, request_hash, message_id, state, response_status, response_headers, response_body, late_reply,
    created_at, updated_at, expires_at
"""

_LOCK_KEY: Final = f"""
    SELECT {_IDEMPOTENCY_COLUMNS} FROM idempotency_keys
    WHERE tenant_id = $1 AND method = $2 AND path = $3 AND key = $4
    FOR UPDATE
"""

_INSERT_KEY: Final = """
    INSERT INTO idempotency_keys
        (tenant_id, method, path, key, request_hash, message_id, state, created_at, updated_at, expires_at,
         principal_id)
    VALUES ($1, $2, $3, $4, $5, $6, 'in_flight', $7, $7, $8, $9)
    ON CONFLICT (tenant_id, method, path, key) DO NOTHING
    RETURNING message_id
"""

_RESTART_KEY: Final = """
    UPDATE idempotency_keys
    SET request_hash = $5, message_id = $6, state = 'in_flight', response_status = NULL,
        response_headers = NULL, response_body = NULL, late_reply = NULL,
        created_at = $7, updated_at = $7, expires_at = $8, principal_id = $9
    WHERE tenant_id = $1 AND method = $2 AND path = $3 AND key = $4
"""

_RECLAIM_KEY: Final = """
    UPDATE idempotency_keys SET state = 'in_flight', updated_at = $5
    WHERE tenant_id = $1 AND method = $2 AND path = $3 AND key = $4
"""

_FINISH_KEY: Final = """
    UPDATE idempotency_keys
    SET state = 'done', response_status = $5, response_headers = $6, response_body = $7, updated_at = $8
    WHERE tenant_id = $1 AND method = $2 AND path = $3 AND key = $4 AND state = 'in_flight'
"""

_RELEASE_KEY: Final = """
    UPDATE idempotency_keys SET state = 'retryable', updated_at = $5
    WHERE tenant_id = $1 AND method = $2 AND path = $3 AND key = $4 AND state = 'in_flight'
"""

_STORE_LATE_REPLY: Final = """
    UPDATE idempotency_keys SET late_reply = $3
    WHERE tenant_id = $1 AND message_id = $2 AND state <> 'done'
"""

_PURGE_KEYS: Final = """
    DELETE FROM idempotency_keys
    WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency_keys WHERE expires_at <= $1 LIMIT $2))
"""


def _principal(row: asyncpg.Record) -> PrincipalRow:
    return PrincipalRow(
        id=row["id"],
        name=row["name"],
        kind=row["kind"],
        display_name=row["display_name"],
        roles=tuple(row["roles"]),
        groups=tuple(row["groups"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
    )


def _token(row: asyncpg.Record) -> TokenRow:
    return TokenRow(
        id=row["id"],
        principal_id=row["principal_id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


def _idempotency(row: asyncpg.Record) -> IdempotencyRow:
    return IdempotencyRow(
        principal_id=row["principal_id"],
        request_hash=bytes(row["request_hash"]),
        message_id=row["message_id"],
        state=row["state"],
        response_status=row["response_status"],
        response_headers=row["response_headers"],
        response_body=bytes(row["response_body"]) if row["response_body"] is not None else None,
        late_reply=row["late_reply"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
    )


class DeletePrincipalOutcome:
    """Results of :meth:`GatewayStore.delete_principal`."""

    DELETED: Final = "deleted"
    NOT_FOUND: Final = "not_found"
    LAST_ADMIN: Final = "last_admin"


class UpdatePrincipalOutcome:
    """Outcomes of :meth:`GatewayStore.update_principal` besides the updated principal."""

    NOT_FOUND: Final = "not_found"
    LAST_ADMIN: Final = "last_admin"


def _token_auth(row: asyncpg.Record) -> TokenAuth:
    return TokenAuth(
        token_id=row["id"],
        tenant_id=row["tenant_id"],
        principal_id=row["principal_id"],
        principal_name=row["name"],
        principal_display_name=row["display_name"],
        tenant_is_platform=bool(row["tenant_is_platform"]),
        principal_kind=row["kind"],
        roles=tuple(row["roles"]),
        groups=tuple(row["groups"]),
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        principal_deleted_at=row["deleted_at"],
    )


class GatewayStore:
    """The gateway's persistence, over a pool whose ``search_path`` is the ``gateway`` schema.

    Args:
        pool: The gateway's asyncpg pool.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # --- tokens -------------------------------------------------------------------------------------

    async def find_token(self, token_hash: bytes) -> TokenAuth | None:
        """Look a token up by its hash (one indexed query), with its principal, roles and groups."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_FIND_TOKEN, token_hash)
        return _token_auth(row) if row is not None else None

    # --- dashboard sessions -------------------------------------------------------------------------

    async def create_session(
        self, session_hash: bytes, tenant_id: UUID, token_id: UUID, *, now: datetime, expires_at: datetime
    ) -> None:
        """Open a dashboard session bound to an API token."""
        async with self.pool.acquire() as conn:
            await conn.execute(_INSERT_SESSION, session_hash, tenant_id, token_id, now, expires_at)

    async def find_session(self, session_hash: bytes, now: datetime) -> TokenAuth | None:
        """The token of a live session (not ended, not expired), as :meth:`find_token` reads it; None otherwise."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_FIND_SESSION, session_hash, now)
        return _token_auth(row) if row is not None else None

    async def end_session(self, session_hash: bytes, now: datetime) -> bool:
        """End a session (sign-out); False when there is no such session."""
        async with self.pool.acquire() as conn:
            return await conn.fetchval(_END_SESSION, session_hash, now) is not None

    async def purge_sessions(self, now: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` ended or expired sessions; returns how many."""
        async with self.pool.acquire() as conn:
            status = await conn.execute(_PURGE_SESSIONS, now, limit)
        return int(status.split()[-1])

    async def touch_tokens(self, uses: Sequence[tuple[UUID, UUID, datetime]]) -> None:
        """Record when tokens were last used, in one statement for a batch of ``(tenant, token, at)``."""
        if not uses:
            return
        async with self.pool.acquire() as conn:
            await conn.execute(_TOUCH_TOKENS, [u[0] for u in uses], [u[1] for u in uses], [u[2] for u in uses])

    async def create_token(
        self,
        tenant_id: UUID,
        principal_id: UUID,
        *,
        name: str,
        token_hash: bytes,
        prefix: str,
        now: datetime,
        created_by: UUID | None,
        expires_at: datetime | None,
    ) -> TokenRow | None:
        """Store a new token of a live principal; None when the principal does not exist in the tenant."""
        async with self.pool.acquire() as conn:
            return await insert_token(
                conn,
                tenant_id,
                principal_id,
                name=name,
                token_hash=token_hash,
                prefix=prefix,
                now=now,
                created_by=created_by,
                expires_at=expires_at,
            )

    async def get_token(self, tenant_id: UUID, token_id: UUID) -> TokenRow | None:
        """Read one token's metadata."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_GET_TOKEN, tenant_id, token_id)
        return _token(row) if row is not None else None

    async def list_tokens(
        self,
        tenant_id: UUID,
        *,
        principal_id: UUID | None,
        after: tuple[datetime, UUID] | None,
        limit: int,
    ) -> list[TokenRow]:
        """List tokens oldest first, after the cursor ``(created_at, id)``."""
        after_at, after_id = after if after is not None else (None, None)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_LIST_TOKENS, tenant_id, principal_id, after_at, after_id, limit)
        return [_token(row) for row in rows]

    async def revoke_token(self, tenant_id: UUID, token_id: UUID, now: datetime) -> bool:
        """Revoke a token (revoking twice keeps the first time); False when it does not exist."""
        async with self.pool.acquire() as conn:
            return await conn.fetchval(_REVOKE_TOKEN, tenant_id, token_id, now) is not None

    # --- principals ---------------------------------------------------------------------------------

    async def create_principal(
        self,
        tenant_id: UUID,
        *,
        name: str,
        kind: str,
        display_name: str | None,
        roles: Sequence[str],
        groups: Sequence[str],
        now: datetime,
        created_by: UUID | None,
    ) -> PrincipalRow | None:
        """Create a principal with its role bindings and groups; None when a live principal already has the name."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await insert_principal(
                conn,
                tenant_id,
                name=name,
                kind=kind,
                display_name=display_name,
                roles=roles,
                groups=groups,
                now=now,
                created_by=created_by,
            )

    async def get_principal(self, tenant_id: UUID, principal_id: UUID) -> PrincipalRow | None:
        """Read a live principal."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_GET_PRINCIPAL, tenant_id, principal_id)
        return _principal(row) if row is not None else None

    async def list_principals(
        self, tenant_id: UUID, *, after: tuple[str, UUID] | None, limit: int
    ) -> list[PrincipalRow]:
        """List live principals by name, after the cursor ``(name, id)``."""
        after_name, after_id = after if after is not None else (None, None)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_LIST_PRINCIPALS, tenant_id, after_name, after_id, limit)
        return [_principal(row) for row in rows]

    async def update_principal(
        self,
        tenant_id: UUID,
        principal_id: UUID,
        *,
        roles: Sequence[str] | None,
        groups: Sequence[str] | None,
        now: datetime,
    ) -> PrincipalRow | str:
        """Replace a live principal's roles and/or groups (None keeps them as they are).

        Changes in one tenant are serialised on the tenant's row, like deletions, so two admins taking
        tenant-admin away from each other at once cannot leave the tenant without one.

        Returns:
            The updated principal, or one of :class:`UpdatePrincipalOutcome`'s values: ``NOT_FOUND``, or
            ``LAST_ADMIN`` when the roles would take tenant-admin from the tenant's last tenant admin.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK_TENANT, tenant_id)
            current = await conn.fetchrow(_GET_PRINCIPAL, tenant_id, principal_id)
            if current is None:
                return UpdatePrincipalOutcome.NOT_FOUND
            if (
                roles is not None
                and "tenant-admin" in current["roles"]
                and "tenant-admin" not in roles
                and await conn.fetchval(_OTHER_ADMINS, tenant_id, principal_id) == 0
            ):
                return UpdatePrincipalOutcome.LAST_ADMIN
            if roles is not None:
                await conn.execute(_DROP_OTHER_ROLES, tenant_id, principal_id, list(roles))
                await conn.execute(_INSERT_ROLES, tenant_id, principal_id, list(roles), now)
            if groups is not None:
                await conn.execute(_DROP_OTHER_GROUPS, tenant_id, principal_id, list(groups))
                await conn.execute(_INSERT_GROUPS, tenant_id, principal_id, list(groups), now)
            row = await conn.fetchrow(_GET_PRINCIPAL, tenant_id, principal_id)
            return _principal(row)

    async def delete_principal(self, tenant_id: UUID, principal_id: UUID, now: datetime) -> str:
        """Retire a principal and revoke its tokens, unless it is the tenant's last tenant admin.

        Deletions in one tenant are serialised on the tenant's row, so two admins deleting each other at
        once cannot leave the tenant without one.

        Returns:
            One of :class:`DeletePrincipalOutcome`'s values.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK_TENANT, tenant_id)
            current = await conn.fetchrow(_GET_PRINCIPAL, tenant_id, principal_id)
            if current is None:
                return DeletePrincipalOutcome.NOT_FOUND
            if "tenant-admin" in current["roles"] and await conn.fetchval(_OTHER_ADMINS, tenant_id, principal_id) == 0:
                return DeletePrincipalOutcome.LAST_ADMIN
            await conn.execute(_DELETE_PRINCIPAL, tenant_id, principal_id, now)
            await conn.execute(_REVOKE_PRINCIPAL_TOKENS, tenant_id, principal_id, now)
            return DeletePrincipalOutcome.DELETED

    # --- idempotency keys ---------------------------------------------------------------------------

    async def lock_key(
        self, conn: asyncpg.Connection, tenant_id: UUID, method: str, path: str, key: str
    ) -> IdempotencyRow | None:
        """Read and lock an idempotency key inside the caller's transaction."""
        row = await conn.fetchrow(_LOCK_KEY, tenant_id, method, path, key)
        return _idempotency(row) if row is not None else None

    async def insert_key(
        self,
        conn: asyncpg.Connection,
        tenant_id: UUID,
        method: str,
        path: str,
        key: str,
        *,
        principal_id: UUID,
        request_hash: bytes,
        message_id: UUID,
        now: datetime,
        expires_at: datetime,
    ) -> bool:
        """Claim a new key for ``principal_id``; False when a concurrent request inserted it first."""
        inserted = await conn.fetchval(
            _INSERT_KEY, tenant_id, method, path, key, request_hash, message_id, now, expires_at, principal_id
        )
        return inserted is not None

    async def restart_key(
        self,
        conn: asyncpg.Connection,
        tenant_id: UUID,
        method: str,
        path: str,
        key: str,
        *,
        principal_id: UUID,
        request_hash: bytes,
        message_id: UUID,
        now: datetime,
        expires_at: datetime,
    ) -> None:
        """Start an expired key over as a new claim of ``principal_id``."""
        await conn.execute(
            _RESTART_KEY, tenant_id, method, path, key, request_hash, message_id, now, expires_at, principal_id
        )

    async def reclaim_key(
        self, conn: asyncpg.Connection, tenant_id: UUID, method: str, path: str, key: str, now: datetime
    ) -> None:
        """Take a retryable (or abandoned) key for another attempt."""
        await conn.execute(_RECLAIM_KEY, tenant_id, method, path, key, now)

    async def finish_key(
        self,
        tenant_id: UUID,
        method: str,
        path: str,
        key: str,
        *,
        status: int,
        headers: dict[str, str],
        body: bytes,
        now: datetime,
    ) -> None:
        """Store the final response of a key; repeats of the request replay it."""
        async with self.pool.acquire() as conn:
            await conn.execute(_FINISH_KEY, tenant_id, method, path, key, status, headers, body, now)

    async def release_key(self, tenant_id: UUID, method: str, path: str, key: str, now: datetime) -> None:
        """Give a key up without a final answer, so the next retry runs the request again."""
        async with self.pool.acquire() as conn:
            await conn.execute(_RELEASE_KEY, tenant_id, method, path, key, now)

    async def store_late_reply(self, tenant_id: UUID, message_id: UUID, reply: dict[str, Any]) -> None:
        """Keep a command's reply that came after its request gave up, for the request's next retry."""
        async with self.pool.acquire() as conn:
            await conn.execute(_STORE_LATE_REPLY, tenant_id, message_id, reply)

    async def purge_expired_keys(self, now: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` expired idempotency keys; returns how many were deleted."""
        async with self.pool.acquire() as conn:
            status = await conn.execute(_PURGE_KEYS, now, limit)
        return int(status.split()[-1])


# --- statements shared with the command line (a plain connection, no pool) ------------------------------


async def insert_tenant(
    conn: asyncpg.Connection, name: str, now: datetime, *, is_platform: bool = False
) -> UUID | None:
    """Create a tenant; None when a tenant of that name (or, for the platform tenant, any platform tenant) exists."""
    result: UUID | None = await conn.fetchval(_INSERT_TENANT, uuid4(), name, now, is_platform)
    return result


def _tenant(row: asyncpg.Record) -> TenantRow:
    return TenantRow(id=row["id"], name=row["name"], is_platform=row["is_platform"], created_at=row["created_at"])


async def get_tenant(conn: asyncpg.Connection, tenant_id: UUID) -> TenantRow | None:
    """One tenant by id."""
    row = await conn.fetchrow(_GET_TENANT, tenant_id)
    return _tenant(row) if row is not None else None


async def list_tenants(conn: asyncpg.Connection, *, after: str | None, limit: int) -> list[TenantRow]:
    """Tenants by name, after the name ``after``."""
    return [_tenant(row) for row in await conn.fetch(_LIST_TENANTS, after, limit)]


async def platform_tenant(conn: asyncpg.Connection) -> UUID | None:
    """The id of the platform tenant, if one was bootstrapped."""
    result: UUID | None = await conn.fetchval(_PLATFORM_TENANT)
    return result


async def tenant_by_name(conn: asyncpg.Connection, name: str) -> UUID | None:
    """The id of the tenant named ``name``, if any."""
    result: UUID | None = await conn.fetchval(_TENANT_BY_NAME, name)
    return result


async def insert_principal(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    *,
    name: str,
    kind: str,
    display_name: str | None,
    roles: Sequence[str],
    groups: Sequence[str] = (),
    now: datetime,
    created_by: UUID | None,
) -> PrincipalRow | None:
    """Create a principal, its role bindings and its group memberships inside the caller's transaction.

    Returns:
        The principal, or None when a live principal of the tenant already has the name.
    """
    principal_id = await conn.fetchval(_INSERT_PRINCIPAL, uuid4(), tenant_id, name, kind, display_name, now, created_by)
    if principal_id is None:
        return None
    await conn.execute(_INSERT_ROLES, tenant_id, principal_id, list(roles), now)
    if groups:
        await conn.execute(_INSERT_GROUPS, tenant_id, principal_id, list(groups), now)
    row = await conn.fetchrow(_GET_PRINCIPAL, tenant_id, principal_id)
    return _principal(row)


async def principal_by_name(conn: asyncpg.Connection, tenant_id: UUID, name: str) -> PrincipalRow | None:
    """A live principal of the tenant by name."""
    row = await conn.fetchrow(_PRINCIPAL_BY_NAME, tenant_id, name)
    return _principal(row) if row is not None else None


async def insert_token(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    principal_id: UUID,
    *,
    name: str,
    token_hash: bytes,
    prefix: str,
    now: datetime,
    created_by: UUID | None,
    expires_at: datetime | None,
) -> TokenRow | None:
    """Store a token of a live principal; None when the principal does not exist in the tenant."""
    row = await conn.fetchrow(
        _INSERT_TOKEN, uuid4(), tenant_id, principal_id, name, token_hash, prefix, now, created_by, expires_at
    )
    return _token(row) if row is not None else None
