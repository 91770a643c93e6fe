"""A gate decision's outcome as the promotion state machine needs it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final


class DecisionResult(StrEnum):
    """Result of a gate decision."""

    ALLOW = "allow"
    DENY = "deny"
    PENDING = "pending"


TIME_WINDOW_GATE_TYPES: Final = frozenset({"freeze-window", "schedule"})


"""Gates whose answer depends on the clock; they are evaluated again when a deployment starts."""


APPROVAL_GATE_TYPE: Final = "approval"


"""Type name of the N-of-M approval gate."""


@dataclass(frozen=True, slots=True)
class GateOutcome:
    """What the state machine needs to know about a gate decision.

    ``stella.promotion.decision.DecisionRecord.outcome()`` builds one from a full decision record.

    Attributes:
        result: allow, deny or pending.
        reasons: Stable sorted reason codes of the decision.
        record: The decision record's JSON form; kept on the promotion as its latest decision.
        time_window_only: The denial comes only from time-window gates that failed (not errored), so a
            ``hold`` environment waits instead of rejecting.
        next_open: When those windows open again, when ``time_window_only``; ``None`` when unknown.
        waiting_on: Types of non-approval gates that are still pending (a manual confirmation, say).
        approval_satisfied: An approval gate passed in this decision.
        approvals_required: The largest approval count an approval gate of the decision asked for.
    """

    result: DecisionResult
    reasons: tuple[str, ...] = ()
    record: Mapping[str, Any] = field(default_factory=dict)
    time_window_only: bool = False
    next_open: datetime | None = None
    waiting_on: tuple[str, ...] = ()
    approval_satisfied: bool = False
    approvals_required: int = 0
