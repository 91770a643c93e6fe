"""The promotion context: environments (with freeze windows), promotions, gates and decision records."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

from pydantic import AwareDatetime, Field

from stella.contracts.envelope import Command, Event, Model, PageRequest, Query
from stella.contracts.validation import Digest, DisplayName, Name

CONTEXT: Final[str] = "promotion"
"""Context name in subjects."""

CREATE_ENVIRONMENT: Final[str] = "stella.cmd.promotion.create_environment"
"""Command :class:`CreateEnvironment` -> :class:`EnvironmentView`."""
UPDATE_ENVIRONMENT: Final[str] = "stella.cmd.promotion.update_environment"
"""Command :class:`UpdateEnvironment` -> :class:`EnvironmentView`."""
DELETE_ENVIRONMENT: Final[str] = "stella.cmd.promotion.delete_environment"
"""Command :class:`DeleteEnvironment`; refused (409) while promotions reference it."""
ADD_FREEZE_WINDOW: Final[str] = "stella.cmd.promotion.add_freeze_window"
"""Command :class:`AddFreezeWindow` -> :class:`FreezeWindowView`."""
REMOVE_FREEZE_WINDOW: Final[str] = "stella.cmd.promotion.remove_freeze_window"
"""Command :class:`RemoveFreezeWindow`."""
RECORD_SCAN_RESULT: Final[str] = "stella.cmd.promotion.record_scan_result"
"""Command :class:`RecordScanResult`: the security verdict input for one digest."""
REQUEST_PROMOTION: Final[str] = "stella.cmd.promotion.request_promotion"
"""Command :class:`RequestPromotion` -> :class:`PromotionView`."""
CANCEL_PROMOTION: Final[str] = "stella.cmd.promotion.cancel_promotion"
"""Command :class:`CancelPromotion` -> :class:`PromotionView`."""
OVERRIDE_FREEZE: Final[str] = "stella.cmd.promotion.override_freeze"
"""Command :class:`OverrideFreeze` -> :class:`PromotionView`."""
EVALUATE_GATES: Final[str] = "stella.cmd.promotion.evaluate_gates"
"""Workflow step command (``ExecuteStep`` of type ``gate``): evaluate the promotion's gates."""

GET_ENVIRONMENT: Final[str] = "stella.rpc.promotion.get_environment"
"""Query :class:`GetEnvironment` -> :class:`EnvironmentView`."""
LIST_ENVIRONMENTS: Final[str] = "stella.rpc.promotion.list_environments"
"""Query :class:`ListEnvironments` -> page of :class:`EnvironmentView` by promotion order."""
LIST_FREEZE_WINDOWS: Final[str] = "stella.rpc.promotion.list_freeze_windows"
"""Query :class:`ListFreezeWindows` -> page of :class:`FreezeWindowView`."""
GET_ENVIRONMENT_STATE: Final[str] = "stella.rpc.promotion.get_environment_state"
"""Query :class:`GetEnvironmentState` -> :class:`EnvironmentStateView`."""
GET_ENVIRONMENT_BOARD: Final[str] = "stella.rpc.promotion.get_environment_board"
"""Query :class:`GetEnvironmentBoard` -> :class:`EnvironmentBoardView`: every environment with its freeze state
(and windows), and where the newest releases are, in one answer."""
GET_PROMOTION: Final[str] = "stella.rpc.promotion.get_promotion"
"""Query :class:`GetPromotion` -> :class:`PromotionView`."""
LIST_PROMOTIONS: Final[str] = "stella.rpc.promotion.list_promotions"
"""Query :class:`ListPromotions` -> page of :class:`PromotionView`."""
GET_DECISION: Final[str] = "stella.rpc.promotion.get_decision"
"""Query :class:`GetDecision` -> :class:`DecisionView`: the promotion's latest decision with its inputs."""

