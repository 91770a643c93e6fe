"""Promotions driven by the deployment service's job events, on real Postgres and NATS.

The test plays the workflow (it sends the gate step) and the deployment service (it publishes
``deployment.job_started`` / ``deployment.job_completed`` as that service's outbox relay would).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from stella.contracts import deployment as d
from stella.contracts import promotion as c
from stella.contracts import workflow as w
from stella.promotion import repo
from stella.testing.messaging import collect_messages

from .conftest import Caller, Stack, first_match, job_completed, job_started, publish_event


async def _environment(caller: Caller, name: str, order: int) -> dict[str, Any]:
    reply = await caller.command(c.CREATE_ENVIRONMENT, c.CreateEnvironment, name=name, order_index=order)
    assert reply.ok, reply.error
    return reply.data


async def _approved(caller: Caller, release: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    """Request a promotion and run its gate step (the environment needs no approvals): it is approved."""
    reply = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=env["id"]
    )
    assert reply.ok, reply.error
    gates = await caller.client.command(c.EVALUATE_GATES, caller.gate_step(reply.data))
    assert gates.ok, gates.error
    promotion = await _get(caller, reply.data["id"])
    assert promotion["status"] == "approved"
    return promotion


async def _get(caller: Caller, promotion_id: str) -> dict[str, Any]:
    reply = await caller.query(c.GET_PROMOTION, c.GetPromotion, promotion_id=promotion_id)
    assert reply.ok, reply.error
    return reply.data


def _gate_completion(promotion: dict[str, Any]):
    return lambda body: body.get("run_id") == promotion["workflow_run_id"] and body.get("node_id") == "gates"


async def _ended(stack: Stack, subject: str, promotion: dict[str, Any], *events: Any) -> dict[str, Any]:
    """Publish ``events`` (subject, event) and wait for the promotion's ``subject`` event; the promotion after."""
    async with collect_messages(stack.nats.jetstream(), stack.wire(subject)) as seen:
        for event_subject, event in events:
            await publish_event(stack, event_subject, event)
        body = await first_match(seen, lambda b: b["promotion"]["id"] == promotion["id"], timeout=20)
    return body["promotion"]


async def test_a_job_with_no_targets_deploys_the_promotion_and_opens_the_next_environment(
    caller: Caller, stack: Stack
) -> None:
    dev = await _environment(caller, "dev", 0)
    staging = await _environment(caller, "staging", 1)
    release = await caller.ready_release("shop")
    promotion = await _approved(caller, release, dev)
    job = uuid.uuid4()

    started = await _ended(stack, c.PROMOTION_STARTED, promotion, (d.JOB_STARTED, job_started(caller, promotion, job)))
    assert (started["status"], started["deployment_job_id"]) == ("deploying", str(job))
    early = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=staging["id"]
    )
    assert (early.error.code, early.error.status) == ("PROM_ORDER_VIOLATION", 422)

    done = await _ended(
        stack,
        c.PROMOTION_COMPLETED,
        promotion,
        (d.JOB_COMPLETED, job_completed(caller, promotion, job, "succeeded", reason="no targets: nothing to deploy")),
    )
    assert done["status"] == "deployed"
    assert done["status_message"] == "no targets: nothing to deploy"
    next_env = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=staging["id"]
    )
    assert next_env.ok, next_env.error


