"""Deployment fan-out: one job to many targets over simulated agents; orchestration time per target and peak RSS.

Every service and the gateway run as processes (:class:`stella.testing.system.System`) on a throwaway
database and NATS namespace (:func:`stella.testing.system.sandbox`). A swarm of simulated agents
(:mod:`stella.agent.swarm`: the real agent runtime, drivers that complete every task at once) runs in this
process. A release is promoted to an environment of N targets spread over the agents; the time from the
job's start to its end (its ``started_at`` and ``finished_at``) divided by N is the orchestration cost per
target: planning, leasing through the long-polled task feed, results, the job's progress and its end. It also
prints how many ``deployment.tasks_progressed`` events the large job caused per task (one per agent call and
job, not one per task).

Baseline, in the same run: the same job to as many targets as there are agents (one each), so the
ratio shows how the cost per target grows with fan-out. Peak RSS is the deployment service's high-water
mark (``VmHWM``) once the large job ended.

    uv run python tests/bench/deployment_fanout.py [TARGETS] [AGENTS] [--durable-journal]    # default 1000 50

The simulated agents share this process's event loop and this host's disk; their task journals are written
but not flushed (``--durable-journal``: flushed before each post, as a real agent, each on its own host, does),
so that the figure is the server side's and not fifty agents' flushes on one disk.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from stella.agent.swarm import Swarm
from stella.testing.system import System, sandbox

SERVICES = ("release", "promotion", "approval", "workflow", "evidence", "events", "deployment")
GOAL_MS_PER_TARGET = 2.0
GOAL_RSS_MB = 300.0
DIGEST = "sha256:" + "c" * 64


class Client:
    """Calls as the bench tenant's admin; a read the busy system did not answer in time is asked again."""

    def __init__(self, system: System, http: aiohttp.ClientSession) -> None:
        self.system = system
        self.http = http

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        for _ in range(30):
            try:
                return await self.system.call(self.http, method, path, body)
            except RuntimeError as error:
                if method != "GET" or ": 503 " not in str(error):
                    raise
                await asyncio.sleep(1)
        raise RuntimeError(f"{method} {path}: the service stayed unavailable")


