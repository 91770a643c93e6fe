"""Promotions end to end through the gateway, against a raw HTTP -> JetStream -> consumer -> INSERT hop.

Starts every service and the gateway as processes on a throwaway database and NATS namespace (the Postgres
and NATS of STELLA_DATABASE_URL / STELLA_NATS_URL, or the local defaults), bootstraps a tenant, creates a
0-approval environment and one ready release per promotion, then measures with aiohttp:

* saturation: N promotions with ``--in-flight`` of them at once, each from ``POST /promotions`` until its
  decision event (``promotion_approved`` / ``_rejected`` / ``_cancelled``) is published, and its
  ``release_decision`` evidence packet (``packet_created``) after that; plus CPU milliseconds per promotion
  of each service process (from ``/proc``), in the saturation window (until 2 s after the last decision)
  and over all of their work (until every one's workflow run ended: deploy, health check and evidence
  steps included, which an environment's one-deployment-at-a-time slot spreads over a longer time; a run
  not ended ``--settle-s`` after the last decision misses a goal);
* latency at a fixed offered rate (``--rate`` promotions/s, open loop) once every saturation run ended:
  p50/p90/p99;
* the raw hop, in this process with the same client and concurrency: an aiohttp endpoint that publishes to
  JetStream and a pull consumer that INSERTs the message and acks it, timed from the request until the INSERT;
* startup: every process started cold (migrations on an empty database included) until all answer, against
  one process that only imports the kit.

Decisions and packets are watched on NATS (a core subscription on the events' subjects), so the load
generator adds no polling load to the system. Exits non-zero when a goal of ``GOALS`` is missed.

    uv run python tests/bench/promotions.py [--promotions N] [--in-flight K] [--rate R] [--rate-count M]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import nats
from aiohttp import web
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from stella.contracts import evidence, promotion, workflow
from stella.kit.embedded import free_port
from stella.kit.naming import Names
from stella.kit.startup import environment_event_loop, run_loop
from stella.testing.system import System, percentile, sandbox

SERVICES = ("release", "promotion", "approval", "workflow", "deployment", "evidence", "events")
DECIDED = {
    promotion.PROMOTION_APPROVED: "approved",
    promotion.PROMOTION_REJECTED: "rejected",
    promotion.PROMOTION_CANCELLED: "cancelled",
}
GOALS = {
    "throughput_per_s": 100.0,
    "p50_ms": 50.0,
    "p99_ms": 250.0,
    "cost_vs_raw_hop": 10.0,
    "evidence_lag_s": 1.0,
    "startup_s": 20.0,
}
"""The issue's goals: saturation throughput, latency at the offered rate, cost against the raw hop,
and the longest time from a decision to its evidence packet."""


@dataclass
class Watch:
    """Decision and evidence times per promotion, from NATS."""

    decided: dict[str, tuple[float, str]] = field(default_factory=dict)
    packets: dict[str, float] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    runs_ended: dict[str, float] = field(default_factory=dict)
    """When each promotion's workflow run ended (its last step, evidence, done): all of a promotion's work."""

    async def on_run_ended(self, msg: Any) -> None:
        subject_id = json.loads(msg.data).get("subject_id")
        if subject_id:
            self.runs_ended.setdefault(subject_id, time.perf_counter())

    async def on_decision(self, msg: Any) -> None:
        body = json.loads(msg.data)
        pid = body["promotion"]["id"]
        if pid not in self.decided:
            self.decided[pid] = (time.perf_counter(), body["promotion"]["status"])
        waiter = self.waiters.pop(pid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def on_packet(self, msg: Any) -> None:
        body = json.loads(msg.data)
        if body.get("packet_type") == "release_decision" and body.get("promotion_id"):
            self.packets.setdefault(body["promotion_id"], time.perf_counter())

    def wait(self, pid: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if pid in self.decided:
            future.set_result(None)
        else:
            self.waiters[pid] = future
        return future


async def make_releases(system: System, session: aiohttp.ClientSession, count: int) -> list[str]:
    """``count`` ready releases of one component, made 16 at a time."""
    await system.call(
        session,
        "POST",
        "/components",
        {
            "name": "api",
            "image_repository": "registry.invalid/shop/api",
            "versioning_strategy": {"resolve": "version-map"},
        },
    )
    digest = "sha256:" + "a" * 64
    releases: list[str] = []
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with gate:
            body = {"name": f"bench-{i}", "components": [{"component": "api", "digest": digest}]}
            release = await system.call(session, "POST", "/releases", body)
            await system.call(session, "POST", f"/releases/{release['id']}/ready")
            releases.append(release["id"])

    await asyncio.gather(*(one(i) for i in range(count)))
    return releases


async def promote(system: System, session: aiohttp.ClientSession, watch: Watch, release: str, env: str) -> float:
    """One promotion: seconds from the request until its decision was published."""
    started = time.perf_counter()
    body = {"release_id": release, "target_environment_id": env, "reason": "bench"}
    created = await system.call(session, "POST", "/promotions", body)
    await asyncio.wait_for(watch.wait(created["id"]), timeout=120)
    return watch.decided[created["id"]][0] - started


async def saturate(
    system: System, session: aiohttp.ClientSession, watch: Watch, releases: list[str], env: str, in_flight: int
) -> tuple[float, list[float]]:
    """Promote every release with ``in_flight`` at once; returns (seconds, latencies)."""
    queue = list(releases)
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            latencies.append(await promote(system, session, watch, queue.pop(), env))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started, latencies


async def offered(
    system: System, session: aiohttp.ClientSession, watch: Watch, releases: list[str], env: str, rate: float
) -> list[float]:
    """Promote the releases at ``rate`` per second (open loop); returns the latencies."""
    tasks = []
    started = time.perf_counter()
    for i, release in enumerate(releases):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(promote(system, session, watch, release, env)))
    return list(await asyncio.gather(*tasks))


async def raw_hop(
    session: aiohttp.ClientSession, nc: nats.NATS, dsn: str, names: Names, count: int, in_flight: int
) -> tuple[float, list[float]]:
    """The raw hop with ``in_flight`` requests at once: (seconds, latencies from request to INSERT)."""
    js = nc.jetstream()
    stream, subject = f"BENCHHOP_{names.namespace.upper()}", names.subject("stella.bench.hop")
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=8)
    assert pool is not None
    await pool.execute("CREATE TABLE IF NOT EXISTS bench_hop (id uuid PRIMARY KEY, body text NOT NULL)")
    inserted: dict[str, asyncio.Future[float]] = {}

    async def accept(request: web.Request) -> web.Response:
        body = await request.read()
        await js.publish(subject, body, headers={"Nats-Msg-Id": json.loads(body)["id"]})
        return web.json_response({"accepted": True}, status=202)

    app = web.Application()
    app.router.add_post("/hop", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    sub = await js.pull_subscribe(
        subject,
        durable="bench-hop",
        stream=stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL),
    )

    async def consume() -> None:
        async def handle(msg: Any) -> None:
            body = msg.data.decode()
            key = json.loads(body)["id"]
            await pool.execute("INSERT INTO bench_hop VALUES ($1, $2)", uuid.UUID(key), body)
            await msg.ack()
            inserted[key].set_result(time.perf_counter())

        while True:
            with contextlib.suppress(TimeoutError):
                msgs = await sub.fetch(in_flight, timeout=1)
                await asyncio.gather(*(handle(m) for m in msgs))

    consumer = asyncio.create_task(consume())
    latencies: list[float] = []

    async def one() -> None:
        key = str(uuid.uuid4())
        inserted[key] = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        async with session.post(f"http://127.0.0.1:{port}/hop", json={"id": key, "reason": "x" * 200}) as resp:
            assert resp.status == 202
        latencies.append(await asyncio.wait_for(inserted[key], 30) - started)

    started = time.perf_counter()
    todo = list(range(count))

    async def worker() -> None:
        while todo:
            todo.pop()
            await one()

    try:
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return time.perf_counter() - started, latencies
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await runner.cleanup()
        await pool.close()
        await js.delete_stream(stream)


async def main(args: argparse.Namespace) -> int:
    async with sandbox("INFO") as box:
        system = System(SERVICES, box.env, box.logs)
        watch = Watch()
        missed: list[str] = []
        # Idle connections are dropped before the gateway drops them (its keep-alive is 5 s).
        connector = aiohttp.TCPConnector(limit=max(args.in_flight, 64) * 2, keepalive_timeout=2)
        try:
            for subject in DECIDED:
                await box.nc.subscribe(box.names.subject(subject), cb=watch.on_decision)
            await box.nc.subscribe(box.names.subject(evidence.PACKET_CREATED), cb=watch.on_packet)
            for subject in (workflow.RUN_COMPLETED, workflow.RUN_FAILED):
                await box.nc.subscribe(box.names.subject(subject), cb=watch.on_run_ended)
            async with aiohttp.ClientSession(connector=connector) as session:
                hop_s, hop_lat = await raw_hop(session, box.nc, box.dsn, box.names, args.promotions, args.in_flight)
                # Startup's yardstick: one process that only imports the kit's runtime.
                started = time.perf_counter()
                importer = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", "import stella.kit.service", env=box.env
                )
                if await importer.wait() != 0:
                    raise RuntimeError("python -c 'import stella.kit.service' failed")
                import_s = time.perf_counter() - started
                started = time.perf_counter()
                system.start()
                await system.ready(session, box.nc, box.names)
                startup_s = time.perf_counter() - started
                print(
                    f"startup: every process ready in {startup_s:.1f} s, {startup_s / import_s:.0f}x one process "
                    f"importing the kit ({import_s:.1f} s); logs in {box.logs}",
                    flush=True,
                )
                system.bootstrap(f"bench-{box.names.namespace}")
                dev = await system.call(session, "POST", "/environments", {"name": "dev", "order_index": 0})
                started = time.perf_counter()
                releases = await make_releases(system, session, args.promotions + args.rate_count)
                setup_s = time.perf_counter() - started
                before = system.cpu_ms()
                sat_started = time.perf_counter()
                pids = " ".join(f"{name}={proc.pid}" for name, proc in system.procs.items())
                print(f"saturation run starts ({pids})", flush=True)
                sat_s, sat_lat = await saturate(
                    system, session, watch, releases[: args.promotions], dev["id"], args.in_flight
                )
                await asyncio.sleep(2)  # evidence still being appended is what the lag measures
                after = system.cpu_ms()
                # All of the promotions' work: until every run has ended (deploy, health check, evidence).
                saturated = set(watch.decided)
                settle_started = time.perf_counter()
                while not saturated <= watch.runs_ended.keys() and time.perf_counter() - settle_started < args.settle_s:
                    await asyncio.sleep(0.2)
                settle_s = time.perf_counter() - settle_started
                await asyncio.sleep(1)
                settled = system.cpu_ms()
                ended = [watch.runs_ended[p] for p in saturated if p in watch.runs_ended]
                terminal_s = max(ended, default=time.perf_counter()) - sat_started
                # The offered rate is measured on a settled system, not beside the saturation run's backlog.
                rate_lat = await offered(system, session, watch, releases[args.promotions :], dev["id"], args.rate)
                await asyncio.sleep(2)
        finally:
            system.stop()

    n = args.promotions
    statuses = [status for _, status in watch.decided.values()]
    lags = [watch.packets[p] - t for p, (t, _) in watch.decided.items() if p in watch.packets]
    missing = len(watch.decided) - len(lags)
    hop_rate, sat_rate = n / hop_s, n / sat_s
    cost = {name: (after[name] - before[name]) / n for name in after}
    print(f"releases made (version + release + ready): {(n + args.rate_count) / setup_s:6.1f} /s")
    print(
        f"raw hop (baseline), {args.in_flight} in flight: {hop_rate:8.1f} /s, p50 {statistics.median(hop_lat) * 1e3:6.1f} ms"
    )
    print(
        f"promotions, {n} with {args.in_flight} in flight: {sat_rate:8.1f} /s, "
        f"p50 {statistics.median(sat_lat) * 1e3:6.1f} ms, p99 {percentile(sat_lat, 0.99) * 1e3:6.1f} ms, "
        f"{hop_s / sat_s * 100:5.1f}% of the raw hop rate (cost {sat_s / hop_s:.1f}x)"
    )
    print(f"  outcomes: { {s: statuses.count(s) for s in set(statuses)} }")
    print("  CPU ms per promotion: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(cost.items(), key=lambda i: -i[1])))
    print(f"  total CPU ms per promotion: {sum(cost.values()):.1f}")
    whole = {name: (settled[name] - before[name]) / n for name in settled}
    print(
        f"  all of their work ({len(ended)} of {n} runs ended {settle_s + 2:.1f} s after the last decision), "
        "CPU ms per promotion: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(whole.items(), key=lambda i: -i[1]))
    )
    print(f"  total CPU ms per promotion, all of its work: {sum(whole.values()):.1f}")
    print(
        f"  to the end of every run (deployed, health-checked, evidence step done): {len(ended) / terminal_s:.1f} /s "
        f"({terminal_s:.1f} s; one environment deploys one promotion at a time)"
    )
    print(
        f"evidence: {len(lags)} of {len(watch.decided)} decision packets seen; lag after the decision "
        f"p50 {statistics.median(lags) * 1e3 if lags else float('nan'):.0f} ms, "
        f"p99 {percentile(lags, 0.99) * 1e3 if lags else float('nan'):.0f} ms, max {max(lags, default=float('nan')):.2f} s"
    )
    p50, p90, p99 = (percentile(rate_lat, q) * 1e3 for q in (0.5, 0.9, 0.99))
    print(f"at {args.rate:g}/s offered ({args.rate_count}): p50 {p50:.0f} ms, p90 {p90:.0f} ms, p99 {p99:.0f} ms")
    refused = system.log_errors()
    if refused:
        missed.append(f"{len(refused)} 'too many connections' errors, first: {refused[0]}")
    if len(watch.decided) < n + args.rate_count:
        missed.append(f"only {len(watch.decided)} of {n + args.rate_count} promotions reached a decision")
    if len(ended) < len(saturated):
        missed.append(f"{len(saturated) - len(ended)} runs not ended {args.settle_s:g} s after the last decision")
    if missing:
        missed.append(f"{missing} decisions without their evidence packet")
    if startup_s > GOALS["startup_s"]:
        missed.append(f"startup {startup_s:.1f} s > {GOALS['startup_s']:g} s")
    if sat_rate < GOALS["throughput_per_s"]:
        missed.append(f"throughput {sat_rate:.1f}/s < {GOALS['throughput_per_s']:g}/s")
    if p50 > GOALS["p50_ms"] or p99 > GOALS["p99_ms"]:
        missed.append(f"latency at {args.rate:g}/s p50 {p50:.0f} ms / p99 {p99:.0f} ms > 50 / 250 ms")
    if sat_s / hop_s > GOALS["cost_vs_raw_hop"]:
        missed.append(f"cost {sat_s / hop_s:.1f}x the raw hop > {GOALS['cost_vs_raw_hop']:g}x")
    if lags and max(lags) > GOALS["evidence_lag_s"]:
        missed.append(f"evidence up to {max(lags):.2f} s after its decision > {GOALS['evidence_lag_s']:g} s")
    for line in missed:
        print(f"GOAL MISSED: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--promotions", type=int, default=200, help="promotions in the saturation run")
    parser.add_argument("--in-flight", type=int, default=20, help="promotions at once in the saturation run")
    parser.add_argument("--rate", type=float, default=10.0, help="offered promotions per second")
    parser.add_argument("--rate-count", type=int, default=100, help="promotions at the offered rate")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=600.0,
        help="seconds to wait, after the last decision, for every saturation run to end (deploys included)",
    )
    print(f"event loop: {environment_event_loop()}", flush=True)
    sys.exit(run_loop(main(parser.parse_args()), environment_event_loop()))
