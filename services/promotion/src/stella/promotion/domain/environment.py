"""Environments: their configuration (health check, deployment, gates, variables) and its validation."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

from pydantic import ValidationError

from stella.contracts.deployment import StrategySpec
from stella.promotion.domain.encoding import format_utc, is_int, require_aware, to_json_value
from stella.promotion.domain.errors import InvalidEnvironment, InvalidTimestamp

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
        if port is not None and (not is_int(port) or not 1 <= port <= 65535):
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
            if not is_int(value) or value < low:
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
            if not is_int(value) or not 0 < value <= MAX_TIMEOUT_S:
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
        if not is_int(order_index) or order_index < 0:
            problems.append({"loc": ["order_index"], "msg": "must be an integer >= 0"})
        if not is_int(required_approvals) or not 0 <= required_approvals <= MAX_REQUIRED_APPROVALS:
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
