"""Run the release service: ``python -m stella.release``."""

from __future__ import annotations

import sys

from stella.kit.logs import configure_logging
from stella.kit.startup import load_settings, run_process
from stella.release.app import create_app
from stella.release.settings import Settings


async def serve(settings: Settings) -> None:
    """Create the app and serve until interrupted."""
    await create_app(settings).run()


def main() -> None:
    """Build the settings once, wait for Postgres and NATS, and serve; exit with one line when it cannot start."""
    settings = load_settings("release", Settings)
    configure_logging("release", settings.log_level)
    sys.exit(run_process("release", settings, serve))


if __name__ == "__main__":
    main()
