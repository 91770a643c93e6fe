"""Sending one webhook delivery attempt: signed per Standard Webhooks, only to allowed addresses.

The request is a ``POST`` of the CloudEvent (``Content-Type: application/cloudevents+json``, the structured mode
of the CloudEvents HTTP binding) with the Standard Webhooks headers ``webhook-id`` (the event id, the same on
every retry), ``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` made by the
``standardwebhooks`` package with the webhook's secret).

Against server-side request forgery the URL is checked again at every attempt, and the connection is made only
to addresses the policy allows: host names are resolved by the kit's guarded resolver (:mod:`stella.kit.egress`), which drops every other
address, so a name that resolves to a public address when the webhook is saved and to an internal one later
(DNS rebinding) reaches nothing. Redirects are not followed (a 3xx is a failed attempt) and no proxy from the
environment is used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import aiohttp
from standardwebhooks import Webhook

from stella.contracts.public import MEDIA_TYPE
from stella.events.domain import AddressPolicy, is_success, parse_webhook_url
from stella.kit.egress import guarded_connector
from stella.kit.errors import ServiceError

USER_AGENT: Final[str] = "Stella-Webhooks/1.0"
"""``User-Agent`` of every delivery."""

EXCERPT_BYTES: Final[int] = 512
"""Bytes of a receiver's answer kept in the delivery log."""


@dataclass(frozen=True)
class Outcome:
    """What one attempt gave: the receiver's status, or why there was none."""

    status_code: int | None
    error: str | None
    duration_ms: float
    response_excerpt: str | None

    @property
    def ok(self) -> bool:
        """Whether the receiver accepted the event."""
        return self.status_code is not None and is_success(self.status_code)


def signed_headers(secret: str, event_id: str, payload: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of ``payload`` sent at ``at`` (an aware UTC time)."""
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, at, payload),
        "Content-Type": MEDIA_TYPE,
        "User-Agent": USER_AGENT,
    }


class Sender:
    """One HTTP client (a connection pool) for every delivery of the service.

    Args:
        policy: Which URLs and addresses deliveries may reach.
        timeout_s: Seconds one attempt may take.
        connections: Connections open at most (every receiver together).
    """

    def __init__(self, policy: AddressPolicy, *, timeout_s: float, connections: int) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the connection pool."""
        connector = guarded_connector(self.policy, purpose="a webhook", limit=self.connections, limit_per_host=8)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            trust_env=False,
            auto_decompress=False,
        )

    async def stop(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, url: str, payload: str, headers: dict[str, Any]) -> Outcome:
        """POST ``payload`` to ``url``; every failure is an outcome, never an exception."""
        if self._session is None:
            raise RuntimeError("the sender is not started")
        started = time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - started) * 1000, 1)

        try:
            parse_webhook_url(url, self.policy)  # the policy may have changed since the webhook was saved
            async with self._session.post(
                url, data=payload.encode(), headers=headers, allow_redirects=False
            ) as response:
                excerpt = (await response.content.read(EXCERPT_BYTES)).decode("utf-8", errors="replace")
                status = response.status
        except ServiceError as exc:
            return Outcome(None, f"{exc.code}: {exc.detail}", elapsed(), None)
        except aiohttp.ClientConnectorError as exc:
            return Outcome(None, f"cannot connect to {exc.host}:{exc.port}: {exc.os_error}"[:1000], elapsed(), None)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Outcome(None, f"{type(exc).__name__}: {exc}"[:1000], elapsed(), None)
        error = None if is_success(status) else f"the receiver answered HTTP {status}"
        return Outcome(status, error, elapsed(), excerpt or None)
