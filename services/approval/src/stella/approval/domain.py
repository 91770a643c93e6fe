"""The approval domain: one approval request per promotion, votes, separation of duties, expiry.

Pure: no I/O, no clock reads, no random ids; callers pass ``now`` (timezone-aware, UTC by convention).

Rules (product reference, "Approvals and separation of duties"):

* A request needs ``required`` (N) approvals, counted over **distinct** principals.
* Eligibility: the principal holds ``promotion:approve`` on the request's environment (a grant for that
  environment or a tenant-wide grant) and, when the policy names groups, belongs to at least one of them.
* ``require_sod``: the requester may not approve their own promotion (:class:`SelfApprovalForbidden`,
  nothing recorded), and an approver may not be the human who triggers its deployment
  (:func:`check_deployer`). The requester may still *reject*: refusing one's own change is never a risk.
* Any eligible rejection denies the request; N distinct approvals grant it.
* A principal votes once per request: repeating the same vote is idempotent (no event), changing it is
  refused (:class:`VoteAlreadyCast`).
* A request not decided by ``requested_at + timeout`` (7 days by default) expires, which denies it
  (:func:`expire`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Final
from uuid import UUID

from stella.kit.errors import ServiceError

APPROVE_PERMISSION: Final = "promotion:approve"
"""The permission that makes a principal eligible to vote on a promotion in an environment."""

DEFAULT_APPROVAL_TIMEOUT: Final = timedelta(days=7)
"""How long a request stays open when the policy does not say."""

MAX_REQUIRED_APPROVALS: Final = 100
"""Most approvals a policy may require."""

MAX_COMMENT_LENGTH: Final = 4000
"""Longest vote comment, in characters."""

# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


class DomainError(ServiceError):
    """Base of every approval domain error: a stable ``code``, an HTTP ``status``, a ``title``, a ``detail``."""

    code: str = "PROM_APPROVAL_ERROR"
    status: int = 400
    title: str = "Approval error"


class InvalidApprovalRequest(DomainError):
    """The approval policy values are out of range (N below 1, a non-positive timeout...)."""

    code = "PROM_INVALID_APPROVAL_REQUEST"
    status = 400
    title = "Invalid approval request"


class InvalidVote(DomainError):
    """The vote is malformed (unknown action, comment too long)."""

    code = "PROM_INVALID_VOTE"
    status = 400
    title = "Invalid vote"


class ApprovalNotFound(DomainError):
    """No approval request for this promotion in the principal's tenant."""

    code = "PROM_APPROVAL_NOT_FOUND"
    status = 404
    title = "Approval request not found"


class ApproverNotEligible(DomainError):
    """The principal may not vote on this promotion (missing permission or group)."""

    code = "PROM_APPROVER_NOT_ELIGIBLE"
    status = 403
    title = "Not eligible to approve"


class SeparationOfDutiesViolation(DomainError):
    """Base of the separation-of-duties refusals."""

    code = "PROM_SOD_VIOLATION"
    status = 422
    title = "Separation of duties violated"


class SelfApprovalForbidden(SeparationOfDutiesViolation):
    """The requester tried to approve their own promotion while the environment requires SoD."""

    code = "PROM_SOD_VIOLATION"
    title = "The requester cannot approve their own promotion"


class DeployerIsApprover(SeparationOfDutiesViolation):
    """An approver of the promotion tried to trigger its deployment while the environment requires SoD."""

    code = "PROM_SOD_DEPLOYER_IS_APPROVER"
    title = "An approver cannot deploy the promotion"


class VoteAlreadyCast(DomainError):
    """The principal already voted the other way; a vote cannot change."""

    code = "PROM_VOTE_ALREADY_CAST"
    status = 409
    title = "Vote already cast"


class ApprovalNotPending(DomainError):
    """The request is decided, expired or cancelled; it takes no more votes."""

    code = "PROM_APPROVAL_NOT_PENDING"
    status = 409
    title = "Approval request is not pending"


class ApprovalExpired(ApprovalNotPending):
    """The request's timeout has passed."""

    code = "PROM_APPROVAL_EXPIRED"
    title = "Approval request expired"


# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------


