"""Command line of the gateway: ``serve`` (the default), ``bootstrap`` and ``create-token``.

Examples:
    python -m stella.gateway                      # serve on STELLA_GATEWAY_HOST:STELLA_GATEWAY_PORT
    python -m stella.gateway bootstrap --tenant acme --admin alice --token-file .stella/admin.token
    python -m stella.gateway create-token --tenant acme --principal ci-bot --expires-in-days 90
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import uvicorn

from stella.gateway.admin import AdminError, IssuedCredential, bootstrap, create_token, write_secret
from stella.gateway.app import MIGRATIONS, SCHEMA, create_app
from stella.gateway.settings import Settings
from stella.kit.db import create_pool
from stella.kit.logs import configure_logging
from stella.kit.metrics import serve_metrics
from stella.kit.migrations import apply_migrations, prepare_schema, quote_ident
from stella.kit.startup import StartupError, freeze_startup_heap, load_settings, run_process


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stella-gateway", description="The Stella public HTTP API.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the HTTP API (the default)")

    boot = commands.add_parser(
        "bootstrap", help="create a tenant, its tenant admin and an API token, unless the tenant exists"
    )
    boot.add_argument("--tenant", required=True, help="tenant name")
    boot.add_argument("--admin", required=True, help="name of the tenant admin principal")
    boot.add_argument("--token-file", type=Path, help="also write the token to this file (mode 0600)")

    platform = commands.add_parser(
        "bootstrap-platform",
        help="create the platform (operator) tenant and a platform admin who manages tenants, unless it exists",
    )
    platform.add_argument("--tenant", default="platform", help="the platform tenant's name (default: platform)")
    platform.add_argument("--admin", required=True, help="name of the platform admin principal")
    platform.add_argument("--token-file", type=Path, help="also write the token to this file (mode 0600)")

    token = commands.add_parser("create-token", help="issue an API token for an existing principal")
    token.add_argument("--tenant", required=True, help="tenant name")
    token.add_argument("--principal", required=True, help="principal name")
    token.add_argument("--name", default="", help="what the token is for")
    token.add_argument("--expires-in-days", type=float, help="lifetime in days (default: no expiry)")
    token.add_argument("--token-file", type=Path, help="also write the token to this file (mode 0600)")
    return parser


async def _serve(settings: Settings) -> None:
    """Serve the API with uvicorn (one process) on the settings' host and port until a signal arrives.

    The schema and the pool are prepared before uvicorn starts, so a configuration error ends the process
    with the one line of :func:`~stella.kit.startup.run_process` rather than a failed ASGI lifespan.
    """
    if settings.metrics_port is not None:
        serve_metrics(settings.metrics_port)
    await prepare_schema(
        settings.direct_database_url
        if settings.migrate_on_start
        else settings.as_service(settings.direct_database_url, SCHEMA),
        SCHEMA,
        MIGRATIONS,
        migrate=settings.migrate_on_start,
        timeout_s=settings.startup_timeout_s,
        service_role=settings.service_role(SCHEMA),
        role_password=settings.role_password,
    )
    pool = await create_pool(
        settings.as_service(settings.database_url, SCHEMA),
        SCHEMA,
        max_size=settings.db_pool_size,
        pool_mode=settings.database_pool_mode,
    )
    try:
        config = uvicorn.Config(
            create_app(settings, overrides={"pool": pool}),
            host=settings.host,
            port=settings.port,
            log_config=None,
            lifespan="on",
            loop=settings.event_loop,  # informative: serve() runs on the loop run_process started
            proxy_headers=True,
            server_header=False,
        )
        server = uvicorn.Server(config)
        freeze_startup_heap()  # the application is built; its start-up adds little
        await server.serve()
        if not server.started:
            raise StartupError(f"the gateway did not start serving on {settings.host}:{settings.port}")
    finally:
        await pool.close()


def serve(settings: Settings) -> int:
    """Wait for Postgres and NATS, then serve; returns the exit code (one log line when it cannot start)."""
    configure_logging("gateway", settings.log_level)
    return run_process("gateway", settings, _serve)


async def _connect(settings: Settings) -> asyncpg.Connection:
    conn = await asyncpg.connect(
        settings.direct_database_url, server_settings={"search_path": f"{quote_ident(SCHEMA)},public"}
    )
    await apply_migrations(conn, SCHEMA, MIGRATIONS)
    return conn


async def _bootstrap(settings: Settings, args: argparse.Namespace) -> IssuedCredential | None:
    conn = await _connect(settings)
    try:
        platform = args.command == "bootstrap-platform"
        return await bootstrap(conn, args.tenant, args.admin, datetime.now(UTC), platform=platform)
    finally:
        await conn.close()


async def _create_token(settings: Settings, args: argparse.Namespace) -> IssuedCredential:
    now = datetime.now(UTC)
    expires_at = now + timedelta(days=args.expires_in_days) if args.expires_in_days else None
    conn = await _connect(settings)
    try:
        return await create_token(conn, args.tenant, args.principal, now, name=args.name, expires_at=expires_at)
    finally:
        await conn.close()


def _hand_out(credential: IssuedCredential, token_file: Path | None) -> None:
    if token_file is not None:
        write_secret(token_file, credential.token)
        print(f"token written to {token_file}", file=sys.stderr)
    # The token alone on standard output, so scripts can capture it.
    print(credential.token)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway's command line; returns the process exit code.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.
    """
    args = _parser().parse_args(argv)
    settings = load_settings("gateway", Settings)
    command = args.command or "serve"
    if command == "serve":
        return serve(settings)
    try:
        if command in ("bootstrap", "bootstrap-platform"):
            credential = asyncio.run(_bootstrap(settings, args))
            if credential is None:
                what = f"tenant {args.tenant!r}" + (" or a platform tenant" if command == "bootstrap-platform" else "")
                print(f"{what} already exists; nothing changed", file=sys.stderr)
                return 0
            print(
                f"created tenant {args.tenant!r} ({credential.tenant_id}) and tenant admin {args.admin!r} "
                f"({credential.principal_id})",
                file=sys.stderr,
            )
        else:
            credential = asyncio.run(_create_token(settings, args))
            print(f"created token {credential.token_id} for {args.principal!r}", file=sys.stderr)
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _hand_out(credential, args.token_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