async def test_a_job_rolled_back_after_a_failure_ends_the_promotion_rolled_back(caller: Caller, stack: Stack) -> None:
    dev = await _environment(caller, "dev", 0)
    staging = await _environment(caller, "staging", 1)
    release = await caller.ready_release("shop")
    promotion = await _approved(caller, release, dev)
    job = uuid.uuid4()

    async with collect_messages(stack.nats.jetstream(), stack.wire(c.PROMOTION_FAILED)) as failed:
        rolled = await _ended(
            stack,
            c.PROMOTION_ROLLED_BACK,
            promotion,
            (d.JOB_STARTED, job_started(caller, promotion, job, strategy="rolling", target_count=4)),
            (
                d.JOB_COMPLETED,
                job_completed(
                    caller, promotion, job, "rolled_back", strategy="rolling", reason="batch 2 failed its health check"
                ),
            ),
        )
        failure = await first_match(failed, lambda b: b["promotion"]["id"] == promotion["id"], timeout=20)
    assert failure["promotion"]["id"] == promotion["id"]
    assert rolled["status"] == "rolled_back"
    assert (rolled["deployment_job_id"], rolled["rollback_job_id"]) == (str(job), str(job))
    assert rolled["status_message"] == "rolled back: batch 2 failed its health check"
    # A rolled-back release has not reached dev.
    refused = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=staging["id"]
    )
    assert refused.error.code == "PROM_ORDER_VIOLATION"


async def test_one_promotion_deploys_per_environment_and_the_next_waits_in_approved(
    caller: Caller, stack: Stack
) -> None:
    dev = await _environment(caller, "dev", 0)
    other_env = await _environment(caller, "sandbox", 0)
    first_release = await caller.ready_release("first")
    second_release = await caller.ready_release("second")
    elsewhere_release = await caller.ready_release("elsewhere")

    async with collect_messages(stack.nats.jetstream(), stack.wire(w.COMPLETE_STEP)) as completions:
        first = await _approved(caller, first_release, dev)
        await first_match(completions, _gate_completion(first), timeout=20)
        second = await _approved(caller, second_release, dev)
        # Another environment has its own slot.
        elsewhere = await _approved(caller, elsewhere_release, other_env)
        await first_match(completions, _gate_completion(elsewhere), timeout=20)
        # The second promotion's gate step stays open: its deploy step must not run while dev is taken.
        assert not [m for m in completions.messages if _gate_completion(second)(_body(m))]
        assert second["status"] == "approved"
        assert second["status_message"] == (
            f"approved; queued behind promotion {first['id']}, which is starting its deployment to this environment"
        )
        first_job = uuid.uuid4()
        await _ended(stack, c.PROMOTION_STARTED, first, (d.JOB_STARTED, job_started(caller, first, first_job)))
        assert not [m for m in completions.messages if _gate_completion(second)(_body(m))]
        # A cancelled queued promotion would not block; the first one's job ends and frees dev.
        await _ended(
            stack, c.PROMOTION_FAILED, first, (d.JOB_COMPLETED, job_completed(caller, first, first_job, "failed"))
        )
        released = await first_match(completions, _gate_completion(second), timeout=20)
    assert released["status"] == "succeeded"
    after = await _get(caller, second["id"])
    assert (after["status"], after["status_message"]) == ("approved", "approved; deployment starting")
    async with stack.promotion.runtime.pool.acquire() as conn:
        slots = await conn.fetchval(
            "SELECT count(*) FROM promotions WHERE target_environment_id = $1 AND cleared_at IS NOT NULL"
            " AND status IN ('approved', 'deploying')",
            uuid.UUID(dev["id"]),
        )
    assert slots == 1


