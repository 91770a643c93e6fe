"""An in-memory :class:`~stella.promotion.store.PromotionUnitOfWork` for unit tests of the handlers' orchestration.

It keeps the promises the Postgres one keeps: a command's change happens once (a repeated ``message_id`` gets
the first reply back), a business error undoes everything the command wrote and is the stored reply, a 5xx
reply is not stored (a repeat runs again), a fault undoes everything and propagates. Loads return copies, so
a change the handler does not save is not kept.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from uuid import UUID

from stella.contracts.envelope import Command, Message, Reply
from stella.contracts.promotion import EnvironmentView, PromotionView
from stella.kit.errors import error_detail, is_reportable
from stella.promotion import repo
from stella.promotion.domain.promotion import deploy_order
from stella.promotion.domain.status import PromotionStatus
from stella.promotion.store import PromotionStore


@dataclass
class FakeState:
    """Everything the fake stores; the unit of work snapshots it per command."""

    environments: dict[UUID, list[EnvironmentView]] = field(default_factory=dict)
    promotions: dict[tuple[UUID, UUID], repo.StoredPromotion] = field(default_factory=dict)
    windows: dict[tuple[UUID, UUID], list[repo.StoredWindow]] = field(default_factory=dict)
    outbox: list[tuple[str, Message]] = field(default_factory=list)


class FakeStore:
    """:class:`PromotionStore` on a :class:`FakeState` (locks are no-ops: one command runs at a time)."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    async def lock_release(self, tenant: UUID, release_id: UUID) -> None:
        return None

    async def all_environments(self, tenant: UUID) -> list[EnvironmentView]:
        views = self.state.environments.get(tenant, [])
        return sorted((v.model_copy(deep=True) for v in views), key=lambda v: (v.order_index, v.name))

    async def promotions_of_release(self, tenant: UUID, release_id: UUID) -> list[repo.StoredPromotion]:
        return [
            copy.deepcopy(s)
            for (t, _), s in self.state.promotions.items()
            if t == tenant and s.promotion.release_id == release_id
        ]

    async def get_promotion(self, tenant: UUID, pid: UUID, *, lock: bool = False) -> repo.StoredPromotion | None:
        stored = self.state.promotions.get((tenant, pid))
        return copy.deepcopy(stored) if stored is not None else None

    async def insert_promotion_at_commit(self, stored: repo.StoredPromotion) -> None:
        key = (stored.promotion.tenant_id, stored.promotion.id)
        if key in self.state.promotions:
            raise AssertionError(f"promotion {stored.promotion.id} inserted twice")
        self.state.promotions[key] = copy.deepcopy(stored)

    async def update_promotion(self, stored: repo.StoredPromotion) -> None:
        key = (stored.promotion.tenant_id, stored.promotion.id)
        if key not in self.state.promotions:
            raise AssertionError(f"promotion {stored.promotion.id} updated before it was inserted")
        self.state.promotions[key] = copy.deepcopy(stored)

    async def update_promotion_at_commit(self, stored: repo.StoredPromotion) -> None:
        await self.update_promotion(stored)

    async def list_promotions(
        self,
        tenant: UUID,
        status: str | None,
        release_id: UUID | None,
        environment_id: UUID | None,
        page_size: int,
        page_token: str | None,
    ) -> tuple[list[PromotionView], str | None]:
        if page_token is not None:
            raise NotImplementedError("the fake serves first pages only")
        matching = [
            s
            for (t, _), s in self.state.promotions.items()
            if t == tenant
            and (status is None or s.promotion.status.value == status)
            and (release_id is None or s.promotion.release_id == release_id)
            and (environment_id is None or s.promotion.target_environment_id == environment_id)
        ]
        matching.sort(key=lambda s: (s.promotion.requested_at, s.promotion.id), reverse=True)
        return [repo.promotion_view(s) for s in matching[:page_size]], None

    async def lock_deploy_queue(self, tenant: UUID, environment_id: UUID) -> None:
        return None

    async def deploy_queue_front(self, tenant: UUID, environment_id: UUID) -> list[repo.StoredPromotion]:
        mine = [
            copy.deepcopy(s)
            for (t, _), s in self.state.promotions.items()
            if t == tenant and s.promotion.target_environment_id == environment_id
        ]
        holders = [s for s in mine if s.promotion.holds_deploy_slot]
        waiting = [
            s
            for s in mine
            if s.promotion.status is PromotionStatus.APPROVED
            and s.promotion.cleared_at is None
            and s.deploy_step is not None
        ]
        waiting.sort(key=lambda s: deploy_order(s.promotion))
        return holders + waiting[:1]

    async def windows_of_environment(self, tenant: UUID, eid: UUID) -> list[repo.StoredWindow]:
        return copy.deepcopy(self.state.windows.get((tenant, eid), []))

    async def add_events(self, messages: Sequence[tuple[str, Message]]) -> None:
        known = {m.message_id for _, m in self.state.outbox}
        self.state.outbox.extend((subject, m) for subject, m in messages if m.message_id not in known)


class FakeUnitOfWork:
    """:class:`~stella.promotion.store.PromotionUnitOfWork` in memory, with the inbox's exactly-once rules."""

    def __init__(self, state: FakeState | None = None) -> None:
        self.state = state or FakeState()
        self.replies: dict[UUID, Reply] = {}
        self.executed = 0
        """How many times a command's ``execute`` ran (a repeat that is answered from the inbox does not)."""

    async def seen(self, command: Command, *, only_reads_before_run: bool = False) -> Reply | None:
        return self.replies.get(command.message_id)

    async def run(self, command: Command, execute: Callable[[PromotionStore], Awaitable[object]]) -> Reply:
        if (stored := self.replies.get(command.message_id)) is not None:
            return stored
        before = copy.deepcopy(self.state)
        self.executed += 1
        try:
            reply = Reply.success(await execute(FakeStore(self.state)))
        except Exception as exc:
            self._restore(before)
            if not is_reportable(exc):
                raise
            reply = Reply.failure(error_detail(exc))
            if reply.error is not None and reply.error.status >= 500:
                return reply
        self.replies[command.message_id] = reply
        return reply

    def _restore(self, before: FakeState) -> None:
        self.state.environments = before.environments
        self.state.promotions = before.promotions
        self.state.windows = before.windows
        self.state.outbox = before.outbox

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[PromotionStore]:
        yield FakeStore(self.state)

    def reading(self) -> AbstractAsyncContextManager[PromotionStore]:
        return self._reading()
