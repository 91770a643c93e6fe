"""The ``promotions`` use case's orchestration (request, cancel, read) on the in-memory unit of work.

The handlers run as in the service, with the storage swapped for :class:`FakeUnitOfWork` and the release
service's answer given by the test; no Postgres, no NATS (the pool refuses to be used).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from uuid import UUID

import asyncpg
import pytest

from stella.contracts import approval as a
from stella.contracts import promotion as c
from stella.contracts import workflow as w
from stella.contracts.envelope import Reply
from stella.contracts.release import ReleaseComponent, ReleaseStatus, ReleaseView
from stella.kit.broker import CommandProcessor, ServiceClient
from stella.promotion import repo
from stella.promotion.domain.status import PromotionStatus
from stella.promotion.handlers import Handlers

from .fakes import FakeUnitOfWork

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
TENANT = UUID(int=1)
ALICE = UUID(int=0xA11CE)
RELEASE = UUID(int=0x5E1)
DEV = UUID(int=0xD)
PROD = UUID(int=0xF)


def _no_pool() -> asyncpg.Pool:
    raise AssertionError("the promotions use case reached Postgres")


def _no_client() -> ServiceClient:
    raise AssertionError("the release service was asked directly")


class _Handlers(Handlers):
    """The service's handlers with the release service's answer given by the test."""

    def __init__(self, uow: FakeUnitOfWork, release: ReleaseView) -> None:
        ids = count(0x1000)
        super().__init__(
            _no_pool,
            CommandProcessor(_no_pool, "promotion"),
            _no_client,
            uow=uow,
            clock=lambda: T0,
            new_id=lambda: UUID(int=next(ids)),
        )
        self.release = release
        self.release_fetches = 0

    async def _fetch_release(self, cmd: c.RequestPromotion) -> ReleaseView:
        self.release_fetches += 1
        return self.release


def _environment(eid: UUID, name: str, order_index: int) -> c.EnvironmentView:
    return c.EnvironmentView(
        id=eid,
        name=name,
        display_name=name,
        order_index=order_index,
        required_approvals=0,
        require_sod=False,
        config={},
        promotion_policy={},
        created_at=T0,
        updated_at=T0,
    )


def _release(status: ReleaseStatus = ReleaseStatus.READY) -> ReleaseView:
    return ReleaseView(
        id=RELEASE,
        name="shop",
        display_name="shop",
        status=status,
        components=[
            ReleaseComponent(
                component_id=UUID(int=0xC),
                name="web",
                image_repository="registry.example.com/shop/web",
                digest="sha256:" + "a" * 64,
                tag="2.0.0",
            )
        ],
        source_ref={},
        created_by=ALICE,
        created_at=T0,
        updated_at=T0,
        ready_at=T0,
        deprecated_at=None,
        deprecation_reason=None,
    )


@pytest.fixture
def uow() -> FakeUnitOfWork:
    fake = FakeUnitOfWork()
    fake.state.environments[TENANT] = [_environment(DEV, "dev", 0), _environment(PROD, "prod", 1)]
    return fake


def _request(target: UUID = DEV) -> c.RequestPromotion:
    return c.RequestPromotion(
        tenant_id=TENANT,
        correlation_id=UUID(int=0xC0),
        actor_id=ALICE,
        release_id=RELEASE,
        target_environment_id=target,
        reason="weekly",
    )


def _cancel(promotion_id: UUID) -> c.CancelPromotion:
    return c.CancelPromotion(
        tenant_id=TENANT, correlation_id=UUID(int=0xC1), actor_id=ALICE, promotion_id=promotion_id, reason="stop"
    )


def _error(reply: Reply) -> tuple[int, str]:
    assert reply.error is not None, reply
    return reply.error.status, reply.error.code


async def _requested(handlers: _Handlers) -> UUID:
    reply = await handlers.request_promotion(_request())
    assert reply.ok, reply
    assert isinstance(reply.data, dict)
    return UUID(reply.data["id"])


def _stored(uow: FakeUnitOfWork, pid: UUID) -> repo.StoredPromotion:
    return uow.state.promotions[(TENANT, pid)]


class TestRequest:
    async def test_creates_the_promotion_with_its_requested_event_and_the_run_start(self, uow: FakeUnitOfWork) -> None:
        handlers = _Handlers(uow, _release())
        pid = await _requested(handlers)

        stored = _stored(uow, pid)
        assert stored.promotion.status is PromotionStatus.PENDING_GATE
        assert stored.promotion.target_environment_id == DEV
        assert stored.release_name == "shop"
        assert stored.run_check_at == T0 + handlers.run_start_timeout
        assert [subject for subject, _ in uow.state.outbox] == [c.PROMOTION_REQUESTED, w.START_RUN]
        requested, start = (message for _, message in uow.state.outbox)
        assert isinstance(requested, c.PromotionChanged) and requested.promotion.id == pid
        assert isinstance(start, w.StartRun)
        assert (start.run_id, start.subject_id, start.template_name) == (
            stored.workflow_run_id,
            pid,
            stored.workflow_template,
        )

        read = await handlers.get_promotion(
            c.GetPromotion(tenant_id=TENANT, correlation_id=UUID(int=2), promotion_id=pid)
        )
        assert read.ok and isinstance(read.data, dict) and read.data["status"] == "pending_gate"
        listed = await handlers.list_promotions(c.ListPromotions(tenant_id=TENANT, correlation_id=UUID(int=3)))
        assert listed.ok and isinstance(listed.data, dict)
        assert [item["id"] for item in listed.data["items"]] == [str(pid)]

    async def test_a_repeated_command_has_one_effect_and_the_first_reply(self, uow: FakeUnitOfWork) -> None:
        handlers = _Handlers(uow, _release())
        command = _request()
        first = await handlers.request_promotion(command)
        again = await handlers.request_promotion(command)

        assert first.ok and again == first
        assert len(uow.state.promotions) == 1
        assert len(uow.state.outbox) == 2
        assert uow.executed == 1
        assert handlers.release_fetches == 1, "a repeat is answered before the release service is asked"

    async def test_a_new_command_for_the_same_release_and_environment_is_refused(self, uow: FakeUnitOfWork) -> None:
        handlers = _Handlers(uow, _release())
        await _requested(handlers)
        before = (dict(uow.state.promotions), list(uow.state.outbox))

        reply = await handlers.request_promotion(_request())

        assert _error(reply) == (409, "PROM_ALREADY_ACTIVE")
        assert (dict(uow.state.promotions), list(uow.state.outbox)) == before

    @pytest.mark.parametrize(
        ("release_status", "target", "expected"),
        [
            (ReleaseStatus.DRAFT, DEV, (422, "PROM_RELEASE_NOT_READY")),
            (ReleaseStatus.READY, UUID(int=0xBAD), (404, "ENV_NOT_FOUND")),
            (ReleaseStatus.READY, PROD, (422, "PROM_ORDER_VIOLATION")),
        ],
    )
    async def test_a_refused_request_changes_nothing_and_its_refusal_is_the_repeat_reply(
        self, uow: FakeUnitOfWork, release_status: ReleaseStatus, target: UUID, expected: tuple[int, str]
    ) -> None:
        handlers = _Handlers(uow, _release(release_status))
        command = _request(target)

        reply = await handlers.request_promotion(command)

        assert _error(reply) == expected
        assert uow.state.promotions == {}
        assert uow.state.outbox == []
        assert await handlers.request_promotion(command) == reply
        assert uow.executed == 1


class TestCancel:
    @pytest.mark.parametrize("status", [PromotionStatus.PENDING_GATE, PromotionStatus.PENDING_APPROVAL])
    async def test_cancels_a_waiting_promotion_with_its_run_and_approvals(
        self, uow: FakeUnitOfWork, status: PromotionStatus
    ) -> None:
        handlers = _Handlers(uow, _release())
        pid = await _requested(handlers)
        _stored(uow, pid).promotion.status = status
        uow.state.outbox.clear()

        reply = await handlers.cancel_promotion(_cancel(pid))

        assert reply.ok, reply
        stored = _stored(uow, pid)
        assert stored.promotion.status is PromotionStatus.CANCELLED
        assert stored.promotion.cancelled_by == str(ALICE)
        assert stored.promotion.finished_at == T0
        assert [subject for subject, _ in uow.state.outbox] == [
            c.PROMOTION_CANCELLED,
            w.CANCEL_RUN,
            a.CANCEL_APPROVALS,
        ]
        cancel_run = uow.state.outbox[1][1]
        assert isinstance(cancel_run, w.CancelRun) and cancel_run.run_id == stored.workflow_run_id

    async def test_an_approved_promotion_may_be_cancelled(self, uow: FakeUnitOfWork) -> None:
        """The one cancel rule (``Promotion.cancel``): approved, not yet deploying, may be cancelled."""
        handlers = _Handlers(uow, _release())
        pid = await _requested(handlers)
        promotion = _stored(uow, pid).promotion
        promotion.status, promotion.approved_at = PromotionStatus.APPROVED, T0

        reply = await handlers.cancel_promotion(_cancel(pid))

        assert reply.ok, reply
        assert _stored(uow, pid).promotion.status is PromotionStatus.CANCELLED

    async def test_cancelling_a_cleared_promotion_lets_the_next_queued_one_deploy(self, uow: FakeUnitOfWork) -> None:
        handlers = _Handlers(uow, _release())
        first = await _requested(handlers)
        cleared = _stored(uow, first).promotion
        cleared.status, cleared.approved_at, cleared.cleared_at = PromotionStatus.APPROVED, T0, T0
        # A second release's promotion into the same environment, approved later, waits with its held step.
        handlers.release = _release().model_copy(update={"id": UUID(int=0x5E2)})
        second_reply = await handlers.request_promotion(
            _request().model_copy(update={"release_id": UUID(int=0x5E2), "message_id": UUID(int=0x2222)})
        )
        assert second_reply.ok and isinstance(second_reply.data, dict)
        second = UUID(second_reply.data["id"])
        queued = _stored(uow, second)
        queued.promotion.status, queued.promotion.approved_at = PromotionStatus.APPROVED, T0 + timedelta(minutes=1)
        step = w.StepRef(run_id=queued.workflow_run_id, node_id="approve", attempt=1)
        queued.deploy_step = {**step.model_dump(mode="json"), "outputs": {"approved": True}}
        uow.state.outbox.clear()

        reply = await handlers.cancel_promotion(_cancel(first))

        assert reply.ok, reply
        assert _stored(uow, first).promotion.status is PromotionStatus.CANCELLED
        now_next = _stored(uow, second)
        assert now_next.promotion.cleared_at == T0
        assert now_next.deploy_step is None
        subjects = [subject for subject, _ in uow.state.outbox]
        assert subjects == [c.PROMOTION_CANCELLED, w.COMPLETE_STEP, w.CANCEL_RUN, a.CANCEL_APPROVALS]
        completion = uow.state.outbox[1][1]
        assert isinstance(completion, w.CompleteStep) and completion.run_id == queued.workflow_run_id

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (PromotionStatus.DEPLOYING, (409, "PROM_CANCEL_NOT_ALLOWED")),
            (PromotionStatus.CANCELLED, (409, "PROM_ALREADY_TERMINAL")),
            (PromotionStatus.REJECTED, (409, "PROM_ALREADY_TERMINAL")),
        ],
    )
    async def test_a_refused_cancel_changes_nothing(
        self, uow: FakeUnitOfWork, status: PromotionStatus, expected: tuple[int, str]
    ) -> None:
        handlers = _Handlers(uow, _release())
        pid = await _requested(handlers)
        _stored(uow, pid).promotion.status = status
        before = repo.promotion_view(_stored(uow, pid))
        outbox = list(uow.state.outbox)

        reply = await handlers.cancel_promotion(_cancel(pid))

        assert _error(reply) == expected
        assert repo.promotion_view(_stored(uow, pid)) == before
        assert uow.state.outbox == outbox

    async def test_an_unknown_promotion_is_not_found(self, uow: FakeUnitOfWork) -> None:
        reply = await _Handlers(uow, _release()).cancel_promotion(_cancel(UUID(int=0xDEAD)))

        assert _error(reply) == (404, "PROM_NOT_FOUND")
        assert uow.state.outbox == []

    async def test_a_repeated_cancel_has_one_effect_and_a_new_one_is_refused(self, uow: FakeUnitOfWork) -> None:
        handlers = _Handlers(uow, _release())
        pid = await _requested(handlers)
        command = _cancel(pid)

        first = await handlers.cancel_promotion(command)
        outbox = list(uow.state.outbox)
        again = await handlers.cancel_promotion(command)
        later = await handlers.cancel_promotion(_cancel(pid))

        assert first.ok and again == first
        assert uow.state.outbox == outbox
        assert _error(later) == (409, "PROM_ALREADY_TERMINAL")
