"""The domain events a promotion's transitions cause."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, cast
from uuid import UUID

from stella.promotion.domain.encoding import to_json_value


@dataclass(frozen=True, kw_only=True)
class PromotionEvent:
    """Base of the events a promotion transition returns.

    ``name`` is the event name of reference section 2 (``promotion.approved``...). The handler turns each
    event into the matching contracts message and writes it to the outbox.
    """

    name: ClassVar[str]
    promotion_id: UUID
    tenant_id: UUID
    release_id: UUID
    environment_id: UUID
    occurred_at: datetime

    def payload(self) -> dict[str, Any]:
        """Return every field as plain JSON data (UTC timestamps, string ids)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return cast(dict[str, Any], to_json_value(data))


@dataclass(frozen=True, kw_only=True)
class PromotionRequested(PromotionEvent):
    """A promotion was requested and waits on its gates."""

    name: ClassVar[str] = "promotion.requested"
    source_environment_id: UUID | None
    requested_by: str


@dataclass(frozen=True, kw_only=True)
class PromotionApprovalRequired(PromotionEvent):
    """Every gate allowed and the environment needs approvals.

    Not one of the published ``promotion.*`` events: the handler turns it into the command that asks the
    approval service to collect ``required_approvals`` approvals before ``deadline``.
    """

    name: ClassVar[str] = "promotion.approval_required"
    required_approvals: int
    require_sod: bool
    requested_by: str
    deadline: datetime


@dataclass(frozen=True, kw_only=True)
class PromotionApproved(PromotionEvent):
    """Gates and approvals allow the promotion; it waits for its turn to deploy."""

    name: ClassVar[str] = "promotion.approved"


@dataclass(frozen=True, kw_only=True)
class PromotionRejected(PromotionEvent):
    """A gate denied, an approver rejected, or approvals timed out. Final."""

    name: ClassVar[str] = "promotion.rejected"
    reason_codes: tuple[str, ...]
    message: str


@dataclass(frozen=True, kw_only=True)
class PromotionStarted(PromotionEvent):
    """The deployment job of the promotion started."""

    name: ClassVar[str] = "promotion.started"
    deployment_job_id: UUID


@dataclass(frozen=True, kw_only=True)
class PromotionCompleted(PromotionEvent):
    """The deployment job succeeded; the release runs in the environment."""

    name: ClassVar[str] = "promotion.completed"
    deployment_job_id: UUID


@dataclass(frozen=True, kw_only=True)
class PromotionFailed(PromotionEvent):
    """The deployment job failed (``rollback_job_id`` is set when a rollback runs), or the promotion's workflow
    run ended or could not start before the promotion was decided (no deployment job then)."""

    name: ClassVar[str] = "promotion.failed"
    deployment_job_id: UUID | None
    reason: str
    rollback_job_id: UUID | None


@dataclass(frozen=True, kw_only=True)
class PromotionCancelled(PromotionEvent):
    """A user cancelled the promotion before its deployment started."""

    name: ClassVar[str] = "promotion.cancelled"
    cancelled_by: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class PromotionRolledBack(PromotionEvent):
    """The rollback after a failed deployment succeeded."""

    name: ClassVar[str] = "promotion.rolled_back"
    deployment_job_id: UUID
    rollback_job_id: UUID
