"""What the promotion use cases need from storage, as a protocol, and its Postgres implementation.

A :class:`PromotionUnitOfWork` runs one command's change exactly once (the inbox) and gives its ``execute`` a
:class:`PromotionStore` bound to that transaction; ``reading`` gives one for queries. The Postgres
implementation delegates to :mod:`stella.promotion.repo` and :class:`~stella.kit.broker.CommandProcessor`,
so the handlers' orchestration can also run against an in-memory store (the unit tests' fake).

Covered: the ``promotions`` use case (request, cancel, read) and the deploy-slot hand-over that a cancel of
a cleared promotion performs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import asyncpg

from stella.contracts.envelope import Command, Message, Reply
from stella.contracts.promotion import EnvironmentView, PromotionView
from stella.kit.broker import CommandProcessor
from stella.kit.outbox import add_events
from stella.promotion import repo


class PromotionStore(Protocol):
    """Storage of promotions within one transaction; every read and write is scoped to a tenant."""

    async def lock_release(self, tenant: UUID, release_id: UUID) -> None:
        """Serialise promotion requests of one release until the transaction ends."""

    async def all_environments(self, tenant: UUID) -> list[EnvironmentView]:
        """Every environment of the tenant, in promotion order."""
        ...

    async def promotions_of_release(self, tenant: UUID, release_id: UUID) -> list[repo.StoredPromotion]:
        """Every promotion of a release, in any environment."""
        ...

    async def get_promotion(self, tenant: UUID, pid: UUID, *, lock: bool = False) -> repo.StoredPromotion | None:
        """One promotion (a fresh copy: changes are kept only by :meth:`update_promotion`)."""
        ...

    async def insert_promotion_at_commit(self, stored: repo.StoredPromotion) -> None:
        """Store a new promotion as the transaction commits (nothing in the transaction reads it after)."""

    async def update_promotion(self, stored: repo.StoredPromotion) -> None:
        """Write a promotion's mutable fields."""

    async def update_promotion_at_commit(self, stored: repo.StoredPromotion) -> None:
        """Write a promotion's mutable fields as the transaction commits (its last write of the promotion:
        nothing in the transaction reads it after)."""

    async def list_promotions(
        self,
        tenant: UUID,
        status: str | None,
        release_id: UUID | None,
        environment_id: UUID | None,
        page_size: int,
        page_token: str | None,
    ) -> tuple[list[PromotionView], str | None]:
        """A page of promotions, newest first."""
        ...

    async def lock_deploy_queue(self, tenant: UUID, environment_id: UUID) -> None:
        """Serialise changes to one environment's deployment queue until the transaction ends."""

    async def deploy_queue_front(self, tenant: UUID, environment_id: UUID) -> list[repo.StoredPromotion]:
        """Who holds the environment's deployment slot, and the first approved promotion waiting in line."""
        ...

    async def windows_of_environment(self, tenant: UUID, eid: UUID) -> list[repo.StoredWindow]:
        """The environment's freeze and deployment windows."""
        ...

    async def add_events(self, messages: Sequence[tuple[str, Message]]) -> None:
        """Write messages to the outbox, published after the transaction commits."""


class PromotionUnitOfWork(Protocol):
    """Runs a command's change once, in one transaction, and remembers its reply."""

    async def seen(self, command: Command, *, only_reads_before_run: bool = False) -> Reply | None:
        """The stored reply of an already handled command, or None (see
        :meth:`stella.kit.broker.CommandProcessor.seen` for ``only_reads_before_run``)."""
        ...

    async def run(self, command: Command, execute: Callable[[PromotionStore], Awaitable[object]]) -> Reply:
        """Handle ``command`` with ``execute(store)`` (its return value is the reply data); a repeat returns the
        first reply, a business error changes nothing and is the reply."""
        ...

    def reading(self) -> AbstractAsyncContextManager[PromotionStore]:
        """A store for queries (no transaction, no inbox)."""
        ...


@dataclass(frozen=True, slots=True)
class PostgresStore:
    """:class:`PromotionStore` on one connection (inside the caller's transaction)."""

    conn: asyncpg.Connection

    async def lock_release(self, tenant: UUID, release_id: UUID) -> None:
        await repo.lock_release(self.conn, tenant, release_id)

    async def all_environments(self, tenant: UUID) -> list[EnvironmentView]:
        return await repo.all_environments(self.conn, tenant)

    async def promotions_of_release(self, tenant: UUID, release_id: UUID) -> list[repo.StoredPromotion]:
        return await repo.promotions_of_release(self.conn, tenant, release_id)

    async def get_promotion(self, tenant: UUID, pid: UUID, *, lock: bool = False) -> repo.StoredPromotion | None:
        return await repo.get_promotion(self.conn, tenant, pid, lock=lock)

    async def insert_promotion_at_commit(self, stored: repo.StoredPromotion) -> None:
        await repo.insert_promotion_at_commit(self.conn, stored)

    async def update_promotion(self, stored: repo.StoredPromotion) -> None:
        await repo.update_promotion(self.conn, stored)

    async def update_promotion_at_commit(self, stored: repo.StoredPromotion) -> None:
        await repo.update_promotion_at_commit(self.conn, stored)

    async def list_promotions(
        self,
        tenant: UUID,
        status: str | None,
        release_id: UUID | None,
        environment_id: UUID | None,
        page_size: int,
        page_token: str | None,
    ) -> tuple[list[PromotionView], str | None]:
        return await repo.list_promotions(self.conn, tenant, status, release_id, environment_id, page_size, page_token)

    async def lock_deploy_queue(self, tenant: UUID, environment_id: UUID) -> None:
        await repo.lock_deploy_queue(self.conn, tenant, environment_id)

    async def deploy_queue_front(self, tenant: UUID, environment_id: UUID) -> list[repo.StoredPromotion]:
        return await repo.deploy_queue_front(self.conn, tenant, environment_id)

    async def windows_of_environment(self, tenant: UUID, eid: UUID) -> list[repo.StoredWindow]:
        return await repo.windows_of_environment(self.conn, tenant, eid)

    async def add_events(self, messages: Sequence[tuple[str, Message]]) -> None:
        await add_events(self.conn, messages)


class PostgresUnitOfWork:
    """:class:`PromotionUnitOfWork` on the service's pool and inbox."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], commands: CommandProcessor) -> None:
        self._pool = pool
        self._commands = commands

    async def seen(self, command: Command, *, only_reads_before_run: bool = False) -> Reply | None:
        return await self._commands.seen(command, only_reads_before_run=only_reads_before_run)

    async def run(self, command: Command, execute: Callable[[PromotionStore], Awaitable[object]]) -> Reply:
        return await self._commands.run(command, lambda conn: execute(PostgresStore(conn)))

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[PromotionStore]:
        async with self._pool().acquire() as conn:
            yield PostgresStore(conn)

    def reading(self) -> AbstractAsyncContextManager[PromotionStore]:
        return self._reading()
