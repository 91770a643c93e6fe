"""Run the promotion service: ``python -m stella.promotion``."""

from __future__ import annotations

import asyncio

from stella.kit.logs import configure_logging
from stella.promotion.app import create_app
from stella.promotion.settings import Settings


def main() -> None:
    """Build the settings once, create the app and serve until interrupted."""
    settings = Settings()
    configure_logging("promotion", settings.log_level)
    asyncio.run(create_app(settings).run())


if __name__ == "__main__":
    main()
