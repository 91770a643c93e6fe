"""The three timers: held promotions re-evaluated when their window opens, the run watch (a promotion
whose workflow run never brought its gate step does not wait silently), and freeze window transitions.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from stella.contracts import workflow as w
from stella.contracts.envelope import Message
from stella.kit.faults import is_transient
from stella.kit.outbox import add_events
from stella.promotion import freeze, repo
from stella.promotion.domain.status import PromotionStatus
from stella.promotion.handlers.environments import EnvironmentHandlers
from stella.promotion.handlers.gating import GateHandlers
from stella.promotion.handlers.messages import Origin, run_check_delay, start_run
from stella.promotion.handlers.windows import next_transition_after
from stella.promotion.store import PostgresStore

log = logging.getLogger(__name__)


class TimerHandlers(GateHandlers, EnvironmentHandlers):
    async def next_hold(self) -> datetime | None:
        """When the next held promotion is due for re-evaluation."""
        async with self._pool().acquire() as conn:
            return await repo.next_hold(conn)

    async def run_holds(self, now: datetime) -> None:
        """Re-evaluate the held promotions whose window opened, each in its own transaction."""
        async with self._pool().acquire() as conn:
            due = await repo.due_holds(conn, now, self.timer_batch_size)
        for tenant, promotion_id in due:
            try:
                async with self._pool().acquire() as conn, conn.transaction():
                    stored = await repo.lock_due_hold(conn, tenant, promotion_id, now)
                    if stored is None:
                        continue
                    if stored.promotion.status is PromotionStatus.APPROVED and stored.deploy_step is not None:
                        # Its deployment waited for a time window: look again now that it is due.
                        origin = Origin(stored.promotion.tenant_id, stored.correlation_id)
                        await add_events(conn, await self._resume_queued(PostgresStore(conn), stored, origin))
                        continue
                    if stored.promotion.status is not PromotionStatus.PENDING_GATE:
                        stored.promotion.next_open = None
                        await repo.update_promotion(conn, stored)
                        continue
                    await self._evaluate(
                        conn, stored, now, "hold", Origin(stored.promotion.tenant_id, stored.correlation_id)
                    )
            except Exception as exc:
                if is_transient(exc):
                    raise  # the database is away: the timer looks again shortly, at every due promotion
                # One promotion that cannot be evaluated must not stop the others; it is tried again later.
                log.exception("re-evaluating a held promotion failed", extra={"promotion_id": str(promotion_id)})
                async with self._pool().acquire() as conn:
                    await repo.postpone_hold(conn, tenant, promotion_id, self.timer_retry, now)

    async def next_run_check(self) -> datetime | None:
        """When the run watch must next look at a promotion."""
        async with self._pool().acquire() as conn:
            return await repo.next_run_check(conn)

    async def run_run_checks(self, now: datetime) -> None:
        """Look at each promotion whose run has not brought its gate step in time, in its own transaction.

        The run's start is sent again (a lost or dead-lettered ``StartRun``); the workflow starts the run
        once whatever the number of copies. After ``run_start_attempts`` resends, each after twice the wait
        of the one before, the promotion is rejected with ``PROM_RUN_NOT_STARTED``.
        """
        async with self._pool().acquire() as conn:
            due = await repo.due_run_checks(conn, now, self.timer_batch_size)
        for tenant, promotion_id in due:
            try:
                async with self._pool().acquire() as conn, conn.transaction():
                    stored = await repo.lock_due_run_check(conn, tenant, promotion_id, now)
                    if stored is not None:
                        await self._check_run(conn, stored, now)
            except Exception as exc:
                if is_transient(exc):
                    raise  # the database is away: the timer tries again shortly, for every promotion
                log.exception("checking a promotion's run failed", extra={"promotion_id": str(promotion_id)})
                async with self._pool().acquire() as conn:
                    await repo.postpone_run_check(conn, tenant, promotion_id, now + self.timer_retry)

    async def _check_run(self, conn: asyncpg.Connection, stored: repo.StoredPromotion, now: datetime) -> None:
        p = stored.promotion
        origin = Origin(p.tenant_id, stored.correlation_id)
        if not stored.awaits_run:
            await repo.update_promotion(conn, stored)  # clears the watch
            return
        if stored.run_checks < self.run_start_attempts:
            stored.run_checks += 1
            stored.run_check_at = now + run_check_delay(self.run_start_timeout, stored.run_checks)
            p.status_message = (
                f"waiting for workflow run {stored.workflow_run_id} to start; its start was sent again "
                f"({stored.run_checks} of {self.run_start_attempts})"
            )
            await repo.update_promotion(conn, stored)
            log.warning(
                "a promotion's workflow run has not started; sending its start again",
                extra={"promotion_id": str(p.id), "run_id": str(stored.workflow_run_id), "checks": stored.run_checks},
            )
            await add_events(conn, [(w.START_RUN, start_run(origin, stored))])
            return
        waited = now - p.requested_at
        events = p.abandon_unstarted_run(waited=timedelta(seconds=int(waited.total_seconds())), now=now)
        stored.run_check_at = None
        await repo.update_promotion(conn, stored)
        log.error(
            "a promotion's workflow run never started; rejecting it",
            extra={"promotion_id": str(p.id), "run_id": str(stored.workflow_run_id)},
        )
        cancel = origin.make(w.CancelRun, run_id=stored.workflow_run_id, reason=p.status_message)
        await add_events(conn, [*self._changed(origin, repo.promotion_view(stored), events), (w.CANCEL_RUN, cancel)])

    async def next_freeze_transition(self) -> datetime | None:
        """When the next window of any environment opens or closes."""
        async with self._pool().acquire() as conn:
            return await repo.next_window_transition(conn)

    async def run_freeze_transitions(self, now: datetime) -> None:
        """Emit the transitions of every due window since its watermark, and move the watermark to ``now``."""
        async with self._pool().acquire() as conn, conn.transaction():
            due = await repo.due_windows(conn, now, self.timer_batch_size)
            messages: list[tuple[str, Message]] = []
            advanced: list[tuple[UUID, UUID, datetime | None]] = []
            for stored in due:
                since = max(stored.transitions_seen_until, now - freeze.SEARCH_HORIZON)
                if since < now:
                    origin = Origin(stored.tenant_id, stored.view.id)
                    for transition in freeze.window_transitions([stored.window], since, now):
                        messages.append(
                            self._freeze_event(
                                origin,
                                stored.view.environment_id,
                                stored.window,
                                transition.transition,
                                transition.dedup_key,
                                transition.at,
                            )
                        )
                advanced.append((stored.tenant_id, stored.view.id, next_transition_after(stored.window, now)))
            await repo.advance_windows(conn, now, advanced)
            await add_events(conn, messages)
