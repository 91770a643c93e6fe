"""The handlers' pure parts: reading the approval step's inputs, opening a request, the voter, event subjects."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stella.approval import domain
from stella.approval.handlers import (
    CANCELLATION_REASON,
    StepInputs,
    open_request,
    parse_step_inputs,
    subject_of,
    voter,
)
from stella.contracts.approval import (
    APPROVAL_DENIED,
    APPROVAL_GRANTED,
    APPROVAL_REQUESTED,
    VOTE_CAST,
    CastVote,
    VoteAction,
)
from stella.contracts.workflow import ExecuteStep

T0 = datetime(2025, 4, 1, 8, 0, tzinfo=UTC)
TENANT = uuid.UUID("00000000-0000-0000-0000-000000000001")
PROMOTION = uuid.UUID("00000000-0000-0000-0000-0000000000f1")
PROD = uuid.UUID("00000000-0000-0000-0000-0000000000e1")
REQUESTER = uuid.UUID("00000000-0000-0000-0000-00000000a000")
ALICE = uuid.UUID("00000000-0000-0000-0000-00000000a001")


def run_inputs(**overrides: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = {
        "promotion_id": str(PROMOTION),
        "release_id": str(uuid.uuid4()),
        "environment_id": str(PROD),
        "requested_by": str(REQUESTER),
        "approval_required": True,
        "required_approvals": 2,
        "require_sod": True,
        "approver_groups": ["sre"],
    }
    inputs.update(overrides)
    return inputs


def step(inputs: Any, *, subject_id: uuid.UUID | None = PROMOTION) -> ExecuteStep:
    # The workflow's resolved step context: run inputs plus the upstream steps' results.
    return ExecuteStep(
        tenant_id=TENANT,
        correlation_id=uuid.uuid4(),
        run_id=uuid.uuid4(),
        node_id="approval",
        attempt=1,
        step_type="approval",
        config={},
        inputs={"inputs": inputs, "steps": {"gates": {"status": "succeeded", "attempt": 1, "outputs": {}}}},
        subject_id=subject_id,
    )


def test_the_policy_is_read_from_the_run_inputs_and_extra_inputs_are_ignored() -> None:
    parsed = parse_step_inputs(step(run_inputs()))

    assert parsed == StepInputs(
        promotion_id=PROMOTION,
        environment_id=PROD,
        requested_by=REQUESTER,
        required_approvals=2,
        require_sod=True,
        approver_groups=["sre"],
    )


def test_missing_groups_mean_no_group_restriction() -> None:
    inputs = run_inputs()
    del inputs["approver_groups"]

    assert parse_step_inputs(step(inputs)).approver_groups == []
    assert parse_step_inputs(step(run_inputs(approver_groups=None))).approver_groups == []


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ({k: v for k, v in run_inputs().items() if k != "requested_by"}, "requested_by"),
        (run_inputs(required_approvals=-1), "required_approvals"),
        (run_inputs(required_approvals=101), "required_approvals"),
        (run_inputs(required_approvals="2"), "required_approvals"),
        (run_inputs(require_sod="yes"), "require_sod"),
        (run_inputs(environment_id="prod"), "environment_id"),
    ],
)
def test_malformed_run_inputs_are_refused_with_the_field_named(inputs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(domain.InvalidApprovalRequest) as caught:
        parse_step_inputs(step(inputs))

    assert fragment in caught.value.detail
    assert caught.value.status == 400
    assert any(e["loc"][:2] == ["inputs", fragment] for e in caught.value.errors)


def test_inputs_without_the_run_context_are_refused() -> None:
    flat = ExecuteStep(
        tenant_id=TENANT,
        correlation_id=uuid.uuid4(),
        run_id=uuid.uuid4(),
        node_id="approval",
        attempt=1,
        step_type="approval",
        config={},
        inputs=run_inputs(),
    )

    with pytest.raises(domain.InvalidApprovalRequest, match="no run inputs"):
        parse_step_inputs(flat)


def test_a_run_about_another_subject_is_refused() -> None:
    with pytest.raises(domain.InvalidApprovalRequest, match="is not the promotion"):
        parse_step_inputs(step(run_inputs(), subject_id=uuid.uuid4()))


def test_opening_a_request_that_needs_approvals_leaves_it_pending() -> None:
    result = open_request(parse_step_inputs(step(run_inputs())), TENANT, T0, timedelta(days=7))

    assert result.request.status is domain.ApprovalStatus.PENDING
    assert result.request.expires_at == T0 + timedelta(days=7)
    assert result.request.eligible_groups == frozenset({"sre"})
    assert [subject_of(e) for e in result.events] == [APPROVAL_REQUESTED]


def test_a_policy_without_approvals_is_granted_at_once() -> None:
    result = open_request(parse_step_inputs(step(run_inputs(required_approvals=0))), TENANT, T0, timedelta(hours=1))

    assert result.request.status is domain.ApprovalStatus.GRANTED
    assert result.request.decided_at == T0
    assert result.request.expires_at == T0 + timedelta(hours=1)
    assert [subject_of(e) for e in result.events] == [APPROVAL_REQUESTED, APPROVAL_GRANTED]
    granted = result.events[1]
    assert isinstance(granted, domain.ApprovalGranted)
    assert (granted.summary.required, granted.summary.granted) == (0, 0)


def test_a_promotion_cancelled_before_its_step_opens_withdrawn() -> None:
    inputs = parse_step_inputs(step(run_inputs()))

    result = open_request(inputs, TENANT, T0, timedelta(days=7), cancelled=CANCELLATION_REASON)

    assert result.request.status is domain.ApprovalStatus.CANCELLED
    assert [subject_of(e) for e in result.events] == [APPROVAL_REQUESTED, APPROVAL_DENIED]


def test_a_timeout_that_is_not_positive_is_refused() -> None:
    with pytest.raises(domain.InvalidApprovalRequest):
        open_request(parse_step_inputs(step(run_inputs())), TENANT, T0, timedelta(0))


def test_the_voter_holds_the_gateway_permissions_on_every_environment() -> None:
    cmd = CastVote(
        tenant_id=TENANT,
        correlation_id=uuid.uuid4(),
        actor_id=ALICE,
        promotion_id=PROMOTION,
        action=VoteAction.APPROVED,
        permissions=["promotion:read", domain.APPROVE_PERMISSION],
        groups=["sre"],
    )

    principal = voter(cmd)

    assert (principal.id, principal.tenant_id, principal.groups) == (ALICE, TENANT, frozenset({"sre"}))
    assert principal.can(domain.APPROVE_PERMISSION, PROD)
    assert principal.can(domain.APPROVE_PERMISSION, uuid.uuid4())


def test_a_vote_without_an_actor_is_refused() -> None:
    cmd = CastVote(tenant_id=TENANT, correlation_id=uuid.uuid4(), promotion_id=PROMOTION, action=VoteAction.APPROVED)

    with pytest.raises(domain.InvalidVote, match="actor_id"):
        voter(cmd)


def test_every_domain_event_has_a_subject() -> None:
    request = open_request(parse_step_inputs(step(run_inputs(required_approvals=1))), TENANT, T0, timedelta(days=1))
    approver = domain.Principal.of(ALICE, TENANT, [domain.APPROVE_PERMISSION], groups=["sre"])
    voted = domain.vote(request.request, approver, "approved", "", T0 + timedelta(hours=1))
    expired = domain.expire(request.request, T0 + timedelta(days=2))

    assert [subject_of(e) for e in voted.events] == [VOTE_CAST, APPROVAL_GRANTED]
    assert [subject_of(e) for e in expired.events] == [APPROVAL_DENIED]


def test_the_environments_approval_timeout_sets_the_requests_lifetime() -> None:
    from datetime import timedelta

    from stella.approval.handlers import StepInputs, _timeout_of

    base = {
        "promotion_id": "00000000-0000-0000-0000-000000000001",
        "environment_id": "00000000-0000-0000-0000-000000000002",
        "requested_by": "00000000-0000-0000-0000-000000000003",
        "required_approvals": 1,
        "require_sod": False,
    }
    default = timedelta(days=7)
    assert _timeout_of(StepInputs.model_validate(base), default) == default
    assert _timeout_of(StepInputs.model_validate({**base, "approval_timeout_s": 3600}), default) == timedelta(hours=1)
