"""Gates: the registry of gate types, the built-in gates, and fail-closed evaluation.

A gate reads the decision inputs (a JSON document) and the clock reading it is given, and answers a
:class:`GateResult`. Gates never perform I/O: whatever a gate needs from elsewhere (scan verdicts,
approval counts, a plugin provider's answer) is fetched beforehand by the I/O layer and put into the
inputs, so the decision can be replayed from the stored inputs alone.

Inputs read by the built-in gates::

    {
      "release": {"id", "name", "components": [{"name", "digest", ...}]},
      "environment": {"id", "name", "required_approvals", ...},
      "freeze_windows": [<freeze window JSON>],            # freeze-window, schedule
      "overrides": [{"gate": "freeze-window", "name"?: str, "principal", "reason",
                     "has_override_permission": bool, "at"?}],                   # freeze-window, schedule
      "manual_confirmations": [{"gate": <gate name>, "principal", "at"?, "comment"?}],  # manual
      "security": {"scans": {"sha256:...": {"critical", "high", "medium", "low"?, "epss_max", "kev"}}},
      "approvals": {"required", "granted", "rejected", "entries": [...]},          # approval
      ...                                                                          # policy: everything
    }

Evaluation order: cheap stateless gates first (freeze-window, schedule, manual), stateful ones after
(policy, security, approval), plugin gates last; gates of one type run by name. Evaluation is fail closed: a gate
that raises, returns something that is not a valid :class:`GateResult`, or has an unknown type yields
status ``error``, which denies. After the first ``fail``/``error`` the remaining gates are ``skipped``.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Final

from stella.promotion import freeze, policy
from stella.promotion.domain.encoding import format_utc, parse_utc, require_aware, to_json_value
from stella.promotion.domain.errors import DomainError, InvalidInput, StateConflict
from stella.promotion.domain.outcome import APPROVAL_GATE_TYPE
from stella.promotion.domain.release import ApprovalSummary


class GateStatus(StrEnum):
    """Status of one gate evaluation.

    ``pending`` extends the reference's list: the gate cannot decide yet because it waits on people
    (approvals, a manual confirmation). It neither allows nor denies; the decision is ``pending``.
    """

    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    SKIPPED = "skipped"
    OVERRIDDEN = "overridden"
    PENDING = "pending"


DENYING_STATUSES: Final = frozenset({GateStatus.FAIL, GateStatus.ERROR})
"""Statuses that deny the promotion."""

# Reason codes of the built-in gates and the runner.
REASON_GATE_ERROR: Final = "GATE_PROVIDER_ERROR"
REASON_INVALID_RESULT: Final = "GATE_INVALID_RESULT"
REASON_UNKNOWN_TYPE: Final = "GATE_UNKNOWN_TYPE"
REASON_FAILED: Final = "GATE_FAILED"
REASON_FREEZE_ACTIVE: Final = "GATE_FREEZE_ACTIVE"
REASON_FREEZE_OVERRIDDEN: Final = "GATE_FREEZE_OVERRIDDEN"
REASON_SCHEDULE_CLOSED: Final = "GATE_SCHEDULE_CLOSED"
REASON_SCHEDULE_OVERRIDDEN: Final = "GATE_SCHEDULE_OVERRIDDEN"
REASON_MANUAL_PENDING: Final = "GATE_MANUAL_PENDING"
REASON_POLICY_ERROR: Final = "GATE_POLICY_ERROR"
REASON_SECURITY_SCAN_MISSING: Final = "GATE_SECURITY_SCAN_MISSING"
REASON_SECURITY_SCAN_INVALID: Final = "GATE_SECURITY_SCAN_INVALID"
REASON_SECURITY_NO_DIGESTS: Final = "GATE_SECURITY_NO_DIGESTS"
REASON_SECURITY_CRITICAL: Final = "GATE_SECURITY_CRITICAL"
REASON_SECURITY_HIGH: Final = "GATE_SECURITY_HIGH"
REASON_SECURITY_MEDIUM: Final = "GATE_SECURITY_MEDIUM"
REASON_SECURITY_EPSS: Final = "GATE_SECURITY_EPSS"
REASON_SECURITY_KEV: Final = "GATE_SECURITY_KEV"
REASON_APPROVAL_PENDING: Final = "GATE_APPROVAL_PENDING"
REASON_APPROVAL_REJECTED: Final = "GATE_APPROVAL_REJECTED"
REASON_PLUGIN_DENIED: Final = "GATE_PLUGIN_DENIED"
REASON_PLUGIN_FAILED: Final = "GATE_PLUGIN_FAILED"
REASON_PLUGIN_NO_VERDICT: Final = "GATE_PLUGIN_NO_VERDICT"

PLUGIN_GATE_TYPE: Final = "plugin"
"""The gate type whose verdict a gate plugin gives: ``{type: plugin, name, config: {plugin, config}}``."""

PLUGIN_VERDICTS: Final = "plugin_verdicts"
"""The decision input holding each plugin gate's verdict by gate name (gathered by the I/O layer)."""

