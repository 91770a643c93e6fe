"""The evidence service over real NATS and Postgres: collection, redelivery, immutability, verification, export."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY

from stella.contracts.approval import GET_APPROVALS
from stella.contracts.canonical import content_hash
from stella.contracts.evidence import (
    COLLECT_EVIDENCE,
    COLLECT_PACKET,
    EXPORT_BUNDLE,
    GET_PACKET,
    LIST_KEYS,
    LIST_PACKETS,
    PACKET_CREATED,
    VERIFY_PACKET,
    CollectEvidence,
    ExportBundle,
    ExportBundleView,
    GetPacket,
    ListKeys,
    ListPackets,
    PacketCreated,
    VerifyPacket,
)
from stella.contracts.promotion import (
    GET_DECISION,
    GET_PROMOTION,
    PROMOTION_APPROVED,
    PROMOTION_REJECTED,
    PromotionChanged,
    PromotionStatus,
    PromotionView,
)
from stella.contracts.streams import COMMANDS
from stella.contracts.workflow import COMPLETE_STEP, CompleteStep, StepStatus
from stella.evidence.app import EvidenceApp, create_app
from stella.evidence.chain import verify_chain
from stella.evidence.keys import PublicKey, PublicKeyRing
from stella.evidence.packet import verify_packet_envelope
from stella.evidence.settings import Settings
from stella.evidence.signing import KeyRetired
from stella.testing.messaging import MessageCollector, collect_messages

from .conftest import (
    Caller,
    Upstream,
    approval_view,
    decision_inputs,
    eventually,
    execute_step,
    packet_content,
    promotion_view,
    published_keys,
    verify_offline,
)


async def _fetchval(app: EvidenceApp, sql: str, *args: object) -> object:
    async with app.runtime.pool.acquire() as conn:
        return await conn.fetchval(sql, *args)


async def _completion(collector: MessageCollector, run_id: uuid.UUID, timeout: float = 20.0) -> CompleteStep:
    """The ``CompleteStep`` of ``run_id`` among the collected messages, waiting for it to arrive."""
    seen = 0
    async with asyncio.timeout(timeout):
        while True:
            messages = await collector.wait(seen + 1, timeout)
            for msg in messages[seen:]:
                complete = CompleteStep.model_validate_json(msg.data)
                if complete.run_id == run_id:
                    return complete
            seen = len(messages)


async def _keyring(caller: Caller) -> PublicKeyRing:
    keys = await caller.query(LIST_KEYS, ListKeys)
    assert keys.ok, keys.error
    # Keys are answered as every list is, in a single page.
    assert keys.data["next_page_token"] is None
    return PublicKeyRing(PublicKey.from_pem(k["public_key_pem"].encode()) for k in keys.data["items"])


async def _collect(caller: Caller, index: int, **fields: object) -> dict:
    fields.setdefault("packet_type", "deployment")
    fields.setdefault("content", packet_content(index))
    reply = await caller.command(COLLECT_PACKET, CollectEvidence, **fields)
    assert reply.ok, reply.error
    return reply.data


def _faults(error_type: str) -> float:
    return REGISTRY.get_sample_value("stella_error_total", {"error_type": error_type}) or 0.0


async def test_an_evidence_step_stores_one_signed_packet_and_completes_the_step(
    caller: Caller, upstream: Upstream, evidence_app: EvidenceApp, nats: Client
) -> None:
    names = evidence_app.runtime.names
    js = nats.jetstream()
    promotion_id, run_id = uuid.uuid4(), uuid.uuid4()
    approvers = [uuid.uuid4(), uuid.uuid4()]
    promotion = promotion_view(promotion_id, approvers=approvers, run_id=run_id)
    upstream.promotions[promotion_id] = [promotion]
    upstream.approvals[promotion_id] = approval_view(promotion_id, approvers)
    await upstream.start()
    step = execute_step(caller.tenant_id, promotion_id, run_id=run_id)

    async with (
        collect_messages(js, names.subject(COMPLETE_STEP)) as completions,
        collect_messages(js, names.subject(PACKET_CREATED)) as created,
    ):
        await caller.client.send(COLLECT_EVIDENCE, step)
        complete = await _completion(completions, run_id)
        [event] = await created.wait(1)
    assert (complete.node_id, complete.attempt, complete.status) == ("evidence", 1, StepStatus.SUCCEEDED)
    assert (complete.causation_id, complete.correlation_id, complete.tenant_id) == (
        step.message_id,
        step.correlation_id,
        caller.tenant_id,
    )
    packet_id = complete.outputs["packet_id"]
    packet_created = PacketCreated.model_validate_json(event.data)
    assert (str(packet_created.packet_id), packet_created.promotion_id) == (packet_id, promotion_id)

    read = await caller.query(GET_PACKET, GetPacket, packet_id=packet_id)
    assert read.ok, read.error
    view = read.data
    assert (view["packet_type"], view["promotion_id"], view["sequence"], view["previous_hash"]) == (
        "release_decision",
        str(promotion_id),
        1,
        None,
    )
    assert view["content_hash"] == complete.outputs["content_hash"]
    content = view["content"]
    assert {(c["name"], c["digest"]) for c in content["release"]["components"]} == {
        (c["name"], c["digest"]) for c in promotion.release_components
    }
    assert content["environment"]["name"] == "prod"
    # Principals by id and by the names they had when they acted, carried by the promotion and approval views.
    requester = content["actors"]["requester"]
    assert (requester["id"], requester["name"], requester["display_name"]) == (
        str(promotion.requested_by),
        "rita",
        "Rita Requester",
    )
    assert [
        (a["id"], a["name"], a["display_name"], a["action"], a["comment"]) for a in content["actors"]["approvers"]
    ] == [
        (str(a), f"approver-{i}", f"Approver {i}", "approved", f"reviewed the diff ({i})")
        for i, a in enumerate(approvers)
    ]
    assert content["actors"]["approval"]["status"] == "granted"
    # The decision record, and what the gates saw: inputs_hash recomputes from the packet alone.
    assert promotion.decision_record is not None
    assert content["decision"] == {**promotion.decision_record, "inputs": decision_inputs(promotion_id)}
    clock_and_inputs = {"clock": content["decision"]["evaluated_at"], "inputs": content["decision"]["inputs"]}
    assert content_hash(clock_and_inputs) == content["decision"]["inputs_hash"]
    assert content["execution"]["workflow_run_id"] == str(run_id)

    # The envelope is a DSSE-signed in-toto statement that verifies with the published key alone.
    signed = verify_packet_envelope(view["envelope"], await _keyring(caller))
    assert (signed.content, signed.content_hash, str(signed.id)) == (content, view["content_hash"], packet_id)
    verification = await caller.query(VERIFY_PACKET, VerifyPacket, packet_id=packet_id)
    assert verification.data["valid"] is True
    assert all(verification.data["checks"].values()) and verification.data["findings"] == []

    # A lost ack redelivers the same message; a resend of the same attempt has a new message id. Neither
    # makes a second packet nor a second event or CompleteStep.
    again = await caller.redeliver(COLLECT_EVIDENCE, step)
    assert again.ok and again.data["packet_id"] == packet_id
    resent = await caller.redeliver(COLLECT_EVIDENCE, step.model_copy(update={"message_id": uuid.uuid4()}))
    assert resent.ok and resent.data["packet_id"] == packet_id
    assert await _fetchval(evidence_app, "SELECT count(*) FROM packets") == 1
    for subject in (COMPLETE_STEP, PACKET_CREATED):
        assert await _fetchval(evidence_app, "SELECT count(*) FROM outbox WHERE subject = $1", subject) == 1
    await eventually(lambda: _fetchval(evidence_app, "SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL"))
    info = await js.stream_info(names.stream(COMMANDS), subjects_filter=names.subject(COMPLETE_STEP))
    assert info.state.subjects == {names.subject(COMPLETE_STEP): 1}
    assert upstream.count(GET_APPROVALS) >= 1


async def test_an_evidence_step_executed_again_after_the_first_attempt_committed_yields_one_packet(
    caller: Caller, upstream: Upstream, evidence_app: EvidenceApp, nats: Client
) -> None:
    """Attempt 1 stored the packet but its completion never reached the workflow, which timed the attempt out
    and started attempt 2: the decision's packet is found, not signed a second time, and attempt 2 completes."""
    names = evidence_app.runtime.names
    promotion_id, run_id = uuid.uuid4(), uuid.uuid4()
    approvers = [uuid.uuid4()]
    upstream.promotions[promotion_id] = [promotion_view(promotion_id, approvers=approvers, run_id=run_id)]
    upstream.approvals[promotion_id] = approval_view(promotion_id, approvers)
    await upstream.start()
    async with collect_messages(nats.jetstream(), names.subject(COMPLETE_STEP)) as done:
        for attempt in (1, 2):
            step = execute_step(caller.tenant_id, promotion_id, run_id=run_id, attempt=attempt)
            reply = await caller.redeliver(COLLECT_EVIDENCE, step)  # answered once its transaction committed
            assert reply.ok, reply.error
        completions = [CompleteStep.model_validate_json(m.data) for m in await done.wait(2)]
    first, second = sorted((c for c in completions if c.run_id == run_id), key=lambda c: c.attempt)
    assert [(c.attempt, c.status) for c in completions] == [(1, StepStatus.SUCCEEDED), (2, StepStatus.SUCCEEDED)]
    assert second.outputs == first.outputs
    assert "already records this decision" in second.logs
    assert await _fetchval(evidence_app, "SELECT count(*) FROM packets") == 1
    assert await _fetchval(evidence_app, "SELECT count(*) FROM outbox WHERE subject = $1", PACKET_CREATED) == 1
    listed = await caller.query(LIST_PACKETS, ListPackets, promotion_id=promotion_id)
    assert [p["id"] for p in listed.data["items"]] == [first.outputs["packet_id"]]


