"""Events projection throughput against a raw JetStream -> INSERT hop, measured in the same run.

Baseline (the raw hop): N events published to JetStream, pulled in stream order by a plain durable consumer,
each INSERTed (one transaction) and acknowledged, one at a time, as an ordered consumer must. Measured: the
events service running in this process (its real consumer, inbox, public event, outbox and webhook queue)
projecting N internal ``PromotionChanged`` events of one tenant into public CloudEvents, until every one is
recorded and published by its outbox relay. Needs the Postgres and NATS of STELLA_DATABASE_URL /
STELLA_NATS_URL (or the local defaults); uses a throwaway database and NATS namespace and removes both.

    uv run python tests/bench/events_projection.py [N] [--profile]

Exits non-zero when the projection is slower than ``GOAL_EVENTS_S`` or loses an event.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from stella.contracts import promotion
from stella.contracts.streams import HEADER_MSG_ID
from stella.events.app import create_app
from stella.events.settings import Settings
from stella.kit.naming import Names
from stella.kit.settings import ServiceSettings
from stella.kit.startup import environment_event_loop, run_loop
from stella.testing.services import delete_namespace_streams

GOAL_EVENTS_S = 300.0
"""Internal events per second the projection must reach (one tenant, in order)."""


def promotion_changed(tenant_id: uuid.UUID) -> promotion.PromotionChanged:
    """A promotion event as the promotion service publishes it."""
    now = datetime.now(UTC)
    view = promotion.PromotionView(
        id=uuid.uuid4(),
        release_id=uuid.uuid4(),
        release_name="shop-1",
        release_components=[{"name": "api", "digest": "sha256:" + "a" * 64, "image_repository": "r/api"}],
        source_environment_id=None,
        target_environment_id=uuid.uuid4(),
        target_environment_name="dev",
        status=promotion.PromotionStatus.APPROVED,
        reason="ship it",
        requested_by=uuid.uuid4(),
        requested_at=now,
        updated_at=now,
        decision_record={"result": "allow", "reasons": [], "inputs_hash": "sha256:" + "b" * 64, "gates": []},
        workflow_run_id=uuid.uuid4(),
        next_evaluation_at=None,
        freeze_override=None,
    )
    return promotion.PromotionChanged(tenant_id=tenant_id, correlation_id=uuid.uuid4(), promotion=view)


async def raw_hop(nc: nats.NATS, dsn: str, names: Names, payloads: list[bytes]) -> float:
    """Seconds for the raw hop over ``payloads``: publish, then pull / INSERT / ack one at a time, in order."""
    js = nc.jetstream()
    stream, subject = f"BENCHRAW_{names.namespace.upper()}", names.subject("stella.bench.raw")
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE raw_hop (message_id uuid PRIMARY KEY, payload text NOT NULL)")
        started = time.perf_counter()
        for data in payloads:
            await js.publish(subject, data, headers={HEADER_MSG_ID: str(uuid.uuid4())})
        sub = await js.pull_subscribe(
            subject,
            durable="bench-raw",
            stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, max_ack_pending=4),
        )
        done = 0
        while done < len(payloads):
            for msg in await sub.fetch(1, timeout=5):
                await conn.execute("INSERT INTO raw_hop VALUES ($1, $2)", uuid.uuid4(), msg.data.decode())
                await msg.ack()
                done += 1
        return time.perf_counter() - started
    finally:
        await js.delete_stream(stream)
        await conn.close()


async def projection(
    nc: nats.NATS, dsn: str, names: Names, events: list[promotion.PromotionChanged], batch_size: int
) -> float:
    """Seconds for the events service to project and publish ``events`` (published first, in order)."""
    with tempfile.TemporaryDirectory() as keys:
        settings = Settings(
            database_url=dsn,
            nats_url=ServiceSettings().nats_url,
            nats_namespace=names.namespace,
            key_dir=Path(keys),
            outbox_poll_s=0.2,
            log_level="WARNING",
            projection_batch_size=batch_size,
        )
        app = create_app(settings)
        await app.start()
        try:
            js = nc.jetstream()
            started = time.perf_counter()
            for event in events:
                await js.publish(
                    names.subject(promotion.PROMOTION_APPROVED),
                    event.model_dump_json().encode(),
                    headers={HEADER_MSG_ID: str(event.message_id)},
                )
            async with app.runtime.pool.acquire() as conn:
                while True:
                    recorded, pending = await conn.fetchrow(
                        "SELECT (SELECT count(*) FROM public_events), "
                        "(SELECT count(*) FROM outbox WHERE published_at IS NULL)"
                    )
                    if recorded >= len(events) and pending == 0:
                        break
                    await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
            async with app.runtime.pool.acquire() as conn:
                recorded = await conn.fetchval("SELECT count(*) FROM public_events")
            if recorded != len(events):
                raise SystemExit(f"projected {recorded} public events for {len(events)} internal ones")
            return elapsed
        finally:
            await app.stop()


async def run(nc: nats.NATS, admin: asyncpg.Connection, n: int, batch_size: int | None, profile: bool) -> float:
    """Seconds for the raw hop (``batch_size`` None) or the projection, on a database and namespace of its own."""
    db = f"bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = ServiceSettings().database_url.rsplit("/", 1)[0] + f"/{db}"
    names = Names(f"bench{uuid.uuid4().hex[:6]}")
    tenant = uuid.uuid4()
    events = [promotion_changed(tenant) for _ in range(n)]
    try:
        if batch_size is None:
            return await raw_hop(nc, dsn, names, [e.model_dump_json().encode() for e in events])
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        elapsed = await projection(nc, dsn, names, events, batch_size)
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
        return elapsed
    finally:
        await delete_namespace_streams(nc.jetstream(), names)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


async def main(n: int, profile: bool) -> int:
    base = ServiceSettings()
    admin = await asyncpg.connect(base.database_url)
    nc = await nats.connect(base.nats_url)
    batch_size = Settings.model_fields["projection_batch_size"].default
    try:
        raw = await run(nc, admin, n, None, False)
        single = await run(nc, admin, n, 1, False)
        projected = await run(nc, admin, n, batch_size, profile)
    finally:
        await nc.close()
        await admin.close()
    size = len(promotion_changed(uuid.uuid4()).model_dump_json())
    print(f"{n} internal events of ~{size} bytes, one tenant, in order")
    print(f"raw hop: publish + pull/INSERT/ack (baseline)  {n / raw:9,.0f} events/s   1.00x")
    print(f"projection, one event per transaction (before) {n / single:9,.0f} events/s   {raw / single:.2f}x")
    print(
        f"projection, up to {batch_size} per transaction      {n / projected:9,.0f} events/s   {raw / projected:.2f}x"
    )
    if n / projected < GOAL_EVENTS_S:
        print(f"GOAL MISSED: projection {n / projected:,.0f} events/s < {GOAL_EVENTS_S:,.0f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    print(f"event loop: {environment_event_loop()}", flush=True)
    sys.exit(run_loop(main(int(args[0]) if args else 1000, "--profile" in sys.argv), environment_event_loop()))
