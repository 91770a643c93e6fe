"""Deployment jobs end to end in the service: planning by strategy, results, rollback, timers, restarts."""

from __future__ import annotations

import uuid

from stella.contracts import deployment as c
from stella.contracts.agent import TaskType
from stella.deployment.handlers import MAX_JOB_TARGETS

from .conftest import Harness, digest


async def test_a_deploy_step_runs_one_task_per_target_and_answers_the_step(harness: Harness) -> None:
    environment = harness.environment()
    release = harness.release(version="1")
    first = await harness.target(environment, "web-1")
    second = await harness.target(environment, "web-2", target_type="compose_host", connection={"project": "shop"})
    agent = await harness.agent()
    step = harness.step(environment, release)

    job = await harness.execute(step)
    assert job["status"] == "running"
    assert job["target_count"] == 2
    tasks = await agent.poll_until(2)
    assert {t.target.name for t in tasks} == {"web-1", "web-2"}
    assert all(t.type is TaskType.DEPLOY and t.attempt == 1 for t in tasks)
    assert all(t.components[0].image_ref == f"registry.test/api@{digest('api:1')}" for t in tasks)
    assert all(t.sticker and t.sticker["deployment"]["target_id"] == str(t.target.target_id) for t in tasks)
    for task in tasks:
        assert (await agent.report(task))["accepted"] is True

    completion = await harness.completion(step)
    assert completion["status"] == "succeeded"
    assert completion["outputs"]["job_id"] == job["id"]
    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "succeeded"
    assert {t["target_name"] for t in done["tasks"]} == {"web-1", "web-2"}
    for target in (first, second):
        seen = await harness.get_target(target["id"])
        assert seen["current"] == {"api": digest("api:1")}
        assert seen["sticker"]["release"]["id"] == str(release)
        assert seen["health_status"] == "healthy"
    # A result sent again changes nothing.
    assert (await agent.report(tasks[0]))["accepted"] is True
    assert len(harness.seen.of(c.JOB_COMPLETED)) == 1


async def test_an_environment_without_targets_succeeds_at_once_saying_nothing_was_deployed(harness: Harness) -> None:
    environment = harness.environment()
    step = harness.step(environment, harness.release())
    job = await harness.execute(step)
    assert job["status"] == "succeeded"
    assert "nothing to deploy" in job["reason"]
    completion = await harness.completion(step)
    assert completion["status"] == "succeeded"
    assert "nothing to deploy" in completion["outputs"]["reason"]


async def test_a_step_naming_an_unknown_environment_fails_the_step(harness: Harness) -> None:
    step = harness.step(uuid.uuid4(), harness.release())
    await harness.execute(step)
    completion = await harness.completion(step)
    assert completion["status"] == "failed"
    assert (await harness.counts())["jobs"] == 0


async def test_the_same_step_delivered_twice_plans_one_job(harness: Harness) -> None:
    environment = harness.environment()
    await harness.target(environment, "web-1")
    step = harness.step(environment, harness.release())
    first = await harness.execute(step)
    again = step.model_copy(update={"message_id": uuid.uuid4()})
    second = await harness.execute(again)
    assert first["id"] == second["id"]
    assert (await harness.counts())["tasks"] == 1