STATELESS_RANK: Final = 100
"""Rank of cheap gates that only read the clock and the inputs; they run first."""
STATEFUL_RANK: Final = 200
"""Rank of gates that look at state gathered from other systems (policy, security, approvals)."""
PLUGIN_RANK: Final = 1000
"""Default rank of gates registered by plugins; they run last."""

_REASON_CODE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_DIGEST: Final = re.compile(r"^sha256:[0-9a-f]{64}$")


class InvalidGateConfig(InvalidInput):
    """A gate configuration is malformed (unknown fields, out-of-range thresholds...)."""

    code = "GATE_CONFIG_INVALID"
    title = "Invalid gate configuration"


class PluginGateNotEnabled(InvalidGateConfig):
    """A plugin gate names a plugin the tenant has no enabled instance of (or one that offers no gate)."""

    code = "GATE_PLUGIN_NOT_ENABLED"
    status = 422
    title = "Gate plugin not enabled for the tenant"


class InvalidGateInputs(InvalidInput):
    """The decision inputs a gate reads are malformed (a scan with negative counts, bad digests...)."""

    code = "GATE_INPUTS_INVALID"
    title = "Invalid gate inputs"


class UnknownGateType(InvalidInput):
    """No gate type is registered under the name."""

    code = "GATE_UNKNOWN_TYPE"
    title = "Unknown gate type"


class GateTypeAlreadyRegistered(StateConflict):
    """A gate type with the name is already registered."""

    code = "GATE_TYPE_CONFLICT"
    title = "Gate type already registered"


