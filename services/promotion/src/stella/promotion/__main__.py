"""Run the promotion service: ``python -m stella.promotion``."""

from __future__ import annotations

import sys

from stella.kit.logs import configure_logging
from stella.kit.startup import load_settings, run_process
from stella.promotion.app import create_app
from stella.promotion.settings import Settings


async def serve(settings: Settings) -> None:
    """Create the app and serve until interrupted."""
    await create_app(settings).run()


def main() -> None:
    """Build the settings once, wait for Postgres and NATS, and serve; exit with one line when it cannot start."""
    settings = load_settings("promotion", Settings)
    configure_logging("promotion", settings.log_level)
    sys.exit(run_process("promotion", settings, serve))


if __name__ == "__main__":
    main()
