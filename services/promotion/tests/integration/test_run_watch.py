"""The run watch: a promotion whose workflow run never brings it the gate step does not wait silently.

Its run's start is sent again (the run id makes that idempotent), and after a bounded number of tries the
promotion is rejected with a reason.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from nats.aio.client import Client

from stella.contracts import promotion as c
from stella.contracts import workflow as w
from stella.contracts.streams import COMMANDS
from stella.promotion.app import create_app
from stella.promotion.settings import Settings
from stella.release.app import create_app as create_release
from stella.release.settings import Settings as ReleaseSettings
from stella.testing.messaging import collect_messages
from stella.testing.services import service_client
from stella.workflow.app import create_app as create_workflow
from stella.workflow.settings import Settings as WorkflowSettings

from .conftest import SCHEMAS, Caller, Stack

TIMEOUT_S = 0.4
ATTEMPTS = 2


@pytest_asyncio.fixture
async def watched(make_database: Any, nats_url: str, nats: Client, stella_namespace: str) -> AsyncIterator[Stack]:
    """Promotion and release services with a short run watch; no workflow service (yet)."""
    dsn = await make_database(SCHEMAS)
    common = {"database_url": dsn, "nats_url": nats_url, "nats_namespace": stella_namespace, "outbox_poll_s": 0.2}
    release = create_release(ReleaseSettings(**common))
    promotion = create_app(
        Settings(**common, timer_max_sleep_s=5, run_start_timeout_s=TIMEOUT_S, run_start_attempts=ATTEMPTS)
    )
    stack = Stack(promotion=promotion, release=release, nats=nats, namespace=stella_namespace)
    await release.start()
    await promotion.start()
    try:
        yield stack
    finally:
        for app in (*stack.extra, promotion, release):
            await stack.stop(app)


@pytest_asyncio.fixture
async def watched_caller(watched: Stack, nats: Client) -> AsyncIterator[Caller]:
    async with service_client(nats, watched.names) as client:
        yield Caller(client)


async def _promotion(caller: Caller, name: str) -> dict[str, Any]:
    env = await caller.command(c.CREATE_ENVIRONMENT, c.CreateEnvironment, name="dev", order_index=0)
    assert env.ok, env.error
    release = await caller.ready_release(name)
    reply = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=env.data["id"]
    )
    assert reply.ok, reply.error
    return reply.data


async def _get(caller: Caller, promotion_id: str) -> dict[str, Any]:
    reply = await caller.query(c.GET_PROMOTION, c.GetPromotion, promotion_id=promotion_id)
    assert reply.ok, reply.error
    return reply.data


async def _until(caller: Caller, promotion_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while (promotion := await _get(caller, promotion_id))["status"] != status:
            await asyncio.sleep(0.1)
    return promotion


async def test_a_run_that_never_starts_is_started_again_then_the_promotion_is_rejected_with_a_reason(
    watched_caller: Caller, watched: Stack, nats: Client
) -> None:
    caller = watched_caller
    async with (
        collect_messages(nats.jetstream(), watched.wire(w.START_RUN)) as starts,
        collect_messages(nats.jetstream(), watched.wire(w.CANCEL_RUN)) as cancels,
        collect_messages(nats.jetstream(), watched.wire(c.PROMOTION_REJECTED)) as rejections,
    ):
        promotion = await _promotion(caller, "never-started")
        rejected = await _until(caller, promotion["id"], "rejected")
        sent = [w.StartRun.model_validate_json(m.data) for m in await starts.wait(1 + ATTEMPTS)]
        [cancel] = [w.CancelRun.model_validate_json(m.data) for m in await cancels.wait(1)]
        await rejections.wait(1)
    # The same run each time, each a message of its own.
    assert {s.run_id for s in sent} == {uuid.UUID(promotion["workflow_run_id"])}
    assert len({s.message_id for s in sent}) == 1 + ATTEMPTS
    assert {s.subject_id for s in sent} == {uuid.UUID(promotion["id"])}
    assert sent[-1].inputs == sent[0].inputs
    assert rejected["reason_codes"] == ["PROM_RUN_NOT_STARTED"]
    assert "did not start within" in rejected["status_message"]
    assert cancel.run_id == uuid.UUID(promotion["workflow_run_id"])
    # Watched no more: nothing is sent again.
    await asyncio.sleep(TIMEOUT_S * 4)
    async with watched.promotion.runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM promotions WHERE run_check_at IS NOT NULL") == 0
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE subject = $1", w.START_RUN) == 1 + ATTEMPTS


async def test_a_lost_start_is_sent_again_and_the_run_decides_the_promotion(
    watched_caller: Caller, watched: Stack, nats: Client
) -> None:
    caller = watched_caller
    js = nats.jetstream()
    async with collect_messages(js, watched.wire(w.START_RUN)) as starts:
        promotion = await _promotion(caller, "lost-start")
        await starts.wait(1)
        # The first StartRun is lost before any workflow replica saw it.
        await js.purge_stream(watched.names.stream(COMMANDS), subject=watched.wire(w.START_RUN))
    settings = watched.promotion.runtime.settings
    workflow = create_workflow(
        WorkflowSettings(
            database_url=settings.database_url,
            nats_url=settings.nats_url,
            nats_namespace=settings.nats_namespace,
            outbox_poll_s=0.2,
        )
    )
    await workflow.start()
    watched.extra.append(workflow)
    approved = await _until(caller, promotion["id"], "approved")
    assert approved["workflow_run_id"] == promotion["workflow_run_id"]
    run = await caller.query(w.GET_RUN, w.GetRun, run_id=uuid.UUID(promotion["workflow_run_id"]))
    assert run.ok, run.error
    async with watched.promotion.runtime.pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT run_check_at FROM promotions WHERE id = $1", uuid.UUID(promotion["id"])) is None
        )


async def test_a_gate_step_that_arrives_in_time_ends_the_watch(
    watched_caller: Caller, watched: Stack, nats: Client
) -> None:
    caller = watched_caller
    async with collect_messages(nats.jetstream(), watched.wire(w.START_RUN)) as starts:
        promotion = await _promotion(caller, "in-time")
        reply = await caller.client.command(c.EVALUATE_GATES, caller.gate_step(promotion))
        assert reply.ok, reply.error
        await asyncio.sleep(TIMEOUT_S * 3)
        assert len(starts.messages) == 1
    assert (await _get(caller, promotion["id"]))["status"] == "approved"
