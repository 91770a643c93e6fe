"""An approval service running in-process on real Postgres and NATS, with a clock the test moves."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio
from nats.aio.client import Client

from stella.approval.app import MIGRATIONS, ApprovalApp, create_app
from stella.approval.settings import Settings
from stella.contracts.streams import EVENTS
from stella.contracts.workflow import ExecuteStep
from stella.kit.naming import Names
from stella.testing.services import TenantCaller, service_client


@dataclass
class Clock:
    """A clock that stands still until the test moves it."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class Caller(TenantCaller):
    """Talks to the service as one tenant, exactly as the gateway and the workflow do."""

    def approval_step(
        self,
        promotion_id: uuid.UUID,
        *,
        requested_by: uuid.UUID,
        environment_id: uuid.UUID,
        required: int = 2,
        require_sod: bool = True,
        groups: list[str] | None = None,
        run_id: uuid.UUID | None = None,
        attempt: int = 1,
    ) -> ExecuteStep:
        """The ``ExecuteStep`` the workflow sends for standard-promotion's approval node.

        Its inputs are the workflow's resolved step context (``stella.workflow.domain.scheduler.resolve_step_inputs``):
        the run's inputs, as the promotion service started the run, and the upstream gates step.
        """
        inputs = {
            "promotion_id": str(promotion_id),
            "release_id": str(uuid.uuid4()),
            "environment_id": str(environment_id),
            "requested_by": str(requested_by),
            "approval_required": required > 0,
            "required_approvals": required,
            "require_sod": require_sod,
            "approver_groups": groups or [],
        }
        gates = {"status": "succeeded", "attempt": 1, "outputs": {"result": "allow", "decision_hash": "sha256:0"}}
        return ExecuteStep(
            tenant_id=self.tenant_id,
            correlation_id=uuid.uuid4(),
            run_id=run_id or uuid.uuid4(),
            node_id="approval",
            attempt=attempt,
            step_type="approval",
            config={},
            inputs={"inputs": inputs, "steps": {"gates": gates}},
            subject_id=promotion_id,
        )


@dataclass
class Harness:
    """The running service, its clock, and what it published."""

    app: ApprovalApp
    clock: Clock
    nats: Client

    @property
    def names(self) -> Names:
        return self.app.runtime.names

    def wire(self, subject: str) -> str:
        return self.names.subject(subject)

    async def outbox_drained(self, timeout: float = 10.0) -> None:
        """Wait until the relay published every event the service committed."""
        async with asyncio.timeout(timeout), self.app.runtime.pool.acquire() as conn:
            while await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
                self.app.runtime.relay.wake()
                await asyncio.sleep(0.02)

    async def published_counts(self) -> dict[str, int]:
        """Messages stored in the events stream per approval subject, once the outbox is drained."""
        await self.outbox_drained()
        info = await self.nats.jetstream().stream_info(
            self.names.stream(EVENTS), subjects_filter=self.wire("stella.evt.approval.>")
        )
        return {self.names.local(s): n for s, n in (info.state.subjects or {}).items()}

    async def table_counts(self) -> dict[str, int]:
        async with self.app.runtime.pool.acquire() as conn:
            return {
                t: await conn.fetchval(f"SELECT count(*) FROM {t}")
                for t in ("approval_requests", "approval_votes", "approval_cancellations", "outbox")
            }


def payload(msg: Any) -> dict[str, Any]:
    """The JSON body of a received NATS message."""
    return json.loads(msg.data)


@pytest_asyncio.fixture
async def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture
async def approval_app(make_database, nats_url: str, stella_namespace: str, clock: Clock) -> AsyncIterator[ApprovalApp]:
    dsn = await make_database([("approval", MIGRATIONS)])
    app = create_app(
        Settings(database_url=dsn, nats_url=nats_url, nats_namespace=stella_namespace, outbox_poll_s=0.2),
        overrides={"clock": clock},
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest_asyncio.fixture
async def harness(approval_app: ApprovalApp, clock: Clock, nats: Client) -> Harness:
    return Harness(approval_app, clock, nats)


@pytest_asyncio.fixture
async def caller(approval_app: ApprovalApp, nats: Client) -> AsyncIterator[Caller]:
    async with service_client(nats, approval_app.runtime.names) as client:
        yield Caller(client)
