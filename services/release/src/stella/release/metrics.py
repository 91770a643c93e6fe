"""The release service's business metrics (reference §9), counted from the events it publishes."""

from __future__ import annotations

from prometheus_client import Counter

from stella.contracts.release import RELEASE_CREATED
from stella.kit.service import ServiceRuntime

releases_total = Counter("stella_releases_total", "Releases created.")


def observe(runtime: ServiceRuntime) -> None:
    """Count each published release_created event once."""
    runtime.observe(RELEASE_CREATED, lambda _payload: releases_total.inc())