async def test_a_long_queue_deploys_in_approval_order_reading_only_its_front(caller: Caller, stack: Stack) -> None:
    """Five promotions approved into one environment deploy one after the other in approval order, and each
    change of the queue reads the slot's holder and the first in line, not the whole queue."""
    dev = await _environment(caller, "dev", 0)
    releases = [await caller.ready_release(f"queued-{i}") for i in range(5)]
    async with collect_messages(stack.nats.jetstream(), stack.wire(w.COMPLETE_STEP)) as completions:
        promotions = [await _approved(caller, release, dev) for release in releases]
        await first_match(completions, _gate_completion(promotions[0]), timeout=20)
        async with stack.promotion.runtime.pool.acquire() as conn:
            front = await repo.deploy_queue_front(conn, caller.tenant_id, uuid.UUID(dev["id"]))
        assert [str(s.promotion.id) for s in front] == [promotions[0]["id"], promotions[1]["id"]]
        for current, following in zip(promotions, [*promotions[1:], None], strict=True):
            job = uuid.uuid4()
            await _ended(stack, c.PROMOTION_STARTED, current, (d.JOB_STARTED, job_started(caller, current, job)))
            await _ended(
                stack,
                c.PROMOTION_COMPLETED,
                current,
                (d.JOB_COMPLETED, job_completed(caller, current, job, "succeeded")),
            )
            if following is None:
                break
            await first_match(completions, _gate_completion(following), timeout=20)
            released = [
                _body(m)["run_id"]
                for m in completions.messages
                if _body(m).get("node_id") == "gates" and _body(m).get("status") == "succeeded"
            ]
            # Nobody behind the next one was let go: the order is the approval order.
            assert released == [p["workflow_run_id"] for p in promotions[: promotions.index(following) + 1]]
    statuses = [(await _get(caller, p["id"]))["status"] for p in promotions]
    assert statuses == ["deployed"] * 5


async def test_the_front_of_a_line_of_hundreds_is_read_from_an_index_not_by_sorting_the_line(
    caller: Caller, stack: Stack
) -> None:
    """Every change of an environment's deployment line reads its front under the line's lock: with hundreds
    waiting, that read walks an index in line order and stops at the first, so the lock is held as briefly as
    with one waiting (sorting the whole line held it for milliseconds, and every decision of the environment
    waited for it)."""
    dev = await _environment(caller, "dev", 0)
    holder, first = [await _approved(caller, await caller.ready_release(f"line-{i}"), dev) for i in range(2)]
    async with stack.promotion.runtime.pool.acquire() as conn:
        # 400 more approved after ``first``, each as it (queued, its gate step held), of a release of its own.
        await conn.execute(
            """INSERT INTO promotions
               SELECT (jsonb_populate_record(p, jsonb_build_object(
                          'id', gen_random_uuid(), 'release_id', gen_random_uuid(), 'workflow_run_id', gen_random_uuid(),
                          'approved_at', p.approved_at + n * interval '1 second'))).*
                 FROM promotions p, generate_series(1, 400) AS n
                WHERE p.tenant_id = $1 AND p.id = $2""",
            caller.tenant_id,
            uuid.UUID(first["id"]),
        )
        await conn.execute("ANALYZE promotions")
        plan = json.dumps(
            await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) {repo.DEPLOY_QUEUE_FRONT}", caller.tenant_id, uuid.UUID(dev["id"])
            )
        )
        front = await repo.deploy_queue_front(conn, caller.tenant_id, uuid.UUID(dev["id"]))
    assert "promotions_deploy_line" in plan and '"Sort"' not in plan, plan
    assert [str(s.promotion.id) for s in front] == [holder["id"], first["id"]]


async def test_job_events_are_applied_once_and_survive_a_restart(caller: Caller, stack: Stack) -> None:
    dev = await _environment(caller, "dev", 0)
    release = await caller.ready_release("shop")
    promotion = await _approved(caller, release, dev)
    job = uuid.uuid4()
    completed = job_completed(caller, promotion, job, "succeeded")

    # The service is down when the job ends: the event waits in the stream.
    await stack.promotion.stop()
    await publish_event(stack, d.JOB_STARTED, job_started(caller, promotion, job))
    await publish_event(stack, d.JOB_COMPLETED, completed)
    async with collect_messages(stack.nats.jetstream(), stack.wire(c.PROMOTION_COMPLETED)) as done:
        await stack.promotion.start()
        await first_match(done, lambda b: b["promotion"]["id"] == promotion["id"], timeout=30)
        # The same event delivered again (a new stream message: the duplicate window is bypassed on purpose)
        # and a second copy with another id change nothing.
        await stack.nats.jetstream().publish(stack.wire(d.JOB_COMPLETED), completed.model_dump_json().encode())
        again = completed.model_copy(update={"message_id": uuid.uuid4()})
        await publish_event(stack, d.JOB_COMPLETED, again)
        marker = job_completed(caller, promotion, uuid.uuid4(), "succeeded").model_copy(update={"promotion_id": None})
        await publish_event(stack, d.JOB_COMPLETED, marker)
        async with stack.promotion.runtime.pool.acquire() as conn:
            for _ in range(200):
                handled = await conn.fetchval(
                    "SELECT count(*) FROM inbox WHERE consumer = 'promotion-deployment-jobs' AND message_id = ANY($1)",
                    [marker.message_id, again.message_id],
                )
                if handled == 2:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the later events were never handled")
            outbox = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE subject = $1 AND payload::jsonb->'promotion'->>'id' = $2",
                c.PROMOTION_COMPLETED,
                promotion["id"],
            )
        assert len([m for m in done.messages if _body(m)["promotion"]["id"] == promotion["id"]]) == 1
    assert outbox == 1
    assert (await _get(caller, promotion["id"]))["status"] == "deployed"


