"""Gates: registry, ordering, fail-closed evaluation and every built-in gate."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from stella.promotion.gates import (
    PLUGIN_RANK,
    Gate,
    GateConfig,
    GateRegistry,
    GateResult,
    GateStatus,
    GateTypeAlreadyRegistered,
    InvalidGateConfig,
    InvalidGateResult,
    UnknownGateType,
    default_registry,
    evaluate_gates,
)
from stella.promotion.policy import PolicySyntaxError

SATURDAY = datetime(2025, 3, 29, 12, 0, tzinfo=UTC)  # inside the Berlin weekend freeze
TUESDAY = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)  # 12:00 CEST, office hours
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64

WEEKEND = {
    "id": "weekend",
    "kind": "deny",
    "rrule": "FREQ=WEEKLY;BYDAY=FR",
    "dtstart": "2025-01-03T16:00:00",
    "duration": "PT64H",
    "timezone": "Europe/Berlin",
    "reason": "weekend freeze",
    "exceptions": ["alice"],
}
OFFICE_HOURS = {
    "id": "office-hours",
    "kind": "allow",
    "rrule": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH",
    "dtstart": "2025-01-06T09:00:00",
    "duration": "PT8H",
    "timezone": "Europe/Berlin",
}


def inputs(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "release": {
            "id": "rel-1",
            "name": "shop-2025.03",
            "components": [{"name": "api", "digest": DIGEST_A}, {"name": "web", "digest": DIGEST_B}],
        },
        "environment": {"id": "env-prod", "name": "prod", "required_approvals": 0},
        "freeze_windows": [WEEKEND],
        "security": {
            "scans": {
                DIGEST_A: {"critical": 0, "high": 1, "medium": 4, "epss_max": 0.2, "kev": 0},
                DIGEST_B: {"critical": 0, "high": 0, "medium": 0, "epss_max": 0.0, "kev": 0},
            }
        },
        "approvals": {"required": 0, "granted": 0, "rejected": 0},
    }
    document.update(overrides)
    return document


def run(gate: Mapping[str, Any], document: dict[str, Any] | None = None, now: datetime = SATURDAY) -> GateResult:
    (result,) = evaluate_gates([gate], inputs() if document is None else document, now)
    return result


class ExplodingGate(Gate):
    """A plugin gate whose provider fails."""

    type = "exploding"

    def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        raise RuntimeError("provider unreachable")


class GarbageGate(Gate):
    """A plugin gate that answers something that is not a GateResult."""

    type = "garbage"

    def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        return {"status": "pass"}  # type: ignore[return-value]


class ImpostorGate(Gate):
    """A plugin gate that answers in the name of another gate."""

    type = "impostor"

    def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        return GateResult(type="freeze-window", name="freeze-window", status=GateStatus.PASS)


class SilentFailGate(Gate):
    """A plugin gate that fails without giving a reason code."""

    type = "silent"

    def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        return self.result(gate, GateStatus.FAIL, "no")


class BadStatusGate(Gate):
    """A plugin gate that invents a status."""

    type = "bad-status"

    def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        return GateResult(type=gate.type, name=gate.name, status="maybe")  # type: ignore[arg-type]


class TicketGate(Gate):
    """A plugin gate passing when the change ticket in the inputs is approved."""

    type = "ticket"

    def validate_config(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        if set(config) - {"system"}:
            raise InvalidGateConfig("ticket gate: only 'system' is allowed")
        return {"system": config.get("system", "jira")}

    def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
        approved = inputs.get("ticket", {}).get("approved") is True
        if approved:
            return self.result(gate, GateStatus.PASS, "ticket approved", details={"system": gate.config["system"]})
        return self.result(gate, GateStatus.FAIL, "ticket not approved", reason_codes=("TICKET_NOT_APPROVED",))


def plugin_registry() -> GateRegistry:
    registry = default_registry()
    for gate in (ExplodingGate(), GarbageGate(), ImpostorGate(), SilentFailGate(), BadStatusGate(), TicketGate()):
        registry.register(gate)
    return registry


class TestRegistryAndOrder:
    def test_builtins_are_registered(self) -> None:
        assert default_registry().types() == ["approval", "freeze-window", "manual", "policy", "schedule", "security"]

    def test_registries_are_independent(self) -> None:
        registry = default_registry()
        registry.register(TicketGate())
        assert "ticket" in registry
        assert "ticket" not in default_registry()
        assert "ticket" in registry.copy()

    def test_duplicate_type_is_refused_unless_replacing(self) -> None:
        registry = default_registry()
        registry.register(TicketGate())
        with pytest.raises(GateTypeAlreadyRegistered) as info:
            registry.register(TicketGate())
        assert (info.value.code, info.value.status) == ("GATE_TYPE_CONFLICT", 409)
        registry.register(TicketGate(), replace=True)

    def test_unknown_type_lookup(self) -> None:
        with pytest.raises(UnknownGateType, match="unknown gate type 'nope'"):
            default_registry().get("nope")

    def test_cheap_gates_run_first_then_stateful_then_plugins(self) -> None:
        configs: list[dict[str, Any]] = [
            {"type": "ticket", "name": "change"},
            {"type": "approval"},
            {"type": "security"},
            {"type": "policy", "name": "b", "config": {"rules": [{"name": "r", "expr": "true"}]}},
            {"type": "policy", "name": "a", "config": {"rules": [{"name": "r", "expr": "true"}]}},
            {"type": "manual", "name": "go"},
            {"type": "schedule"},
            {"type": "freeze-window"},
        ]
        document = inputs(
            freeze_windows=[], manual_confirmations=[{"gate": "go", "principal": "bob"}], ticket={"approved": True}
        )
        results = evaluate_gates(configs, document, TUESDAY, registry=plugin_registry())
        assert [(r.type, r.name) for r in results] == [
            ("freeze-window", "freeze-window"),
            ("schedule", "schedule"),
            ("manual", "go"),
            ("policy", "a"),
            ("policy", "b"),
            ("security", "security"),
            ("approval", "approval"),
            ("ticket", "change"),
        ]
        assert [r.status for r in results] == [
            GateStatus.PASS,
            GateStatus.SKIPPED,
            GateStatus.PASS,
            GateStatus.PASS,
            GateStatus.PASS,
            GateStatus.PASS,
            GateStatus.SKIPPED,
            GateStatus.PASS,
        ]

    def test_gates_after_a_denial_are_skipped(self) -> None:
        results = evaluate_gates(
            [{"type": "security"}, {"type": "freeze-window"}, {"type": "exploding"}],
            inputs(),
            SATURDAY,
            registry=plugin_registry(),
        )
        assert [(r.type, r.status) for r in results] == [
            ("freeze-window", GateStatus.FAIL),
            ("security", GateStatus.SKIPPED),
            ("exploding", GateStatus.SKIPPED),
        ]
        assert results[1].message == "not evaluated: freeze-window/freeze-window denied first"
        assert results[1].reason_codes == ()

    def test_without_short_circuit_every_gate_runs(self) -> None:
        results = evaluate_gates(
            [{"type": "security"}, {"type": "freeze-window"}], inputs(), SATURDAY, short_circuit=False
        )
        assert [r.status for r in results] == [GateStatus.FAIL, GateStatus.PASS]

    def test_validate_fills_defaults_and_refuses_bad_configs(self) -> None:
        registry = default_registry()
        (security,) = registry.validate([{"type": "security", "config": {"max_high": 5}}])
        assert security == GateConfig(
            "security",
            "security",
            {"max_critical": 0, "max_high": 5, "max_medium": 20, "max_epss": 0.6, "kev_blocker": True},
        )
        with pytest.raises(UnknownGateType):
            registry.validate([{"type": "nope"}])
        with pytest.raises(InvalidGateConfig, match="appears twice"):
            registry.validate([{"type": "manual"}, {"type": "manual"}])
        with pytest.raises(InvalidGateConfig, match="unknown setting"):
            registry.validate([{"type": "freeze-window", "config": {"colour": "red"}}])
        with pytest.raises(PolicySyntaxError, match="rule 'r'"):
            registry.validate([{"type": "policy", "config": {"rules": [{"name": "r", "expr": "1 =="}]}}])


class TestFailClosed:
    @pytest.mark.parametrize(
        ("gate_type", "code", "message"),
        [
            ("exploding", "GATE_PROVIDER_ERROR", "gate raised RuntimeError: provider unreachable"),
            ("garbage", "GATE_INVALID_RESULT", "gate returned a dict, not a GateResult"),
            (
                "impostor",
                "GATE_INVALID_RESULT",
                "answered for freeze-window/freeze-window instead of impostor/impostor",
            ),
            ("bad-status", "GATE_INVALID_RESULT", "unknown status 'maybe'"),
            ("unheard-of", "GATE_UNKNOWN_TYPE", "unknown gate type 'unheard-of'"),
        ],
    )
    def test_defective_gate_yields_error(self, gate_type: str, code: str, message: str) -> None:
        (result,) = evaluate_gates([{"type": gate_type}], inputs(), SATURDAY, registry=plugin_registry())
        assert result.status is GateStatus.ERROR
        assert code in result.reason_codes
        assert message in result.message

    def test_denial_without_reason_code_gets_one(self) -> None:
        (result,) = evaluate_gates([{"type": "silent"}], inputs(), SATURDAY, registry=plugin_registry())
        assert (result.status, result.reason_codes) == (GateStatus.FAIL, ("GATE_FAILED",))

    def test_invalid_gate_config_yields_error_not_an_exception(self) -> None:
        (result,) = evaluate_gates(
            [{"type": "ticket", "config": {"priority": 1}}], inputs(), SATURDAY, registry=plugin_registry()
        )
        assert result.status is GateStatus.ERROR
        assert result.reason_codes == ("GATE_CONFIG_INVALID", "GATE_PROVIDER_ERROR")

    def test_malformed_gate_entry_yields_error_and_stops_the_rest(self) -> None:
        results = evaluate_gates([{"name": "typeless"}, {"type": "freeze-window"}], inputs(), TUESDAY)
        assert [(r.type, r.status) for r in results] == [
            ("invalid", GateStatus.ERROR),
            ("freeze-window", GateStatus.SKIPPED),
        ]
        assert results[0].reason_codes == ("GATE_CONFIG_INVALID",)

    def test_malformed_freeze_windows_in_inputs_yield_error(self) -> None:
        result = run({"type": "freeze-window"}, inputs(freeze_windows=[{**WEEKEND, "timezone": "Nowhere/City"}]))
        assert result.status is GateStatus.ERROR
        assert "ENV_FREEZE_TIMEZONE_UNKNOWN" in result.reason_codes

    def test_gate_result_validates_its_fields(self) -> None:
        with pytest.raises(InvalidGateResult):
            GateResult(type="x", name="x", status=GateStatus.FAIL, reason_codes=("has space",))
        with pytest.raises(InvalidGateResult):
            GateResult(type="", name="x", status=GateStatus.PASS)
        with pytest.raises(InvalidGateResult, match="details are not JSON"):
            GateResult(type="x", name="x", status=GateStatus.PASS, details={"at": datetime(2025, 1, 1)})

    def test_gate_result_round_trips_and_normalises_details(self) -> None:
        result = GateResult(
            type="x",
            name="y",
            status=GateStatus.FAIL,
            details={"at": SATURDAY},
            reason_codes=("B", "A", "B"),
        )
        assert result.details == {"at": "2025-03-29T12:00:00Z"}
        assert result.reason_codes == ("A", "B")
        assert GateResult.from_dict(result.to_dict()) == result


class TestFreezeWindowGate:
    def test_fails_inside_the_freeze_with_next_open(self) -> None:
        result = run({"type": "freeze-window"})
        assert result.status is GateStatus.FAIL
        assert result.reason_codes == ("GATE_FREEZE_ACTIVE",)
        assert result.details["next_open"] == "2025-03-31T06:00:00Z"
        assert result.details["active_window_ids"] == ["weekend"]
        assert "opens at 2025-03-31T06:00:00Z" in result.message

    def test_passes_outside_the_freeze(self) -> None:
        result = run({"type": "freeze-window"}, now=TUESDAY)
        assert result.status is GateStatus.PASS
        assert result.details["next_close"] == "2025-04-04T14:00:00Z"

    def test_allow_windows_do_not_concern_the_freeze_gate(self) -> None:
        assert run({"type": "freeze-window"}, inputs(freeze_windows=[OFFICE_HOURS])).status is GateStatus.PASS

    def test_override_by_an_exception_principal(self) -> None:
        override = {
            "gate": "freeze-window",
            "principal": "alice",
            "reason": "INC-42 hotfix",
            "at": "2025-03-29T11:55:00Z",
        }
        result = run({"type": "freeze-window"}, inputs(overrides=[override]))
        assert result.status is GateStatus.OVERRIDDEN
        assert result.reason_codes == ("GATE_FREEZE_OVERRIDDEN",)
        assert result.details["override"] == {
            "principal": "alice",
            "reason": "INC-42 hotfix",
            "has_override_permission": False,
            "at": "2025-03-29T11:55:00Z",
        }

    def test_override_by_a_principal_with_the_permission(self) -> None:
        override = {"gate": "freeze-window", "principal": "carol", "reason": "hotfix", "has_override_permission": True}
        assert run({"type": "freeze-window"}, inputs(overrides=[override])).status is GateStatus.OVERRIDDEN

    def test_override_by_anybody_else_is_refused(self) -> None:
        override = {"gate": "freeze-window", "principal": "mallory", "reason": "because"}
        result = run({"type": "freeze-window"}, inputs(overrides=[override]))
        assert result.status is GateStatus.FAIL
        assert result.reason_codes == ("GATE_FREEZE_ACTIVE", "GATE_FREEZE_OVERRIDE_FORBIDDEN")
        assert result.details["override_refused"]["principal"] == "mallory"

    def test_override_without_reason_is_refused(self) -> None:
        override = {"gate": "freeze-window", "principal": "alice", "reason": " "}
        result = run({"type": "freeze-window"}, inputs(overrides=[override]))
        assert result.status is GateStatus.FAIL
        assert "GATE_OVERRIDE_REASON_REQUIRED" in result.reason_codes

    def test_override_for_another_gate_name_or_type_is_ignored(self) -> None:
        others = [
            {"gate": "freeze-window", "name": "other", "principal": "alice", "reason": "x"},
            {"gate": "schedule", "principal": "alice", "reason": "x"},
        ]
        assert run({"type": "freeze-window"}, inputs(overrides=others)).status is GateStatus.FAIL

    def test_override_disabled_by_config(self) -> None:
        override = {"gate": "freeze-window", "principal": "alice", "reason": "INC-42"}
        gate = {"type": "freeze-window", "config": {"allow_override": False}}
        assert run(gate, inputs(overrides=[override])).status is GateStatus.FAIL

    def test_malformed_override_is_an_error(self) -> None:
        override = {"gate": "freeze-window", "principal": "alice", "reason": "x", "has_override_permission": "yes"}
        result = run({"type": "freeze-window"}, inputs(overrides=[override]))
        assert result.status is GateStatus.ERROR
        assert "GATE_INPUTS_INVALID" in result.reason_codes


class TestScheduleGate:
    def test_skipped_without_allow_windows(self) -> None:
        assert run({"type": "schedule"}).status is GateStatus.SKIPPED

    def test_fails_outside_allowed_windows(self) -> None:
        result = run({"type": "schedule"}, inputs(freeze_windows=[OFFICE_HOURS]))
        assert result.status is GateStatus.FAIL
        assert result.reason_codes == ("GATE_SCHEDULE_CLOSED",)
        assert result.details["next_open"] == "2025-03-31T07:00:00Z"

    def test_passes_inside_an_allowed_window(self) -> None:
        result = run({"type": "schedule"}, inputs(freeze_windows=[OFFICE_HOURS]), now=TUESDAY)
        assert result.status is GateStatus.PASS
        assert result.details["next_close"] == "2025-04-01T15:00:00Z"

    def test_override_needs_the_permission_or_an_exception(self) -> None:
        override = {"gate": "schedule", "principal": "alice", "reason": "urgent"}
        assert run({"type": "schedule"}, inputs(freeze_windows=[OFFICE_HOURS], overrides=[override])).status is (
            GateStatus.FAIL
        )
        allowed = [{**OFFICE_HOURS, "exceptions": ["alice"]}]
        result = run({"type": "schedule"}, inputs(freeze_windows=allowed, overrides=[override]))
        assert result.status is GateStatus.OVERRIDDEN
        assert result.reason_codes == ("GATE_SCHEDULE_OVERRIDDEN",)


class TestManualGate:
    def test_pending_until_confirmed(self) -> None:
        result = run({"type": "manual", "name": "smoke-test", "config": {"prompt": "Smoke test done?"}})
        assert result.status is GateStatus.PENDING
        assert result.reason_codes == ("GATE_MANUAL_PENDING",)
        assert result.details["prompt"] == "Smoke test done?"

    def test_passes_with_a_confirmation_for_this_gate(self) -> None:
        confirmations = [
            {"gate": "other", "principal": "eve"},
            {"gate": "smoke-test", "principal": "bob", "at": "2025-03-29T11:00:00Z", "comment": "ok"},
        ]
        result = run({"type": "manual", "name": "smoke-test"}, inputs(manual_confirmations=confirmations))
        assert result.status is GateStatus.PASS
        assert result.details == {"confirmed_by": "bob", "at": "2025-03-29T11:00:00Z", "comment": "ok"}

    def test_only_allowed_principals_may_confirm(self) -> None:
        gate = {"type": "manual", "name": "qa", "config": {"allowed_principals": ["qa-lead"]}}
        result = run(gate, inputs(manual_confirmations=[{"gate": "qa", "principal": "dev"}]))
        assert result.status is GateStatus.PENDING
        assert result.details["ignored_confirmations"] == ["dev"]
        ok = run(gate, inputs(manual_confirmations=[{"gate": "qa", "principal": "qa-lead"}]))
        assert ok.status is GateStatus.PASS


class TestPolicyGate:
    RULES = [
        {
            "name": "no-latest",
            "expr": 'release.components.all(c, !has(c.tag) || c.tag != "latest")',
            "message": "pin tags",
        },
        {"name": "prod-name", "expr": 'environment.name == "prod"'},
    ]

    def test_passes_when_every_rule_holds(self) -> None:
        result = run({"type": "policy", "config": {"rules": self.RULES}})
        assert result.status is GateStatus.PASS
        assert result.details["policy_digest"].startswith("sha256:")

    def test_fails_with_each_failing_rule_name_as_reason_code(self) -> None:
        document = inputs(
            release={"components": [{"name": "web", "digest": DIGEST_B, "tag": "latest"}]},
            environment={"name": "staging"},
        )
        result = run({"type": "policy", "config": {"rules": self.RULES}}, document)
        assert result.status is GateStatus.FAIL
        assert result.reason_codes == ("no-latest", "prod-name")
        assert "no-latest: pin tags" in result.message

    def test_rule_that_errors_makes_the_gate_error(self) -> None:
        rules = [*self.RULES, {"name": "typo", "expr": "size(release.componets) > 0"}]
        result = run({"type": "policy", "config": {"rules": rules}})
        assert result.status is GateStatus.ERROR
        assert result.reason_codes == ("GATE_POLICY_ERROR", "typo")

    def test_policy_without_rules_is_a_config_error(self) -> None:
        result = run({"type": "policy", "config": {"rules": []}})
        assert result.status is GateStatus.ERROR
        assert "GATE_CONFIG_INVALID" in result.reason_codes


class TestSecurityGate:
    @staticmethod
    def scan(**counts: Any) -> dict[str, Any]:
        base = {"critical": 0, "high": 0, "medium": 0, "epss_max": 0.0, "kev": 0}
        base.update(counts)
        return base

    def with_scan(self, config: dict[str, Any] | None = None, **counts: Any) -> GateResult:
        document = inputs(security={"scans": {DIGEST_A: self.scan(**counts), DIGEST_B: self.scan()}})
        return run({"type": "security", "config": config or {}}, document)

    def test_default_thresholds_at_their_limits_pass(self) -> None:
        result = self.with_scan(critical=0, high=3, medium=20, epss_max=0.6, kev=0)
        assert result.status is GateStatus.PASS
        assert result.details["thresholds"] == {
            "max_critical": 0,
            "max_high": 3,
            "max_medium": 20,
            "max_epss": 0.6,
            "kev_blocker": True,
        }

    @pytest.mark.parametrize(
        ("counts", "code"),
        [
            ({"critical": 1}, "GATE_SECURITY_CRITICAL"),
            ({"high": 4}, "GATE_SECURITY_HIGH"),
            ({"medium": 21}, "GATE_SECURITY_MEDIUM"),
            ({"epss_max": 0.61}, "GATE_SECURITY_EPSS"),
            ({"kev": 1}, "GATE_SECURITY_KEV"),
        ],
    )
    def test_each_threshold_breach_fails_with_its_code(self, counts: dict[str, Any], code: str) -> None:
        result = self.with_scan(**counts)
        assert result.status is GateStatus.FAIL
        assert result.reason_codes == (code,)
        assert result.details["digests"][DIGEST_A]["verdict"] == "fail"
        assert result.details["digests"][DIGEST_B]["verdict"] == "pass"

    def test_several_breaches_are_all_reported(self) -> None:
        result = self.with_scan(critical=2, kev=1, epss_max=0.9)
        assert result.reason_codes == ("GATE_SECURITY_CRITICAL", "GATE_SECURITY_EPSS", "GATE_SECURITY_KEV")

    def test_custom_thresholds(self) -> None:
        config = {"max_critical": 2, "max_high": 10, "max_epss": None, "kev_blocker": False}
        assert self.with_scan(config, critical=2, high=10, epss_max=0.99, kev=3).status is GateStatus.PASS
        assert self.with_scan(config, critical=3).reason_codes == ("GATE_SECURITY_CRITICAL",)

    def test_digest_without_scan_fails_closed(self) -> None:
        document = inputs(security={"scans": {DIGEST_A: self.scan()}})
        result = run({"type": "security"}, document)
        assert result.status is GateStatus.FAIL
        assert result.reason_codes == ("GATE_SECURITY_SCAN_MISSING",)
        assert result.details["digests"][DIGEST_B]["verdict"] == "missing"

    def test_no_security_section_at_all_fails_closed(self) -> None:
        document = inputs()
        del document["security"]
        assert run({"type": "security"}, document).reason_codes == ("GATE_SECURITY_SCAN_MISSING",)

    def test_release_without_digests_fails(self) -> None:
        result = run({"type": "security"}, inputs(release={"components": []}))
        assert (result.status, result.reason_codes) == (GateStatus.FAIL, ("GATE_SECURITY_NO_DIGESTS",))

    @pytest.mark.parametrize(
        "scan", [{"critical": -1}, {"high": "3"}, {"epss_max": 1.5}, {"kev": True}, {"epss_max": "high"}]
    )
    def test_malformed_scan_is_an_error(self, scan: dict[str, Any]) -> None:
        result = self.with_scan(**scan)
        assert result.status is GateStatus.ERROR
        assert "GATE_SECURITY_SCAN_INVALID" in result.reason_codes

    def test_malformed_digest_is_an_error(self) -> None:
        result = run({"type": "security"}, inputs(release={"components": [{"name": "x", "digest": "latest"}]}))
        assert result.status is GateStatus.ERROR
        assert "GATE_INPUTS_INVALID" in result.reason_codes

    @pytest.mark.parametrize(
        "config", [{"max_high": -1}, {"max_epss": 1.5}, {"max_epss": True}, {"kev_blocker": "yes"}, {"cvss": 7}]
    )
    def test_invalid_thresholds_are_refused(self, config: dict[str, Any]) -> None:
        with pytest.raises(InvalidGateConfig):
            default_registry().validate([{"type": "security", "config": config}])


class TestApprovalGate:
    @pytest.mark.parametrize(
        ("summary", "env_required", "config", "status", "codes"),
        [
            ({"required": 2, "granted": 1, "rejected": 0}, 0, {}, GateStatus.PENDING, ("GATE_APPROVAL_PENDING",)),
            ({"required": 2, "granted": 2, "rejected": 0}, 0, {}, GateStatus.PASS, ()),
            ({"required": 2, "granted": 5, "rejected": 1}, 0, {}, GateStatus.FAIL, ("GATE_APPROVAL_REJECTED",)),
            ({"required": 0, "granted": 0, "rejected": 0}, 0, {}, GateStatus.SKIPPED, ()),
            ({"required": 1, "granted": 1, "rejected": 0}, 2, {}, GateStatus.PENDING, ("GATE_APPROVAL_PENDING",)),
            (
                {"required": 1, "granted": 2, "rejected": 0},
                1,
                {"required": 3},
                GateStatus.PENDING,
                ("GATE_APPROVAL_PENDING",),
            ),
        ],
    )
    def test_counts(
        self,
        summary: dict[str, int],
        env_required: int,
        config: dict[str, Any],
        status: GateStatus,
        codes: tuple[str, ...],
    ) -> None:
        document = inputs(approvals=summary, environment={"name": "prod", "required_approvals": env_required})
        result = run({"type": "approval", "config": config}, document)
        assert (result.status, result.reason_codes) == (status, codes)

    def test_required_is_the_largest_requirement(self) -> None:
        document = inputs(approvals={"required": 1, "granted": 1, "rejected": 0}, environment={"required_approvals": 2})
        assert run({"type": "approval"}, document).details == {"required": 2, "granted": 1, "rejected": 0}

    def test_malformed_summary_is_an_error(self) -> None:
        result = run({"type": "approval"}, inputs(approvals={"required": 2, "granted": -1, "rejected": 0}))
        assert result.status is GateStatus.ERROR
        assert "PROM_APPROVAL_SUMMARY_INVALID" in result.reason_codes


def test_plugin_gate_can_pass_and_fail() -> None:
    registry = plugin_registry()
    (ok,) = evaluate_gates([{"type": "ticket"}], inputs(ticket={"approved": True}), SATURDAY, registry=registry)
    assert (ok.status, ok.details) == (GateStatus.PASS, {"system": "jira"})
    (no,) = evaluate_gates([{"type": "ticket"}], inputs(), SATURDAY, registry=registry)
    assert (no.status, no.reason_codes) == (GateStatus.FAIL, ("TICKET_NOT_APPROVED",))
    assert TicketGate.rank == PLUGIN_RANK
