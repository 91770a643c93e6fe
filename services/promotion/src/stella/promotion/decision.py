"""The decision record: a deterministic, replayable answer of a promotion's gates.

:func:`decide` evaluates the gates named in the inputs and returns a :class:`DecisionRecord`::

    {result: allow|deny|pending, gates: [...sorted by type, name], reasons: [stable sorted reason codes],
     approvals: [{approver, action, at, comment}], policy_digest, inputs_hash, evaluated_at}

Determinism: the inputs are first reduced to plain JSON (UTC ``Z`` timestamps, string ids), the gates
evaluate that form, results and reasons are sorted, and ``inputs_hash`` is
``"sha256:" + hex(SHA-256(canonical JSON of {"clock": now, "inputs": inputs}))`` where canonical JSON is
RFC 8785 (sorted keys, no whitespace, ES6 numbers). Running :func:`decide` again on the stored inputs and
clock reading gives an identical record, byte for byte in :meth:`DecisionRecord.to_json`.

The inputs document holds every input of the decision: ``release`` (with component digests),
``environment`` (with its config), ``freeze_windows``, ``gates`` (the gate configs to evaluate),
``approvals`` (summary and entries), ``overrides``, ``manual_confirmations``, ``security`` scans, and
anything a policy reads. ``gates`` is required; the rest depends on the gates configured.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from stella.promotion.domain.encoding import (
    canonical_json,
    format_utc,
    parse_utc,
    require_aware,
    sha256_digest,
    to_json_value,
)
from stella.promotion.domain.errors import InvalidInput
from stella.promotion.domain.outcome import APPROVAL_GATE_TYPE, TIME_WINDOW_GATE_TYPES, DecisionResult, GateOutcome
from stella.promotion.gates import DENYING_STATUSES, GateRegistry, GateResult, GateStatus, evaluate_gates
from stella.promotion.policy import policy_digest


class InvalidDecisionInputs(InvalidInput):
    """The decision inputs are not an object, lack ``gates``, or hold malformed approvals."""

    code = "GATE_DECISION_INPUTS_INVALID"
    title = "Invalid decision inputs"


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    """One approval or rejection as the decision record lists it."""

    approver: str
    action: Literal["approved", "rejected"]
    at: datetime
    comment: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return ``{approver, action, at, comment}`` with a UTC timestamp."""
        return {"approver": self.approver, "action": self.action, "at": format_utc(self.at), "comment": self.comment}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ApprovalRecord:
        """Build an entry from JSON.

        Raises:
            InvalidDecisionInputs: a field is missing or malformed.
        """
        if not isinstance(raw, Mapping):
            raise InvalidDecisionInputs("an approval entry must be an object {approver, action, at, comment}")
        approver, action, comment = raw.get("approver"), raw.get("action"), raw.get("comment") or ""
        if not isinstance(approver, str) or not approver:
            raise InvalidDecisionInputs("an approval entry needs an approver")
        if action not in ("approved", "rejected"):
            raise InvalidDecisionInputs(f"approval action must be 'approved' or 'rejected', got {action!r}")
        if not isinstance(comment, str):
            raise InvalidDecisionInputs("an approval comment must be a string")
        at = raw.get("at")
        if at is None:
            raise InvalidDecisionInputs("an approval entry needs its time (at)")
        return cls(approver=approver, action=action, at=parse_utc(at, "approval at"), comment=comment)


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """The outcome of a gate evaluation, as stored on the promotion and put into evidence."""

    result: DecisionResult
    gates: tuple[GateResult, ...]
    reasons: tuple[str, ...]
    approvals: tuple[ApprovalRecord, ...]
    policy_digest: str | None
    inputs_hash: str
    evaluated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form of the record."""
        return {
            "result": self.result.value,
            "gates": [gate.to_dict() for gate in self.gates],
            "reasons": list(self.reasons),
            "approvals": [approval.to_dict() for approval in self.approvals],
            "policy_digest": self.policy_digest,
            "inputs_hash": self.inputs_hash,
            "evaluated_at": format_utc(self.evaluated_at),
        }

    def to_json(self) -> bytes:
        """Return the record as canonical JSON (RFC 8785): byte-identical for identical records."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DecisionRecord:
        """Rebuild a record from its JSON form (what :meth:`to_dict` returns)."""
        return cls(
            result=DecisionResult(raw["result"]),
            gates=tuple(GateResult.from_dict(gate) for gate in raw["gates"]),
            reasons=tuple(raw["reasons"]),
            approvals=tuple(ApprovalRecord.from_dict(entry) for entry in raw["approvals"]),
            policy_digest=raw.get("policy_digest"),
            inputs_hash=raw["inputs_hash"],
            evaluated_at=parse_utc(raw["evaluated_at"], "evaluated_at"),
        )

    def outcome(self) -> GateOutcome:
        """Summarise the record for the promotion state machine (``Promotion.apply_gate_decision``)."""
        denying = [gate for gate in self.gates if gate.status in DENYING_STATUSES]
        time_window_only = bool(denying) and all(
            gate.type in TIME_WINDOW_GATE_TYPES and gate.status is GateStatus.FAIL for gate in denying
        )
        next_open: datetime | None = None
        if time_window_only:
            opens = [gate.details.get("next_open") for gate in denying]
            if all(isinstance(value, str) for value in opens):
                # Every closed window must have opened; re-evaluation then checks them together again.
                next_open = max(parse_utc(value, "next_open") for value in opens if isinstance(value, str))
        pending = [gate for gate in self.gates if gate.status is GateStatus.PENDING]
        approval_gates = [gate for gate in self.gates if gate.type == APPROVAL_GATE_TYPE]
        required = [gate.details.get("required") for gate in approval_gates]
        return GateOutcome(
            result=self.result,
            reasons=self.reasons,
            record=self.to_dict(),
            time_window_only=time_window_only,
            next_open=next_open,
            waiting_on=tuple(sorted({gate.type for gate in pending if gate.type != APPROVAL_GATE_TYPE})),
            approval_satisfied=any(gate.status in (GateStatus.PASS, GateStatus.OVERRIDDEN) for gate in approval_gates),
            approvals_required=max((r for r in required if isinstance(r, int)), default=0),
        )


