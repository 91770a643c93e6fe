"""The one place where every error becomes an RFC 9457 ``application/problem+json`` response.

Every problem has ``type``, ``title``, ``status``, ``detail``, ``instance`` (the request path), a stable
``code`` (prefixes ``AUTH_``, ``PERM_``, ``VAL_``, ``RES_``, ``SYS_`` and the services' own) and the request's
``trace_id``; field errors add ``errors: [{"loc": [...], "msg": "..."}]``. A fault inside the gateway is a
500 ``SYS_INTERNAL`` whose body says nothing about the fault; the log has it, under the same trace id.

A dependency that is unavailable is never a 500: the gateway's own database (token lookups, idempotency
keys), NATS, or a service that does not answer make a 503 with ``Retry-After`` and a stable code
(``SYS_DATABASE_UNAVAILABLE``, ``SYS_UNAVAILABLE``, or the service's own such as ``SYS_PENDING``), so a client
knows to retry. Which errors count as unavailable is the kit's rule (:mod:`stella.kit.faults`).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Final

import asyncpg
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from pydantic import ValidationError

from stella.contracts.envelope import ErrorDetail
from stella.gateway.tracing import trace_id
from stella.kit.errors import error_detail, is_reportable
from stella.kit.faults import is_permanent, is_transient, refused

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE: Final[str] = "application/problem+json"
"""Media type of every error response."""

PROBLEM_TYPE_PREFIX: Final[str] = "urn:stella:problem:"
"""Problem ``type`` URIs are this prefix and the lower-case code, e.g. ``urn:stella:problem:res_not_found``."""

INTERNAL_DETAIL: Final[str] = "The request could not be handled; report the trace_id to the operators."
"""The only detail a client gets for a fault."""

RETRY_AFTER_S: Final[int] = 1
"""``Retry-After`` (seconds) of a 503 that names none: dependencies come back on their own, so retry soon."""

# Codes for statuses that have no more specific cause.
_CODE_BY_STATUS: Final[dict[int, str]] = {
    400: "VAL_INVALID_REQUEST",
    401: "AUTH_UNAUTHENTICATED",
    403: "PERM_DENIED",
    404: "RES_NOT_FOUND",
    405: "VAL_METHOD_NOT_ALLOWED",
    406: "VAL_NOT_ACCEPTABLE",
    409: "RES_CONFLICT",
    413: "VAL_BODY_TOO_LARGE",
    415: "VAL_UNSUPPORTED_MEDIA_TYPE",
    422: "VAL_UNPROCESSABLE",
    429: "SYS_RATE_LIMITED",
    500: "SYS_INTERNAL",
    502: "SYS_BAD_GATEWAY",
    503: "SYS_UNAVAILABLE",
    504: "SYS_TIMEOUT",
}


class ProblemError(Exception):
    """An error the client must see, raised anywhere in the gateway and rendered by :func:`problem_response`.

    Args:
        status: HTTP status.
        code: Stable machine-readable code.
        detail: What went wrong this time, for a person.
        title: Short summary that does not vary between occurrences; the status phrase when None.
        errors: Field errors ``[{"loc": [...], "msg": "..."}]``.
        headers: Extra response headers (``WWW-Authenticate``, ``Retry-After``...).
        extensions: Extra members of the problem object.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str = "",
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or _phrase(status)
        self.errors = errors or []
        self.headers = headers or {}
        self.extensions = extensions or {}

    @classmethod
    def from_error_detail(cls, error: ErrorDetail) -> ProblemError:
        """Turn a service's error reply into a problem, keeping its status and code.

        A service fault (5xx other than 503) keeps its code but not its detail: that detail can carry
        exception text from inside the service.
        """
        status = error.status if 400 <= error.status <= 599 else 502
        if status >= 500 and status != 503:
            log.error("service reported a fault", extra={"code": error.code, "detail": error.detail})
            return cls(status, error.code, INTERNAL_DETAIL, title=_phrase(status))
        return cls(status, error.code, error.detail, title=error.title, errors=list(error.errors))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(request: Request[Any, Any, Any], error: ProblemError) -> dict[str, Any]:
    """The problem object of ``error`` for ``request``."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + error.code.lower(),
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "instance": request.url.path,
        "code": error.code,
        "trace_id": str(trace_id(request.scope)),
    }
    if error.errors:
        body["errors"] = error.errors
    for key, value in error.extensions.items():
        body.setdefault(key, value)
    return body


def field_errors(extra: Any) -> list[dict[str, Any]]:
    """Convert Litestar's validation ``extra`` (``[{"key", "message", "source"}]``) into field errors."""
    if not isinstance(extra, list):
        return []
    errors: list[dict[str, Any]] = []
    for item in extra:
        if not isinstance(item, dict):
            continue
        source = item.get("source") or "body"
        key = str(item.get("key") or "")
        loc: list[Any] = [source]
        for part in key.split(".") if key else []:
            loc.append(int(part) if part.isdigit() else part)
        errors.append({"loc": loc, "msg": str(item.get("message", "invalid value"))})
    return errors


