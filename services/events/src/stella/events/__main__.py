"""Run the events service: ``python -m stella.events``."""

from __future__ import annotations

from stella.events.app import create_app
from stella.events.settings import Settings
from stella.kit.logs import configure_logging
from stella.kit.startup import run_loop


def main() -> None:
    """Build the settings once, create the app and serve until interrupted."""
    settings = Settings()
    configure_logging("events", settings.log_level)
    run_loop(create_app(settings).run(), settings.event_loop)


if __name__ == "__main__":
    main()
