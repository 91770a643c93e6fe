"""The deployment service as a process, killed with SIGKILL mid-job and started again: the job ends correctly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg

from stella.contracts import deployment as c
from stella.contracts.agent import TaskType
from stella.contracts.promotion import GET_ENVIRONMENT
from stella.contracts.release import GET_RELEASE
from stella.contracts.workflow import COMPLETE_STEP
from stella.deployment.app import MIGRATIONS
from stella.kit.naming import Names
from stella.testing.services import service_client

from .conftest import Caller, Clock, Harness, Recorder, StandIns, digest


class Process:
    """``python -m stella.deployment`` on the test's database and NATS namespace."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, caller: Caller) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "stella.deployment",
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(60):  # ready once it answers a query
            while not (await caller.query(c.LIST_AGENTS, c.ListAgents)).ok:
                await asyncio.sleep(0.2)

    async def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        await self.process.wait()


@pytest_asyncio.fixture
async def world(
    make_database: Any, nats_url: str, stella_namespace: str, nats: Client
) -> AsyncIterator[tuple[Harness, Process]]:
    dsn = await make_database([("deployment", MIGRATIONS)])
    names = Names(stella_namespace)
    standins = StandIns()
    seen = Recorder()

    async def record(msg: Msg) -> None:
        seen.records.append((names.local(msg.subject), json.loads(msg.data)))
        seen.changed.set()

    async def environments(msg: Msg) -> None:
        await standins.answer(msg, standins.environments, "environment_id")

    async def releases(msg: Msg) -> None:
        await standins.answer(msg, standins.releases, "release_id")

    subscriptions = [
        await nats.subscribe(names.subject(GET_ENVIRONMENT), cb=environments),
        await nats.subscribe(names.subject(GET_RELEASE), cb=releases),
        await nats.subscribe(names.subject("stella.evt.deployment.>"), cb=record),
        await nats.subscribe(names.subject(COMPLETE_STEP), cb=record),
    ]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STELLA_")},
        "STELLA_DATABASE_URL": dsn,
        "STELLA_NATS_URL": nats_url,
        "STELLA_NATS_NAMESPACE": stella_namespace,
        "STELLA_DEPLOYMENT_OUTBOX_POLL_S": "0.2",
        "STELLA_DEPLOYMENT_DB_POOL_SIZE": "4",
        "STELLA_DEPLOYMENT_TIMER_MAX_SLEEP_S": "1",
    }
    process = Process(env)
    try:
        async with service_client(nats, names) as client:
            caller = Caller(client)
            # The harness's helpers talk to the process over NATS; it has no in-process app.
            harness = Harness(None, Clock(), nats, standins, seen, caller, lambda: None)  # type: ignore[arg-type,return-value]
            await process.start(caller)
            yield harness, process
            if process.process is not None and process.process.returncode is None:
                process.process.send_signal(signal.SIGTERM)
                await process.process.wait()
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()


async def test_a_job_survives_its_service_killed_twice_and_no_target_is_deployed_twice(
    world: tuple[Harness, Process],
) -> None:
    harness, process = world
    environment = harness.environment(deployment={"strategy": "rolling", "batch_size": "1"})
    for name in ("k1", "k2", "k3"):
        await harness.target(environment, name)
    agent = await harness.agent()
    step = harness.step(environment, harness.release(version="1"))
    job = await harness.execute(step)

    [first] = await agent.poll_until(1)
    await process.kill()  # mid-job: a task leased, nothing reported
    await process.start(harness.caller)
    assert (await agent.report(first))["accepted"] is True
    [second] = await agent.poll_until(1)
    await process.kill()
    await process.start(harness.caller)
    await agent.report(second)
    [third] = await agent.poll_until(1)
    await agent.report(third)

    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "succeeded"
    assert sorted(t["target_name"] for t in done["tasks"]) == ["k1", "k2", "k3"]
    assert {first.target.name, second.target.name, third.target.name} == {"k1", "k2", "k3"}
    assert all(t.type is TaskType.DEPLOY and t.attempt == 1 for t in (first, second, third))
    assert (await harness.completion(step))["status"] == "succeeded"
    assert len([p for s, p in harness.seen.records if s == c.JOB_COMPLETED and p["job_id"] == job["id"]]) == 1
    job_view = await harness.job(uuid.UUID(job["id"]))
    assert [t["attempt"] for t in job_view["tasks"]] == [1, 1, 1]
    for task in job_view["tasks"]:
        assert task["components"][0]["digest"] == digest("api:1")