class ApprovalStatus(StrEnum):
    """Status of an approval request: ``pending -> granted | denied | expired | cancelled``."""

    PENDING = "pending"
    GRANTED = "granted"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the request can no longer change."""
        return self is not ApprovalStatus.PENDING


class VoteAction(StrEnum):
    """What a vote says."""

    APPROVED = "approved"
    REJECTED = "rejected"


class DenialReason(StrEnum):
    """Why a request was denied."""

    REJECTED = "rejected"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Grant:
    """A permission held by a principal, for one environment or for every environment of the tenant.

    Attributes:
        permission: E.g. ``promotion:approve``.
        environment_id: The environment it applies to; ``None`` means every environment of the tenant.
    """

    permission: str
    environment_id: UUID | None = None

    def covers(self, permission: str, environment_id: UUID) -> bool:
        """Whether this grant gives ``permission`` on ``environment_id``."""
        return self.permission == permission and self.environment_id in (None, environment_id)


@dataclass(frozen=True)
class Principal:
    """Who acts, as the caller resolved them from the token and the role bindings.

    Attributes:
        id: The principal's id.
        tenant_id: The principal's tenant.
        grants: The permissions the principal holds, each for an environment or tenant-wide.
        groups: The groups the principal belongs to.
        name: The principal's name, when the caller gave it.
        display_name: The principal's display name, when it has one.
    """

    id: UUID
    tenant_id: UUID
    grants: frozenset[Grant] = frozenset()
    groups: frozenset[str] = frozenset()
    name: str | None = None
    display_name: str | None = None

    @classmethod
    def of(
        cls,
        principal_id: UUID,
        tenant_id: UUID,
        permissions: Iterable[str] = (),
        *,
        environment_id: UUID | None = None,
        groups: Iterable[str] = (),
        name: str | None = None,
        display_name: str | None = None,
    ) -> Principal:
        """Build a principal holding ``permissions`` on ``environment_id`` (``None``: tenant-wide)."""
        return cls(
            id=principal_id,
            tenant_id=tenant_id,
            grants=frozenset(Grant(p, environment_id) for p in permissions),
            groups=frozenset(groups),
            name=name,
            display_name=display_name,
        )

    def can(self, permission: str, environment_id: UUID) -> bool:
        """Whether the principal holds ``permission`` on ``environment_id``."""
        return any(grant.covers(permission, environment_id) for grant in self.grants)


@dataclass(frozen=True)
class Vote:
    """One principal's vote.

    Attributes:
        approver_id: Who voted.
        action: ``approved`` or ``rejected``.
        comment: Free text (may be empty).
        at: When the vote was cast.
        approver_name: The approver's name when it voted (None when not known).
        approver_display_name: The approver's display name when it voted, if it had one.
    """

    approver_id: UUID
    action: VoteAction
    comment: str
    at: datetime
    approver_name: str | None = None
    approver_display_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The vote in the decision record's shape: ``{approver, action, at, comment}``."""
        return {
            "approver": str(self.approver_id),
            "action": self.action.value,
            "at": self.at.isoformat(),
            "comment": self.comment,
        }


@dataclass(frozen=True)
class ApprovalRequest:
    """The approval request of one promotion (the aggregate).

    Attributes:
        promotion_id: The promotion; one request per promotion.
        tenant_id: The tenant.
        environment_id: The promotion's target environment (eligibility is checked against it).
        requester_id: Who requested the promotion.
        required: Distinct approvals needed (N).
        require_sod: Whether separation of duties applies.
        requested_at: When approvals were requested.
        eligible_groups: When not empty, an approver must belong to one of these groups.
        timeout: How long the request stays open.
        votes: Votes in the order they were cast.
        status: Request status.
        decided_at: When the request left ``pending``.
    """

    promotion_id: UUID
    tenant_id: UUID
    environment_id: UUID
    requester_id: UUID
    required: int
    require_sod: bool
    requested_at: datetime
    eligible_groups: frozenset[str] = frozenset()
    timeout: timedelta = DEFAULT_APPROVAL_TIMEOUT
    votes: tuple[Vote, ...] = ()
    status: ApprovalStatus = ApprovalStatus.PENDING
    decided_at: datetime | None = None

    @property
    def expires_at(self) -> datetime:
        """When the request expires if still pending."""
        return self.requested_at + self.timeout

    def vote_of(self, principal_id: UUID) -> Vote | None:
        """The vote ``principal_id`` cast, if any."""
        return next((v for v in self.votes if v.approver_id == principal_id), None)

    def _distinct(self, action: VoteAction) -> tuple[Vote, ...]:
        # Counted over distinct principals (the first vote of each), and never the requester's approval
        # when SoD applies: a stored state that somehow holds one must still not be granted by it.
        seen: set[UUID] = set()
        counted: list[Vote] = []
        for cast in self.votes:
            if cast.approver_id in seen:
                continue
            seen.add(cast.approver_id)
            if cast.action is not action:
                continue
            if action is VoteAction.APPROVED and self.require_sod and cast.approver_id == self.requester_id:
                continue
            counted.append(cast)
        return tuple(counted)

    @property
    def approvals(self) -> tuple[Vote, ...]:
        """The approvals that count, one per distinct principal, in the order cast."""
        return self._distinct(VoteAction.APPROVED)

    @property
    def rejections(self) -> tuple[Vote, ...]:
        """The rejections, one per distinct principal, in the order cast."""
        return self._distinct(VoteAction.REJECTED)