async def test_a_decision_is_recorded_when_it_is_announced_and_the_evidence_step_completes_with_that_packet(
    caller: Caller, upstream: Upstream, evidence_app: EvidenceApp, nats: Client
) -> None:
    """The packet does not wait for the run's last step (behind the deployment): it is made from the
    promotion's ``promotion_approved`` / ``promotion_rejected`` event, and the step later finds it."""
    names = evidence_app.runtime.names
    js = nats.jetstream()
    approved_id, rejected_id, undecided_id, run_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    approvers = [uuid.uuid4()]
    approved = promotion_view(approved_id, approvers=approvers, run_id=run_id)
    rejected = promotion_view(rejected_id, status=PromotionStatus.REJECTED, result="deny")
    # A run that failed before its gates decided: nothing to record from the event.
    undecided = promotion_view(rejected_id, status=PromotionStatus.REJECTED).model_copy(
        update={"id": undecided_id, "decision_record": None}
    )
    upstream.promotions[approved_id] = [approved]
    upstream.promotions[rejected_id] = [rejected]
    upstream.approvals[approved_id] = approval_view(approved_id, approvers)
    await upstream.start()

    def announced(view: PromotionView) -> bytes:
        event = PromotionChanged(tenant_id=caller.tenant_id, correlation_id=uuid.uuid4(), promotion=view)
        return event.model_dump_json().encode()

    async with collect_messages(js, names.subject(PACKET_CREATED)) as created:
        await js.publish(names.subject(PROMOTION_APPROVED), announced(approved))
        await js.publish(names.subject(PROMOTION_REJECTED), announced(rejected))
        await js.publish(names.subject(PROMOTION_REJECTED), announced(undecided))
        packets = [PacketCreated.model_validate_json(m.data) for m in await created.wait(2)]
    by_promotion = {p.promotion_id: p for p in packets}
    assert set(by_promotion) == {approved_id, rejected_id}
    assert all(p.packet_type == "release_decision" for p in packets)
    content = (await caller.query(GET_PACKET, GetPacket, packet_id=by_promotion[approved_id].packet_id)).data["content"]
    assert content["decision"] == {**(approved.decision_record or {}), "inputs": decision_inputs(approved_id)}
    assert [a["id"] for a in content["actors"]["approvers"]] == [str(a) for a in approvers]
    assert content["execution"] == {
        "promotion_id": str(approved_id),
        "promotion_status": "approved",
        "workflow_run_id": str(run_id),
    }
    rejected_content = (await caller.query(GET_PACKET, GetPacket, packet_id=by_promotion[rejected_id].packet_id)).data[
        "content"
    ]
    assert rejected_content["execution"]["promotion_status"] == "rejected"

    # The run's evidence step, after the deployment: the promotion is deployed by now; the step completes with
    # the packet of the decision, reading neither its inputs nor its votes again.
    upstream.promotions[approved_id] = [approved.model_copy(update={"status": PromotionStatus.DEPLOYED})]
    decisions_read, votes_read = upstream.count(GET_DECISION), upstream.count(GET_APPROVALS)
    async with collect_messages(js, names.subject(COMPLETE_STEP)) as done:
        await caller.client.send(COLLECT_EVIDENCE, execute_step(caller.tenant_id, approved_id, run_id=run_id))
        complete = await _completion(done, run_id)
    assert complete.status is StepStatus.SUCCEEDED
    assert complete.outputs["packet_id"] == str(by_promotion[approved_id].packet_id)
    assert "already records this decision" in (complete.logs or "")
    assert (upstream.count(GET_DECISION), upstream.count(GET_APPROVALS)) == (decisions_read, votes_read)
    # The event again (a redelivery or a replay) records nothing more.
    await js.publish(names.subject(PROMOTION_APPROVED), announced(approved))
    await asyncio.sleep(0.5)
    assert await _fetchval(evidence_app, "SELECT count(*) FROM packets") == 2
    assert await _fetchval(evidence_app, "SELECT count(*) FROM outbox WHERE subject = $1", PACKET_CREATED) == 2


