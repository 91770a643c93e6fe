"""HTTP probes of a headless service: ``/healthz``, ``/readyz`` and ``/metrics`` on ``STELLA_HEALTH_PORT``.

Container runtimes and orchestrators ask over HTTP (a Kubernetes probe, a Docker ``HEALTHCHECK`` through
:mod:`stella.kit.healthcheck`), so a service that otherwise only speaks NATS answers a few GETs:

- ``/healthz``: 200 while the event loop answers (liveness: restart the process when it stops answering);
- ``/readyz``: 200 when the database and NATS answer, else 503 with the failing checks (readiness);
- ``/metrics``: the Prometheus text format.

A tiny HTTP/1.0 server on asyncio: one request per connection, bounded request size, no keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

_MAX_REQUEST_BYTES = 8192
_READ_TIMEOUT_S = 5.0

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]
"""Returns ``{"status": "ok" | "failing", "checks": {...}}``."""


class ProbeServer:
    """Serves the probes of one process."""

    def __init__(self, health: HealthCheck, *, host: str = "0.0.0.0", port: int = 8081) -> None:
        self._health = health
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0 picks a free one, readable from :attr:`port` afterwards)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_REQUEST_BYTES:
                raise ValueError("request too large")
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            status, content_type, body = await self._answer(method, path.split("?", 1)[0])
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, UnicodeError):
            status, content_type, body = 400, "text/plain", b"bad request\n"
        try:
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable"
            )
            writer.write(
                f"HTTP/1.0 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/healthz":
            return 200, "application/json", b'{"status":"ok"}'
        if path == "/readyz":
            try:
                report = await asyncio.wait_for(self._health(), timeout=4.0)
            except Exception as exc:  # a check that fails to run means "not ready"
                report = {"status": "failing", "error": type(exc).__name__}
            status = 200 if report.get("status") == "ok" else 503
            return status, "application/json", json.dumps(report).encode()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest()
        return 404, "text/plain", b"not found\n"
