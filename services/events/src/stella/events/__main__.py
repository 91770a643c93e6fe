"""Run the events service: ``python -m stella.events``."""

from __future__ import annotations

import asyncio

from stella.events.app import create_app
from stella.events.settings import Settings
from stella.kit.logs import configure_logging


def main() -> None:
    """Build the settings once, create the app and serve until interrupted."""
    settings = Settings()
    configure_logging("events", settings.log_level)
    asyncio.run(create_app(settings).run())


if __name__ == "__main__":
    main()
