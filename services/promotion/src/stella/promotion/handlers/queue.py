"""The deploy queue: an approved promotion deploys when its environment's slot is free and its time
windows are open; workflow runs and deployment jobs move it on and release the next one.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import asyncpg

from stella.contracts import approval as a
from stella.contracts import deployment as d
from stella.contracts import workflow as w
from stella.contracts.envelope import Message
from stella.kit.outbox import add_events
from stella.promotion import freeze, repo
from stella.promotion.domain.errors import DomainError
from stella.promotion.domain.promotion import Promotion, next_to_deploy
from stella.promotion.domain.status import PromotionStatus
from stella.promotion.handlers.base import HandlerBase
from stella.promotion.handlers.messages import Origin
from stella.promotion.store import PostgresStore, PromotionStore

log = logging.getLogger(__name__)

_RUN_END_MOVES = frozenset({PromotionStatus.PENDING_GATE, PromotionStatus.PENDING_APPROVAL, PromotionStatus.APPROVED})
"""The states in which the end of a promotion's run changes it (it fails, or leaves the deployment queue)."""


class DeployQueue(HandlerBase):
    async def on_run_ended(self, event: w.RunCompleted | w.RunFailed, conn: asyncpg.Connection) -> None:
        """A promotion's workflow run ended, or could not start: a promotion still waiting on it fails.

        Every step that decides a promotion (the gate step, the approval step) moves it in the transaction
        that completes the step, so a run that ends while its promotion still waits will never decide it: a
        template without an approval step, a run refused at its start (an input it does not declare), a step
        that timed out. The promotion fails with the run's reason instead of waiting for ever.
        """
        if event.subject_id is None:
            return
        seen = await repo.get_promotion(conn, event.tenant_id, event.subject_id)
        if seen is None or seen.workflow_run_id != event.run_id or seen.promotion.status not in _RUN_END_MOVES:
            return  # not this run's promotion, or one a run's end no longer changes (it never goes back)
        if seen.promotion.status is PromotionStatus.APPROVED and event.deployment_jobs:
            # Its deploy step started a job whose events, on another consumer, have not reached it yet: they
            # move the promotion (deploying, then its outcome) and give the slot back. Leaving the queue now
            # would let the next promotion deploy beside that job.
            log.debug(
                "a promotion's run ended before its deployment job's events arrived; they will move it",
                extra={"promotion_id": str(seen.promotion.id), "job_ids": [str(j) for j in event.deployment_jobs]},
            )
            return
        # Locked in the order of the job events' handlers, which clear the next promotion in line: the
        # environment's queue, then the promotion. The other order can deadlock with them when this promotion is
        # the one they clear (Postgres breaks the deadlock after a second and the event is handled again).
        await repo.lock_deploy_queue(conn, event.tenant_id, seen.promotion.target_environment_id)
        stored = await repo.get_promotion(conn, event.tenant_id, event.subject_id, lock=True)
        if stored is None:
            return
        template = event.template_name or stored.workflow_template
        if isinstance(event, w.RunFailed):
            outcome = "was cancelled" if event.status is w.RunStatus.CANCELLED else "failed"
            reason = f"workflow run {event.run_id} ({template}) {outcome} before deciding the promotion"
            if event.error:
                reason += f": {event.error}"
        else:
            reason = (
                f"workflow run {event.run_id} ({template}) finished without deciding the promotion; "
                "its template lacks a step the promotion waits on"
            )
        promotion = stored.promotion
        if promotion.status is PromotionStatus.APPROVED:
            outcome = "failed" if isinstance(event, w.RunFailed) else "ended"
            ended = f"its workflow run {event.run_id} ({template}) {outcome} without a deployment job"
            if isinstance(event, w.RunFailed) and event.error:
                ended += f": {event.error}"
            await self._leave_queue(conn, stored, ended, Origin.of(event))
            return
        waited_on_approvals = promotion.status is PromotionStatus.PENDING_APPROVAL
        events = promotion.fail_workflow(reason=reason[:2000], now=self.clock())
        if not events:
            return
        await repo.update_promotion(conn, stored)
        origin = Origin.of(event)
        messages = self._changed(origin, repo.promotion_view(stored), events)
        if waited_on_approvals:
            messages.append(
                (a.CANCEL_APPROVALS, origin.make(a.CancelApprovals, actor_id=None, promotion_id=promotion.id))
            )
        await add_events(conn, messages)

    async def _leave_queue(
        self, conn: asyncpg.Connection, stored: repo.StoredPromotion, reason: str, origin: Origin
    ) -> None:
        """An approved promotion's run ended without a deployment job: it stops holding or waiting for the slot.

        A run of a template without a deploy step (version 1 of standard-promotion) ends this way after its
        evidence; so does a run whose deploy step failed before any job started. The promotion keeps its
        approval (and may be cancelled); the next promotion of the environment may deploy.
        """
        promotion = stored.promotion
        if not promotion.holds_deploy_slot and stored.deploy_step is None:
            return
        held_slot = promotion.holds_deploy_slot
        promotion.release_slot(reason=f"approved; no deployment: {reason}"[:2000], now=self.clock())
        stored.deploy_step = None
        await repo.update_promotion(conn, stored)
        if held_slot:
            await add_events(conn, await self._release_next(PostgresStore(conn), promotion, origin))

    async def _let_deploy(
        self,
        store: PromotionStore,
        stored: repo.StoredPromotion,
        step: w.StepRef | None,
        outputs: dict[str, Any],
        origin: Origin,
        *,
        windows: list[freeze.FreezeWindow] | None = None,
    ) -> list[tuple[str, Message]]:
        """The promotion is approved: complete the step before its deploy step once the environment is free.

        ``windows``: the environment's time windows when the caller read them in this transaction already
        (the decision's); else they are read for the deploy-start check.

        With the environment's deployment slot taken (another promotion deploys, or one approved earlier
        waits), the completion is held on the promotion and sent by :meth:`_release_next` when its turn
        comes; the workflow run waits meanwhile. The caller saves the promotion.
        """
        p = stored.promotion
        await store.lock_deploy_queue(p.tenant_id, p.target_environment_id)
        queue = [q.promotion for q in await store.deploy_queue_front(p.tenant_id, p.target_environment_id)]
        now = self.clock()
        if step is not None:
            stored.deploy_step = {**step.model_dump(mode="json"), "outputs": outputs}
        others = [q for q in queue if q.id != p.id]
        head = next_to_deploy([*others, p], p.target_environment_id)
        if p.cleared_at is None and head is not None and head.id == p.id:
            # The deploy-start re-check of the time windows: a closed window holds the deployment.
            closed = await self._closed_by_window(store, stored, now, windows)
            if closed is not None:
                p.wait_for_window(reason=closed.reason, next_open=closed.next_open, now=now)
                return []
        if p.clear_to_deploy(environment_promotions=others, now=now):
            stored.deploy_step = None
            return [] if step is None else [self._completion(origin, step, w.StepStatus.SUCCEEDED, outputs, None)]
        return []

    async def _closed_by_window(
        self,
        store: PromotionStore,
        stored: repo.StoredPromotion,
        now: datetime,
        windows: list[freeze.FreezeWindow] | None = None,
    ) -> freeze.EnvironmentState | None:
        """The environment's window state when a freeze or the schedule closes it now and no override applies
        (its ``windows``, read now when not given)."""
        if stored.freeze_override is not None:
            return None
        p = stored.promotion
        if windows is None:
            windows = [s.window for s in await store.windows_of_environment(p.tenant_id, p.target_environment_id)]
        state = freeze.environment_state(windows, now)
        return state if state.closed else None

    @staticmethod
    def _held_step(stored: repo.StoredPromotion) -> tuple[w.StepRef | None, dict[str, Any]]:
        """The step completion a queued promotion holds, and its outputs."""
        held = stored.deploy_step
        if held is None:
            return None, {}
        step = w.StepRef(run_id=held["run_id"], node_id=held["node_id"], attempt=held["attempt"])
        return step, held.get("outputs") or {}

    async def _release_next(self, store: PromotionStore, freed: Promotion, origin: Origin) -> list[tuple[str, Message]]:
        """``freed`` (saved already) gave its environment's slot back: clear the next queued promotion.

        Returns the held step completion of the promotion cleared now (nothing when none waits).
        """
        tenant, environment_id = freed.tenant_id, freed.target_environment_id
        await store.lock_deploy_queue(tenant, environment_id)
        queue = await store.deploy_queue_front(tenant, environment_id)
        head = next_to_deploy([q.promotion for q in queue], environment_id)
        if head is None:
            return []
        stored = await store.get_promotion(tenant, head.id, lock=True)
        if stored is None or stored.promotion.status is not PromotionStatus.APPROVED:
            return []
        log.info(
            "a queued promotion is next to deploy",
            extra={"promotion_id": str(head.id), "after": str(freed.id), "environment_id": str(environment_id)},
        )
        return await self._resume_queued(store, stored, Origin(tenant, stored.correlation_id, origin.causation_id))

    async def _resume_queued(
        self, store: PromotionStore, stored: repo.StoredPromotion, origin: Origin
    ) -> list[tuple[str, Message]]:
        """Try a queued promotion's deployment again (its turn came, or its window opened) and save it."""
        step, outputs = self._held_step(stored)
        messages = await self._let_deploy(store, stored, step, outputs, origin)
        # Its last write: made as the transaction commits, so the deployment line is locked a round trip less.
        await store.update_promotion_at_commit(stored)
        return messages

    async def _job_promotion(
        self, conn: asyncpg.Connection, event: d.JobStarted | d.JobCompleted
    ) -> repo.StoredPromotion | None:
        """The promotion a job event is about, locked after its environment's queue (always in that order)."""
        if event.promotion_id is None or event.kind not in (d.JobKind.DEPLOY, d.JobKind.ROLLBACK):
            return None  # a remediation, a check, or another job that moves no promotion
        await repo.lock_deploy_queue(conn, event.tenant_id, event.environment_id)
        stored = await repo.get_promotion(conn, event.tenant_id, event.promotion_id, lock=True)
        if stored is None or stored.promotion.target_environment_id != event.environment_id:
            log.warning(
                "a deployment job names a promotion of another environment or none of this tenant",
                extra={"job_id": str(event.job_id), "promotion_id": str(event.promotion_id)},
            )
            return None
        return stored

    async def on_job_started(self, event: d.JobStarted, conn: asyncpg.Connection) -> None:
        """The promotion's deployment job started: ``approved`` -> ``deploying`` (a rollback job is noted)."""
        stored = await self._job_promotion(conn, event)
        if stored is None:
            return
        p = stored.promotion
        try:
            if event.rollback_of is not None:
                events = p.begin_rollback(rollback_job_id=event.job_id, rollback_of=event.rollback_of, now=self.clock())
            else:
                events = p.begin_deployment(deployment_job_id=event.job_id, now=self.clock())
        except DomainError as exc:
            # A job for a promotion that is no longer approved (cancelled meanwhile) changes nothing here.
            log.warning("a deployment job started for a promotion that cannot deploy", extra={"error": exc.detail})
            return
        stored.deploy_step = None
        await repo.update_promotion_at_commit(conn, stored)
        await add_events(conn, self._changed(Origin.of(event), repo.promotion_view(stored), events))

    async def on_job_completed(self, event: d.JobCompleted, conn: asyncpg.Connection) -> None:
        """The promotion's deployment job ended: ``deployed``, ``failed`` or ``rolled_back``; the next one may go.

        Only now does the release count as reached in the environment (the ordering rule).
        """
        stored = await self._job_promotion(conn, event)
        if stored is None:
            return
        p = stored.promotion
        now = self.clock()
        reason = event.reason[:2000]
        held_slot = p.holds_deploy_slot
        try:
            if event.rollback_of is not None:
                events = p.finish_rollback(
                    rollback_job_id=event.job_id,
                    rollback_of=event.rollback_of,
                    succeeded=event.outcome == "succeeded",
                    reason=reason,
                    now=now,
                )
            else:
                events = p.finish_job(deployment_job_id=event.job_id, outcome=event.outcome, reason=reason, now=now)
        except DomainError as exc:
            log.warning("a deployment job ended for a promotion that cannot take it", extra={"error": exc.detail})
            return
        stored.deploy_step = None
        await repo.update_promotion(conn, stored)
        origin = Origin.of(event)
        messages = self._changed(origin, repo.promotion_view(stored), events)
        if held_slot and not p.holds_deploy_slot:
            messages += await self._release_next(PostgresStore(conn), p, origin)
        await add_events(conn, messages)
