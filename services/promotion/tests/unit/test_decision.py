"""Decision records: result combination, canonical hashing and deterministic replay."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest

from stella.promotion.decision import (
    ApprovalRecord,
    DecisionRecord,
    InvalidDecisionInputs,
    combine,
    decide,
    inputs_hash,
    recheck_inputs,
)
from stella.promotion.domain.encoding import canonical_json, sha256_digest
from stella.promotion.domain.errors import CanonicalizationFailed
from stella.promotion.domain.outcome import DecisionResult
from stella.promotion.gates import Gate, GateConfig, GateResult, GateStatus, default_registry
from stella.promotion.policy import policy_digest

SATURDAY = datetime(2025, 3, 29, 12, 0, tzinfo=UTC)
TUESDAY = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)
DIGEST_A = "sha256:" + "a" * 64
RULES = [{"name": "pinned", "expr": 'release.components.all(c, c.tag != "latest")', "message": "pin tags"}]


def decision_inputs(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "release": {
            "id": "7b0a3f1e-0000-4000-8000-000000000001",
            "name": "shop-2025.03",
            "components": [{"name": "api", "digest": DIGEST_A, "tag": "1.4.2"}],
        },
        "environment": {
            "id": "env-prod",
            "name": "prod",
            "required_approvals": 2,
            "config": {"freeze_behavior": "hold"},
        },
        "freeze_windows": [
            {
                "id": "weekend",
                "kind": "deny",
                "rrule": "FREQ=WEEKLY;BYDAY=FR",
                "dtstart": "2025-01-03T16:00:00",
                "duration": "PT64H",
                "timezone": "Europe/Berlin",
                "reason": "weekend freeze",
            }
        ],
        "gates": [
            {"type": "security", "name": "scan"},
            {"type": "freeze-window", "name": "freeze"},
            {"type": "approval", "name": "approvals"},
            {"type": "policy", "name": "rules", "config": {"rules": RULES}},
        ],
        "security": {"scans": {DIGEST_A: {"critical": 0, "high": 0, "medium": 1, "epss_max": 0.01, "kev": 0}}},
        "approvals": {
            "required": 2,
            "granted": 2,
            "rejected": 0,
            "entries": [
                {"approver": "zoe", "action": "approved", "at": "2025-03-31T09:00:00Z", "comment": ""},
                {"approver": "bob", "action": "approved", "at": "2025-03-31T08:00:00+00:00", "comment": "lgtm"},
            ],
        },
        "overrides": [],
    }
    document.update(overrides)
    return document


class TestDecide:
    def test_allow_when_every_gate_passes(self) -> None:
        record = decide(decision_inputs(), TUESDAY)
        assert record.result is DecisionResult.ALLOW
        assert [(g.type, g.name, g.status) for g in record.gates] == [
            ("approval", "approvals", GateStatus.PASS),
            ("freeze-window", "freeze", GateStatus.PASS),
            ("policy", "rules", GateStatus.PASS),
            ("security", "scan", GateStatus.PASS),
        ]
        assert record.reasons == ()
        assert record.evaluated_at == TUESDAY
        assert record.policy_digest == policy_digest(RULES)

    def test_deny_inside_a_freeze_and_later_gates_are_skipped(self) -> None:
        record = decide(decision_inputs(), SATURDAY)
        assert record.result is DecisionResult.DENY
        assert record.reasons == ("GATE_FREEZE_ACTIVE",)
        statuses = {g.name: g.status for g in record.gates}
        assert statuses == {
            "approvals": GateStatus.SKIPPED,
            "freeze": GateStatus.FAIL,
            "rules": GateStatus.SKIPPED,
            "scan": GateStatus.SKIPPED,
        }

    def test_pending_while_approvals_are_missing(self) -> None:
        inputs = decision_inputs(approvals={"required": 2, "granted": 1, "rejected": 0, "entries": []})
        record = decide(inputs, TUESDAY)
        assert record.result is DecisionResult.PENDING
        assert record.reasons == ("GATE_APPROVAL_PENDING",)

    def test_reasons_are_the_sorted_union_of_gate_reason_codes(self) -> None:
        inputs = decision_inputs(
            release={"components": [{"name": "api", "digest": DIGEST_A, "tag": "latest"}]},
            security={"scans": {DIGEST_A: {"critical": 3, "high": 0, "medium": 0, "epss_max": 0.9, "kev": 0}}},
        )
        record = decide(inputs, TUESDAY)
        assert record.result is DecisionResult.DENY
        # The policy gate fails first; security is skipped, so its codes are not among the reasons.
        assert record.reasons == ("pinned",)

    def test_approvals_are_listed_in_time_order_with_utc_times(self) -> None:
        record = decide(decision_inputs(), TUESDAY)
        assert [a.to_dict() for a in record.approvals] == [
            {"approver": "bob", "action": "approved", "at": "2025-03-31T08:00:00Z", "comment": "lgtm"},
            {"approver": "zoe", "action": "approved", "at": "2025-03-31T09:00:00Z", "comment": ""},
        ]

    def test_no_policy_gate_means_no_policy_digest(self) -> None:
        inputs = decision_inputs(gates=[{"type": "freeze-window"}])
        assert decide(inputs, TUESDAY).policy_digest is None

    def test_policy_digest_covers_every_policy_gate(self) -> None:
        more = [{"name": "prod", "expr": 'environment.name == "prod"', "message": ""}]
        gates = [
            {"type": "policy", "name": "b", "config": {"rules": more}},
            {"type": "policy", "name": "a", "config": {"rules": RULES}},
        ]
        assert decide(decision_inputs(gates=gates), TUESDAY).policy_digest == policy_digest(RULES + more)

    def test_empty_gate_list_allows(self) -> None:
        record = decide(decision_inputs(gates=[]), SATURDAY)
        assert (record.result, record.gates, record.reasons) == (DecisionResult.ALLOW, (), ())

    def test_a_gate_that_raises_denies(self) -> None:
        class Broken(Gate):
            type = "broken"

            def evaluate(self, gate: GateConfig, inputs: Mapping[str, Any], now: datetime) -> GateResult:
                raise ZeroDivisionError("division by zero")

        registry = default_registry()
        registry.register(Broken())
        record = decide(decision_inputs(gates=[{"type": "broken"}]), TUESDAY, registry=registry)
        assert record.result is DecisionResult.DENY
        assert record.reasons == ("GATE_PROVIDER_ERROR",)
        assert record.gates[0].status is GateStatus.ERROR
        assert "ZeroDivisionError" in record.gates[0].message

    def test_unknown_gate_type_denies(self) -> None:
        record = decide(decision_inputs(gates=[{"type": "opa"}]), TUESDAY)
        assert (record.result, record.reasons) == (DecisionResult.DENY, ("GATE_UNKNOWN_TYPE",))

    @pytest.mark.parametrize(
        ("inputs", "message"),
        [
            ({"release": {}}, "need a 'gates' list"),
            ({"gates": {"type": "manual"}}, "need a 'gates' list"),
            ({"gates": [], "approvals": []}, "approvals must be an object"),
            (
                {
                    "gates": [],
                    "approvals": {"entries": [{"approver": "a", "action": "maybe", "at": "2025-01-01T00:00Z"}]},
                },
                "approval action",
            ),
            ({"gates": [], "approvals": {"entries": [{"approver": "a", "action": "approved"}]}}, "needs its time"),
        ],
    )
    def test_invalid_inputs(self, inputs: dict[str, Any], message: str) -> None:
        with pytest.raises(InvalidDecisionInputs, match=message) as info:
            decide(inputs, TUESDAY)
        assert info.value.code == "GATE_DECISION_INPUTS_INVALID"

    def test_inputs_without_canonical_form_are_refused(self) -> None:
        with pytest.raises(CanonicalizationFailed, match="naive datetime"):
            decide({"gates": [], "clock": datetime(2025, 1, 1)}, TUESDAY)
        with pytest.raises(CanonicalizationFailed, match="not a JSON number"):
            decide({"gates": [], "score": float("nan")}, TUESDAY)
        with pytest.raises(CanonicalizationFailed, match="has no canonical JSON form"):
            decide({"gates": [], "tags": {"a", "b"}}, TUESDAY)

    def test_naive_clock_is_refused(self) -> None:
        with pytest.raises(Exception, match="no time zone"):
            decide(decision_inputs(), datetime(2025, 4, 1))


class TestDeterminism:
    def test_same_inputs_give_an_identical_record_and_identical_bytes(self) -> None:
        first = decide(decision_inputs(), TUESDAY)
        second = decide(decision_inputs(), TUESDAY)
        assert first == second
        assert first.to_json() == second.to_json()

    def test_replay_from_the_stored_json_gives_the_same_bytes(self) -> None:
        inputs = decision_inputs()
        record = decide(inputs, TUESDAY)
        stored_inputs = canonical_json(inputs)
        stored_record = record.to_json()

        replayed = decide(json.loads(stored_inputs), TUESDAY)
        assert replayed.to_json() == stored_record
        assert DecisionRecord.from_dict(json.loads(stored_record)) == record

    @pytest.mark.parametrize("now", [SATURDAY, TUESDAY, TUESDAY + timedelta(days=1)])
    def test_replay_holds_for_deny_allow_and_pending(self, now: datetime) -> None:
        inputs = decision_inputs(approvals={"required": 2, "granted": 1, "rejected": 0, "entries": []})
        record = decide(inputs, now)
        assert decide(copy.deepcopy(inputs), now).to_json() == record.to_json()
        assert DecisionRecord.from_dict(record.to_dict()) == record

    def test_key_order_and_timestamp_spelling_do_not_change_the_hash(self) -> None:
        inputs = decision_inputs()
        reordered = dict(reversed(list(inputs.items())))
        reordered["release"] = dict(reversed(list(inputs["release"].items())))
        assert decide(reordered, TUESDAY).inputs_hash == decide(inputs, TUESDAY).inputs_hash

        berlin = timezone(timedelta(hours=2))
        as_object = decision_inputs(requested_at=datetime(2025, 4, 1, 12, 0, tzinfo=berlin), release_id=UUID(int=1))
        as_text = decision_inputs(
            requested_at="2025-04-01T10:00:00Z", release_id="00000000-0000-0000-0000-000000000001"
        )
        assert decide(as_object, TUESDAY).inputs_hash == decide(as_text, TUESDAY).inputs_hash
        assert decide(as_object, TUESDAY.astimezone(berlin)).to_json() == decide(as_text, TUESDAY).to_json()

    @pytest.mark.parametrize(
        "change",
        [
            lambda d: d["release"]["components"][0].update(digest="sha256:" + "c" * 64),
            lambda d: d["environment"]["config"].update(freeze_behavior="reject"),
            lambda d: d["freeze_windows"][0].update(duration="PT65H"),
            lambda d: d["gates"][0].update(config={"max_high": 4}),
            lambda d: d["approvals"]["entries"][0].update(comment="changed"),
            lambda d: d["overrides"].append({"gate": "freeze-window", "principal": "a", "reason": "r"}),
        ],
    )
    def test_every_input_is_covered_by_the_hash(self, change: Any) -> None:
        inputs = decision_inputs()
        changed = copy.deepcopy(inputs)
        change(changed)
        assert inputs_hash(changed, TUESDAY) != inputs_hash(inputs, TUESDAY)

    def test_the_clock_reading_is_covered_by_the_hash(self) -> None:
        inputs = decision_inputs()
        assert inputs_hash(inputs, TUESDAY) != inputs_hash(inputs, TUESDAY + timedelta(microseconds=1))

    def test_inputs_hash_is_sha256_of_canonical_clock_and_inputs(self) -> None:
        document = {"gates": [], "b": [1.0, "x"], "a": {"z": None, "y": True}}
        canonical = b'{"clock":"2025-04-01T10:00:00Z","inputs":{"a":{"y":true,"z":null},"b":[1,"x"],"gates":[]}}'
        expected = "sha256:" + hashlib.sha256(canonical).hexdigest()
        assert inputs_hash(document, TUESDAY) == expected
        assert decide(document, TUESDAY).inputs_hash == expected
        assert sha256_digest({"clock": TUESDAY, "inputs": document}) == expected

    def test_record_json_is_canonical(self) -> None:
        data = decide(decision_inputs(gates=[]), TUESDAY).to_json()
        assert data == (
            b'{"approvals":[{"action":"approved","approver":"bob","at":"2025-03-31T08:00:00Z","comment":"lgtm"},'
            b'{"action":"approved","approver":"zoe","at":"2025-03-31T09:00:00Z","comment":""}],'
            b'"evaluated_at":"2025-04-01T10:00:00Z","gates":[],'
            b'"inputs_hash":"' + inputs_hash(decision_inputs(gates=[]), TUESDAY).encode() + b'",'
            b'"policy_digest":null,"reasons":[],"result":"allow"}'
        )


class TestOutcome:
    def test_freeze_denial_is_time_window_only_with_next_open(self) -> None:
        outcome = decide(decision_inputs(), SATURDAY).outcome()
        assert outcome.result is DecisionResult.DENY
        assert outcome.time_window_only is True
        assert outcome.next_open == datetime(2025, 3, 31, 6, 0, tzinfo=UTC)
        assert outcome.record["result"] == "deny"

    def test_next_open_is_the_latest_of_the_closed_gates(self) -> None:
        office = {
            "id": "office",
            "kind": "allow",
            "rrule": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH",
            "dtstart": "2025-01-06T09:00:00",
            "duration": "PT8H",
            "timezone": "Europe/Berlin",
        }
        inputs = decision_inputs(
            freeze_windows=[*decision_inputs()["freeze_windows"], office],
            gates=[{"type": "freeze-window"}, {"type": "schedule"}],
        )
        record = decide(inputs, SATURDAY)
        # freeze-window fails first; schedule is skipped, so only the freeze's next_open is known.
        assert record.outcome().next_open == datetime(2025, 3, 31, 6, 0, tzinfo=UTC)
        from stella.promotion.gates import evaluate_gates

        both = evaluate_gates(inputs["gates"], inputs, SATURDAY, short_circuit=False)
        record = DecisionRecord(
            result=combine(both),
            gates=tuple(both),
            reasons=("GATE_FREEZE_ACTIVE", "GATE_SCHEDULE_CLOSED"),
            approvals=(),
            policy_digest=None,
            inputs_hash=inputs_hash(inputs, SATURDAY),
            evaluated_at=SATURDAY,
        )
        assert record.outcome().next_open == datetime(2025, 3, 31, 7, 0, tzinfo=UTC)

    def test_error_in_a_time_gate_is_not_time_window_only(self) -> None:
        broken = [{**decision_inputs()["freeze_windows"][0], "timezone": "Nowhere"}]
        outcome = decide(decision_inputs(freeze_windows=broken), SATURDAY).outcome()
        assert (outcome.result, outcome.time_window_only, outcome.next_open) == (DecisionResult.DENY, False, None)

    def test_non_time_denial_is_not_time_window_only(self) -> None:
        inputs = decision_inputs(security={"scans": {}})
        outcome = decide(inputs, TUESDAY).outcome()
        assert (outcome.result, outcome.time_window_only) == (DecisionResult.DENY, False)

    def test_manual_gate_pending_is_waiting_on(self) -> None:
        inputs = decision_inputs(gates=[{"type": "manual", "name": "qa"}, {"type": "approval"}])
        outcome = decide(inputs, TUESDAY).outcome()
        assert (outcome.result, outcome.waiting_on, outcome.approval_satisfied) == (
            DecisionResult.PENDING,
            ("manual",),
            True,
        )
        assert outcome.approvals_required == 2

    def test_approval_pending_is_not_waiting_on_other_gates(self) -> None:
        inputs = decision_inputs(approvals={"required": 3, "granted": 0, "rejected": 0})
        outcome = decide(inputs, TUESDAY).outcome()
        assert (outcome.result, outcome.waiting_on, outcome.approval_satisfied) == (DecisionResult.PENDING, (), False)
        assert outcome.approvals_required == 3


def test_recheck_inputs_keep_only_time_sensitive_gates() -> None:
    inputs = decision_inputs(gates=[*decision_inputs()["gates"], {"type": "schedule"}])
    recheck = recheck_inputs(inputs)
    assert [g["type"] for g in recheck["gates"]] == ["freeze-window", "schedule"]
    assert recheck["release"] == inputs["release"]
    assert inputs["gates"][0]["type"] == "security"  # the original is untouched
    assert decide(recheck, SATURDAY).result is DecisionResult.DENY
    assert decide(recheck, TUESDAY).result is DecisionResult.ALLOW


def test_combine() -> None:
    def result(status: GateStatus) -> GateResult:
        codes = ("X",) if status in (GateStatus.FAIL, GateStatus.ERROR) else ()
        return GateResult(type="t", name=status.value, status=status, reason_codes=codes)

    assert combine([]) is DecisionResult.ALLOW
    assert combine([result(GateStatus.PASS), result(GateStatus.SKIPPED), result(GateStatus.OVERRIDDEN)]) is (
        DecisionResult.ALLOW
    )
    assert combine([result(GateStatus.PASS), result(GateStatus.PENDING)]) is DecisionResult.PENDING
    assert combine([result(GateStatus.PENDING), result(GateStatus.ERROR)]) is DecisionResult.DENY
    assert combine([result(GateStatus.FAIL)]) is DecisionResult.DENY


def test_approval_record_validation() -> None:
    entry = ApprovalRecord.from_dict({"approver": "a", "action": "rejected", "at": "2025-01-01T01:00:00+01:00"})
    assert entry.at == datetime(2025, 1, 1, tzinfo=UTC)
    assert entry.comment == ""
    with pytest.raises(InvalidDecisionInputs):
        ApprovalRecord.from_dict({"approver": "", "action": "approved", "at": "2025-01-01T00:00:00Z"})
