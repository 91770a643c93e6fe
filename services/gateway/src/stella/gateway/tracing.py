"""The trace id of a request: taken from ``traceparent`` or ``X-Request-Id`` when given, else new.

The trace id is a UUID written in its canonical form. It is the ``trace_id`` of every problem response, the
``X-Trace-Id`` response header, the ``correlation_id`` of the log records written while the request is
handled and of every command and query the gateway sends for it, so one id finds a request everywhere.
A W3C ``traceparent`` keeps its 128-bit trace id (only the spelling changes); an ``X-Request-Id`` that is a
UUID is used as is, any other value is mapped to a stable UUID (version 5) so retries of one request id
correlate.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any, Final

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from stella.kit import logs

log = logging.getLogger(__name__)

TRACE_HEADER: Final[str] = "X-Trace-Id"
"""Response header carrying the request's trace id."""

REQUEST_ID_HEADER: Final[str] = "X-Request-Id"
"""Request header a client or proxy may set to name the request."""

_STATE_KEY: Final[str] = "stella.trace_id"
_TRACEPARENT: Final = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_REQUEST_ID_NAMESPACE: Final = uuid.UUID("6d1f3c8e-4b0a-5c7e-9a21-3f5e8b7d2c40")
_MAX_REQUEST_ID = 200


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def derive_trace_id(traceparent: str | None, request_id: str | None) -> uuid.UUID:
    """Choose the trace id of a request from its headers.

    Args:
        traceparent: The W3C ``traceparent`` header, if any.
        request_id: The ``X-Request-Id`` header, if any.

    Returns:
        The trace id from ``traceparent`` when valid (and not all zeros), else from ``request_id``, else new.
    """
    if traceparent:
        match = _TRACEPARENT.match(traceparent.lower())
        if match and match.group(1) != "0" * 32:
            return uuid.UUID(hex=match.group(1))
    if request_id and len(request_id) <= _MAX_REQUEST_ID:
        try:
            return uuid.UUID(request_id)
        except ValueError:
            return uuid.uuid5(_REQUEST_ID_NAMESPACE, request_id)
    return uuid.uuid4()


def trace_id(scope: Scope) -> uuid.UUID:
    """Return the trace id of the request in ``scope``, deriving and remembering it on first use."""
    state: dict[str, Any] = scope.setdefault("state", {})
    known = state.get(_STATE_KEY)
    if known is None:
        known = derive_trace_id(_header(scope, b"traceparent"), _header(scope, b"x-request-id"))
        state[_STATE_KEY] = known
    return known


class TraceMiddleware:
    """Bind the request's trace id to the log context before anything else runs, and log the request.

    One record per request (``request handled``: method, path, status, milliseconds) carries the trace id
    and, once authenticated, the tenant, like every other record written while handling it.

    Args:
        app: The next ASGI application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Set the logging context of this request, run the rest of the stack, log the outcome."""
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        logs.correlation_id.set(str(trace_id(scope)))
        logs.tenant_id.set(None)
        started = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        except Exception as exc:
            # Rendered by the application's exception handler further out, as the problem it classifies it as
            # (imported here: the problems module reads this one's trace ids).
            from stella.gateway.problems import to_problem

            status = to_problem(exc).status
            raise
        finally:
            log.info(
                "request handled",
                extra={
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )


async def add_trace_header(message: Message, scope: Scope) -> None:
    """``before_send`` hook: put ``X-Trace-Id`` on every HTTP response, error responses included."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        headers[TRACE_HEADER] = str(trace_id(scope))
