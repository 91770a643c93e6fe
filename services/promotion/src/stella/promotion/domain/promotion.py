"""The Promotion aggregate and its state machine.

Nothing here performs I/O, reads a clock or makes ids: ``now`` and every id are arguments. A transition is a
method that checks the current state, moves the aggregate, and returns the domain events it caused; the
handler layer saves the aggregate and writes those events to the outbox in one transaction.

Lifecycle (product reference section 3)::

    (new) --request--> pending_gate --gates allow, approvals needed--> pending_approval --N approvals--> approved
    pending_gate --gates allow, no approvals--> approved
    pending_gate --gates deny (or error)--> rejected          (a closed time window on a "hold" env stays pending_gate)
    pending_approval --rejection or timeout--> rejected
    approved --deploy-start re-check allows--> deploying --job succeeded--> deployed
    approved --re-check denies--> pending_gate (hold until next_open) or rejected
    deploying --job failed--> failed [--rollback succeeded--> rolled_back]
    pending_gate | pending_approval | approved --cancel--> cancelled
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID

from stella.promotion.domain.encoding import format_utc, require_aware, to_json_value
from stella.promotion.domain.environment import FreezeBehavior
from stella.promotion.domain.errors import (
    ApprovalTimeoutNotReached,
    CancelNotAllowed,
    DecisionInconclusive,
    DeploymentJobMismatch,
    EnvironmentBusy,
    InvalidPromotionRequest,
    InvalidTransition,
    NotNextInQueue,
    PromotionAlreadyTerminal,
    PromotionNotApproved,
    PromotionNotPending,
)
from stella.promotion.domain.events import (
    PromotionApprovalRequired,
    PromotionApproved,
    PromotionCancelled,
    PromotionCompleted,
    PromotionEvent,
    PromotionFailed,
    PromotionRejected,
    PromotionRolledBack,
    PromotionStarted,
)
from stella.promotion.domain.outcome import DecisionResult, GateOutcome
from stella.promotion.domain.release import ApprovalSummary
from stella.promotion.domain.status import (
    ALLOWED_TRANSITIONS,
    CANCELLABLE_STATUSES,
    JOB_OUTCOMES,
    REASON_APPROVAL_REJECTED,
    REASON_APPROVAL_TIMEOUT,
    REASON_RUN_NOT_STARTED,
    REASON_WINDOW_NEVER_OPENS,
    REASON_WORKFLOW_ENDED,
    PromotionStatus,
)


@dataclass(slots=True, kw_only=True)
class Promotion:
    """A request to promote a release to an environment, and its progress.

    Create one with :func:`request_promotion`. Every method that changes the state takes ``now``, raises a
    :class:`DomainError` subclass when the change is not allowed, bumps ``version`` (for optimistic
    locking) and returns the events it caused. The environment settings that steer the lifecycle
    (approvals, separation of duties, freeze behaviour, approval timeout) are copied at request time so a
    later edit of the environment does not change a promotion in flight.
    """

    id: UUID
    tenant_id: UUID
    release_id: UUID
    target_environment_id: UUID
    source_environment_id: UUID | None
    requested_by: str
    requested_at: datetime
    status: PromotionStatus
    updated_at: datetime
    required_approvals: int
    require_sod: bool
    freeze_behavior: FreezeBehavior
    approval_timeout_s: int
    version: int = 1
    decision: Mapping[str, Any] | None = None
    reason_codes: tuple[str, ...] = ()
    status_message: str | None = None
    next_open: datetime | None = None
    approval_deadline: datetime | None = None
    approvals_granted_at: datetime | None = None
    approved_at: datetime | None = None
    deployment_job_id: UUID | None = None
    rollback_job_id: UUID | None = None
    rollback_succeeded: bool | None = None
    finished_at: datetime | None = None
    cancelled_by: str | None = None
    cleared_at: datetime | None = None
    """When the approved promotion took its environment's deployment slot (its deploy step was let go)."""

    # -- queries ---------------------------------------------------------------------------------

    @property
    def is_terminal(self) -> bool:
        """Whether the promotion is final: a terminal state, or ``failed`` with no rollback left to run."""
        if self.status.is_terminal:
            return True
        return self.status is PromotionStatus.FAILED and (
            self.rollback_job_id is None or self.rollback_succeeded is False
        )

    @property
    def holds_deploy_slot(self) -> bool:
        """Whether the promotion occupies its environment's single deployment slot.

        A deploying promotion does, and so does an approved one cleared to deploy (its deploy step was let
        go, its job has not reported its start yet).
        """
        return self.status is PromotionStatus.DEPLOYING or (
            self.status is PromotionStatus.APPROVED and self.cleared_at is not None
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the aggregate as plain JSON data (for storage and read models)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return cast(dict[str, Any], to_json_value(data))

    # -- transitions -----------------------------------------------------------------------------

    def apply_gate_decision(self, outcome: GateOutcome, *, now: datetime) -> list[PromotionEvent]:
        """Apply the decision of the promotion's gates while it waits in ``pending_gate``.

        * allow: ``approved``, or ``pending_approval`` when approvals are required and not yet granted;
        * pending on approvals only: ``pending_approval``;
        * pending on another gate (a manual confirmation): stays ``pending_gate``;
        * deny by closed time windows only on a ``hold`` environment: stays ``pending_gate`` with
          ``next_open`` set (rejected when the windows never open within the search horizon);
        * any other deny (including gate errors): ``rejected``.

        Args:
            outcome: The decision (``DecisionRecord.outcome()``).
            now: Current instant.

        Returns:
            The events caused (empty when the promotion keeps waiting).

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotPending: the promotion is not in ``pending_gate``.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.PENDING_GATE, PromotionNotPending)
        self.decision = dict(outcome.record)
        if outcome.result is DecisionResult.DENY:
            return self._deny(outcome, now)
        if outcome.result is DecisionResult.PENDING and outcome.waiting_on:
            self.next_open = None
            self.reason_codes = outcome.reasons
            self.status_message = "waiting on gates: " + ", ".join(sorted(set(outcome.waiting_on)))
            self._touch(now)
            return []
        self.next_open = None
        if outcome.approval_satisfied and self.approvals_granted_at is None:
            self.approvals_granted_at = now
        # An approval gate may ask for more approvals than the environment; the larger count wins.
        self.required_approvals = max(self.required_approvals, outcome.approvals_required)
        if outcome.result is DecisionResult.PENDING or (
            self.required_approvals > 0 and self.approvals_granted_at is None
        ):
            return self._await_approvals(now)
        return self._approve(now)

    def awaits_approvals(self, outcome: GateOutcome, *, now: datetime) -> bool:
        """Whether :meth:`apply_gate_decision` with ``outcome`` would leave the promotion in ``pending_approval``.

        Nothing changes: the decision is tried on a copy. The service uses it to hold the move until the
        approval request is open, so ``pending_approval`` always means votes are accepted.
        """
        probe = copy.deepcopy(self)
        probe.apply_gate_decision(outcome, now=now)
        return probe.status is PromotionStatus.PENDING_APPROVAL

    def record_approvals(self, summary: ApprovalSummary, *, now: datetime) -> list[PromotionEvent]:
        """Apply the approval service's counts while the promotion is in ``pending_approval``.

        Any eligible rejection rejects; ``granted >= required`` approves (the larger of the summary's and
        the promotion's own requirement counts); otherwise nothing changes.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotPending: the promotion is not waiting for approvals.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.PENDING_APPROVAL, PromotionNotPending)
        if summary.rejected > 0:
            return self._reject(
                now,
                (REASON_APPROVAL_REJECTED,),
                f"rejected by {summary.rejected} eligible approver(s)",
            )
        required = max(summary.required, self.required_approvals)
        if summary.granted >= required:
            self.approvals_granted_at = now
            return self._approve(now)
        return []

    def expire_approvals(self, *, now: datetime) -> list[PromotionEvent]:
        """Reject a promotion whose approval deadline has passed.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotPending: the promotion is not waiting for approvals.
            ApprovalTimeoutNotReached: ``now`` is before ``approval_deadline``.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.PENDING_APPROVAL, PromotionNotPending)
        assert self.approval_deadline is not None
        if now < self.approval_deadline:
            raise ApprovalTimeoutNotReached(
                f"approvals of promotion {self.id} are due by {format_utc(self.approval_deadline)}"
            )
        return self._reject(
            now,
            (REASON_APPROVAL_TIMEOUT,),
            f"approvals not granted before {format_utc(self.approval_deadline)}",
        )

    def abandon_unstarted_run(self, *, waited: timedelta, now: datetime) -> list[PromotionEvent]:
        """Reject a promotion whose workflow run never evaluated its gates within ``waited``.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotPending: the promotion is not waiting on its gates.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.PENDING_GATE, PromotionNotPending)
        return self._reject(
            now,
            (REASON_RUN_NOT_STARTED,),
            f"its workflow run did not start within {_duration_text(waited)}, so its gates could not be "
            "evaluated; request the promotion again",
        )

    def start_deployment(
        self,
        outcome: GateOutcome,
        *,
        deployment_job_id: UUID,
        environment_promotions: Iterable[Promotion],
        now: datetime,
    ) -> list[PromotionEvent]:
        """Start the deployment after re-checking the time-sensitive gates (freeze, schedule).

        Only one promotion per environment deploys at a time and approved promotions start in approval
        order (:func:`next_to_deploy`). When the re-check denies because a window is closed, a ``hold``
        environment sends the promotion back to ``pending_gate`` until ``next_open``; otherwise it is
        rejected.

        Args:
            outcome: Decision of the time-sensitive gates evaluated now.
            deployment_job_id: Id of the deployment job to start.
            environment_promotions: The environment's promotions (this one may be among them).
            now: Current instant.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotApproved: the promotion is not ``approved``.
            EnvironmentBusy: another promotion of the environment is deploying.
            NotNextInQueue: an earlier approved promotion must deploy first.
            DecisionInconclusive: the re-check came back ``pending``.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.APPROVED, PromotionNotApproved)
        others = [p for p in environment_promotions if p.id != self.id]
        busy = [p for p in others if _same_env(p, self) and p.holds_deploy_slot]
        if busy:
            raise EnvironmentBusy(
                f"promotion {busy[0].id} is deploying to environment {self.target_environment_id}; "
                "this one starts when it finishes"
            )
        head = next_to_deploy([*others, self], self.target_environment_id)
        if head is not None and head.id != self.id:
            raise NotNextInQueue(f"promotion {head.id} was approved first and deploys before {self.id}")
        if outcome.result is DecisionResult.PENDING:
            raise DecisionInconclusive("the deploy-start re-check must allow or deny, it returned pending")
        self.decision = dict(outcome.record)
        if outcome.result is DecisionResult.DENY:
            return self._deny(outcome, now)
        self.deployment_job_id = deployment_job_id
        self._move(PromotionStatus.DEPLOYING, now)
        return [PromotionStarted(**self._event_base(now), deployment_job_id=deployment_job_id)]

    def clear_to_deploy(self, *, environment_promotions: Iterable[Promotion], now: datetime) -> bool:
        """Take the environment's deployment slot so the deploy step may run, or queue in ``approved``.

        One promotion per environment deploys at a time (reference section 3: the others queue in
        ``approved``) and queued promotions go in approval order (:func:`next_to_deploy`). A queued
        promotion's ``status_message`` names the promotion it waits for. Clearing an already cleared
        promotion changes nothing.

        Args:
            environment_promotions: The environment's approved and deploying promotions.
            now: Current instant.

        Returns:
            True when the promotion holds the slot (cleared now or before), False when it is queued.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotApproved: the promotion is not ``approved``.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.APPROVED, PromotionNotApproved)
        if self.cleared_at is not None:
            return True
        others = [p for p in environment_promotions if p.id != self.id and _same_env(p, self)]
        busy = next((p for p in others if p.holds_deploy_slot), None)
        head = next_to_deploy([*others, self], self.target_environment_id)
        if busy is not None:
            doing = "deploying" if busy.status is PromotionStatus.DEPLOYING else "starting its deployment"
            message = f"approved; queued behind promotion {busy.id}, which is {doing} to this environment"
        elif head is not None and head.id != self.id:
            message = f"approved; queued behind promotion {head.id}, approved earlier"
        else:
            self.cleared_at = now
            self.next_open = None
            self.status_message = "approved; deployment starting"
            self._touch(now)
            return True
        if self.status_message != message or self.next_open is not None:
            self.status_message = message
            self.next_open = None  # its turn comes when the slot frees, not at a time
            self._touch(now)
        return False

    def wait_for_window(self, *, reason: str | None, next_open: datetime | None, now: datetime) -> list[PromotionEvent]:
        """The deploy-start re-check found the environment closed by a time window: wait in ``approved``.

        The time-sensitive gates (freeze windows, deployment schedules) are evaluated again when the deployment
        would start (reference section 3); the approval stands, and the deployment starts when the window
        opens (``next_open``) or a freeze override lets the promotion through.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotApproved: the promotion is not ``approved``.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.APPROVED, PromotionNotApproved)
        self.next_open = None if next_open is None else require_aware(next_open, "next_open")
        why = reason or "a time window is closed"
        when = (
            f"until {format_utc(self.next_open)}" if self.next_open else "and does not open within the search horizon"
        )
        self.status_message = f"approved; the deployment waits: {why} ({when})"
        self._touch(now)
        return []

    def begin_deployment(self, *, deployment_job_id: UUID, now: datetime) -> list[PromotionEvent]:
        """The promotion's deployment job started: ``approved`` -> ``deploying``.

        The job is the deployment service's answer to the deploy step, which runs once the promotion was
        cleared (:meth:`clear_to_deploy`); a promotion already deploying that job changes nothing.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            PromotionNotApproved: the promotion is neither approved nor deploying this job.
            DeploymentJobMismatch: the promotion deploys another job.
        """
        now = require_aware(now, "now")
        if self.status is PromotionStatus.DEPLOYING or self.deployment_job_id is not None:
            self._check_job(deployment_job_id)
            return []
        self._require(PromotionStatus.APPROVED, PromotionNotApproved)
        self.deployment_job_id = deployment_job_id
        self.cleared_at = self.cleared_at or now
        self.next_open = None
        self.status_message = f"deploying (job {deployment_job_id})"
        self._move(PromotionStatus.DEPLOYING, now)
        return [PromotionStarted(**self._event_base(now), deployment_job_id=deployment_job_id)]

    def finish_job(self, *, deployment_job_id: UUID, outcome: str, reason: str, now: datetime) -> list[PromotionEvent]:
        """Apply how the promotion's deployment job ended.

        ``succeeded`` -> ``deployed``; ``failed`` or ``cancelled`` -> ``failed`` (final: no rollback ran);
        ``rolled_back`` (the job failed and rolled its targets back itself) -> ``failed`` -> ``rolled_back``.
        A job end that arrives before its start is applied as both. A job end applied already changes nothing.

        Raises:
            InvalidPromotionRequest: ``outcome`` is not a job outcome.
            PromotionNotApproved: the promotion never reached its deployment.
            DeploymentJobMismatch: the job is not the promotion's.
        """
        now = require_aware(now, "now")
        if outcome not in JOB_OUTCOMES:
            raise InvalidPromotionRequest(f"job outcome {outcome!r} is not one of {sorted(JOB_OUTCOMES)}")
        if self.deployment_job_id is not None and self.status is not PromotionStatus.DEPLOYING:
            self._check_job(deployment_job_id)
            return []  # already applied
        events = self.begin_deployment(deployment_job_id=deployment_job_id, now=now)
        if outcome == "succeeded":
            events += self.complete_deployment(deployment_job_id=deployment_job_id, now=now)
            self.status_message = reason or None  # "no targets: nothing to deploy", say
            return events
        if outcome == "rolled_back":
            events += self.fail_deployment(
                deployment_job_id=deployment_job_id, reason=reason, now=now, rollback_job_id=deployment_job_id
            )
            events += self.complete_rollback(rollback_job_id=deployment_job_id, now=now)
            self.status_message = f"rolled back: {reason}" if reason else "rolled back"
            return events
        text = reason or ("the deployment was cancelled" if outcome == "cancelled" else "the deployment failed")
        return [*events, *self.fail_deployment(deployment_job_id=deployment_job_id, reason=text, now=now)]

    def begin_rollback(self, *, rollback_job_id: UUID, rollback_of: UUID, now: datetime) -> list[PromotionEvent]:
        """A rollback job of the promotion's failed deployment started (a manual one, after a final failure).

        Only a failed promotion whose deployment job is ``rollback_of`` and that has no rollback yet takes
        it; anything else (a rollback of a deployed promotion, a second rollback) changes nothing here: the
        rollback is still recorded as evidence.
        """
        now = require_aware(now, "now")
        if (
            self.status is not PromotionStatus.FAILED
            or self.deployment_job_id != rollback_of
            or self.rollback_job_id is not None
        ):
            return []
        self.rollback_job_id = rollback_job_id
        self.rollback_succeeded = None
        self.finished_at = None
        self.status_message = f"rolling back (job {rollback_job_id})"
        self._touch(now)
        return []

    def finish_rollback(
        self, *, rollback_job_id: UUID, rollback_of: UUID, succeeded: bool, reason: str, now: datetime
    ) -> list[PromotionEvent]:
        """A rollback job of the promotion's failed deployment ended: ``failed`` -> ``rolled_back`` on success.

        Applied once; a rollback job that is not the promotion's changes nothing.
        """
        now = require_aware(now, "now")
        self.begin_rollback(rollback_job_id=rollback_job_id, rollback_of=rollback_of, now=now)
        if self.status is not PromotionStatus.FAILED or self.rollback_job_id != rollback_job_id:
            return []
        if self.rollback_succeeded is not None:
            return []
        if succeeded:
            return self.complete_rollback(rollback_job_id=rollback_job_id, now=now)
        return self.fail_rollback(rollback_job_id=rollback_job_id, reason=reason or "the rollback failed", now=now)

    def release_slot(self, *, reason: str, now: datetime) -> list[PromotionEvent]:
        """Give the environment's deployment slot back while still ``approved`` (the run ended without a job).

        The promotion keeps its approval; it no longer blocks the environment's queue.
        """
        now = require_aware(now, "now")
        if self.status is not PromotionStatus.APPROVED or self.cleared_at is None:
            return []
        self.cleared_at = None
        self.status_message = reason
        self._touch(now)
        return []

    def complete_deployment(self, *, deployment_job_id: UUID, now: datetime) -> list[PromotionEvent]:
        """Mark the deployment as succeeded.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            InvalidTransition: the promotion is not deploying.
            DeploymentJobMismatch: the job is not the promotion's.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.DEPLOYING, InvalidTransition)
        self._check_job(deployment_job_id)
        self._move(PromotionStatus.DEPLOYED, now)
        self.finished_at = now
        self.reason_codes = ()
        self.status_message = None
        return [PromotionCompleted(**self._event_base(now), deployment_job_id=deployment_job_id)]

    def fail_deployment(
        self,
        *,
        deployment_job_id: UUID,
        reason: str,
        now: datetime,
        rollback_job_id: UUID | None = None,
    ) -> list[PromotionEvent]:
        """Mark the deployment as failed, naming the rollback job when the strategy rolls back.

        Without a rollback the promotion is final in ``failed``.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            InvalidTransition: the promotion is not deploying.
            DeploymentJobMismatch: the job is not the promotion's.
        """
        now = require_aware(now, "now")
        self._require(PromotionStatus.DEPLOYING, InvalidTransition)
        self._check_job(deployment_job_id)
        self.rollback_job_id = rollback_job_id
        self.status_message = reason
        self._move(PromotionStatus.FAILED, now)
        if rollback_job_id is None:
            self.finished_at = now
        return [
            PromotionFailed(
                **self._event_base(now),
                deployment_job_id=deployment_job_id,
                reason=reason,
                rollback_job_id=rollback_job_id,
            )
        ]

    def complete_rollback(self, *, rollback_job_id: UUID, now: datetime) -> list[PromotionEvent]:
        """Record that the rollback job succeeded: ``failed`` -> ``rolled_back``.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished (including a failed one without rollback).
            InvalidTransition: the promotion has not failed.
            DeploymentJobMismatch: the job is not the promotion's rollback job.
        """
        now = require_aware(now, "now")
        self._require_rollback(rollback_job_id)
        assert self.deployment_job_id is not None
        self.rollback_succeeded = True
        self._move(PromotionStatus.ROLLED_BACK, now)
        self.finished_at = now
        return [
            PromotionRolledBack(
                **self._event_base(now),
                deployment_job_id=self.deployment_job_id,
                rollback_job_id=rollback_job_id,
            )
        ]

    def fail_rollback(self, *, rollback_job_id: UUID, reason: str, now: datetime) -> list[PromotionEvent]:
        """Record that the rollback job failed: the promotion stays ``failed`` and is now final.

        No promotion event is published; the deployment service reports the failed rollback job itself.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            InvalidTransition: the promotion has not failed.
            DeploymentJobMismatch: the job is not the promotion's rollback job.
        """
        now = require_aware(now, "now")
        self._require_rollback(rollback_job_id)
        self.rollback_succeeded = False
        self.status_message = f"rollback failed: {reason}"
        self.finished_at = now
        self._touch(now)
        return []

    def fail_workflow(self, *, reason: str, now: datetime) -> list[PromotionEvent]:
        """The promotion's workflow run ended, or could not start, while the promotion still waited on it.

        Nothing will decide such a promotion any more, so it fails, final, with the run's reason: no
        promotion waits for a run that is gone. Allowed in ``pending_gate`` and ``pending_approval``; in any
        other state the run's end says nothing new and nothing changes.
        """
        now = require_aware(now, "now")
        if self.status not in (PromotionStatus.PENDING_GATE, PromotionStatus.PENDING_APPROVAL):
            return []
        self.status_message = reason
        self.reason_codes = (REASON_WORKFLOW_ENDED,)
        self.next_open = None
        self._move(PromotionStatus.FAILED, now)
        self.finished_at = now
        return [PromotionFailed(**self._event_base(now), deployment_job_id=None, reason=reason, rollback_job_id=None)]

    def cancel(self, *, cancelled_by: str, reason: str, now: datetime) -> list[PromotionEvent]:
        """Cancel the promotion; allowed in ``pending_gate``, ``pending_approval`` and ``approved``.

        Raises:
            PromotionAlreadyTerminal: the promotion is finished.
            CancelNotAllowed: the deployment already started.
            InvalidPromotionRequest: ``cancelled_by`` is empty.
        """
        now = require_aware(now, "now")
        if not isinstance(cancelled_by, str) or not cancelled_by.strip():
            raise InvalidPromotionRequest("cancelled_by must name the principal who cancels")
        if self.is_terminal:
            raise PromotionAlreadyTerminal(
                f"promotion {self.id} is already {self.status.value} and cannot be cancelled"
            )
        if self.status not in CANCELLABLE_STATUSES:
            raise CancelNotAllowed(
                f"promotion {self.id} is {self.status.value}; only promotions that have not started "
                "deploying can be cancelled"
            )
        self.cancelled_by = cancelled_by
        self.status_message = reason
        self.next_open = None
        self._move(PromotionStatus.CANCELLED, now)
        self.finished_at = now
        return [PromotionCancelled(**self._event_base(now), cancelled_by=cancelled_by, reason=reason)]

    # -- internals -------------------------------------------------------------------------------

    def _require(self, status: PromotionStatus, error: type[InvalidTransition]) -> None:
        if self.is_terminal:
            raise PromotionAlreadyTerminal(f"promotion {self.id} is already {self.status.value}")
        if self.status is not status:
            raise error(f"promotion {self.id} is {self.status.value}, expected {status.value}")

    def _require_rollback(self, rollback_job_id: UUID) -> None:
        self._require(PromotionStatus.FAILED, InvalidTransition)
        if self.rollback_job_id != rollback_job_id:
            raise DeploymentJobMismatch(
                f"job {rollback_job_id} is not the rollback job of promotion {self.id} ({self.rollback_job_id})"
            )

    def _check_job(self, deployment_job_id: UUID) -> None:
        if self.deployment_job_id != deployment_job_id:
            raise DeploymentJobMismatch(
                f"job {deployment_job_id} is not the deployment job of promotion {self.id} ({self.deployment_job_id})"
            )

    def _touch(self, now: datetime) -> None:
        self.updated_at = now
        self.version += 1

    def _move(self, to: PromotionStatus, now: datetime) -> None:
        if to not in ALLOWED_TRANSITIONS[self.status]:
            raise InvalidTransition(f"promotion {self.id} cannot move from {self.status.value} to {to.value}")
        self.status = to
        self._touch(now)

    def _event_base(self, now: datetime) -> dict[str, Any]:
        return {
            "promotion_id": self.id,
            "tenant_id": self.tenant_id,
            "release_id": self.release_id,
            "environment_id": self.target_environment_id,
            "occurred_at": now,
        }

    def _approve(self, now: datetime) -> list[PromotionEvent]:
        self._move(PromotionStatus.APPROVED, now)
        self.approved_at = now
        self.reason_codes = ()
        self.status_message = None
        return [PromotionApproved(**self._event_base(now))]

    def _await_approvals(self, now: datetime) -> list[PromotionEvent]:
        self._move(PromotionStatus.PENDING_APPROVAL, now)
        deadline = now + timedelta(seconds=self.approval_timeout_s)
        self.approval_deadline = deadline
        self.reason_codes = ()
        self.status_message = f"waiting for {self.required_approvals} approval(s)"
        return [
            PromotionApprovalRequired(
                **self._event_base(now),
                required_approvals=self.required_approvals,
                require_sod=self.require_sod,
                requested_by=self.requested_by,
                deadline=deadline,
            )
        ]

    def _deny(self, outcome: GateOutcome, now: datetime) -> list[PromotionEvent]:
        if outcome.time_window_only and self.freeze_behavior is FreezeBehavior.HOLD:
            if outcome.next_open is not None:
                if self.status is not PromotionStatus.PENDING_GATE:
                    self._move(PromotionStatus.PENDING_GATE, now)
                else:
                    self._touch(now)
                self.next_open = require_aware(outcome.next_open, "next_open")
                self.reason_codes = outcome.reasons
                self.status_message = f"held by a closed window until {format_utc(self.next_open)}"
                return []
            return self._reject(
                now,
                tuple(sorted({*outcome.reasons, REASON_WINDOW_NEVER_OPENS})),
                "the closed window does not open within the search horizon",
            )
        return self._reject(now, outcome.reasons, "denied by gates: " + ", ".join(outcome.reasons))

    def _reject(self, now: datetime, reasons: Sequence[str], message: str) -> list[PromotionEvent]:
        self.reason_codes = tuple(reasons)
        self.status_message = message
        self.next_open = None
        self._move(PromotionStatus.REJECTED, now)
        self.finished_at = now
        return [PromotionRejected(**self._event_base(now), reason_codes=tuple(reasons), message=message)]