def inputs_hash(inputs: Mapping[str, Any], now: datetime) -> str:
    """Return ``"sha256:<hex>"`` over the canonical JSON of ``{"clock": now, "inputs": inputs}``.

    Raises:
        CanonicalizationFailed: the inputs hold a value with no canonical JSON form.
    """
    return sha256_digest({"clock": require_aware(now, "now"), "inputs": inputs})


def combine(results: Iterable[GateResult]) -> DecisionResult:
    """Combine gate results: any fail/error denies, else any pending is pending, else allow."""
    statuses = {result.status for result in results}
    if statuses & DENYING_STATUSES:
        return DecisionResult.DENY
    if GateStatus.PENDING in statuses:
        return DecisionResult.PENDING
    return DecisionResult.ALLOW


def decide(inputs: Mapping[str, Any], now: datetime, *, registry: GateRegistry | None = None) -> DecisionRecord:
    """Evaluate the gates listed in ``inputs["gates"]`` and build the decision record.

    Deterministic: the same inputs and ``now`` give an equal record and byte-identical
    :meth:`DecisionRecord.to_json`. No gate can make it raise (gate failures become ``error`` results and
    deny); it raises only for inputs that are not a JSON object with a ``gates`` list.

    Args:
        inputs: Every input of the decision (see the module docstring).
        now: The clock reading; part of the hashed inputs and the record's ``evaluated_at``.
        registry: Gate types to use; defaults to the built-in gates.

    Raises:
        InvalidDecisionInputs: ``inputs`` is not an object, ``gates`` is not a list, or approvals entries
            are malformed.
        CanonicalizationFailed: the inputs hold a value with no canonical JSON form.
    """
    now = require_aware(now, "now")
    if not isinstance(inputs, Mapping):
        raise InvalidDecisionInputs("decision inputs must be an object")
    plain = to_json_value(inputs)
    gate_configs = plain.get("gates")
    if not isinstance(gate_configs, list):
        raise InvalidDecisionInputs("decision inputs need a 'gates' list (empty when no gate applies)")
    approvals = _approval_entries(plain.get("approvals"))
    results = evaluate_gates(gate_configs, plain, now, registry=registry)
    gates = tuple(sorted(results, key=lambda result: (result.type, result.name)))
    reasons = tuple(sorted({code for result in gates for code in result.reason_codes}))
    return DecisionRecord(
        result=combine(gates),
        gates=gates,
        reasons=reasons,
        approvals=approvals,
        policy_digest=_policy_digest(gate_configs),
        inputs_hash=inputs_hash(plain, now),
        evaluated_at=now,
    )


def recheck_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``inputs`` whose ``gates`` keep only the time-sensitive ones (freeze, schedule).

    Used when a deployment starts: the reference re-evaluates only those gates, and storing these inputs
    keeps the re-check replayable like any other decision.
    """
    plain = to_json_value(inputs)
    if not isinstance(plain, dict):
        raise InvalidDecisionInputs("decision inputs must be an object")
    gate_configs = plain.get("gates")
    if not isinstance(gate_configs, list):
        raise InvalidDecisionInputs("decision inputs need a 'gates' list")
    plain["gates"] = [
        gate for gate in gate_configs if isinstance(gate, Mapping) and gate.get("type") in TIME_WINDOW_GATE_TYPES
    ]
    return plain


def _approval_entries(raw: Any) -> tuple[ApprovalRecord, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise InvalidDecisionInputs("approvals must be an object {required, granted, rejected, entries}")
    entries = raw.get("entries") or []
    if not isinstance(entries, list):
        raise InvalidDecisionInputs("approvals.entries must be a list")
    records = [ApprovalRecord.from_dict(entry) for entry in entries]
    return tuple(sorted(records, key=lambda r: (r.at, r.approver, r.action, r.comment)))


def _policy_digest(gate_configs: list[Any]) -> str | None:
    """Digest of the rules of every policy gate (in gate name order), or None without a policy gate.

    Rules of a malformed policy gate are left out (that gate reports ``error`` anyway), so the digest never
    makes :func:`decide` raise.
    """
    policies = sorted(
        (
            gate
            for gate in gate_configs
            if isinstance(gate, Mapping) and gate.get("type") == "policy" and isinstance(gate.get("config"), Mapping)
        ),
        key=lambda gate: str(gate.get("name", "policy")),
    )
    if not policies:
        return None
    rules: list[Any] = []
    for gate in policies:
        gate_rules = gate["config"].get("rules")
        if isinstance(gate_rules, list):
            rules.extend(gate_rules)
    try:
        return policy_digest(rules)
    except InvalidInput:
        return sha256_digest([gate["config"] for gate in policies])