def _body(msg: Any) -> dict[str, Any]:
    return json.loads(msg.data)


async def test_jobs_that_deploy_nothing_for_the_promotion_leave_it_alone(caller: Caller, stack: Stack) -> None:
    dev = await _environment(caller, "dev", 0)
    release = await caller.ready_release("shop")
    promotion = await _approved(caller, release, dev)
    remediation = job_completed(caller, promotion, uuid.uuid4(), "succeeded", kind=d.JobKind.REMEDIATE)
    other_env = job_completed(caller, promotion, uuid.uuid4(), "succeeded").model_copy(
        update={"environment_id": uuid.uuid4()}
    )
    foreign = job_completed(caller, promotion, uuid.uuid4(), "succeeded").model_copy(update={"tenant_id": uuid.uuid4()})
    for event in (remediation, other_env, foreign):
        await publish_event(stack, d.JOB_COMPLETED, event)
    job = uuid.uuid4()
    # The promotion's own job, published last, is the only one that moves it.
    done = await _ended(
        stack, c.PROMOTION_COMPLETED, promotion, (d.JOB_COMPLETED, job_completed(caller, promotion, job, "succeeded"))
    )
    assert done["deployment_job_id"] == str(job)


def _run_completed(caller: Caller, promotion: dict[str, Any], **fields: Any) -> w.RunCompleted:
    """The end of the promotion's run of ``standard-promotion``, as the workflow service announces it."""
    return w.RunCompleted(
        tenant_id=caller.tenant_id,
        correlation_id=uuid.uuid4(),
        run_id=uuid.UUID(promotion["workflow_run_id"]),
        subject_id=uuid.UUID(promotion["id"]),
        outputs={},
        template_name="standard-promotion",
        **fields,
    )


async def test_a_run_that_ends_without_a_deployment_gives_the_slot_to_the_next_promotion(
    caller: Caller, stack: Stack
) -> None:
    dev = await _environment(caller, "dev", 0)
    first_release = await caller.ready_release("first")
    second_release = await caller.ready_release("second")
    async with collect_messages(stack.nats.jetstream(), stack.wire(w.COMPLETE_STEP)) as completions:
        first = await _approved(caller, first_release, dev)
        second = await _approved(caller, second_release, dev)
        # A run of a template without a deploy step (standard-promotion version 1) ends after its evidence.
        ended = _run_completed(caller, first)
        await publish_event(stack, w.RUN_COMPLETED, ended)
        released = await first_match(completions, _gate_completion(second), timeout=20)
    assert released["status"] == "succeeded"
    kept = await _get(caller, first["id"])
    assert kept["status"] == "approved"
    assert kept["status_message"] == (
        f"approved; no deployment: its workflow run {first['workflow_run_id']} (standard-promotion) ended "
        "without a deployment job"
    )