async def test_a_rolling_deployment_whose_second_batch_fails_rolls_every_touched_target_back(harness: Harness) -> None:
    environment = harness.environment(deployment={"strategy": "rolling", "batch_size": "2"})
    names = ["t1", "t2", "t3", "t4", "t5"]
    for name in names:
        await harness.target(environment, name)
    agent = await harness.agent()
    first_step = harness.step(environment, harness.release(version="1"))
    assert (await harness.run_through(first_step, agent))["status"] == "succeeded"

    step = harness.step(environment, harness.release(version="2"))
    job = await harness.execute(step)
    batch_one = await agent.poll_until(2)
    assert sorted(t.target.name for t in batch_one) == ["t1", "t2"]
    assert await agent.poll() == []  # the next batch waits for this one
    for task in batch_one:
        await agent.report(task)
    batch_two = await agent.poll_until(2)
    assert sorted(t.target.name for t in batch_two) == ["t3", "t4"]
    await agent.report(batch_two[0], ok=False)
    await agent.report(batch_two[1])

    rollbacks = await agent.poll_until(4)
    assert all(t.type is TaskType.ROLLBACK for t in rollbacks)
    assert sorted(t.target.name for t in rollbacks) == ["t1", "t2", "t3", "t4"]
    assert all(t.components[0].digest == digest("api:1") for t in rollbacks)
    assert all(t.components[0].previous_digest == digest("api:2") for t in rollbacks)
    for task in rollbacks:
        await agent.report(task)

    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "rolled_back"
    assert {t["type"] for t in done["tasks"]} == {"deploy", "rollback"}
    untouched = [t for t in done["tasks"] if t["target_name"] == "t5"]
    assert [t["status"] for t in untouched] == ["cancelled"]
    completion = await harness.completion(step)
    assert completion["status"] == "failed"
    for name in names:
        [target] = [
            t
            for t in (await harness.caller.ok(c.LIST_TARGETS, c.ListTargets, environment_id=environment))["items"]
            if t["name"] == name
        ]
        assert target["current"] == {"api": digest("api:1")}


async def test_a_first_deployment_that_fails_has_nothing_to_roll_back_and_fails(harness: Harness) -> None:
    environment = harness.environment()
    await harness.target(environment, "web-1")
    agent = await harness.agent()
    step = harness.step(environment, harness.release())
    job = await harness.execute(step)
    [task] = await agent.poll_until(1)
    await agent.report(task, ok=False, error_code="AGT_DIGEST_MISMATCH")
    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "failed"
    assert "no target had a previous digest" in done["reason"]
    assert done["tasks"][0]["error_code"] == "AGT_DIGEST_MISMATCH"

    refused = await harness.caller.command(c.ROLLBACK_JOB, c.RollbackJob, job_id=uuid.UUID(job["id"]))
    assert not refused.ok
    assert refused.error.status == 422
    assert refused.error.code == "DEPLOY_NO_PREVIOUS_DIGEST"
    assert (await harness.counts())["jobs"] == 1


async def test_a_manual_rollback_is_a_new_job_to_the_previous_digests_of_the_chosen_targets(harness: Harness) -> None:
    environment = harness.environment()
    one = await harness.target(environment, "web-1")
    await harness.target(environment, "web-2")
    agent = await harness.agent()
    for version in ("1", "2"):
        step = harness.step(environment, harness.release(version=version))
        job = await harness.execute(step)
        for task in await agent.poll_until(2):
            await agent.report(task)
        await harness.job_completed(job["id"])

    rollback = await harness.caller.ok(
        c.ROLLBACK_JOB, c.RollbackJob, job_id=uuid.UUID(job["id"]), target_ids=[uuid.UUID(one["id"])]
    )
    assert rollback["rollback_of"] == job["id"]
    assert rollback["kind"] == "rollback"
    [task] = await agent.poll_until(1)
    assert task.type is TaskType.ROLLBACK
    assert task.target.name == "web-1"
    assert task.components[0].digest == digest("api:1")
    assert task.deployment is not None and task.deployment.rollback_of == uuid.UUID(job["id"])
    await agent.report(task)
    done = await harness.job_completed(rollback["id"])
    assert done["outcome"] == "succeeded"
    assert done["rollback_of"] == job["id"]
    assert (await harness.get_target(one["id"]))["current"] == {"api": digest("api:1")}

    outsider = await harness.caller.command(
        c.ROLLBACK_JOB, c.RollbackJob, job_id=uuid.UUID(job["id"]), target_ids=[uuid.uuid4()]
    )
    assert not outsider.ok and outsider.error.code == "DEPLOY_TARGET_NOT_IN_JOB"


