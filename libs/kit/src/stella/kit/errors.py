"""Errors a service reports to its caller as a reply (not as a crash)."""

from __future__ import annotations

from typing import Any

from stella.contracts.envelope import ErrorDetail


class ServiceError(Exception):
    """A business or validation outcome the caller must see, with a stable code and an HTTP status.

    Domain modules may define their own error classes; any exception with ``code`` (str) and ``status`` (int)
    attributes is reported the same way (see :func:`error_detail`).

    ``code``, ``status`` and ``title`` are instance attributes: a subclass sets its defaults as class
    attributes (plain annotations, not ``ClassVar``) and one instance may carry its own through the
    constructor.
    """

    code: str = "SYS_ERROR"
    status: int = 500
    title: str = "Error"

    def __init__(
        self,
        detail: str = "",
        *,
        code: str | None = None,
        status: int | None = None,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        self.errors = errors or []

    def as_problem(self) -> dict[str, Any]:
        """The error as problem-details fields (code, status, title, detail, errors)."""
        return {
            "code": self.code,
            "status": self.status,
            "title": self.title,
            "detail": self.detail,
            "errors": list(self.errors),
        }


class NotFound(ServiceError):
    """The resource does not exist for this tenant (another tenant's resource looks the same)."""

    code = "RES_NOT_FOUND"
    status = 404
    title = "Resource not found"


class Conflict(ServiceError):
    """The request conflicts with the current state (a duplicate name, a frozen release)."""

    code = "RES_CONFLICT"
    status = 409
    title = "Conflict with the current state"


class Unprocessable(ServiceError):
    """The request is well formed but breaks a business rule."""

    code = "VAL_UNPROCESSABLE"
    status = 422
    title = "Business rule violated"


class BadRequest(ServiceError):
    """The request is malformed."""

    code = "VAL_INVALID"
    status = 400
    title = "Invalid request"


class Unavailable(ServiceError):
    """A dependency (a registry, another service) did not answer; nothing was changed."""

    code = "SYS_UNAVAILABLE"
    status = 503
    title = "Dependency unavailable"


def is_reportable(exc: BaseException) -> bool:
    """Whether ``exc`` is a business outcome (reported to the caller) rather than a fault (retried)."""
    return isinstance(exc, ServiceError) or (
        isinstance(getattr(exc, "code", None), str) and isinstance(getattr(exc, "status", None), int)
    )


def error_detail(exc: BaseException) -> ErrorDetail:
    """Turn a reportable exception into the wire error shape."""
    detail = getattr(exc, "detail", None) or str(exc)
    return ErrorDetail(
        code=exc.code,  # type: ignore[attr-defined]
        status=exc.status,  # type: ignore[attr-defined]
        title=getattr(exc, "title", None) or type(exc).__name__,
        detail=str(detail),
        errors=list(getattr(exc, "errors", None) or []),
    )


class TransientFault(Exception):
    """Raise (or subclass) when work cannot be done now for a reason that will pass: a service that did not
    answer, a dependency that is down. The message is retried without spending its poison budget
    (see :mod:`stella.kit.faults`). Kept here, free of I/O imports, so pure domain modules may raise it."""