@dataclass(frozen=True)
class ApprovalSummary:
    """What the promotion's approval gate and the decision record show.

    Attributes:
        status: Request status.
        required: Approvals needed.
        granted: Distinct approvals counted.
        rejected: Distinct rejections.
        approvers: Who approved, in the order they voted.
        rejecters: Who rejected, in the order they voted.
        votes: Every counted vote, ordered by time then approver id.
        requested_at: When approvals were requested.
        expires_at: When the request expires if still pending.
        decided_at: When the request left ``pending``.
    """

    status: ApprovalStatus
    required: int
    granted: int
    rejected: int
    approvers: tuple[UUID, ...]
    rejecters: tuple[UUID, ...]
    votes: tuple[Vote, ...]
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data (ids as strings, times in ISO 8601)."""
        return {
            "status": self.status.value,
            "required": self.required,
            "granted": self.granted,
            "rejected": self.rejected,
            "approvers": [str(a) for a in self.approvers],
            "rejecters": [str(r) for r in self.rejecters],
            "votes": [v.to_dict() for v in self.votes],
            "requested_at": self.requested_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "decided_at": None if self.decided_at is None else self.decided_at.isoformat(),
        }


def summarize(request: ApprovalRequest) -> ApprovalSummary:
    """Summarise a request for the promotion's approval gate: ``{required, granted, rejected, approvers}``."""
    approvals, rejections = request.approvals, request.rejections
    return ApprovalSummary(
        status=request.status,
        required=request.required,
        granted=len(approvals),
        rejected=len(rejections),
        approvers=tuple(v.approver_id for v in approvals),
        rejecters=tuple(v.approver_id for v in rejections),
        votes=tuple(sorted((*approvals, *rejections), key=lambda v: (v.at, str(v.approver_id)))),
        requested_at=request.requested_at,
        expires_at=request.expires_at,
        decided_at=request.decided_at,
    )


# ---------------------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ApprovalEvent:
    """Base of the events the approval domain emits; ``name`` is the event name (``approval.<event>``)."""

    name: ClassVar[str]
    promotion_id: UUID
    tenant_id: UUID
    environment_id: UUID
    at: datetime


@dataclass(frozen=True, kw_only=True)
class ApprovalRequested(ApprovalEvent):
    """Approvals were requested for a promotion."""

    name: ClassVar[str] = "approval.requested"
    requester_id: UUID
    required: int
    require_sod: bool
    eligible_groups: tuple[str, ...]
    expires_at: datetime


@dataclass(frozen=True, kw_only=True)
class VoteCast(ApprovalEvent):
    """A principal voted (emitted for every recorded vote, before any decision it causes)."""

    name: ClassVar[str] = "approval.vote_cast"
    approver_id: UUID
    action: VoteAction
    comment: str
    granted: int
    rejected: int
    required: int


@dataclass(frozen=True, kw_only=True)
class ApprovalGranted(ApprovalEvent):
    """N distinct eligible principals approved."""

    name: ClassVar[str] = "approval.granted"
    summary: ApprovalSummary


@dataclass(frozen=True, kw_only=True)
class ApprovalDenied(ApprovalEvent):
    """An eligible principal rejected (``rejected_by``), or the request expired."""

    name: ClassVar[str] = "approval.denied"
    reason: DenialReason
    rejected_by: UUID | None
    summary: ApprovalSummary


@dataclass(frozen=True, kw_only=True)
class ApprovalCancelled(ApprovalEvent):
    """The request was withdrawn because its promotion was cancelled."""

    name: ClassVar[str] = "approval.cancelled"
    reason: str


@dataclass(frozen=True, kw_only=True)
class ApprovalResult:
    """The request after a transition and the events it caused (none when nothing changed)."""

    request: ApprovalRequest
    events: tuple[ApprovalEvent, ...]

    @property
    def changed(self) -> bool:
        """Whether the transition changed the request."""
        return bool(self.events)


# ---------------------------------------------------------------------------------------------------------
# Transitions
# ---------------------------------------------------------------------------------------------------------


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime (UTC)")


def _envelope(request: ApprovalRequest, now: datetime) -> dict[str, Any]:
    return {
        "promotion_id": request.promotion_id,
        "tenant_id": request.tenant_id,
        "environment_id": request.environment_id,
        "at": now,
    }


