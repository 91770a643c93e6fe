"""The deployment service as a process, killed with SIGKILL mid-job and started again: the job ends correctly."""

from __future__ import annotations

import uuid

import pytest

from stella.contracts import deployment as c
from stella.contracts.agent import TaskType

from .conftest import Harness, digest


@pytest.fixture
def as_process() -> bool:
    return True


async def test_a_job_survives_its_service_killed_twice_and_no_target_is_deployed_twice(
    harness: Harness,
) -> None:
    process = harness.process
    assert process is not None
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