ENVIRONMENT_CREATED: Final[str] = "stella.evt.promotion.environment_created"
"""Event :class:`EnvironmentChanged`."""
ENVIRONMENT_UPDATED: Final[str] = "stella.evt.promotion.environment_updated"
"""Event :class:`EnvironmentChanged`."""
ENVIRONMENT_DELETED: Final[str] = "stella.evt.promotion.environment_deleted"
"""Event :class:`EnvironmentChanged`."""
FREEZE_STARTED: Final[str] = "stella.evt.promotion.freeze_started"
"""Event :class:`FreezeChanged`: a window (or one occurrence of a recurring one) opened."""
FREEZE_ENDED: Final[str] = "stella.evt.promotion.freeze_ended"
"""Event :class:`FreezeChanged`: a window (or one occurrence) closed."""
PROMOTION_REQUESTED: Final[str] = "stella.evt.promotion.promotion_requested"
"""Event :class:`PromotionChanged`."""
PROMOTION_APPROVED: Final[str] = "stella.evt.promotion.promotion_approved"
"""Event :class:`PromotionChanged`."""
PROMOTION_REJECTED: Final[str] = "stella.evt.promotion.promotion_rejected"
"""Event :class:`PromotionChanged`."""
PROMOTION_CANCELLED: Final[str] = "stella.evt.promotion.promotion_cancelled"
"""Event :class:`PromotionChanged`."""
PROMOTION_STARTED: Final[str] = "stella.evt.promotion.promotion_started"
"""Event :class:`PromotionChanged`: its deployment started."""
PROMOTION_COMPLETED: Final[str] = "stella.evt.promotion.promotion_completed"
"""Event :class:`PromotionChanged`: deployed."""
PROMOTION_FAILED: Final[str] = "stella.evt.promotion.promotion_failed"
"""Event :class:`PromotionChanged`."""
PROMOTION_ROLLED_BACK: Final[str] = "stella.evt.promotion.promotion_rolled_back"
"""Event :class:`PromotionChanged`."""


class PromotionStatus(StrEnum):
    """Promotion states (reference §3)."""

    PENDING_GATE = "pending_gate"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class GateSpec(Model):
    """A gate an environment's promotions pass, with its configuration."""

    type: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=100)
    config: dict[str, Any] = Field(default_factory=dict)


class EnvironmentView(Model):
    """An environment."""

    id: UUID
    name: Name
    display_name: str
    order_index: int
    required_approvals: int
    require_sod: bool
    config: dict[str, Any]
    promotion_policy: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class FreezeWindowView(Model):
    """A freeze window (deny) or deployment window (allow) of an environment.

    One-off windows have ``start`` and ``end``; recurring ones ``rrule``, ``dtstart`` (the first occurrence
    as a wall time of ``timezone``, without offset) and ``duration_s``.
    """

    id: UUID
    environment_id: UUID
    kind: str
    start: datetime | None
    end: datetime | None
    rrule: str | None
    duration_s: float | None
    dtstart: datetime | None = None
    timezone: str
    reason: str
    created_by: UUID | None
    exceptions: list[UUID]
    created_at: datetime


class EnvironmentStateView(Model):
    """Whether promotions into the environment are open now (Kargo's contract)."""

    environment_id: UUID
    closed: bool
    reason: str | None
    next_open: datetime | None
    next_close: datetime | None
    active_window_ids: list[UUID]
    evaluated_at: datetime


class PromotionView(Model):
    """A promotion with its latest decision record.

    ``status_message`` says in words why the promotion is where it is (held until a window opens, waiting
    for approvals, rejected by...); ``reason_codes`` are the stable codes behind it.
    """

    id: UUID
    release_id: UUID
    release_name: str
    release_components: list[dict[str, Any]]
    source_environment_id: UUID | None
    target_environment_id: UUID
    target_environment_name: str
    status: PromotionStatus
    reason: str
    requested_by: UUID | None
    requested_at: datetime
    updated_at: datetime
    decision_record: dict[str, Any] | None
    workflow_run_id: UUID | None
    next_evaluation_at: datetime | None = Field(description="When a held promotion is looked at again.")
    freeze_override: dict[str, Any] | None
    status_message: str | None = Field(default=None, description="Why the promotion is where it is, in words.")
    reason_codes: list[str] = Field(default_factory=list, description="Stable codes behind status_message.")
    deployment_job_id: UUID | None = Field(default=None, description="The deployment job of the promotion.")
    rollback_job_id: UUID | None = Field(default=None, description="The job that rolled its deployment back.")
    requested_by_name: str | None = Field(default=None, description="The requester's name when it asked.")
    requested_by_display_name: str | None = Field(
        default=None, description="The requester's display name when it asked, if it had one."
    )


