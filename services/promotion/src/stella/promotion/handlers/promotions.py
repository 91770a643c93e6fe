"""Requesting and cancelling promotions, and reading them."""

from __future__ import annotations

from stella.contracts import approval as a
from stella.contracts import promotion as c
from stella.contracts import workflow as w
from stella.contracts.envelope import Reply
from stella.contracts.release import GET_RELEASE, GetRelease, ReleaseView
from stella.kit.asking import ask
from stella.kit.errors import ServiceError, error_detail
from stella.promotion import repo
from stella.promotion.domain.errors import EnvironmentNotFound, NotFound
from stella.promotion.domain.release import ReleaseSnapshot, ReleaseStatus
from stella.promotion.domain.request import request_promotion
from stella.promotion.handlers.decisions import required_approvals_for
from stella.promotion.handlers.errors import ReleaseServiceUnavailable
from stella.promotion.handlers.gating import GateHandlers
from stella.promotion.handlers.messages import Origin, page_reply, start_run
from stella.promotion.store import PromotionStore


class PromotionHandlers(GateHandlers):
    async def _fetch_release(self, cmd: c.RequestPromotion) -> ReleaseView:
        """Ask the release service for the release (before any transaction opens)."""
        return await ask(
            self._client(),
            GET_RELEASE,
            cmd.caused(GetRelease, release_id=cmd.release_id),
            ReleaseView,
            timeout=self.release_query_timeout_s,
            unavailable=lambda error: ReleaseServiceUnavailable(
                f"the release service could not be asked for release {cmd.release_id} ({error.detail}); "
                "nothing was stored, try again"
            ),
        )

    async def request_promotion(self, cmd: c.RequestPromotion) -> Reply:
        """Request a promotion of a ready release into an environment and start its workflow run."""
        if (seen := await self.uow.seen(cmd, only_reads_before_run=True)) is not None:
            return seen
        try:
            release = await self._fetch_release(cmd)
        except ServiceError as exc:
            return Reply.failure(error_detail(exc))

        async def execute(store: PromotionStore) -> object:
            now = self.clock()
            await store.lock_release(cmd.tenant_id, release.id)
            views = await store.all_environments(cmd.tenant_id)
            environments = {v.id: repo.environment_of(v, cmd.tenant_id) for v in views}
            target = environments.get(cmd.target_environment_id)
            if target is None:
                raise EnvironmentNotFound(f"environment {cmd.target_environment_id} does not exist")
            history = await store.promotions_of_release(cmd.tenant_id, release.id)
            promotion, events = request_promotion(
                promotion_id=self.new_id(),
                release=ReleaseSnapshot(
                    id=release.id,
                    tenant_id=cmd.tenant_id,
                    name=release.name,
                    status=ReleaseStatus(release.status.value),
                ),
                target_environment=target,
                environments=list(environments.values()),
                release_promotions=[s.promotion for s in history],
                requested_by=str(cmd.actor_id) if cmd.actor_id is not None else "",
                now=now,
                source_environment_id=cmd.source_environment_id,
            )
            # An approval gate may ask for more approvals than the environment; the run's approval step must
            # collect that many, so the promotion knows the count from the start.
            promotion.required_approvals = required_approvals_for(target)
            policy = next(v.promotion_policy for v in views if v.id == target.id)
            stored = repo.StoredPromotion(
                promotion=promotion,
                release_name=release.name,
                release_components=[component.model_dump(mode="json") for component in release.components],
                target_environment_name=target.name,
                reason=cmd.reason,
                approver_groups=list(policy.get("approver_groups", [])),
                workflow_template=policy.get("workflow_template") or self.default_workflow_template,
                workflow_run_id=self.new_id(),
                gate_step=None,
                freeze_override=None,
                correlation_id=cmd.correlation_id,
                requested_by_name=cmd.actor_name,
                requested_by_display_name=cmd.actor_display_name,
            )
            stored.run_check_at = now + self.run_start_timeout
            if promotion.status_message is None:
                promotion.status_message = (
                    f"waiting for workflow run {stored.workflow_run_id} ({stored.workflow_template}) "
                    "to evaluate the gates"
                )
            await store.insert_promotion_at_commit(stored)
            view = repo.promotion_view(stored)
            origin = Origin.of(cmd)
            start = start_run(origin, stored, actor_id=cmd.actor_id)
            await store.add_events([*self._changed(origin, view, events), (w.START_RUN, start)])
            return view.model_dump(mode="json")

        return await self.uow.run(cmd, execute)

    async def cancel_promotion(self, cmd: c.CancelPromotion) -> Reply:
        """Cancel a promotion that has not started deploying; its run and approval request close with it.

        The rule is the domain's (:meth:`Promotion.cancel`): any non-terminal status before
        ``deploying`` (pending_gate, pending_approval, approved) may be cancelled. A recorded approval stays
        recorded (decision and evidence); the cancel is a later decision of its own.
        """

        async def execute(store: PromotionStore) -> object:
            stored = await self._locked(store, cmd.tenant_id, cmd.promotion_id)
            promotion = stored.promotion
            now = self.clock()
            held_slot = promotion.holds_deploy_slot
            events = promotion.cancel(
                cancelled_by=str(cmd.actor_id) if cmd.actor_id is not None else "system",
                reason=cmd.reason or "cancelled",
                now=now,
            )
            stored.deploy_step = None
            await store.update_promotion(stored)
            view = repo.promotion_view(stored)
            origin = Origin.of(cmd)
            released = await self._release_next(store, promotion, origin) if held_slot else []
            await store.add_events(
                [
                    *self._changed(origin, view, events),
                    *released,
                    (
                        w.CANCEL_RUN,
                        origin.make(
                            w.CancelRun, actor_id=cmd.actor_id, run_id=stored.workflow_run_id, reason=cmd.reason
                        ),
                    ),
                    (
                        a.CANCEL_APPROVALS,
                        origin.make(a.CancelApprovals, actor_id=cmd.actor_id, promotion_id=promotion.id),
                    ),
                ],
            )
            return view.model_dump(mode="json")

        return await self.uow.run(cmd, execute)

    async def get_promotion(self, q: c.GetPromotion) -> Reply:
        """One promotion with its latest decision record."""
        async with self.uow.reading() as store:
            stored = await store.get_promotion(q.tenant_id, q.promotion_id)
        if stored is None:
            raise NotFound(f"promotion {q.promotion_id} does not exist")
        return Reply.success(repo.promotion_view(stored).model_dump(mode="json"))

    async def list_promotions(self, q: c.ListPromotions) -> Reply:
        """A page of promotions, newest first."""
        async with self.uow.reading() as store:
            items, token = await store.list_promotions(
                q.tenant_id,
                q.status.value if q.status else None,
                q.release_id,
                q.environment_id,
                q.page.page_size,
                q.page.page_token,
            )
        return page_reply(items, token)
