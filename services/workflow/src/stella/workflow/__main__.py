"""Run the workflow service: ``python -m stella.workflow``."""

from __future__ import annotations

import sys

from stella.kit.logs import configure_logging
from stella.kit.startup import load_settings, run_process
from stella.workflow.app import create_app
from stella.workflow.settings import Settings


async def serve(settings: Settings) -> None:
    """Create the app and serve until interrupted."""
    await create_app(settings).run()


def main() -> None:
    """Build the settings once, wait for Postgres and NATS, and serve; exit with one line when it cannot start."""
    settings = load_settings("workflow", Settings)
    configure_logging("workflow", settings.log_level)
    sys.exit(run_process("workflow", settings, serve))


if __name__ == "__main__":
    main()