class PromotionCell(Model):
    """The latest promotion of a release into an environment: one cell of the environments x releases board."""

    promotion_id: UUID
    release_id: UUID
    release_name: str
    environment_id: UUID
    status: PromotionStatus
    requested_at: datetime
    updated_at: datetime


class EnvironmentBoardEntry(Model):
    """An environment of the board with its freeze state now (and its windows when they were asked for)."""

    environment: EnvironmentView
    state: EnvironmentStateView
    windows: list[FreezeWindowView] = Field(default_factory=list)


class EnvironmentBoardView(Model):
    """Environments in promotion order, and the cells of the newest releases (newest release first)."""

    environments: list[EnvironmentBoardEntry]
    cells: list[PromotionCell]


class ScanResultView(Model):
    """The latest vulnerability scan verdict recorded for an image digest (the security gate's input)."""

    digest: str
    critical: int
    high: int
    medium: int
    low: int
    max_epss: float
    kev: bool
    scanner: str
    scanned_at: datetime
    recorded_at: datetime


class DecisionView(Model):
    """A promotion's latest decision record with every input it was computed from.

    Running the decision again on ``inputs`` at ``evaluated_at`` gives ``record`` again, byte for byte in
    canonical JSON; ``record["inputs_hash"]`` is the hash of those inputs and that clock reading.

    Attributes:
        trigger: What caused the evaluation: ``gates`` (the workflow's gate step), ``hold`` (a held
            promotion's window opened), ``override`` (a freeze override), ``approvals`` (the approval
            service decided).
    """

    promotion_id: UUID
    trigger: str
    evaluated_at: datetime
    inputs: dict[str, Any]
    record: dict[str, Any]


class CreateEnvironment(Command):
    """Create an environment in the promotion order."""

    name: Name
    display_name: DisplayName | None = None
    order_index: int = Field(ge=0, le=10_000)
    required_approvals: int = Field(default=0, ge=0, le=50)
    require_sod: bool = False
    config: dict[str, Any] = Field(default_factory=dict)
    promotion_policy: dict[str, Any] = Field(default_factory=dict)


class UpdateEnvironment(Command):
    """Change an environment; omitted fields keep their value."""

    environment_id: UUID
    display_name: DisplayName | None = None
    order_index: int | None = Field(default=None, ge=0, le=10_000)
    required_approvals: int | None = Field(default=None, ge=0, le=50)
    require_sod: bool | None = None
    config: dict[str, Any] | None = None
    promotion_policy: dict[str, Any] | None = None


class DeleteEnvironment(Command):
    """Delete an environment no promotion references."""

    environment_id: UUID


class FreezeWindowSpec(Model):
    """A window as the client gives it: one-off (start, end) or recurring (rrule + duration).

    A recurring window starts its first occurrence at ``dtstart``, a wall time of ``timezone`` (an offset, if
    given, is converted to that zone); ``start`` may stand in for it. Occurrences keep their local wall time
    across daylight-saving changes.
    """

    kind: str = Field(default="deny", pattern=r"^(deny|allow)$")
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    rrule: str | None = Field(default=None, max_length=500)
    duration_s: float | None = Field(default=None, gt=0, le=366 * 24 * 3600)
    dtstart: datetime | None = None
    timezone: str = Field(default="UTC", max_length=64)
    reason: str = Field(min_length=1, max_length=1000)
    exceptions: list[UUID] = Field(default_factory=list, max_length=100)


class AddFreezeWindow(Command):
    """Add a window to an environment."""

    environment_id: UUID
    window: FreezeWindowSpec


