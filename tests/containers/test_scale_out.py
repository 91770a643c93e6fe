"""Two replicas of every service and of the gateway, from the root compose file, under load and faults.

300 promotions go through the published port while one replica of every service is killed, NATS is
restarted and Postgres is restarted. The dev environment has one ``docker_host`` target served by the
compose file's agent container, which drives this host's Docker engine: every promotion approved for dev
is deployed there, a real image with a digest of its own pulled from a local registry. Afterwards every
promotion must have ended as its inputs say, and the effects, counted where they are stored, must have
happened once each: one decision per trigger, one approval request and one vote per approval, one workflow
run, one deployment job and task, one container created on the engine per deployment (read from the
engine's own event log), one evidence packet and one event per outcome; the evidence chain verifies
offline and no message was dead-lettered.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from stella.testing.docker import DockerJanitor
from stella.testing.images import http_image_config, http_image_files
from stella.testing.messaging import unique_token
from stella.testing.registry import LocalRegistry, push_image

from .conftest import ComposeProject, run

pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]

SCALED = (
    "release",
    "promotion",
    "approval",
    "workflow",
    "deployment",
    "evidence",
    "integration",
    "events",
    "gateway",
)
"""Every service of the compose file, each run as two replicas (the gateway included)."""

TARGET_LABEL = "stella.target.id"
"""The label the agent puts on every container it runs for a target."""

HEALTH = {"type": "container", "timeout_s": 5, "retries": 40, "interval_s": 0.5}
"""Running, and healthy by the image's own Docker health check (the agent cannot reach the host's ports)."""

RELEASES = 200
"""Releases promoted to dev; every fourth has a critical finding and is rejected by the security gate."""

STAGING = 100
"""Releases deployed in dev (through the agent) that go on to staging (no targets: deployed once approved),
where one approval is needed; every fifth is rejected."""

TOTAL = RELEASES + STAGING
RETRIED = {500, 502, 503, 504}
"""Answers a client retries with the same Idempotency-Key (the gateway or a dependency is away)."""

IN_FLIGHT = "RES_IDEMPOTENCY_IN_FLIGHT"
"""The first request with this Idempotency-Key is still being handled (or its gateway died): retry later."""

TERMINAL = {"rejected", "cancelled", "failed", "deployed", "rolled_back"}


def _decode(raw: bytes) -> Any:
    """A JSON answer, or its text when something else answered (a proxy's error page)."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


class Api:
    """The public API through the proxy, retried the way the API asks clients to retry."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session
        self.token = ""
        self.statuses: Counter[int | str] = Counter()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        key: str | None = None,
        token: str | None = None,
        deadline_s: float = 900,
    ) -> tuple[int, Any]:
        """One logical request: retried on connection errors and 5xx until ``deadline_s``."""
        headers = {"Authorization": f"Bearer {token or self.token}"}
        if key:
            headers["Idempotency-Key"] = key
        deadline = time.monotonic() + deadline_s
        delay = 0.2
        while True:
            try:
                async with self.session.request(
                    method, f"{self.base}{path}", json=json, headers=headers, timeout=aiohttp.ClientTimeout(total=60)
                ) as resp:
                    body = _decode(await resp.read())
                    self.statuses[resp.status] += 1
                    in_flight = resp.status == 409 and isinstance(body, dict) and body.get("code") == IN_FLIGHT
                    if resp.status not in RETRIED and not in_flight:
                        return resp.status, body
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.statuses[type(exc).__name__] += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path} kept failing for {deadline_s}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def post(self, path: str, body: Any, key: str, *, token: str | None = None, expect: int = 201) -> Any:
        status, answer = await self.call("POST", path, json=body, key=key, token=token)
        assert status == expect, (path, status, answer)
        return answer


@dataclass
class Watcher:
    """Reads every promotion's status in one paged list call a second and wakes those who wait for one."""

    api: Api
    statuses: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def run(self) -> None:
        while True:
            seen: dict[str, str] = {}
            token = None
            while True:
                path = "/api/v1/promotions?page_size=500" + (f"&page_token={token}" if token else "")
                status, page = await self.api.call("GET", path)
                if status != 200:
                    break
                seen.update({item["id"]: item["status"] for item in page["items"]})
                token = page.get("next_page_token")
                if not token:
                    break
            async with self.changed:
                self.statuses.update(seen)
                self.changed.notify_all()
            await asyncio.sleep(1.0)

    async def until(self, promotion: str, check: Callable[[str], bool], timeout: float = 900) -> str:
        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: check(self.statuses.get(promotion, ""))), timeout=timeout
            )
            return self.statuses[promotion]


