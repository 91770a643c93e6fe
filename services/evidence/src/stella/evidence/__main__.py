"""Run the evidence service, or rotate its signing key.

    python -m stella.evidence               serve until interrupted
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
from stella.evidence.settings import Settings
from stella.evidence.signing import KeyFile, rotate_key
from stella.kit.logs import configure_logging
from stella.kit.migrations import apply_migrations, quote_ident


async def rotate(settings: Settings) -> str:
    """Rotate the signing key in the key file and the database; returns a one-line summary."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await apply_migrations(conn, NAME, MIGRATIONS)
        await conn.execute(f"SET search_path TO {quote_ident(NAME)}, public")
        retired, key = await rotate_key(
            conn, KeyFile(settings.signing_key_path, settings.key_algorithm), datetime.now(UTC)
        )
    finally:
        await conn.close()
    summary = f"evidence signing key {key.key_ref} is active ({settings.signing_key_path})"
    if retired is not None:
        summary += f"; {retired} is retired and stays published for verification"
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stella-evidence", description="The Stella evidence service.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="serve until interrupted (the default)")
    commands.add_parser(
        "rotate-key",
        help="generate a new active signing key and retire the current one (which stays verifiable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Build the settings once, then serve or rotate the signing key."""
    args = _parser().parse_args(argv)
    settings = Settings()
    configure_logging(NAME, settings.log_level)
    if args.command == "rotate-key":
        print(asyncio.run(rotate(settings)))
        return
    asyncio.run(create_app(settings).run())


if __name__ == "__main__":
    main(sys.argv[1:])
