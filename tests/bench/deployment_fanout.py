"""Deployment fan-out: one job to many targets over simulated agents; orchestration time per target and peak RSS.

Every service and the gateway run as processes on a throwaway database and NATS namespace (the Postgres
and NATS of STELLA_DATABASE_URL / STELLA_NATS_URL, or the local defaults). A swarm of simulated agents
(:mod:`stella.agent.swarm`: the real agent runtime, drivers that complete every task at once) runs in this
process. A release is promoted to an environment of N targets spread over the agents; the time from the
job's start to its end (its ``started_at`` and ``finished_at``) divided by N is the orchestration cost per
target: planning, leasing through the long-polled task feed, results, the job's progress and its end.

Baseline, in the same run: the same job to as many targets as there are agents (one each), so the
ratio shows how the cost per target grows with fan-out. Peak RSS is the deployment service's high-water
mark (``VmHWM``) once the large job ended.

    uv run python tests/bench/deployment_fanout.py [TARGETS] [AGENTS]    # default 1000 50
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats

from stella.agent.swarm import Swarm
from stella.kit.embedded import free_port
from stella.kit.naming import Names
from stella.kit.settings import ServiceSettings
from stella.testing.services import delete_namespace_streams

SERVICES = ("release", "promotion", "approval", "workflow", "evidence", "events", "deployment")
GATEWAY_BOOTSTRAP = (sys.executable, "-m", "stella.gateway", "bootstrap", "--tenant", "bench", "--admin", "admin")
GOAL_MS_PER_TARGET = 2.0
GOAL_RSS_MB = 300.0
DIGEST = "sha256:" + "c" * 64


class System:
    """The services and the gateway as processes, and an HTTP client for one tenant."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.base = f"http://127.0.0.1:{env['STELLA_GATEWAY_PORT']}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""
        self.http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        for service in (*SERVICES, "gateway"):
            argv = [sys.executable, "-m", f"stella.{service}"] + (["serve"] if service == "gateway" else [])
            log = (self.logs / f"{service}.log").open("ab")
            self.procs[service] = subprocess.Popen(argv, env=self.env, stdout=log, stderr=log)

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    async def ready(self) -> None:
        assert self.http is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with self.http.get(f"{self.base}/readyz") as resp:
                    if resp.status == 200:
                        break
            await asyncio.sleep(0.3)
        else:
            raise TimeoutError(f"the gateway did not become ready; logs in {self.logs}")
        self.token = await asyncio.to_thread(self.bootstrap)

    def bootstrap(self) -> str:
        """Create the bench tenant and its admin; returns the admin's token."""
        token_file = self.logs / "token"
        subprocess.run(
            [*GATEWAY_BOOTSTRAP, "--token-file", str(token_file)],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        return token_file.read_text().strip()

    async def call(self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200, 201)) -> Any:
        """One call as the tenant's admin; a read the busy service did not answer in time is asked again."""
        assert self.http is not None
        headers = {"Authorization": f"Bearer {self.token}"}
        for _ in range(30):
            async with self.http.request(method, self.base + path, json=body, headers=headers) as resp:
                answer = await resp.json(content_type=None) if await resp.read() else None
                if resp.status == 503 and method == "GET":
                    await asyncio.sleep(1)
                    continue
                if resp.status not in expect:
                    raise RuntimeError(f"{method} {path}: {resp.status} {answer}")
                return answer
        raise RuntimeError(f"{method} {path}: the service stayed unavailable")

    def peak_rss_mb(self, service: str) -> float:
        for line in Path(f"/proc/{self.procs[service].pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")


async def _targets(system: System, environment: str, agent_ids: list[str], count: int, prefix: str) -> None:
    limit = asyncio.Semaphore(16)

    async def one(index: int) -> None:
        async with limit:
            await system.call(
                "POST",
                f"/api/v1/environments/{environment}/targets",
                {
                    "name": f"{prefix}-{index:05d}",
                    "target_type": "docker_host",
                    "agent_id": agent_ids[index % len(agent_ids)],
                },
            )

    await asyncio.gather(*(one(index) for index in range(count)))


