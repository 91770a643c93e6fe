"""The promotion context's typed domain errors: each has a stable code and an HTTP status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stella.kit.errors import ServiceError


class DomainError(ServiceError):
    """Base of every error the promotion domain raises.

    The I/O layer maps an instance to an RFC 9457 problem document without knowing the concrete class:
    ``code`` is stable and machine-readable, ``status`` is the HTTP status it maps to (400 validation,
    404 not found, 409 state conflict, 422 business rule), ``title`` never changes between occurrences and
    ``detail`` explains this occurrence.

    Attributes:
        code: Stable error code with a context prefix (``PROM_``, ``ENV_``, ``GATE_``).
        status: HTTP-like status the error maps to.
        title: Short summary of the error kind.
        detail: Human explanation of this occurrence.
        errors: Field-level problems, each ``{"loc": [...], "msg": "..."}``.
    """

    code: str = "PROM_ERROR"
    status: int = 422
    title: str = "Promotion rule violated"

    def __init__(self, detail: str, *, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(detail, errors=[dict(error) for error in errors])

    def to_dict(self) -> dict[str, Any]:
        """Return the error as the fields of ``stella.contracts.ErrorDetail``."""
        return self.as_problem()


class InvalidInput(DomainError):
    """The input is malformed (maps to 400)."""

    code = "PROM_INVALID_INPUT"
    status = 400
    title = "Invalid input"


class NotFound(DomainError):
    """A referenced object does not exist (maps to 404)."""

    code = "PROM_NOT_FOUND"
    status = 404
    title = "Not found"


class StateConflict(DomainError):
    """The object is not in a state that allows the operation (maps to 409)."""

    code = "PROM_STATE_CONFLICT"
    status = 409
    title = "State conflict"


class RuleViolation(DomainError):
    """The input is well formed but a business rule refuses it (maps to 422)."""

    code = "PROM_RULE_VIOLATION"
    status = 422
    title = "Business rule violated"


class InvalidTimestamp(InvalidInput):
    """A timestamp has no time zone; every instant in the domain is an aware datetime."""

    code = "PROM_TIMESTAMP_INVALID"
    title = "Timestamp must carry a time zone"


class CanonicalizationFailed(InvalidInput):
    """A value cannot be written as canonical JSON (naive datetime, NaN, unsupported type...)."""

    code = "PROM_CANONICAL_JSON_INVALID"
    title = "Value cannot be canonicalised"


class InvalidEnvironment(InvalidInput):
    """An environment definition breaks a validation rule; ``errors`` lists every problem found."""

    code = "ENV_VALIDATION_FAILED"
    title = "Invalid environment"


class EnvironmentNotFound(NotFound):
    """The environment does not exist for this tenant."""

    code = "ENV_NOT_FOUND"
    title = "Environment not found"


class InvalidPromotionRequest(InvalidInput):
    """A promotion request is malformed (empty requester, release of another tenant...)."""

    code = "PROM_REQUEST_INVALID"
    title = "Invalid promotion request"


class InvalidApprovalSummary(InvalidInput):
    """An approval summary has negative or non-integer counts."""

    code = "PROM_APPROVAL_SUMMARY_INVALID"
    title = "Invalid approval summary"


class ReleaseNotReady(RuleViolation):
    """The release is a draft or deprecated; only ready (or already deployed) releases are promoted."""

    code = "PROM_RELEASE_NOT_READY"
    title = "Release is not ready"


class PromotionOrderViolation(RuleViolation):
    """The target environment is not the next one after an environment the release reached."""

    code = "PROM_ORDER_VIOLATION"
    title = "Environments must be promoted in order"


class SourceEnvironmentMismatch(RuleViolation):
    """The named source environment is not the environment right before the target."""

    code = "PROM_SOURCE_ENV_MISMATCH"
    title = "Source environment does not precede the target"


class ReleaseBlocked(RuleViolation):
    """The release is blocked for the target environment (or one before it) and cannot progress."""

    code = "PROM_RELEASE_BLOCKED"
    title = "Release is blocked for this environment"


class PromotionAlreadyActive(StateConflict):
    """The release already has an unfinished promotion to the same environment."""

    code = "PROM_ALREADY_ACTIVE"
    title = "Promotion already in progress"


class InvalidTransition(StateConflict):
    """The promotion's current state does not allow the requested transition."""

    code = "PROM_INVALID_TRANSITION"
    title = "Transition not allowed"


class PromotionNotPending(InvalidTransition):
    """The operation needs the promotion to wait on gates or approvals, and it does not."""

    code = "PROM_NOT_PENDING"
    title = "Promotion is not pending"


class PromotionNotApproved(InvalidTransition):
    """Deployment can only start from ``approved``."""

    code = "PROM_NOT_APPROVED"
    title = "Promotion is not approved"


class PromotionAlreadyTerminal(InvalidTransition):
    """The promotion reached a final state; nothing moves it any more."""

    code = "PROM_ALREADY_TERMINAL"
    title = "Promotion is already finished"


class CancelNotAllowed(InvalidTransition):
    """A promotion can only be cancelled before its deployment starts."""

    code = "PROM_CANCEL_NOT_ALLOWED"
    title = "Promotion can no longer be cancelled"


class DeploymentJobMismatch(StateConflict):
    """A job outcome names a deployment job that is not the promotion's."""

    code = "PROM_JOB_MISMATCH"
    title = "Deployment job does not belong to this promotion"


class EnvironmentBusy(StateConflict):
    """Another promotion is already deploying to the environment."""

    code = "PROM_ENVIRONMENT_BUSY"
    title = "Environment is busy deploying"


class NotNextInQueue(StateConflict):
    """An earlier approved promotion of the environment must deploy first (FIFO by approval time)."""

    code = "PROM_NOT_NEXT_IN_QUEUE"
    title = "Promotion is not next in the deployment queue"


class ApprovalTimeoutNotReached(StateConflict):
    """The approval deadline has not passed yet."""

    code = "PROM_APPROVAL_TIMEOUT_NOT_REACHED"
    title = "Approval deadline not reached"


class DecisionInconclusive(StateConflict):
    """A gate decision that should be final (deploy-start re-check) came back ``pending``."""

    code = "PROM_DECISION_PENDING"
    title = "Gate decision is not conclusive"
