"""Approval rules: eligibility, separation of duties, distinct counting, idempotent votes, expiry."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from stella.approval.domain import (
    APPROVE_PERMISSION,
    DEFAULT_APPROVAL_TIMEOUT,
    ApprovalCancelled,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalNotFound,
    ApprovalNotPending,
    ApprovalRequest,
    ApprovalRequested,
    ApprovalStatus,
    ApproverNotEligible,
    DenialReason,
    DeployerIsApprover,
    Grant,
    InvalidApprovalRequest,
    InvalidVote,
    Principal,
    SelfApprovalForbidden,
    Vote,
    VoteAction,
    VoteAlreadyCast,
    VoteCast,
    cancel,
    check_deployer,
    check_eligible,
    expire,
    request_approval,
    summarize,
    vote,
)

T0 = datetime(2025, 4, 1, 8, 0, tzinfo=UTC)
TENANT = UUID("00000000-0000-0000-0000-000000000001")
OTHER_TENANT = UUID("00000000-0000-0000-0000-000000000002")
PROD = UUID("00000000-0000-0000-0000-0000000000e1")
STAGING = UUID("00000000-0000-0000-0000-0000000000e2")
PROMOTION = UUID("00000000-0000-0000-0000-0000000000f1")
REQUESTER = UUID("00000000-0000-0000-0000-00000000a000")
ALICE = UUID("00000000-0000-0000-0000-00000000a001")
BOB = UUID("00000000-0000-0000-0000-00000000a002")
CAROL = UUID("00000000-0000-0000-0000-00000000a003")


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def approver(principal_id: UUID, *, environment: UUID | None = PROD, groups: tuple[str, ...] = ()) -> Principal:
    return Principal.of(principal_id, TENANT, [APPROVE_PERMISSION], environment_id=environment, groups=groups)


def open_request(
    *, required: int = 2, require_sod: bool = True, groups: tuple[str, ...] = (), timeout: timedelta | None = None
) -> ApprovalRequest:
    extra = {} if timeout is None else {"timeout": timeout}
    return request_approval(
        promotion_id=PROMOTION,
        tenant_id=TENANT,
        environment_id=PROD,
        requester_id=REQUESTER,
        required=required,
        require_sod=require_sod,
        eligible_groups=groups,
        now=T0,
        **extra,
    ).request


# --- opening a request -----------------------------------------------------------------------------------


def test_request_opens_pending_with_a_seven_day_default_timeout() -> None:
    result = request_approval(
        promotion_id=PROMOTION,
        tenant_id=TENANT,
        environment_id=PROD,
        requester_id=REQUESTER,
        required=2,
        require_sod=True,
        eligible_groups=["release-managers", "sre"],
        now=T0,
    )

    request = result.request
    assert request.status is ApprovalStatus.PENDING
    assert request.timeout == DEFAULT_APPROVAL_TIMEOUT == timedelta(days=7)
    assert request.expires_at == T0 + timedelta(days=7)
    assert request.votes == ()
    assert result.events == (
        ApprovalRequested(
            promotion_id=PROMOTION,
            tenant_id=TENANT,
            environment_id=PROD,
            at=T0,
            requester_id=REQUESTER,
            required=2,
            require_sod=True,
            eligible_groups=("release-managers", "sre"),
            expires_at=T0 + timedelta(days=7),
        ),
    )
    assert result.events[0].name == "approval.requested"


@pytest.mark.parametrize(
    ("required", "timeout", "groups", "fragment"),
    [
        (0, timedelta(days=1), (), "required approvals 0"),
        (101, timedelta(days=1), (), "required approvals 101"),
        (True, timedelta(days=1), (), "required approvals True"),
        (1, timedelta(0), (), "must be positive"),
        (1, timedelta(days=1), ("",), "group names"),
    ],
)
def test_invalid_policy_is_refused(required: int, timeout: timedelta, groups: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(InvalidApprovalRequest) as caught:
        request_approval(
            promotion_id=PROMOTION,
            tenant_id=TENANT,
            environment_id=PROD,
            requester_id=REQUESTER,
            required=required,
            require_sod=False,
            eligible_groups=groups,
            timeout=timeout,
            now=T0,
        )

    assert fragment in caught.value.detail
    assert caught.value.status == 400


# --- granting and denying --------------------------------------------------------------------------------


def test_n_distinct_approvals_grant() -> None:
    request = open_request(required=2)

    first = vote(request, approver(ALICE), "approved", "looks good", at(1))

    assert first.request.status is ApprovalStatus.PENDING
    assert [type(e) for e in first.events] == [VoteCast]
    cast = first.events[0]
    assert isinstance(cast, VoteCast)
    assert (cast.approver_id, cast.action, cast.granted, cast.required) == (ALICE, VoteAction.APPROVED, 1, 2)

    second = vote(first.request, approver(BOB), VoteAction.APPROVED, None, at(2))

    assert second.request.status is ApprovalStatus.GRANTED
    assert second.request.decided_at == at(2)
    assert [type(e) for e in second.events] == [VoteCast, ApprovalGranted]
    granted = second.events[1]
    assert isinstance(granted, ApprovalGranted)
    assert granted.name == "approval.granted"
    assert granted.summary.approvers == (ALICE, BOB)
    assert granted.summary.granted == 2


def test_one_approval_grants_when_one_is_required() -> None:
    result = vote(open_request(required=1), approver(ALICE), "approved", "", at(1))

    assert result.request.status is ApprovalStatus.GRANTED


def test_any_eligible_rejection_denies_even_after_approvals() -> None:
    request = vote(open_request(required=3), approver(ALICE), "approved", "", at(1)).request
    request = vote(request, approver(BOB), "approved", "", at(2)).request

    result = vote(request, approver(CAROL), "rejected", "CVE-2025-1 unpatched", at(3))

    assert result.request.status is ApprovalStatus.DENIED
    denied = result.events[-1]
    assert isinstance(denied, ApprovalDenied)
    assert (denied.reason, denied.rejected_by) == (DenialReason.REJECTED, CAROL)
    assert denied.summary.rejected == 1
    assert denied.summary.granted == 2


# --- separation of duties --------------------------------------------------------------------------------


def test_requester_cannot_approve_under_sod_and_nothing_is_recorded() -> None:
    request = open_request(require_sod=True)

    with pytest.raises(SelfApprovalForbidden) as caught:
        vote(request, approver(REQUESTER), "approved", "mine", at(1))

    assert caught.value.code == "PROM_SOD_VIOLATION"
    assert caught.value.status == 422
    assert request.votes == ()
    assert request.status is ApprovalStatus.PENDING


def test_requester_may_approve_when_sod_is_off() -> None:
    result = vote(open_request(required=1, require_sod=False), approver(REQUESTER), "approved", "", at(1))

    assert result.request.status is ApprovalStatus.GRANTED


def test_requester_may_reject_their_own_promotion_under_sod() -> None:
    result = vote(open_request(require_sod=True), approver(REQUESTER), "rejected", "withdrawn", at(1))

    assert result.request.status is ApprovalStatus.DENIED


def test_a_stored_self_approval_never_counts_under_sod() -> None:
    # A state written before SoD was switched on, or by hand: the count must still exclude it.
    request = open_request(required=1, require_sod=True)
    tainted = replace(request, votes=(Vote(REQUESTER, VoteAction.APPROVED, "", at(1)),))

    assert summarize(tainted).granted == 0
    assert vote(tainted, approver(ALICE), "approved", "", at(2)).request.status is ApprovalStatus.GRANTED


def test_an_approver_cannot_deploy_under_sod() -> None:
    request = vote(open_request(required=1), approver(ALICE), "approved", "", at(1)).request

    with pytest.raises(DeployerIsApprover) as caught:
        check_deployer(request, approver(ALICE))

    assert caught.value.status == 422
    assert caught.value.code == "PROM_SOD_DEPLOYER_IS_APPROVER"
    check_deployer(request, approver(BOB))
    check_deployer(request, approver(REQUESTER))


def test_an_approver_may_deploy_when_sod_is_off() -> None:
    request = vote(open_request(required=1, require_sod=False), approver(ALICE), "approved", "", at(1)).request

    check_deployer(request, approver(ALICE))


def test_a_rejecter_is_not_an_approver_for_the_deployer_rule() -> None:
    request = vote(open_request(), approver(ALICE), "rejected", "", at(1)).request

    check_deployer(request, approver(ALICE))


# --- eligibility -----------------------------------------------------------------------------------------


def test_principal_without_the_approve_permission_is_not_eligible() -> None:
    request = open_request()
    viewer = Principal.of(ALICE, TENANT, ["promotion:read", "promotion:deploy"], environment_id=PROD)

    with pytest.raises(ApproverNotEligible) as caught:
        vote(request, viewer, "approved", "", at(1))

    assert caught.value.status == 403
    assert caught.value.code == "PROM_APPROVER_NOT_ELIGIBLE"


def test_a_permission_on_another_environment_does_not_count() -> None:
    with pytest.raises(ApproverNotEligible):
        vote(open_request(), approver(ALICE, environment=STAGING), "approved", "", at(1))


def test_a_tenant_wide_permission_counts_on_every_environment() -> None:
    result = vote(open_request(required=1), approver(ALICE, environment=None), "approved", "", at(1))

    assert result.request.status is ApprovalStatus.GRANTED


def test_mixed_grants_are_matched_per_environment() -> None:
    principal = Principal(
        id=ALICE,
        tenant_id=TENANT,
        grants=frozenset({Grant(APPROVE_PERMISSION, STAGING), Grant("promotion:read", PROD)}),
    )

    assert principal.can(APPROVE_PERMISSION, STAGING)
    assert not principal.can(APPROVE_PERMISSION, PROD)
    with pytest.raises(ApproverNotEligible):
        check_eligible(open_request(), principal)


def test_when_the_policy_names_groups_the_principal_must_be_in_one() -> None:
    request = open_request(required=1, groups=("sre", "release-managers"))

    with pytest.raises(ApproverNotEligible, match="none of the approver groups"):
        vote(request, approver(ALICE, groups=("developers",)), "approved", "", at(1))
    with pytest.raises(ApproverNotEligible):
        vote(request, approver(ALICE), "approved", "", at(1))

    result = vote(request, approver(BOB, groups=("developers", "sre")), "approved", "", at(1))
    assert result.request.status is ApprovalStatus.GRANTED


def test_an_ineligible_rejection_does_not_deny() -> None:
    request = open_request()
    outsider = Principal.of(ALICE, TENANT, ["promotion:read"], environment_id=PROD)

    with pytest.raises(ApproverNotEligible):
        vote(request, outsider, "rejected", "no", at(1))
    assert request.status is ApprovalStatus.PENDING


def test_a_principal_of_another_tenant_sees_no_request() -> None:
    stranger = Principal.of(ALICE, OTHER_TENANT, [APPROVE_PERMISSION])

    with pytest.raises(ApprovalNotFound) as caught:
        vote(open_request(), stranger, "approved", "", at(1))
    assert caught.value.status == 404
    with pytest.raises(ApprovalNotFound):
        check_deployer(open_request(), stranger)


# --- one vote per principal ------------------------------------------------------------------------------


def test_repeating_the_same_vote_is_idempotent() -> None:
    request = vote(open_request(required=2), approver(ALICE), "approved", "first", at(1)).request

    again = vote(request, approver(ALICE), "approved", "second click", at(2))

    assert again.events == ()
    assert not again.changed
    assert again.request == request
    assert summarize(again.request).granted == 1


def test_repeating_the_deciding_vote_after_the_decision_is_still_idempotent() -> None:
    granted = vote(open_request(required=1), approver(ALICE), "approved", "", at(1)).request

    again = vote(granted, approver(ALICE), "approved", "", at(2))

    assert again.events == ()
    assert again.request.status is ApprovalStatus.GRANTED


def test_changing_a_vote_is_refused() -> None:
    request = vote(open_request(required=2), approver(ALICE), "approved", "", at(1)).request

    with pytest.raises(VoteAlreadyCast) as caught:
        vote(request, approver(ALICE), "rejected", "changed my mind", at(2))

    assert caught.value.status == 409
    assert caught.value.code == "PROM_VOTE_ALREADY_CAST"


def test_the_same_principal_twice_never_makes_two_approvals() -> None:
    request = open_request(required=2)
    request = vote(request, approver(ALICE), "approved", "", at(1)).request
    request = vote(request, approver(ALICE, environment=None, groups=("sre",)), "approved", "", at(2)).request

    assert request.status is ApprovalStatus.PENDING
    assert summarize(request).approvers == (ALICE,)


def test_duplicate_stored_votes_count_once() -> None:
    request = open_request(required=2)
    doubled = replace(
        request, votes=(Vote(ALICE, VoteAction.APPROVED, "", at(1)), Vote(ALICE, VoteAction.APPROVED, "", at(2)))
    )

    assert summarize(doubled).granted == 1


# --- decided, expired, cancelled -------------------------------------------------------------------------


def test_voting_on_a_decided_request_is_refused() -> None:
    denied = vote(open_request(), approver(ALICE), "rejected", "", at(1)).request

    with pytest.raises(ApprovalNotPending) as caught:
        vote(denied, approver(BOB), "approved", "", at(2))

    assert caught.value.status == 409
    assert caught.value.code == "PROM_APPROVAL_NOT_PENDING"


def test_expire_before_the_timeout_changes_nothing() -> None:
    request = open_request()

    result = expire(request, T0 + DEFAULT_APPROVAL_TIMEOUT - timedelta(seconds=1))

    assert result.events == ()
    assert result.request == request


def test_expire_at_the_timeout_denies() -> None:
    request = vote(open_request(), approver(ALICE), "approved", "", at(1)).request
    deadline = T0 + timedelta(days=7)

    result = expire(request, deadline)

    assert result.request.status is ApprovalStatus.EXPIRED
    assert result.request.decided_at == deadline
    (event,) = result.events
    assert isinstance(event, ApprovalDenied)
    assert event.name == "approval.denied"
    assert (event.reason, event.rejected_by) == (DenialReason.EXPIRED, None)
    assert event.summary.granted == 1


def test_a_custom_timeout_is_honoured() -> None:
    request = open_request(timeout=timedelta(hours=4))

    assert expire(request, at(3.9)).events == ()
    assert expire(request, at(4)).request.status is ApprovalStatus.EXPIRED


def test_expire_leaves_a_decided_request_alone() -> None:
    granted = vote(open_request(required=1), approver(ALICE), "approved", "", at(1)).request

    result = expire(granted, T0 + timedelta(days=30))

    assert result.events == ()
    assert result.request.status is ApprovalStatus.GRANTED


def test_a_vote_past_the_expiry_is_refused_even_before_expire_runs() -> None:
    request = open_request()

    with pytest.raises(ApprovalExpired) as caught:
        vote(request, approver(ALICE), "approved", "", T0 + timedelta(days=7))

    assert caught.value.code == "PROM_APPROVAL_EXPIRED"
    assert isinstance(caught.value, ApprovalNotPending)


def test_a_vote_on_an_expired_request_is_refused() -> None:
    expired = expire(open_request(), T0 + timedelta(days=8)).request

    with pytest.raises(ApprovalExpired):
        vote(expired, approver(ALICE), "approved", "", T0 + timedelta(days=9))


def test_cancel_withdraws_a_pending_request() -> None:
    request = open_request()

    result = cancel(request, at(1), "promotion cancelled")

    assert result.request.status is ApprovalStatus.CANCELLED
    assert result.events == (
        ApprovalCancelled(
            promotion_id=PROMOTION, tenant_id=TENANT, environment_id=PROD, at=at(1), reason="promotion cancelled"
        ),
    )
    with pytest.raises(ApprovalNotPending):
        vote(result.request, approver(ALICE), "approved", "", at(2))
    assert cancel(result.request, at(3), "again").events == ()


def test_cancel_keeps_a_decided_outcome() -> None:
    granted = vote(open_request(required=1), approver(ALICE), "approved", "", at(1)).request

    assert cancel(granted, at(2), "late").request.status is ApprovalStatus.GRANTED


# --- vote shape ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "comment", "fragment"),
    [("approve", "", "vote action 'approve'"), ("approved", "x" * 4001, "at most 4000")],
)
def test_a_malformed_vote_is_refused(action: str, comment: str, fragment: str) -> None:
    with pytest.raises(InvalidVote, match=fragment):
        vote(open_request(), approver(ALICE), action, comment, at(1))


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        vote(open_request(), approver(ALICE), "approved", "", datetime(2025, 4, 1, 9))


# --- summary ---------------------------------------------------------------------------------------------


def test_summary_for_the_approval_gate_and_the_decision_record() -> None:
    request = open_request(required=3)
    request = vote(request, approver(BOB), "approved", "ok", at(2)).request
    request = vote(request, approver(ALICE), "approved", "", at(1)).request  # clocks may disagree

    summary = summarize(request)

    assert (summary.required, summary.granted, summary.rejected) == (3, 2, 0)
    assert summary.approvers == (BOB, ALICE)
    assert summary.to_dict() == {
        "status": "pending",
        "required": 3,
        "granted": 2,
        "rejected": 0,
        "approvers": [str(BOB), str(ALICE)],
        "rejecters": [],
        "votes": [
            {"approver": str(ALICE), "action": "approved", "at": at(1).isoformat(), "comment": ""},
            {"approver": str(BOB), "action": "approved", "at": at(2).isoformat(), "comment": "ok"},
        ],
        "requested_at": T0.isoformat(),
        "expires_at": (T0 + timedelta(days=7)).isoformat(),
        "decided_at": None,
    }


def test_errors_carry_a_problem_shape() -> None:
    with pytest.raises(SelfApprovalForbidden) as caught:
        vote(open_request(), approver(REQUESTER), "approved", "", at(1))

    problem = caught.value.as_problem()
    assert (problem["code"], problem["status"]) == ("PROM_SOD_VIOLATION", 422)
    assert problem["title"] == "The requester cannot approve their own promotion"
    assert str(PROMOTION) in problem["detail"]
