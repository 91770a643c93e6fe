"""Agents in the service: heartbeats and status, leases moving to another agent, old attempts, logs, restarts."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from stella.contracts import deployment as c
from stella.contracts.agent import LogChunk, RegisterAgent, TaskResult, TaskType

from .conftest import Harness, digest


async def test_an_agent_that_misses_three_heartbeats_goes_offline_and_its_task_moves_to_another_agent(
    harness: Harness,
) -> None:
    environment = harness.environment()
    target = await harness.target(environment, "web-1")
    first = await harness.agent("first")
    second = await harness.agent("second")
    step = harness.step(environment, harness.release())
    job = await harness.execute(step)
    [task] = await first.poll_until(1)
    assert task.attempt == 1
    await second.heartbeat()

    harness.clock.offset += timedelta(seconds=100)
    await second.heartbeat()  # the second agent keeps beating; the first is silent past 3 x 30 s
    harness.advance(seconds=1)
    changed = await harness.seen.wait_for(
        lambda s, p: s == c.AGENT_STATUS_CHANGED and p["agent_id"] == str(first.agent_id) and p["status"] == "offline"
    )
    assert changed["previous_status"] == "online"
    [moved] = await second.poll_until(1)
    assert moved.task_id == task.task_id
    assert moved.attempt == 2
    assert moved.idempotency_key == task.idempotency_key

    # The first agent's late result is for an older attempt: ignored.
    late = await first.report(task, ok=False, error_code="AGT_DOCKER_ERROR")
    assert late["accepted"] is False
    assert (await second.report(moved))["accepted"] is True
    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "succeeded"
    assert (await harness.get_target(target["id"]))["current"] == {"api": digest("api:1")}
    agents = await harness.caller.ok(c.LIST_AGENTS, c.ListAgents, status="offline")
    assert [a["name"] for a in agents["items"]] == ["first"]


async def test_failing_self_checks_make_an_agent_degraded_and_a_good_heartbeat_brings_it_back(harness: Harness) -> None:
    agent = await harness.agent()
    assert (await agent.heartbeat(ok=False))["status"] == "degraded"
    await harness.seen.wait_for(lambda s, p: s == c.AGENT_STATUS_CHANGED and p["status"] == "degraded")
    assert (await agent.heartbeat(ok=True))["status"] == "online"


async def test_a_task_without_a_result_times_out_and_fails_the_job(harness: Harness) -> None:
    environment = harness.environment(deployment={"task_timeout_s": 60})
    await harness.target(environment, "web-1")
    agent = await harness.agent()
    step = harness.step(environment, harness.release())
    job = await harness.execute(step)
    [task] = await agent.poll_until(1)
    harness.advance(seconds=61)
    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "failed"
    assert done["tasks"][0]["status"] == "timed_out"
    assert (await agent.report(task))["accepted"] is False
    ack = await agent.heartbeat(running=[task.task_id])
    assert ack["cancel_tasks"] == [str(task.task_id)]


async def test_a_revoked_agent_is_refused_at_once_and_its_tasks_go_back_to_the_queue(harness: Harness) -> None:
    environment = harness.environment()
    await harness.target(environment, "web-1")
    revoked = await harness.agent("revoked")
    await harness.execute(harness.step(environment, harness.release()))
    [task] = await revoked.poll_until(1)
    await harness.caller.ok(c.REVOKE_AGENT, c.RevokeAgent, agent_id=revoked.agent_id)
    refused = await revoked.call(c.AGENT_POLL, c.AgentPoll)
    assert not refused.ok and refused.error.status == 401 and refused.error.code == "AGT_CREDENTIAL_REVOKED"
    spare = await harness.agent("spare")
    [again] = await spare.poll_until(1)
    assert again.task_id == task.task_id and again.attempt == 2


async def test_registration_tokens_and_credentials(harness: Harness) -> None:
    token = await harness.caller.ok(c.CREATE_AGENT_TOKEN, c.CreateAgentToken, labels={"zone": "eu"})
    body = RegisterAgent(
        registration_token=token["token"],
        name="a1",
        version="1.0.0",
        capabilities=["docker"],
        labels={"zone": "us", "rack": "r1"},
    )
    registered = await harness.caller.ok(c.AGENT_REGISTER, c.AgentRegister, registration=body)
    agent = await harness.caller.ok(c.GET_AGENT, c.GetAgent, agent_id=uuid.UUID(registered["agent_id"]))
    assert agent["labels"] == {"zone": "eu", "rack": "r1"}  # the token's labels are the admin's word
    used = await harness.caller.query(c.AGENT_REGISTER, c.AgentRegister, registration=body)
    assert not used.ok and used.error.code == "AGT_TOKEN_USED" and used.error.status == 409
    # Another tenant cannot use the tenant's token.
    stranger = await harness.caller.other_tenant().query(c.AGENT_REGISTER, c.AgentRegister, registration=body)
    assert not stranger.ok and stranger.error.status == 401
    async with harness.app.runtime.pool.acquire() as conn:
        stored = await conn.fetchval(
            "SELECT credential_hash FROM agents WHERE id = $1", uuid.UUID(registered["agent_id"])
        )
        token_hash = await conn.fetchval("SELECT token_hash FROM agent_tokens")
        replies = await conn.fetchval("SELECT count(*) FROM inbox WHERE reply::text LIKE '%stra_%'")
    assert bytes(stored) == hashlib.sha256(registered["credential"].encode()).digest()
    assert bytes(token_hash) == hashlib.sha256(token["token"].encode()).digest()
    assert replies == 0  # the command's stored reply (answering its repeats) does not keep the token


async def test_log_chunks_are_kept_once_per_sequence_and_bounded(harness: Harness) -> None:
    environment = harness.environment()
    await harness.target(environment, "web-1")
    agent = await harness.agent()
    job = await harness.execute(harness.step(environment, harness.release()))
    [task] = await agent.poll_until(1)
    limit = harness.app.handlers.settings.max_log_lines_per_task
    for seq in range(limit // 500 + 2):
        chunk = LogChunk(task_id=task.task_id, attempt=1, seq=seq, lines=[f"line {seq}-{i}" for i in range(500)])
        reply = await agent.call(c.AGENT_LOG, c.AgentLog, chunk=chunk)
        assert reply.ok
    chunk = LogChunk(task_id=task.task_id, attempt=1, seq=0, lines=["again"])
    assert (await agent.call(c.AGENT_LOG, c.AgentLog, chunk=chunk)).data == {"stored": False}
    view = await harness.job(job["id"])
    [seen] = view["tasks"]
    assert len(seen["logs"]) == limit
    assert seen["logs"][0] == "line 0-0"
    assert seen["logs_truncated"] is True
    stale = LogChunk(task_id=task.task_id, attempt=7, seq=99, lines=["old"])
    assert (await agent.call(c.AGENT_LOG, c.AgentLog, chunk=stale)).data == {"stored": False}


async def test_a_restarted_service_resumes_its_jobs_from_the_database(harness: Harness) -> None:
    environment = harness.environment(deployment={"strategy": "rolling", "batch_size": "1"})
    for name in ("r1", "r2", "r3"):
        await harness.target(environment, name)
    agent = await harness.agent()
    step = harness.step(environment, harness.release())
    job = await harness.execute(step)
    [first] = await agent.poll_until(1)
    await harness.restart()
    await agent.report(first)
    [second] = await agent.poll_until(1)
    await harness.restart()
    await agent.report(second)
    [third] = await agent.poll_until(1)
    assert {first.target.name, second.target.name, third.target.name} == {"r1", "r2", "r3"}
    await agent.report(third)
    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "succeeded"
    assert (await harness.completion(step))["status"] == "succeeded"
    async with harness.app.runtime.pool.acquire() as conn:
        attempts = await conn.fetch("SELECT attempt FROM tasks WHERE job_id = $1", uuid.UUID(job["id"]))
    assert sorted(r["attempt"] for r in attempts) == [1, 1, 1]


async def test_check_drift_records_the_difference_and_remediate_redeploys_the_sticker_release(harness: Harness) -> None:
    environment = harness.environment()
    target = await harness.target(environment, "web-1")
    agent = await harness.agent()
    await harness.run_through(harness.step(environment, harness.release(version="1")), agent)

    inspect = await harness.caller.ok(c.CHECK_DRIFT, c.CheckDrift, target_id=uuid.UUID(target["id"]))
    assert inspect["type"] == "inspect"
    [task] = await agent.poll_until(1)
    assert task.type is TaskType.INSPECT
    assert task.components[0].digest == digest("api:1")
    difference = {"kind": "digest", "component": "api", "expected": digest("api:1"), "actual": digest("tampered")}
    await agent.report_drift(task, [difference])
    drift = await harness.seen.wait_for(lambda s, p: s == c.DRIFT_DETECTED and p["target_id"] == target["id"])
    assert drift["differences"] == [difference]
    seen = await harness.get_target(target["id"])
    assert seen["drift_detected"] is True
    assert seen["last_drift"]["differences"] == [difference]

    job = await harness.caller.ok(c.REMEDIATE_TARGET, c.RemediateTarget, target_id=uuid.UUID(target["id"]))
    assert job["kind"] == "remediate"
    [redeploy] = await agent.poll_until(1)
    assert redeploy.type is TaskType.DEPLOY
    assert redeploy.components[0].digest == digest("api:1")
    await agent.report(redeploy)
    assert (await harness.job_completed(job["id"]))["outcome"] == "succeeded"
    assert (await harness.get_target(target["id"]))["drift_detected"] is False

    empty = await harness.target(environment, "web-2")
    refused = await harness.caller.command(c.REMEDIATE_TARGET, c.RemediateTarget, target_id=uuid.UUID(empty["id"]))
    assert not refused.ok and refused.error.code == "DEPLOY_NO_STICKER"
    other = await harness.caller.other_tenant().command(c.CHECK_DRIFT, c.CheckDrift, target_id=uuid.UUID(target["id"]))
    assert not other.ok and other.error.status == 404


async def test_health_check_and_verify_drift_steps_answer_from_their_tasks(harness: Harness) -> None:
    environment = harness.environment()
    await harness.target(environment, "web-1")
    agent = await harness.agent()
    release = harness.release()
    await harness.run_through(harness.step(environment, release), agent)

    check = harness.step(environment, release, step_type="health-check")
    await harness.execute(check)
    [task] = await agent.poll_until(1)
    assert task.type is TaskType.HEALTH_CHECK
    await agent.report(task, ok=False)
    assert (await harness.completion(check))["status"] == "failed"

    verify = harness.step(environment, release, step_type="verify-drift")
    await harness.execute(verify)
    [task] = await agent.poll_until(1)
    await agent.report_drift(task, [])
    assert (await harness.completion(verify))["status"] == "succeeded"
    assert not [p for s, p in harness.seen.records if s == c.JOB_STARTED and p.get("kind") != "deploy"]


async def test_polling_agents_never_lease_one_task_twice(harness: Harness) -> None:
    environment = harness.environment()
    for index in range(30):
        await harness.target(environment, f"t{index:02d}")
    agents = [await harness.agent(f"a{index}") for index in range(5)]
    await harness.execute(harness.step(environment, harness.release()))
    leased: list[uuid.UUID] = []

    async def take(agent: object) -> None:
        async with asyncio.timeout(15):
            while len(leased) < 30:
                leased.extend(t.task_id for t in await agent.poll(max_tasks=3))  # type: ignore[attr-defined]

    await asyncio.gather(*(take(a) for a in agents))
    assert len(leased) == len(set(leased)) == 30


async def test_deployed_targets_are_inspected_on_a_schedule(harness: Harness) -> None:
    environment = harness.environment()
    target = await harness.target(environment, "web-1")
    agent = await harness.agent()
    await harness.run_through(harness.step(environment, harness.release()), agent)
    assert await agent.poll() == []
    harness.advance(seconds=harness.app.handlers.settings.drift_check_interval_s + 1)
    await harness.seen.wait_for(lambda s, p: s == c.AGENT_STATUS_CHANGED and p["status"] == "offline")
    await agent.heartbeat()
    [task] = await agent.poll_until(1)
    assert task.type is TaskType.INSPECT and task.deployment is None
    assert task.components[0].digest == digest("api:1")
    missing = {"kind": "missing_container", "component": "api", "expected": digest("api:1"), "actual": None}
    await agent.report_drift(task, [missing])
    drift = await harness.seen.wait_for(lambda s, p: s == c.DRIFT_DETECTED and p["target_id"] == target["id"])
    assert drift["differences"] == [missing]
    assert await agent.poll() == []  # inspected now: the next one is an interval away


async def test_a_job_whose_last_result_was_stored_by_a_process_that_then_died_moves_after_a_restart(
    harness: Harness,
) -> None:
    environment = harness.environment()
    await harness.target(environment, "web-1")
    agent = await harness.agent()
    step = harness.step(environment, harness.release())
    job = await harness.execute(step)
    [task] = await agent.poll_until(1)
    await harness.app.stop()
    # What a result leaves behind when the process dies right after its transaction committed.
    conn = await asyncpg.connect(harness.app.runtime.settings.database_url)
    try:
        await conn.execute(
            "UPDATE deployment.tasks SET status = 'succeeded', finished_at = now() WHERE id = $1", task.task_id
        )
    finally:
        await conn.close()
    harness.app = harness.make_app()
    await harness.app.start()
    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "succeeded"
    assert (await harness.completion(step))["status"] == "succeeded"


async def test_tasks_lost_on_their_way_to_the_agent_are_handed_over_again_at_its_next_poll(harness: Harness) -> None:
    """A feed answer that never reached the agent (the gateway gave up waiting for it, or the agent's request
    ended first) leaves its tasks leased to the agent. Its next poll lists what it holds: the rest come
    again at once, same attempt, instead of after the lease."""
    environment = harness.environment()
    for name in ("web-1", "web-2", "web-3"):
        await harness.target(environment, name)
    agent = await harness.agent()
    job = await harness.execute(harness.step(environment, harness.release()))
    handed = {task.target.name: task for task in await agent.poll_until(3)}
    kept, running, lost = handed["web-1"], handed["web-2"], handed["web-3"]

    # An agent that does not tell what it holds gets nothing again (the lease alone brings lost tasks back).
    assert await agent.poll() == []
    # This one received web-1 only; web-2's answer was lost too, but it had started web-2 before restarting.
    await agent.heartbeat(running=[running.task_id])
    again = await agent.poll(held=[kept.task_id])
    assert {task.task_id for task in again} == {running.task_id, lost.task_id}
    for task in again:
        first = handed[task.target.name]
        assert (task.task_id, task.attempt, task.idempotency_key) == (
            first.task_id,
            first.attempt,
            first.idempotency_key,
        )
    # Held now: not handed over a third time.
    assert await agent.poll(held=[t.task_id for t in handed.values()]) == []
    # One agent's lost tasks are never another's.
    other = await harness.agent("agent-2")
    assert await other.poll(held=[]) == []

    for task in [*again, kept]:
        assert (await agent.report(task))["accepted"] is True
    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "succeeded"
    assert [t["attempt"] for t in (await harness.job(job["id"]))["tasks"]] == [1, 1, 1]


async def test_several_results_posted_at_once_are_applied_together_each_with_its_own_outcome(harness: Harness) -> None:
    environment = harness.environment()
    for index in range(3):
        await harness.target(environment, f"web-{index}")
    agent = await harness.agent()
    job = await harness.execute(harness.step(environment, harness.release()))
    tasks = await agent.poll_until(3)
    first, *rest = tasks
    assert (await agent.report(first))["accepted"] is True
    unknown = agent.result(first).model_copy(update={"task_id": uuid.uuid4()})
    mismatched = agent.result(rest[1]).model_copy(update={"idempotency_key": "not-the-task's"})

    reply = await agent.call(
        c.AGENT_RESULTS,
        c.AgentResults,
        results=[agent.result(first), unknown, agent.result(rest[0]), mismatched],
    )

    assert reply.ok, reply.error
    outcomes = c.ResultOutcomes.model_validate(reply.data).results
    assert [o.task_id for o in outcomes] == [first.task_id, unknown.task_id, rest[0].task_id, rest[1].task_id]
    assert outcomes[0].accepted is True and outcomes[0].reason == "the task had ended already"
    assert (outcomes[1].accepted, outcomes[1].status, outcomes[1].code) == (False, 404, "AGT_TASK_NOT_FOUND")
    assert outcomes[2].accepted is True and outcomes[2].status is None
    assert (outcomes[3].accepted, outcomes[3].status, outcomes[3].code) == (False, 422, "AGT_RESULT_MISMATCH")

    # The refused result changed nothing: its task still waits for its own result, and the job with it.
    job_now = await harness.job(job["id"])
    statuses = {t["id"]: t["status"] for t in job_now["tasks"]}
    assert statuses[str(rest[1].task_id)] in ("assigned", "running")
    assert statuses[str(rest[0].task_id)] == "succeeded"
    again = await agent.call(c.AGENT_RESULTS, c.AgentResults, results=[agent.result(rest[1])])
    assert c.ResultOutcomes.model_validate(again.data).results[0].accepted is True
    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "succeeded"


async def test_log_chunks_posted_with_results_are_kept_first_once_and_only_for_the_current_attempt(
    harness: Harness,
) -> None:
    environment = harness.environment()
    for index in range(2):
        await harness.target(environment, f"web-{index}")
    agent = await harness.agent()
    job = await harness.execute(harness.step(environment, harness.release()))
    first, second = await agent.poll_until(2)
    limit = harness.app.handlers.settings.max_log_lines_per_task
    logs = [
        LogChunk(task_id=first.task_id, attempt=1, seq=0, lines=["pulled", "started"]),
        LogChunk(task_id=first.task_id, attempt=1, seq=1, lines=["healthy"]),
        LogChunk(task_id=first.task_id, attempt=1, seq=1, lines=["healthy"]),  # the same chunk twice
        LogChunk(task_id=second.task_id, attempt=7, seq=0, lines=["an older attempt's"]),
        LogChunk(task_id=second.task_id, attempt=1, seq=0, lines=[f"line {i}" for i in range(min(500, limit + 5))]),
    ]
    results = [agent.result(second), agent.result(first)]

    reply = await agent.call(c.AGENT_RESULTS, c.AgentResults, results=results, logs=logs)
    assert reply.ok, reply.error
    assert [o.accepted for o in c.ResultOutcomes.model_validate(reply.data).results] == [True, True]
    # Posted again (its answer lost): nothing is kept twice.
    again = await agent.call(c.AGENT_RESULTS, c.AgentResults, results=results, logs=logs)
    assert [o.reason for o in c.ResultOutcomes.model_validate(again.data).results] == ["the task had ended already"] * 2

    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "succeeded"
    view = {t["target_name"]: t for t in (await harness.job(job["id"]))["tasks"]}
    assert view[first.target.name]["logs"] == ["pulled", "started", "healthy"]
    assert view[first.target.name]["logs_truncated"] is False
    assert view[second.target.name]["logs"] == [f"line {i}" for i in range(min(500, limit))]
    async with harness.app.runtime.pool.acquire() as conn:
        counted = dict(await conn.fetch("SELECT target_name, log_lines FROM tasks"))
        stickers = await conn.fetchval("SELECT count(*) FROM stickers")
    assert counted == {first.target.name: 3, second.target.name: min(500, limit)}
    assert stickers == 2
    for name in ("web-0", "web-1"):
        target = next(t for t in (await harness.caller.ok(c.LIST_TARGETS, c.ListTargets))["items"] if t["name"] == name)
        assert target["current"] == {comp.name: comp.digest for comp in first.components}
        assert target["sticker"] is not None and target["health_status"] == "healthy"


async def test_a_results_post_with_too_many_log_characters_is_refused() -> None:
    chunk = LogChunk(task_id=uuid.uuid4(), attempt=1, seq=0, lines=["x" * 4000] * 100)
    result = TaskResult(
        task_id=chunk.task_id,
        idempotency_key="k",
        attempt=1,
        status="succeeded",
        started_at=datetime.now(UTC),
        finished_at=datetime.now(UTC),
    )
    with pytest.raises(ValueError, match="characters"):
        c.AgentResults(
            tenant_id=uuid.uuid4(),
            correlation_id=uuid.uuid4(),
            agent_id=uuid.uuid4(),
            credential="c" * 32,
            results=[result],
            logs=[chunk] * 2,
        )