async def _job_time(system: System, release: str, environment: str) -> tuple[float, dict[str, Any]]:
    promotion = await system.call(
        "POST", "/api/v1/promotions", {"release_id": release, "target_environment_id": environment}
    )
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        state = await system.call("GET", f"/api/v1/promotions/{promotion['id']}")
        if state["status"] in ("deployed", "failed", "rolled_back", "rejected", "cancelled"):
            break
        await asyncio.sleep(0.5)
    job = await system.call("GET", f"/api/v1/promotions/{promotion['id']}/deployment")
    if job["status"] != "succeeded":
        raise RuntimeError(f"the job ended {job['status']}: {job.get('reason')}")
    started = datetime.fromisoformat(job["started_at"])
    finished = datetime.fromisoformat(job["finished_at"])
    return (finished - started).total_seconds(), job


async def main(targets: int, agent_count: int) -> None:
    settings = ServiceSettings()
    admin = await asyncpg.connect(settings.database_url)
    database = f"bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{database}"')
    namespace = f"bench{uuid.uuid4().hex[:6]}"
    logs = Path(tempfile.mkdtemp(prefix="stella-bench-"))
    print(f"logs and agent state in {logs}", flush=True)
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("STELLA_AGENT_")},
        "STELLA_DATABASE_URL": settings.database_url.rsplit("/", 1)[0] + f"/{database}",
        "STELLA_NATS_URL": settings.nats_url,
        "STELLA_NATS_NAMESPACE": namespace,
        "STELLA_GATEWAY_PORT": str(free_port()),
        "STELLA_LOG_LEVEL": "WARNING",
        "STELLA_EVIDENCE_KEY_DIR": str(logs / "keys"),
        "STELLA_EVENTS_KEY_DIR": str(logs / "keys"),
        "STELLA_DEPLOYMENT_TASK_POLL_TIMEOUT_S": "10",
    }
    system = System(env, logs)
    system.start()
    connector = aiohttp.TCPConnector(limit=agent_count * 3 + 32)
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            system.http = http
            await system.ready()
            await system.call(
                "POST",
                "/api/v1/components",
                {
                    "name": "web",
                    "image_repository": "registry.invalid/bench/web",
                    "versioning_strategy": {"resolve": "version-map"},
                },
            )
            release = await system.call(
                "POST", "/api/v1/releases", {"name": "bench-1", "components": [{"component": "web", "digest": DIGEST}]}
            )
            await system.call("POST", f"/api/v1/releases/{release['id']}/ready")
            small = (await system.call("POST", "/api/v1/environments", {"name": "small", "order_index": 0}))["id"]
            large = (await system.call("POST", "/api/v1/environments", {"name": "large", "order_index": 1}))["id"]

            tokens = [(await system.call("POST", "/api/v1/agent-tokens", {}))["token"] for _ in range(agent_count)]
            swarm = Swarm(http, system.base, logs / "swarm", agent_count, tokens, max_concurrent_tasks=50)
            await swarm.register()
            agent_ids = [str(agent.identity.agent_id) for agent in swarm.agents if agent.identity is not None]
            # Targets before the agents run, so that setting up is not measured against their polls.
            await _targets(system, small, agent_ids, agent_count, "small")
            await _targets(system, large, agent_ids, targets, "large")
            running = asyncio.create_task(swarm.run())

            baseline_s, _ = await _job_time(system, release["id"], small)
            measured_s, job = await _job_time(system, release["id"], large)
            rss = system.peak_rss_mb("deployment")
            swarm.stop()
            await asyncio.wait_for(running, 60)

        baseline_ms = baseline_s * 1000 / agent_count
        measured_ms = measured_s * 1000 / targets
        print(f"fan-out: {targets} targets over {agent_count} simulated agents, {len(job['tasks'])} tasks")
        print(f"  baseline ({agent_count} targets, one per agent): {baseline_s:.2f} s, {baseline_ms:.2f} ms per target")
        print(f"  measured ({targets} targets): {measured_s:.2f} s, {measured_ms:.2f} ms per target")
        print(f"  ratio (per target, measured / baseline): {measured_ms / baseline_ms:.2f}")
        print(f"  orchestration: {measured_ms:.2f} ms per target (goal <= {GOAL_MS_PER_TARGET:g})")
        print(f"  deployment service peak RSS: {rss:.0f} MB (goal <= {GOAL_RSS_MB:g})")
        print(f"  simulated tasks run: {swarm.tasks_run}")
    finally:
        system.stop()
        nc = await nats.connect(settings.nats_url)
        await delete_namespace_streams(nc.jetstream(), Names(namespace))
        await nc.close()
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, int(sys.argv[2]) if len(sys.argv) > 2 else 50))
