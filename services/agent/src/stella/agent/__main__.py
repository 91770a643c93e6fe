"""Run the agent: ``python -m stella.agent`` or ``stella-agent`` (``--help`` lists the flags)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from stella.agent.app import serve
from stella.agent.settings import load_settings

EXIT_CONFIG = 2
"""A missing or invalid setting."""


def main(argv: Sequence[str] | None = None) -> None:
    """Read flags and ``STELLA_AGENT_*`` variables, then serve; exit with one line when a setting is wrong."""
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"stella-agent: invalid settings: {problems}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    sys.exit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
