"""The built-in step types and the ``standard-promotion`` template, driven through the real scheduler."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from stella.workflow.domain.errors import TemplateNotFound, UnknownStepType
from stella.workflow.domain.run import StepRun, begin_waiting, complete_step, new_run, start_run
from stella.workflow.domain.scheduler import Advance, SkipStep, advance
from stella.workflow.domain.states import RunStatus, SkipReason, StepStatus
from stella.workflow.domain.validation import validate_template
from stella.workflow.templates import (
    BUILTIN_STEP_TYPES,
    BUILTIN_TEMPLATES,
    STANDARD_PROMOTION,
    STANDARD_PROMOTION_V2,
    builtin_template,
    builtin_template_id,
)

T0 = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
RUN_ID = UUID("00000000-0000-0000-0000-00000000f001")
TENANT = UUID("00000000-0000-0000-0000-00000000f002")
INPUTS = {
    "promotion_id": "p-1",
    "release_id": "r-1",
    "environment_id": "e-prod",
    "requested_by": "u-alice",
}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Promotion:
    """Runs ``standard-promotion`` like the workflow service would."""

    def __init__(self, template: Any = STANDARD_PROMOTION, **inputs: Any) -> None:
        template = validate_template(template, BUILTIN_STEP_TYPES)
        created = new_run(
            run_id=RUN_ID,
            tenant_id=TENANT,
            template=template,
            template_id=builtin_template_id(template.name, template.version),
            inputs={**INPUTS, **inputs},
            now=T0,
        )
        self.template = template
        self.run = start_run(created.run, now=T0).run
        self.steps: dict[str, StepRun] = {s.node_id: s for s in created.steps}

    def advance(self, now: datetime) -> Advance:
        result = advance(self.template, self.run, self.steps.values(), now=now)
        self.run, self.steps = result.run, {s.node_id: s for s in result.steps}
        return result

    def report(self, node_id: str, now: datetime, *, ok: bool, outputs: dict[str, Any]) -> Advance:
        step = self.steps[node_id]
        self.steps[node_id] = complete_step(
            self.template,
            step,
            attempt=step.attempt_number,
            outcome="succeeded" if ok else "failed",
            outputs=outputs,
            now=now,
        ).step
        return self.advance(now)

    def wait_for_approval(self, now: datetime) -> None:
        self.steps["approval"] = begin_waiting(self.steps["approval"], attempt=1, now=now).step


def test_builtin_step_types_are_the_documented_ones() -> None:
    assert (
        frozenset(
            {
                "gate",
                "approval",
                "deploy",
                "health-check",
                "verify-drift",
                "evidence",
                "notify",
                "wait",
                "script",
                "http",
            }
        )
        == BUILTIN_STEP_TYPES
    )


def test_every_builtin_template_is_valid_and_has_no_tenant() -> None:
    for template in BUILTIN_TEMPLATES:
        assert validate_template(template, BUILTIN_STEP_TYPES) is template
        assert template.tenant_id is None
        assert template.is_builtin


def test_standard_promotion_runs_gates_then_approval_then_evidence() -> None:
    assert (STANDARD_PROMOTION.name, STANDARD_PROMOTION.version) == ("standard-promotion", 1)
    assert STANDARD_PROMOTION.topological_order == ("gates", "approval", "evidence")
    assert [n.type for n in STANDARD_PROMOTION.nodes] == ["gate", "approval", "evidence"]


def test_standard_promotion_refuses_an_installation_without_its_step_types() -> None:
    with pytest.raises(UnknownStepType) as caught:
        validate_template(STANDARD_PROMOTION, BUILTIN_STEP_TYPES - {"evidence"})

    assert caught.value.node_id == "evidence"


def test_builtin_template_lookup() -> None:
    assert builtin_template("standard-promotion") is STANDARD_PROMOTION_V2
    assert builtin_template("standard-promotion", 1) is STANDARD_PROMOTION
    assert builtin_template("standard-promotion", 2) is STANDARD_PROMOTION_V2
    with pytest.raises(TemplateNotFound) as caught:
        builtin_template("standard-promotion", 99)
    assert caught.value.status == 404
    with pytest.raises(TemplateNotFound):
        builtin_template("nightly")


def test_builtin_template_ids_are_stable_and_distinct_per_version() -> None:
    assert builtin_template_id("standard-promotion", 1) == builtin_template_id("standard-promotion", 1)
    assert builtin_template_id("standard-promotion", 1) != builtin_template_id("standard-promotion", 2)


def test_an_approved_promotion_records_evidence_and_succeeds() -> None:
    promotion = Promotion()
    assert [a.node_id for a in promotion.advance(T0).schedule.start] == ["gates"]

    after_gates = promotion.report("gates", at(1), ok=True, outputs={"result": "allow"})
    assert [a.node_id for a in after_gates.schedule.start] == ["approval"]
    assert after_gates.run.next_wakeup_at == at(1) + timedelta(days=7, hours=1)
    promotion.wait_for_approval(at(2))

    after_approval = promotion.report("approval", at(3600), ok=True, outputs={"decision": "granted", "granted": 2})
    (evidence,) = after_approval.schedule.start
    assert evidence.node_id == "evidence"
    assert evidence.config == {"packet_type": "release_decision"}
    assert evidence.inputs["steps"]["gates"]["outputs"] == {"result": "allow"}
    assert evidence.inputs["inputs"]["promotion_id"] == "p-1"

    done = promotion.report("evidence", at(3601), ok=True, outputs={"packet_id": "ev-1"})
    assert done.run.status is RunStatus.SUCCEEDED
    assert done.run.outputs == {
        "approved": True,
        "gates": {"result": "allow"},
        "approval": {"decision": "granted", "granted": 2},
        "evidence": {"packet_id": "ev-1"},
    }


def test_a_denied_approval_still_records_evidence_and_fails_the_run() -> None:
    promotion = Promotion()
    promotion.advance(T0)
    promotion.report("gates", at(1), ok=True, outputs={"result": "allow"})
    promotion.wait_for_approval(at(2))

    denied = promotion.report("approval", at(60), ok=False, outputs={"decision": "denied", "rejected": 1})

    (evidence,) = denied.schedule.start
    assert evidence.inputs["steps"]["approval"] == {
        "status": "failed",
        "attempt": 1,
        "outputs": {"decision": "denied", "rejected": 1},
    }
    done = promotion.report("evidence", at(61), ok=True, outputs={"packet_id": "ev-2"})
    assert done.run.status is RunStatus.FAILED
    assert done.run.outputs["approved"] is False


def test_a_denying_gate_skips_approval_but_records_evidence() -> None:
    promotion = Promotion()
    promotion.advance(T0)

    result = promotion.report("gates", at(1), ok=False, outputs={"result": "deny"})

    assert result.schedule.skip == (SkipStep(node_id="approval", reason=SkipReason.UPSTREAM_FAILED),)
    assert [a.node_id for a in result.schedule.start] == ["evidence"]


def test_an_environment_without_approvals_skips_the_approval_step() -> None:
    promotion = Promotion(approval_required=False)
    promotion.advance(T0)

    result = promotion.report("gates", at(1), ok=True, outputs={"result": "allow"})

    assert result.schedule.skip == (SkipStep(node_id="approval", reason=SkipReason.CONDITION_FALSE),)
    assert [a.node_id for a in result.schedule.start] == ["evidence"]
    done = promotion.report("evidence", at(2), ok=True, outputs={})
    assert done.run.status is RunStatus.SUCCEEDED
    assert done.run.outputs["approved"] is True


def test_a_failing_evidence_step_is_retried() -> None:
    promotion = Promotion(approval_required=False)
    promotion.advance(T0)
    promotion.report("gates", at(1), ok=True, outputs={})

    failed = promotion.report("evidence", at(2), ok=False, outputs={})

    assert failed.run.next_wakeup_at == at(12)
    retried = promotion.advance(at(12))
    assert retried.schedule.start[0].attempt == 2
    assert promotion.steps["evidence"].status is StepStatus.RUNNING


def test_standard_promotion_v2_deploys_and_checks_health_between_approval_and_evidence() -> None:
    assert (STANDARD_PROMOTION_V2.name, STANDARD_PROMOTION_V2.version) == ("standard-promotion", 2)
    assert STANDARD_PROMOTION_V2.topological_order == ("gates", "approval", "deploy", "health-check", "evidence")
    assert [n.type for n in STANDARD_PROMOTION_V2.nodes] == ["gate", "approval", "deploy", "health-check", "evidence"]
    assert {n.id: n.run_on.value for n in STANDARD_PROMOTION_V2.nodes}["evidence"] == "always"
    # Both versions stay installed: a run pins the version it started with.
    assert [t.version for t in BUILTIN_TEMPLATES if t.name == "standard-promotion"] == [1, 2]


def test_v2_an_approved_promotion_deploys_checks_health_then_records_evidence() -> None:
    promotion = Promotion(STANDARD_PROMOTION_V2)
    promotion.advance(T0)
    promotion.report("gates", at(1), ok=True, outputs={"result": "allow"})
    promotion.wait_for_approval(at(2))

    after_approval = promotion.report("approval", at(60), ok=True, outputs={"result": "granted"})
    (deploy,) = after_approval.schedule.start
    assert deploy.node_id == "deploy"
    assert deploy.inputs["inputs"]["environment_id"] == "e-prod"

    after_deploy = promotion.report("deploy", at(120), ok=True, outputs={"job_id": "j-1", "outcome": "succeeded"})
    assert [a.node_id for a in after_deploy.schedule.start] == ["health-check"]
    after_health = promotion.report("health-check", at(130), ok=True, outputs={"healthy": 3})
    (evidence,) = after_health.schedule.start
    assert evidence.inputs["steps"]["deploy"]["outputs"] == {"job_id": "j-1", "outcome": "succeeded"}

    done = promotion.report("evidence", at(131), ok=True, outputs={"packet_id": "ev-1"})
    assert done.run.status is RunStatus.SUCCEEDED
    assert done.run.outputs["approved"] is True
    assert done.run.outputs["deployed"] is True
    assert done.run.outputs["deployment"] == {"job_id": "j-1", "outcome": "succeeded"}


def test_v2_an_environment_without_approvals_deploys_right_after_the_gates() -> None:
    promotion = Promotion(STANDARD_PROMOTION_V2, approval_required=False)
    promotion.advance(T0)

    result = promotion.report("gates", at(1), ok=True, outputs={"result": "allow"})

    assert result.schedule.skip == (SkipStep(node_id="approval", reason=SkipReason.CONDITION_FALSE),)
    assert [a.node_id for a in result.schedule.start] == ["deploy"]


def test_v2_a_failed_deployment_skips_the_health_check_but_records_evidence_and_fails_the_run() -> None:
    promotion = Promotion(STANDARD_PROMOTION_V2, approval_required=False)
    promotion.advance(T0)
    promotion.report("gates", at(1), ok=True, outputs={"result": "allow"})

    failed = promotion.report("deploy", at(60), ok=False, outputs={"outcome": "rolled_back"})

    assert failed.schedule.skip == (SkipStep(node_id="health-check", reason=SkipReason.UPSTREAM_FAILED),)
    (evidence,) = failed.schedule.start
    assert evidence.inputs["steps"]["deploy"]["status"] == "failed"
    done = promotion.report("evidence", at(61), ok=True, outputs={})
    assert done.run.status is RunStatus.FAILED
    assert done.run.outputs["deployed"] is False


def test_v2_a_denying_gate_deploys_nothing_but_records_evidence() -> None:
    promotion = Promotion(STANDARD_PROMOTION_V2)
    promotion.advance(T0)

    result = promotion.report("gates", at(1), ok=False, outputs={"result": "deny"})

    assert result.schedule.skip == (
        SkipStep(node_id="approval", reason=SkipReason.UPSTREAM_FAILED),
        SkipStep(node_id="deploy", reason=SkipReason.UPSTREAM_FAILED),
        SkipStep(node_id="health-check", reason=SkipReason.UPSTREAM_SKIPPED),
    )
    assert [a.node_id for a in result.schedule.start] == ["evidence"]
