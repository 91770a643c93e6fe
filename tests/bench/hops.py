"""Hops per promotion: every NATS message and Postgres statement each process spends on one promotion.

Starts the system as ``promotions.py`` does, with ``tests/bench/hops_probe`` on ``PYTHONPATH`` (a
``sitecustomize`` that counts, per process, the statements sent to Postgres and the messages published to and
received from NATS), makes the releases, then promotes them into a 0-approval environment **one at a time**,
each until its decision and its ``release_decision`` packet are published, then waits for every run to end.
The counts over an idle window of the same length (relays and timers polling) are taken off. Prints the table per process, divided by the number
of promotions: statements, transactions, messages, the CPU milliseconds of each process and the milliseconds
its statements waited for Postgres (round trip and execution), and the time to the decision one promotion
takes with the system otherwise idle.

    uv run python tests/bench/hops.py [--promotions N] [--detail]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from stella.contracts import evidence, workflow
from stella.testing.system import System, percentile, sandbox

sys.path.insert(0, str(Path(__file__).parent))
promotions: Any = importlib.import_module("promotions")  # the system, releases and watch of promotions.py
DECIDED, SERVICES, Watch, make_releases = (
    promotions.DECIDED,
    promotions.SERVICES,
    promotions.Watch,
    promotions.make_releases,
)

PROBE = Path(__file__).parent / "hops_probe"


def snapshot(system: System, where: Path) -> dict[str, dict[str, Counter[str]]]:
    cpu = system.cpu_ms()
    for proc in system.procs.values():
        os.kill(proc.pid, signal.SIGUSR1)
    time.sleep(1.0)
    counts: dict[str, dict[str, Counter[str]]] = {}
    for name, proc in system.procs.items():
        data = json.loads((where / f"{proc.pid}.json").read_text())
        counts[name] = {kind: Counter(data[kind]) for kind in ("sql", "sqlt", "published", "received")}
        counts[name]["cpu"] = Counter({"ms": cpu[name]})
    return counts


def delta(
    a: dict[str, dict[str, Counter[str]]], b: dict[str, dict[str, Counter[str]]]
) -> dict[str, dict[str, Counter[str]]]:
    return {name: {kind: b[name][kind] - a[name][kind] for kind in b[name]} for name in b}


async def main(args: argparse.Namespace) -> int:
    where = Path(tempfile.mkdtemp(prefix="stella-hops-"))
    os.environ["STELLA_HOPS_DIR"] = str(where)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")]))
    async with sandbox("WARNING") as box:
        system = System(SERVICES, box.env, box.logs)
        watch = Watch()
        try:
            for subject in DECIDED:
                await box.nc.subscribe(box.names.subject(subject), cb=watch.on_decision)
            await box.nc.subscribe(box.names.subject(evidence.PACKET_CREATED), cb=watch.on_packet)
            ended = 0

            async def on_run_ended(msg: Any) -> None:
                nonlocal ended
                ended += 1

            for subject in (workflow.RUN_COMPLETED, workflow.RUN_FAILED):
                await box.nc.subscribe(box.names.subject(subject), cb=on_run_ended)
            # Idle connections are dropped before the gateway drops them (its keep-alive is 5 s).
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=2)) as session:
                system.start()
                await system.ready(session, box.nc, box.names)
                system.bootstrap(f"hops-{box.names.namespace}")
                dev = await system.call(session, "POST", "/environments", {"name": "dev", "order_index": 0})
                releases = await make_releases(system, session, args.promotions)
                await asyncio.sleep(3)
                first = snapshot(system, where)
                started = time.perf_counter()
                outcomes: Counter[str] = Counter()
                to_decision: list[float] = []
                for release in releases:
                    body = {"release_id": release, "target_environment_id": dev["id"], "reason": "hops"}
                    asked = time.perf_counter()
                    created = await system.call(session, "POST", "/promotions", body)
                    await asyncio.wait_for(watch.wait(created["id"]), timeout=60)
                    to_decision.append(watch.decided[created["id"]][0] - asked)
                    while created["id"] not in watch.packets:
                        await asyncio.sleep(0.02)
                    outcomes[watch.decided[created["id"]][1]] += 1
                # The runs go on after their decision (deploy, health check, evidence step; one environment
                # deploys one promotion at a time): what they do belongs to the busy window, not the idle one.
                for _ in range(3000):
                    if ended >= len(releases):
                        break
                    await asyncio.sleep(0.02)
                else:
                    raise SystemExit(f"only {ended} of {len(releases)} runs ended within 60 s of the last decision")
                await asyncio.sleep(1)
                busy_s = time.perf_counter() - started
                second = snapshot(system, where)
                await asyncio.sleep(busy_s)
                third = snapshot(system, where)
        finally:
            system.stop()
    busy, idle = delta(first, second), delta(second, third)
    n = args.promotions
    print(f"{n} promotions one at a time in {busy_s:.1f} s, outcomes {dict(outcomes)}; idle window subtracted")
    print(
        f"request to decision, one at a time: p50 {1000 * percentile(to_decision, 0.5):.1f} ms, "
        f"max {1000 * max(to_decision):.1f} ms"
    )
    columns = {
        "stmts": 6,
        "tx": 5,
        "savept": 6,
        "js pub": 6,
        "acks": 5,
        "fetch": 5,
        "replies": 7,
        "recv": 5,
        "cpu ms": 7,
        "db ms": 6,
    }
    print(f"{'process':<11} " + " ".join(f"{k:>{w}}" for k, w in columns.items()))
    totals: Counter[str] = Counter()
    for name in (*SERVICES, "gateway"):
        net = {kind: busy[name][kind] - idle[name][kind] for kind in busy[name]}
        sql, pub, recv = net["sql"], net["published"], net["received"]
        row = {
            "stmts": sum(sql.values()) / n,  # statements sent to Postgres, BEGIN and COMMIT included
            "tx": sum(v for k, v in sql.items() if k.startswith("BEGIN")) / n,  # transactions
            "savept": sum(v for k, v in sql.items() if "SAVEPOINT" in k) / n,
            "js pub": sum(v for k, v in pub.items() if not k.startswith(("$JS", "_INBOX"))) / n,
            "acks": pub["$JS.ACK (ack)"] / n,
            "fetch": pub["$JS.API.CONSUMER.MSG.NEXT (fetch)"] / n,
            "replies": pub["_INBOX (reply)"] / n,
            "recv": sum(v for k, v in recv.items() if not k.startswith(("_INBOX", "$JS"))) / n,
            # CPU of the process, and the time its statements waited for Postgres (both in ms per promotion)
            "cpu ms": net["cpu"]["ms"] / n,
            "db ms": 1000 * sum(net["sqlt"].values()) / n,
        }
        totals.update(row)
        print(f"{name:<11} " + " ".join(f"{row[k]:>{w}.1f}" for k, w in columns.items()))
        if args.detail:
            for kind, counter in net.items():
                if kind in ("cpu", "sqlt"):
                    continue
                for key, value in sorted(counter.items(), key=lambda i: -i[1]):
                    if value / n >= 0.5:
                        took = f"{1000 * net['sqlt'][key] / n:6.2f} ms" if kind == "sql" else " " * 9
                        print(f"    {kind:<9} {value / n:5.1f} {took}  {key}")
    print(f"{'total':<11} " + " ".join(f"{totals[k]:>{w}.1f}" for k, w in columns.items()))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--promotions", type=int, default=10, help="promotions, one at a time")
    parser.add_argument("--detail", action="store_true", help="print every statement and subject per process")
    sys.exit(asyncio.run(main(parser.parse_args())))
