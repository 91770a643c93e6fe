"""Evidence sign+store throughput through the service, group commit against one transaction per packet.

The evidence service runs in this process on a throwaway database and NATS namespace. N ``collect_packet``
commands, each carrying the content of a promotion's decision (a ``release_decision`` packet: two images, the
gates' results, two approvals), wait in the command stream for one tenant (one chain: the case its lock
serializes); the service is then started and consumes them. Measured, each on a database of its own:

* raw: build + sign each packet and INSERT it alone (one transaction each) into a plain table, in a loop on
  one connection: the floor one transaction per packet allows (baseline);
* the service with ``append_batch_size=1``: one transaction per packet, as before group commit;
* the service with group commit (its default ``append_batch_size``);
* the same service's handler path without NATS: the N commands handed to ``Handlers.collect`` at once;
* latency at a fixed rate (default 100 commands/s, open loop) through NATS: each command's reply (sent after
  its packet committed) against when the command was published.

Throughput is N over the time from the first packet's creation to all N being stored (service start-up is
not counted). Every run checks that each command made exactly one packet and that the chain verifies.
Needs the Postgres and NATS of STELLA_DATABASE_URL / STELLA_NATS_URL (or the local defaults).

    uv run python services/evidence/bench/append.py [--packets N] [--before-packets M] [--rate R] [--rate-count K]

Exits non-zero when group commit stores fewer than ``GOAL_PACKETS_S`` packets/s through NATS, when a packet
comes more than ``GOAL_LATENCY_S`` after its command at the fixed rate, or when a packet is missing or twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import nats

from stella.contracts.envelope import Reply
from stella.contracts.evidence import COLLECT_PACKET, CollectEvidence
from stella.contracts.streams import HEADER_MSG_ID, HEADER_REPLY_TO
from stella.evidence.app import EvidenceApp, create_app
from stella.evidence.chain import verify_chain
from stella.evidence.keys import PublicKey, PublicKeyRing, generate_key
from stella.evidence.packet import ChainHead, PacketType, build_packet, sign_packet, verify_packet_envelope
from stella.evidence.settings import Settings
from stella.kit.logs import configure_logging
from stella.kit.naming import Names
from stella.kit.settings import ServiceSettings
from stella.testing.databases import dsn_with_database
from stella.testing.services import delete_namespace_streams

GOAL_PACKETS_S = 2000.0
"""Packets per second the service must sign and store for one tenant, through NATS."""
GOAL_LATENCY_S = 1.0
"""Most seconds between a command and its stored packet at the fixed rate."""


def decision_content(index: int) -> dict[str, Any]:
    """The content of a promotion's decision packet: two images, three gates, two approvals."""
    return {
        "release": {
            "id": str(uuid.UUID(int=index)),
            "name": f"shop-2026.{index}",
            "components": [
                {
                    "name": name,
                    "digest": "sha256:" + f"{index:08x}{c:08x}".ljust(64, "0"),
                    "semver": "1.4.0",
                    "tag": "1.4.0",
                    "image_repository": f"registry.example.com/shop/{name}",
                }
                for c, name in enumerate(("web", "api"))
            ],
        },
        "environment": {"id": str(uuid.UUID(int=10_000)), "name": "prod"},
        "actors": {"requester": "rita@example.com", "approvers": ["bob@example.com", "carol@example.com"]},
        "decision": {
            "result": "allow",
            "gates": [
                {"type": kind, "name": kind, "status": "pass", "message": "ok", "details": {"checked": 2}}
                for kind in ("freeze-window", "security", "approval")
            ],
            "reasons": [],
            "approvals": [
                {"approver": "bob@example.com", "action": "approved", "at": "2026-03-02T10:00:00Z", "comment": "ok"},
                {"approver": "carol@example.com", "action": "approved", "at": "2026-03-02T10:05:00Z", "comment": ""},
            ],
        },
    }


def commands(tenant: uuid.UUID, n: int) -> list[CollectEvidence]:
    """N decision packets to collect, one per promotion."""
    return [
        CollectEvidence(
            tenant_id=tenant,
            correlation_id=uuid.uuid4(),
            packet_type="release_decision",
            promotion_id=uuid.uuid4(),
            content=decision_content(i),
            source_key=f"decision-{i}",
        )
        for i in range(n)
    ]


