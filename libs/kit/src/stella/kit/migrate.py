"""Apply the migrations of every installed Stella service: ``python -m stella.kit.migrate``.

The migration step of a container installation (the compose file's ``bootstrap`` service, the Kubernetes
migration Job) runs this before the services start with ``STELLA_MIGRATE_ON_START=false``. It connects to
``STELLA_DATABASE_DIRECT_URL`` (else ``STELLA_DATABASE_URL``), waits for Postgres like a service does, and
prints one line per schema. Exit codes: 0 done, 69 Postgres did not answer, 78 bad configuration or a
migration that no longer matches its recorded checksum.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

import asyncpg

from stella.kit.logs import configure_logging
from stella.kit.migrations import apply_migrations, installed_migration_sets
from stella.kit.roles import ensure_service_role
from stella.kit.settings import ServiceSettings
from stella.kit.startup import StartupError, load_settings, wait_for_postgres

log = logging.getLogger("stella.kit.migrate")


async def migrate_all(settings: ServiceSettings) -> list[str]:
    """Apply every installed service's migrations; returns one summary line per schema."""
    dsn = settings.direct_database_url
    variable = "STELLA_DATABASE_DIRECT_URL" if settings.database_direct_url else "STELLA_DATABASE_URL"
    configured = bool(settings.database_direct_url) or "database_url" in settings.model_fields_set
    await wait_for_postgres(dsn, variable, configured=configured, timeout_s=settings.startup_timeout_s)
    lines = []
    conn = await asyncpg.connect(dsn)
    try:
        for schema, folder in installed_migration_sets():
            applied = await apply_migrations(conn, schema, folder)
            lines.append(f"{schema}: applied {', '.join(applied)}" if applied else f"{schema}: up to date")
            role = settings.service_role(schema)
            if role is not None:
                # Each service's password is set where that service's settings are: STELLA_<SERVICE>_DATABASE_PASSWORD.
                password = os.environ.get(f"STELLA_{schema.upper()}_DATABASE_PASSWORD")
                await ensure_service_role(conn, schema, role, folder, password=password)
                lines.append(f"{schema}: role {role} granted")
    finally:
        await conn.close()
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run the migrations; returns the exit code."""
    del argv  # no options
    settings = load_settings("migrate", ServiceSettings)
    configure_logging("migrate", settings.log_level)
    try:
        lines = asyncio.run(migrate_all(settings))
    except StartupError as exc:
        log.error(str(exc), extra={"exit_code": exc.exit_code})
        return exc.exit_code
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