def request_approval(
    *,
    promotion_id: UUID,
    tenant_id: UUID,
    environment_id: UUID,
    requester_id: UUID,
    required: int,
    require_sod: bool,
    now: datetime,
    eligible_groups: Iterable[str] = (),
    timeout: timedelta = DEFAULT_APPROVAL_TIMEOUT,
) -> ApprovalResult:
    """Open the approval request of a promotion.

    Args:
        promotion_id: The promotion.
        tenant_id: Its tenant.
        environment_id: Its target environment.
        requester_id: Who requested the promotion.
        required: Distinct approvals needed (1 or more; a promotion that needs none never asks).
        require_sod: Whether separation of duties applies.
        now: When approvals are requested.
        eligible_groups: Groups an approver must belong to (empty: no group restriction).
        timeout: How long the request stays open (7 days by default).

    Raises:
        InvalidApprovalRequest: for ``required`` outside 1..100, a non-positive timeout or an empty group name.
    """
    _require_aware(now)
    if not isinstance(required, int) or isinstance(required, bool) or not 1 <= required <= MAX_REQUIRED_APPROVALS:
        raise InvalidApprovalRequest(f"required approvals {required!r} must be between 1 and {MAX_REQUIRED_APPROVALS}")
    if timeout <= timedelta(0):
        raise InvalidApprovalRequest(f"approval timeout {timeout} must be positive")
    groups = frozenset(eligible_groups)
    if any(not isinstance(g, str) or not g.strip() for g in groups):
        raise InvalidApprovalRequest("eligible group names must be non-empty strings")
    request = ApprovalRequest(
        promotion_id=promotion_id,
        tenant_id=tenant_id,
        environment_id=environment_id,
        requester_id=requester_id,
        required=required,
        require_sod=require_sod,
        requested_at=now,
        eligible_groups=groups,
        timeout=timeout,
    )
    event = ApprovalRequested(
        **_envelope(request, now),
        requester_id=requester_id,
        required=required,
        require_sod=require_sod,
        eligible_groups=tuple(sorted(groups)),
        expires_at=request.expires_at,
    )
    return ApprovalResult(request=request, events=(event,))


def _check_tenant(request: ApprovalRequest, principal: Principal) -> None:
    # Another tenant's request must look exactly like a missing one.
    if principal.tenant_id != request.tenant_id:
        raise ApprovalNotFound(f"no approval request for promotion {request.promotion_id}")


def check_eligible(request: ApprovalRequest, principal: Principal) -> None:
    """Refuse a principal who may not vote on ``request``.

    Raises:
        ApprovalNotFound: when the principal belongs to another tenant.
        ApproverNotEligible: without ``promotion:approve`` on the environment, or outside the policy's groups.
    """
    _check_tenant(request, principal)
    if not principal.can(APPROVE_PERMISSION, request.environment_id):
        raise ApproverNotEligible(
            f"principal {principal.id} does not hold {APPROVE_PERMISSION} on environment {request.environment_id}"
        )
    if request.eligible_groups and not (principal.groups & request.eligible_groups):
        raise ApproverNotEligible(
            f"principal {principal.id} is in none of the approver groups: {', '.join(sorted(request.eligible_groups))}"
        )


