"""The pure parts of the promotion handlers: policy validation, window specs, decision inputs, step results."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest

from stella.contracts import approval as a
from stella.contracts import promotion as c
from stella.contracts import workflow as w
from stella.promotion import freeze, repo
from stella.promotion.decision import decide
from stella.promotion.domain.encoding import sha256_digest
from stella.promotion.domain.environment import Environment, FreezeBehavior
from stella.promotion.domain.errors import InvalidEnvironment
from stella.promotion.domain.promotion import Promotion
from stella.promotion.domain.status import PromotionStatus
from stella.promotion.gates import default_registry
from stella.promotion.handlers.base import inputs_to_carry
from stella.promotion.handlers.decisions import (
    approvals_document,
    decision_inputs,
    effective_gates,
    required_approvals_for,
    validate_environment,
    validate_promotion_policy,
)
from stella.promotion.handlers.messages import gate_step_result, promotion_id_of
from stella.promotion.handlers.windows import (
    active_occurrence,
    closing_windows,
    freeze_event_id,
    next_transition_after,
    occurrence_key,
    window_from_spec,
)

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
TENANT = UUID(int=1)
ALICE = UUID(int=0xA11CE)
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def _env(**fields: Any) -> Environment:
    return Environment.create(id=UUID(int=10), tenant_id=TENANT, name="prod", order_index=1, created_at=T0, **fields)


def _stored(**promotion_fields: Any) -> repo.StoredPromotion:
    fields: dict[str, Any] = {
        "id": UUID(int=20),
        "tenant_id": TENANT,
        "release_id": UUID(int=30),
        "target_environment_id": UUID(int=10),
        "source_environment_id": None,
        "requested_by": str(ALICE),
        "requested_at": T0,
        "status": PromotionStatus.PENDING_GATE,
        "updated_at": T0,
        "required_approvals": 0,
        "require_sod": False,
        "freeze_behavior": FreezeBehavior.HOLD,
        "approval_timeout_s": 3600,
    }
    fields.update(promotion_fields)
    return repo.StoredPromotion(
        promotion=Promotion(**fields),
        release_name="shop",
        release_components=[
            {"name": "web", "digest": DIGEST_B, "tag": "2.0.0"},
            {"name": "api", "digest": DIGEST_A, "tag": None},
        ],
        target_environment_name="prod",
        reason="weekly",
        approver_groups=[],
        workflow_template="standard-promotion",
        workflow_run_id=UUID(int=40),
        gate_step=None,
        freeze_override=None,
        correlation_id=UUID(int=50),
    )


def _scan(digest: str, high: int) -> c.ScanResultView:
    return c.ScanResultView(
        digest=digest,
        critical=0,
        high=high,
        medium=0,
        low=0,
        max_epss=0.5,
        kev=False,
        scanner="trivy",
        scanned_at=T0,
        recorded_at=T0,
    )


class TestPromotionPolicy:
    def test_normalises_groups_and_keeps_the_template(self) -> None:
        policy = validate_promotion_policy(
            {"workflow_template": "careful-promotion", "approver_groups": ["sre", "dba", "sre"]}
        )
        assert policy == {"workflow_template": "careful-promotion", "approver_groups": ["dba", "sre"]}
        assert validate_promotion_policy({}) == {"approver_groups": []}

    def test_every_problem_is_located(self) -> None:
        with pytest.raises(InvalidEnvironment) as info:
            validate_promotion_policy({"workflow_template": "Bad Name", "approver_groups": "sre", "x": 1})
        assert [e["loc"] for e in info.value.errors] == [
            ["promotion_policy", "x"],
            ["promotion_policy", "workflow_template"],
            ["promotion_policy", "approver_groups"],
        ]
        assert info.value.status == 400


class TestWindowFromSpec:
    def test_start_anchors_a_recurring_window(self) -> None:
        spec = c.FreezeWindowSpec(
            rrule="FREQ=WEEKLY;BYDAY=FR",
            start=datetime(2025, 1, 3, 15, 0, tzinfo=UTC),
            duration_s=64 * 3600,
            timezone="Europe/Berlin",
            reason="weekend",
            exceptions=[ALICE],
        )
        window = window_from_spec(spec, UUID(int=7), ALICE)
        assert window.dtstart == datetime(2025, 1, 3, 16, 0)  # Berlin wall time
        assert window.duration == timedelta(hours=64)
        assert window.exceptions == (str(ALICE),)
        assert window.created_by == str(ALICE)

    def test_a_recurring_window_without_a_start_is_anchored_at_a_local_midnight_whole_weeks_back(self) -> None:
        spec = c.FreezeWindowSpec(
            rrule="FREQ=WEEKLY;BYDAY=FR;BYHOUR=16;BYMINUTE=0",
            duration_s=64 * 3600,
            timezone="Europe/Berlin",
            reason="weekend",
        )
        created = datetime(2025, 3, 27, 23, 30, 17, tzinfo=UTC)  # already the 28th in Berlin
        window = window_from_spec(spec, UUID(int=7), None, created)
        # Midnight of the creation day (Friday 28th) moved back a whole week, so it lies 64 h before now.
        assert window.dtstart == datetime(2025, 3, 21, 0, 0)
        # Friday 28 March 16:00 CET until Monday 31 March 08:00 CEST, across the DST change.
        closed = freeze.environment_state([window], datetime(2025, 3, 30, 12, 0, tzinfo=UTC))
        assert closed.closed
        assert closed.next_open == datetime(2025, 3, 31, 6, 0, tzinfo=UTC)
        with pytest.raises(freeze.InvalidFreezeWindow, match="dtstart"):
            window_from_spec(spec, UUID(int=7), None)

    def test_an_occurrence_running_when_the_window_is_created_belongs_to_it(self) -> None:
        spec = c.FreezeWindowSpec(
            rrule="FREQ=DAILY;BYHOUR=22;BYMINUTE=0", duration_s=8 * 3600, timezone="Europe/Berlin", reason="night"
        )
        created = datetime(2025, 6, 11, 1, 46, tzinfo=UTC)  # 03:46 in Berlin: the 22:00 occurrence still runs
        window = window_from_spec(spec, UUID(int=7), None, created)
        assert window.active_at(created)
        state = freeze.environment_state([window], created)
        assert state.closed
        assert state.next_open == datetime(2025, 6, 11, 4, 0, tzinfo=UTC)  # 06:00 Berlin

    @pytest.mark.parametrize(
        ("rrule", "freq_check"),
        [
            ("FREQ=MONTHLY;BYMONTHDAY=31;BYHOUR=20", datetime(2025, 5, 31, 18, 0, tzinfo=UTC)),
            ("FREQ=YEARLY;BYMONTH=5;BYMONTHDAY=31;BYHOUR=20", datetime(2025, 5, 31, 18, 0, tzinfo=UTC)),
            ("FREQ=WEEKLY;INTERVAL=2;BYDAY=SA;BYHOUR=20", None),
            ("FREQ=HOURLY;INTERVAL=5", None),
        ],
    )
    def test_the_default_anchor_keeps_an_occurrence_in_progress_for_every_frequency(
        self, rrule: str, freq_check: datetime | None
    ) -> None:
        created = datetime(2025, 6, 1, 2, 0, tzinfo=UTC)
        spec = c.FreezeWindowSpec(rrule=rrule, duration_s=40 * 3600, timezone="Europe/Berlin", reason="x")
        window = window_from_spec(spec, UUID(int=7), None, created)
        assert window.dtstart is not None
        local_created = created.astimezone(ZoneInfo("Europe/Berlin")).replace(tzinfo=None)
        assert window.dtstart <= local_created - timedelta(hours=40)
        # Whole periods back from midnight: no stray minutes or seconds from the creation time.
        assert (window.dtstart.minute, window.dtstart.second) == (0, 0)
        if "HOURLY" not in rrule:
            assert window.dtstart.time() == time(0, 0)
        if freq_check is not None:
            assert window.active_at(created)
            assert (freq_check, freq_check + timedelta(hours=40)) in window.occurrences(freq_check, created)

    def test_a_rule_with_count_needs_dtstart(self) -> None:
        spec = c.FreezeWindowSpec(rrule="FREQ=DAILY;COUNT=3", duration_s=60, reason="x")
        with pytest.raises(freeze.InvalidRRule, match="COUNT"):
            window_from_spec(spec, UUID(int=7), None, T0)

    @pytest.mark.parametrize(
        "fields",
        [
            {"rrule": "FREQ=DAILY;UNTIL=20200101T000000Z", "dtstart": datetime(2019, 1, 1), "duration_s": 60},
            {"rrule": "FREQ=DAILY;UNTIL=20200101T000000Z", "duration_s": 60},
            {"rrule": "FREQ=DAILY;COUNT=2", "dtstart": datetime(2019, 1, 1), "duration_s": 60},
            {"start": datetime(2020, 1, 1, tzinfo=UTC), "end": datetime(2020, 1, 2, tzinfo=UTC)},
        ],
    )
    def test_a_window_that_never_applies_again_is_refused(self, fields: dict) -> None:
        spec = c.FreezeWindowSpec(reason="x", **fields)
        with pytest.raises(freeze.WindowNeverApplies):
            window_from_spec(spec, UUID(int=7), None, T0)

    def test_a_sparse_rule_far_ahead_still_applies(self) -> None:
        spec = c.FreezeWindowSpec(
            rrule="FREQ=YEARLY;INTERVAL=3", dtstart=datetime(2024, 1, 1), duration_s=3600, reason="x"
        )
        window = window_from_spec(spec, UUID(int=7), None, datetime(2025, 1, 2, tzinfo=UTC))
        assert window.applies_after(datetime(2025, 1, 2, tzinfo=UTC))

    def test_fractional_durations_are_refused_by_the_freeze_rules(self) -> None:
        spec = c.FreezeWindowSpec(rrule="FREQ=DAILY", dtstart=datetime(2025, 1, 1), duration_s=1.5, reason="x")
        with pytest.raises(freeze.InvalidWindowDuration, match="whole seconds"):
            window_from_spec(spec, UUID(int=7), None)

    def test_giving_start_and_dtstart_with_a_rule_is_ambiguous(self) -> None:
        spec = c.FreezeWindowSpec(rrule="FREQ=DAILY", start=T0, dtstart=datetime(2025, 1, 1), duration_s=60, reason="x")
        with pytest.raises(freeze.InvalidWindowSchedule):
            window_from_spec(spec, UUID(int=7), None)


class TestWindowTimer:
    def test_next_transition_of_a_one_off_window(self) -> None:
        window = freeze.parse_window(
            {"id": "w", "kind": "deny", "timezone": "UTC", "start": T0, "end": T0 + timedelta(hours=1)}
        )
        assert next_transition_after(window, T0 - timedelta(minutes=1)) == T0
        assert next_transition_after(window, T0) == T0 + timedelta(hours=1)
        assert next_transition_after(window, T0 + timedelta(hours=1)) is None

    def test_a_window_beyond_the_horizon_is_looked_at_again(self) -> None:
        far = T0 + timedelta(days=500)
        window = freeze.parse_window(
            {"id": "w", "kind": "deny", "timezone": "UTC", "start": far, "end": far + timedelta(hours=1)}
        )
        assert next_transition_after(window, T0) == T0 + freeze.SEARCH_HORIZON

    def test_active_occurrence_of_a_recurring_window(self) -> None:
        window = freeze.parse_window(
            {
                "id": "w",
                "kind": "deny",
                "timezone": "UTC",
                "rrule": "FREQ=DAILY",
                "dtstart": "2025-01-01T08:00:00",
                "duration": "PT2H",
            }
        )
        assert active_occurrence(window, T0) == (T0 - timedelta(hours=1), T0 + timedelta(hours=1))
        assert active_occurrence(window, T0 + timedelta(hours=1)) is None
        assert occurrence_key(window, T0) == "w@2025-04-01T09:00:00Z"

    def test_closing_windows_are_the_active_deny_ones_or_every_allow_one_outside_them(self) -> None:
        deny = freeze.parse_window(
            {"id": "d", "kind": "deny", "timezone": "UTC", "start": T0, "end": T0 + timedelta(hours=1)}
        )
        allow = freeze.parse_window(
            {
                "id": "a",
                "kind": "allow",
                "timezone": "UTC",
                "start": T0 + timedelta(hours=3),
                "end": T0 + timedelta(hours=4),
            }
        )
        now = T0 + timedelta(minutes=5)
        state = freeze.environment_state([deny, allow], now)
        assert [x.id for x in closing_windows([deny, allow], state)] == ["d", "a"]
        later = T0 + timedelta(hours=3, minutes=5)
        assert closing_windows([deny, allow], freeze.environment_state([deny, allow], later)) == []


class TestValidateEnvironment:
    def test_validating_the_gates_keeps_every_other_setting(self) -> None:
        config = {
            "deployment_timeout_s": 900,
            "freeze_behavior": "reject",
            "variables": {"region": "eu"},
            "deployment": {"strategy": "canary", "canary_steps": [25, 50, 100], "failure_behavior": "rollback"},
            "gates": [{"type": "freeze-window", "name": "strict", "config": {"allow_override": False}}],
        }
        validated = validate_environment(default_registry(), _env(config=config)).config.to_dict()
        assert validated["deployment"] == config["deployment"]
        assert (validated["deployment_timeout_s"], validated["freeze_behavior"], validated["variables"]) == (
            900,
            "reject",
            {"region": "eu"},
        )
        assert [g["name"] for g in validated["gates"]] == ["strict"]


class TestDecisionInputs:
    def test_builtin_gates_are_added_unless_configured(self) -> None:
        registry = default_registry()
        assert effective_gates(registry, [], 0, has_allow_windows=False) == [
            {"type": "freeze-window", "name": "freeze-window", "config": {"allow_override": True}}
        ]
        configured = [{"type": "freeze-window", "name": "strict", "config": {"allow_override": False}}]
        gates = effective_gates(registry, configured, 2, has_allow_windows=True)
        assert [(g["type"], g["name"]) for g in gates] == [
            ("schedule", "schedule"),
            ("approval", "approval"),
            ("freeze-window", "strict"),
        ]

    def test_required_approvals_take_the_larger_of_environment_and_approval_gate(self) -> None:
        env = _env(required_approvals=1, config={"gates": [{"type": "approval", "config": {"required": 3}}]})
        assert required_approvals_for(env) == 3
        assert required_approvals_for(_env(required_approvals=2)) == 2

    def test_inputs_hold_everything_the_gates_read_as_plain_json(self) -> None:
        stored = _stored(required_approvals=2, require_sod=True)
        stored.freeze_override = {
            "principal": str(ALICE),
            "reason": "hotfix",
            "has_override_permission": False,
            "at": None,
        }
        env = _env(required_approvals=0, config={"gates": [{"type": "security", "name": "scan"}]})
        window = freeze.parse_window(
            {"id": "w", "kind": "deny", "timezone": "UTC", "start": T0, "end": T0 + timedelta(hours=1), "reason": "x"}
        )
        gates = effective_gates(default_registry(), env.config.gates, 2, has_allow_windows=False)
        inputs = decision_inputs(stored, env, [window], {DIGEST_A: _scan(DIGEST_A, 1)}, approvals_document(2), gates)
        assert inputs["environment"]["required_approvals"] == 2  # the promotion's copy, not the edited env
        assert inputs["environment"]["require_sod"] is True
        assert inputs["promotion"]["requested_at"] == "2025-04-01T09:00:00Z"
        assert inputs["security"]["scans"] == {
            DIGEST_A: {
                "critical": 0,
                "high": 1,
                "medium": 0,
                "low": 0,
                "epss_max": 0.5,
                "kev": 0,
                "scanner": "trivy",
                "scanned_at": "2025-04-01T09:00:00Z",
            }
        }
        assert [o["gate"] for o in inputs["overrides"]] == ["freeze-window", "schedule"]
        assert inputs["approvals"] == {"required": 2, "granted": 0, "rejected": 0, "entries": []}

        record = decide(inputs, T0 + timedelta(minutes=1))
        by_type = {g.type: g for g in record.gates}
        # Alice is not an exception of the window: the override is refused and the freeze denies.
        assert by_type["freeze-window"].status.value == "fail"
        assert "override_refused" in by_type["freeze-window"].details
        assert decide(inputs, T0 + timedelta(minutes=1)).to_json() == record.to_json()

    def test_approvals_count_distinct_principals(self) -> None:
        votes = [
            a.VoteView(approver_id=UUID(int=1), action=a.VoteAction.APPROVED, comment="ok", at=T0),
            a.VoteView(approver_id=UUID(int=2), action=a.VoteAction.REJECTED, comment="no", at=T0),
        ]
        document = approvals_document(2, votes)
        assert (document["granted"], document["rejected"]) == (1, 1)
        assert document["entries"][1] == {"approver": str(UUID(int=2)), "action": "rejected", "at": T0, "comment": "no"}


class TestGateStepResult:
    def test_pending_gate_has_no_result_yet(self) -> None:
        assert gate_step_result(_stored().promotion) is None

    def test_rejected_fails_with_the_reasons(self) -> None:
        promotion = _stored(
            status=PromotionStatus.REJECTED, reason_codes=("GATE_FREEZE_ACTIVE",), status_message="frozen"
        ).promotion
        assert gate_step_result(promotion) == (
            w.StepStatus.FAILED,
            {"result": "deny", "reasons": ["GATE_FREEZE_ACTIVE"]},
            "frozen",
        )

    def test_allowed_succeeds_with_the_decision_hash(self) -> None:
        record = {"result": "allow", "gates": []}
        promotion = _stored(status=PromotionStatus.PENDING_APPROVAL, decision=record).promotion
        status, outputs, error = gate_step_result(promotion)  # type: ignore[misc]
        assert (status, error) == (w.StepStatus.SUCCEEDED, None)
        assert outputs == {"result": "allow", "decision_hash": sha256_digest(record)}


def test_the_promotion_of_a_gate_step_comes_from_the_subject_or_the_run_inputs() -> None:
    base = {
        "tenant_id": TENANT,
        "correlation_id": UUID(int=2),
        "run_id": UUID(int=3),
        "node_id": "gates",
        "attempt": 1,
        "step_type": "gate",
        "config": {},
    }
    by_subject = w.ExecuteStep(**base, inputs={}, subject_id=UUID(int=9))
    by_input = w.ExecuteStep(**base, inputs={"inputs": {"promotion_id": str(UUID(int=8))}})
    garbage = w.ExecuteStep(**base, inputs={"inputs": {"promotion_id": "nope"}})
    assert promotion_id_of(by_subject) == UUID(int=9)
    assert promotion_id_of(by_input) == UUID(int=8)
    assert promotion_id_of(garbage) is None


def test_completion_and_freeze_ids_are_stable() -> None:
    def completion_id(attempt: int) -> UUID:
        step = w.StepRef(run_id=UUID(int=3), node_id="gates", attempt=attempt)
        return step.completion(
            tenant_id=TENANT, correlation_id=UUID(int=5), causation_id=None, status=w.StepStatus.SUCCEEDED
        ).message_id

    assert completion_id(2) == completion_id(2)
    assert completion_id(2) != completion_id(3)
    assert freeze_event_id(TENANT, "w@x/started") != freeze_event_id(TENANT, "w@x/ended")


def test_promotion_metrics_count_each_published_state_change() -> None:
    import json

    from prometheus_client import REGISTRY

    from stella.promotion import metrics

    labels = {"env": "prod-metrics", "status": "approved"}
    before = REGISTRY.get_sample_value("stella_promotions_total", labels) or 0.0
    observed = REGISTRY.get_sample_value("stella_promotion_duration_seconds_count") or 0.0
    payload = {
        "promotion": {
            "target_environment_name": "prod-metrics",
            "status": "approved",
            "requested_at": "2026-11-26T10:00:00Z",
            "updated_at": "2026-11-26T10:05:00Z",
        }
    }
    metrics._count(json.dumps(payload))
    assert REGISTRY.get_sample_value("stella_promotions_total", labels) == before + 1
    assert REGISTRY.get_sample_value("stella_promotion_duration_seconds_count") == observed + 1


def test_a_decision_announces_its_inputs_as_it_hashed_them_unless_they_are_too_large() -> None:
    at = datetime(2026, 3, 2, 10, 0, 1, tzinfo=UTC)
    inputs = {"gates": [], "clock_seen": at, "release": {"id": UUID(int=7)}}
    carried = inputs_to_carry(inputs)
    assert carried == {"gates": [], "clock_seen": "2026-03-02T10:00:01Z", "release": {"id": str(UUID(int=7))}}
    assert decide(carried, at).inputs_hash == decide(inputs, at).inputs_hash
    assert inputs_to_carry(None) is None
    large = {"gates": [], "notes": "x" * c.MAX_EVENT_DECISION_INPUTS_BYTES}
    assert inputs_to_carry(large) is None  # left to get_decision: the event stays small