async def test_a_decision_announced_with_its_inputs_is_recorded_without_asking_for_them(
    caller: Caller, upstream: Upstream, evidence_app: EvidenceApp, nats: Client
) -> None:
    """An approval carrying the inputs its record hashed is recorded from the event alone; inputs that do not
    hash to the record are not taken (the decision is asked for, as for an event without them), nor are inputs
    holding what looks like a secret."""
    names = evidence_app.runtime.names
    js = nats.jetstream()
    carried_id, altered_id, secret_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    views = {pid: promotion_view(pid) for pid in (carried_id, altered_id, secret_id)}
    for pid, view in views.items():
        upstream.promotions[pid] = [view]
    await upstream.start()
    secret_inputs = {**decision_inputs(secret_id), "token": "s3cr3t"}
    secret_record = {
        **(views[secret_id].decision_record or {}),
        "inputs_hash": content_hash({"clock": "2026-03-02T10:00:01Z", "inputs": secret_inputs}),
    }
    views[secret_id] = views[secret_id].model_copy(update={"decision_record": secret_record})
    upstream.promotions[secret_id] = [views[secret_id]]
    carried = {
        carried_id: decision_inputs(carried_id),
        altered_id: {**decision_inputs(altered_id), "gates": []},  # not what the record hashed
        secret_id: secret_inputs,
    }

    async def content_of(pid: uuid.UUID, created: MessageCollector) -> dict[str, Any]:
        event = PromotionChanged(
            tenant_id=caller.tenant_id, correlation_id=uuid.uuid4(), promotion=views[pid], decision_inputs=carried[pid]
        )
        await js.publish(names.subject(PROMOTION_APPROVED), event.model_dump_json().encode())
        packets = [PacketCreated.model_validate_json(m.data) for m in await created.wait(len(created.messages) + 1)]
        [packet] = [p for p in packets if p.promotion_id == pid]
        return (await caller.query(GET_PACKET, GetPacket, packet_id=packet.packet_id)).data["content"]

    asked = upstream.count(GET_DECISION)
    async with collect_messages(js, names.subject(PACKET_CREATED)) as created:
        content = await content_of(carried_id, created)
        assert content["decision"] == {**(views[carried_id].decision_record or {}), "inputs": carried[carried_id]}
        assert upstream.count(GET_DECISION) == asked  # nothing asked
        # Inputs that are not the record's: the promotion service's answer is recorded instead.
        content = await content_of(altered_id, created)
        assert content["decision"]["inputs"] == decision_inputs(altered_id)
        assert upstream.count(GET_DECISION) == asked + 1
        # Inputs the record hashed but that hold a secret: the packet keeps the record without them.
        content = await content_of(secret_id, created)
        assert "inputs" not in content["decision"] and content["decision"] == secret_record
        assert upstream.count(GET_DECISION) == asked + 1


