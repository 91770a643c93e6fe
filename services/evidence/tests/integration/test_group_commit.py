"""Group commit of packet appends over real NATS and Postgres: batches chain, verify, dedupe and isolate failures.

Each test makes its batch deterministic: a separate connection holds the tenants' chain locks while one
command (the blocker) waits in its batch for them and the commands under test queue up behind it; releasing
the locks lets the blocker's batch commit, then the queued commands go in one batch.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from stella.contracts.envelope import Reply
from stella.contracts.evidence import (
    COLLECT_EVIDENCE,
    COLLECT_PACKET,
    LIST_PACKETS,
    PACKET_CREATED,
    CollectEvidence,
    ListPackets,
)
from stella.contracts.workflow import COMPLETE_STEP, CompleteStep, StepStatus
from stella.evidence import repo
from stella.evidence.app import EvidenceApp
from stella.evidence.chain import verify_chain
from stella.evidence.packet import verify_packet_envelope

from .conftest import Auditor, Caller, Upstream, eventually, execute_step, packet_content, promotion_view
from .test_evidence_service import _keyring


def _appender(app: EvidenceApp) -> Any:
    assert app.handlers is not None
    return app.handlers.appender


def _command(caller: Caller, index: int, **fields: Any) -> CollectEvidence:
    fields.setdefault("packet_type", "deployment")
    fields.setdefault("content", packet_content(index))
    return caller.message(CollectEvidence, **fields)


@asynccontextmanager
async def _one_batch(
    app: EvidenceApp, superuser: asyncpg.Connection, blocker: Caller, tenants: list[uuid.UUID], expected: int
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Hold the chain locks of ``tenants``; the body sends ``expected`` commands, then awaits the callable
    given, which waits until they all queue behind the blocker's batch and releases the locks."""
    appender = _appender(app)
    async with superuser.transaction():
        for tenant in tenants:
            await superuser.execute(repo.LOCK_CHAIN, str(tenant))
        first = asyncio.create_task(blocker.client.command(COLLECT_PACKET, _command(blocker, 10_000)))
        await eventually(lambda: appender.writing == 1 and appender.waiting == 0)

        async def release() -> None:
            await eventually(lambda: appender.waiting == expected)

        yield release
    reply = await first
    assert reply.ok, reply.error


async def _chain(caller: Caller) -> list[dict[str, Any]]:
    page = await caller.query(LIST_PACKETS, ListPackets, page={"page_size": 500})
    assert page.ok, page.error
    return page.data["items"]


async def _verify_online(caller: Caller, items: list[dict[str, Any]]) -> None:
    keyring = await _keyring(caller)
    chain = [verify_packet_envelope(p["envelope"], keyring) for p in items]
    assert verify_chain(chain, tenant_id=caller.tenant_id) == []


async def test_a_batch_of_packets_of_two_tenants_chains_each_tenant_in_order_and_verifies_offline(
    caller: Caller, evidence_app: EvidenceApp, superuser: asyncpg.Connection, tmp_path: Path
) -> None:
    other = caller.other_tenant()
    commands = [(who, _command(who, i)) for i in range(12) for who in (caller, other)]
    async with _one_batch(evidence_app, superuser, caller, [caller.tenant_id, other.tenant_id], 24) as release:
        sent = [asyncio.create_task(who.client.command(COLLECT_PACKET, cmd)) for who, cmd in commands]
        await release()
    replies: list[Reply] = await asyncio.gather(*sent)
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    stats = _appender(evidence_app).stats
    assert stats.largest == 24 and stats.alone == 0

    # Each tenant's packets continue its own chain, with no hole and no sequence twice (the blocker is 1).
    mine = [r.data["sequence"] for r, (who, _) in zip(replies, commands, strict=True) if who is caller]
    theirs = [r.data["sequence"] for r, (who, _) in zip(replies, commands, strict=True) if who is other]
    assert sorted(mine) == list(range(2, 14)) and sorted(theirs) == list(range(1, 13))
    for who, count in ((caller, 13), (other, 12)):
        items = await _chain(who)
        assert [p["sequence"] for p in items] == list(range(1, count + 1))
        await _verify_online(who, items)
        # Offline, with the signed checkpoint of the tenant's Merkle tree the export carries.
        auditor = Auditor(who, tmp_path / str(who.tenant_id))
        auditor.directory.mkdir()
        code, out = await auditor.verify_offline(await auditor.export())
        assert code == 0, out
        assert f"OK: {count} packets, sequences 1..{count}" in out


async def test_a_batch_holding_redeliveries_and_repeated_facts_yields_one_packet_each(
    caller: Caller, evidence_app: EvidenceApp, superuser: asyncpg.Connection
) -> None:
    commands = [_command(caller, i, source_key=f"job-{i}:succeeded") for i in range(8)]
    # Each command, the same command again past the duplicate window (a lost ack), and the same fact in a new
    # command (a retried task), all in one batch.
    resent = [cmd.model_copy(update={"message_id": uuid.uuid4()}) for cmd in commands]
    async with _one_batch(evidence_app, superuser, caller, [caller.tenant_id], 24) as release:
        first = [asyncio.create_task(caller.client.command(COLLECT_PACKET, cmd)) for cmd in commands]
        again = [asyncio.create_task(caller.redeliver(COLLECT_PACKET, cmd)) for cmd in commands]
        repeated = [asyncio.create_task(caller.client.command(COLLECT_PACKET, cmd)) for cmd in resent]
        await release()
    originals = await asyncio.gather(*first)
    assert all(r.ok for r in originals), [r.error for r in originals if not r.ok]
    assert [r.data for r in await asyncio.gather(*again)] == [r.data for r in originals]
    assert [r.data["id"] for r in await asyncio.gather(*repeated)] == [r.data["id"] for r in originals]
    # A message twice in a batch is claimed once; the other delivery is answered alone, from the inbox.
    assert _appender(evidence_app).stats.alone == 8
    items = await _chain(caller)
    assert [p["sequence"] for p in items] == list(range(1, 10))  # the blocker's, then 8 packets
    await _verify_online(caller, items)
    # Delivered once more after the commit: answered from the inbox, nothing appended.
    later = await caller.redeliver(COLLECT_PACKET, commands[3])
    assert later.data == originals[3].data
    assert len(await _chain(caller)) == 9


