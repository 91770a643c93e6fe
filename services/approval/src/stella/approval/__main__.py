"""Run the approval service: ``python -m stella.approval``."""

from __future__ import annotations

import asyncio

from stella.approval.app import create_app
from stella.approval.settings import Settings
from stella.kit.logs import configure_logging


def main() -> None:
    """Build the settings once, create the app and serve until interrupted."""
    settings = Settings()
    configure_logging("approval", settings.log_level)
    asyncio.run(create_app(settings).run())


if __name__ == "__main__":
    main()
