"""``deployment.tasks_progressed``: one event per agent call and job, in the call's transaction, without log text."""

from __future__ import annotations

import json
from typing import Any

from stella.contracts import deployment as c
from stella.contracts.agent import LogChunk

from .conftest import Harness


async def _progress_events(harness: Harness) -> list[dict[str, Any]]:
    """Every ``tasks_progressed`` recorded so far (the outbox holds it from the commit of the call on)."""
    async with harness.app.runtime.pool.acquire() as conn:
        rows = await conn.fetch("SELECT payload FROM outbox WHERE subject = $1 ORDER BY id", c.TASKS_PROGRESSED)
    return [json.loads(row["payload"]) for row in rows]


async def test_each_lease_log_and_results_post_records_one_event_listing_every_task_it_changed(
    harness: Harness,
) -> None:
    environment = harness.environment(deployment={"strategy": "all-at-once", "failure_behavior": "continue"})
    for index in range(3):
        await harness.target(environment, f"web-{index}")
    agent = await harness.agent()
    step = harness.step(environment, harness.release())
    job = await harness.execute(step)
    tasks = await agent.poll(max_tasks=3)
    assert len(tasks) == 3

    [leased] = await _progress_events(harness)
    assert leased["tenant_id"] == str(harness.caller.tenant_id)
    assert (leased["job_id"], leased["promotion_id"]) == (job["id"], str(step.inputs["inputs"]["promotion_id"]))
    assert (leased["job_status"], leased["current_batch"], leased["batch_count"], leased["target_count"]) == (
        "running",
        0,
        1,
        3,
    )
    assert sorted((t["target_name"], t["status"], t["attempt"]) for t in leased["tasks"]) == [
        (f"web-{i}", "assigned", 1) for i in range(3)
    ]

    # One log chunk on its own: the task runs; the same chunk again changes nothing and records nothing.
    first, second, third = sorted(tasks, key=lambda t: t.target.name)
    chunk = LogChunk(task_id=third.task_id, attempt=1, seq=0, lines=["pulling secret-looking-line"])
    assert (await agent.call(c.AGENT_LOG, c.AgentLog, chunk=chunk)).data == {"stored": True}
    assert (await agent.call(c.AGENT_LOG, c.AgentLog, chunk=chunk)).data == {"stored": False}
    logged = (await _progress_events(harness))[1:]
    assert [(t["target_name"], t["status"], t["log_lines"], t["log_seq"]) for e in logged for t in e["tasks"]] == [
        ("web-2", "running", 1, 0)
    ]

    # A results post of two results and three tasks' logs: one event naming the three tasks.
    logs = [
        LogChunk(task_id=first.task_id, attempt=1, seq=0, lines=["started", "healthy"]),
        LogChunk(task_id=first.task_id, attempt=1, seq=1, lines=["done"]),
        LogChunk(task_id=second.task_id, attempt=1, seq=0, lines=["started"]),
        LogChunk(task_id=third.task_id, attempt=1, seq=1, lines=["still pulling"]),
    ]
    results = [agent.result(first), agent.result(second, ok=False, error_code="AGT_HEALTH_CHECK_FAILED")]
    reply = await agent.call(c.AGENT_RESULTS, c.AgentResults, results=results, logs=logs)
    assert reply.ok, reply.error
    posted = (await _progress_events(harness))[2:]
    assert len(posted) == 1
    assert sorted(
        (t["target_name"], t["status"], t["log_lines"], t["log_seq"], t["error_code"]) for t in posted[0]["tasks"]
    ) == [
        ("web-0", "succeeded", 3, 1, None),
        ("web-1", "failed", 1, 0, "AGT_HEALTH_CHECK_FAILED"),
        ("web-2", "running", 2, 1, None),
    ]
    # Posted again (its answer lost): nothing changes, nothing is announced.
    again = await agent.call(c.AGENT_RESULTS, c.AgentResults, results=results, logs=logs)
    assert again.ok
    assert len(await _progress_events(harness)) == 3

    # States, counts and sequence numbers only: no log line, no agent message, no credential.
    recorded = json.dumps(await _progress_events(harness))
    for secret in ("secret-looking-line", "still pulling", "healthy", "it failed", agent.credential):
        assert secret not in recorded

    # The last result alone: one more event; the job then ends (failed: one task failed, the others went on).
    assert (await agent.report(third))["accepted"] is True
    assert [t["status"] for t in (await _progress_events(harness))[3]["tasks"]] == ["succeeded"]
    assert (await harness.job_completed(job["id"]))["outcome"] == "failed"
    # Published on the events stream, each once.
    published = await harness.seen.wait_for(
        lambda s, p: s == c.TASKS_PROGRESSED and p["message_id"] == posted[0]["message_id"]
    )
    assert published == posted[0]


async def test_checks_announce_no_task_progress(harness: Harness) -> None:
    environment = harness.environment()
    await harness.target(environment, "web-1")
    agent = await harness.agent()
    step = harness.step(environment, harness.release(), step_type="health-check")
    await harness.execute(step)
    [task] = await agent.poll_until(1)
    assert (await agent.report(task))["accepted"] is True
    await harness.completion(step)
    assert await _progress_events(harness) == []