def pydantic_errors(exc: ValidationError, source: str = "body") -> list[dict[str, Any]]:
    """Convert a pydantic ``ValidationError`` into field errors under ``source``."""
    return [{"loc": [source, *err["loc"]], "msg": err["msg"]} for err in exc.errors(include_url=False)]


def to_problem(exc: Exception) -> ProblemError:
    """Classify any exception as the problem the client sees.

    Args:
        exc: What was raised while handling the request.

    Returns:
        The problem; faults become ``SYS_INTERNAL`` (logged by :func:`problem_response`).
    """
    if isinstance(exc, ProblemError):
        return exc
    if is_reportable(exc):
        return ProblemError.from_error_detail(error_detail(exc))
    if isinstance(exc, ValidationException):
        return ProblemError(
            400,
            "VAL_INVALID_REQUEST",
            _client_detail(exc) or "The request is not valid.",
            errors=field_errors(exc.extra),
        )
    if isinstance(exc, NotAuthorizedException):
        return ProblemError(
            401, "AUTH_UNAUTHENTICATED", _client_detail(exc), headers={"WWW-Authenticate": 'Bearer realm="stella"'}
        )
    if isinstance(exc, PermissionDeniedException):
        return ProblemError(403, "PERM_DENIED", _client_detail(exc))
    if isinstance(exc, NotFoundException):
        return ProblemError(404, "RES_NOT_FOUND", "No resource at this path.")
    if isinstance(exc, MethodNotAllowedException):
        return ProblemError(405, "VAL_METHOD_NOT_ALLOWED", "This method is not allowed here.", headers=exc.headers)
    if isinstance(exc, HTTPException):
        status = exc.status_code
        code = _CODE_BY_STATUS.get(status, "VAL_INVALID_REQUEST" if status < 500 else "SYS_INTERNAL")
        detail = _client_detail(exc) if status < 500 else INTERNAL_DETAIL
        return ProblemError(status, code, detail, headers=exc.headers)
    if is_transient(exc):
        return _unavailable(exc)
    if is_permanent(exc):
        return ProblemError.from_error_detail(error_detail(refused(exc)))
    return ProblemError(500, "SYS_INTERNAL", INTERNAL_DETAIL)


def _unavailable(exc: BaseException) -> ProblemError:
    """The 503 of a dependency that is away (the kit's transient faults)."""
    database = asyncpg.PostgresError | asyncpg.InterfaceError | asyncpg.exceptions.InternalClientError | OSError
    if isinstance(exc, database) and not isinstance(exc, TimeoutError):
        return ProblemError(503, "SYS_DATABASE_UNAVAILABLE", "The gateway's database does not answer; retry later.")
    return ProblemError(503, "SYS_UNAVAILABLE", "A dependency of the gateway does not answer; retry later.")


def _client_detail(exc: HTTPException) -> str:
    # Litestar's default detail is the status phrase; a phrase adds nothing to the title.
    detail = exc.detail or ""
    return "" if detail == _phrase(exc.status_code) else detail


def problem_response(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Litestar exception handler for every exception: render it as problem+json.

    Args:
        request: The request being handled.
        exc: The exception raised.

    Returns:
        The problem response, with the exception's headers.
    """
    problem = to_problem(exc)
    extra = {"method": request.method, "path": request.url.path, "code": problem.code}
    if problem.code == "SYS_INTERNAL":
        log.error("request failed", exc_info=exc, extra=extra)
    elif problem.status == 503 and not isinstance(exc, ProblemError):
        log.warning("a dependency is unavailable: %s: %s", type(exc).__name__, exc, extra=extra)
    headers = dict(problem.headers)
    if problem.status == 503:
        headers.setdefault("Retry-After", str(RETRY_AFTER_S))
    return Response(
        content=problem_body(request, problem),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


__all__ = [
    "INTERNAL_DETAIL",
    "PROBLEM_MEDIA_TYPE",
    "ProblemError",
    "field_errors",
    "problem_body",
    "problem_response",
    "pydantic_errors",
    "to_problem",
]