async def test_decisions_announced_together_are_appended_in_the_appenders_batches_once_each(
    caller: Caller, upstream: Upstream, evidence_app: EvidenceApp, nats: Client
) -> None:
    """Decision packets take the group commit of the other appends: each event's inbox row is claimed in the
    batch's transaction, and the same event delivered again appends nothing."""
    names = evidence_app.runtime.names
    js = nats.jetstream()
    assert evidence_app.handlers is not None
    stats = evidence_app.handlers.appender.stats
    before = stats.packets
    views = [promotion_view(uuid.uuid4()) for _ in range(12)]
    for view in views:
        upstream.promotions[view.id] = [view]
    await upstream.start()
    events = [PromotionChanged(tenant_id=caller.tenant_id, correlation_id=uuid.uuid4(), promotion=v) for v in views]
    async with collect_messages(js, names.subject(PACKET_CREATED)) as created:
        for event in events:
            await js.publish(names.subject(PROMOTION_APPROVED), event.model_dump_json().encode())
        packets = [PacketCreated.model_validate_json(m.data) for m in await created.wait(12)]
    assert sorted(str(p.promotion_id) for p in packets) == sorted(str(v.id) for v in views)
    assert [p.sequence for p in sorted(packets, key=lambda p: p.sequence)] == list(range(1, 13))
    assert stats.packets - before == 12  # every one through a batch, none alone
    consumer = "evidence-promotion-decisions"
    inbox = "SELECT count(*) FROM inbox WHERE consumer = $1 AND message_id = ANY($2::uuid[])"
    assert await _fetchval(evidence_app, inbox, consumer, [e.message_id for e in events]) == 12
    # The first event delivered again (past the stream's duplicate window): its inbox row drops it.
    await js.publish(
        names.subject(PROMOTION_APPROVED),
        events[0].model_dump_json().encode(),
        headers={"Nats-Msg-Id": f"{events[0].message_id}:again"},
    )
    await asyncio.sleep(0.5)
    assert await _fetchval(evidence_app, "SELECT count(*) FROM packets") == 12
    assert await _fetchval(evidence_app, "SELECT count(*) FROM outbox WHERE subject = $1", PACKET_CREATED) == 12
    assert stats.packets - before == 12


async def test_a_packet_given_with_a_source_key_is_stored_once_per_key(
    caller: Caller, evidence_app: EvidenceApp
) -> None:
    """A deployment task retried (a new command, the same fact) gets the packet its first attempt made."""
    job = uuid.uuid4()
    first = await _collect(caller, 1, source_key=f"{job}:succeeded")
    again = await _collect(caller, 1, source_key=f"{job}:succeeded")
    other = await _collect(caller, 1, source_key=f"{job}:rolled-back")
    assert again["id"] == first["id"] and other["id"] != first["id"]
    assert await _fetchval(evidence_app, "SELECT count(*) FROM packets") == 2
    with pytest.raises(ValueError, match="source_key"):
        await caller.command(
            COLLECT_PACKET, CollectEvidence, packet_type="deployment", content=packet_content(2), source_key="a b"
        )


