"""The states of a promotion, the transitions between them, and the reason codes the state machine gives."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class PromotionStatus(StrEnum):
    """States of a promotion (reference section 3)."""

    PENDING_GATE = "pending_gate"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"

    @property
    def is_terminal(self) -> bool:
        """Whether no transition ever leaves this state.

        ``failed`` is not terminal by itself: it moves to ``rolled_back`` when a rollback runs. Use
        :attr:`Promotion.is_terminal` to know whether a failed promotion is final.
        """
        return self in _TERMINAL_STATUSES

    @property
    def is_active(self) -> bool:
        """Whether the promotion is still on its way (neither finished nor failed)."""
        return self in _ACTIVE_STATUSES


_TERMINAL_STATUSES: Final = frozenset(
    {PromotionStatus.DEPLOYED, PromotionStatus.REJECTED, PromotionStatus.CANCELLED, PromotionStatus.ROLLED_BACK}
)


_ACTIVE_STATUSES: Final = frozenset(
    {
        PromotionStatus.PENDING_GATE,
        PromotionStatus.PENDING_APPROVAL,
        PromotionStatus.APPROVED,
        PromotionStatus.DEPLOYING,
    }
)


CANCELLABLE_STATUSES: Final = frozenset(
    {PromotionStatus.PENDING_GATE, PromotionStatus.PENDING_APPROVAL, PromotionStatus.APPROVED}
)


PROGRESSION_STATUSES: Final = frozenset({PromotionStatus.DEPLOYED})


"""A release has reached an environment (and may move to the next one) once a promotion there is in one of
these states: it was deployed there (an environment with no targets is deployed at once)."""


APPROVED_STATUSES: Final = frozenset({PromotionStatus.APPROVED, PromotionStatus.DEPLOYING, PromotionStatus.DEPLOYED})


"""States of a promotion its gates and approvals allowed (its approval step succeeded)."""


JOB_OUTCOMES: Final = frozenset({"succeeded", "failed", "rolled_back", "cancelled"})


"""How a deployment job ends (``deployment.job_completed``'s ``outcome``)."""


ALLOWED_TRANSITIONS: Final[Mapping[PromotionStatus, frozenset[PromotionStatus]]] = {
    PromotionStatus.PENDING_GATE: frozenset(
        {
            PromotionStatus.PENDING_APPROVAL,
            PromotionStatus.APPROVED,
            PromotionStatus.REJECTED,
            PromotionStatus.CANCELLED,
            PromotionStatus.FAILED,
        }
    ),
    PromotionStatus.PENDING_APPROVAL: frozenset(
        {PromotionStatus.APPROVED, PromotionStatus.REJECTED, PromotionStatus.CANCELLED, PromotionStatus.FAILED}
    ),
    PromotionStatus.APPROVED: frozenset(
        {
            PromotionStatus.DEPLOYING,
            PromotionStatus.PENDING_GATE,
            PromotionStatus.REJECTED,
            PromotionStatus.CANCELLED,
        }
    ),
    PromotionStatus.DEPLOYING: frozenset({PromotionStatus.DEPLOYED, PromotionStatus.FAILED}),
    PromotionStatus.FAILED: frozenset({PromotionStatus.ROLLED_BACK}),
    PromotionStatus.DEPLOYED: frozenset(),
    PromotionStatus.REJECTED: frozenset(),
    PromotionStatus.CANCELLED: frozenset(),
    PromotionStatus.ROLLED_BACK: frozenset(),
}


"""Every state change the state machine can make (the table of reference section 3)."""


REASON_APPROVAL_REJECTED: Final = "PROM_APPROVAL_REJECTED"


"""Reason code of a promotion rejected by an eligible approver."""


REASON_APPROVAL_TIMEOUT: Final = "PROM_APPROVAL_TIMEOUT"


"""Reason code of a promotion whose approvals did not arrive before the deadline."""


REASON_WORKFLOW_ENDED: Final = "PROM_WORKFLOW_RUN_ENDED"


"""Reason code of a promotion failed because its workflow run ended (or never started) before deciding it."""


REASON_WINDOW_NEVER_OPENS: Final = "PROM_WINDOW_NEVER_OPENS"


"""Reason code added when a promotion would be held but the window does not open within the search horizon."""


REASON_RUN_NOT_STARTED: Final = "PROM_RUN_NOT_STARTED"


"""Reason code of a promotion whose workflow run never brought it its gate step: its gates could not be
evaluated, so it is rejected (fail closed) instead of waiting silently."""