async def raw(dsn: str, n: int) -> float:
    """Packets/s of build + sign + a single-row INSERT in a transaction of its own, one after the other."""
    key = generate_key()
    tenant = uuid.uuid4()
    contents = [decision_content(i) for i in range(n)]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE raw_packets (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, sequence bigint NOT NULL,"
            " content_hash text NOT NULL, content json NOT NULL, envelope json NOT NULL,"
            " created_at timestamptz NOT NULL, UNIQUE (tenant_id, sequence))"
        )
        head = ChainHead.empty()
        started = time.perf_counter()
        for content in contents:
            packet = build_packet(
                packet_id=uuid.uuid4(),
                tenant_id=tenant,
                packet_type=PacketType.RELEASE_DECISION,
                content=content,
                head=head,
                created_at=datetime.now(UTC),
                signer_key_ref=key.key_ref,
            )
            envelope = sign_packet(packet, key)
            await conn.execute(
                "INSERT INTO raw_packets VALUES ($1, $2, $3, $4, $5::text::json, $6::text::json, $7)",
                packet.id,
                tenant,
                packet.sequence,
                packet.content_hash,
                _json(packet.content),
                _json(envelope),
                packet.created_at,
            )
            head = ChainHead(sequence=packet.sequence, content_hash=packet.content_hash)
        return n / (time.perf_counter() - started)
    finally:
        await conn.close()


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def settings_for(dsn: str, names: Names, keys: Path, batch_size: int) -> Settings:
    return Settings(
        database_url=dsn,
        nats_url=ServiceSettings().nats_url,
        nats_namespace=names.namespace,
        key_dir=keys,
        outbox_poll_s=0.2,
        log_level="WARNING",
        append_batch_size=batch_size,
        checkpoint_interval_s=1.0,
    )


async def check_chain(app: EvidenceApp, tenant: uuid.UUID, expected: int) -> None:
    """Exactly ``expected`` packets, one per source, chained 1..expected, each verifying with the stored keys."""
    async with app.runtime.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT envelope, source_key FROM packets WHERE tenant_id = $1 ORDER BY sequence", tenant
        )
        keys = await conn.fetch("SELECT public_key_pem FROM keys")
    sources = [r["source_key"] for r in rows]
    if len(rows) != expected or len(set(sources)) != expected:
        raise SystemExit(f"{len(rows)} packets ({len(set(sources))} sources) for {expected} commands")
    ring = PublicKeyRing(PublicKey.from_pem(k["public_key_pem"].encode()) for k in keys)
    findings = verify_chain([verify_packet_envelope(r["envelope"], ring) for r in rows], tenant_id=tenant)
    if findings:
        raise SystemExit(f"the chain does not verify: {findings[:3]}")


async def stored(app: EvidenceApp) -> int:
    async with app.runtime.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM packets"))


async def through_nats(nc: nats.NATS, settings: Settings, names: Names, n: int) -> float:
    """Packets/s of the service consuming ``n`` commands that wait in the stream when it starts."""
    first = create_app(settings)
    await first.start()  # migrations, streams and the consumer: then the commands wait in the stream
    await first.stop()
    tenant = uuid.uuid4()
    js = nc.jetstream()
    for cmd in commands(tenant, n):
        await js.publish(
            names.subject(COLLECT_PACKET), cmd.model_dump_json().encode(), headers={HEADER_MSG_ID: str(cmd.message_id)}
        )
    app = create_app(settings)
    await app.start()
    try:
        while await stored(app) < n:
            await asyncio.sleep(0.02)
        done = datetime.now(UTC)
        async with app.runtime.pool.acquire() as conn:
            began = await conn.fetchval("SELECT min(created_at) FROM packets")
        await check_chain(app, tenant, n)
        return n / max((done - began).total_seconds(), 1e-6)
    finally:
        await app.stop()


async def handler_path(settings: Settings, n: int) -> float:
    """Packets/s of ``n`` commands handed to the service's handler at once (no NATS, no consumer)."""
    app = create_app(settings)
    await app.start()
    try:
        assert app.handlers is not None
        tenant = uuid.uuid4()
        batch = commands(tenant, n)
        started = time.perf_counter()
        replies = await asyncio.gather(*(app.handlers.collect(cmd) for cmd in batch))
        elapsed = time.perf_counter() - started
        if not all(r.ok for r in replies):
            raise SystemExit(f"a command failed: {next(r.error for r in replies if not r.ok)}")
        await check_chain(app, tenant, n)
        return n / elapsed
    finally:
        await app.stop()


async def at_rate(nc: nats.NATS, settings: Settings, names: Names, rate: float, count: int) -> list[float]:
    """Seconds from each command's publication to its reply (sent once its packet committed), open loop."""
    app = create_app(settings)
    await app.start()
    tenant = uuid.uuid4()
    sent: dict[uuid.UUID, float] = {}
    delays: list[float] = []
    failed: list[Reply] = []
    done = asyncio.Event()

    async def on_reply(msg: Any) -> None:
        reply = Reply.model_validate_json(msg.data)
        if not reply.ok:
            failed.append(reply)
            done.set()
            return
        delays.append(time.perf_counter() - sent[uuid.UUID(reply.data["promotion_id"])])
        if len(delays) == count:
            done.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        js = nc.jetstream()
        started = time.perf_counter()
        for i, cmd in enumerate(commands(tenant, count)):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            assert cmd.promotion_id is not None
            sent[cmd.promotion_id] = time.perf_counter()
            await js.publish(
                names.subject(COLLECT_PACKET),
                cmd.model_dump_json().encode(),
                headers={HEADER_MSG_ID: str(cmd.message_id), HEADER_REPLY_TO: inbox},
            )
        await asyncio.wait_for(done.wait(), timeout=60 + count / rate)
        if failed:
            raise SystemExit(f"a command failed: {failed[0].error}")
        await check_chain(app, tenant, count)
        return delays
    finally:
        await sub.unsubscribe()
        await app.stop()