async def test_a_canary_that_breaches_its_analysis_rolls_back(harness: Harness) -> None:
    environment = harness.environment(deployment={"strategy": "canary", "canary_steps": [25, 100]})
    for name in ("c1", "c2", "c3", "c4"):
        await harness.target(environment, name)
    agent = await harness.agent()
    first = harness.step(environment, harness.release(version="1"))
    assert (await harness.run_through(first, agent))["status"] == "succeeded"

    step = harness.step(environment, harness.release(version="2"))
    job = await harness.execute(step)
    [canary] = await agent.poll_until(1)
    assert canary.target.name == "c1" and canary.type is TaskType.DEPLOY
    await agent.report(canary)
    [analysis] = await agent.poll_until(1)
    assert analysis.type is TaskType.HEALTH_CHECK and analysis.target.name == "c1"
    await agent.report(analysis, ok=False)
    [rollback] = await agent.poll_until(1)
    assert rollback.type is TaskType.ROLLBACK and rollback.target.name == "c1"
    await agent.report(rollback)
    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "rolled_back"
    assert not [t for t in done["tasks"] if t["target_name"] != "c1" and t["status"] != "cancelled"]


async def test_blue_green_deploys_the_idle_group_and_switches_only_once_it_is_healthy(harness: Harness) -> None:
    environment = harness.environment(deployment={"strategy": "blue-green"})
    for name, color in (("b1", "blue"), ("b2", "blue"), ("g1", "green"), ("g2", "green")):
        await harness.target(environment, name, labels={"color": color})
    agent = await harness.agent()

    step = harness.step(environment, harness.release(version="1"))
    job = await harness.execute(step)
    deploys = await agent.poll_until(2)
    assert sorted(t.target.name for t in deploys) == ["b1", "b2"]
    for task in deploys:
        await agent.report(task)
    checks = await agent.poll_until(2)
    assert {t.type for t in checks} == {TaskType.HEALTH_CHECK}
    for task in checks:
        await agent.report(task)
    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "succeeded"
    assert "group blue" in done["reason"]

    step = harness.step(environment, harness.release(version="2"))
    job = await harness.execute(step)
    deploys = await agent.poll_until(2)
    assert sorted(t.target.name for t in deploys) == ["g1", "g2"]  # blue serves; green is idle
    for task in deploys:
        await agent.report(task)
    checks = await agent.poll_until(2)
    await agent.report(checks[0], ok=False)
    await agent.report(checks[1])
    assert (await harness.job_completed(job["id"]))["outcome"] != "succeeded"
    # Green failed its check: blue still serves, so the next deployment goes to green again.
    step = harness.step(environment, harness.release(version="3"))
    await harness.execute(step)
    assert sorted(t.target.name for t in await agent.poll_until(2)) == ["g1", "g2"]


async def test_failure_behavior_pause_holds_the_job_and_cancel_ends_it(harness: Harness) -> None:
    environment = harness.environment(
        deployment={"strategy": "rolling", "batch_size": "1", "failure_behavior": "pause"}
    )
    await harness.target(environment, "p1")
    await harness.target(environment, "p2")
    agent = await harness.agent()
    step = harness.step(environment, harness.release())
    job = await harness.execute(step)
    [task] = await agent.poll_until(1)
    await agent.report(task, ok=False)
    assert (await harness.job(job["id"]))["status"] == "paused"
    assert await agent.poll() == []
    cancelled = await harness.caller.ok(c.CANCEL_JOB, c.CancelJob, job_id=uuid.UUID(job["id"]), reason="operator")
    assert cancelled["status"] == "cancelled"
    assert (await harness.completion(step))["status"] == "failed"
    assert (await harness.job_completed(job["id"]))["outcome"] == "cancelled"


