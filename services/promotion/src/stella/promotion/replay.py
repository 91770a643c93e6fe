"""Replaying a recorded decision from its inputs, for the offline evidence verifier.

A ``release_decision`` evidence packet carries the promotion's decision record and the inputs it was computed
from (``decision.inputs``) at ``decision.evaluated_at``. :func:`replay_decision` runs :func:`decide` on them
again and returns the record it gives, so a verifier can compare it, field by field, with the recorded one.

The evidence package does not import the promotion service: this function is registered as the entry point
``promotion`` of the group ``stella.evidence.replay`` (see this package's ``pyproject.toml``), which
``stella-evidence-verify --replay`` loads when the promotion package is installed next to it. The module is
pure (no I/O, no clock), like the gate code it runs.

Plugin gates: a plugin's verdict was asked before the decision and is stored in the inputs
(``plugin_verdicts``); replaying reads that verdict and does not run the plugin again, so every plugin named
by the inputs' gates is accepted as installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stella.promotion.decision import decide
from stella.promotion.domain.encoding import parse_utc
from stella.promotion.gates import PLUGIN_GATE_TYPE, default_registry


def _accept_any_config(config: Mapping[str, Any]) -> list[str]:
    return []


def replay_decision(inputs: Mapping[str, Any], evaluated_at: str) -> dict[str, Any]:
    """Decide again from recorded inputs at the recorded clock reading and return the record's JSON form.

    Args:
        inputs: The decision inputs as recorded (``decision.inputs`` of a packet).
        evaluated_at: The recorded clock reading (RFC 3339, ``decision.evaluated_at``).

    Returns:
        The decision record (``{result, gates, reasons, approvals, policy_digest, inputs_hash, evaluated_at}``)
        the gates give now for those inputs.

    Raises:
        InvalidInput: the inputs are not a decision's inputs, or the clock reading is not a timestamp.
    """
    gates = inputs.get("gates") if isinstance(inputs, Mapping) else None
    plugins = {
        str(gate["config"]["plugin"]): _accept_any_config
        for gate in (gates if isinstance(gates, list) else [])
        if isinstance(gate, Mapping)
        and gate.get("type") == PLUGIN_GATE_TYPE
        and isinstance(gate.get("config"), Mapping)
        and isinstance(gate["config"].get("plugin"), str)
    }
    registry = default_registry(plugins)
    return decide(inputs, parse_utc(evaluated_at, "evaluated_at"), registry=registry).to_dict()
