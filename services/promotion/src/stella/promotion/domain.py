"""The promotion context's pure domain: typed errors, environments and the Promotion state machine.

Nothing here performs I/O, reads a clock or makes ids: ``now`` and every id are arguments. A transition is a
method that checks the current state, moves the aggregate, and returns the domain events it caused; the
handler layer saves the aggregate and writes those events to the outbox in one transaction.

Lifecycle (product reference section 3)::

    (new) --request--> pending_gate --gates allow, approvals needed--> pending_approval --N approvals--> approved
    pending_gate --gates allow, no approvals--> approved
    pending_gate --gates deny (or error)--> rejected          (a closed time window on a "hold" env stays pending_gate)
    pending_approval --rejection or timeout--> rejected
    approved --deploy-start re-check allows--> deploying --job succeeded--> deployed
    approved --re-check denies--> pending_gate (hold until next_open) or rejected
    deploying --job failed--> failed [--rollback succeeded--> rolled_back]
    pending_gate | pending_approval | approved --cancel--> cancelled

The module also holds the JSON canonicalisation every hash in this context uses (decision ``inputs_hash``,
``policy_digest``), so that the modules built on top of it share a single definition.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import Enum, StrEnum
from typing import Any, ClassVar, Final, cast
from uuid import UUID

from pydantic import ValidationError

from stella.contracts.canonical import CanonicalizationError, canonicalize
from stella.contracts.deployment import StrategySpec
from stella.kit.errors import ServiceError

# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Time and canonical JSON
# --------------------------------------------------------------------------------------------------


def require_aware(value: datetime, what: str = "timestamp") -> datetime:
    """Return ``value`` converted to UTC, refusing naive datetimes.

    Args:
        value: The instant to check.
        what: Name used in the error message.

    Returns:
        The same instant with ``tzinfo=UTC``.

    Raises:
        InvalidTimestamp: ``value`` is not a datetime or has no time zone.
    """
    if not isinstance(value, datetime):
        raise InvalidTimestamp(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidTimestamp(f"{what} {value.isoformat()} has no time zone; give an aware datetime")
    return value.astimezone(UTC)


def format_utc(value: datetime) -> str:
    """Format an aware datetime as UTC ISO-8601 with a ``Z`` suffix (the canonical timestamp form)."""
    return require_aware(value).isoformat().replace("+00:00", "Z")


def parse_utc(value: str | datetime, what: str = "timestamp") -> datetime:
    """Parse an ISO-8601 timestamp with a time zone (or take an aware datetime) and return it in UTC.

    Raises:
        InvalidTimestamp: the text is not ISO-8601 or has no offset.
    """
    if isinstance(value, datetime):
        return require_aware(value, what)
    if not isinstance(value, str):
        raise InvalidTimestamp(f"{what} must be an ISO-8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidTimestamp(f"{what} {value!r} is not an ISO-8601 date-time") from None
    return require_aware(parsed, what)


def to_json_value(value: Any) -> Any:
    """Convert ``value`` to plain JSON data with one spelling per value.

    Datetimes become UTC ISO-8601 strings with ``Z``, UUIDs strings, enums their value, tuples lists,
    timedeltas a number of seconds, and objects with a ``to_dict()`` method their dictionary. Sets are
    refused because they have no order, and so are naive datetimes because they name no instant.

    Raises:
        CanonicalizationFailed: the value (or something inside it) has no canonical JSON form.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, Enum):
        return to_json_value(value.value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalizationFailed(f"{value!r} is not a JSON number")
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise CanonicalizationFailed(f"naive datetime {value.isoformat()} names no instant")
        return format_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalizationFailed(f"object key {key!r} is not a string")
            result[key] = to_json_value(item)
        return result
    if isinstance(value, list | tuple):
        return [to_json_value(item) for item in value]
    to_dict = getattr(type(value), "to_dict", None)
    if callable(to_dict):
        return to_json_value(to_dict(value))
    raise CanonicalizationFailed(f"a value of type {type(value).__name__} has no canonical JSON form")


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` as RFC 8785 canonical JSON (sorted keys, no whitespace, ES6 number form).

    The value is first passed through :func:`to_json_value`, so aware datetimes are hashed as UTC
    ISO-8601 strings.

    Raises:
        CanonicalizationFailed: the value has no canonical JSON form (including integers beyond 2**53).
    """
    plain = to_json_value(value)
    try:
        return canonicalize(plain)
    except CanonicalizationError as exc:
        raise CanonicalizationFailed(f"cannot canonicalise value: {exc}") from None


def sha256_digest(value: Any) -> str:
    """Return ``"sha256:<hex>"`` of the canonical JSON of ``value``."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


# --------------------------------------------------------------------------------------------------
# Environments
# --------------------------------------------------------------------------------------------------

ENVIRONMENT_NAME_PATTERN: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
"""Environment names are DNS labels: lower-case letters, digits and inner hyphens, 1 to 63 characters."""

MAX_REQUIRED_APPROVALS: Final = 50
"""Upper bound of ``required_approvals`` on an environment."""

DEFAULT_DEPLOYMENT_TIMEOUT_S: Final = 600
"""Deployment timeout of an environment when its config names none (reference section 10)."""

DEFAULT_APPROVAL_TIMEOUT_S: Final = 7 * 24 * 3600
"""Approvals time out after 7 days unless the environment says otherwise (reference section 10)."""

MAX_TIMEOUT_S: Final = 366 * 86_400
"""Longest deployment or approval timeout an environment may set (a year and a day), in seconds."""


class FreezeBehavior(StrEnum):
    """What happens to a promotion that meets a closed freeze window or schedule."""

    HOLD = "hold"
    """Wait in ``pending_gate`` until the window opens (``next_open``), then evaluate again."""
    REJECT = "reject"
    """Reject the promotion; the user requests a new one."""


class HealthCheckType(StrEnum):
    """How a deployed component is checked (reference section 4)."""

    HTTP = "http"
    TCP = "tcp"
    COMMAND = "command"
    CONTAINER = "container"


_HEALTH_CHECK_KEYS: Final = frozenset({"type", "path", "port", "command", "timeout_s", "retries", "interval_s"})
_CONFIG_KEYS: Final = frozenset(
    {
        "deployment_timeout_s",
        "approval_timeout_s",
        "freeze_behavior",
        "health_check",
        "gates",
        "variables",
        "deployment",
    }
)
_VARIABLE_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
MAX_VARIABLES: Final = 500
"""Most variables one environment's config may define."""
MAX_VARIABLE_VALUE_LENGTH: Final = 8192
"""Longest variable value, in characters."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """Default health check of an environment's deployments.

    Defaults follow reference section 10: 30 s timeout, 3 retries, 10 s interval. ``container`` uses the
    container's own health status and needs no address; ``http`` and ``tcp`` need a ``port``; ``command``
    needs a ``command``.
    """

    type: HealthCheckType = HealthCheckType.CONTAINER
    path: str | None = None
    port: int | None = None
    command: tuple[str, ...] = ()
    timeout_s: int = 30
    retries: int = 3
    interval_s: int = 10

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, loc: tuple[str, ...] = ("health_check",)) -> HealthCheckConfig:
        """Validate a JSON health check; missing fields take the defaults.

        Raises:
            InvalidEnvironment: listing every invalid field.
        """
        problems: list[dict[str, Any]] = []
        if not isinstance(raw, Mapping):
            raise InvalidEnvironment(
                "health_check must be an object", errors=[{"loc": list(loc), "msg": "must be an object"}]
            )
        for key in sorted(set(raw) - _HEALTH_CHECK_KEYS):
            problems.append({"loc": [*loc, key], "msg": "unknown field"})
        type_raw = raw.get("type", HealthCheckType.CONTAINER.value)
        try:
            check_type = HealthCheckType(type_raw)
        except ValueError:
            allowed = ", ".join(member.value for member in HealthCheckType)
            problems.append({"loc": [*loc, "type"], "msg": f"must be one of {allowed}"})
            check_type = HealthCheckType.CONTAINER
        path = raw.get("path")
        if check_type is HealthCheckType.HTTP and path is None:
            path = "/"
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            problems.append({"loc": [*loc, "path"], "msg": "must be a path starting with '/'"})
        port = raw.get("port")
        if port is not None and (not _is_int(port) or not 1 <= port <= 65535):
            problems.append({"loc": [*loc, "port"], "msg": "must be an integer from 1 to 65535"})
        if check_type in (HealthCheckType.HTTP, HealthCheckType.TCP) and port is None:
            problems.append({"loc": [*loc, "port"], "msg": f"is required for a {check_type.value} check"})
        command_raw = raw.get("command", ())
        if isinstance(command_raw, str):
            command_raw = (command_raw,)
        if not isinstance(command_raw, list | tuple) or not all(isinstance(c, str) for c in command_raw):
            problems.append({"loc": [*loc, "command"], "msg": "must be a list of strings"})
            command_raw = ()
        if check_type is HealthCheckType.COMMAND and not command_raw:
            problems.append({"loc": [*loc, "command"], "msg": "is required for a command check"})
        numbers: dict[str, int] = {}
        for key, default, low in (("timeout_s", 30, 1), ("retries", 3, 0), ("interval_s", 10, 1)):
            value = raw.get(key, default)
            if not _is_int(value) or value < low:
                problems.append({"loc": [*loc, key], "msg": f"must be an integer >= {low}"})
                value = default
            numbers[key] = value
        if problems:
            raise InvalidEnvironment(_summarise(problems), errors=problems)
        return cls(
            type=check_type,
            path=path,
            port=port,
            command=tuple(command_raw),
            timeout_s=numbers["timeout_s"],
            retries=numbers["retries"],
            interval_s=numbers["interval_s"],
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (the input form of :meth:`from_dict`)."""
        return {
            "type": self.type.value,
            "path": self.path,
            "port": self.port,
            "command": list(self.command),
            "timeout_s": self.timeout_s,
            "retries": self.retries,
            "interval_s": self.interval_s,
        }


@dataclass(frozen=True, slots=True)
class EnvironmentConfig:
    """The ``config`` document of an environment.

    Attributes:
        deployment_timeout_s: How long a deployment job may run (default 600 s).
        approval_timeout_s: How long a promotion waits for approvals before it is rejected (default 7 days).
        freeze_behavior: ``hold`` waits for a closed window to open, ``reject`` rejects the promotion.
        health_check: Default health check of the environment's deployments.
        gates: Gate configurations ``{type, name, config}``. Only their shape is checked here; the gate
            registry (``stella.promotion.gates``) validates each type's own settings.
        variables: Name -> value strings handed to the environment's deployments (plain configuration,
            never secrets: those are credential references of integrations).
    """

    deployment_timeout_s: int = DEFAULT_DEPLOYMENT_TIMEOUT_S
    approval_timeout_s: int = DEFAULT_APPROVAL_TIMEOUT_S
    freeze_behavior: FreezeBehavior = FreezeBehavior.HOLD
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    gates: tuple[Mapping[str, Any], ...] = ()
    variables: Mapping[str, str] = field(default_factory=dict)
    deployment: Mapping[str, Any] | None = None
    """How the deployment service deploys to the environment (:class:`~stella.contracts.deployment.StrategySpec`)."""

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> EnvironmentConfig:
        """Validate a JSON config; missing fields take their defaults.

        Raises:
            InvalidEnvironment: listing every invalid field, with ``loc`` starting at ``config``.
        """
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise InvalidEnvironment(
                "config must be an object", errors=[{"loc": ["config"], "msg": "must be an object"}]
            )
        problems: list[dict[str, Any]] = []
        for key in sorted(set(raw) - _CONFIG_KEYS):
            problems.append({"loc": ["config", key], "msg": "unknown field"})
        timeouts: dict[str, int] = {}
        for key, default in (
            ("deployment_timeout_s", DEFAULT_DEPLOYMENT_TIMEOUT_S),
            ("approval_timeout_s", DEFAULT_APPROVAL_TIMEOUT_S),
        ):
            value = raw.get(key, default)
            if not _is_int(value) or not 0 < value <= MAX_TIMEOUT_S:
                problems.append(
                    {"loc": ["config", key], "msg": f"must be a positive integer (seconds), at most {MAX_TIMEOUT_S}"}
                )
                value = default
            timeouts[key] = value
        try:
            behavior = FreezeBehavior(raw.get("freeze_behavior", FreezeBehavior.HOLD.value))
        except ValueError:
            problems.append({"loc": ["config", "freeze_behavior"], "msg": "must be 'hold' or 'reject'"})
            behavior = FreezeBehavior.HOLD
        health_check = HealthCheckConfig()
        if "health_check" in raw:
            try:
                health_check = HealthCheckConfig.from_dict(raw["health_check"], loc=("config", "health_check"))
            except InvalidEnvironment as exc:
                problems.extend(exc.errors)
        gates = _validate_gate_shapes(raw.get("gates", ()), problems)
        variables = _validate_variables(raw.get("variables", {}), problems)
        deployment = _validate_deployment(raw.get("deployment"), problems)
        if problems:
            raise InvalidEnvironment(_summarise(problems), errors=problems)
        return cls(
            deployment_timeout_s=timeouts["deployment_timeout_s"],
            approval_timeout_s=timeouts["approval_timeout_s"],
            freeze_behavior=behavior,
            health_check=health_check,
            gates=gates,
            variables=variables,
            deployment=deployment,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (the input form of :meth:`from_dict`)."""
        return {
            "deployment_timeout_s": self.deployment_timeout_s,
            "approval_timeout_s": self.approval_timeout_s,
            "freeze_behavior": self.freeze_behavior.value,
            "health_check": self.health_check.to_dict(),
            "gates": [to_json_value(gate) for gate in self.gates],
            "variables": dict(self.variables),
            **({"deployment": to_json_value(self.deployment)} if self.deployment is not None else {}),
        }


def _validate_deployment(raw: Any, problems: list[dict[str, Any]]) -> Mapping[str, Any] | None:
    """Check an environment's deployment settings against the deployment context's contract."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.append({"loc": ["config", "deployment"], "msg": "must be an object"})
        return None
    try:
        StrategySpec.model_validate(dict(raw))
    except ValidationError as exc:
        problems.extend({"loc": ["config", "deployment", *error["loc"]], "msg": error["msg"]} for error in exc.errors())
        return None
    return dict(raw)


def _validate_gate_shapes(raw: Any, problems: list[dict[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(raw, list | tuple):
        problems.append({"loc": ["config", "gates"], "msg": "must be a list"})
        return ()
    gates: list[Mapping[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for index, gate in enumerate(raw):
        loc = ["config", "gates", index]
        if not isinstance(gate, Mapping):
            problems.append({"loc": loc, "msg": "must be an object {type, name, config}"})
            continue
        unknown = sorted(set(gate) - {"type", "name", "config"})
        for key in unknown:
            problems.append({"loc": [*loc, key], "msg": "unknown field"})
        gate_type = gate.get("type")
        if not isinstance(gate_type, str) or not gate_type:
            problems.append({"loc": [*loc, "type"], "msg": "must be a non-empty string"})
            continue
        name = gate.get("name", gate_type)
        if not isinstance(name, str) or not name:
            problems.append({"loc": [*loc, "name"], "msg": "must be a non-empty string"})
            continue
        config = gate.get("config", {})
        if not isinstance(config, Mapping):
            problems.append({"loc": [*loc, "config"], "msg": "must be an object"})
            continue
        if (gate_type, name) in seen:
            problems.append({"loc": [*loc, "name"], "msg": f"duplicate gate {gate_type}/{name}"})
            continue
        seen.add((gate_type, name))
        gates.append({"type": gate_type, "name": name, "config": dict(config)})
    return tuple(gates)


def _validate_variables(raw: Any, problems: list[dict[str, Any]]) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        problems.append({"loc": ["config", "variables"], "msg": "must be an object of name -> string value"})
        return {}
    if len(raw) > MAX_VARIABLES:
        problems.append({"loc": ["config", "variables"], "msg": f"must hold at most {MAX_VARIABLES} variables"})
        return {}
    variables: dict[str, str] = {}
    for name in sorted(raw, key=str):
        value = raw[name]
        if not isinstance(name, str) or not _VARIABLE_NAME.match(name):
            problems.append(
                {
                    "loc": ["config", "variables", str(name)],
                    "msg": "name must be a letter or '_' then letters, digits, '_', '.', '-'",
                }
            )
        elif not isinstance(value, str) or len(value) > MAX_VARIABLE_VALUE_LENGTH:
            problems.append(
                {
                    "loc": ["config", "variables", name],
                    "msg": f"must be a string of at most {MAX_VARIABLE_VALUE_LENGTH} characters",
                }
            )
        else:
            variables[name] = value
    return variables


def _summarise(problems: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(".".join(str(part) for part in p["loc"]) + ": " + str(p["msg"]) for p in problems)


@dataclass(frozen=True, slots=True)
class Environment:
    """A deployment environment (dev, staging, prod) of a tenant.

    Build one with :meth:`create`, which validates every field. Freeze windows belong to the environment
    too, but they are validated and evaluated by ``stella.promotion.freeze`` so this aggregate stays free of
    calendar code.
    """

    id: UUID
    tenant_id: UUID
    name: str
    display_name: str
    order_index: int
    required_approvals: int
    require_sod: bool
    config: EnvironmentConfig
    created_at: datetime

    @classmethod
    def create(
        cls,
        *,
        id: UUID,
        tenant_id: UUID,
        name: str,
        order_index: int,
        created_at: datetime,
        display_name: str | None = None,
        required_approvals: int = 0,
        require_sod: bool = False,
        config: Mapping[str, Any] | EnvironmentConfig | None = None,
    ) -> Environment:
        """Validate and build an environment.

        Args:
            id: Environment id.
            tenant_id: Owning tenant.
            name: DNS-label name, unique per tenant (``prod``).
            order_index: Position in the promotion order, ``>= 0``; lower comes first.
            created_at: Creation instant (aware).
            display_name: Human name; defaults to ``name``.
            required_approvals: Approvals needed, 0 to 50.
            require_sod: Whether the requester may not approve their own promotion.
            config: The config document or an :class:`EnvironmentConfig`.

        Raises:
            InvalidEnvironment: with one ``errors`` entry per invalid field.
        """
        problems: list[dict[str, Any]] = []
        if not isinstance(name, str) or not ENVIRONMENT_NAME_PATTERN.match(name):
            problems.append(
                {
                    "loc": ["name"],
                    "msg": "must be 1-63 lower-case letters, digits or inner hyphens (e.g. 'prod', 'eu-west-1')",
                }
            )
        if display_name is None:
            display_name = name if isinstance(name, str) else ""
        if not isinstance(display_name, str) or len(display_name) > 200 or not display_name.strip():
            problems.append({"loc": ["display_name"], "msg": "must be a non-empty string of at most 200 characters"})
        if not _is_int(order_index) or order_index < 0:
            problems.append({"loc": ["order_index"], "msg": "must be an integer >= 0"})
        if not _is_int(required_approvals) or not 0 <= required_approvals <= MAX_REQUIRED_APPROVALS:
            problems.append(
                {"loc": ["required_approvals"], "msg": f"must be an integer from 0 to {MAX_REQUIRED_APPROVALS}"}
            )
        if not isinstance(require_sod, bool):
            problems.append({"loc": ["require_sod"], "msg": "must be true or false"})
        parsed_config = EnvironmentConfig()
        if isinstance(config, EnvironmentConfig):
            parsed_config = config
        else:
            try:
                parsed_config = EnvironmentConfig.from_dict(config)
            except InvalidEnvironment as exc:
                problems.extend(exc.errors)
        try:
            created = require_aware(created_at, "created_at")
        except InvalidTimestamp as exc:
            problems.append({"loc": ["created_at"], "msg": exc.detail})
            created = created_at
        if problems:
            raise InvalidEnvironment(_summarise(problems), errors=problems)
        return cls(
            id=id,
            tenant_id=tenant_id,
            name=name,
            display_name=display_name,
            order_index=order_index,
            required_approvals=required_approvals,
            require_sod=require_sod,
            config=parsed_config,
            created_at=created,
        )

    def updated(self, **changes: Any) -> Environment:
        """Return a copy with ``changes`` applied and validated again (ids and ``created_at`` cannot change).

        Raises:
            InvalidEnvironment: a changed field is invalid, or ``id``/``tenant_id``/``created_at`` is given.
        """
        frozen = sorted({"id", "tenant_id", "created_at"} & set(changes))
        if frozen:
            raise InvalidEnvironment(
                f"{', '.join(frozen)} cannot change", errors=[{"loc": [k], "msg": "cannot change"} for k in frozen]
            )
        current: dict[str, Any] = {
            "name": self.name,
            "display_name": self.display_name,
            "order_index": self.order_index,
            "required_approvals": self.required_approvals,
            "require_sod": self.require_sod,
            "config": self.config,
        }
        unknown = sorted(set(changes) - set(current))
        if unknown:
            raise InvalidEnvironment(
                f"unknown fields: {', '.join(unknown)}",
                errors=[{"loc": [k], "msg": "unknown field"} for k in unknown],
            )
        current.update(changes)
        return Environment.create(id=self.id, tenant_id=self.tenant_id, created_at=self.created_at, **current)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form used in decision inputs and events."""
        return {
            "id": str(self.id),
            "tenant_id": str(self.tenant_id),
            "name": self.name,
            "display_name": self.display_name,
            "order_index": self.order_index,
            "required_approvals": self.required_approvals,
            "require_sod": self.require_sod,
            "config": self.config.to_dict(),
            "created_at": format_utc(self.created_at),
        }


# --------------------------------------------------------------------------------------------------
# Releases as the promotion context sees them
# --------------------------------------------------------------------------------------------------


class ReleaseStatus(StrEnum):
    """Release statuses owned by the release service (the promotion service keeps a read copy)."""

    DRAFT = "draft"
    READY = "ready"
    DEPLOYED = "deployed"
    DEPRECATED = "deprecated"


PROMOTABLE_RELEASE_STATUSES: Final = frozenset({ReleaseStatus.READY, ReleaseStatus.DEPLOYED})
"""A release can be promoted once it is ready; ``deployed`` (already running somewhere) is still ready."""


@dataclass(frozen=True, slots=True)
class ReleaseSnapshot:
    """The promotion context's read copy of a release."""

    id: UUID
    tenant_id: UUID
    name: str
    status: ReleaseStatus


@dataclass(frozen=True, slots=True)
class ReleaseBlock:
    """A release marked as blocked for an environment and every environment after it."""

    release_id: UUID
    environment_id: UUID
    reason: str
    blocked_by: str
    blocked_at: datetime


@dataclass(frozen=True, slots=True)
class ApprovalSummary:
    """Counts the approval service reports for a promotion (distinct, eligible principals)."""

    required: int
    granted: int
    rejected: int

    def __post_init__(self) -> None:
        for name in ("required", "granted", "rejected"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise InvalidApprovalSummary(f"approval summary {name} must be an integer >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ApprovalSummary:
        """Build a summary from ``{required, granted, rejected}``.

        Raises:
            InvalidApprovalSummary: a count is missing, negative or not an integer.
        """
        if not isinstance(raw, Mapping):
            raise InvalidApprovalSummary("approval summary must be an object {required, granted, rejected}")
        return cls(required=raw.get("required", 0), granted=raw.get("granted", 0), rejected=raw.get("rejected", 0))

    def to_dict(self) -> dict[str, int]:
        """Return ``{required, granted, rejected}``."""
        return {"required": self.required, "granted": self.granted, "rejected": self.rejected}


# --------------------------------------------------------------------------------------------------
# Gate outcome as the state machine needs it
# --------------------------------------------------------------------------------------------------


class DecisionResult(StrEnum):
    """Result of a gate decision."""

    ALLOW = "allow"
    DENY = "deny"
    PENDING = "pending"


TIME_WINDOW_GATE_TYPES: Final = frozenset({"freeze-window", "schedule"})
"""Gates whose answer depends on the clock; they are evaluated again when a deployment starts."""

APPROVAL_GATE_TYPE: Final = "approval"
"""Type name of the N-of-M approval gate."""


@dataclass(frozen=True, slots=True)
class GateOutcome:
    """What the state machine needs to know about a gate decision.

    ``stella.promotion.decision.DecisionRecord.outcome()`` builds one from a full decision record.

    Attributes:
        result: allow, deny or pending.
        reasons: Stable sorted reason codes of the decision.
        record: The decision record's JSON form; kept on the promotion as its latest decision.
        time_window_only: The denial comes only from time-window gates that failed (not errored), so a
            ``hold`` environment waits instead of rejecting.
        next_open: When those windows open again, when ``time_window_only``; ``None`` when unknown.
        waiting_on: Types of non-approval gates that are still pending (a manual confirmation, say).
        approval_satisfied: An approval gate passed in this decision.
        approvals_required: The largest approval count an approval gate of the decision asked for.
    """

    result: DecisionResult
    reasons: tuple[str, ...] = ()
    record: Mapping[str, Any] = field(default_factory=dict)
    time_window_only: bool = False
    next_open: datetime | None = None
    waiting_on: tuple[str, ...] = ()
    approval_satisfied: bool = False
    approvals_required: int = 0


# --------------------------------------------------------------------------------------------------
# Promotion
# --------------------------------------------------------------------------------------------------


class PromotionStatus(StrEnum):
    """States of a promotion (reference section 3)."""

    PENDING_GATE = "pending_gate"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"

    @property
    def is_terminal(self) -> bool:
        """Whether no transition ever leaves this state.

        ``failed`` is not terminal by itself: it moves to ``rolled_back`` when a rollback runs. Use
        :attr:`Promotion.is_terminal` to know whether a failed promotion is final.
        """
        return self in _TERMINAL_STATUSES

    @property
    def is_active(self) -> bool:
        """Whether the promotion is still on its way (neither finished nor failed)."""
        return self in _ACTIVE_STATUSES


_TERMINAL_STATUSES: Final = frozenset(
    {PromotionStatus.DEPLOYED, PromotionStatus.REJECTED, PromotionStatus.CANCELLED, PromotionStatus.ROLLED_BACK}
)
_ACTIVE_STATUSES: Final = frozenset(
    {
        PromotionStatus.PENDING_GATE,
        PromotionStatus.PENDING_APPROVAL,
        PromotionStatus.APPROVED,
        PromotionStatus.DEPLOYING,
    }
)
_CANCELLABLE: Final = frozenset(
    {PromotionStatus.PENDING_GATE, PromotionStatus.PENDING_APPROVAL, PromotionStatus.APPROVED}
)

PROGRESSION_STATUSES: Final = frozenset({PromotionStatus.DEPLOYED})
"""A release has reached an environment (and may move to the next one) once a promotion there is in one of
these states: it was deployed there (an environment with no targets is deployed at once)."""

APPROVED_STATUSES: Final = frozenset({PromotionStatus.APPROVED, PromotionStatus.DEPLOYING, PromotionStatus.DEPLOYED})
"""States of a promotion its gates and approvals allowed (its approval step succeeded)."""

JOB_OUTCOMES: Final = frozenset({"succeeded", "failed", "rolled_back", "cancelled"})
"""How a deployment job ends (``deployment.job_completed``'s ``outcome``)."""

ALLOWED_TRANSITIONS: Final[Mapping[PromotionStatus, frozenset[PromotionStatus]]] = {
    PromotionStatus.PENDING_GATE: frozenset(
        {
            PromotionStatus.PENDING_APPROVAL,
            PromotionStatus.APPROVED,
            PromotionStatus.REJECTED,
            PromotionStatus.CANCELLED,
            PromotionStatus.FAILED,
        }
    ),
    PromotionStatus.PENDING_APPROVAL: frozenset(
        {PromotionStatus.APPROVED, PromotionStatus.REJECTED, PromotionStatus.CANCELLED, PromotionStatus.FAILED}
    ),
    PromotionStatus.APPROVED: frozenset(
        {
            PromotionStatus.DEPLOYING,
            PromotionStatus.PENDING_GATE,
            PromotionStatus.REJECTED,
            PromotionStatus.CANCELLED,
        }
    ),
    PromotionStatus.DEPLOYING: frozenset({PromotionStatus.DEPLOYED, PromotionStatus.FAILED}),
    PromotionStatus.FAILED: frozenset({PromotionStatus.ROLLED_BACK}),
    PromotionStatus.DEPLOYED: frozenset(),
    PromotionStatus.REJECTED: frozenset(),
    PromotionStatus.CANCELLED: frozenset(),
    PromotionStatus.ROLLED_BACK: frozenset(),
}
"""Every state change the state machine can make (the table of reference section 3)."""

REASON_APPROVAL_REJECTED: Final = "PROM_APPROVAL_REJECTED"
"""Reason code of a promotion rejected by an eligible approver."""
REASON_APPROVAL_TIMEOUT: Final = "PROM_APPROVAL_TIMEOUT"
"""Reason code of a promotion whose approvals did not arrive before the deadline."""
REASON_WORKFLOW_ENDED: Final = "PROM_WORKFLOW_RUN_ENDED"
"""Reason code of a promotion failed because its workflow run ended (or never started) before deciding it."""
REASON_WINDOW_NEVER_OPENS: Final = "PROM_WINDOW_NEVER_OPENS"
"""Reason code added when a promotion would be held but the window does not open within the search horizon."""
REASON_RUN_NOT_STARTED: Final = "PROM_RUN_NOT_STARTED"
"""Reason code of a promotion whose workflow run never brought it its gate step: its gates could not be
evaluated, so it is rejected (fail closed) instead of waiting silently."""


@dataclass(frozen=True, kw_only=True)
class PromotionEvent:
    """Base of the events a promotion transition returns.

    ``name`` is the event name of reference section 2 (``promotion.approved``...). The handler turns each
    event into the matching contracts message and writes it to the outbox.
    """

    name: ClassVar[str]
    promotion_id: UUID
    tenant_id: UUID
    release_id: UUID
    environment_id: UUID
    occurred_at: datetime

    def payload(self) -> dict[str, Any]:
        """Return every field as plain JSON data (UTC timestamps, string ids)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return cast(dict[str, Any], to_json_value(data))


@dataclass(frozen=True, kw_only=True)
class PromotionRequested(PromotionEvent):
    """A promotion was requested and waits on its gates."""

    name: ClassVar[str] = "promotion.requested"
    source_environment_id: UUID | None
    requested_by: str


@dataclass(frozen=True, kw_only=True)
class PromotionApprovalRequired(PromotionEvent):
    """Every gate allowed and the environment needs approvals.

    Not one of the published ``promotion.*`` events: the handler turns it into the command that asks the
    approval service to collect ``required_approvals`` approvals before ``deadline``.
    """

    name: ClassVar[str] = "promotion.approval_required"
    required_approvals: int
    require_sod: bool
    requested_by: str
    deadline: datetime


@dataclass(frozen=True, kw_only=True)
class PromotionApproved(PromotionEvent):
    """Gates and approvals allow the promotion; it waits for its turn to deploy."""

    name: ClassVar[str] = "promotion.approved"


@dataclass(frozen=True, kw_only=True)
class PromotionRejected(PromotionEvent):
    """A gate denied, an approver rejected, or approvals timed out. Final."""

    name: ClassVar[str] = "promotion.rejected"
    reason_codes: tuple[str, ...]
    message: str


@dataclass(frozen=True, kw_only=True)
class PromotionStarted(PromotionEvent):
    """The deployment job of the promotion started."""

    name: ClassVar[str] = "promotion.started"
    deployment_job_id: UUID


@dataclass(frozen=True, kw_only=True)
class PromotionCompleted(PromotionEvent):
    """The deployment job succeeded; the release runs in the environment."""

    name: ClassVar[str] = "promotion.completed"
    deployment_job_id: UUID


@dataclass(frozen=True, kw_only=True)
class PromotionFailed(PromotionEvent):
    """The deployment job failed (``rollback_job_id`` is set when a rollback runs), or the promotion's workflow
    run ended or could not start before the promotion was decided (no deployment job then)."""

    name: ClassVar[str] = "promotion.failed"
    deployment_job_id: UUID | None
    reason: str
    rollback_job_id: UUID | None


@dataclass(frozen=True, kw_only=True)
class PromotionCancelled(PromotionEvent):
    """A user cancelled the promotion before its deployment started."""

    name: ClassVar[str] = "promotion.cancelled"
    cancelled_by: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class PromotionRolledBack(PromotionEvent):
    """The rollback after a failed deployment succeeded."""

    name: ClassVar[str] = "promotion.rolled_back"
    deployment_job_id: UUID
    rollback_job_id: UUID


@dataclass(slots=True, kw_only=True)
class Promotion:
    """A request to promote a release to an environment, and its progress.

    Create one with :func:`request_promotion`. Every method that changes the state takes ``now``, raises a
    :class:`DomainError` subclass when the change is not allowed, bumps ``version`` (for optimistic
    locking) and returns the events it caused. The environment settings that steer the lifecycle
    (approvals, separation of duties, freeze behaviour, approval timeout) are copied at request time so a
    later edit of the environment does not change a promotion in flight.
    """

    id: UUID
    tenant_id: UUID
    release_id: UUID
    target_environment_id: UUID
    source_environment_id: UUID | None
    requested_by: str
    requested_at: datetime
    status: PromotionStatus
    updated_at: datetime
    required_approvals: int
    require_sod: bool
    freeze_behavior: FreezeBehavior
    approval_timeout_s: int
    version: int = 1
    decision: Mapping[str, Any] | None = None
    reason_codes: tuple[str, ...] = ()
    status_message: str | None = None
    next_open: datetime | None = None
    approval_deadline: datetime | None = None
    approvals_granted_at: datetime | None = None
    approved_at: datetime | None = None
    deployment_job_id: UUID | None = None
    rollback_job_id: UUID | None = None
    rollback_succeeded: bool | None = None
    finished_at: datetime | None = None
    cancelled_by: str | None = None
    cleared_at: datetime | None = None
    """When the approved promotion took its environment's deployment slot (its deploy step was let go)."""

    # -- queries ---------------------------------------------------------------------------------

    @property
    def is_terminal(self) -> bool:
        """Whether the promotion is final: a terminal state, or ``failed`` with no rollback left to run."""
        if self.status.is_terminal:
            return True
        return self.status is PromotionStatus.FAILED and (
            self.rollback_job_id is None or self.rollback_succeeded is False
        )

    @property
    def holds_deploy_slot(self) -> bool:
        """Whether the promotion occupies its environment's single deployment slot.

        A deploying promotion does, and so does an approved one cleared to deploy (its deploy step was let
        go, its job has not reported its start yet).
        """
        return self.status is PromotionStatus.DEPLOYING or (
            self.status is PromotionStatus.APPROVED and self.cleared_at is not None
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the aggregate as plain JSON data (for storage and read models)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return cast(dict[str, Any], to_json_value(data))

    # -- transitions -----------------------------------------------------------------------------

    def apply_gate_decision(self, outcome: GateOutcome, *, now: datetime) -> list[PromotionEvent]:
        """Apply the decision of the promotion's gates while it waits in ``pending_gate``.

        * allow: ``approved``, or ``pending_approval`` when approvals are required and not yet granted;
        * pending on approvals only: ``pending_approval``;
        * pending on another gate (a manual confirmation): stays ``pending_gate``;
        * deny by closed time windows only on a ``hold`` environment: stays ``pending_gate`` with
          ``next_open`` set (rejected when the windows never open within the search horizon);
        * any other deny (including gate errors): ``rejected``.

        Args:
            outcome: The decision (``DecisionRecord.outcome()``).
            now: Current instant.

        Returns:
            The events caused (empty when the promotion keeps waiting).

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotPending: the promotion is not in ``pending_gate``.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.PENDING_GATE, PromotionNotPending)
        self.decision = dict(outcome.record)
        if outcome.result is DecisionResult.DENY:
            return self._deny(outcome, now)
        if outcome.result is DecisionResult.PENDING and outcome.waiting_on:
            self.next_open = None
            self.reason_codes = outcome.reasons
            self.status_message = "waiting on gates: " + ", ".join(sorted(set(outcome.waiting_on)))
            self._touch(now)
            return []
        self.next_open = None
        if outcome.approval_satisfied and self.approvals_granted_at is None:
            self.approvals_granted_at = now
        # An approval gate may ask for more approvals than the environment; the larger count wins.
        self.required_approvals = max(self.required_approvals, outcome.approvals_required)
        if outcome.result is DecisionResult.PENDING or (
            self.required_approvals > 0 and self.approvals_granted_at is None
        ):
            return self._await_approvals(now)
        return self._approve(now)

    def awaits_approvals(self, outcome: GateOutcome, *, now: datetime) -> bool:
        """Whether :meth:`apply_gate_decision` with ``outcome`` would leave the promotion in ``pending_approval``.

        Nothing changes: the decision is tried on a copy. The service uses it to hold the move until the
        approval request is open, so ``pending_approval`` always means votes are accepted.
        """
        probe = copy.deepcopy(self)
        probe.apply_gate_decision(outcome, now=now)
        return probe.status is PromotionStatus.PENDING_APPROVAL

    def record_approvals(self, summary: ApprovalSummary, *, now: datetime) -> list[PromotionEvent]:
        """Apply the approval service's counts while the promotion is in ``pending_approval``.

        Any eligible rejection rejects; ``granted >= required`` approves (the larger of the summary's and
        the promotion's own requirement counts); otherwise nothing changes.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotPending: the promotion is not waiting for approvals.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.PENDING_APPROVAL, PromotionNotPending)
        if summary.rejected > 0:
            return self._reject(
                now,
                (REASON_APPROVAL_REJECTED,),
                f"rejected by {summary.rejected} eligible approver(s)",
            )
        required = max(summary.required, self.required_approvals)
        if summary.granted >= required:
            self.approvals_granted_at = now
            return self._approve(now)
        return []

    def expire_approvals(self, *, now: datetime) -> list[PromotionEvent]:
        """Reject a promotion whose approval deadline has passed.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotPending: the promotion is not waiting for approvals.
            ApprovalTimeoutNotReached: ``now`` is before ``approval_deadline``.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.PENDING_APPROVAL, PromotionNotPending)
        assert self.approval_deadline is not None
        if now < self.approval_deadline:
            raise ApprovalTimeoutNotReached(
                f"approvals of promotion {self.id} are due by {format_utc(self.approval_deadline)}"
            )
        return self._reject(
            now,
            (REASON_APPROVAL_TIMEOUT,),
            f"approvals not granted before {format_utc(self.approval_deadline)}",
        )

    def abandon_unstarted_run(self, *, waited: timedelta, now: datetime) -> list[PromotionEvent]:
        """Reject a promotion whose workflow run never evaluated its gates within ``waited``.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotPending: the promotion is not waiting on its gates.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.PENDING_GATE, PromotionNotPending)
        return self._reject(
            now,
            (REASON_RUN_NOT_STARTED,),
            f"its workflow run did not start within {_duration_text(waited)}, so its gates could not be "
            "evaluated; request the promotion again",
        )

    def start_deployment(
        self,
        outcome: GateOutcome,
        *,
        deployment_job_id: UUID,
        environment_promotions: Iterable[Promotion],
        now: datetime,
    ) -> list[PromotionEvent]:
        """Start the deployment after re-checking the time-sensitive gates (freeze, schedule).

        Only one promotion per environment deploys at a time and approved promotions start in approval
        order (:func:`next_to_deploy`). When the re-check denies because a window is closed, a ``hold``
        environment sends the promotion back to ``pending_gate`` until ``next_open``; otherwise it is
        rejected.

        Args:
            outcome: Decision of the time-sensitive gates evaluated now.
            deployment_job_id: Id of the deployment job to start.
            environment_promotions: The environment's promotions (this one may be among them).
            now: Current instant.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotApproved: the promotion is not ``approved``.
            EnvironmentBusy: another promotion of the environment is deploying.
            NotNextInQueue: an earlier approved promotion must deploy first.
            DecisionInconclusive: the re-check came back ``pending``.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.APPROVED, PromotionNotApproved)
        others = [p for p in environment_promotions if p.id != self.id]
        busy = [p for p in others if _same_env(p, self) and p.holds_deploy_slot]
        if busy:
            raise EnvironmentBusy(
                f"promotion {busy[0].id} is deploying to environment {self.target_environment_id}; "
                "this one starts when it finishes"
            )
        head = next_to_deploy([*others, self], self.target_environment_id)
        if head is not None and head.id != self.id:
            raise NotNextInQueue(f"promotion {head.id} was approved first and deploys before {self.id}")
        if outcome.result is DecisionResult.PENDING:
            raise DecisionInconclusive("the deploy-start re-check must allow or deny, it returned pending")
        self.decision = dict(outcome.record)
        if outcome.result is DecisionResult.DENY:
            return self._deny(outcome, now)
        self.deployment_job_id = deployment_job_id
        self._move(PromotionStatus.DEPLOYING, now)
        return [PromotionStarted(**self._event_base(now), deployment_job_id=deployment_job_id)]

    def clear_to_deploy(self, *, environment_promotions: Iterable[Promotion], now: datetime) -> bool:
        """Take the environment's deployment slot so the deploy step may run, or queue in ``approved``.

        One promotion per environment deploys at a time (reference section 3: the others queue in
        ``approved``) and queued promotions go in approval order (:func:`next_to_deploy`). A queued
        promotion's ``status_message`` names the promotion it waits for. Clearing an already cleared
        promotion changes nothing.

        Args:
            environment_promotions: The environment's approved and deploying promotions.
            now: Current instant.

        Returns:
            True when the promotion holds the slot (cleared now or before), False when it is queued.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotApproved: the promotion is not ``approved``.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.APPROVED, PromotionNotApproved)
        if self.cleared_at is not None:
            return True
        others = [p for p in environment_promotions if p.id != self.id and _same_env(p, self)]
        busy = next((p for p in others if p.holds_deploy_slot), None)
        head = next_to_deploy([*others, self], self.target_environment_id)
        if busy is not None:
            doing = "deploying" if busy.status is PromotionStatus.DEPLOYING else "starting its deployment"
            message = f"approved; queued behind promotion {busy.id}, which is {doing} to this environment"
        elif head is not None and head.id != self.id:
            message = f"approved; queued behind promotion {head.id}, approved earlier"
        else:
            self.cleared_at = now
            self.next_open = None
            self.status_message = "approved; deployment starting"
            self._touch(now)
            return True
        if self.status_message != message or self.next_open is not None:
            self.status_message = message
            self.next_open = None  # its turn comes when the slot frees, not at a time
            self._touch(now)
        return False

    def wait_for_window(self, *, reason: str | None, next_open: datetime | None, now: datetime) -> list[PromotionEvent]:
        """The deploy-start re-check found the environment closed by a time window: wait in ``approved``.

        The time-sensitive gates (freeze windows, deployment schedules) are evaluated again when the deployment
        would start (reference section 3); the approval stands, and the deployment starts when the window
        opens (``next_open``) or a freeze override lets the promotion through.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotApproved: the promotion is not ``approved``.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.APPROVED, PromotionNotApproved)
        self.next_open = None if next_open is None else require_aware(next_open, "next_open")
        why = reason or "a time window is closed"
        when = (
            f"until {format_utc(self.next_open)}" if self.next_open else "and does not open within the search horizon"
        )
        self.status_message = f"approved; the deployment waits: {why} ({when})"
        self._touch(now)
        return []

    def begin_deployment(self, *, deployment_job_id: UUID, now: datetime) -> list[PromotionEvent]:
        """The promotion's deployment job started: ``approved`` -> ``deploying``.

        The job is the deployment service's answer to the deploy step, which runs once the promotion was
        cleared (:meth:`clear_to_deploy`); a promotion already deploying that job changes nothing.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotApproved: the promotion is neither approved nor deploying this job.
            DeploymentJobMismatch: the promotion deploys another job.
        """
        now = require_aware(now, "now")
        if self.status is PromotionStatus.DEPLOYING or self.deployment_job_id is not None:
            self._check_job(deployment_job_id)
            return []
        self._require(PromotionStatus.APPROVED, PromotionNotApproved)
        self.deployment_job_id = deployment_job_id
        self.cleared_at = self.cleared_at or now
        self.next_open = None
        self.status_message = f"deploying (job {deployment_job_id})"
        self._move(PromotionStatus.DEPLOYING, now)
        return [PromotionStarted(**self._event_base(now), deployment_job_id=deployment_job_id)]

    def finish_job(self, *, deployment_job_id: UUID, outcome: str, reason: str, now: datetime) -> list[PromotionEvent]:
        """Apply how the promotion's deployment job ended.

        ``succeeded`` -> ``deployed``; ``failed`` or ``cancelled`` -> ``failed`` (final: no rollback ran);
        ``rolled_back`` (the job failed and rolled its targets back itself) -> ``failed`` -> ``rolled_back``.
        A job end that arrives before its start is applied as both. A job end applied already changes nothing.

        Raises:
            InvalidPromotionRequest: ``outcome`` is not a job outcome.
            PromotionNotApproved: the promotion never reached its deployment.
            DeploymentJobMismatch: the job is not the promotion's.
        """
        now = require_aware(now, "now")
        if outcome not in JOB_OUTCOMES:
            raise InvalidPromotionRequest(f"job outcome {outcome!r} is not one of {sorted(JOB_OUTCOMES)}")
        if self.deployment_job_id is not None and self.status is not PromotionStatus.DEPLOYING:
            self._check_job(deployment_job_id)
            return []  # already applied
        events = self.begin_deployment(deployment_job_id=deployment_job_id, now=now)
        if outcome == "succeeded":
            events += self.complete_deployment(deployment_job_id=deployment_job_id, now=now)
            self.status_message = reason or None  # "no targets: nothing to deploy", say
            return events
        if outcome == "rolled_back":
            events += self.fail_deployment(
                deployment_job_id=deployment_job_id, reason=reason, now=now, rollback_job_id=deployment_job_id
            )
            events += self.complete_rollback(rollback_job_id=deployment_job_id, now=now)
            self.status_message = f"rolled back: {reason}" if reason else "rolled back"
            return events
        text = reason or ("the deployment was cancelled" if outcome == "cancelled" else "the deployment failed")
        return [*events, *self.fail_deployment(deployment_job_id=deployment_job_id, reason=text, now=now)]

    def begin_rollback(self, *, rollback_job_id: UUID, rollback_of: UUID, now: datetime) -> list[PromotionEvent]:
        """A rollback job of the promotion's failed deployment started (a manual one, after a final failure).

        Only a failed promotion whose deployment job is ``rollback_of`` and that has no rollback yet takes
        it; anything else (a rollback of a deployed promotion, a second rollback) changes nothing here: the
        rollback is still recorded as evidence.
        """
        now = require_aware(now, "now")
        if (
            self.status is not PromotionStatus.FAILED
            or self.deployment_job_id != rollback_of
            or self.rollback_job_id is not None
        ):
            return []
        self.rollback_job_id = rollback_job_id
        self.rollback_succeeded = None
        self.finished_at = None
        self.status_message = f"rolling back (job {rollback_job_id})"
        self._touch(now)
        return []

    def finish_rollback(
        self, *, rollback_job_id: UUID, rollback_of: UUID, succeeded: bool, reason: str, now: datetime
    ) -> list[PromotionEvent]:
        """A rollback job of the promotion's failed deployment ended: ``failed`` -> ``rolled_back`` on success.

        Applied once; a rollback job that is not the promotion's changes nothing.
        """
        now = require_aware(now, "now")
        self.begin_rollback(rollback_job_id=rollback_job_id, rollback_of=rollback_of, now=now)
        if self.status is not PromotionStatus.FAILED or self.rollback_job_id != rollback_job_id:
            return []
        if self.rollback_succeeded is not None:
            return []
        if succeeded:
            return self.complete_rollback(rollback_job_id=rollback_job_id, now=now)
        return self.fail_rollback(rollback_job_id=rollback_job_id, reason=reason or "the rollback failed", now=now)

    def release_slot(self, *, reason: str, now: datetime) -> list[PromotionEvent]:
        """Give the environment's deployment slot back while still ``approved`` (the run ended without a job).

        The promotion keeps its approval; it no longer blocks the environment's queue.
        """
        now = require_aware(now, "now")
        if self.status is not PromotionStatus.APPROVED or self.cleared_at is None:
            return []
        self.cleared_at = None
        self.status_message = reason
        self._touch(now)
        return []

    def complete_deployment(self, *, deployment_job_id: UUID, now: datetime) -> list[PromotionEvent]:
        """Mark the deployment as succeeded.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            InvalidTransition: the promotion is not deploying.
            DeploymentJobMismatch: the job is not the promotion's.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.DEPLOYING, InvalidTransition)
        self._check_job(deployment_job_id)
        self._move(PromotionStatus.DEPLOYED, now)
        self.finished_at = now
        self.reason_codes = ()
        self.status_message = None
        return [PromotionCompleted(**self._event_base(now), deployment_job_id=deployment_job_id)]

    def fail_deployment(
        self,
        *,
        deployment_job_id: UUID,
        reason: str,
        now: datetime,
        rollback_job_id: UUID | None = None,
    ) -> list[PromotionEvent]:
        """Mark the deployment as failed, naming the rollback job when the strategy rolls back.

        Without a rollback the promotion is final in ``failed``.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            InvalidTransition: the promotion is not deploying.
            DeploymentJobMismatch: the job is not the promotion's.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.DEPLOYING, InvalidTransition)
        self._check_job(deployment_job_id)
        self.rollback_job_id = rollback_job_id
        self.status_message = reason
        self._move(PromotionStatus.FAILED, now)
        if rollback_job_id is None:
            self.finished_at = now
        return [
            PromotionFailed(
                **self._event_base(now),
                deployment_job_id=deployment_job_id,
                reason=reason,
                rollback_job_id=rollback_job_id,
            )
        ]

    def complete_rollback(self, *, rollback_job_id: UUID, now: datetime) -> list[PromotionEvent]:
        """Record that the rollback job succeeded: ``failed`` -> ``rolled_back``.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished (including a failed one without rollback).
            InvalidTransition: the promotion has not failed.
            DeploymentJobMismatch: the job is not the promotion's rollback job.
        """
        now = require_aware(now, "now")
        self._require_rollback(rollback_job_id)
        assert self.deployment_job_id is not None
        self.rollback_succeeded = True
        self._move(PromotionStatus.ROLLED_BACK, now)
        self.finished_at = now
        return [
            PromotionRolledBack(
                **self._event_base(now),
                deployment_job_id=self.deployment_job_id,
                rollback_job_id=rollback_job_id,
            )
        ]

    def fail_rollback(self, *, rollback_job_id: UUID, reason: str, now: datetime) -> list[PromotionEvent]:
        """Record that the rollback job failed: the promotion stays ``failed`` and is now final.

        No promotion event is published; the deployment service reports the failed rollback job itself.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            InvalidTransition: the promotion has not failed.
            DeploymentJobMismatch: the job is not the promotion's rollback job.
        """
        now = require_aware(now, "now")
        self._require_rollback(rollback_job_id)
        self.rollback_succeeded = False
        self.status_message = f"rollback failed: {reason}"
        self.finished_at = now
        self._touch(now)
        return []

    def fail_workflow(self, *, reason: str, now: datetime) -> list[PromotionEvent]:
        """The promotion's workflow run ended, or could not start, while the promotion still waited on it.

        Nothing will decide such a promotion any more, so it fails, final, with the run's reason: no
        promotion waits for a run that is gone. Allowed in ``pending_gate`` and ``pending_approval``; in any
        other state the run's end says nothing new and nothing changes.
        """
        now = require_aware(now, "now")
        if self.status not in (PromotionStatus.PENDING_GATE, PromotionStatus.PENDING_APPROVAL):
            return []
        self.status_message = reason
        self.reason_codes = (REASON_WORKFLOW_ENDED,)
        self.next_open = None
        self._move(PromotionStatus.FAILED, now)
        self.finished_at = now
        return [PromotionFailed(**self._event_base(now), deployment_job_id=None, reason=reason, rollback_job_id=None)]

    def cancel(self, *, cancelled_by: str, reason: str, now: datetime) -> list[PromotionEvent]:
        """Cancel the promotion; allowed in ``pending_gate``, ``pending_approval`` and ``approved``.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            CancelNotAllowed: the deployment already started.
            InvalidPromotionRequest: ``cancelled_by`` is empty.
        """
        now = require_aware(now, "now")
        if not isinstance(cancelled_by, str) or not cancelled_by.strip():
            raise InvalidPromotionRequest("cancelled_by must name the principal who cancels")
        if self.is_terminal:
            raise PromotionAlreadyTerminal(
                f"promotion {self.id} is already {self.status.value} and cannot be cancelled"
            )
        if self.status not in _CANCELLABLE:
            raise CancelNotAllowed(
                f"promotion {self.id} is {self.status.value}; only promotions that have not started "
                "deploying can be cancelled"
            )
        self.cancelled_by = cancelled_by
        self.status_message = reason
        self.next_open = None
        self._move(PromotionStatus.CANCELLED, now)
        self.finished_at = now
        return [PromotionCancelled(**self._event_base(now), cancelled_by=cancelled_by, reason=reason)]

    # -- internals -------------------------------------------------------------------------------

    def _require(self, status: PromotionStatus, error: type[InvalidTransition]) -> None:
        if self.is_terminal:
            raise PromotionAlreadyTerminal(f"promotion {self.id} is already {self.status.value}")
        if self.status is not status:
            raise error(f"promotion {self.id} is {self.status.value}, expected {status.value}")

    def _require_rollback(self, rollback_job_id: UUID) -> None:
        self._require(PromotionStatus.FAILED, InvalidTransition)
        if self.rollback_job_id != rollback_job_id:
            raise DeploymentJobMismatch(
                f"job {rollback_job_id} is not the rollback job of promotion {self.id} ({self.rollback_job_id})"
            )

    def _check_job(self, deployment_job_id: UUID) -> None:
        if self.deployment_job_id != deployment_job_id:
            raise DeploymentJobMismatch(
                f"job {deployment_job_id} is not the deployment job of promotion {self.id} ({self.deployment_job_id})"
            )

    def _touch(self, now: datetime) -> None:
        self.updated_at = now
        self.version += 1

    def _move(self, to: PromotionStatus, now: datetime) -> None:
        if to not in ALLOWED_TRANSITIONS[self.status]:
            raise InvalidTransition(f"promotion {self.id} cannot move from {self.status.value} to {to.value}")
        self.status = to
        self._touch(now)

    def _event_base(self, now: datetime) -> dict[str, Any]:
        return {
            "promotion_id": self.id,
            "tenant_id": self.tenant_id,
            "release_id": self.release_id,
            "environment_id": self.target_environment_id,
            "occurred_at": now,
        }

    def _approve(self, now: datetime) -> list[PromotionEvent]:
        self._move(PromotionStatus.APPROVED, now)
        self.approved_at = now
        self.reason_codes = ()
        self.status_message = None
        return [PromotionApproved(**self._event_base(now))]

    def _await_approvals(self, now: datetime) -> list[PromotionEvent]:
        self._move(PromotionStatus.PENDING_APPROVAL, now)
        deadline = now + timedelta(seconds=self.approval_timeout_s)
        self.approval_deadline = deadline
        self.reason_codes = ()
        self.status_message = f"waiting for {self.required_approvals} approval(s)"
        return [
            PromotionApprovalRequired(
                **self._event_base(now),
                required_approvals=self.required_approvals,
                require_sod=self.require_sod,
                requested_by=self.requested_by,
                deadline=deadline,
            )
        ]

    def _deny(self, outcome: GateOutcome, now: datetime) -> list[PromotionEvent]:
        if outcome.time_window_only and self.freeze_behavior is FreezeBehavior.HOLD:
            if outcome.next_open is not None:
                if self.status is not PromotionStatus.PENDING_GATE:
                    self._move(PromotionStatus.PENDING_GATE, now)
                else:
                    self._touch(now)
                self.next_open = require_aware(outcome.next_open, "next_open")
                self.reason_codes = outcome.reasons
                self.status_message = f"held by a closed window until {format_utc(self.next_open)}"
                return []
            return self._reject(
                now,
                tuple(sorted({*outcome.reasons, REASON_WINDOW_NEVER_OPENS})),
                "the closed window does not open within the search horizon",
            )
        return self._reject(now, outcome.reasons, "denied by gates: " + ", ".join(outcome.reasons))

    def _reject(self, now: datetime, reasons: Sequence[str], message: str) -> list[PromotionEvent]:
        self.reason_codes = tuple(reasons)
        self.status_message = message
        self.next_open = None
        self._move(PromotionStatus.REJECTED, now)
        self.finished_at = now
        return [PromotionRejected(**self._event_base(now), reason_codes=tuple(reasons), message=message)]


def _duration_text(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _same_env(a: Promotion, b: Promotion) -> bool:
    return a.tenant_id == b.tenant_id and a.target_environment_id == b.target_environment_id


def request_promotion(
    *,
    promotion_id: UUID,
    release: ReleaseSnapshot,
    target_environment: Environment,
    environments: Sequence[Environment],
    release_promotions: Iterable[Promotion],
    requested_by: str,
    now: datetime,
    source_environment_id: UUID | None = None,
    blocks: Iterable[ReleaseBlock] = (),
) -> tuple[Promotion, list[PromotionEvent]]:
    """Validate a promotion request and create the promotion in ``pending_gate``.

    Rules, in order: the release is ready; the target belongs to the tenant's environments; the release
    is not blocked for the target or an environment before it; the target is the first environment by
    ``order_index`` or comes right after an environment where the release was ``deployed``; a named source environment is that previous environment; the release
    has no unfinished promotion to the target already. Several environments may share an
    ``order_index`` (parallel stages); reaching any of them opens the next stage.

    Args:
        promotion_id: Id of the new promotion.
        release: The release to promote.
        target_environment: Where to promote it.
        environments: Every environment of the tenant (the order is taken from ``order_index``).
        release_promotions: The release's existing promotions, in any environment.
        requested_by: Principal asking for the promotion.
        now: Current instant (becomes ``requested_at``).
        source_environment_id: Environment the release is promoted from, when the caller names one.
        blocks: Blocks recorded for this release.

    Returns:
        The new promotion and its ``promotion.requested`` event.

    Raises:
        InvalidPromotionRequest: empty requester, or release and environment of different tenants.
        ReleaseNotReady: the release is a draft or deprecated.
        EnvironmentNotFound: the target or source environment is not one of the tenant's.
        ReleaseBlocked: a block covers the target environment.
        PromotionOrderViolation: the previous environment has not been reached.
        SourceEnvironmentMismatch: the named source is not the previous environment.
        PromotionAlreadyActive: an unfinished promotion of the release to the target exists.
    """
    now = require_aware(now, "now")
    if not isinstance(requested_by, str) or not requested_by.strip():
        raise InvalidPromotionRequest("requested_by must name the principal who requests the promotion")
    tenant_id = target_environment.tenant_id
    if release.tenant_id != tenant_id:
        raise InvalidPromotionRequest(f"release {release.id} does not belong to the environment's tenant")
    if release.status not in PROMOTABLE_RELEASE_STATUSES:
        raise ReleaseNotReady(
            f"release {release.name!r} is {release.status.value}; only ready releases can be promoted"
        )
    by_id = {env.id: env for env in environments if env.tenant_id == tenant_id}
    target = by_id.get(target_environment.id)
    if target is None:
        raise EnvironmentNotFound(f"environment {target_environment.id} not found")

    for block in blocks:
        if block.release_id != release.id:
            continue
        blocked_env = by_id.get(block.environment_id)
        if blocked_env is not None and blocked_env.order_index <= target.order_index:
            scope = "" if blocked_env.id == target.id else f" (blocked from {blocked_env.name!r} onward)"
            raise ReleaseBlocked(f"release {release.name!r} is blocked for {target.name!r}{scope}: {block.reason}")

    previous_index = max((e.order_index for e in by_id.values() if e.order_index < target.order_index), default=None)
    history = [p for p in release_promotions if p.release_id == release.id and p.tenant_id == tenant_id]
    if previous_index is None:
        if source_environment_id is not None:
            raise SourceEnvironmentMismatch(
                f"{target.name!r} is the first environment; a promotion to it has no source environment"
            )
    else:
        previous = sorted((e for e in by_id.values() if e.order_index == previous_index), key=lambda e: e.name)
        previous_names = " or ".join(repr(e.name) for e in previous)
        reached = {p.target_environment_id for p in history if p.status in PROGRESSION_STATUSES}
        if source_environment_id is not None:
            source = by_id.get(source_environment_id)
            if source is None:
                raise EnvironmentNotFound(f"source environment {source_environment_id} not found")
            if source.order_index != previous_index:
                raise SourceEnvironmentMismatch(
                    f"{source.name!r} is not the environment before {target.name!r}; promote from {previous_names}"
                )
            if source.id not in reached:
                raise PromotionOrderViolation(
                    f"release {release.name!r} has not been deployed in {source.name!r}; "
                    f"promote it to {source.name!r} before {target.name!r}"
                )
        elif not any(env.id in reached for env in previous):
            raise PromotionOrderViolation(
                f"release {release.name!r} must be deployed in {previous_names} "
                f"before it can be promoted to {target.name!r}"
            )

    active = [p for p in history if p.target_environment_id == target.id and p.status.is_active]
    if active:
        raise PromotionAlreadyActive(
            f"release {release.name!r} already has promotion {active[0].id} to {target.name!r} "
            f"({active[0].status.value})"
        )

    promotion = Promotion(
        id=promotion_id,
        tenant_id=tenant_id,
        release_id=release.id,
        target_environment_id=target.id,
        source_environment_id=source_environment_id,
        requested_by=requested_by,
        requested_at=now,
        status=PromotionStatus.PENDING_GATE,
        updated_at=now,
        required_approvals=target.required_approvals,
        require_sod=target.require_sod,
        freeze_behavior=target.config.freeze_behavior,
        approval_timeout_s=target.config.approval_timeout_s,
    )
    event = PromotionRequested(
        promotion_id=promotion_id,
        tenant_id=tenant_id,
        release_id=release.id,
        environment_id=target.id,
        occurred_at=now,
        source_environment_id=source_environment_id,
        requested_by=requested_by,
    )
    return promotion, [event]


def next_to_deploy(promotions: Iterable[Promotion], environment_id: UUID) -> Promotion | None:
    """Say which approved promotion of an environment may start deploying now.

    None while a promotion of the environment holds its deployment slot (deploying, or approved and cleared
    to deploy); otherwise the approved promotion that was approved first (ties broken by request time, then id, so the answer is deterministic).

    Args:
        promotions: Promotions to consider (others than the environment's are ignored).
        environment_id: The environment.

    Returns:
        The promotion to start, or ``None``.
    """
    candidates: list[Promotion] = []
    for promotion in promotions:
        if promotion.target_environment_id != environment_id:
            continue
        if promotion.holds_deploy_slot:
            return None
        if promotion.status is PromotionStatus.APPROVED:
            candidates.append(promotion)
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda p: (p.approved_at or p.updated_at, p.requested_at, str(p.id)),
    )