async def test_a_paused_job_resumes_runs_its_failed_task_again_and_goes_on(harness: Harness) -> None:
    environment = harness.environment(
        deployment={"strategy": "rolling", "batch_size": "1", "failure_behavior": "pause"}
    )
    for name in ("p1", "p2", "p3"):
        await harness.target(environment, name)
    agent = await harness.agent()
    step = harness.step(environment, harness.release())
    job = await harness.execute(step)
    job_id = uuid.UUID(job["id"])

    # A job that is not paused cannot be resumed, and the refusal changes nothing.
    [first] = await agent.poll_until(1)
    refused = await harness.caller.command(c.RESUME_JOB, c.ResumeJob, job_id=job_id)
    assert not refused.ok and refused.error is not None
    assert (refused.error.status, refused.error.code) == (409, "DEPLOY_JOB_NOT_PAUSED")
    assert (await harness.job(job_id))["status"] == "running"
    unknown = await harness.caller.command(c.RESUME_JOB, c.ResumeJob, job_id=uuid.uuid4())
    assert unknown.error is not None and unknown.error.code == "DEPLOY_JOB_NOT_FOUND"

    await agent.report(first, ok=False)
    assert (await harness.job(job_id))["status"] == "paused"
    assert await agent.poll() == []

    resumed = await harness.caller.ok(c.RESUME_JOB, c.ResumeJob, job_id=job_id, reason="registry fixed")
    assert resumed["status"] == "running"
    assert "registry fixed" in resumed["reason"]
    [again] = await agent.poll_until(1)
    assert (again.task_id, again.target.name, again.attempt) == (first.task_id, first.target.name, 2)
    assert (await agent.report(again))["accepted"] is True
    for _ in range(2):  # the later batches, one target each
        [task] = await agent.poll_until(1)
        assert task.target.name != first.target.name
        await agent.report(task)

    done = await harness.job_completed(job["id"])
    assert done["outcome"] == "succeeded"
    assert (await harness.completion(step))["status"] == "succeeded"
    tasks = {t["target_name"]: t for t in (await harness.job(job_id))["tasks"]}
    assert {name: (t["status"], t["attempt"]) for name, t in tasks.items()} == {
        first.target.name: ("succeeded", 2),
        **{name: ("succeeded", 1) for name in ("p1", "p2", "p3") if name != first.target.name},
    }
    again_refused = await harness.caller.command(c.RESUME_JOB, c.ResumeJob, job_id=job_id)
    assert again_refused.error is not None and again_refused.error.code == "DEPLOY_JOB_NOT_PAUSED"


async def test_one_job_changes_an_environment_at_a_time(harness: Harness) -> None:
    environment = harness.environment()
    await harness.target(environment, "web-1")
    agent = await harness.agent()
    first = await harness.execute(harness.step(environment, harness.release(version="1")))
    second = await harness.execute(harness.step(environment, harness.release(version="2")))
    assert second["status"] == "pending"
    [task] = await agent.poll_until(1)
    assert task.deployment is not None and task.deployment.job_id == uuid.UUID(first["id"])
    assert await agent.poll() == []
    await agent.report(task)
    [next_task] = await agent.poll_until(1)
    assert next_task.deployment is not None and next_task.deployment.job_id == uuid.UUID(second["id"])


async def test_a_target_asked_for_while_the_promotion_service_is_away_is_a_503_and_works_when_repeated(
    harness: Harness,
) -> None:
    environment = harness.environment()
    command = harness.caller.message(
        c.CreateTarget, environment_id=environment, name="web-1", target_type="docker_host"
    )
    harness.standins.silent = True
    away = await harness.caller.client.command(c.CREATE_TARGET, command)
    assert not away.ok and away.error.status == 503 and away.error.code == "SYS_UNAVAILABLE"
    assert (await harness.counts())["targets"] == 0
    harness.standins.silent = False
    back = await harness.caller.client.command(c.CREATE_TARGET, command, resend=True)
    assert back.ok, back.error
    assert (await harness.counts())["targets"] == 1


async def test_an_environment_with_more_targets_than_one_job_carries_fails_the_step_and_plans_nothing(
    harness: Harness,
) -> None:
    environment = harness.environment()
    async with harness.app.runtime.pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO targets (tenant_id, id, environment_id, name, target_type, created_at, updated_at)
               SELECT $1, gen_random_uuid(), $2, 't' || n, 'docker_host', now(), now()
                 FROM generate_series(1, $3) AS n""",
            harness.caller.tenant_id,
            environment,
            MAX_JOB_TARGETS + 1,
        )
    step = harness.step(environment, harness.release())
    await harness.execute(step)
    completion = await harness.completion(step)
    assert completion["status"] == "failed"
    assert completion["outputs"]["code"] == "DEPLOY_TOO_MANY_TARGETS"
    assert (await harness.counts())["jobs"] == 0
