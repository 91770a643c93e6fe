"""Outbox relay throughput against raw JetStream publishing, measured in the same run.

Baseline: N events published straight to JetStream, one awaited ack at a time (what the relay does per
event). Measured: the same N events committed to the outbox first (one transaction per event, as handlers
do), then published by the relay. Needs the Postgres and NATS of STELLA_DATABASE_URL / STELLA_NATS_URL (or
the local defaults); uses a throwaway database and NATS namespace and removes both.

    uv run python tests/bench/outbox_relay.py [N]
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import nats
from nats.js.errors import NotFoundError

from stella.contracts.envelope import Event
from stella.contracts.streams import ALL_STREAMS, EVENTS
from stella.kit.broker import declare_streams
from stella.kit.migrations import apply_migrations
from stella.kit.naming import Names
from stella.kit.outbox import OutboxRelay, add_event
from stella.kit.settings import ServiceSettings
from stella.kit.startup import environment_event_loop, run_loop

SUBJECT = "stella.evt.bench.thing_happened"


class ThingHappened(Event):
    """A bench event of realistic size."""

    payload: str


async def main(n: int) -> None:
    settings = ServiceSettings()
    admin = await asyncpg.connect(settings.database_url)
    db = f"bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = settings.database_url.rsplit("/", 1)[0] + f"/{db}"
    names = Names(f"bench{uuid.uuid4().hex[:6]}")
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    try:
        await declare_streams(js, names)
        conn = await asyncpg.connect(dsn)
        await apply_migrations(conn, "bench", Path(__file__).parent / "empty_migrations")
        tenant = uuid.uuid4()
        events = [ThingHappened(tenant_id=tenant, correlation_id=uuid.uuid4(), payload="x" * 600) for _ in range(n)]

        started = time.perf_counter()
        for e in events:
            await js.publish(
                names.subject(SUBJECT), e.model_dump_json().encode(), headers={"Nats-Msg-Id": f"raw-{e.message_id}"}
            )
        raw = time.perf_counter() - started

        started = time.perf_counter()
        await conn.execute("SET search_path TO bench")
        for e in events:
            async with conn.transaction():
                await add_event(conn, SUBJECT, e)
        written = time.perf_counter() - started

        relay = OutboxRelay(dsn, "bench", js, names=names, batch_size=500, poll_s=0.05)
        started = time.perf_counter()
        relay.start()
        while relay.published < n:
            await asyncio.sleep(0.01)
        relayed = time.perf_counter() - started
        await relay.stop()
        await conn.close()

        info = await js.stream_info(names.stream(EVENTS))
        assert info.state.messages == 2 * n, info.state.messages
        print(f"{n} events of ~{len(events[0].model_dump_json())} bytes")
        print(f"raw publish (baseline)      {n / raw:9,.0f} events/s   1.00x")
        print(f"outbox write (1 tx/event)   {n / written:9,.0f} events/s   {raw / written:.2f}x")
        print(f"relay publish               {n / relayed:9,.0f} events/s   {raw / relayed:.2f}x")
        print(
            f"end to end (write + relay)  {n / (written + relayed):9,.0f} events/s   {raw / (written + relayed):.2f}x"
        )
    finally:
        for spec in ALL_STREAMS:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(names.stream(spec))
        await nc.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    print(f"event loop: {environment_event_loop()}", flush=True)
    run_loop(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000), environment_event_loop())
