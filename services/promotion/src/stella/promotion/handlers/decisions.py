"""The inputs of a gate decision: the environment's promotion policy and gates, validated, and the documents
(approvals, scan results, overrides) a decision is made from and hashed with.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from stella.contracts import approval as a
from stella.contracts import promotion as c
from stella.promotion import freeze, repo
from stella.promotion.domain.encoding import sha256_digest, to_json_value
from stella.promotion.domain.environment import Environment
from stella.promotion.domain.errors import InvalidEnvironment
from stella.promotion.domain.outcome import APPROVAL_GATE_TYPE
from stella.promotion.gates import PLUGIN_GATE_TYPE, GateRegistry

_POLICY_KEYS: Final = frozenset({"workflow_template", "approver_groups"})


_TEMPLATE_NAME: Final = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")


_BUILTIN_WINDOW_GATES: Final = ("freeze-window", "schedule")


def validate_promotion_policy(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate an environment's ``promotion_policy`` and return its normalised form.

    Keys: ``workflow_template`` (the template its promotions run; default standard-promotion) and
    ``approver_groups`` (groups whose members may approve; empty: anyone with the permission).

    Raises:
        InvalidEnvironment: listing every invalid field.
    """
    problems: list[dict[str, Any]] = []
    for key in sorted(set(raw) - _POLICY_KEYS):
        problems.append({"loc": ["promotion_policy", key], "msg": "unknown field"})
    policy: dict[str, Any] = {}
    template = raw.get("workflow_template")
    if template is not None:
        if not isinstance(template, str) or not _TEMPLATE_NAME.match(template):
            problems.append({"loc": ["promotion_policy", "workflow_template"], "msg": "must be a template name"})
        else:
            policy["workflow_template"] = template
    groups = raw.get("approver_groups", [])
    if (
        not isinstance(groups, list)
        or len(groups) > 100
        or not all(isinstance(g, str) and 0 < len(g) <= 200 for g in groups)
    ):
        problems.append(
            {"loc": ["promotion_policy", "approver_groups"], "msg": "must be a list of at most 100 group names"}
        )
    else:
        policy["approver_groups"] = sorted(set(groups))
    if problems:
        raise InvalidEnvironment(
            "; ".join(".".join(map(str, p["loc"])) + ": " + p["msg"] for p in problems), errors=problems
        )
    return policy


def validate_environment(registry: GateRegistry, environment: Environment) -> Environment:
    """Validate the environment's gates through the gate registry and return it with their defaults filled in.

    Raises:
        gates.UnknownGateType, gates.InvalidGateConfig, policy.PolicySyntaxError: a gate is invalid.
    """
    gates = tuple(g.to_dict() for g in registry.validate(environment.config.gates))
    # Only the gates change: every other field (the deployment strategy too) is kept as validated.
    return environment.updated(config=dataclasses.replace(environment.config, gates=gates))


def required_approvals_for(environment: Environment) -> int:
    """Approvals a promotion into ``environment`` needs: the environment's count or an approval gate's, if larger."""
    gate_counts = [
        g.get("config", {}).get("required", 0) for g in environment.config.gates if g.get("type") == "approval"
    ]
    return max([environment.required_approvals, *(n for n in gate_counts if isinstance(n, int))])


def effective_gates(
    registry: GateRegistry,
    configured: Iterable[Mapping[str, Any]],
    required_approvals: int,
    *,
    has_allow_windows: bool,
) -> list[dict[str, Any]]:
    """The gates a promotion is decided by: the environment's, plus the built-in ones it does not configure.

    The freeze-window gate always applies, the schedule gate when the environment has deployment (allow)
    windows, the approval gate when approvals are required (so the record shows them). An environment may
    configure any of them itself to change its settings.
    """
    gates = [dict(g) for g in configured]
    present = {g["type"] for g in gates}
    builtin = [t for t in ("freeze-window", "schedule") if t not in present]
    if not has_allow_windows:
        builtin = [t for t in builtin if t != "schedule"]
    if required_approvals > 0 and APPROVAL_GATE_TYPE not in present:
        builtin.append(APPROVAL_GATE_TYPE)
    return [g.to_dict() for g in registry.validate({"type": t, "name": t} for t in builtin)] + gates


def approvals_document(required: int, votes: Sequence[a.VoteView] = ()) -> dict[str, Any]:
    """The ``approvals`` input of a decision: counts of distinct principals and every vote."""
    granted = {v.approver_id for v in votes if v.action is a.VoteAction.APPROVED}
    rejected = {v.approver_id for v in votes if v.action is a.VoteAction.REJECTED}
    return {
        "required": required,
        "granted": len(granted),
        "rejected": len(rejected),
        "entries": [
            {"approver": str(v.approver_id), "action": v.action.value, "at": v.at, "comment": v.comment} for v in votes
        ],
    }


def scan_document(scan: c.ScanResultView) -> dict[str, Any]:
    """A stored scan verdict in the shape the security gate reads."""
    return {
        "critical": scan.critical,
        "high": scan.high,
        "medium": scan.medium,
        "low": scan.low,
        "epss_max": scan.max_epss,
        "kev": 1 if scan.kev else 0,
        "scanner": scan.scanner,
        "scanned_at": scan.scanned_at,
    }


def overrides_document(override: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The ``overrides`` input: a freeze override lifts the freeze-window and the schedule gate."""
    if override is None:
        return []
    return [{"gate": gate, **override} for gate in _BUILTIN_WINDOW_GATES]


def decision_inputs(
    stored: repo.StoredPromotion,
    environment: Environment,
    windows: Sequence[freeze.FreezeWindow],
    scans: Mapping[str, c.ScanResultView],
    approvals: Mapping[str, Any],
    gates: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Every input of a promotion's decision, as plain JSON (what is stored and replayed).

    The environment's approval settings are the promotion's (copied when it was requested), so an edit of
    the environment cannot ask a promotion in flight for more approvals than its approval step collects.
    """
    p = stored.promotion
    digests = sorted({component["digest"] for component in stored.release_components})
    document = {
        "promotion": {
            "id": p.id,
            "release_id": p.release_id,
            "source_environment_id": p.source_environment_id,
            "target_environment_id": p.target_environment_id,
            "requested_by": p.requested_by,
            "requested_at": p.requested_at,
            "reason": stored.reason,
        },
        "release": {"id": p.release_id, "name": stored.release_name, "components": stored.release_components},
        "environment": {
            **environment.to_dict(),
            "required_approvals": p.required_approvals,
            "require_sod": p.require_sod,
        },
        "freeze_windows": [window.to_dict() for window in sorted(windows, key=lambda x: x.id)],
        "gates": list(gates),
        "security": {"scans": {d: scan_document(scans[d]) for d in digests if d in scans}},
        "approvals": dict(approvals),
        "overrides": overrides_document(stored.freeze_override),
        "manual_confirmations": [],
    }
    return to_json_value(document)


@dataclasses.dataclass(frozen=True)
class PluginVerdicts:
    """Verdicts of gate plugins asked before a transaction, and the plugin gates they were asked for."""

    gates: list[dict[str, Any]]
    verdicts: dict[str, Any]


def plugin_gates_of(gates: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ``plugin`` gates among a promotion's effective gates (the ones whose verdicts are asked)."""
    return [dict(g) for g in gates if g.get("type") == PLUGIN_GATE_TYPE]


def decision_hash(record: Mapping[str, Any]) -> str:
    """``sha256:`` of the canonical JSON of a decision record."""
    return sha256_digest(record)
