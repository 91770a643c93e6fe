"""The approval context: N-of-M approvals of a promotion with separation of duties."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Final
from uuid import UUID

from pydantic import Field

from stella.contracts.envelope import Command, Event, Model, Query
from stella.contracts.workflow import StepRef

CONTEXT: Final[str] = "approval"
"""Context name in subjects."""

REQUEST_APPROVALS: Final[str] = "stella.cmd.approval.request_approvals"
"""Workflow step command (``ExecuteStep`` of type ``approval``): open an approval request."""
CAST_VOTE: Final[str] = "stella.cmd.approval.cast_vote"
"""Command :class:`CastVote` -> :class:`ApprovalRequestView`."""
CANCEL_APPROVALS: Final[str] = "stella.cmd.approval.cancel_approvals"
"""Command :class:`CancelApprovals`: the promotion was cancelled."""

GET_APPROVALS: Final[str] = "stella.rpc.approval.get_approvals"
"""Query :class:`GetApprovals` -> :class:`ApprovalRequestView`."""

APPROVAL_REQUESTED: Final[str] = "stella.evt.approval.approval_requested"
"""Event :class:`ApprovalChanged`."""
VOTE_CAST: Final[str] = "stella.evt.approval.vote_cast"
"""Event :class:`ApprovalChanged`."""
APPROVAL_GRANTED: Final[str] = "stella.evt.approval.approval_granted"
"""Event :class:`ApprovalChanged`: N distinct eligible approvals."""
APPROVAL_DENIED: Final[str] = "stella.evt.approval.approval_denied"
"""Event :class:`ApprovalChanged`: an eligible rejection, the timeout, or a cancellation."""


class VoteAction(StrEnum):
    """A vote."""

    APPROVED = "approved"
    REJECTED = "rejected"


class ApprovalStatus(StrEnum):
    """Approval request states."""

    PENDING = "pending"
    GRANTED = "granted"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class VoteView(Model):
    """One vote."""

    approver_id: UUID
    action: VoteAction
    comment: str
    at: datetime
    approver_name: str | None = None
    """The approver's name when the vote was cast (None for votes recorded before names were kept)."""
    approver_display_name: str | None = None
    """The approver's display name when the vote was cast, if it had one."""


class ApprovalRequestView(Model):
    """A promotion's approval request and its votes."""

    promotion_id: UUID
    environment_id: UUID
    requester_id: UUID | None
    required: int
    require_sod: bool
    approver_groups: list[str]
    status: ApprovalStatus
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    votes: list[VoteView]
    step: StepRef | None = None
    """The workflow step waiting on this request; whoever acts on the decision completes it."""


class CastVote(Command):
    """Approve or reject a promotion. ``permissions`` and ``groups`` are the voter's, from the gateway."""

    promotion_id: UUID
    action: VoteAction
    comment: str = Field(default="", max_length=2000)
    permissions: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)


class CancelApprovals(Command):
    """Close a promotion's approval request because the promotion was cancelled."""

    promotion_id: UUID


class GetApprovals(Query):
    """Read a promotion's approval request."""

    promotion_id: UUID


class ApprovalChanged(Event):
    """An approval request was opened, voted on, or decided."""

    request: ApprovalRequestView