@dataclass
class Plan:
    """What the run asked for and what each promotion must end as."""

    expected: dict[str, str] = field(default_factory=dict)
    staging: set[str] = field(default_factory=set)
    requested: int = 0
    reserved: int = 0
    faults: list[str] = field(default_factory=list)
    target: str = ""
    engine_events: Path | None = None


async def _wait_healthy(project: ComposeProject, replicas: int, timeout: float = 300) -> None:
    """Until every Stella container of the project reports healthy and the proxy answers."""
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while time.monotonic() < deadline:
        pending = []
        for service in SCALED:
            containers = project.containers(service)
            assert len(containers) == replicas, (service, containers)
            for container in containers:
                state = project.inspect(container)["State"]
                if state.get("Health", {}).get("Status") != "healthy":
                    pending.append(container)
        if not pending:
            return
        await asyncio.sleep(2)
    pytest.fail(f"not healthy after {timeout}s: {pending}")


def _digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


@dataclass
class Images:
    """The run's images in the local registry: ``web`` and one ``api`` image per release that reaches dev.

    The api images share one layer and differ only in their configuration's version label, so each has a
    digest of its own while the engine pulls a few bytes per deployment.
    """

    registry: LocalRegistry
    repository: str
    web: str
    files: dict[str, bytes]
    pushing: threading.Lock = field(default_factory=threading.Lock)
    """One push at a time: the registry's storage races when the same layer is uploaded twice at once."""

    @classmethod
    def push(cls, registry: LocalRegistry, run_id: str) -> Images:
        repository = f"stella-test/shop-{run_id}"
        files = http_image_files(run_id)
        images = cls(registry, repository, "", files)
        images.web = images.api(-1)
        return images

    def api(self, number: int) -> str:
        """Push the image of release ``number`` and return its digest."""
        version = f"{self.repository}-{number}"
        with self.pushing:
            return push_image(
                self.registry.url, self.repository, f"v{number}", files=self.files, config=http_image_config(version)
            )

    @property
    def reference(self) -> str:
        """``host:port/repository``, as the agent pulls it (the engine treats a loopback registry as insecure)."""
        return f"{self.registry.address}/{self.repository}"


async def test_two_replicas_of_everything_survive_kills_and_restarts(
    compose_project: ComposeProject, oci_registry: LocalRegistry, docker_janitor: DockerJanitor
) -> None:
    project = compose_project
    images = Images.push(oci_registry, unique_token())
    docker_janitor.add_registry(oci_registry.address)
    # The registry listens on this host's loopback, where the engine pulls from: the operator allows it.
    project.configure(STELLA_RELEASE_REGISTRY_ALLOWED_NETWORKS="127.0.0.0/8")
    started = time.monotonic()
    scale = [arg for service in SCALED for arg in ("--scale", f"{service}=2")]
    project.compose("up", "-d", *scale, timeout=900)
    await _wait_healthy(project, replicas=2)
    print(f"up and healthy in {time.monotonic() - started:.0f}s")

    # The bootstrap step printed the first admin token and kept it in its volume.
    printed = project.compose("logs", "--no-color", "bootstrap").stdout
    token = next(word for word in printed.split() if word.startswith("stl_"))
    stored = run(
        [
            "docker",
            "run",
            "--rm",
            "-v",
            f"{project.name}_admin-token:/admin:ro",
            project.variables["STELLA_IMAGE"],
            "cat",
            "/admin/admin-token",
        ]
    ).stdout.strip()
    assert stored == token

    async with aiohttp.ClientSession() as session:
        api = Api(f"http://127.0.0.1:{project.port}", session)
        api.token = token
        await _exercise(project, api, images, docker_janitor)
    print(f"answers: {dict(api.statuses)}; total {time.monotonic() - started:.0f}s")


