"""Restart safety: a run survives the workflow service stopping mid-run, and no step is dispatched twice."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime

from stella.contracts import workflow as c
from stella.contracts.streams import COMMANDS

from .conftest import Deployment, Harness, read_stream


async def test_a_result_sent_while_the_service_is_down_finishes_the_run_after_a_restart(
    harness: Harness, deployment: Deployment
) -> None:
    [first] = deployment.apps
    promotion = uuid.uuid4()
    inputs = {
        "promotion_id": str(promotion),
        "release_id": str(uuid.uuid4()),
        "environment_id": str(uuid.uuid4()),
        "requested_by": str(uuid.uuid4()),
        "approval_required": True,
        "required_approvals": 1,
        "require_sod": False,
        "approver_groups": [],
        "approval_timeout_s": None,
    }
    run_id = (await harness.start_run("standard-promotion", template_version=1, subject_id=promotion, inputs=inputs))[
        "id"
    ]
    await harness.complete(await harness.dispatch(run_id, "gates"), outputs={"result": "allow"})
    approval = await harness.dispatch(run_id, "approval")

    await first.stop()
    decision = harness.result(approval, outputs={"decision": "granted"})
    await harness.client.send(c.COMPLETE_STEP, decision)
    # Nobody answers while the service is down; the result waits in the commands stream.
    unanswered = await harness.query(c.GET_RUN, c.GetRun, run_id=run_id)
    assert unanswered.error.code == "SYS_UNAVAILABLE"
    stored = await read_stream(harness.nats, harness.names, COMMANDS, c.COMPLETE_STEP)
    assert str(decision.message_id) in {payload["message_id"] for _, payload in stored}

    await deployment.start()
    evidence = await harness.dispatch(run_id, "evidence")
    assert evidence.inputs["steps"]["approval"]["outputs"] == {"decision": "granted"}
    await harness.complete(evidence, outputs={"packet_id": "p-9"})

    subject, _ = await harness.finished(run_id)
    assert subject == c.RUN_COMPLETED
    run = await harness.get_run(run_id)
    assert [(s["node_id"], s["status"], s["attempt_number"]) for s in run["steps"]] == [
        ("gates", "succeeded", 1),
        ("approval", "succeeded", 1),
        ("evidence", "succeeded", 1),
    ]
    dispatched = await harness.stored_dispatches()
    assert Counter((s.node_id, s.attempt) for s in dispatched) == {
        ("gates", 1): 1,
        ("approval", 1): 1,
        ("evidence", 1): 1,
    }
    assert len(harness.events_of(c.RUN_COMPLETED, run_id)) == 1


async def test_a_timer_that_fell_due_while_the_service_was_down_fires_on_restart(
    harness: Harness, deployment: Deployment
) -> None:
    [first] = deployment.apps
    saved = await harness.save_template(
        "cooldown",
        [{"id": "pause", "type": "wait", "config": {"seconds": 0.3}}, {"id": "check", "type": "gate"}],
        [("pause", "check")],
    )
    assert saved.ok, saved.error
    run = await harness.start_run("cooldown")
    await first.stop()
    due = datetime.fromisoformat(run["steps"][0]["started_at"]).timestamp() + 0.3
    await asyncio.sleep(max(0.0, due - datetime.now(UTC).timestamp()) + 0.2)  # let the timer pass while down
    assert harness.dispatched(run["id"]) == []

    await deployment.start()
    check = await harness.dispatch(run["id"], "check")
    await harness.complete(check)

    subject, _ = await harness.finished(run["id"])
    assert subject == c.RUN_COMPLETED
    assert Counter((s.node_id, s.attempt) for s in await harness.stored_dispatches()) == {("check", 1): 1}


async def test_a_stopped_replica_leaves_its_runs_to_the_others(harness: Harness, deployment: Deployment) -> None:
    [first] = deployment.apps
    await deployment.start()
    saved = await harness.save_template(
        "chain", [{"id": f"s{i}", "type": "gate"} for i in range(4)], [(f"s{i}", f"s{i + 1}") for i in range(3)]
    )
    assert saved.ok, saved.error
    run_id = (await harness.start_run("chain"))["id"]
    await harness.complete(await harness.dispatch(run_id, "s0"))
    await harness.complete(await harness.dispatch(run_id, "s1"))

    await first.stop()
    await harness.complete(await harness.dispatch(run_id, "s2"))
    await harness.complete(await harness.dispatch(run_id, "s3"))

    subject, _ = await harness.finished(run_id)
    assert subject == c.RUN_COMPLETED
    assert Counter((s.node_id, s.attempt) for s in await harness.stored_dispatches()) == {
        (f"s{i}", 1): 1 for i in range(4)
    }
