"""The ``plugin`` gate: configs checked against the tenant's enabled plugins, verdicts read from the inputs."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from stella.promotion.gates import (
    PLUGIN_VERDICTS,
    REASON_PLUGIN_NO_VERDICT,
    GateStatus,
    InvalidGateConfig,
    PluginGate,
    PluginGateNotEnabled,
    UnknownGateType,
    default_registry,
    evaluate_gates,
    with_plugins,
)

NOW = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)


def needs_url(config: Mapping[str, Any]) -> list[str]:
    return [] if isinstance(config.get("url"), str) else ["url is required"]


REGISTRY = default_registry({"change-ticket": needs_url})
GATE = {"type": "plugin", "name": "change", "config": {"plugin": "change-ticket", "config": {"url": "http://t"}}}


def test_without_installed_plugins_there_is_no_plugin_gate_type() -> None:
    with pytest.raises(UnknownGateType):
        default_registry().validate([GATE])


def test_a_valid_plugin_gate_is_accepted() -> None:
    (config,) = REGISTRY.validate([GATE])
    assert config.config == {"plugin": "change-ticket", "config": {"url": "http://t"}}


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"plugin": "nope"}, "no gate plugin 'nope' is enabled for this tenant"),
        ({}, "must name an installed gate plugin"),
        ({"plugin": "change-ticket", "config": {}}, "url is required"),
        ({"plugin": "change-ticket", "config": {"url": "x"}, "extra": 1}, "unknown setting"),
    ],
)
def test_an_invalid_plugin_gate_is_refused_at_save(config: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidGateConfig, match=words):
        REGISTRY.validate([{"type": "plugin", "name": "change", "config": config}])


def test_a_tenants_registry_refuses_a_plugin_it_has_not_enabled_with_the_reason() -> None:
    replaying = default_registry()
    replaying.register(PluginGate(None))
    # The registry decisions replay with checks only the shape: the tenant's plugins were checked at save.
    assert replaying.validate([GATE])[0].config["plugin"] == "change-ticket"
    tenants = with_plugins(replaying, {}, lambda plugin_id: f"plugin {plugin_id!r} is disabled for this tenant")
    with pytest.raises(PluginGateNotEnabled, match="is disabled for this tenant") as refused:
        tenants.validate([GATE])
    assert (refused.value.status, refused.value.code) == (422, "GATE_PLUGIN_NOT_ENABLED")
    assert replaying.validate([GATE])  # the service's registry is unchanged


def _evaluate(verdicts: Mapping[str, Any] | None) -> list[Any]:
    inputs: dict[str, Any] = {} if verdicts is None else {PLUGIN_VERDICTS: verdicts}
    return evaluate_gates([GATE], inputs, NOW, registry=REGISTRY)


def test_the_plugins_verdict_is_the_gates_result() -> None:
    (allowed,) = _evaluate({"change": {"status": "pass", "message": "CHG-1 approved", "details": {"ticket": "CHG-1"}}})
    assert (allowed.status, allowed.message) == (GateStatus.PASS, "CHG-1 approved")
    assert allowed.details == {"plugin": "change-ticket", "ticket": "CHG-1"}
    (denied,) = _evaluate({"change": {"status": "fail", "message": "pending", "reason_codes": ["GATE_PLUGIN_DENIED"]}})
    assert (denied.status, denied.reason_codes) == (GateStatus.FAIL, ("GATE_PLUGIN_DENIED",))


def test_no_verdict_denies() -> None:
    (result,) = _evaluate(None)
    assert (result.status, result.reason_codes) == (GateStatus.ERROR, (REASON_PLUGIN_NO_VERDICT,))


def test_a_garbled_verdict_denies() -> None:
    (result,) = _evaluate({"change": {"status": "splendid"}})
    assert result.status is GateStatus.ERROR