async def test_an_undecided_promotion_is_retried_until_its_decision_is_made(
    caller: Caller, upstream: Upstream, evidence_app: EvidenceApp, nats: Client
) -> None:
    promotion_id, run_id = uuid.uuid4(), uuid.uuid4()
    pending = promotion_view(promotion_id, status=PromotionStatus.PENDING_APPROVAL, run_id=run_id)
    upstream.promotions[promotion_id] = [pending, pending, promotion_view(promotion_id, run_id=run_id)]
    await upstream.start()
    before = _faults("PromotionNotDecided")
    async with collect_messages(nats.jetstream(), evidence_app.runtime.names.subject(COMPLETE_STEP)) as done:
        await caller.client.send(COLLECT_EVIDENCE, execute_step(caller.tenant_id, promotion_id, run_id=run_id))
        complete = await _completion(done, run_id)
    assert complete.status is StepStatus.SUCCEEDED
    assert upstream.count(GET_PROMOTION) == 3
    assert _faults("PromotionNotDecided") - before == 2
    packet = await caller.query(GET_PACKET, GetPacket, packet_id=complete.outputs["packet_id"])
    assert packet.data["content"]["execution"]["promotion_status"] == "approved"
    assert await _fetchval(evidence_app, "SELECT count(*) FROM packets") == 1


async def test_upstream_services_down_delay_the_packet_and_never_store_partial_data(
    caller: Caller, upstream: Upstream, evidence_app: EvidenceApp, nats: Client
) -> None:
    promotion_id, run_id = uuid.uuid4(), uuid.uuid4()
    approvers = [uuid.uuid4()]
    upstream.promotions[promotion_id] = [promotion_view(promotion_id, approvers=approvers, run_id=run_id)]
    upstream.approvals[promotion_id] = approval_view(promotion_id, approvers)

    async def nothing_stored() -> None:
        assert await _fetchval(evidence_app, "SELECT count(*) FROM packets") == 0
        assert await _fetchval(evidence_app, "SELECT count(*) FROM outbox") == 0

    async def retried(since: float, times: int) -> None:
        await eventually(lambda: _faults("DependencyUnavailable") - since >= times)

    async with collect_messages(nats.jetstream(), evidence_app.runtime.names.subject(COMPLETE_STEP)) as done:
        # Both services down: no responder at all.
        before = _faults("DependencyUnavailable")
        await caller.client.send(COLLECT_EVIDENCE, execute_step(caller.tenant_id, promotion_id, run_id=run_id))
        await retried(before, 2)
        await nothing_stored()
        # The promotion service is back, the approval service hangs (answers nothing within the timeout).
        upstream.silent.add(GET_APPROVALS)
        await upstream.start()
        await eventually(lambda: upstream.count(GET_APPROVALS) >= 2)
        await nothing_stored()
        upstream.silent.clear()
        complete = await _completion(done, run_id)
    packet = await caller.query(GET_PACKET, GetPacket, packet_id=complete.outputs["packet_id"])
    assert [a["id"] for a in packet.data["content"]["actors"]["approvers"]] == [str(a) for a in approvers]
    assert await _fetchval(evidence_app, "SELECT count(*) FROM packets") == 1


async def test_a_promotion_rejected_at_the_gates_yields_its_packet_without_approvers(
    caller: Caller, upstream: Upstream, evidence_app: EvidenceApp, nats: Client
) -> None:
    promotion_id, run_id = uuid.uuid4(), uuid.uuid4()
    rejected = promotion_view(promotion_id, status=PromotionStatus.REJECTED, result="deny", run_id=run_id)
    upstream.promotions[promotion_id] = [rejected]
    await upstream.start()
    async with collect_messages(nats.jetstream(), evidence_app.runtime.names.subject(COMPLETE_STEP)) as done:
        await caller.client.send(COLLECT_EVIDENCE, execute_step(caller.tenant_id, promotion_id, run_id=run_id))
        complete = await _completion(done, run_id)
    assert complete.status is StepStatus.SUCCEEDED
    assert upstream.count(GET_APPROVALS) == 1  # asked, and no request was ever opened (404)
    content = (await caller.query(GET_PACKET, GetPacket, packet_id=complete.outputs["packet_id"])).data["content"]
    assert content["decision"]["result"] == "deny" and content["decision"]["reasons"] == ["GATE_FREEZE_ACTIVE"]
    assert content["actors"]["approvers"] == [] and "approval" not in content["actors"]
    assert content["execution"]["promotion_status"] == "rejected"


