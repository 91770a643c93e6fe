"""What the handlers send and receive: message origins, event subjects, workflow runs and step results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, TypeVar
from uuid import UUID

from stella.contracts import promotion as c
from stella.contracts import workflow as w
from stella.contracts.envelope import Message, Page, Reply
from stella.promotion import repo
from stella.promotion.domain.events import (
    PromotionApproved,
    PromotionCancelled,
    PromotionCompleted,
    PromotionEvent,
    PromotionFailed,
    PromotionRejected,
    PromotionRequested,
    PromotionRolledBack,
    PromotionStarted,
)
from stella.promotion.domain.promotion import Promotion
from stella.promotion.domain.status import PromotionStatus
from stella.promotion.handlers.decisions import decision_hash

M = TypeVar("M", bound=Message)


MESSAGE_NAMESPACE: Final = UUID("0b8f3c52-7d1e-4a9b-9e57-2c4f6a1d8e30")


"""Namespace of this service's name-based message ids (step completions, freeze transitions)."""


DEFAULT_WORKFLOW_TEMPLATE: Final = "standard-promotion"


"""Template of promotions whose environment's policy names none."""


EVENT_SUBJECTS: Final[Mapping[type[PromotionEvent], str]] = {
    PromotionRequested: c.PROMOTION_REQUESTED,
    PromotionApproved: c.PROMOTION_APPROVED,
    PromotionRejected: c.PROMOTION_REJECTED,
    PromotionCancelled: c.PROMOTION_CANCELLED,
    PromotionStarted: c.PROMOTION_STARTED,
    PromotionCompleted: c.PROMOTION_COMPLETED,
    PromotionFailed: c.PROMOTION_FAILED,
    PromotionRolledBack: c.PROMOTION_ROLLED_BACK,
}


"""The published event of each domain event; the others (approval required) are not published: the
workflow's approval step is what asks for approvals."""


def gate_step_result(promotion: Promotion) -> tuple[w.StepStatus, dict[str, Any], str | None] | None:
    """What the gate step reports for the promotion's state; None while the gates have not decided."""
    status = promotion.status
    if status is PromotionStatus.PENDING_GATE:
        return None
    if status is PromotionStatus.REJECTED:
        return (
            w.StepStatus.FAILED,
            {"result": "deny", "reasons": list(promotion.reason_codes)},
            promotion.status_message or "denied by gates",
        )
    if status is PromotionStatus.CANCELLED:
        return w.StepStatus.FAILED, {"result": "cancelled"}, f"promotion {promotion.id} was cancelled"
    outputs: dict[str, Any] = {"result": "allow"}
    if promotion.decision is not None:
        outputs["decision_hash"] = decision_hash(promotion.decision)
    return w.StepStatus.SUCCEEDED, outputs, None


def promotion_id_of(cmd: w.ExecuteStep) -> UUID | None:
    """The promotion a gate step is about: the run's subject, or the run input ``promotion_id``."""
    if cmd.subject_id is not None:
        return cmd.subject_id
    run_inputs = cmd.inputs.get("inputs")
    raw = run_inputs.get("promotion_id") if isinstance(run_inputs, Mapping) else None
    try:
        return UUID(str(raw)) if raw is not None else None
    except ValueError:
        return None


def start_run(origin: Origin, stored: repo.StoredPromotion, *, actor_id: UUID | None = None) -> w.StartRun:
    """The command that starts the promotion's workflow run; its run id makes sending it again harmless."""
    promotion = stored.promotion
    return origin.make(
        w.StartRun,
        actor_id=actor_id,
        template_name=stored.workflow_template,
        run_id=stored.workflow_run_id,
        subject_id=promotion.id,
        inputs={
            "promotion_id": str(promotion.id),
            "release_id": str(promotion.release_id),
            "environment_id": str(promotion.target_environment_id),
            "requested_by": promotion.requested_by,
            "approval_required": promotion.required_approvals > 0,
            "required_approvals": promotion.required_approvals,
            "require_sod": promotion.require_sod,
            "approver_groups": stored.approver_groups,
            "approval_timeout_s": promotion.approval_timeout_s,
        },
    )


def run_check_delay(timeout: timedelta, checks: int) -> timedelta:
    """How long the run watch waits after the ``checks``-th time it sent a run's start again (doubling)."""
    return timeout * 2 ** min(checks, 20)


@dataclass(frozen=True)
class Origin:
    """Where outgoing messages come from: the handled message, or (for a timer) the promotion's request."""

    tenant_id: UUID
    correlation_id: UUID
    causation_id: UUID | None = None

    @classmethod
    def of(cls, message: Message) -> Origin:
        """Messages caused by ``message``."""
        return cls(message.tenant_id, message.correlation_id, message.message_id)

    def make(self, model: type[M], **fields: Any) -> M:
        """Build a message of type ``model`` with this origin's tenant and correlation."""
        return model(
            tenant_id=self.tenant_id, correlation_id=self.correlation_id, causation_id=self.causation_id, **fields
        )


def page_reply(items: Sequence[Any], token: str | None) -> Reply:
    return Reply.success(Page(items=[i.model_dump(mode="json") for i in items], next_page_token=token).model_dump())