async def _start_agent(project: ComposeProject, api: Api) -> str:
    """The compose file's agent container, registered with a one-time token; returns its id once online."""
    registration = await api.post("/api/v1/agent-tokens", {}, "agent-token")
    project.configure(STELLA_AGENT_REGISTRATION_TOKEN=registration["token"], STELLA_AGENT_NAME="scale-out")
    project.compose("--profile", "agent", "up", "-d", "--no-deps", "agent", timeout=300)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, page = await api.call("GET", "/api/v1/agents")
        online = [a["id"] for a in page["items"] if a["name"] == "scale-out" and a["status"] == "online"]
        if status == 200 and online:
            return str(online[0])
        await asyncio.sleep(1)
    logs = project.compose("--profile", "agent", "logs", "--no-color", "agent", check=False).stdout
    pytest.fail(f"the agent container did not come online:\n{logs[-3000:]}")


async def _exercise(project: ComposeProject, api: Api, images: Images, janitor: DockerJanitor) -> None:
    run_id = unique_token()
    plan = Plan()
    for name in ("api", "web"):
        await api.post(
            "/api/v1/components",
            {"name": name, "image_repository": images.reference, "versioning_strategy": {"resolve": "version-map"}},
            f"component-{name}",
        )
    security = {"gates": [{"type": "security", "name": "scan", "config": {"max_critical": 0}}]}
    dev = (
        await api.post(
            "/api/v1/environments",
            {"name": "dev", "order_index": 0, "config": {**security, "deployment": {"health_check": HEALTH}}},
            "env-dev",
        )
    )["id"]
    agent = await _start_agent(project, api)
    target = await api.post(
        f"/api/v1/environments/{dev}/targets",
        {"name": "dev-host", "target_type": "docker_host", "agent_id": agent},
        "target-dev",
    )
    janitor.add_label(TARGET_LABEL, target["id"])
    plan.target = target["id"]
    # The engine keeps only its last few hundred events: record them as they happen.
    plan.engine_events = project.logs.parent / "engine-events.jsonl"
    with plan.engine_events.open("wb") as out:
        recorder = await asyncio.create_subprocess_exec(
            "docker",
            "events",
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--filter",
            f"label={TARGET_LABEL}={plan.target}",
            "--format",
            "{{json .Actor.Attributes}}",
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
    staging = (
        await api.post(
            "/api/v1/environments",
            {"name": "staging", "order_index": 1, "required_approvals": 1, "require_sod": True, "config": security},
            "env-staging",
        )
    )["id"]
    approver = await api.post("/api/v1/principals", {"name": "approver", "roles": ["approver"]}, "approver")
    approver_token = (await api.post("/api/v1/tokens", {"principal_id": approver["id"]}, "approver-token"))["token"]
    web = images.web
    await api.post(
        "/api/v1/scan-results", {"digest": web, "critical": 0, "high": 0, "medium": 0}, "scan-web", expect=200
    )

    watcher = Watcher(api)
    watching = asyncio.create_task(watcher.run())
    gate = asyncio.Semaphore(12)
    killed: list[str] = []
    faults_done = asyncio.Event()

    async def lifecycle(i: int) -> None:
        async with gate:
            bad = i % 4 == 0
            digest = _digest(f"{run_id}-api-{i}") if bad else await asyncio.to_thread(images.api, i)
            scan = {"digest": digest, "critical": 3 if bad else 0, "high": 0, "medium": 0}
            await api.post("/api/v1/scan-results", scan, f"scan-{i}", expect=200)
            release = await api.post(
                "/api/v1/releases",
                {
                    "name": f"shop-{i}",
                    "components": [{"component": "api", "digest": digest}, {"component": "web", "digest": web}],
                },
                f"release-{i}",
            )
            await api.post(f"/api/v1/releases/{release['id']}/ready", None, f"ready-{i}", expect=200)
            to_dev = await api.post(
                "/api/v1/promotions", {"release_id": release["id"], "target_environment_id": dev}, f"dev-{i}"
            )
            plan.expected[to_dev["id"]] = "rejected" if bad else "deployed"
            plan.requested += 1
        outcome = await watcher.until(to_dev["id"], lambda s: s in TERMINAL)
        if bad or outcome != "deployed" or plan.reserved >= STAGING:
            return
        number, plan.reserved = plan.reserved, plan.reserved + 1
        async with gate:
            to_staging = await api.post(
                "/api/v1/promotions", {"release_id": release["id"], "target_environment_id": staging}, f"staging-{i}"
            )
            plan.staging.add(to_staging["id"])
            refuse = number % 5 == 4
            plan.expected[to_staging["id"]] = "rejected" if refuse else "deployed"
            plan.requested += 1
        await watcher.until(to_staging["id"], lambda s: s == "pending_approval" or s in TERMINAL)
        async with gate:
            vote = "reject" if refuse else "approve"
            await api.post(
                f"/api/v1/promotions/{to_staging['id']}/{vote}",
                {"comment": f"{vote} {i}"},
                f"vote-{i}",
                token=approver_token,
                expect=200,
            )

    async def faults() -> None:
        """Kill one replica of every service, restart NATS, restart Postgres, bring the killed ones back."""
        steps: list[tuple[int, str, Callable[[], Awaitable[None]]]] = [
            (TOTAL // 3, "killed one replica of every service", kill_one_of_each),
            (TOTAL // 2, "restarted NATS", lambda: restart("nats")),
            (2 * TOTAL // 3, "restarted Postgres", lambda: restart("postgres")),
            (5 * TOTAL // 6, "started the killed replicas again", start_killed),
        ]
        for threshold, what, action in steps:
            while plan.requested < threshold:
                await asyncio.sleep(0.2)
            await action()
            plan.faults.append(f"{datetime.now(UTC):%H:%M:%S} after {plan.requested} promotions: {what}")
        faults_done.set()

    async def kill_one_of_each() -> None:
        for service in SCALED:
            container = project.containers(service)[0]
            await asyncio.to_thread(run, ["docker", "kill", container])
            killed.append(container)

    async def restart(service: str) -> None:
        await asyncio.to_thread(run, ["docker", "restart", "--time", "10", project.containers(service)[0]])

    async def start_killed() -> None:
        await asyncio.to_thread(run, ["docker", "start", *killed])

    started = time.monotonic()
    injecting = asyncio.create_task(faults())
    try:
        await asyncio.wait_for(asyncio.gather(*(lifecycle(i) for i in range(RELEASES))), timeout=2400)
        assert plan.requested == TOTAL, plan.requested
        async with watcher.changed:
            await asyncio.wait_for(
                watcher.changed.wait_for(lambda: all(watcher.statuses.get(p) in TERMINAL for p in plan.expected)),
                timeout=900,
            )
        await asyncio.wait_for(faults_done.wait(), timeout=60)
    finally:
        injecting.cancel()
        watching.cancel()
        recorder.terminate()
        await recorder.wait()
    print(f"{TOTAL} promotions terminal in {time.monotonic() - started:.0f}s; faults: {plan.faults}")

    # Every promotion ended as its inputs say.
    wrong = {p: (watcher.statuses.get(p), want) for p, want in plan.expected.items() if watcher.statuses.get(p) != want}
    assert not wrong, wrong
    assert Counter(plan.expected.values()) == {"deployed": 150 + 80, "rejected": 50 + 20}

    await _replicas_back(project)
    await _report_footprint(project)
    await _one_packet_each(api, plan)
    await _chain_verifies_offline(api, project, plan)
    await _effects_once(project, plan)
    await _events_once_and_no_dead_letters(project, plan)


async def _replicas_back(project: ComposeProject) -> None:
    """Every replica, the killed ones included, is healthy again."""
    await _wait_healthy(project, replicas=2, timeout=180)


async def _report_footprint(project: ComposeProject) -> None:
    """Print each container's memory and the Postgres server connections by origin (for docs/operations.md)."""
    stats = await asyncio.to_thread(
        run, ["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *project.containers()]
    )
    print("memory:", "; ".join(line.split(" / ")[0] for line in stats.stdout.splitlines() if line.strip()))
    dsn = f"postgresql://stella:{project.variables['POSTGRES_PASSWORD']}@{project.address('postgres')}:5432/stella"
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT coalesce(nullif(application_name, ''), backend_type) AS who, count(*) AS n"
            " FROM pg_stat_activity WHERE datname = current_database() GROUP BY 1 ORDER BY 1"
        )
    finally:
        await conn.close()
    print("postgres connections:", {row["who"]: row["n"] for row in rows})


def _packet_types(plan: Plan) -> dict[str, list[str]]:
    """The packets each promotion must have: its decision, and its deployment job's once deployed."""
    return {
        p: (["deployment", "release_decision"] if outcome == "deployed" else ["release_decision"])
        for p, outcome in plan.expected.items()
    }


def _packet_total(plan: Plan) -> int:
    return sum(len(types) for types in _packet_types(plan).values())


async def _one_packet_each(api: Api, plan: Plan) -> None:
    """Exactly one release_decision packet per promotion (and one deployment packet per deployed one), through
    the API."""
    gate = asyncio.Semaphore(16)

    async def packets(promotion: str) -> list[dict[str, Any]]:
        async with gate:
            status, listing = await api.call("GET", f"/api/v1/promotions/{promotion}/evidence")
            assert status == 200, listing
            items: list[dict[str, Any]] = listing["items"]
            return items

    listings = await asyncio.gather(*(packets(p) for p in plan.expected))
    counts = {p: sorted(x["packet_type"] for x in items) for p, items in zip(plan.expected, listings, strict=True)}
    wanted = _packet_types(plan)
    assert counts == wanted, {p: t for p, t in counts.items() if t != wanted[p]}


async def _chain_verifies_offline(api: Api, project: ComposeProject, plan: Plan) -> None:
    """The tenant's export holds one packet per promotion in a gap-free chain, verified with the bundle alone."""
    async with api.session.get(
        f"{api.base}/api/v1/evidence/export",
        headers={"Authorization": f"Bearer {api.token}"},
        timeout=aiohttp.ClientTimeout(total=300),
    ) as resp:
        assert resp.status == 200, await resp.text()
        bundle = await resp.read()
    path = project.logs.parent / "evidence.tar.gz"
    path.write_bytes(bundle)
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        envelopes = sorted(n for n in tar.getnames() if n.startswith("envelopes/") and n.endswith(".dsse.json"))
    sequences = [int(Path(name).name.split("-", 1)[0]) for name in envelopes]
    assert sequences == list(range(1, _packet_total(plan) + 1)), sequences[:5]
    verified = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "stella.evidence.verify", str(path), "--trust-bundle-keys"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]


async def _effects_once(project: ComposeProject, plan: Plan) -> None:
    """Count the effects where they are stored: each happened once, whatever was retried or redelivered."""
    dsn = f"postgresql://stella:{project.variables['POSTGRES_PASSWORD']}@{project.address('postgres')}:5432/stella"
    conn = await asyncpg.connect(dsn)
    try:
        promotions = list(plan.expected)
        decisions = await conn.fetch(
            "SELECT promotion_id::text AS id, trigger, count(*) AS n FROM promotion.decisions GROUP BY 1, 2"
        )
        assert all(row["n"] == 1 for row in decisions), [dict(r) for r in decisions if r["n"] != 1]
        gates = {row["id"] for row in decisions if row["trigger"] == "gates"}
        assert gates == set(promotions)
        approvals = {row["id"] for row in decisions if row["trigger"] == "approvals"}
        assert approvals == plan.staging

        requests = await conn.fetch("SELECT promotion_id::text AS id FROM approval.approval_requests")
        assert sorted(r["id"] for r in requests) == sorted(plan.staging)
        votes = await conn.fetch(
            "SELECT promotion_id::text AS id, count(*) AS n FROM approval.approval_votes GROUP BY 1"
        )
        assert {r["id"]: r["n"] for r in votes} == dict.fromkeys(plan.staging, 1)

        runs = await conn.fetch("SELECT subject_id::text AS id, count(*) AS n FROM workflow.runs GROUP BY 1")
        assert {r["id"]: r["n"] for r in runs} == dict.fromkeys(promotions, 1)

        packets = await conn.fetch(
            "SELECT promotion_id::text AS id, packet_type, count(*) AS n FROM evidence.packets GROUP BY 1, 2"
        )
        assert all(r["n"] == 1 for r in packets), [dict(r) for r in packets if r["n"] != 1]
        by_promotion: dict[str, list[str]] = {}
        for r in packets:
            by_promotion.setdefault(r["id"], []).append(r["packet_type"])
        assert {p: sorted(t) for p, t in by_promotion.items()} == _packet_types(plan)
        sequences = [r["sequence"] for r in await conn.fetch("SELECT sequence FROM evidence.packets ORDER BY 1")]
        assert sequences == list(range(1, _packet_total(plan) + 1))
        jobs = await conn.fetch(
            "SELECT promotion_id::text AS id, count(*) AS n FROM deployment.jobs WHERE kind = 'deploy' GROUP BY 1"
        )
        deployed = [p for p, outcome in plan.expected.items() if outcome == "deployed"]
        assert {r["id"]: r["n"] for r in jobs} == dict.fromkeys(deployed, 1)
        await _deployed_once_on_the_engine(conn, plan)
    finally:
        await conn.close()


async def _deployed_once_on_the_engine(conn: asyncpg.Connection, plan: Plan) -> None:
    """Every promotion deployed in dev had one deploy task on the agent's target, which succeeded, and the
    engine created the api container once for it (its own event log says so): whatever was killed, restarted
    or redelivered, no deployment ran twice in effect."""
    rows = await conn.fetch(
        "SELECT j.promotion_id::text AS promotion, j.id::text AS job, count(*) AS tasks,"
        " count(*) FILTER (WHERE t.status = 'succeeded') AS succeeded"
        " FROM deployment.jobs j JOIN deployment.tasks t ON t.job_id = j.id"
        " WHERE j.kind = 'deploy' AND t.type = 'deploy' AND t.target_id = $1 GROUP BY 1, 2",
        plan.target,
    )
    in_dev = {p for p, outcome in plan.expected.items() if outcome == "deployed" and p not in plan.staging}
    assert {r["promotion"] for r in rows} == in_dev
    assert all(r["tasks"] == 1 and r["succeeded"] == 1 for r in rows), [dict(r) for r in rows if r["tasks"] != 1]
    assert plan.engine_events is not None
    lines = plan.engine_events.read_text().splitlines()
    created: Counter[tuple[str, str]] = Counter()
    for line in lines:
        attributes = json.loads(line)
        created[(attributes["stella.component.name"], attributes["stella.deployment.id"])] += 1
    jobs = {r["job"] for r in rows}
    api = {job: n for (component, job), n in created.items() if component == "api"}
    assert api == dict.fromkeys(jobs, 1), {job: api.get(job, 0) for job in jobs if api.get(job) != 1}
    assert sum(n for (component, _), n in created.items() if component == "web") == 1, created
    print(f"engine: {sum(created.values())} containers created for {len(jobs)} deployments in dev")


async def _events_once_and_no_dead_letters(project: ComposeProject, plan: Plan) -> None:
    """One outcome event and one packet event per promotion on the event stream; no dead letter anywhere."""
    nc = await nats.connect(f"nats://{project.address('nats')}:4222", connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream()
        outcomes: Counter[str] = Counter()
        packets: Counter[str] = Counter()
        for subject, counter, key in (
            ("stella.evt.promotion.promotion_approved", outcomes, "promotion"),
            ("stella.evt.promotion.promotion_rejected", outcomes, "promotion"),
            ("stella.evt.evidence.packet_created", packets, "promotion_id"),
        ):
            await _count_events(js, subject, counter, key)
        assert outcomes == Counter(dict.fromkeys(plan.expected, 1)), {p: n for p, n in outcomes.items() if n != 1}
        wanted = Counter({p: len(types) for p, types in _packet_types(plan).items()})
        assert packets == wanted, {p: n for p, n in packets.items() if n != wanted[p]}
        dead = await js.stream_info("STELLA_DLQ")
        assert dead.state.messages == 0, f"{dead.state.messages} dead letters (subjects: {dead.state.subjects})"
    finally:
        await nc.close()


async def _count_events(js: Any, subject: str, counter: Counter[str], key: str) -> None:
    """Read every message of ``subject`` from the event stream and count them by promotion."""
    info = await js.stream_info("STELLA_EVENTS", subjects_filter=subject)
    total = (info.state.subjects or {}).get(subject, 0)
    if not total:
        return
    sub = await js.pull_subscribe(
        subject,
        durable=None,
        stream="STELLA_EVENTS",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=60),
    )
    try:
        read = 0
        while read < total:
            for msg in await sub.fetch(min(256, total - read), timeout=10):
                payload = json.loads(msg.data)
                value = payload[key]
                counter[value["id"] if isinstance(value, dict) else str(value)] += 1
                read += 1
                await msg.ack()
    finally:
        await sub.unsubscribe()