async def test_a_secret_in_the_evidence_fails_the_step_at_once_and_is_never_stored(
    caller: Caller, upstream: Upstream, evidence_app: EvidenceApp, nats: Client
) -> None:
    promotion_id = uuid.uuid4()
    run_id = uuid.uuid4()
    leaky = promotion_view(
        promotion_id, gate_details={"webhook": "https://bot:hunter2@hooks.example.com/x"}, run_id=run_id
    )
    upstream.promotions[promotion_id] = [leaky]
    await upstream.start()
    async with collect_messages(nats.jetstream(), evidence_app.runtime.names.subject(COMPLETE_STEP)) as done:
        await caller.client.send(COLLECT_EVIDENCE, execute_step(caller.tenant_id, promotion_id, run_id=run_id))
        complete = await _completion(done, run_id)
    assert complete.status is StepStatus.FAILED
    assert complete.error is not None
    assert "URL with a password" in complete.error and "$.decision.gates[0].details.webhook" in complete.error
    assert "hunter2" not in complete.error
    assert upstream.count(GET_PROMOTION) == 1
    assert await _fetchval(evidence_app, "SELECT count(*) FROM packets") == 0

    # Given directly: a secret is dead-lettered too (the caller hears it failed), bad content is a 422.
    secret = packet_content(1)
    secret["environment"]["api_token"] = "abc"
    refused = await caller.command(COLLECT_PACKET, CollectEvidence, packet_type="deployment", content=secret)
    assert (refused.error.code, refused.error.status) == ("SYS_COMMAND_FAILED", 500)
    assert "api_token" in refused.error.detail and "abc" not in refused.error.detail
    invalid = await caller.command(
        COLLECT_PACKET, CollectEvidence, packet_type="deployment", content={"release": {"components": []}}
    )
    assert (invalid.error.code, invalid.error.status) == ("VAL_EVIDENCE_CONTENT", 422)
    assert await _fetchval(evidence_app, "SELECT count(*) FROM packets") == 0