class Throwaway:
    """A database and NATS namespace of their own, removed afterwards."""

    def __init__(self, nc: nats.NATS, admin: asyncpg.Connection) -> None:
        self.nc, self.admin = nc, admin
        self.db = f"bench_{uuid.uuid4().hex[:8]}"
        self.dsn = dsn_with_database(ServiceSettings().database_url, self.db)
        self.names = Names(f"bench{uuid.uuid4().hex[:6]}")
        self._keys = tempfile.TemporaryDirectory()
        self.keys = Path(self._keys.name)

    async def __aenter__(self) -> Throwaway:
        await self.admin.execute(f'CREATE DATABASE "{self.db}"')
        return self

    async def __aexit__(self, *exc: object) -> None:
        await delete_namespace_streams(self.nc.jetstream(), self.names)
        await self.admin.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        self._keys.cleanup()


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


async def main(args: argparse.Namespace) -> int:
    configure_logging("evidence-bench", "WARNING")  # the services' filters: an idle fetch's timeout is no error
    base = ServiceSettings()
    admin = await asyncpg.connect(base.database_url)
    nc = await nats.connect(base.nats_url)
    batch_size = Settings.model_fields["append_batch_size"].default
    n, before_n = args.packets, min(args.before_packets, args.packets)
    results: dict[str, float] = {}
    delays: dict[str, list[float]] = {}
    try:
        async with Throwaway(nc, admin) as t:
            results["raw"] = await raw(t.dsn, n)
        for label, size, count in (("before", 1, before_n), ("after", batch_size, n)):
            async with Throwaway(nc, admin) as t:
                results[label] = await through_nats(nc, settings_for(t.dsn, t.names, t.keys, size), t.names, count)
            async with Throwaway(nc, admin) as t:
                settings = settings_for(t.dsn, t.names, t.keys, size)
                results[f"{label}-handler"] = await handler_path(settings, count)
            async with Throwaway(nc, admin) as t:
                settings = settings_for(t.dsn, t.names, t.keys, size)
                delays[label] = await at_rate(nc, settings, t.names, args.rate, args.rate_count)
    finally:
        await nc.close()
        await admin.close()

    raw_rate = results["raw"]
    print(f"release_decision packets, one tenant; {n} commands ({before_n} one per transaction)")
    print(f"raw: build + sign + single-row INSERT, one transaction each (baseline) {raw_rate:9,.0f} packets/s   1.00x")
    rows = (
        ("service through NATS, one packet per transaction (before)", "before"),
        (f"service through NATS, group commit (up to {batch_size})", "after"),
        ("handler path without NATS, one packet per transaction", "before-handler"),
        (f"handler path without NATS, group commit (up to {batch_size})", "after-handler"),
    )
    for title, key in rows:
        print(f"{title:<70} {results[key]:9,.0f} packets/s   {results[key] / raw_rate:.2f}x")
    print(f"group commit against one packet per transaction, through NATS: {results['after'] / results['before']:.1f}x")
    for label in ("before", "after"):
        d = delays[label]
        print(
            f"{label}: {len(d)} commands at {args.rate:g}/s, command -> stored packet (reply):"
            f" p50 {quantile(d, 0.5) * 1000:,.0f} ms, p99 {quantile(d, 0.99) * 1000:,.0f} ms,"
            f" max {max(d) * 1000:,.0f} ms"
        )
    missed = []
    if results["after"] < GOAL_PACKETS_S:
        missed.append(f"group commit stores {results['after']:,.0f} packets/s < {GOAL_PACKETS_S:,.0f}")
    if max(delays["after"]) > GOAL_LATENCY_S:
        missed.append(f"a packet came {max(delays['after']):.2f} s after its command > {GOAL_LATENCY_S:g} s")
    for line in missed:
        print(f"GOAL MISSED: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=2000, help="commands with group commit (default 2000)")
    parser.add_argument(
        "--before-packets", type=int, default=500, help="commands one per transaction (default 500: it is slow)"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="commands per second of the latency run")
    parser.add_argument("--rate-count", type=int, default=300, help="commands in the latency run")
    sys.exit(asyncio.run(main(parser.parse_args())))