def _duration_text(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _same_env(a: Promotion, b: Promotion) -> bool:
    return a.tenant_id == b.tenant_id and a.target_environment_id == b.target_environment_id


def next_to_deploy(promotions: Iterable[Promotion], environment_id: UUID) -> Promotion | None:
    """Say which approved promotion of an environment may start deploying now.

    None while a promotion of the environment holds its deployment slot (deploying, or approved and cleared
    to deploy); otherwise the approved promotion that was approved first (ties broken by request time, then id, so the answer is deterministic).

    Args:
        promotions: Promotions to consider (others than the environment's are ignored).
        environment_id: The environment.

    Returns:
        The promotion to start, or ``None``.
    """
    candidates: list[Promotion] = []
    for promotion in promotions:
        if promotion.target_environment_id != environment_id:
            continue
        if promotion.holds_deploy_slot:
            return None
        if promotion.status is PromotionStatus.APPROVED:
            candidates.append(promotion)
    if not candidates:
        return None
    return min(candidates, key=deploy_order)


def deploy_order(promotion: Promotion) -> tuple[datetime, datetime, str]:
    """The place of an approved promotion in its environment's deployment queue: approved first goes first
    (ties broken by request time, then id). ``repo.DEPLOY_QUEUE_FRONT`` orders its rows the same way."""
    return (promotion.approved_at or promotion.updated_at, promotion.requested_at, str(promotion.id))
