"""Run the integration service: ``python -m stella.integration``."""

from __future__ import annotations

import sys

from stella.integration.app import create_app
from stella.integration.settings import Settings
from stella.kit.logs import configure_logging
from stella.kit.startup import load_settings, run_process


async def serve(settings: Settings) -> None:
    """Create the app and serve until interrupted."""
    await create_app(settings).run()


def main() -> None:
    """Build the settings once, wait for Postgres and NATS, and serve; exit with one line when it cannot start."""
    settings = load_settings("integration", Settings)
    configure_logging("integration", settings.log_level)
    sys.exit(run_process("integration", settings, serve))


if __name__ == "__main__":
    main()