async def test_a_run_that_ends_before_its_deployment_jobs_events_arrive_keeps_the_slot_until_the_job_ends(
    caller: Caller, stack: Stack
) -> None:
    """The job's events and the run's end travel on different consumers: under load the run's end can come first.

    The promotion must keep its environment's slot (its job is deploying), not leave the queue and let the next
    promotion deploy beside that job; the job's events then move it as usual and free the slot.
    """
    dev = await _environment(caller, "dev", 0)
    first_release = await caller.ready_release("first")
    second_release = await caller.ready_release("second")
    job = uuid.uuid4()
    async with collect_messages(stack.nats.jetstream(), stack.wire(w.COMPLETE_STEP)) as completions:
        first = await _approved(caller, first_release, dev)
        second = await _approved(caller, second_release, dev)
        ended = _run_completed(caller, first, deployment_jobs=[job])
        await publish_event(stack, w.RUN_COMPLETED, ended)
        await _wait_handled(stack, ended.message_id)
        kept = await _get(caller, first["id"])
        assert (kept["status"], kept["status_message"]) == ("approved", "approved; deployment starting")
        assert not [m for m in completions.messages if _gate_completion(second)(_body(m))]
        await _ended(stack, c.PROMOTION_STARTED, first, (d.JOB_STARTED, job_started(caller, first, job)))
        assert not [m for m in completions.messages if _gate_completion(second)(_body(m))]
        await _ended(
            stack, c.PROMOTION_COMPLETED, first, (d.JOB_COMPLETED, job_completed(caller, first, job, "succeeded"))
        )
        released = await first_match(completions, _gate_completion(second), timeout=20)
    assert released["status"] == "succeeded"
    assert (await _get(caller, first["id"]))["status"] == "deployed"


async def _wait_handled(stack: Stack, message_id: uuid.UUID) -> None:
    """Until the promotion service recorded the event as handled (its inbox row)."""
    for _ in range(200):
        async with stack.promotion.runtime.pool.acquire() as conn:
            if await conn.fetchval("SELECT count(*) FROM inbox WHERE message_id = $1", message_id):
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the promotion service did not handle event {message_id}")


async def test_a_freeze_at_deploy_start_holds_the_deployment_until_the_window_goes(
    caller: Caller, stack: Stack
) -> None:
    dev = await _environment(caller, "dev", 0)
    first_release = await caller.ready_release("first")
    second_release = await caller.ready_release("second")
    async with collect_messages(stack.nats.jetstream(), stack.wire(w.COMPLETE_STEP)) as completions:
        first = await _approved(caller, first_release, dev)
        second = await _approved(caller, second_release, dev)
        now = datetime.now(UTC)
        window = await caller.command(
            c.ADD_FREEZE_WINDOW,
            c.AddFreezeWindow,
            environment_id=dev["id"],
            window={
                "kind": "deny",
                "start": now - timedelta(hours=1),
                "end": now + timedelta(hours=6),
                "reason": "release freeze",
            },
        )
        assert window.ok, window.error
        job = uuid.uuid4()
        await _ended(
            stack, c.PROMOTION_COMPLETED, first, (d.JOB_COMPLETED, job_completed(caller, first, job, "succeeded"))
        )
        # The second one is next, but the re-check of the time windows at deploy start finds dev frozen.
        waiting = await _get(caller, second["id"])
        assert waiting["status"] == "approved"
        assert waiting["status_message"].startswith("approved; the deployment waits: release freeze (until ")
        assert waiting["next_evaluation_at"] is not None
        assert not [m for m in completions.messages if _gate_completion(second)(_body(m))]

        removed = await caller.command(
            c.REMOVE_FREEZE_WINDOW, c.RemoveFreezeWindow, environment_id=dev["id"], window_id=window.data["id"]
        )
        assert removed.ok, removed.error
        released = await first_match(completions, _gate_completion(second), timeout=20)
    assert released["status"] == "succeeded"
    after = await _get(caller, second["id"])
    assert (after["status_message"], after["next_evaluation_at"]) == ("approved; deployment starting", None)
