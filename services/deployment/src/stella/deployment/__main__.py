"""Run the deployment service: ``python -m stella.deployment``."""

from __future__ import annotations

import sys

from stella.deployment.app import create_app
from stella.deployment.settings import Settings
from stella.kit.logs import configure_logging
from stella.kit.startup import load_settings, run_process


async def serve(settings: Settings) -> None:
    """Create the app and serve until interrupted."""
    await create_app(settings).run()


def main() -> None:
    """Build the settings once, wait for Postgres and NATS, and serve; exit with one line when it cannot start."""
    settings = load_settings("deployment", Settings)
    configure_logging("deployment", settings.log_level)
    sys.exit(run_process("deployment", settings, serve))


if __name__ == "__main__":
    main()
