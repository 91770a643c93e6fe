"""The dashboard's pure helpers: where a release may go next, drift in words, form values, day ranges."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from stella.contracts.promotion import PromotionStatus
from stella.gateway.controllers import ui
from stella.gateway.deployment_schemas import TargetOut
from stella.gateway.problems import ProblemError
from stella.gateway.schemas import EnvironmentOut


def _environment(name: str, order_index: int) -> EnvironmentOut:
    now = datetime.now(UTC)
    return EnvironmentOut(
        id=uuid.uuid4(),
        name=name,
        display_name=name,
        order_index=order_index,
        required_approvals=0,
        require_sod=False,
        config={},
        promotion_policy={},
        created_at=now,
        updated_at=now,
    )


def test_a_release_goes_first_to_the_first_environments_then_right_after_the_furthest_it_reached() -> None:
    dev, qa_a, qa_b, prod = (
        _environment("dev", 0),
        _environment("qa-a", 5),
        _environment("qa-b", 5),
        _environment("prod", 9),
    )
    every = [dev, qa_a, qa_b, prod]
    assert ui._next_environments(every, set()) == [dev]
    assert ui._next_environments(every, {dev.id}) == [qa_a, qa_b]  # two environments share a place
    assert ui._next_environments(every, {dev.id, qa_b.id}) == [prod]
    assert ui._next_environments(every, {prod.id}) == []
    assert ui._next_environments([], set()) == []


def test_drift_names_each_component_with_its_expected_and_actual_digest() -> None:
    now = datetime.now(UTC)
    fields = {
        "id": uuid.uuid4(),
        "environment_id": uuid.uuid4(),
        "name": "web-1",
        "target_type": "docker",
        "connection": {},
        "labels": {},
        "health_check": None,
        "agent_id": None,
        "health_status": "healthy",
        "current": {},
        "current_release_id": None,
        "sticker": None,
        "created_at": now,
        "updated_at": now,
    }
    unchecked = TargetOut(**fields, drift_detected=False, last_drift=None)
    in_sync = TargetOut(**fields, drift_detected=False, last_drift={"drifted": False, "differences": []})
    drifted = TargetOut(
        **fields,
        drift_detected=True,
        last_drift={"differences": [{"component": "<web>", "expected": "sha256:e", "actual": "sha256:a"}]},
    )
    assert ui._drift(unchecked) == "not checked yet"
    assert ui._drift(in_sync) == "in sync"
    shown = ui._drift(drifted)
    assert "drifted" in shown and "&lt;web&gt;: expected <code>sha256:e</code>, actual <code>sha256:a</code>" in shown


def test_filter_values_outside_their_choices_and_malformed_days_are_400() -> None:
    assert ui._choice(PromotionStatus, "deployed", "status") is PromotionStatus.DEPLOYED
    assert ui._choice(PromotionStatus, "", "status") is None
    with pytest.raises(ProblemError) as refused:
        ui._choice(PromotionStatus, "sideways", "status")
    assert refused.value.status == 400 and "deployed" in refused.value.detail
    assert ui._date("2026-03-01", "from") == datetime(2026, 3, 1, tzinfo=UTC)
    assert ui._date("2026-03-01", "to", end=True) == datetime(2026, 3, 2, tzinfo=UTC)  # the day is included
    with pytest.raises(ProblemError):
        ui._date("March", "from")


def test_a_malformed_object_id_in_a_page_url_is_a_404_and_csrf_tokens_differ_per_session() -> None:
    with pytest.raises(ProblemError) as missing:
        ui._path_id("not-an-id", "release")
    assert missing.value.status == 404
    assert ui.csrf_for("sts_a") != ui.csrf_for("sts_b")
    assert ui.csrf_for("sts_a") == ui.csrf_for("sts_a")
