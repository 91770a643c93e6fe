"""Run the evidence service, or rotate its signing key.

    python -m stella.evidence               serve until interrupted
    python -m stella.evidence init-key      create the signing key file when it does not exist (needs no database)
    python -m stella.evidence rotate-key    generate a new active signing key and retire the current one

A retired key's public key stays published (``GET /api/v1/evidence/keys``) and keeps verifying the packets
it signed; running services switch to the new key with the rotation's commit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from stella.evidence.app import MIGRATIONS, NAME, create_app
from stella.evidence.keys import KeyFormatError
from stella.evidence.settings import Settings
from stella.evidence.signing import KeyFile, rotate_key
from stella.kit.db import init_connection
from stella.kit.logs import configure_logging
from stella.kit.migrations import apply_migrations, quote_ident
from stella.kit.startup import EX_CONFIG, ConfigurationError, load_settings, run_process


async def rotate(settings: Settings) -> str:
    """Rotate the signing key in the key file and the database; returns a one-line summary."""
    conn = await asyncpg.connect(settings.direct_database_url)
    try:
        await init_connection(conn)
        await apply_migrations(conn, NAME, MIGRATIONS)
        await conn.execute(f"SET search_path TO {quote_ident(NAME)}, public")
        retired, key = await rotate_key(conn, settings.key_source(), datetime.now(UTC))
    finally:
        await conn.close()
    summary = f"evidence signing key {key.key_ref} is active ({settings.key_source().describe})"
    if retired is not None:
        summary += f"; {retired} is retired and stays published for verification"
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stella-evidence", description="The Stella evidence service.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="serve until interrupted (the default)")
    commands.add_parser(
        "init-key",
        help="create the signing key file when it does not exist (the first start registers it); print its key id",
    )
    commands.add_parser(
        "rotate-key",
        help="generate a new active signing key and retire the current one (which stays verifiable)",
    )
    return parser


def init_key(settings: Settings) -> int:
    """Create the key file unless it exists; print its key reference. Returns the exit code."""
    try:
        key_file = settings.key_source()
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EX_CONFIG
    existed = not isinstance(key_file, KeyFile) or key_file.path.exists()
    try:
        key = key_file.load_or_create()
    except (OSError, KeyFormatError, ConfigurationError) as exc:
        print(f"error: cannot create or read the evidence signing key at {key_file.describe}: {exc}", file=sys.stderr)
        return EX_CONFIG
    state = "exists" if existed else "created"
    print(f"evidence signing key {key.key_ref} {state} at {key_file.describe}")
    return 0


async def serve(settings: Settings) -> None:
    """Create the app and serve until interrupted."""
    await create_app(settings).run()


def main(argv: Sequence[str] | None = None) -> None:
    """Build the settings once, then serve, create or rotate the signing key."""
    args = _parser().parse_args(argv)
    settings = load_settings(NAME, Settings)
    configure_logging(NAME, settings.log_level)
    if args.command == "init-key":
        sys.exit(init_key(settings))
    if args.command == "rotate-key":
        try:
            print(asyncio.run(rotate(settings)))
        except ConfigurationError as exc:  # a key in a token is rotated with the token's tools
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EX_CONFIG)
        return
    sys.exit(run_process(NAME, settings, serve))


if __name__ == "__main__":
    main(sys.argv[1:])
