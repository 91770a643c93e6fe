"""The Promotion state machine, promotion requests, environments and the error catalogue."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import pytest

from stella.promotion import decision
from stella.promotion.domain.environment import Environment, EnvironmentConfig, FreezeBehavior, HealthCheckType
from stella.promotion.domain.errors import (
    ApprovalTimeoutNotReached,
    CancelNotAllowed,
    DecisionInconclusive,
    DeploymentJobMismatch,
    DomainError,
    EnvironmentBusy,
    EnvironmentNotFound,
    InvalidApprovalSummary,
    InvalidEnvironment,
    InvalidPromotionRequest,
    InvalidTimestamp,
    InvalidTransition,
    NotNextInQueue,
    PromotionAlreadyActive,
    PromotionAlreadyTerminal,
    PromotionNotApproved,
    PromotionNotPending,
    PromotionOrderViolation,
    ReleaseBlocked,
    ReleaseNotReady,
    SourceEnvironmentMismatch,
)
from stella.promotion.domain.events import (
    PromotionApprovalRequired,
    PromotionApproved,
    PromotionCancelled,
    PromotionCompleted,
    PromotionFailed,
    PromotionRejected,
    PromotionRequested,
    PromotionRolledBack,
    PromotionStarted,
)
from stella.promotion.domain.outcome import DecisionResult, GateOutcome
from stella.promotion.domain.promotion import Promotion, next_to_deploy
from stella.promotion.domain.release import ApprovalSummary, ReleaseBlock, ReleaseSnapshot, ReleaseStatus
from stella.promotion.domain.request import request_promotion
from stella.promotion.domain.status import ALLOWED_TRANSITIONS, PromotionStatus

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
TENANT = UUID(int=0xA)
OTHER_TENANT = UUID(int=0xB)
RELEASE = ReleaseSnapshot(id=UUID(int=0x100), tenant_id=TENANT, name="shop-2025.03", status=ReleaseStatus.READY)
JOB = UUID(int=0x500)
ROLLBACK_JOB = UUID(int=0x501)


def env(name: str, order: int, *, approvals: int = 0, **kwargs: Any) -> Environment:
    return Environment.create(
        id=uuid5(NAMESPACE_URL, f"env:{name}"),
        tenant_id=kwargs.pop("tenant_id", TENANT),
        name=name,
        order_index=order,
        required_approvals=approvals,
        created_at=T0,
        **kwargs,
    )


DEV = env("dev", 0)
STAGING = env("staging", 1)
PROD = env("prod", 2, approvals=2, require_sod=True)
ENVIRONMENTS = [PROD, DEV, STAGING]


def ids() -> Iterator[UUID]:
    counter = 0x1000
    while True:
        counter += 1
        yield UUID(int=counter)


_IDS = ids()


def request(
    target: Environment = DEV,
    *,
    history: list[Promotion] | None = None,
    release: ReleaseSnapshot = RELEASE,
    now: datetime = T0,
    environments: list[Environment] | None = None,
    **kwargs: Any,
) -> Promotion:
    promotion, events = request_promotion(
        promotion_id=next(_IDS),
        release=release,
        target_environment=target,
        environments=ENVIRONMENTS if environments is None else environments,
        release_promotions=history or [],
        requested_by="alice",
        now=now,
        **kwargs,
    )
    assert [type(e) for e in events] == [PromotionRequested]
    return promotion


def outcome(result: DecisionResult, *reasons: str, **kwargs: Any) -> GateOutcome:
    return GateOutcome(result=result, reasons=tuple(reasons), record={"result": result.value}, **kwargs)


ALLOW = outcome(DecisionResult.ALLOW)
FROZEN = outcome(
    DecisionResult.DENY,
    "GATE_FREEZE_ACTIVE",
    time_window_only=True,
    next_open=datetime(2025, 4, 7, 6, 0, tzinfo=UTC),
)


def approved(target: Environment = DEV, now: datetime = T0, **kwargs: Any) -> Promotion:
    promotion = request(target, now=now, **kwargs)
    if promotion.required_approvals:
        promotion.apply_gate_decision(ALLOW, now=now)
        promotion.record_approvals(ApprovalSummary(required=2, granted=2, rejected=0), now=now)
    else:
        promotion.apply_gate_decision(ALLOW, now=now)
    assert promotion.status is PromotionStatus.APPROVED
    return promotion


def deployed(target: Environment = DEV, **kwargs: Any) -> Promotion:
    promotion = approved(target, **kwargs)
    job = next(_IDS)
    promotion.finish_job(deployment_job_id=job, outcome="succeeded", reason="", now=T0)
    assert promotion.status is PromotionStatus.DEPLOYED
    return promotion


def through(last: Environment) -> list[Promotion]:
    """Deploy the release in every environment up to ``last``, in order; return those promotions."""
    history: list[Promotion] = []
    for environment in sorted(ENVIRONMENTS, key=lambda e: e.order_index):
        history.append(deployed(environment, history=list(history)))
        if environment is last:
            return history
    raise AssertionError(last)


def deploying(target: Environment = DEV) -> Promotion:
    promotion = approved(target)
    promotion.start_deployment(ALLOW, deployment_job_id=JOB, environment_promotions=[], now=T0)
    return promotion


class TestStatuses:
    @pytest.mark.parametrize(
        ("status", "terminal"),
        [
            (PromotionStatus.PENDING_GATE, False),
            (PromotionStatus.PENDING_APPROVAL, False),
            (PromotionStatus.APPROVED, False),
            (PromotionStatus.DEPLOYING, False),
            (PromotionStatus.DEPLOYED, True),
            (PromotionStatus.REJECTED, True),
            (PromotionStatus.CANCELLED, True),
            (PromotionStatus.FAILED, False),
            (PromotionStatus.ROLLED_BACK, True),
        ],
    )
    def test_is_terminal(self, status: PromotionStatus, terminal: bool) -> None:
        assert status.is_terminal is terminal

    def test_terminal_states_have_no_way_out(self) -> None:
        for status, targets in ALLOWED_TRANSITIONS.items():
            assert (not targets) == status.is_terminal, status
        assert set(ALLOWED_TRANSITIONS) == set(PromotionStatus)


class TestRequest:
    def test_first_environment_needs_no_predecessor(self) -> None:
        promotion, events = request_promotion(
            promotion_id=UUID(int=1),
            release=RELEASE,
            target_environment=DEV,
            environments=ENVIRONMENTS,
            release_promotions=[],
            requested_by="alice",
            now=T0,
        )
        assert promotion.status is PromotionStatus.PENDING_GATE
        assert (promotion.requested_at, promotion.updated_at, promotion.version) == (T0, T0, 1)
        assert promotion.source_environment_id is None
        assert events[0].payload() == {
            "promotion_id": "00000000-0000-0000-0000-000000000001",
            "tenant_id": str(TENANT),
            "release_id": str(RELEASE.id),
            "environment_id": str(DEV.id),
            "occurred_at": "2025-04-01T09:00:00Z",
            "source_environment_id": None,
            "requested_by": "alice",
        }
        assert events[0].name == "promotion.requested"

    def test_environment_settings_are_copied_at_request_time(self) -> None:
        promotion = request(PROD, history=through(STAGING))
        assert (promotion.required_approvals, promotion.require_sod) == (2, True)
        assert (promotion.freeze_behavior, promotion.approval_timeout_s) == (FreezeBehavior.HOLD, 604_800)

    def test_skipping_an_environment_is_an_order_violation_naming_the_missing_env(self) -> None:
        with pytest.raises(PromotionOrderViolation, match="must be deployed in 'dev' before") as info:
            request(STAGING)
        assert (info.value.code, info.value.status) == ("PROM_ORDER_VIOLATION", 422)
        with pytest.raises(PromotionOrderViolation, match="in 'staging' before it can be promoted to 'prod'"):
            request(PROD, history=[deployed(DEV)])

    def test_next_environment_after_the_release_was_deployed_in_the_previous_one(self) -> None:
        assert request(STAGING, history=[deployed(DEV)]).status is PromotionStatus.PENDING_GATE

    @pytest.mark.parametrize("status", [PromotionStatus.APPROVED, PromotionStatus.DEPLOYING])
    def test_an_approved_or_deploying_release_has_not_reached_the_environment_yet(
        self, status: PromotionStatus
    ) -> None:
        previous = approved(DEV)
        previous.status = status
        with pytest.raises(PromotionOrderViolation, match="must be deployed in 'dev'"):
            request(STAGING, history=[previous])

    @pytest.mark.parametrize(
        "status",
        [
            PromotionStatus.PENDING_GATE,
            PromotionStatus.PENDING_APPROVAL,
            PromotionStatus.REJECTED,
            PromotionStatus.CANCELLED,
            PromotionStatus.FAILED,
            PromotionStatus.ROLLED_BACK,
        ],
    )
    def test_previous_environment_not_reached(self, status: PromotionStatus) -> None:
        previous = request(DEV)
        previous.status = status
        with pytest.raises(PromotionOrderViolation):
            request(STAGING, history=[previous])

    def test_progress_of_another_release_does_not_count(self) -> None:
        other = ReleaseSnapshot(id=UUID(int=0x200), tenant_id=TENANT, name="other", status=ReleaseStatus.READY)
        with pytest.raises(PromotionOrderViolation):
            request(STAGING, history=[approved(DEV, release=other)])

    def test_named_source_must_be_the_previous_environment(self) -> None:
        history = through(STAGING)
        assert request(PROD, history=history, source_environment_id=STAGING.id).source_environment_id == STAGING.id
        with pytest.raises(
            SourceEnvironmentMismatch, match="'dev' is not the environment before 'prod'; promote from 'staging'"
        ):
            request(PROD, history=history, source_environment_id=DEV.id)

    def test_named_source_not_reached(self) -> None:
        with pytest.raises(
            PromotionOrderViolation,
            match="has not been deployed in 'dev'; promote it to 'dev' before 'staging'",
        ):
            request(STAGING, source_environment_id=DEV.id)

    def test_source_for_the_first_environment_is_refused(self) -> None:
        with pytest.raises(SourceEnvironmentMismatch, match="'dev' is the first environment"):
            request(DEV, source_environment_id=STAGING.id)

    def test_unknown_source_environment(self) -> None:
        with pytest.raises(EnvironmentNotFound):
            request(STAGING, history=[approved(DEV)], source_environment_id=UUID(int=0xDEAD))

    def test_parallel_environments_share_a_stage(self) -> None:
        qa_eu, qa_us = env("qa-eu", 1), env("qa-us", 1)
        stages = [DEV, qa_eu, qa_us, PROD]
        dev_done = deployed(DEV, environments=stages)
        assert request(qa_us, history=[dev_done], environments=stages).status is PromotionStatus.PENDING_GATE
        with pytest.raises(PromotionOrderViolation, match="'qa-eu' or 'qa-us'"):
            request(PROD, history=[dev_done], environments=stages)
        eu_done = deployed(qa_eu, history=[dev_done], environments=stages)
        assert request(PROD, history=[eu_done], environments=stages).status is PromotionStatus.PENDING_GATE

    @pytest.mark.parametrize("status", [ReleaseStatus.DRAFT, ReleaseStatus.DEPRECATED])
    def test_release_must_be_ready(self, status: ReleaseStatus) -> None:
        release = ReleaseSnapshot(id=RELEASE.id, tenant_id=TENANT, name="shop", status=status)
        with pytest.raises(ReleaseNotReady, match=f"release 'shop' is {status.value}") as info:
            request(DEV, release=release)
        assert info.value.code == "PROM_RELEASE_NOT_READY"

    def test_already_deployed_release_is_still_promotable(self) -> None:
        release = ReleaseSnapshot(id=RELEASE.id, tenant_id=TENANT, name="shop", status=ReleaseStatus.DEPLOYED)
        assert request(DEV, release=release).status is PromotionStatus.PENDING_GATE

    def test_block_covers_its_environment_and_every_later_one(self) -> None:
        block = ReleaseBlock(
            release_id=RELEASE.id, environment_id=STAGING.id, reason="CVE-2025-1", blocked_by="sec", blocked_at=T0
        )
        history = through(STAGING)
        with pytest.raises(ReleaseBlocked, match="blocked for 'staging': CVE-2025-1"):
            request(STAGING, history=[history[0]], blocks=[block])
        with pytest.raises(ReleaseBlocked, match=r"blocked for 'prod' \(blocked from 'staging' onward\): CVE-2025-1"):
            request(PROD, history=history, blocks=[block])
        assert request(DEV, blocks=[block]).status is PromotionStatus.PENDING_GATE
        other_release = ReleaseBlock(UUID(int=0x999), STAGING.id, "other", "sec", T0)
        assert request(PROD, history=history, blocks=[other_release]).status is PromotionStatus.PENDING_GATE

    def test_one_unfinished_promotion_per_release_and_environment(self) -> None:
        first = request(DEV)
        with pytest.raises(PromotionAlreadyActive) as info:
            request(DEV, history=[first])
        assert (info.value.code, info.value.status) == ("PROM_ALREADY_ACTIVE", 409)
        first.cancel(cancelled_by="alice", reason="typo", now=T0)
        assert request(DEV, history=[first]).status is PromotionStatus.PENDING_GATE

    def test_target_must_be_one_of_the_tenants_environments(self) -> None:
        with pytest.raises(EnvironmentNotFound) as info:
            request(env("ghost", 5))
        assert (info.value.code, info.value.status) == ("ENV_NOT_FOUND", 404)
        foreign = ReleaseSnapshot(id=RELEASE.id, tenant_id=OTHER_TENANT, name="x", status=ReleaseStatus.READY)
        with pytest.raises(InvalidPromotionRequest, match="does not belong"):
            request(DEV, release=foreign)

    def test_requester_and_clock_are_checked(self) -> None:
        with pytest.raises(InvalidPromotionRequest):
            request_promotion(
                promotion_id=UUID(int=1),
                release=RELEASE,
                target_environment=DEV,
                environments=ENVIRONMENTS,
                release_promotions=[],
                requested_by=" ",
                now=T0,
            )
        with pytest.raises(InvalidTimestamp):
            request(DEV, now=datetime(2025, 4, 1))


class TestGateDecision:
    def test_allow_without_approvals_approves(self) -> None:
        promotion = request(DEV)
        later = T0 + timedelta(minutes=1)
        events = promotion.apply_gate_decision(ALLOW, now=later)
        assert [type(e) for e in events] == [PromotionApproved]
        assert events[0].occurred_at == later
        assert (promotion.status, promotion.approved_at, promotion.updated_at, promotion.version) == (
            PromotionStatus.APPROVED,
            later,
            later,
            2,
        )
        assert promotion.decision == {"result": "allow"}

    def test_allow_with_approvals_needed_waits_for_approvals(self) -> None:
        promotion = request(PROD, history=through(STAGING))
        (event,) = promotion.apply_gate_decision(ALLOW, now=T0)
        assert isinstance(event, PromotionApprovalRequired)
        assert promotion.status is PromotionStatus.PENDING_APPROVAL
        assert (event.required_approvals, event.require_sod, event.requested_by) == (2, True, "alice")
        assert event.deadline == promotion.approval_deadline == T0 + timedelta(days=7)

    def test_awaits_approvals_answers_without_changing_the_promotion(self) -> None:
        prod = request(PROD, history=through(STAGING))
        dev = request(DEV)
        waiting = outcome(DecisionResult.PENDING, "GATE_MANUAL_PENDING", waiting_on=("manual",))
        assert prod.awaits_approvals(ALLOW, now=T0)
        assert not dev.awaits_approvals(ALLOW, now=T0)
        assert not prod.awaits_approvals(waiting, now=T0)
        assert (prod.status, prod.version, prod.decision) == (PromotionStatus.PENDING_GATE, 1, None)

    def test_allow_with_the_approval_gate_passed_approves_directly(self) -> None:
        promotion = request(PROD, history=through(STAGING))
        events = promotion.apply_gate_decision(outcome(DecisionResult.ALLOW, approval_satisfied=True), now=T0)
        assert [type(e) for e in events] == [PromotionApproved]

    def test_pending_on_approvals_only_moves_to_pending_approval(self) -> None:
        promotion = request(DEV)
        pending = outcome(DecisionResult.PENDING, "GATE_APPROVAL_PENDING", approvals_required=3)
        (event,) = promotion.apply_gate_decision(pending, now=T0)
        assert isinstance(event, PromotionApprovalRequired)
        assert event.required_approvals == promotion.required_approvals == 3

    def test_pending_on_a_manual_gate_keeps_waiting(self) -> None:
        promotion = request(DEV)
        waiting = outcome(DecisionResult.PENDING, "GATE_MANUAL_PENDING", waiting_on=("manual",))
        assert promotion.apply_gate_decision(waiting, now=T0) == []
        assert promotion.status is PromotionStatus.PENDING_GATE
        assert promotion.reason_codes == ("GATE_MANUAL_PENDING",)
        assert promotion.status_message == "waiting on gates: manual"
        assert [type(e) for e in promotion.apply_gate_decision(ALLOW, now=T0)] == [PromotionApproved]

    @pytest.mark.parametrize("reasons", [("GATE_SECURITY_CRITICAL",), ("GATE_PROVIDER_ERROR",)])
    def test_deny_rejects(self, reasons: tuple[str, ...]) -> None:
        promotion = request(DEV)
        (event,) = promotion.apply_gate_decision(outcome(DecisionResult.DENY, *reasons), now=T0)
        assert isinstance(event, PromotionRejected)
        assert event.reason_codes == reasons
        assert (promotion.status, promotion.reason_codes, promotion.finished_at) == (
            PromotionStatus.REJECTED,
            reasons,
            T0,
        )
        assert promotion.is_terminal

    def test_freeze_on_a_hold_environment_keeps_the_promotion_waiting_until_next_open(self) -> None:
        promotion = request(DEV)
        assert promotion.apply_gate_decision(FROZEN, now=T0) == []
        assert promotion.status is PromotionStatus.PENDING_GATE
        assert promotion.next_open == datetime(2025, 4, 7, 6, 0, tzinfo=UTC)
        assert promotion.reason_codes == ("GATE_FREEZE_ACTIVE",)
        assert promotion.version == 2
        promotion.apply_gate_decision(ALLOW, now=T0 + timedelta(days=6))
        after: tuple[PromotionStatus, datetime | None] = (promotion.status, promotion.next_open)
        assert after == (PromotionStatus.APPROVED, None)

    def test_freeze_on_a_reject_environment_rejects(self) -> None:
        strict = env("dev", 0, config={"freeze_behavior": "reject"})
        promotion, _ = request_promotion(
            promotion_id=UUID(int=9),
            release=RELEASE,
            target_environment=strict,
            environments=[strict],
            release_promotions=[],
            requested_by="alice",
            now=T0,
        )
        (event,) = promotion.apply_gate_decision(FROZEN, now=T0)
        assert isinstance(event, PromotionRejected)

    def test_freeze_that_never_opens_rejects(self) -> None:
        promotion = request(DEV)
        forever = outcome(DecisionResult.DENY, "GATE_FREEZE_ACTIVE", time_window_only=True, next_open=None)
        (event,) = promotion.apply_gate_decision(forever, now=T0)
        assert isinstance(event, PromotionRejected)
        assert event.reason_codes == ("GATE_FREEZE_ACTIVE", "PROM_WINDOW_NEVER_OPENS")

    def test_real_decision_records_drive_the_machine(self) -> None:
        saturday = datetime(2025, 3, 29, 12, tzinfo=UTC)
        inputs = {
            "freeze_windows": [
                {
                    "id": "weekend",
                    "kind": "deny",
                    "rrule": "FREQ=WEEKLY;BYDAY=FR",
                    "dtstart": "2025-01-03T16:00:00",
                    "duration": "PT64H",
                    "timezone": "Europe/Berlin",
                }
            ],
            "gates": [{"type": "freeze-window"}],
        }
        promotion = request(DEV, now=saturday)
        record = decision.decide(inputs, saturday)
        assert promotion.apply_gate_decision(record.outcome(), now=saturday) == []
        assert promotion.next_open == datetime(2025, 3, 31, 6, 0, tzinfo=UTC)
        assert promotion.decision == record.to_dict()
        reopened = decision.decide(inputs, promotion.next_open)
        assert [type(e) for e in promotion.apply_gate_decision(reopened.outcome(), now=promotion.next_open)] == [
            PromotionApproved
        ]

    def test_only_in_pending_gate(self) -> None:
        promotion = approved(DEV)
        with pytest.raises(PromotionNotPending, match="is approved, expected pending_gate") as info:
            promotion.apply_gate_decision(ALLOW, now=T0)
        assert (info.value.code, info.value.status) == ("PROM_NOT_PENDING", 409)
        promotion.cancel(cancelled_by="alice", reason="x", now=T0)
        with pytest.raises(PromotionAlreadyTerminal):
            promotion.apply_gate_decision(ALLOW, now=T0)


class TestApprovals:
    def waiting(self) -> Promotion:
        promotion = request(PROD, history=through(STAGING))
        promotion.apply_gate_decision(ALLOW, now=T0)
        return promotion

    def test_enough_grants_approve(self) -> None:
        promotion = self.waiting()
        assert promotion.record_approvals(ApprovalSummary(required=2, granted=1, rejected=0), now=T0) == []
        assert promotion.status is PromotionStatus.PENDING_APPROVAL
        (event,) = promotion.record_approvals(ApprovalSummary(required=2, granted=2, rejected=0), now=T0)
        assert isinstance(event, PromotionApproved)
        assert promotion.approvals_granted_at == T0

    def test_summary_cannot_lower_the_requirement(self) -> None:
        promotion = self.waiting()
        assert promotion.record_approvals(ApprovalSummary(required=1, granted=1, rejected=0), now=T0) == []

    def test_any_rejection_rejects(self) -> None:
        promotion = self.waiting()
        (event,) = promotion.record_approvals(ApprovalSummary(required=2, granted=5, rejected=1), now=T0)
        assert isinstance(event, PromotionRejected)
        assert event.reason_codes == ("PROM_APPROVAL_REJECTED",)

    def test_timeout_rejects_only_after_the_deadline(self) -> None:
        promotion = self.waiting()
        with pytest.raises(ApprovalTimeoutNotReached, match="due by 2025-04-08T09:00:00Z"):
            promotion.expire_approvals(now=T0 + timedelta(days=7) - timedelta(seconds=1))
        (event,) = promotion.expire_approvals(now=T0 + timedelta(days=7))
        assert isinstance(event, PromotionRejected)
        assert event.reason_codes == ("PROM_APPROVAL_TIMEOUT",)
        assert promotion.status is PromotionStatus.REJECTED

    def test_only_while_waiting_for_approvals(self) -> None:
        promotion = request(DEV)
        with pytest.raises(PromotionNotPending):
            promotion.record_approvals(ApprovalSummary(required=1, granted=1, rejected=0), now=T0)
        with pytest.raises(PromotionNotPending):
            promotion.expire_approvals(now=T0)

    @pytest.mark.parametrize("raw", [{"required": -1}, {"granted": 1.5}, {"rejected": True}, {"granted": "2"}])
    def test_summary_validation(self, raw: dict[str, Any]) -> None:
        with pytest.raises(InvalidApprovalSummary):
            ApprovalSummary.from_dict({"required": 1, "granted": 0, "rejected": 0, **raw})


class TestDeployment:
    def test_start_moves_to_deploying(self) -> None:
        promotion = approved(DEV)
        (event,) = promotion.start_deployment(ALLOW, deployment_job_id=JOB, environment_promotions=[promotion], now=T0)
        assert isinstance(event, PromotionStarted)
        assert event.deployment_job_id == JOB
        assert (promotion.status, promotion.deployment_job_id) == (PromotionStatus.DEPLOYING, JOB)

    def test_only_one_deploying_per_environment(self) -> None:
        busy = deploying(DEV)
        other_release = ReleaseSnapshot(id=UUID(int=0x300), tenant_id=TENANT, name="r2", status=ReleaseStatus.READY)
        waiting = approved(DEV, release=other_release)
        with pytest.raises(EnvironmentBusy, match=f"promotion {busy.id} is deploying"):
            waiting.start_deployment(ALLOW, deployment_job_id=JOB, environment_promotions=[busy, waiting], now=T0)
        assert waiting.status is PromotionStatus.APPROVED

    def test_fifo_by_approval_time(self) -> None:
        other_release = ReleaseSnapshot(id=UUID(int=0x301), tenant_id=TENANT, name="r3", status=ReleaseStatus.READY)
        first = approved(DEV, now=T0)
        second = approved(DEV, now=T0 + timedelta(minutes=5), release=other_release)
        with pytest.raises(NotNextInQueue, match=f"promotion {first.id} was approved first"):
            second.start_deployment(ALLOW, deployment_job_id=JOB, environment_promotions=[first, second], now=T0)
        first.start_deployment(ALLOW, deployment_job_id=JOB, environment_promotions=[first, second], now=T0)

    def test_recheck_denied_by_a_window_holds_until_it_opens(self) -> None:
        promotion = approved(DEV)
        assert promotion.start_deployment(FROZEN, deployment_job_id=JOB, environment_promotions=[], now=T0) == []
        assert promotion.status is PromotionStatus.PENDING_GATE
        assert promotion.next_open == FROZEN.next_open
        assert promotion.deployment_job_id is None
        # When the window opens the gates run again; the promotion is approved and queues again.
        assert FROZEN.next_open is not None
        promotion.apply_gate_decision(ALLOW, now=FROZEN.next_open)
        assert (promotion.status, promotion.approved_at) == (PromotionStatus.APPROVED, FROZEN.next_open)

    def test_held_promotion_keeps_its_approvals(self) -> None:
        promotion = approved(PROD, history=through(STAGING))
        promotion.start_deployment(FROZEN, deployment_job_id=JOB, environment_promotions=[], now=T0)
        events = promotion.apply_gate_decision(ALLOW, now=T0 + timedelta(days=6))
        assert [type(e) for e in events] == [PromotionApproved]

    def test_recheck_denied_on_a_reject_environment_or_for_another_reason_rejects(self) -> None:
        promotion = approved(DEV)
        denied = outcome(DecisionResult.DENY, "GATE_PROVIDER_ERROR")
        (event,) = promotion.start_deployment(denied, deployment_job_id=JOB, environment_promotions=[], now=T0)
        assert isinstance(event, PromotionRejected)

    def test_recheck_must_be_conclusive(self) -> None:
        promotion = approved(DEV)
        with pytest.raises(DecisionInconclusive):
            promotion.start_deployment(
                outcome(DecisionResult.PENDING), deployment_job_id=JOB, environment_promotions=[], now=T0
            )

    def test_start_needs_approved(self) -> None:
        with pytest.raises(PromotionNotApproved, match="is pending_gate, expected approved"):
            request(DEV).start_deployment(ALLOW, deployment_job_id=JOB, environment_promotions=[], now=T0)

    def test_success_completes(self) -> None:
        promotion = deploying(DEV)
        with pytest.raises(DeploymentJobMismatch):
            promotion.complete_deployment(deployment_job_id=ROLLBACK_JOB, now=T0)
        (event,) = promotion.complete_deployment(deployment_job_id=JOB, now=T0)
        assert isinstance(event, PromotionCompleted)
        assert (promotion.status, promotion.finished_at, promotion.is_terminal) == (PromotionStatus.DEPLOYED, T0, True)
        with pytest.raises(PromotionAlreadyTerminal):
            promotion.complete_deployment(deployment_job_id=JOB, now=T0)

    def test_failure_without_rollback_is_final(self) -> None:
        promotion = deploying(DEV)
        (event,) = promotion.fail_deployment(deployment_job_id=JOB, reason="health check failed", now=T0)
        assert isinstance(event, PromotionFailed)
        assert (event.reason, event.rollback_job_id) == ("health check failed", None)
        assert promotion.status is PromotionStatus.FAILED
        assert promotion.is_terminal
        with pytest.raises(PromotionAlreadyTerminal):
            promotion.complete_rollback(rollback_job_id=ROLLBACK_JOB, now=T0)

    def test_failure_with_rollback_then_rolled_back(self) -> None:
        promotion = deploying(DEV)
        (failed,) = promotion.fail_deployment(
            deployment_job_id=JOB, reason="canary breach", rollback_job_id=ROLLBACK_JOB, now=T0
        )
        assert isinstance(failed, PromotionFailed)
        assert failed.rollback_job_id == ROLLBACK_JOB
        assert not promotion.is_terminal
        with pytest.raises(DeploymentJobMismatch):
            promotion.complete_rollback(rollback_job_id=JOB, now=T0)
        later = T0 + timedelta(minutes=3)
        (event,) = promotion.complete_rollback(rollback_job_id=ROLLBACK_JOB, now=later)
        assert isinstance(event, PromotionRolledBack)
        assert (event.deployment_job_id, event.rollback_job_id) == (JOB, ROLLBACK_JOB)
        assert (promotion.status, promotion.finished_at, promotion.is_terminal) == (
            PromotionStatus.ROLLED_BACK,
            later,
            True,
        )

    def test_failed_rollback_leaves_the_promotion_failed_and_final(self) -> None:
        promotion = deploying(DEV)
        promotion.fail_deployment(deployment_job_id=JOB, reason="boom", rollback_job_id=ROLLBACK_JOB, now=T0)
        assert promotion.fail_rollback(rollback_job_id=ROLLBACK_JOB, reason="agent offline", now=T0) == []
        assert promotion.status is PromotionStatus.FAILED
        assert promotion.status_message == "rollback failed: agent offline"
        assert promotion.is_terminal

    def test_job_outcomes_need_deploying(self) -> None:
        promotion = approved(DEV)
        with pytest.raises(InvalidTransition):
            promotion.complete_deployment(deployment_job_id=JOB, now=T0)
        with pytest.raises(InvalidTransition):
            promotion.fail_deployment(deployment_job_id=JOB, reason="x", now=T0)


class TestCancel:
    @pytest.mark.parametrize("stage", ["pending_gate", "pending_approval", "approved"])
    def test_cancel_before_deploying(self, stage: str) -> None:
        promotion = request(PROD, history=through(STAGING))
        if stage != "pending_gate":
            promotion.apply_gate_decision(ALLOW, now=T0)
        if stage == "approved":
            promotion.record_approvals(ApprovalSummary(required=2, granted=2, rejected=0), now=T0)
        assert promotion.status.value == stage
        (event,) = promotion.cancel(cancelled_by="bob", reason="wrong release", now=T0)
        assert isinstance(event, PromotionCancelled)
        assert (event.cancelled_by, event.reason) == ("bob", "wrong release")
        assert (promotion.status, promotion.cancelled_by) == (PromotionStatus.CANCELLED, "bob")

    def test_cancel_clears_a_hold(self) -> None:
        promotion = request(DEV)
        promotion.apply_gate_decision(FROZEN, now=T0)
        promotion.cancel(cancelled_by="bob", reason="not needed", now=T0)
        assert promotion.next_open is None

    def test_cannot_cancel_once_deploying(self) -> None:
        with pytest.raises(CancelNotAllowed, match="only promotions that have not started deploying") as info:
            deploying(DEV).cancel(cancelled_by="bob", reason="stop", now=T0)
        assert info.value.status == 409

    def test_cannot_cancel_a_finished_promotion(self) -> None:
        promotion = request(DEV)
        promotion.cancel(cancelled_by="bob", reason="x", now=T0)
        with pytest.raises(PromotionAlreadyTerminal):
            promotion.cancel(cancelled_by="bob", reason="x", now=T0)

    def test_cancel_needs_a_principal(self) -> None:
        with pytest.raises(InvalidPromotionRequest):
            request(DEV).cancel(cancelled_by="", reason="x", now=T0)


class TestQueue:
    def test_first_approved_goes_first(self) -> None:
        releases = [
            ReleaseSnapshot(id=UUID(int=0x400 + i), tenant_id=TENANT, name=f"r{i}", status=ReleaseStatus.READY)
            for i in range(3)
        ]
        late = approved(DEV, now=T0 + timedelta(minutes=9), release=releases[0])
        early = approved(DEV, now=T0 + timedelta(minutes=1), release=releases[1])
        pending = request(DEV, release=releases[2])
        elsewhere = approved(STAGING, history=[deployed(DEV, release=releases[0])], release=releases[0])
        assert next_to_deploy([late, pending, early, elsewhere], DEV.id) is early
        assert next_to_deploy([elsewhere], DEV.id) is None

    def test_nothing_starts_while_one_is_deploying(self) -> None:
        other = ReleaseSnapshot(id=UUID(int=0x450), tenant_id=TENANT, name="x", status=ReleaseStatus.READY)
        assert next_to_deploy([deploying(DEV), approved(DEV, release=other)], DEV.id) is None

    def test_ties_are_broken_deterministically(self) -> None:
        a = approved(DEV, release=ReleaseSnapshot(UUID(int=0x460), TENANT, "a", ReleaseStatus.READY))
        b = approved(DEV, release=ReleaseSnapshot(UUID(int=0x461), TENANT, "b", ReleaseStatus.READY))
        assert next_to_deploy([b, a], DEV.id) is next_to_deploy([a, b], DEV.id) is a


class TestEnvironment:
    def test_defaults(self) -> None:
        environment = env("prod", 3)
        assert environment.display_name == "prod"
        assert (environment.required_approvals, environment.require_sod) == (0, False)
        config = environment.config
        assert (config.deployment_timeout_s, config.approval_timeout_s) == (600, 7 * 24 * 3600)
        assert config.freeze_behavior is FreezeBehavior.HOLD
        check = config.health_check
        assert (check.type, check.timeout_s, check.retries, check.interval_s) == (HealthCheckType.CONTAINER, 30, 3, 10)
        assert EnvironmentConfig.from_dict(config.to_dict()) == config

    @pytest.mark.parametrize("name", ["prod", "eu-west-1", "a", "x" * 63, "0dev"])
    def test_valid_names(self, name: str) -> None:
        assert env(name, 0).name == name

    @pytest.mark.parametrize("name", ["Prod", "-prod", "prod-", "pro_d", "", "x" * 64, "pröd", "prod env"])
    def test_invalid_names(self, name: str) -> None:
        with pytest.raises(InvalidEnvironment, match="name: must be 1-63 lower-case") as info:
            env(name, 0)
        assert (info.value.code, info.value.status) == ("ENV_VALIDATION_FAILED", 400)
        assert info.value.errors[0]["loc"] == ["name"]

    @pytest.mark.parametrize(
        ("kwargs", "loc"),
        [
            ({"order": -1}, ["order_index"]),
            ({"approvals": 51}, ["required_approvals"]),
            ({"approvals": -1}, ["required_approvals"]),
            ({"require_sod": "yes"}, ["require_sod"]),
            ({"display_name": ""}, ["display_name"]),
            ({"config": {"deployment_timeout_s": 0}}, ["config", "deployment_timeout_s"]),
            ({"config": {"approval_timeout_s": "1d"}}, ["config", "approval_timeout_s"]),
            ({"config": {"freeze_behavior": "ignore"}}, ["config", "freeze_behavior"]),
            ({"config": {"retries": 3}}, ["config", "retries"]),
            ({"config": {"health_check": {"type": "http"}}}, ["config", "health_check", "port"]),
            ({"config": {"health_check": {"type": "tcp", "port": 70000}}}, ["config", "health_check", "port"]),
            ({"config": {"health_check": {"type": "command"}}}, ["config", "health_check", "command"]),
            ({"config": {"health_check": {"type": "grpc"}}}, ["config", "health_check", "type"]),
            ({"config": {"health_check": {"retries": -1}}}, ["config", "health_check", "retries"]),
            ({"config": {"gates": [{"name": "x"}]}}, ["config", "gates", 0, "type"]),
            ({"config": {"gates": [{"type": "manual"}, {"type": "manual"}]}}, ["config", "gates", 1, "name"]),
            ({"config": {"gates": "freeze-window"}}, ["config", "gates"]),
            ({"config": {"variables": ["A=1"]}}, ["config", "variables"]),
            ({"config": {"variables": {"9LIVES": "x"}}}, ["config", "variables", "9LIVES"]),
            ({"config": {"variables": {"PORT": 8080}}}, ["config", "variables", "PORT"]),
        ],
    )
    def test_invalid_fields_are_located(self, kwargs: dict[str, Any], loc: list[Any]) -> None:
        order = kwargs.pop("order", 0)
        approvals = kwargs.pop("approvals", 0)
        with pytest.raises(InvalidEnvironment) as info:
            env("prod", order, approvals=approvals, **kwargs)
        assert [e["loc"] for e in info.value.errors] == [loc]

    def test_every_problem_is_reported_at_once(self) -> None:
        with pytest.raises(InvalidEnvironment) as info:
            env("Bad Name", -3, approvals=99)
        assert [e["loc"] for e in info.value.errors] == [["name"], ["order_index"], ["required_approvals"]]
        assert info.value.detail.startswith("name: must be")

    def test_http_health_check_defaults(self) -> None:
        config = EnvironmentConfig.from_dict({"health_check": {"type": "http", "port": 8080}})
        assert (config.health_check.path, config.health_check.port, config.health_check.timeout_s) == ("/", 8080, 30)

    def test_variables_are_kept_as_strings(self) -> None:
        config = EnvironmentConfig.from_dict({"variables": {"REGION": "eu-west-1", "log.level": "debug"}})
        assert config.variables == {"REGION": "eu-west-1", "log.level": "debug"}
        assert config.to_dict()["variables"] == {"REGION": "eu-west-1", "log.level": "debug"}
        assert EnvironmentConfig.from_dict(config.to_dict()) == config
        assert EnvironmentConfig().variables == {}

    def test_deployment_settings_are_kept_and_checked_against_the_deployment_contract(self) -> None:
        rolling = {"strategy": "rolling", "batch_size": "25%", "failure_behavior": "rollback"}
        config = EnvironmentConfig.from_dict({"deployment": rolling})
        assert config.deployment == rolling
        assert EnvironmentConfig.from_dict(config.to_dict()) == config
        assert "deployment" not in EnvironmentConfig().to_dict()
        with pytest.raises(InvalidEnvironment) as info:
            EnvironmentConfig.from_dict({"deployment": {"strategy": "big-bang", "batch_size": "0"}})
        assert {tuple(e["loc"]) for e in info.value.errors} == {
            ("config", "deployment", "strategy"),
            ("config", "deployment", "batch_size"),
        }
        with pytest.raises(InvalidEnvironment, match="canary_steps"):
            EnvironmentConfig.from_dict({"deployment": {"strategy": "canary", "canary_steps": [50, 10]}})

    def test_gates_are_normalised(self) -> None:
        config = EnvironmentConfig.from_dict({"gates": [{"type": "freeze-window"}, {"type": "manual", "name": "qa"}]})
        assert config.gates == (
            {"type": "freeze-window", "name": "freeze-window", "config": {}},
            {"type": "manual", "name": "qa", "config": {}},
        )

    def test_update_revalidates_and_keeps_identity(self) -> None:
        environment = env("prod", 2)
        updated = environment.updated(required_approvals=3, config={"freeze_behavior": "reject"})
        assert (updated.id, updated.created_at, updated.required_approvals) == (environment.id, T0, 3)
        assert updated.config.freeze_behavior is FreezeBehavior.REJECT
        with pytest.raises(InvalidEnvironment):
            environment.updated(required_approvals=100)
        with pytest.raises(InvalidEnvironment, match="id cannot change"):
            environment.updated(id=UUID(int=5))
        with pytest.raises(InvalidEnvironment, match="unknown fields: colour"):
            environment.updated(colour="blue")

    def test_to_dict(self) -> None:
        data = env("prod", 2).to_dict()
        assert data["created_at"] == "2025-04-01T09:00:00Z"
        assert data["config"]["deployment_timeout_s"] == 600


def _all_errors() -> list[type[DomainError]]:
    for module in ("freeze", "gates", "policy", "decision"):
        importlib.import_module(f"stella.promotion.{module}")
    found: list[type[DomainError]] = []
    pending: list[type[DomainError]] = [DomainError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("error", _all_errors(), ids=lambda cls: cls.__name__)
def test_every_error_has_a_stable_code_and_status(error: type[DomainError]) -> None:
    assert error.code.split("_")[0] in ("PROM", "ENV", "GATE")
    assert error.status in (400, 404, 409, 422)
    assert error.title
    # Some errors take extra constructor arguments; the base initialiser gives every one a detail.
    instance = BaseException.__new__(error)
    DomainError.__init__(instance, "detail")
    assert instance.to_dict() == {
        "code": error.code,
        "status": error.status,
        "title": error.title,
        "detail": "detail",
        "errors": [],
    }


def test_error_codes_are_unique() -> None:
    codes = [error.code for error in _all_errors()]
    assert len(codes) == len(set(codes))


def test_events_name_the_published_event_types() -> None:
    names = {
        cls.name
        for cls in (
            PromotionRequested,
            PromotionApproved,
            PromotionRejected,
            PromotionStarted,
            PromotionCompleted,
            PromotionFailed,
            PromotionCancelled,
            PromotionRolledBack,
        )
    }
    assert names == {
        f"promotion.{n}"
        for n in ("requested", "approved", "rejected", "started", "completed", "failed", "cancelled", "rolled_back")
    }


def test_promotion_to_dict_is_plain_json() -> None:
    promotion = approved(DEV)
    data = promotion.to_dict()
    assert data["status"] == "approved"
    assert data["approved_at"] == "2025-04-01T09:00:00Z"
    assert data["id"] == str(promotion.id)


class TestUnstartedRun:
    def test_a_run_that_never_started_rejects_with_a_reason(self) -> None:
        promotion = request(DEV)
        (event,) = promotion.abandon_unstarted_run(waited=timedelta(minutes=31), now=T0)
        assert isinstance(event, PromotionRejected)
        assert event.reason_codes == ("PROM_RUN_NOT_STARTED",)
        assert promotion.status is PromotionStatus.REJECTED
        assert promotion.finished_at == T0
        assert promotion.status_message is not None
        assert "did not start within 31 min" in promotion.status_message

    def test_only_while_waiting_on_the_gates(self) -> None:
        promotion = approved()
        with pytest.raises(PromotionNotPending):
            promotion.abandon_unstarted_run(waited=timedelta(minutes=1), now=T0)
        cancelled = request(DEV)
        cancelled.cancel(cancelled_by="someone", reason="no", now=T0)
        with pytest.raises(PromotionAlreadyTerminal):
            cancelled.abandon_unstarted_run(waited=timedelta(minutes=1), now=T0)


class TestWorkflowEnded:
    def test_a_promotion_waiting_on_its_gates_fails_with_the_runs_reason(self) -> None:
        promotion = request(DEV)
        (event,) = promotion.fail_workflow(reason="the run could not start: unknown input", now=T0 + timedelta(1))
        assert isinstance(event, PromotionFailed)
        assert (event.reason, event.deployment_job_id, event.rollback_job_id) == (
            "the run could not start: unknown input",
            None,
            None,
        )
        assert promotion.status is PromotionStatus.FAILED
        assert promotion.is_terminal
        assert promotion.status_message == "the run could not start: unknown input"
        assert promotion.reason_codes == ("PROM_WORKFLOW_RUN_ENDED",)

    def test_a_promotion_waiting_on_approvals_fails_too(self) -> None:
        promotion = request(PROD, history=through(STAGING))
        promotion.apply_gate_decision(ALLOW, now=T0)
        assert promotion.fail_workflow(reason="run finished", now=T0)
        assert promotion.status is PromotionStatus.FAILED

    def test_a_decided_promotion_ignores_the_end_of_its_run(self) -> None:
        promotion = approved(DEV)
        assert promotion.fail_workflow(reason="run finished", now=T0) == []
        assert promotion.status is PromotionStatus.APPROVED


def _release(n: int) -> ReleaseSnapshot:
    return ReleaseSnapshot(id=UUID(int=0x700 + n), tenant_id=TENANT, name=f"q{n}", status=ReleaseStatus.READY)


class TestDeploymentSlot:
    def test_the_first_approved_promotion_is_cleared_and_the_next_queues_behind_it(self) -> None:
        first = approved(DEV, now=T0, release=_release(1))
        second = approved(DEV, now=T0 + timedelta(minutes=1), release=_release(2))

        assert first.clear_to_deploy(environment_promotions=[first, second], now=T0) is True
        assert first.holds_deploy_slot and first.status is PromotionStatus.APPROVED
        assert second.clear_to_deploy(environment_promotions=[first, second], now=T0) is False
        assert not second.holds_deploy_slot
        assert second.status_message == (
            f"approved; queued behind promotion {first.id}, which is starting its deployment to this environment"
        )

    def test_a_later_approved_promotion_waits_for_the_earlier_one_even_with_the_slot_free(self) -> None:
        early = approved(DEV, now=T0, release=_release(3))
        late = approved(DEV, now=T0 + timedelta(minutes=5), release=_release(4))

        assert late.clear_to_deploy(environment_promotions=[early, late], now=T0) is False
        assert late.status_message == f"approved; queued behind promotion {early.id}, approved earlier"

    def test_a_deploying_promotion_of_another_environment_does_not_block(self) -> None:
        elsewhere = approved(STAGING, history=[deployed(DEV, release=_release(5))], release=_release(5))
        elsewhere.begin_deployment(deployment_job_id=JOB, now=T0)
        mine = approved(DEV, release=_release(6))

        assert mine.clear_to_deploy(environment_promotions=[elsewhere, mine], now=T0) is True

    def test_clearing_needs_an_approved_promotion(self) -> None:
        with pytest.raises(PromotionNotApproved):
            request(DEV, release=_release(7)).clear_to_deploy(environment_promotions=[], now=T0)

    def test_the_slot_frees_when_the_job_ends_and_the_queue_moves_on(self) -> None:
        first = approved(DEV, now=T0, release=_release(8))
        second = approved(DEV, now=T0 + timedelta(minutes=1), release=_release(9))
        first.clear_to_deploy(environment_promotions=[first, second], now=T0)
        first.begin_deployment(deployment_job_id=JOB, now=T0)
        assert second.clear_to_deploy(environment_promotions=[first, second], now=T0) is False

        first.finish_job(deployment_job_id=JOB, outcome="failed", reason="health check failed", now=T0)

        assert not first.holds_deploy_slot
        assert next_to_deploy([first, second], DEV.id) is second
        assert second.clear_to_deploy(environment_promotions=[first, second], now=T0) is True

    def test_release_slot_gives_the_slot_back_but_keeps_the_approval(self) -> None:
        promotion = approved(DEV, release=_release(10))
        promotion.clear_to_deploy(environment_promotions=[], now=T0)

        promotion.release_slot(reason="approved; no deployment: run ended", now=T0)

        assert promotion.status is PromotionStatus.APPROVED
        assert not promotion.holds_deploy_slot
        assert promotion.status_message == "approved; no deployment: run ended"


class TestJobOutcomes:
    def test_job_started_moves_approved_to_deploying_once(self) -> None:
        promotion = approved(DEV)
        (event,) = promotion.begin_deployment(deployment_job_id=JOB, now=T0)

        assert isinstance(event, PromotionStarted) and event.deployment_job_id == JOB
        assert promotion.status is PromotionStatus.DEPLOYING
        assert promotion.begin_deployment(deployment_job_id=JOB, now=T0) == []
        with pytest.raises(DeploymentJobMismatch):
            promotion.begin_deployment(deployment_job_id=ROLLBACK_JOB, now=T0)

    def test_a_succeeded_job_deploys_and_counts_as_reaching_the_environment(self) -> None:
        promotion = approved(DEV)
        promotion.begin_deployment(deployment_job_id=JOB, now=T0)

        (event,) = promotion.finish_job(
            deployment_job_id=JOB, outcome="succeeded", reason="no targets: nothing to deploy", now=T0
        )

        assert isinstance(event, PromotionCompleted)
        assert promotion.status is PromotionStatus.DEPLOYED and promotion.is_terminal
        assert promotion.status_message == "no targets: nothing to deploy"
        assert request(STAGING, history=[promotion]).status is PromotionStatus.PENDING_GATE

    def test_a_job_end_arriving_before_its_start_applies_both(self) -> None:
        promotion = approved(DEV)

        events = promotion.finish_job(deployment_job_id=JOB, outcome="succeeded", reason="", now=T0)

        assert [type(e) for e in events] == [PromotionStarted, PromotionCompleted]
        assert promotion.begin_deployment(deployment_job_id=JOB, now=T0) == []
        assert promotion.status is PromotionStatus.DEPLOYED

    def test_a_job_end_applied_twice_changes_nothing_the_second_time(self) -> None:
        promotion = approved(DEV)
        promotion.finish_job(deployment_job_id=JOB, outcome="failed", reason="boom", now=T0)
        version = promotion.version

        assert promotion.finish_job(deployment_job_id=JOB, outcome="failed", reason="boom", now=T0) == []
        assert promotion.version == version

    @pytest.mark.parametrize("outcome", ["failed", "cancelled"])
    def test_a_failed_or_cancelled_job_fails_the_promotion_for_good(self, outcome: str) -> None:
        promotion = approved(DEV)
        promotion.begin_deployment(deployment_job_id=JOB, now=T0)

        (event,) = promotion.finish_job(deployment_job_id=JOB, outcome=outcome, reason="", now=T0)

        assert isinstance(event, PromotionFailed) and event.rollback_job_id is None
        assert promotion.status is PromotionStatus.FAILED and promotion.is_terminal
        assert promotion.status_message in ("the deployment failed", "the deployment was cancelled")
        with pytest.raises(PromotionOrderViolation):
            request(STAGING, history=[promotion])

    def test_an_automatic_rollback_ends_failed_then_rolled_back(self) -> None:
        promotion = approved(DEV)
        promotion.begin_deployment(deployment_job_id=JOB, now=T0)

        events = promotion.finish_job(
            deployment_job_id=JOB, outcome="rolled_back", reason="batch 2 failed its health check", now=T0
        )

        assert [type(e) for e in events] == [PromotionFailed, PromotionRolledBack]
        assert promotion.status is PromotionStatus.ROLLED_BACK and promotion.is_terminal
        assert promotion.rollback_job_id == JOB and promotion.rollback_succeeded is True
        assert promotion.status_message == "rolled back: batch 2 failed its health check"

    def test_an_unknown_outcome_is_refused(self) -> None:
        promotion = approved(DEV)
        with pytest.raises(InvalidPromotionRequest):
            promotion.finish_job(deployment_job_id=JOB, outcome="exploded", reason="", now=T0)
        assert promotion.status is PromotionStatus.APPROVED

    def test_a_job_of_a_promotion_that_was_not_approved_is_refused(self) -> None:
        with pytest.raises(PromotionNotApproved):
            request(DEV).finish_job(deployment_job_id=JOB, outcome="succeeded", reason="", now=T0)

    def test_a_manual_rollback_after_a_final_failure_ends_rolled_back(self) -> None:
        promotion = approved(DEV)
        promotion.finish_job(deployment_job_id=JOB, outcome="failed", reason="boom", now=T0)
        assert promotion.is_terminal

        promotion.begin_rollback(rollback_job_id=ROLLBACK_JOB, rollback_of=JOB, now=T0)
        assert not promotion.is_terminal
        (event,) = promotion.finish_rollback(
            rollback_job_id=ROLLBACK_JOB, rollback_of=JOB, succeeded=True, reason="", now=T0
        )

        assert isinstance(event, PromotionRolledBack) and event.rollback_job_id == ROLLBACK_JOB
        assert promotion.status is PromotionStatus.ROLLED_BACK
        assert (
            promotion.finish_rollback(rollback_job_id=ROLLBACK_JOB, rollback_of=JOB, succeeded=True, reason="", now=T0)
            == []
        )

    def test_a_failed_manual_rollback_leaves_the_promotion_failed_and_final(self) -> None:
        promotion = approved(DEV)
        promotion.finish_job(deployment_job_id=JOB, outcome="failed", reason="boom", now=T0)

        assert (
            promotion.finish_rollback(
                rollback_job_id=ROLLBACK_JOB, rollback_of=JOB, succeeded=False, reason="agent offline", now=T0
            )
            == []
        )
        assert promotion.status is PromotionStatus.FAILED and promotion.is_terminal
        assert promotion.rollback_succeeded is False

    def test_a_rollback_of_another_job_or_of_a_deployed_promotion_changes_nothing(self) -> None:
        promotion = deployed(DEV)
        version = promotion.version
        assert (
            promotion.finish_rollback(rollback_job_id=ROLLBACK_JOB, rollback_of=JOB, succeeded=True, reason="", now=T0)
            == []
        )
        assert promotion.status is PromotionStatus.DEPLOYED and promotion.version == version


class TestDeployStartWindow:
    def test_a_closed_window_at_deploy_start_keeps_the_promotion_approved_until_it_opens(self) -> None:
        promotion = approved(DEV, release=_release(20))
        opens = datetime(2025, 4, 7, 6, 0, tzinfo=UTC)

        assert promotion.wait_for_window(reason="release freeze", next_open=opens, now=T0) == []

        assert promotion.status is PromotionStatus.APPROVED and not promotion.holds_deploy_slot
        assert promotion.next_open == opens
        assert promotion.status_message == "approved; the deployment waits: release freeze (until 2025-04-07T06:00:00Z)"
        assert promotion.clear_to_deploy(environment_promotions=[promotion], now=opens) is True
        assert promotion.next_open is None

    def test_only_an_approved_promotion_waits_for_a_window(self) -> None:
        with pytest.raises(PromotionNotApproved):
            request(DEV, release=_release(21)).wait_for_window(reason=None, next_open=None, now=T0)
