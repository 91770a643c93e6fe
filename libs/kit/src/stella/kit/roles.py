"""Least-privilege database roles: each service connects as its own login role, never as the schema's owner.

The migrations run as the owner (``STELLA_DATABASE_URL`` / ``STELLA_DATABASE_DIRECT_URL``, a role that may
create schemas and roles). With ``STELLA_DATABASE_SERVICE_ROLES=true``, the runner then makes sure the
service's login role ``<prefix><schema>`` (``stella_evidence``...) exists and holds exactly the grants the
service needs, and the service connects as that role. The role is not a superuser, owns nothing, cannot create
objects, and so cannot ``ALTER TABLE ... DISABLE TRIGGER``, ``TRUNCATE``, or ``SET session_replication_role``.

A service states its grants in ``privileges.sql`` beside its ``migrations`` directory (``{schema}`` and
``{role}`` are replaced by the quoted identifiers). A service without one gets the default: read and write
rows of every table of its schema, use its sequences and functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import asyncpg

from stella.kit.migrations import quote_ident

log = logging.getLogger(__name__)

PRIVILEGES_FILE: Final[str] = "privileges.sql"
"""A service's grants to its role, in the folder that holds its ``migrations`` directory."""

DEFAULT_PRIVILEGES: Final[str] = """
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role};
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {role};
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role};
"""
"""What a service without ``privileges.sql`` may do: rows only, never the tables themselves."""

_CREATE_ROLE: Final[str] = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN
        CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
    END IF;
END;
$$
"""


def role_name(prefix: str, schema: str) -> str:
    """The login role of a service: ``<prefix><schema>``."""
    name = f"{prefix}{schema}"
    quote_ident(name)  # validates it
    return name


def privileges_for(migrations: Path) -> str:
    """The grants a service declares (``privileges.sql`` beside its migrations), else the default."""
    path = migrations.parent / PRIVILEGES_FILE
    return path.read_text(encoding="utf-8") if path.exists() else DEFAULT_PRIVILEGES


async def ensure_service_role(
    conn: asyncpg.Connection, schema: str, role: str, migrations: Path, *, password: str | None = None
) -> None:
    """Create the service's login role when missing and grant it what the service declares, nothing more.

    Run as the schema's owner after its migrations, every time (grants on tables a new migration added).
    Privileges the role had on the schema's tables are revoked first, so the grants are exactly the declared
    ones.

    Args:
        conn: A connection of a role that owns the schema and may create roles.
        schema: The service's schema.
        role: The login role (see :func:`role_name`).
        migrations: The service's migrations directory (its ``privileges.sql`` sits beside it).
        password: The role's password, when Postgres asks for one (trust authentication does not).
    """
    ident_schema, ident_role = quote_ident(schema), quote_ident(role)
    async with conn.transaction():
        await conn.execute(_CREATE_ROLE.format(name=role, role=ident_role))
        if password is not None:
            statement = await conn.fetchval(
                "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", role, password
            )
            await conn.execute(statement)
        await conn.execute(f"GRANT USAGE ON SCHEMA {ident_schema} TO {ident_role}")
        await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {ident_schema} FROM {ident_role}")
        await conn.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {ident_schema} FROM {ident_role}")
        await conn.execute(privileges_for(migrations).format(schema=ident_schema, role=ident_role))
    log.info("service role granted", extra={"schema": schema, "role": role})
