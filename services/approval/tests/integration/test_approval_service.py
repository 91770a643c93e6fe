"""The approval service over real NATS and Postgres, driven as the workflow and the gateway drive it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from stella.contracts import approval as c
from stella.contracts.workflow import COMPLETE_STEP, ExecuteStep
from stella.testing.messaging import collect_messages

from .conftest import Caller, Harness, payload

APPROVE = ["promotion:read", "promotion:approve"]


class Fixture:
    """Ids of one promotion and the people around it."""

    def __init__(self) -> None:
        self.promotion = uuid.uuid4()
        self.environment = uuid.uuid4()
        self.requester = uuid.uuid4()
        self.alice = uuid.uuid4()
        self.bob = uuid.uuid4()
        self.carol = uuid.uuid4()


async def open_request(caller: Caller, f: Fixture, **options: Any) -> tuple[ExecuteStep, dict[str, Any]]:
    step = caller.approval_step(f.promotion, requested_by=f.requester, environment_id=f.environment, **options)
    reply = await caller.client.command(c.REQUEST_APPROVALS, step)
    assert reply.ok, reply.error
    return step, reply.data


async def vote(
    caller: Caller,
    f: Fixture,
    who: uuid.UUID,
    action: str = "approved",
    *,
    permissions: list[str] = APPROVE,
    groups: list[str] | None = None,
    comment: str = "",
) -> Any:
    return await caller.command(
        c.CAST_VOTE,
        c.CastVote,
        actor_id=who,
        promotion_id=f.promotion,
        action=action,
        comment=comment,
        permissions=permissions,
        groups=groups or [],
    )


def step_of(step: ExecuteStep) -> dict[str, Any]:
    return {"run_id": str(step.run_id), "node_id": step.node_id, "attempt": step.attempt}


async def test_the_workflow_step_opens_a_pending_request_that_names_the_step(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    step = caller.approval_step(
        f.promotion, requested_by=f.requester, environment_id=f.environment, required=2, groups=["sre", "leads"]
    )

    async with collect_messages(harness.nats, harness.wire(c.APPROVAL_REQUESTED)) as requested:
        # The workflow sends the step from its outbox: fire and forget, no reply expected.
        await caller.client.send(c.REQUEST_APPROVALS, step)
        [event] = await requested.wait(1)

    view = payload(event)["request"]
    assert view == {
        "promotion_id": str(f.promotion),
        "environment_id": str(f.environment),
        "requester_id": str(f.requester),
        "required": 2,
        "require_sod": True,
        "approver_groups": ["leads", "sre"],
        "status": "pending",
        "requested_at": harness.clock.now.isoformat().replace("+00:00", "Z"),
        "expires_at": (harness.clock.now + timedelta(days=7)).isoformat().replace("+00:00", "Z"),
        "decided_at": None,
        "votes": [],
        "step": step_of(step),
    }
    assert payload(event)["correlation_id"] == str(step.correlation_id)
    read = await caller.query(c.GET_APPROVALS, c.GetApprovals, promotion_id=f.promotion)
    assert read.ok, read.error
    assert read.data == view


async def test_n_distinct_approvers_grant_and_each_event_is_published_once(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    step, _ = await open_request(caller, f, required=2)

    async with collect_messages(harness.nats, harness.wire(c.APPROVAL_GRANTED)) as granted:
        first = await vote(caller, f, f.alice, comment="looks good")
        assert first.ok, first.error
        assert first.data["status"] == "pending"
        assert [v["approver_id"] for v in first.data["votes"]] == [str(f.alice)]

        second = await vote(caller, f, f.bob)
        assert second.ok, second.error
        [event] = await granted.wait(1)

    assert second.data["status"] == "granted"
    assert second.data["decided_at"] is not None
    assert [(v["approver_id"], v["action"], v["comment"]) for v in second.data["votes"]] == [
        (str(f.alice), "approved", "looks good"),
        (str(f.bob), "approved", ""),
    ]
    assert payload(event)["request"] == second.data
    assert payload(event)["request"]["step"] == step_of(step)
    assert await harness.published_counts() == {c.APPROVAL_REQUESTED: 1, c.VOTE_CAST: 2, c.APPROVAL_GRANTED: 1}


async def test_the_requester_cannot_approve_under_sod_and_nothing_is_recorded(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    await open_request(caller, f, required=1, require_sod=True)
    before = await harness.table_counts()

    reply = await vote(caller, f, f.requester)

    assert not reply.ok
    assert (reply.error.code, reply.error.status) == ("PROM_SOD_VIOLATION", 422)
    assert str(f.requester) in reply.error.detail
    assert await harness.table_counts() == before
    read = await caller.query(c.GET_APPROVALS, c.GetApprovals, promotion_id=f.promotion)
    assert (read.data["status"], read.data["votes"]) == ("pending", [])
    assert await harness.published_counts() == {c.APPROVAL_REQUESTED: 1}


async def test_the_requester_may_approve_when_sod_is_off(caller: Caller) -> None:
    f = Fixture()
    await open_request(caller, f, required=1, require_sod=False)

    reply = await vote(caller, f, f.requester)

    assert reply.ok, reply.error
    assert reply.data["status"] == "granted"


async def test_a_voter_without_the_permission_or_outside_the_groups_is_refused(
    caller: Caller, harness: Harness
) -> None:
    f = Fixture()
    await open_request(caller, f, required=1, groups=["sre"])
    before = await harness.table_counts()

    viewer = await vote(caller, f, f.alice, permissions=["promotion:read"], groups=["sre"])
    outsider = await vote(caller, f, f.bob, groups=["developers"])
    outsider_rejects = await vote(caller, f, f.bob, "rejected", groups=["developers"])

    for reply in (viewer, outsider, outsider_rejects):
        assert not reply.ok
        assert (reply.error.code, reply.error.status) == ("PROM_APPROVER_NOT_ELIGIBLE", 403)
    assert "promotion:approve" in viewer.error.detail
    assert "sre" in outsider.error.detail
    assert await harness.table_counts() == before
    eligible = await vote(caller, f, f.carol, groups=["developers", "sre"])
    assert eligible.data["status"] == "granted"


async def test_an_eligible_rejection_denies(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    step, _ = await open_request(caller, f, required=2)

    async with collect_messages(harness.nats, harness.wire(c.APPROVAL_DENIED)) as denied:
        assert (await vote(caller, f, f.alice)).ok
        reply = await vote(caller, f, f.bob, "rejected", comment="CVE-2025-1 unpatched")
        [event] = await denied.wait(1)

    assert reply.ok, reply.error
    assert reply.data["status"] == "denied"
    view = payload(event)["request"]
    assert view["status"] == "denied"
    assert view["step"] == step_of(step)
    assert [(v["approver_id"], v["action"]) for v in view["votes"]] == [
        (str(f.alice), "approved"),
        (str(f.bob), "rejected"),
    ]
    assert await harness.published_counts() == {c.APPROVAL_REQUESTED: 1, c.VOTE_CAST: 2, c.APPROVAL_DENIED: 1}


async def test_the_same_vote_twice_is_409_and_changes_nothing(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    await open_request(caller, f, required=2)
    assert (await vote(caller, f, f.alice)).ok
    before = await harness.table_counts()

    again = await vote(caller, f, f.alice, comment="second click")

    assert not again.ok
    assert (again.error.code, again.error.status) == ("PROM_ALREADY_VOTED", 409)
    assert await harness.table_counts() == before
    read = await caller.query(c.GET_APPROVALS, c.GetApprovals, promotion_id=f.promotion)
    assert (read.data["status"], len(read.data["votes"]), read.data["votes"][0]["comment"]) == ("pending", 1, "")


async def test_a_redelivered_vote_returns_its_first_answer(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    await open_request(caller, f, required=2)
    cast = c.CastVote(
        tenant_id=caller.tenant_id,
        correlation_id=uuid.uuid4(),
        actor_id=f.alice,
        promotion_id=f.promotion,
        action=c.VoteAction.APPROVED,
        permissions=APPROVE,
    )

    first = await caller.client.command(c.CAST_VOTE, cast)
    # The stream drops a re-published duplicate, so a redelivery reaches the handler only from JetStream
    # itself (an ack lost in a crash); hand the same message to the handler as that redelivery would.
    assert harness.app.handlers is not None
    second = await harness.app.handlers.cast_vote(cast)

    assert first.ok, first.error
    assert second == first
    assert await harness.published_counts() == {c.APPROVAL_REQUESTED: 1, c.VOTE_CAST: 1}


async def test_changing_a_vote_is_409(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    await open_request(caller, f, required=2)
    assert (await vote(caller, f, f.alice)).ok
    before = await harness.table_counts()

    changed = await vote(caller, f, f.alice, "rejected")

    assert not changed.ok
    assert (changed.error.code, changed.error.status) == ("PROM_VOTE_ALREADY_CAST", 409)
    assert await harness.table_counts() == before


async def test_a_vote_after_the_decision_is_409(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    await open_request(caller, f, required=1)
    assert (await vote(caller, f, f.alice, "rejected")).data["status"] == "denied"
    before = await harness.table_counts()

    late = await vote(caller, f, f.bob)

    assert not late.ok
    assert (late.error.code, late.error.status) == ("PROM_APPROVAL_NOT_PENDING", 409)
    assert await harness.table_counts() == before


async def test_unknown_promotion_and_another_tenant_get_404(caller: Caller) -> None:
    f = Fixture()
    await open_request(caller, f, required=1)
    stranger = caller.other_tenant()

    missing = await caller.query(c.GET_APPROVALS, c.GetApprovals, promotion_id=uuid.uuid4())
    foreign_read = await stranger.query(c.GET_APPROVALS, c.GetApprovals, promotion_id=f.promotion)
    foreign_vote = await vote(stranger, f, f.alice)

    for reply in (missing, foreign_read, foreign_vote):
        assert not reply.ok
        assert (reply.error.code, reply.error.status) == ("PROM_APPROVAL_NOT_FOUND", 404)
    read = await caller.query(c.GET_APPROVALS, c.GetApprovals, promotion_id=f.promotion)
    assert read.data["votes"] == []


async def test_a_request_expires_at_its_timeout_and_takes_no_more_votes(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    step, opened = await open_request(caller, f, required=2)
    assert (await vote(caller, f, f.alice)).ok

    async with collect_messages(harness.nats, harness.wire(c.APPROVAL_DENIED)) as denied:
        harness.clock.advance(timedelta(days=7))
        assert harness.app.expiry is not None
        harness.app.expiry.wake()
        [event] = await denied.wait(1)

    view = payload(event)["request"]
    assert view["status"] == "expired"
    assert view["decided_at"] == opened["expires_at"]
    assert view["step"] == step_of(step)
    assert [v["approver_id"] for v in view["votes"]] == [str(f.alice)]
    assert payload(event)["correlation_id"] == str(step.correlation_id)
    late = await vote(caller, f, f.bob)
    assert (late.error.code, late.error.status) == ("PROM_APPROVAL_EXPIRED", 409)
    assert await harness.published_counts() == {c.APPROVAL_REQUESTED: 1, c.VOTE_CAST: 1, c.APPROVAL_DENIED: 1}


async def test_the_timer_expires_only_what_is_due(caller: Caller, harness: Harness) -> None:
    early, late = Fixture(), Fixture()
    await open_request(caller, early, required=1)
    harness.clock.advance(timedelta(days=1))
    await open_request(caller, late, required=1)
    assert harness.app.handlers is not None

    expired = await harness.app.handlers.expire_due(harness.clock.now + timedelta(days=6))

    assert expired == 1
    statuses = [
        (await caller.query(c.GET_APPROVALS, c.GetApprovals, promotion_id=p.promotion)).data["status"]
        for p in (early, late)
    ]
    assert statuses == ["expired", "pending"]
    assert await harness.app.handlers.next_expiry() == harness.clock.now + timedelta(days=7)


async def test_a_vote_past_the_timeout_is_refused_before_the_timer_runs(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    await open_request(caller, f, required=1)
    harness.clock.advance(timedelta(days=7, seconds=1))

    late = await vote(caller, f, f.alice)

    assert (late.error.code, late.error.status) == ("PROM_APPROVAL_EXPIRED", 409)


async def test_cancelling_withdraws_the_request(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    step, _ = await open_request(caller, f, required=2)
    assert (await vote(caller, f, f.alice)).ok

    async with collect_messages(harness.nats, harness.wire(c.APPROVAL_DENIED)) as denied:
        reply = await caller.command(c.CANCEL_APPROVALS, c.CancelApprovals, promotion_id=f.promotion)
        [event] = await denied.wait(1)

    assert reply.ok, reply.error
    assert reply.data["status"] == "cancelled"
    assert payload(event)["request"]["status"] == "cancelled"
    assert payload(event)["request"]["step"] == step_of(step)
    late = await vote(caller, f, f.bob)
    assert (late.error.code, late.error.status) == ("PROM_APPROVAL_NOT_PENDING", 409)
    again = await caller.command(c.CANCEL_APPROVALS, c.CancelApprovals, promotion_id=f.promotion)
    assert again.ok
    assert again.data["status"] == "cancelled"
    assert await harness.published_counts() == {c.APPROVAL_REQUESTED: 1, c.VOTE_CAST: 1, c.APPROVAL_DENIED: 1}


async def test_cancelling_keeps_a_decided_outcome(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    await open_request(caller, f, required=1)
    assert (await vote(caller, f, f.alice)).data["status"] == "granted"

    reply = await caller.command(c.CANCEL_APPROVALS, c.CancelApprovals, promotion_id=f.promotion)

    assert reply.data["status"] == "granted"
    assert await harness.published_counts() == {c.APPROVAL_REQUESTED: 1, c.VOTE_CAST: 1, c.APPROVAL_GRANTED: 1}


async def test_a_cancellation_that_overtakes_the_step_opens_the_request_withdrawn(
    caller: Caller, harness: Harness
) -> None:
    f = Fixture()

    cancelled = await caller.command(c.CANCEL_APPROVALS, c.CancelApprovals, promotion_id=f.promotion)
    _, opened = await open_request(caller, f, required=2)

    assert cancelled.ok, cancelled.error
    assert cancelled.data is None
    assert opened["status"] == "cancelled"
    late = await vote(caller, f, f.alice)
    assert late.error.code == "PROM_APPROVAL_NOT_PENDING"
    assert await harness.published_counts() == {c.APPROVAL_REQUESTED: 1, c.APPROVAL_DENIED: 1}


async def test_opening_twice_is_idempotent(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    step, first = await open_request(caller, f, required=2)

    assert harness.app.handlers is not None
    redelivered = await harness.app.handlers.request_approvals(step)  # as a JetStream redelivery would
    same_step_again = await caller.client.command(
        c.REQUEST_APPROVALS, step.model_copy(update={"message_id": uuid.uuid4()})
    )

    assert redelivered.data == first
    assert same_step_again.data == first
    assert (await harness.table_counts())["approval_requests"] == 1
    assert await harness.published_counts() == {c.APPROVAL_REQUESTED: 1}


async def test_a_later_attempt_of_the_step_takes_over_the_request(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    first, _ = await open_request(caller, f, required=1)
    retry = caller.approval_step(
        f.promotion, requested_by=f.requester, environment_id=f.environment, run_id=first.run_id, attempt=2
    )

    taken = await caller.client.command(c.REQUEST_APPROVALS, retry)
    assert taken.data["step"] == step_of(retry)
    async with collect_messages(harness.nats, harness.wire(c.APPROVAL_GRANTED)) as granted:
        assert (await vote(caller, f, f.alice)).ok
        [event] = await granted.wait(1)
    assert payload(event)["request"]["step"] == step_of(retry)

    # An attempt arriving after the decision is told the decision again, for itself.
    third = retry.model_copy(update={"message_id": uuid.uuid4(), "attempt": 3})
    async with collect_messages(harness.nats, harness.wire(c.APPROVAL_GRANTED)) as regranted:
        await caller.client.command(c.REQUEST_APPROVALS, third)
        [event] = await regranted.wait(1)
    assert payload(event)["request"]["step"] == step_of(third)
    # An older attempt delivered late does not take the request back.
    stale = await caller.client.command(c.REQUEST_APPROVALS, retry.model_copy(update={"message_id": uuid.uuid4()}))
    assert stale.data["step"] == step_of(third)
    assert await harness.published_counts() == {c.APPROVAL_REQUESTED: 1, c.VOTE_CAST: 1, c.APPROVAL_GRANTED: 2}


async def test_no_required_approval_is_granted_at_once(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    step = caller.approval_step(f.promotion, requested_by=f.requester, environment_id=f.environment, required=0)

    async with collect_messages(harness.nats, harness.wire(c.APPROVAL_GRANTED)) as granted:
        reply = await caller.client.command(c.REQUEST_APPROVALS, step)
        [event] = await granted.wait(1)

    assert reply.data["status"] == "granted"
    assert payload(event)["request"]["step"] == step_of(step)
    assert await harness.published_counts() == {c.APPROVAL_REQUESTED: 1, c.APPROVAL_GRANTED: 1}
    assert await harness.app.handlers.next_expiry() is None


async def test_invalid_step_inputs_fail_the_step_and_open_nothing(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    step = caller.approval_step(f.promotion, requested_by=f.requester, environment_id=f.environment)
    broken = step.model_copy(
        update={"inputs": {**step.inputs, "inputs": {**step.inputs["inputs"], "required_approvals": -1}}}
    )

    async with collect_messages(harness.nats, harness.wire(COMPLETE_STEP)) as completions:
        reply = await caller.client.command(c.REQUEST_APPROVALS, broken)
        [completion] = await completions.wait(1)

    assert reply.data["error"]["code"] == "PROM_INVALID_APPROVAL_REQUEST"
    body = payload(completion)
    assert (body["run_id"], body["node_id"], body["attempt"], body["status"]) == (
        str(step.run_id),
        "approval",
        1,
        "failed",
    )
    assert "required_approvals" in body["error"]
    assert (await harness.table_counts())["approval_requests"] == 0


async def test_concurrent_votes_are_all_counted(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    approvers = [uuid.uuid4() for _ in range(8)]
    await open_request(caller, f, required=len(approvers))

    replies = await asyncio.gather(*(vote(caller, f, who) for who in approvers))

    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    assert sorted(len(r.data["votes"]) for r in replies) == list(range(1, len(approvers) + 1))
    assert [r.data["status"] for r in replies].count("granted") == 1
    read = await caller.query(c.GET_APPROVALS, c.GetApprovals, promotion_id=f.promotion)
    assert read.data["status"] == "granted"
    assert sorted(v["approver_id"] for v in read.data["votes"]) == sorted(str(a) for a in approvers)
    assert await harness.published_counts() == {
        c.APPROVAL_REQUESTED: 1,
        c.VOTE_CAST: len(approvers),
        c.APPROVAL_GRANTED: 1,
    }


async def test_concurrent_opposite_votes_of_one_principal_record_one(caller: Caller, harness: Harness) -> None:
    f = Fixture()
    await open_request(caller, f, required=2)

    replies = await asyncio.gather(vote(caller, f, f.alice, "approved"), vote(caller, f, f.alice, "rejected"))

    assert sorted(r.ok for r in replies) == [False, True]
    [refused] = [r for r in replies if not r.ok]
    assert refused.error.code == "PROM_VOTE_ALREADY_CAST"
    assert (await harness.table_counts())["approval_votes"] == 1


async def test_a_vote_keeps_the_name_and_display_name_its_command_carries(caller: Caller) -> None:
    f = Fixture()
    await open_request(caller, f, required=2)
    named = c.CastVote(
        tenant_id=caller.tenant_id,
        correlation_id=uuid.uuid4(),
        actor_id=f.alice,
        actor_name="alice",
        actor_display_name="Alice Example",
        promotion_id=f.promotion,
        action=c.VoteAction.APPROVED,
        comment="ship it",
        permissions=APPROVE,
    )
    reply = await caller.client.command(c.CAST_VOTE, named)
    assert reply.ok, reply.error
    assert (await vote(caller, f, f.bob)).ok  # a command without names (sent by an older gateway)

    read = await caller.query(c.GET_APPROVALS, c.GetApprovals, promotion_id=f.promotion)
    assert [(v["approver_id"], v["approver_name"], v["approver_display_name"]) for v in read.data["votes"]] == [
        (str(f.alice), "alice", "Alice Example"),
        (str(f.bob), None, None),
    ]