def vote(
    request: ApprovalRequest,
    principal: Principal,
    action: VoteAction | str,
    comment: str | None,
    now: datetime,
) -> ApprovalResult:
    """Record a principal's vote and decide the request when the vote settles it.

    Checks, in order: tenant, vote shape, a previous vote by the same principal (the same vote again is
    a no-op, even on a decided request, so a retried call succeeds; a different vote is refused), the
    request still pending and not past its expiry, eligibility, separation of duties.

    Args:
        request: The promotion's approval request.
        principal: Who votes, with their grants and groups.
        action: ``approved`` or ``rejected``.
        comment: Optional free text.
        now: When the vote is cast.

    Returns:
        The request and its events: :class:`VoteCast`, then :class:`ApprovalGranted` (N distinct approvals)
        or :class:`ApprovalDenied` (any rejection); no events for a repeated vote.

    Raises:
        ApprovalNotFound: the principal belongs to another tenant.
        InvalidVote: unknown action or comment too long.
        VoteAlreadyCast: the principal already voted the other way.
        ApprovalExpired: the request is past its expiry (mark it with :func:`expire`).
        ApprovalNotPending: the request is decided or cancelled.
        ApproverNotEligible: missing permission or group.
        SelfApprovalForbidden: the requester approving under SoD; nothing is recorded.
    """
    _require_aware(now)
    _check_tenant(request, principal)
    try:
        chosen = VoteAction(action)
    except ValueError:
        raise InvalidVote(f"vote action {action!r} must be 'approved' or 'rejected'") from None
    text = "" if comment is None else comment
    if not isinstance(text, str) or len(text) > MAX_COMMENT_LENGTH:
        raise InvalidVote(f"a comment is text of at most {MAX_COMMENT_LENGTH} characters")
    previous = request.vote_of(principal.id)
    if previous is not None:
        if previous.action is chosen:
            return ApprovalResult(request=request, events=())
        raise VoteAlreadyCast(
            f"principal {principal.id} already {previous.action.value} promotion {request.promotion_id}; "
            "a vote cannot change"
        )
    if request.status is ApprovalStatus.EXPIRED:
        raise ApprovalExpired(f"the approval request of promotion {request.promotion_id} expired")
    if request.status is not ApprovalStatus.PENDING:
        raise ApprovalNotPending(f"the approval request of promotion {request.promotion_id} is {request.status.value}")
    if now >= request.expires_at:
        raise ApprovalExpired(
            f"the approval request of promotion {request.promotion_id} expired at {request.expires_at.isoformat()}"
        )
    check_eligible(request, principal)
    if chosen is VoteAction.APPROVED and request.require_sod and principal.id == request.requester_id:
        raise SelfApprovalForbidden(
            f"principal {principal.id} requested promotion {request.promotion_id} and cannot approve it "
            "(separation of duties)"
        )
    cast = Vote(
        approver_id=principal.id,
        action=chosen,
        comment=text,
        at=now,
        approver_name=principal.name,
        approver_display_name=principal.display_name,
    )
    updated = replace(request, votes=(*request.votes, cast))
    summary = summarize(updated)
    events: list[ApprovalEvent] = [
        VoteCast(
            **_envelope(request, now),
            approver_id=principal.id,
            action=chosen,
            comment=text,
            granted=summary.granted,
            rejected=summary.rejected,
            required=request.required,
        )
    ]
    if chosen is VoteAction.REJECTED:
        updated = replace(updated, status=ApprovalStatus.DENIED, decided_at=now)
        events.append(
            ApprovalDenied(
                **_envelope(request, now),
                reason=DenialReason.REJECTED,
                rejected_by=principal.id,
                summary=summarize(updated),
            )
        )
    elif summary.granted >= request.required:
        updated = replace(updated, status=ApprovalStatus.GRANTED, decided_at=now)
        events.append(ApprovalGranted(**_envelope(request, now), summary=summarize(updated)))
    return ApprovalResult(request=updated, events=tuple(events))


def expire(request: ApprovalRequest, now: datetime) -> ApprovalResult:
    """Expire a pending request whose timeout has passed, which denies it.

    Meant for a timer: called early, or on a request already decided or cancelled, it changes nothing.

    Returns:
        The request and an :class:`ApprovalDenied` (reason ``expired``), or no events.
    """
    _require_aware(now)
    if request.status is not ApprovalStatus.PENDING or now < request.expires_at:
        return ApprovalResult(request=request, events=())
    expired = replace(request, status=ApprovalStatus.EXPIRED, decided_at=now)
    event = ApprovalDenied(
        **_envelope(request, now), reason=DenialReason.EXPIRED, rejected_by=None, summary=summarize(expired)
    )
    return ApprovalResult(request=expired, events=(event,))


def cancel(request: ApprovalRequest, now: datetime, reason: str) -> ApprovalResult:
    """Withdraw a pending request (its promotion was cancelled); it takes no more votes.

    A request that already left ``pending`` keeps its outcome: nothing changes.
    """
    _require_aware(now)
    if request.status is not ApprovalStatus.PENDING:
        return ApprovalResult(request=request, events=())
    cancelled = replace(request, status=ApprovalStatus.CANCELLED, decided_at=now)
    return ApprovalResult(request=cancelled, events=(ApprovalCancelled(**_envelope(request, now), reason=reason),))


def check_deployer(request: ApprovalRequest, principal: Principal) -> None:
    """Refuse a human deployer who approved the promotion, when separation of duties applies.

    Call it when a person (not the system) triggers the deployment of an approved promotion.

    Raises:
        ApprovalNotFound: when the principal belongs to another tenant.
        DeployerIsApprover: when ``require_sod`` is set and the principal's approval counted.
    """
    _check_tenant(request, principal)
    if request.require_sod and any(v.approver_id == principal.id for v in request.approvals):
        raise DeployerIsApprover(
            f"principal {principal.id} approved promotion {request.promotion_id} and cannot also deploy it "
            "(separation of duties)"
        )
