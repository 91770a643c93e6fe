"""Operations run from the command line against the gateway's schema: bootstrap a tenant, issue a token.

They need only the database (not NATS), so a fresh installation can be given its first tenant admin
before anything else runs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from uuid import UUID

import asyncpg

from stella.contracts.validation import NAME_PATTERN
from stella.gateway.auth import new_token
from stella.gateway.permissions import Role
from stella.gateway.store import insert_principal, insert_tenant, insert_token, principal_by_name, tenant_by_name

_NAME = re.compile(NAME_PATTERN)


class AdminError(Exception):
    """A command-line operation cannot be done (unknown tenant or principal, bad name)."""


@dataclass(frozen=True)
class IssuedCredential:
    """A token made from the command line: its value is shown once."""

    tenant_id: UUID
    principal_id: UUID
    token_id: UUID
    token: str


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid resource name, else raise :class:`AdminError`."""
    if not _NAME.match(name):
        raise AdminError(
            f"{kind} name {name!r} is invalid: use 1 to 63 lower-case letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


async def bootstrap(
    conn: asyncpg.Connection,
    tenant: str,
    admin: str,
    now: datetime,
    *,
    platform: bool = False,
    created_by: UUID | None = None,
) -> IssuedCredential | None:
    """Create a tenant, its first tenant admin (a user) and an API token for it, in one transaction.

    Args:
        conn: A connection to the gateway's database (``search_path`` on the gateway schema).
        tenant: The tenant's name.
        admin: The admin principal's name.
        now: The current UTC time.
        platform: Create the platform (operator) tenant: its admin is a tenant admin and a platform admin.
        created_by: The platform admin creating the tenant through the API (None from the command line).

    Returns:
        The new credential, or None when the tenant already exists, or a platform tenant does when
        ``platform`` is set (nothing is changed then).
    """
    check_name("tenant", tenant)
    check_name("principal", admin)
    async with conn.transaction():
        tenant_id = await insert_tenant(conn, tenant, now, is_platform=platform)
        if tenant_id is None:
            return None
        principal = await insert_principal(
            conn,
            tenant_id,
            name=admin,
            kind="user",
            display_name=None,
            roles=[Role.TENANT_ADMIN.value, *([Role.PLATFORM_ADMIN.value] if platform else [])],
            now=now,
            created_by=created_by,
        )
        assert principal is not None  # a new tenant has no principals
        issued = new_token()
        row = await insert_token(
            conn,
            tenant_id,
            principal.id,
            name="bootstrap",
            token_hash=issued.token_hash,
            prefix=issued.prefix,
            now=now,
            created_by=created_by,
            expires_at=None,
        )
        assert row is not None
    return IssuedCredential(tenant_id=tenant_id, principal_id=principal.id, token_id=row.id, token=issued.secret)


async def create_token(
    conn: asyncpg.Connection,
    tenant: str,
    principal: str,
    now: datetime,
    *,
    name: str = "",
    expires_at: datetime | None = None,
) -> IssuedCredential:
    """Issue a new API token for an existing principal.

    Raises:
        AdminError: when the tenant or the principal does not exist.
    """
    tenant_id = await tenant_by_name(conn, tenant)
    if tenant_id is None:
        raise AdminError(f"tenant {tenant!r} does not exist; run 'bootstrap' first")
    found = await principal_by_name(conn, tenant_id, principal)
    if found is None:
        raise AdminError(f"principal {principal!r} does not exist in tenant {tenant!r}")
    issued = new_token()
    row = await insert_token(
        conn,
        tenant_id,
        found.id,
        name=name,
        token_hash=issued.token_hash,
        prefix=issued.prefix,
        now=now,
        created_by=None,
        expires_at=expires_at,
    )
    if row is None:
        raise AdminError(f"principal {principal!r} was deleted meanwhile")
    return IssuedCredential(tenant_id=tenant_id, principal_id=found.id, token_id=row.id, token=issued.secret)


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path``, readable by its owner only (0600), replacing what was there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # The mode of open() only applies to a new file; an existing one is tightened too.
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
    finally:
        os.close(fd)
