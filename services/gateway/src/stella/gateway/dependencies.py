"""Litestar dependencies of the route handlers, and small helpers every controller uses."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final
from uuid import UUID

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec

from stella.gateway.auth import Identity
from stella.gateway.idempotency import STATE_KEY
from stella.gateway.pagination import page_params
from stella.gateway.problems import PROBLEM_MEDIA_TYPE, ProblemError
from stella.gateway.relay import CallContext, Claim, Relay
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import Problem
from stella.gateway.store import GatewayStore
from stella.gateway.tracing import trace_id

RUNTIME_STATE_KEY: Final[str] = "runtime"
"""Key of the :class:`~stella.gateway.runtime.Runtime` in the application's state."""

_PROBLEM_DESCRIPTIONS: Final[dict[int, str]] = {
    400: "Malformed request (VAL_...), with field errors",
    401: "Missing, invalid, revoked or expired token (AUTH_...)",
    403: "The token's roles do not grant the permission (PERM_DENIED)",
    404: "No such resource in the caller's tenant (RES_NOT_FOUND)",
    409: "Conflict with the current state, or the Idempotency-Key is in use (RES_...)",
    422: "A business rule refused the request, or the Idempotency-Key was used with another body",
    502: "A service answered in an unexpected way (SYS_BAD_GATEWAY)",
    503: "A service or the database is unavailable, or a command is still queued (SYS_...)",
}


def provide_runtime(state: State) -> Runtime:
    """The running gateway's :class:`Runtime`."""
    runtime: Runtime = state[RUNTIME_STATE_KEY]
    return runtime


def provide_identity(request: Request[Any, Any, Any]) -> Identity:
    """The authenticated caller (set by the token middleware)."""
    identity = request.scope.get("user")
    if not isinstance(identity, Identity):
        raise ProblemError(401, "AUTH_TOKEN_MISSING", "Send an API token: 'Authorization: Bearer <token>'.")
    return identity


def provide_call(request: Request[Any, Any, Any], identity: NamedDependency[Identity]) -> CallContext:
    """The envelope fields of the messages sent for this request."""
    claim = request.scope.get("state", {}).get(STATE_KEY)
    return CallContext(
        identity=identity,
        correlation_id=trace_id(request.scope),
        claim=claim if isinstance(claim, Claim) else None,
    )


def provide_store(runtime: NamedDependency[Runtime]) -> GatewayStore:
    """The gateway's store."""
    return runtime.get_store()


def provide_relay(runtime: NamedDependency[Runtime]) -> Relay:
    """The relay to services."""
    return runtime.get_relay()


def provide_now(runtime: NamedDependency[Runtime]) -> datetime:
    """The current UTC time from the gateway's clock."""
    return runtime.clock()


DEPENDENCIES: Final[dict[str, Provide]] = {
    "runtime": Provide(provide_runtime, sync_to_thread=False),
    "identity": Provide(provide_identity, sync_to_thread=False),
    "call": Provide(provide_call, sync_to_thread=False),
    "store": Provide(provide_store, sync_to_thread=False),
    "relay": Provide(provide_relay, sync_to_thread=False),
    "now": Provide(provide_now, sync_to_thread=False),
    "page": Provide(page_params, sync_to_thread=False),
}
"""Application-level dependencies every handler may ask for by name."""


def parse_id(value: str, name: str) -> UUID:
    """Parse a resource id from a path.

    A malformed id is a 400 with a field error; a well-formed id that names nothing is the caller's 404.

    Raises:
        ProblemError: 400 ``VAL_INVALID_ID``.
    """
    try:
        return UUID(value)
    except ValueError:
        raise ProblemError(
            400,
            "VAL_INVALID_ID",
            f"{name} must be a UUID.",
            errors=[{"loc": ["path", name], "msg": "not a valid UUID"}],
        ) from None


def location(runtime: Runtime, path: str) -> str:
    """The ``Location`` of a created resource: absolute when ``public_url`` is set, else the path."""
    base = runtime.settings.public_url
    return f"{base}{path}" if base else path


def problems(*statuses: int, authenticated: bool = True) -> dict[int, ResponseSpec]:
    """OpenAPI descriptions of the problem responses a route can answer (503 always, 401 when authenticated)."""
    wanted = sorted({503, *statuses} | ({401} if authenticated else set()))
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=_PROBLEM_DESCRIPTIONS.get(status, "Error"),
            media_type=PROBLEM_MEDIA_TYPE,
        )
        for status in wanted
    }


ID_SCHEMA: Final[dict[str, Any]] = {"format": "uuid"}
"""``schema_extra`` of path ids, which are taken as strings so a malformed one is a 400, not a 404."""