async def test_a_packet_postgres_refuses_in_a_batch_is_answered_alone_and_the_others_commit(
    caller: Caller, evidence_app: EvidenceApp, superuser: asyncpg.Connection
) -> None:
    # The database refuses one packet's value (SQLSTATE class 22), as it would a value it cannot store.
    await superuser.execute("""
        CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.content::text LIKE '%poison-pill%' THEN
                RAISE EXCEPTION 'poison pill' USING ERRCODE = '22023';
            END IF;
            RETURN NEW;
        END;
        $$;
        CREATE TRIGGER refuse_poison BEFORE INSERT ON packets FOR EACH ROW EXECUTE FUNCTION refuse_poison();
    """)
    poison = packet_content(99)
    poison["release"]["name"] = "poison-pill"
    commands = [_command(caller, i) for i in range(10)]
    commands.insert(5, _command(caller, 99, content=poison))
    async with _one_batch(evidence_app, superuser, caller, [caller.tenant_id], 11) as release:
        sent = [asyncio.create_task(caller.client.command(COLLECT_PACKET, cmd)) for cmd in commands]
        await release()
    replies = await asyncio.gather(*sent)
    refused = replies.pop(5)
    assert not refused.ok and refused.error is not None
    assert (refused.error.code, refused.error.status) == ("VAL_VALUE_REFUSED", 400)
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    # The batch was rolled back and each command handled alone: the chain has no hole.
    assert _appender(evidence_app).stats.alone == 11
    assert sorted(r.data["sequence"] for r in replies) == list(range(2, 12))
    items = await _chain(caller)
    assert [p["sequence"] for p in items] == list(range(1, 12))
    assert "poison-pill" not in str([p["content"] for p in items])
    await _verify_online(caller, items)
    # The refusal is the command's stored answer: sent again, it is answered the same and stores nothing.
    again = await caller.redeliver(COLLECT_PACKET, commands[5])
    assert again.error == refused.error
    assert len(await _chain(caller)) == 11


async def test_evidence_steps_of_several_promotions_in_one_batch_each_get_their_packet_and_completion(
    caller: Caller, upstream: Upstream, evidence_app: EvidenceApp, superuser: asyncpg.Connection
) -> None:
    promotions = [uuid.uuid4() for _ in range(6)]
    for promotion_id in promotions:
        upstream.promotions[promotion_id] = [promotion_view(promotion_id)]
    await upstream.start()
    steps = [execute_step(caller.tenant_id, p, required_approvals=0) for p in promotions]
    async with _one_batch(evidence_app, superuser, caller, [caller.tenant_id], len(steps)) as release:
        sent = [asyncio.create_task(caller.client.command(COLLECT_EVIDENCE, step)) for step in steps]
        await release()
    replies = await asyncio.gather(*sent)
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    assert _appender(evidence_app).stats.largest == len(steps)
    items = {p["id"]: p for p in await _chain(caller)}
    for promotion_id, reply in zip(promotions, replies, strict=True):
        packet = items[reply.data["packet_id"]]
        assert (packet["packet_type"], packet["promotion_id"]) == ("release_decision", str(promotion_id))
    # One CompleteStep and one packet_created per step, committed with its packet.
    async with evidence_app.runtime.pool.acquire() as conn:
        completions = await conn.fetch("SELECT payload FROM outbox WHERE subject = $1", COMPLETE_STEP)
        created = await conn.fetchval("SELECT count(*) FROM outbox WHERE subject = $1", PACKET_CREATED)
    completed = [CompleteStep.model_validate_json(r["payload"]) for r in completions]
    assert sorted(str(c.run_id) for c in completed) == sorted(str(s.run_id) for s in steps)
    assert all(c.status is StepStatus.SUCCEEDED for c in completed)
    assert created == len(steps) + 1  # and the blocker's
    await _verify_online(caller, list(items.values()))


async def test_a_batch_whose_connection_dies_before_its_commit_loses_and_repeats_nothing(
    caller: Caller, evidence_app: EvidenceApp, superuser: asyncpg.Connection
) -> None:
    commands = [_command(caller, i) for i in range(10)]
    async with _one_batch(evidence_app, superuser, caller, [caller.tenant_id], len(commands)) as release:
        sent = [asyncio.create_task(caller.client.command(COLLECT_PACKET, cmd)) for cmd in commands]
        await release()
        # The blocker's batch waits for the chain lock inside its transaction: its server process dies.
        killed = await superuser.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
            " AND pid <> pg_backend_pid()"
        )
        assert killed == 1
    replies = await asyncio.gather(*sent)
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    # The dead batch (the blocker) was handled again alone, the ten commands in the next batch.
    stats = _appender(evidence_app).stats
    assert (stats.alone, stats.largest) == (1, 10)
    items = await _chain(caller)
    assert [p["sequence"] for p in items] == list(range(1, 12))
    assert sorted(r.data["id"] for r in replies) == sorted(
        p["id"] for p in items if p["content"]["release"]["name"] != "shop-10000"
    )
    await _verify_online(caller, items)
