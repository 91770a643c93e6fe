"""A container health check: ``python -m stella.kit.healthcheck [URL]`` exits 0 when the URL answers 200.

The images have no curl; this is their ``HEALTHCHECK``. Without a URL it asks the headless service's
readiness probe, ``http://127.0.0.1:$STELLA_HEALTH_PORT/readyz`` (port 8081 when unset). It imports nothing
but the standard library, so it costs a few milliseconds.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    """Ask the URL; print one line and return 0 on a 200 answer, 1 otherwise."""
    url = argv[0] if argv else f"http://127.0.0.1:{os.environ.get('STELLA_HEALTH_PORT') or 8081}/readyz"
    if not url.startswith("http://"):
        print(f"healthcheck: {url!r} is not an http:// URL", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (a local probe URL)
            print(f"{url}: {response.status}")
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read(512).decode(errors='replace')}")
    except OSError as exc:
        print(f"{url}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