async def test_packets_are_append_only_even_for_the_services_own_connection(
    caller: Caller, evidence_app: EvidenceApp
) -> None:
    created = await _collect(caller, 1)
    statements = [
        "UPDATE packets SET content_hash = content_hash",
        "UPDATE packets SET packet_type = 'drift' WHERE false",
        "DELETE FROM packets",
        "DELETE FROM packets WHERE false",
        "TRUNCATE packets",
        "TRUNCATE packets CASCADE",
    ]
    async with evidence_app.runtime.pool.acquire() as conn:
        for sql in statements:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(sql)
        for sql in ("DELETE FROM keys", "TRUNCATE keys CASCADE", "UPDATE keys SET public_key_pem = 'x'"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
    read = await caller.query(GET_PACKET, GetPacket, packet_id=created["id"])
    assert read.data == created
    assert (await caller.query(VERIFY_PACKET, VerifyPacket, packet_id=created["id"])).data["valid"] is True


async def test_tampering_with_stored_rows_is_reported_precisely(
    caller: Caller, evidence_app: EvidenceApp, superuser: asyncpg.Connection
) -> None:
    packets = [await _collect(caller, i) for i in range(7)]
    by_sequence = {p["sequence"]: p for p in packets}
    assert sorted(by_sequence) == list(range(1, 8))
    edited = json.loads(json.dumps(by_sequence[2]["content"]))
    edited["release"]["components"][0]["digest"] = "sha256:" + "0" * 64
    envelope = by_sequence[3]["envelope"]
    signature = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    signature[10] ^= 0x01
    forged = {
        **envelope,
        "signatures": [{**envelope["signatures"][0], "sig": base64.b64encode(bytes(signature)).decode()}],
    }

    # An attacker with superuser rights must first switch the protection off.
    await superuser.execute("ALTER TABLE packets DISABLE TRIGGER packets_append_only")
    try:
        await superuser.execute("UPDATE packets SET content = $1::json WHERE sequence = 2", json.dumps(edited))
        await superuser.execute("UPDATE packets SET envelope = $1::json WHERE sequence = 3", json.dumps(forged))
        await superuser.execute("UPDATE packets SET content_hash = $1 WHERE sequence = 4", "sha256:" + "ab" * 32)
        await superuser.execute("DELETE FROM packets WHERE sequence = 6")
    finally:
        await superuser.execute("ALTER TABLE packets ENABLE TRIGGER packets_append_only")

    async def verify(sequence: int) -> dict:
        reply = await caller.query(VERIFY_PACKET, VerifyPacket, packet_id=by_sequence[sequence]["id"])
        assert reply.ok, reply.error
        return reply.data

    def failing(result: dict) -> set[str]:
        return {name for name, ok in result["checks"].items() if not ok}

    assert (await verify(1))["valid"] is True

    content_edit = await verify(2)
    assert content_edit["valid"] is False
    assert failing(content_edit) == {"content_hash", "matches_envelope"}
    assert any(
        f.startswith(f"packet 2 (id {by_sequence[2]['id']})") and "recomputed from the stored row" in f
        for f in content_edit["findings"]
    )
    assert any("stored content differ from the signed packet [record_mismatch]" in f for f in content_edit["findings"])

    bad_signature = await verify(3)
    assert failing(bad_signature) == {"signature", "signer"}
    assert any("[bad_signature]" in f for f in bad_signature["findings"])

    hash_edit = await verify(4)
    assert failing(hash_edit) == {"content_hash", "matches_envelope"}
    assert any("stored content_hash differ from the signed packet" in f for f in hash_edit["findings"])
    broken = await verify(5)
    assert failing(broken) == {"chain_link"}
    assert any(
        "[broken_link]" in f and f"does not match content_hash sha256:{'ab' * 32} of packet 4" in f
        for f in broken["findings"]
    )

    gap = await verify(7)
    assert failing(gap) == {"chain_link"}
    assert gap["findings"] == [
        f"packet 7 (id {by_sequence[7]['id']}): packet 6 is missing: the chain is broken before this packet [gap]"
    ]
    missing = await caller.query(VERIFY_PACKET, VerifyPacket, packet_id=by_sequence[6]["id"])
    assert (missing.error.code, missing.error.status) == ("RES_NOT_FOUND", 404)


async def test_concurrent_packets_of_one_tenant_get_contiguous_sequences(caller: Caller) -> None:
    other = caller.other_tenant()
    replies = await asyncio.gather(*(_collect(caller, i) for i in range(40)), *(_collect(other, i) for i in range(8)))
    mine, theirs = replies[:40], replies[40:]
    assert sorted(p["sequence"] for p in mine) == list(range(1, 41))
    assert sorted(p["sequence"] for p in theirs) == list(range(1, 9))
    page = await caller.query(LIST_PACKETS, ListPackets, page={"page_size": 500})
    assert [p["sequence"] for p in page.data["items"]] == list(range(1, 41))
    keyring = await _keyring(caller)
    chain = [verify_packet_envelope(p["envelope"], keyring) for p in page.data["items"]]
    assert verify_chain(chain, tenant_id=caller.tenant_id) == []
    created = [datetime.fromisoformat(p["created_at"]) for p in page.data["items"]]
    assert created == sorted(created)


async def test_rotated_keys_keep_verifying_and_new_packets_use_the_new_key(
    caller: Caller, evidence_app: EvidenceApp, evidence_settings: Settings
) -> None:
    first = await _collect(caller, 1)
    key_file = evidence_settings.signing_key_path
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    old_pem = key_file.read_bytes()
    env = {
        **os.environ,
        "STELLA_DATABASE_URL": evidence_settings.database_url,
        "STELLA_EVIDENCE_KEY_DIR": str(evidence_settings.key_dir),
        "STELLA_EVIDENCE_KEY_ALGORITHM": "ecdsa-p256",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stella.evidence",
        "rotate-key",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert first["signer_key_ref"] in out.decode() and "retired" in out.decode()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    second = await _collect(caller, 2)
    assert second["signer_key_ref"].startswith("ecdsa-p256:")
    assert second["signer_key_ref"] != first["signer_key_ref"]
    assert second["previous_hash"] == first["content_hash"]
    keys = {k["key_ref"]: k for k in (await caller.query(LIST_KEYS, ListKeys)).data["items"]}
    assert set(keys) == {first["signer_key_ref"], second["signer_key_ref"]}
    assert keys[first["signer_key_ref"]]["active"] is False and keys[first["signer_key_ref"]]["retired_at"]
    assert keys[second["signer_key_ref"]]["active"] is True
    for packet in (first, second):
        verification = await caller.query(VERIFY_PACKET, VerifyPacket, packet_id=packet["id"])
        assert verification.data["valid"] is True, verification.data["findings"]

    # A retired key never signs again: a process given the old key file refuses to start.
    restored = evidence_settings.key_dir / "restored.pem"
    restored.write_bytes(old_pem)
    restored.chmod(0o600)
    stale = create_app(evidence_settings.model_copy(update={"key_file": restored}))
    try:
        with pytest.raises(KeyRetired, match=first["signer_key_ref"]):
            await stale.start()
    finally:
        await stale.stop()
    async with evidence_app.runtime.pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE keys SET active = true, retired_at = NULL WHERE NOT active")


def _without(bundle: bytes, predicate) -> bytes:
    """Re-pack a bundle leaving out the members ``predicate`` selects."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as source,
        tarfile.open(fileobj=out, mode="w:gz") as target,
    ):
        for member in source.getmembers():
            if predicate(member.name):
                continue
            target.addfile(member, source.extractfile(member) if member.isfile() else None)
    return out.getvalue()


async def test_an_export_larger_than_a_nats_message_goes_through_the_object_store_and_verifies_offline(
    caller: Caller, nats: Client, tmp_path: Path, evidence_settings: Settings
) -> None:
    count = 56
    for batch in range(0, count, 14):
        await asyncio.gather(
            *(_collect(caller, i, content=packet_content(i, padding=400)) for i in range(batch, batch + 14))
        )

    # Lists stay within one NATS message too: pages end early and chain on.
    listed: list[dict] = []
    pages = 0
    token = None
    while pages == 0 or token is not None:
        page = await caller.query(LIST_PACKETS, ListPackets, page={"page_size": 500, "page_token": token})
        assert page.ok, page.error
        assert len(json.dumps(page.data)) < nats.max_payload
        listed += page.data["items"]
        token = page.data["next_page_token"]
        pages += 1
    assert pages > 1
    assert [p["sequence"] for p in listed] == list(range(1, count + 1))

    reply = await caller.query(EXPORT_BUNDLE, ExportBundle)
    assert reply.ok, reply.error
    export = reply.data
    view = ExportBundleView.model_validate(export)
    assert view.created_at.utcoffset() == timedelta(0)
    assert view.expires_at - view.created_at == timedelta(seconds=evidence_settings.export_max_age_s)
    assert (export["packets"], export["first_sequence"], export["last_sequence"]) == (count, 1, count)
    assert export["size"] > nats.max_payload
    assert export["object"].startswith(f"{caller.tenant_id}/") and export["filename"].endswith(".tar.gz")
    store = await nats.jetstream().object_store(export["bucket"])
    bundle = (await store.get(export["object"])).data
    assert bundle is not None
    assert len(bundle) == export["size"] and hashlib.sha256(bundle).hexdigest() == export["sha256"]

    path = tmp_path / export["filename"]
    path.write_bytes(bundle)
    keys = await published_keys(caller, tmp_path / "published-keys")
    code, out = await verify_offline(path, keys)
    assert code == 0, out
    assert f"OK: {count} packets, sequences 1..{count}" in out

    dropped = next(p for p in listed if p["sequence"] == 7)
    tampered = tmp_path / "without-7.tar.gz"
    tampered.write_bytes(_without(bundle, lambda name: name.endswith(f"{dropped['id']}.dsse.json")))
    code, out = await verify_offline(tampered, keys)
    assert code == 1
    assert "[file_missing]" in out and "packet 7 is missing between packet 6 and it [gap]" in out

    # A time range selects a contiguous run of the chain, which verifies on its own.
    created = [datetime.fromisoformat(p["created_at"]) for p in listed]
    start, end = created[9], created[20]
    expected = [p["sequence"] for p, at in zip(listed, created, strict=True) if start <= at < end]
    ranged = await caller.query(EXPORT_BUNDLE, ExportBundle, created_from=start, created_to=end)
    assert ranged.ok, ranged.error
    assert (ranged.data["first_sequence"], ranged.data["last_sequence"]) == (expected[0], expected[-1])
    part = tmp_path / "range.tar.gz"
    part.write_bytes((await store.get(ranged.data["object"])).data or b"")
    code, out = await verify_offline(part, keys)
    assert code == 0, out

    backwards = await caller.query(EXPORT_BUNDLE, ExportBundle, created_from=end, created_to=start)
    assert (backwards.error.code, backwards.error.status) == ("VAL_EXPORT_RANGE", 400)


async def test_listing_filters_pages_and_isolates_tenants(caller: Caller) -> None:
    p1, p2 = uuid.uuid4(), uuid.uuid4()
    made = [
        await _collect(caller, 0, packet_type="release_decision", promotion_id=str(p1)),
        await _collect(caller, 1, packet_type="deployment", promotion_id=str(p1)),
        await _collect(caller, 2, packet_type="release_decision", promotion_id=str(p2)),
        await _collect(caller, 3, packet_type="drift"),
        await _collect(caller, 4, packet_type="deployment", promotion_id=str(p1)),
    ]
    by_promotion = await caller.query(LIST_PACKETS, ListPackets, promotion_id=p1)
    assert [p["sequence"] for p in by_promotion.data["items"]] == [1, 2, 5]
    by_type = await caller.query(LIST_PACKETS, ListPackets, packet_type="deployment")
    assert [p["sequence"] for p in by_type.data["items"]] == [2, 5]
    both = await caller.query(LIST_PACKETS, ListPackets, promotion_id=p1, packet_type="release_decision")
    assert [p["id"] for p in both.data["items"]] == [made[0]["id"]]

    sequences: list[int] = []
    token = None
    for _ in range(3):
        page = await caller.query(LIST_PACKETS, ListPackets, page={"page_size": 2, "page_token": token})
        sequences += [p["sequence"] for p in page.data["items"]]
        token = page.data["next_page_token"]
    assert sequences == [1, 2, 3, 4, 5] and token is None
    forged = await caller.query(LIST_PACKETS, ListPackets, page={"page_token": "not-a-token"})
    assert (forged.error.code, forged.error.status) == ("VAL_PAGE_TOKEN", 400)

    other = caller.other_tenant()
    assert (await other.query(LIST_PACKETS, ListPackets)).data["items"] == []
    for subject, model in ((GET_PACKET, GetPacket), (VERIFY_PACKET, VerifyPacket)):
        hidden = await other.query(subject, model, packet_id=made[0]["id"])
        assert (hidden.error.code, hidden.error.status) == ("RES_NOT_FOUND", 404)
    empty = await other.query(EXPORT_BUNDLE, ExportBundle)
    assert empty.ok and empty.data["packets"] == 0 and empty.data["first_sequence"] is None