class InvalidGateResult(InvalidInput):
    """A gate produced a result that breaks the GateResult contract."""

    code = REASON_INVALID_RESULT
    title = "Invalid gate result"


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's answer: ``{type, name, status, message, details, reason_codes}``.

    ``details`` is converted to plain JSON on construction (timestamps become UTC strings), so a result
    equals its own round trip through :meth:`to_dict`/:meth:`from_dict`.

    Raises:
        InvalidGateResult: on construction, when a field has the wrong type or a reason code is malformed.
    """

    type: str
    name: str
    status: GateStatus
    message: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    reason_codes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not self.type or not isinstance(self.name, str) or not self.name:
            raise InvalidGateResult("a gate result needs a non-empty type and name")
        try:
            status = GateStatus(self.status)
        except ValueError:
            raise InvalidGateResult(f"gate {self.type}/{self.name}: unknown status {self.status!r}") from None
        if not isinstance(self.message, str):
            raise InvalidGateResult(f"gate {self.type}/{self.name}: message must be a string")
        if not isinstance(self.details, Mapping):
            raise InvalidGateResult(f"gate {self.type}/{self.name}: details must be an object")
        codes = self.reason_codes
        if isinstance(codes, str) or not all(isinstance(c, str) and _REASON_CODE.match(c) for c in codes):
            raise InvalidGateResult(f"gate {self.type}/{self.name}: reason codes must be a list of code strings")
        try:
            details = to_json_value(self.details)
        except DomainError as exc:
            raise InvalidGateResult(f"gate {self.type}/{self.name}: details are not JSON: {exc.detail}") from None
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "details", details)
        object.__setattr__(self, "reason_codes", tuple(sorted(set(codes))))

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "type": self.type,
            "name": self.name,
            "status": self.status.value,
            "message": self.message,
            "details": dict(self.details),
            "reason_codes": list(self.reason_codes),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GateResult:
        """Rebuild a result from its JSON form."""
        return cls(
            type=raw["type"],
            name=raw["name"],
            status=raw["status"],
            message=raw.get("message", ""),
            details=raw.get("details", {}),
            reason_codes=tuple(raw.get("reason_codes", ())),
        )


@dataclass(frozen=True, slots=True)
class GateConfig:
    """A configured gate of an environment: ``{type, name, config}`` (``name`` defaults to ``type``)."""

    type: str
    name: str
    config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | GateConfig) -> GateConfig:
        """Build a config from JSON.

        Raises:
            InvalidGateConfig: type or name missing or not strings, config not an object, unknown fields.
        """
        if isinstance(raw, GateConfig):
            return raw
        if not isinstance(raw, Mapping):
            raise InvalidGateConfig("a gate must be an object {type, name, config}")
        unknown = sorted(set(raw) - {"type", "name", "config"})
        if unknown:
            raise InvalidGateConfig(f"gate has unknown field(s) {', '.join(unknown)}")
        gate_type = raw.get("type")
        if not isinstance(gate_type, str) or not gate_type:
            raise InvalidGateConfig("gate type must be a non-empty string")
        name = raw.get("name", gate_type)
        if not isinstance(name, str) or not name:
            raise InvalidGateConfig(f"gate {gate_type}: name must be a non-empty string")
        config = raw.get("config", {})
        if not isinstance(config, Mapping):
            raise InvalidGateConfig(f"gate {gate_type}/{name}: config must be an object")
        return cls(type=gate_type, name=name, config=dict(config))

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"type": self.type, "name": self.name, "config": to_json_value(self.config)}


class Gate(ABC):
    """A gate type. Subclass it, set ``type`` (and ``rank``), and register an instance.

    Attributes:
        type: The name the gate is registered under (``freeze-window``...).
        rank: Evaluation order; lower runs first (stateless gates 100, stateful 200, plugins 1000).
    """

    type: ClassVar[str]
    rank: ClassVar[int] = PLUGIN_RANK

    def validate_config(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        """Check a gate's ``config`` and return it with defaults filled in.

        The default accepts only an empty config.

        Raises:
            InvalidGateConfig: the config is invalid.
        """
        return _check_keys(self.type, config, {})

    @abstractmethod
    def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        """Evaluate the gate.

        Args:
            gate: The gate's configuration, with ``config`` already validated.
            inputs: The decision inputs as plain JSON.
            now: The clock reading of the decision (UTC).

        Returns:
            The gate's result; its ``type`` and ``name`` must be those of ``gate``.
        """

    def result(
        self,
        gate: GateConfig,
        status: GateStatus,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        reason_codes: Iterable[str] = (),
    ) -> GateResult:
        """Build a result for ``gate``."""
        return GateResult(
            type=gate.type,
            name=gate.name,
            status=status,
            message=message,
            details=details or {},
            reason_codes=tuple(reason_codes),
        )


def _check_keys(gate_type: str, config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        raise InvalidGateConfig(f"{gate_type} gate: config must be an object")
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) or "none"
        raise InvalidGateConfig(f"{gate_type} gate: unknown setting(s) {', '.join(unknown)} (allowed: {allowed})")
    merged = dict(defaults)
    merged.update(config)
    return merged


def _check_bool(gate_type: str, config: Mapping[str, Any], key: str) -> None:
    if not isinstance(config[key], bool):
        raise InvalidGateConfig(f"{gate_type} gate: {key} must be true or false")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --------------------------------------------------------------------------------------------------
# Built-in gates
# --------------------------------------------------------------------------------------------------


def _find_override(inputs: Mapping[str, Any], gate: GateConfig) -> freeze.FreezeOverride | None:
    """Return the override given for this gate (matched by type, and by name when the entry names one)."""
    overrides = inputs.get("overrides") or []
    if not isinstance(overrides, list):
        raise InvalidGateInputs("overrides must be a list")
    for entry in overrides:
        if not isinstance(entry, Mapping) or entry.get("gate") != gate.type:
            continue
        if entry.get("name") not in (None, gate.name):
            continue
        principal = entry.get("principal")
        reason = entry.get("reason")
        permission = entry.get("has_override_permission", False)
        if not isinstance(principal, str) or not isinstance(reason, str) or not isinstance(permission, bool):
            raise InvalidGateInputs(
                "an override needs principal and reason strings and a boolean has_override_permission"
            )
        at = entry.get("at")
        return freeze.FreezeOverride(
            principal=principal,
            reason=reason,
            has_override_permission=permission,
            at=parse_utc(at, "override at") if at is not None else None,
        )
    return None


class _WindowGate(Gate):
    """Shared logic of freeze-window (deny windows) and schedule (allow windows)."""

    rank = STATELESS_RANK
    kind: ClassVar[freeze.WindowKind]
    closed_code: ClassVar[str]
    overridden_code: ClassVar[str]

    def validate_config(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        merged = _check_keys(self.type, config, {"allow_override": True})
        _check_bool(self.type, merged, "allow_override")
        return merged

    def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        windows = [w for w in freeze.parse_windows(inputs.get("freeze_windows")) if w.kind is self.kind]
        if not windows and self.kind is freeze.WindowKind.ALLOW:
            return self.result(gate, GateStatus.SKIPPED, "no deployment windows configured; always open")
        state = freeze.environment_state(windows, now)
        details: dict[str, Any] = {
            "closed": state.closed,
            "next_open": state.next_open,
            "next_close": state.next_close,
            "active_window_ids": list(state.active_window_ids),
        }
        if not state.closed:
            return self.result(gate, GateStatus.PASS, self.open_message(state), details=details)
        closing = self.closing_windows(windows, state)
        override = _find_override(inputs, gate) if gate.config["allow_override"] else None
        if override is not None:
            try:
                freeze.check_override(override, closing)
            except DomainError as exc:
                details["override_refused"] = {"principal": override.principal, "reason": exc.detail}
                return self.result(
                    gate,
                    GateStatus.FAIL,
                    f"{self.closed_message(state)}; override refused: {exc.detail}",
                    details=details,
                    reason_codes=(self.closed_code, exc.code),
                )
            details["override"] = override.to_dict()
            return self.result(
                gate,
                GateStatus.OVERRIDDEN,
                f"{self.closed_message(state)}; overridden by {override.principal}: {override.reason}",
                details=details,
                reason_codes=(self.overridden_code,),
            )
        return self.result(
            gate, GateStatus.FAIL, self.closed_message(state), details=details, reason_codes=(self.closed_code,)
        )

    @staticmethod
    def _until(state: freeze.EnvironmentState) -> str:
        return f"opens at {format_utc(state.next_open)}" if state.next_open else "does not open within 400 days"

    def open_message(self, state: freeze.EnvironmentState) -> str:
        raise NotImplementedError

    def closed_message(self, state: freeze.EnvironmentState) -> str:
        raise NotImplementedError

    def closing_windows(
        self, windows: Sequence[freeze.FreezeWindow], state: freeze.EnvironmentState
    ) -> list[freeze.FreezeWindow]:
        raise NotImplementedError


class FreezeWindowGate(_WindowGate):
    """Fails while a deny window is active; a permitted override with a reason turns it ``overridden``.

    Config: ``allow_override`` (bool, default true).
    """

    type = "freeze-window"
    kind = freeze.WindowKind.DENY
    closed_code = REASON_FREEZE_ACTIVE
    overridden_code = REASON_FREEZE_OVERRIDDEN

    def open_message(self, state: freeze.EnvironmentState) -> str:
        return "no freeze window is active"

    def closed_message(self, state: freeze.EnvironmentState) -> str:
        return f"frozen by {', '.join(state.active_window_ids)} ({state.reason}); {self._until(state)}"

    def closing_windows(
        self, windows: Sequence[freeze.FreezeWindow], state: freeze.EnvironmentState
    ) -> list[freeze.FreezeWindow]:
        return [w for w in windows if w.id in state.active_window_ids]


class ScheduleGate(_WindowGate):
    """With allow windows configured, fails outside all of them; ``skipped`` when there are none.

    An override must come from a principal with ``freeze:override`` or listed in the exceptions of every
    allow window. Config: ``allow_override`` (bool, default true).
    """

    type = "schedule"
    rank = STATELESS_RANK + 10
    kind = freeze.WindowKind.ALLOW
    closed_code = REASON_SCHEDULE_CLOSED
    overridden_code = REASON_SCHEDULE_OVERRIDDEN

    def open_message(self, state: freeze.EnvironmentState) -> str:
        return f"inside deployment window {', '.join(state.active_window_ids)}"

    def closed_message(self, state: freeze.EnvironmentState) -> str:
        return f"outside allowed deployment windows; {self._until(state)}"

    def closing_windows(
        self, windows: Sequence[freeze.FreezeWindow], state: freeze.EnvironmentState
    ) -> list[freeze.FreezeWindow]:
        return list(windows)


class ManualGate(Gate):
    """Passes once a person confirmed it (an entry in ``manual_confirmations`` naming the gate).

    Until then it is ``pending``: the promotion waits in ``pending_gate``. Config: ``prompt`` (text shown
    to the person), ``allowed_principals`` (when non-empty, only they can confirm).
    """

    type = "manual"
    rank = STATELESS_RANK + 20

    def validate_config(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        merged = _check_keys(self.type, config, {"prompt": "", "allowed_principals": []})
        if not isinstance(merged["prompt"], str):
            raise InvalidGateConfig("manual gate: prompt must be a string")
        allowed = merged["allowed_principals"]
        if not isinstance(allowed, list | tuple) or not all(isinstance(p, str) and p for p in allowed):
            raise InvalidGateConfig("manual gate: allowed_principals must be a list of principal ids")
        merged["allowed_principals"] = sorted(set(allowed))
        return merged

    def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        entries = inputs.get("manual_confirmations") or []
        if not isinstance(entries, list):
            raise InvalidGateInputs("manual_confirmations must be a list")
        allowed = gate.config["allowed_principals"]
        ignored = []
        for entry in entries:
            if not isinstance(entry, Mapping) or entry.get("gate") != gate.name:
                continue
            principal = entry.get("principal")
            if not isinstance(principal, str) or not principal:
                raise InvalidGateInputs("a manual confirmation needs a principal")
            if allowed and principal not in allowed:
                ignored.append(principal)
                continue
            return self.result(
                gate,
                GateStatus.PASS,
                f"confirmed by {principal}",
                details={"confirmed_by": principal, "at": entry.get("at"), "comment": entry.get("comment", "")},
            )
        details: dict[str, Any] = {"prompt": gate.config["prompt"], "allowed_principals": allowed}
        if ignored:
            details["ignored_confirmations"] = sorted(set(ignored))
        return self.result(
            gate,
            GateStatus.PENDING,
            "waiting for a manual confirmation",
            details=details,
            reason_codes=(REASON_MANUAL_PENDING,),
        )


class PolicyGate(Gate):
    """Evaluates a policy (``stella.promotion.policy``, CEL rules) over the whole inputs document.

    Fails with each failing rule's name as a reason code; a rule that errors makes the gate ``error``.
    Config: ``rules`` (list of ``{name, expr, message}``, at least one). The result's details record the
    expression language and the exact engine version that evaluated it.
    """

    type = "policy"
    rank = STATEFUL_RANK

    def validate_config(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        merged = _check_keys(self.type, config, {"rules": []})
        compiled = policy.compile_policy(merged["rules"])
        if not compiled.rules:
            raise InvalidGateConfig("policy gate: rules must hold at least one rule")
        merged["rules"] = [rule.to_dict() for rule in compiled.rules]
        return merged

    def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        compiled = policy.compile_policy(gate.config["rules"])
        outcomes = compiled.evaluate(inputs)
        details = {
            "policy_digest": compiled.digest,
            "language": policy.LANGUAGE,
            "engine": policy.ENGINE,
            "rules": [o.to_dict() for o in outcomes],
        }
        errored = [o for o in outcomes if o.status == "error"]
        failed = [o for o in outcomes if o.status == "fail"]
        if errored:
            return self.result(
                gate,
                GateStatus.ERROR,
                "; ".join(f"{o.name}: {o.message}" for o in errored),
                details=details,
                reason_codes=(REASON_POLICY_ERROR, *(o.name for o in errored), *(o.name for o in failed)),
            )
        if failed:
            return self.result(
                gate,
                GateStatus.FAIL,
                "; ".join(f"{o.name}: {o.message}" for o in failed),
                details=details,
                reason_codes=tuple(o.name for o in failed),
            )
        return self.result(gate, GateStatus.PASS, f"{len(outcomes)} rule(s) hold", details=details)


class SecurityGate(Gate):
    """Checks the scan verdict of every image digest of the release against thresholds.

    Config (defaults from the product reference): ``max_critical`` 0, ``max_high`` 3, ``max_medium`` 20,
    ``max_epss`` 0.6 (``null`` disables), ``kev_blocker`` true. A count above its maximum, a finding with an
    EPSS score above ``max_epss``, or (with ``kev_blocker``) any finding listed in CISA KEV fails the gate.
    A digest with no scan fails closed (``GATE_SECURITY_SCAN_MISSING``); a malformed scan is an ``error``.

    Scan summary per digest (``inputs.security.scans[digest]``): ``critical``, ``high``, ``medium`` (counts),
    ``epss_max`` (highest EPSS probability among findings, 0..1), ``kev`` (count of KEV-listed findings).
    """

    type = "security"
    rank = STATEFUL_RANK + 10
    defaults: ClassVar[Mapping[str, Any]] = {
        "max_critical": 0,
        "max_high": 3,
        "max_medium": 20,
        "max_epss": 0.6,
        "kev_blocker": True,
    }

    def validate_config(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        merged = _check_keys(self.type, config, self.defaults)
        for key in ("max_critical", "max_high", "max_medium"):
            if not _count(merged[key]):
                raise InvalidGateConfig(f"security gate: {key} must be an integer >= 0")
        epss = merged["max_epss"]
        if epss is not None and (isinstance(epss, bool) or not isinstance(epss, int | float) or not 0 <= epss <= 1):
            raise InvalidGateConfig("security gate: max_epss must be a probability from 0 to 1, or null")
        _check_bool(self.type, merged, "kev_blocker")
        return merged

    def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        thresholds = dict(gate.config)
        release = inputs.get("release") or {}
        components = release.get("components") if isinstance(release, Mapping) else None
        if not isinstance(components, list):
            raise InvalidGateInputs("release.components must be a list")
        digests = []
        for component in components:
            digest = component.get("digest") if isinstance(component, Mapping) else None
            if not isinstance(digest, str) or not _DIGEST.match(digest):
                raise InvalidGateInputs(f"release component digest {digest!r} is not sha256:<64 hex>")
            digests.append(digest)
        digests = sorted(set(digests))
        if not digests:
            return self.result(
                gate,
                GateStatus.FAIL,
                "the release names no image digest to check",
                details={"thresholds": thresholds},
                reason_codes=(REASON_SECURITY_NO_DIGESTS,),
            )
        security = inputs.get("security") or {}
        scans = security.get("scans") if isinstance(security, Mapping) else None
        scans = scans if isinstance(scans, Mapping) else {}
        verdicts: dict[str, Any] = {}
        codes: set[str] = set()
        invalid: set[str] = set()
        for digest in digests:
            scan = scans.get(digest)
            if scan is None:
                verdicts[digest] = {"verdict": "missing", "violations": [REASON_SECURITY_SCAN_MISSING]}
                codes.add(REASON_SECURITY_SCAN_MISSING)
                continue
            problem = self._invalid_scan(scan)
            if problem:
                verdicts[digest] = {
                    "verdict": "invalid",
                    "violations": [REASON_SECURITY_SCAN_INVALID],
                    "error": problem,
                }
                invalid.add(digest)
                continue
            violations = self._violations(scan, thresholds)
            codes.update(violations)
            verdicts[digest] = {
                "verdict": "fail" if violations else "pass",
                "violations": violations,
                "scan": {k: scan.get(k, 0) for k in ("critical", "high", "medium", "epss_max", "kev")},
            }
        details = {"thresholds": thresholds, "digests": verdicts}
        if invalid:
            return self.result(
                gate,
                GateStatus.ERROR,
                f"malformed scan result for {', '.join(sorted(invalid))}",
                details=details,
                reason_codes=(REASON_SECURITY_SCAN_INVALID, *codes),
            )
        if codes:
            failing = sorted(d for d, v in verdicts.items() if v["verdict"] != "pass")
            return self.result(
                gate,
                GateStatus.FAIL,
                f"security verdict fails for {', '.join(failing)}: {', '.join(sorted(codes))}",
                details=details,
                reason_codes=tuple(codes),
            )
        return self.result(gate, GateStatus.PASS, f"{len(digests)} image(s) within thresholds", details=details)

    @staticmethod
    def _invalid_scan(scan: Any) -> str | None:
        if not isinstance(scan, Mapping):
            return "scan result must be an object"
        for key in ("critical", "high", "medium", "kev"):
            if not _count(scan.get(key, 0)):
                return f"{key} must be an integer >= 0"
        epss = scan.get("epss_max", 0)
        if isinstance(epss, bool) or not isinstance(epss, int | float) or not math.isfinite(epss) or not 0 <= epss <= 1:
            return "epss_max must be a probability from 0 to 1"
        return None

    @staticmethod
    def _violations(scan: Mapping[str, Any], thresholds: Mapping[str, Any]) -> list[str]:
        violations = []
        for key, limit, code in (
            ("critical", "max_critical", REASON_SECURITY_CRITICAL),
            ("high", "max_high", REASON_SECURITY_HIGH),
            ("medium", "max_medium", REASON_SECURITY_MEDIUM),
        ):
            if scan.get(key, 0) > thresholds[limit]:
                violations.append(code)
        if thresholds["max_epss"] is not None and scan.get("epss_max", 0) > thresholds["max_epss"]:
            violations.append(REASON_SECURITY_EPSS)
        if thresholds["kev_blocker"] and scan.get("kev", 0) > 0:
            violations.append(REASON_SECURITY_KEV)
        return violations


class ApprovalGate(Gate):
    """N-of-M approvals, read from the approval service's summary in ``inputs.approvals``.

    ``required`` is the largest of the gate's ``required`` setting, the environment's
    ``required_approvals`` and the summary's ``required``. Any rejection fails; enough grants pass; fewer
    are ``pending``; nothing required is ``skipped``. Config: ``required`` (integer >= 0, default 0).
    """

    type = APPROVAL_GATE_TYPE
    rank = STATEFUL_RANK + 50

    def validate_config(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        merged = _check_keys(self.type, config, {"required": 0})
        if not _count(merged["required"]) or merged["required"] > 50:
            raise InvalidGateConfig("approval gate: required must be an integer from 0 to 50")
        return merged

    def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        raw = inputs.get("approvals") or {}
        if not isinstance(raw, Mapping):
            raise InvalidGateInputs("approvals must be an object {required, granted, rejected}")
        summary = ApprovalSummary.from_dict({k: raw[k] for k in ("required", "granted", "rejected") if k in raw})
        environment = inputs.get("environment") or {}
        env_required = environment.get("required_approvals", 0) if isinstance(environment, Mapping) else 0
        if not _count(env_required):
            raise InvalidGateInputs("environment.required_approvals must be an integer >= 0")
        required = max(gate.config["required"], env_required, summary.required)
        details = {"required": required, "granted": summary.granted, "rejected": summary.rejected}
        if summary.rejected > 0:
            return self.result(
                gate,
                GateStatus.FAIL,
                f"rejected by {summary.rejected} approver(s)",
                details=details,
                reason_codes=(REASON_APPROVAL_REJECTED,),
            )
        if required == 0:
            return self.result(gate, GateStatus.SKIPPED, "no approvals required", details=details)
        if summary.granted >= required:
            return self.result(
                gate, GateStatus.PASS, f"{summary.granted} of {required} approvals granted", details=details
            )
        return self.result(
            gate,
            GateStatus.PENDING,
            f"{summary.granted} of {required} approvals granted",
            details=details,
            reason_codes=(REASON_APPROVAL_PENDING,),
        )


class PluginGate(Gate):
    """A gate whose verdict an installed gate plugin gives. Config: ``{plugin: <plugin id>, config: {...}}``.

    The plugin is called by the I/O layer before the decision (in its own process, with limits); its verdict
    is stored in the inputs as ``plugin_verdicts[<gate name>] = {status, message, details, reason_codes}``,
    so the decision replays from the stored inputs alone. No verdict (the plugin was never asked) is an
    error, which denies.

    Args:
        plugins: The gate plugins the tenant has enabled, by id, each with a function listing what is wrong with
            a gate's config (empty when it fits the plugin's config schema). None checks only the config's shape:
            the registry that replays decisions, whose plugin gates were checked when their environment was saved
            (a plugin disabled since gives an ``error`` verdict, not a malformed gate).
        problems: Why a plugin id the tenant cannot use is refused (its instance is missing or disabled).
    """

    type = PLUGIN_GATE_TYPE
    rank = PLUGIN_RANK

    def __init__(
        self,
        plugins: Mapping[str, Callable[[Mapping[str, Any]], list[str]]] | None,
        problems: Callable[[str], str | None] | None = None,
    ) -> None:
        self._plugins = dict(plugins) if plugins is not None else None
        self._problems = problems

    def validate_config(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        merged = _check_keys(self.type, config, {"plugin": None, "config": {}})
        plugin_id = merged["plugin"]
        if not isinstance(plugin_id, str) or not plugin_id:
            raise InvalidGateConfig("plugin gate: config.plugin must name an installed gate plugin")
        if not isinstance(merged["config"], Mapping):
            raise InvalidGateConfig(f"plugin gate {plugin_id}: config.config must be an object")
        if self._plugins is None:
            return {"plugin": plugin_id, "config": dict(merged["config"])}
        check = self._plugins.get(plugin_id)
        if check is None:
            why = self._problems(plugin_id) if self._problems is not None else None
            enabled = ", ".join(sorted(self._plugins)) or "none"
            raise PluginGateNotEnabled(
                f"plugin gate: {why or f'no gate plugin {plugin_id!r} is enabled for this tenant'} (enabled: {enabled})"
            )
        problems = check(merged["config"])
        if problems:
            raise InvalidGateConfig(f"plugin gate {plugin_id}: config does not fit the plugin: {'; '.join(problems)}")
        return {"plugin": plugin_id, "config": dict(merged["config"])}

    def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        verdicts = inputs.get(PLUGIN_VERDICTS) or {}
        verdict = verdicts.get(gate.name) if isinstance(verdicts, Mapping) else None
        if not isinstance(verdict, Mapping):
            return self.result(
                gate,
                GateStatus.ERROR,
                f"plugin {gate.config['plugin']} gave no verdict",
                reason_codes=(REASON_PLUGIN_NO_VERDICT,),
            )
        return self.result(
            gate,
            GateStatus(verdict.get("status", GateStatus.ERROR)),
            str(verdict.get("message", "")),
            details={"plugin": gate.config["plugin"], **dict(verdict.get("details") or {})},
            reason_codes=tuple(verdict.get("reason_codes") or ()),
        )


# --------------------------------------------------------------------------------------------------
# Registry and evaluation
# --------------------------------------------------------------------------------------------------


class GateRegistry:
    """Gate types by name. Plugins register theirs next to the built-ins."""

    def __init__(self, gates: Iterable[Gate] = ()) -> None:
        self._gates: dict[str, Gate] = {}
        for gate in gates:
            self.register(gate)

    def register(self, gate: Gate, *, replace: bool = False) -> None:
        """Register ``gate`` under ``gate.type``.

        Raises:
            GateTypeAlreadyRegistered: the type is taken and ``replace`` is false.
            InvalidGateConfig: the gate has no usable type name.
        """
        gate_type = getattr(gate, "type", None)
        if not isinstance(gate_type, str) or not gate_type:
            raise InvalidGateConfig(f"{type(gate).__name__} has no gate type name")
        if gate_type in self._gates and not replace:
            raise GateTypeAlreadyRegistered(f"gate type {gate_type!r} is already registered")
        self._gates[gate_type] = gate

    def get(self, gate_type: str) -> Gate:
        """Return the gate registered under ``gate_type``.

        Raises:
            UnknownGateType: nothing is registered under the name.
        """
        try:
            return self._gates[gate_type]
        except KeyError:
            known = ", ".join(sorted(self._gates))
            raise UnknownGateType(f"unknown gate type {gate_type!r} (known: {known})") from None

    def __contains__(self, gate_type: object) -> bool:
        return gate_type in self._gates

    def types(self) -> list[str]:
        """Return the registered type names, sorted."""
        return sorted(self._gates)

    def copy(self) -> GateRegistry:
        """Return an independent registry with the same gates."""
        return GateRegistry(self._gates.values())

    def validate(self, configs: Iterable[Mapping[str, Any] | GateConfig]) -> tuple[GateConfig, ...]:
        """Validate an environment's gate list when it is saved (unknown types and bad configs raise).

        Returns:
            The configs with defaults filled in.

        Raises:
            InvalidGateConfig: a config is malformed or two gates share type and name.
            UnknownGateType: a type is not registered.
            PolicySyntaxError: a policy rule does not parse.
        """
        result = []
        seen: set[tuple[str, str]] = set()
        for raw in configs:
            config = GateConfig.from_dict(raw)
            if (config.type, config.name) in seen:
                raise InvalidGateConfig(f"gate {config.type}/{config.name} appears twice")
            seen.add((config.type, config.name))
            gate = self.get(config.type)
            result.append(GateConfig(config.type, config.name, gate.validate_config(config.config)))
        return tuple(result)

    def ordered(self, configs: Iterable[GateConfig]) -> list[GateConfig]:
        """Sort configs into evaluation order: by rank (unknown types last), then type, then name."""

        def key(config: GateConfig) -> tuple[int, str, str]:
            gate = self._gates.get(config.type)
            return (gate.rank if gate else PLUGIN_RANK + 1, config.type, config.name)

        return sorted(configs, key=key)

    def run(self, config: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        """Evaluate one gate, fail closed: any exception or invalid answer becomes status ``error``."""
        try:
            gate = self.get(config.type)
        except UnknownGateType as exc:
            return _error(config, exc.detail, REASON_UNKNOWN_TYPE)
        try:
            checked = GateConfig(config.type, config.name, gate.validate_config(config.config))
            result = gate.evaluate(checked, inputs, now)
        except DomainError as exc:
            return _error(config, exc.detail, REASON_GATE_ERROR, exc.code)
        except Exception as exc:
            # Fail closed on any provider defect: the gate denies instead of crashing the decision.
            return _error(config, f"gate raised {type(exc).__name__}: {exc}", REASON_GATE_ERROR)
        if not isinstance(result, GateResult):
            return _error(config, f"gate returned a {type(result).__name__}, not a GateResult", REASON_INVALID_RESULT)
        if (result.type, result.name) != (config.type, config.name):
            return _error(
                config,
                f"gate answered for {result.type}/{result.name} instead of {config.type}/{config.name}",
                REASON_INVALID_RESULT,
            )
        if result.status in DENYING_STATUSES and not result.reason_codes:
            # Every denial must carry a reason code so decisions stay explainable.
            return GateResult(
                type=result.type,
                name=result.name,
                status=result.status,
                message=result.message,
                details=result.details,
                reason_codes=(REASON_FAILED,),
            )
        return result


def _error(config: GateConfig, message: str, *codes: str) -> GateResult:
    return GateResult(type=config.type, name=config.name, status=GateStatus.ERROR, message=message, reason_codes=codes)


BUILTIN_GATES: Final[tuple[type[Gate], ...]] = (
    FreezeWindowGate,
    ScheduleGate,
    ManualGate,
    PolicyGate,
    SecurityGate,
    ApprovalGate,
)
"""The gate types every registry starts with."""


def default_registry(
    plugins: Mapping[str, Callable[[Mapping[str, Any]], list[str]]] | None = None,
) -> GateRegistry:
    """Return a new registry holding the built-in gates (each call gives an independent registry).

    Args:
        plugins: The installed gate plugins (see :class:`PluginGate`); the ``plugin`` gate type is registered
            when given.
    """
    registry = GateRegistry(gate_type() for gate_type in BUILTIN_GATES)
    if plugins is not None:
        registry.register(PluginGate(plugins))
    return registry


def with_plugins(
    registry: GateRegistry,
    plugins: Mapping[str, Callable[[Mapping[str, Any]], list[str]]],
    problems: Callable[[str], str | None] | None = None,
) -> GateRegistry:
    """A copy of ``registry`` whose ``plugin`` gate accepts exactly ``plugins`` (one tenant's enabled ones).

    Args:
        registry: The service's registry.
        plugins: See :class:`PluginGate`.
        problems: Why a plugin id is refused, for the error's message.
    """
    copy = registry.copy()
    copy.register(PluginGate(plugins, problems), replace=True)
    return copy


def evaluate_gates(
    gate_configs: Iterable[Mapping[str, Any] | GateConfig],
    inputs: Mapping[str, Any],
    now: datetime,
    *,
    registry: GateRegistry | None = None,
    short_circuit: bool = True,
) -> list[GateResult]:
    """Evaluate gates in order (cheap first) and return their results in evaluation order.

    Fail closed: a malformed config, an unknown type, a raising gate or a garbage answer gives an
    ``error`` result. With ``short_circuit`` (the default), the gates after the first ``fail``/``error``
    are not evaluated and are reported ``skipped``, so a frozen environment never calls an expensive gate.

    Args:
        gate_configs: The gates to evaluate (JSON or :class:`GateConfig`).
        inputs: The decision inputs (plain JSON, see the module docstring).
        now: The clock reading (aware).
        registry: The gate types; defaults to the built-ins.
        short_circuit: Skip the remaining gates after the first denial.

    Returns:
        One result per gate.
    """
    now = require_aware(now, "now")
    registry = registry or default_registry()
    plain_inputs = to_json_value(inputs)
    configs: list[GateConfig] = []
    results: list[GateResult] = []
    for index, raw in enumerate(gate_configs):
        try:
            configs.append(GateConfig.from_dict(raw))
        except DomainError as exc:
            results.append(
                GateResult(
                    type="invalid",
                    name=f"gate-{index}",
                    status=GateStatus.ERROR,
                    message=exc.detail,
                    reason_codes=(exc.code,),
                )
            )
    denied_by = next((f"{r.type}/{r.name}" for r in results), None)
    for config in registry.ordered(configs):
        if short_circuit and denied_by is not None:
            results.append(
                GateResult(
                    type=config.type,
                    name=config.name,
                    status=GateStatus.SKIPPED,
                    message=f"not evaluated: {denied_by} denied first",
                )
            )
            continue
        result = registry.run(config, plain_inputs, now)
        results.append(result)
        if result.status in DENYING_STATUSES:
            denied_by = f"{result.type}/{result.name}"
    return results