class RemoveFreezeWindow(Command):
    """Remove a window."""

    environment_id: UUID
    window_id: UUID


class RecordScanResult(Command):
    """Register the latest vulnerability scan verdict of an image digest."""

    digest: Digest
    critical: int = Field(ge=0)
    high: int = Field(ge=0)
    medium: int = Field(ge=0)
    low: int = Field(default=0, ge=0)
    max_epss: float = Field(default=0.0, ge=0, le=1)
    kev: bool = False
    scanner: str = Field(default="unknown", max_length=100)
    scanned_at: AwareDatetime | None = None


class RequestPromotion(Command):
    """Ask to promote a ready release into an environment."""

    release_id: UUID
    target_environment_id: UUID
    source_environment_id: UUID | None = None
    reason: str = Field(default="", max_length=2000)


class CancelPromotion(Command):
    """Cancel a promotion that has not started deploying."""

    promotion_id: UUID
    reason: str | None = Field(default=None, max_length=2000)


class OverrideFreeze(Command):
    """Let a promotion through an active freeze window; ``may_override`` is the caller's ``freeze:override``."""

    promotion_id: UUID
    reason: str = Field(min_length=1, max_length=2000)
    may_override: bool = False


class GetEnvironment(Query):
    """Read one environment."""

    environment_id: UUID


class ListEnvironments(Query):
    """List environments by promotion order."""

    page: PageRequest = Field(default_factory=PageRequest)


class ListFreezeWindows(Query):
    """List an environment's windows."""

    environment_id: UUID
    page: PageRequest = Field(default_factory=PageRequest)


class GetEnvironmentState(Query):
    """Is the environment open for promotions now?"""

    environment_id: UUID


BOARD_MAX_ENVIRONMENTS: Final[int] = 500
"""An environment board holds at most this many environments (the first in promotion order)."""
BOARD_MAX_RELEASES: Final[int] = 500
"""An environment board holds the cells of at most this many releases."""


class GetEnvironmentBoard(Query):
    """Every environment in promotion order with its freeze state now, and the latest promotion of each of the
    newest releases into each environment: what a dashboard's overview or freeze calendar shows, in one query."""

    releases: int = Field(
        default=200,
        ge=0,
        le=BOARD_MAX_RELEASES,
        description="The newest releases (by their latest promotion) whose cells are given; 0 for none.",
    )
    include_windows: bool = Field(default=False, description="Give each environment's windows too.")


class GetPromotion(Query):
    """Read one promotion."""

    promotion_id: UUID


class ListPromotions(Query):
    """List promotions, newest first."""

    status: PromotionStatus | None = None
    release_id: UUID | None = None
    environment_id: UUID | None = None
    page: PageRequest = Field(default_factory=PageRequest)


class GetDecision(Query):
    """Read a promotion's latest decision with its inputs."""

    promotion_id: UUID


class EnvironmentChanged(Event):
    """An environment was created, updated or deleted."""

    environment: EnvironmentView


class FreezeChanged(Event):
    """A window (occurrence) opened or closed."""

    environment_id: UUID
    window_id: UUID
    occurrence: str
    kind: str
    reason: str
    at: datetime


class PromotionChanged(Event):
    """A promotion changed state.

    Attributes:
        promotion: The promotion as it is after the change.
        decision_inputs: On ``promotion_approved`` and ``promotion_rejected`` announcing a decision made in
            the same transaction, the inputs that decision was computed from (``DecisionView.inputs``), so
            that its evidence needs no query back; ``promotion.decision_record["inputs_hash"]`` is their hash
            at the record's ``evaluated_at``, which a reader checks before using them. None otherwise (and
            when they are larger than :data:`MAX_EVENT_DECISION_INPUTS_BYTES`): ask ``get_decision``.
    """

    promotion: PromotionView
    decision_inputs: dict[str, Any] | None = None


MAX_EVENT_DECISION_INPUTS_BYTES: Final[int] = 64 * 1024
"""Largest decision inputs (compact JSON) a ``PromotionChanged`` event carries; larger ones are left to
``get_decision``, so an event stays far below NATS's message limit."""