def peak_rss_mb(system: System, service: str) -> float:
    for line in Path(f"/proc/{system.procs[service].pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def _targets(client: Client, environment: str, agent_ids: list[str], count: int, prefix: str) -> None:
    limit = asyncio.Semaphore(16)

    async def one(index: int) -> None:
        body = {
            "name": f"{prefix}-{index:05d}",
            "target_type": "docker_host",
            "agent_id": agent_ids[index % len(agent_ids)],
        }
        async with limit:
            for attempt in range(10):
                try:
                    await client.call("POST", f"/environments/{environment}/targets", body)
                    return
                except RuntimeError as error:
                    # A shared Postgres out of connections answers 503; a retry of a create that did
                    # happen finds the name taken (409).
                    if attempt and ": 409 " in str(error):
                        return
                    if ": 503 " not in str(error):
                        raise
                    await asyncio.sleep(1)
            raise RuntimeError(f"target {body['name']}: the system stayed unavailable")

    await asyncio.gather(*(one(index) for index in range(count)))


async def _job_time(client: Client, release: str, environment: str) -> tuple[float, dict[str, Any]]:
    promotion = await client.call("POST", "/promotions", {"release_id": release, "target_environment_id": environment})
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        state = await client.call("GET", f"/promotions/{promotion['id']}")
        if state["status"] in ("deployed", "failed", "rolled_back", "rejected", "cancelled"):
            break
        await asyncio.sleep(0.5)
    job = await client.call("GET", f"/promotions/{promotion['id']}/deployment")
    if job["status"] != "succeeded":
        raise RuntimeError(f"the job ended {job['status']}: {job.get('reason')}")
    started = datetime.fromisoformat(job["started_at"])
    finished = datetime.fromisoformat(job["finished_at"])
    return (finished - started).total_seconds(), job


async def _phases(conn: asyncpg.Connection, job: dict[str, Any]) -> dict[str, float]:
    """Seconds from the job's start to its first and last lease, its last task's end, and the job's end."""
    row = await conn.fetchrow(
        "SELECT min(leased_at) AS first, max(leased_at) AS last, max(finished_at) AS done"
        " FROM deployment.tasks WHERE job_id = $1",
        uuid.UUID(job["id"]),
    )
    started = datetime.fromisoformat(job["started_at"])
    finished = datetime.fromisoformat(job["finished_at"])
    return {
        "first lease": (row["first"] - started).total_seconds(),
        "last lease": (row["last"] - started).total_seconds(),
        "last task ended": (row["done"] - started).total_seconds(),
        "job ended": (finished - started).total_seconds(),
    }


async def _progress_events(conn: asyncpg.Connection, job: dict[str, Any]) -> tuple[int, int]:
    """The ``tasks_progressed`` events the job's tasks caused (one per agent call and job), and its tasks."""
    events = await conn.fetchval(
        "SELECT count(*) FROM deployment.outbox WHERE subject = 'stella.evt.deployment.tasks_progressed'"
        " AND payload::jsonb ->> 'job_id' = $1",
        job["id"],
    )
    tasks = await conn.fetchval("SELECT count(*) FROM deployment.tasks WHERE job_id = $1", uuid.UUID(job["id"]))
    return int(events), int(tasks)


async def main(targets: int, agent_count: int, durable_journal: bool) -> None:
    async with sandbox() as box:
        print(f"logs and agent state in {box.logs}", flush=True)
        env = {key: value for key, value in box.env.items() if not key.startswith("STELLA_AGENT_")}
        env["STELLA_DEPLOYMENT_TASK_POLL_TIMEOUT_S"] = "10"
        system = System(SERVICES, env, box.logs)
        system.start()
        reader: asyncpg.Connection | None = None
        # Idle connections are dropped before the gateway (uvicorn, 5 s) drops them, so that no post meets a
        # connection closed under it (and waits out a retry).
        connector = aiohttp.TCPConnector(limit=agent_count * 3 + 32, keepalive_timeout=3)
        try:
            async with aiohttp.ClientSession(connector=connector) as http:
                await system.ready(http, box.nc, box.names)
                # Opened now: a shared Postgres may have no connection left to give at the end.
                reader = await asyncpg.connect(box.dsn)
                await asyncio.to_thread(system.bootstrap, "bench")
                client = Client(system, http)
                await client.call(
                    "POST",
                    "/components",
                    {
                        "name": "web",
                        "image_repository": "registry.invalid/bench/web",
                        "versioning_strategy": {"resolve": "version-map"},
                    },
                )
                release = await client.call(
                    "POST", "/releases", {"name": "bench-1", "components": [{"component": "web", "digest": DIGEST}]}
                )
                await client.call("POST", f"/releases/{release['id']}/ready")
                small = (await client.call("POST", "/environments", {"name": "small", "order_index": 0}))["id"]
                large = (await client.call("POST", "/environments", {"name": "large", "order_index": 1}))["id"]

                tokens = [(await client.call("POST", "/agent-tokens", {}))["token"] for _ in range(agent_count)]
                root = system.base.removesuffix("/api/v1")
                swarm = Swarm(
                    http,
                    root,
                    box.logs / "swarm",
                    agent_count,
                    tokens,
                    max_concurrent_tasks=50,
                    durable_journal=durable_journal,
                )
                await swarm.register()
                agent_ids = [str(agent.identity.agent_id) for agent in swarm.agents if agent.identity is not None]
                # Targets before the agents run, so that setting up is not measured against their polls.
                await _targets(client, small, agent_ids, agent_count, "small")
                await _targets(client, large, agent_ids, targets, "large")
                running = asyncio.create_task(swarm.run())

                baseline_s, _ = await _job_time(client, release["id"], small)
                print(f"baseline done; deploying to {targets} targets", flush=True)
                measured_s, job = await _job_time(client, release["id"], large)
                print("measured job done", flush=True)
                phases = await _phases(reader, job)
                progress_events, task_count = await _progress_events(reader, job)
                rss = peak_rss_mb(system, "deployment")
                swarm.stop()
                await asyncio.wait_for(running, 60)
        finally:
            if reader is not None:
                await reader.close()
            system.stop()

    baseline_ms = baseline_s * 1000 / agent_count
    measured_ms = measured_s * 1000 / targets
    print(f"fan-out: {targets} targets over {agent_count} simulated agents, a job of {job['target_count']} targets")
    print(f"  baseline ({agent_count} targets, one per agent): {baseline_s:.2f} s, {baseline_ms:.2f} ms per target")
    print(f"  measured ({targets} targets): {measured_s:.2f} s, {measured_ms:.2f} ms per target")
    print(f"  ratio (per target, measured / baseline): {measured_ms / baseline_ms:.2f}")
    print(f"  orchestration: {measured_ms:.2f} ms per target (goal <= {GOAL_MS_PER_TARGET:g})")
    print("  after the job's start: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items()))
    print(f"  deployment service peak RSS: {rss:.0f} MB (goal <= {GOAL_RSS_MB:g})")
    print(f"  simulated tasks run: {swarm.tasks_run}")
    print(
        f"  task progress events (deployment.tasks_progressed) of the large job: {progress_events} for "
        f"{task_count} tasks ({progress_events / max(task_count, 1):.3f} per task)"
    )
    if measured_ms > GOAL_MS_PER_TARGET or rss > GOAL_RSS_MB:
        sys.exit(1)


if __name__ == "__main__":
    flags = {arg for arg in sys.argv[1:] if arg.startswith("--")}
    sizes = [int(arg) for arg in sys.argv[1:] if not arg.startswith("--")]
    asyncio.run(main(sizes[0] if sizes else 1000, sizes[1] if len(sizes) > 1 else 50, "--durable-journal" in flags))
