"""Fault injection: Postgres, then NATS, stopped for 30 s each under a steady flow of promotions.

The whole system runs as processes on a Postgres and a NATS of the test's own (embedded servers on free
ports, so the test can stop and start them without touching anybody else's). A client that does what the API
asks (retry a 503 after ``Retry-After`` with the same ``Idempotency-Key``) keeps requesting promotions the whole
time. Afterwards every promotion is decided, its run succeeded and it has exactly one ``release_decision``
packet; the evidence chain verifies offline; no message was dead-lettered; and while a dependency was down the
API answered 503, never another 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats as nats_py
import pytest
import pytest_asyncio

from stella.contracts.streams import DEAD_LETTERS
from stella.kit.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from stella.kit.naming import Names

from .conftest import HEADLESS, Stack, _running

# Two 30 s outages under a flow of 200+ promotions that each deploy, check health and sign two packets.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

OUTAGE_S = 30.0
"""How long each dependency stays down."""

MIN_PROMOTIONS = 200
"""Promotions the flow requests at least."""

WORKERS = 6
"""Clients requesting promotions at the same time."""

RATE_PER_S = 8.0
"""Promotions requested per second at most (the flow is steady, not a stress test)."""

DECIDED = {"deployed", "rejected", "cancelled", "failed", "rolled_back"}
"""Where a promotion ends: it is decided and, when approved, deployed (no targets: at once)."""
DIGESTS = {"api": "sha256:" + "c" * 64, "web": "sha256:" + "d" * 64}


@dataclass
class Servers:
    """The test's own Postgres and NATS."""

    postgres: EmbeddedPostgres
    nats: EmbeddedNats
    database_url: str


@pytest_asyncio.fixture
async def servers() -> AsyncIterator[Servers]:
    """A Postgres and a NATS of the test's own, on free ports, with data that survives a restart.

    Their data lives in a temporary directory of its own, not under pytest's base directory: another pytest
    run on the machine resets that one to mode 0700, which would lock out the server's unprivileged user.
    """
    data = Path(tempfile.mkdtemp(prefix="stella-faults-"))
    postgres = EmbeddedPostgres(data_dir=data / "pg", port=free_port(), durable=False)
    nats_server = EmbeddedNats(data_dir=data / "nats", port=free_port())
    try:
        await asyncio.to_thread(postgres.start)
        await asyncio.to_thread(nats_server.start)
        conn = await asyncpg.connect(postgres.url)
        try:
            await conn.execute("CREATE DATABASE stella")
        finally:
            await conn.close()
        yield Servers(postgres, nats_server, postgres.dsn("stella"))
    finally:
        await asyncio.to_thread(nats_server.stop)
        await asyncio.to_thread(postgres.stop)
        shutil.rmtree(data, ignore_errors=True)


@pytest_asyncio.fixture
async def faulty_stack(servers: Servers, unique_id: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """Every service and the gateway on the test's own servers."""
    client = await nats_py.connect(
        servers.nats.url, name=f"faults-{unique_id}", allow_reconnect=True, max_reconnect_attempts=-1
    )
    try:
        async with _running(
            HEADLESS, servers.database_url, servers.nats.url, client, "faults", unique_id, tmp_path
        ) as system:
            yield system
    finally:
        with contextlib.suppress(Exception):
            await client.close()


@dataclass
class Flow:
    """A steady flow of promotions from clients that retry as the API asks; records every answer."""

    stack: Stack
    answers: list[tuple[float, str, int, str]] = field(default_factory=list)
    """(time, method and path, status, code) of every answer."""
    promotions: list[str] = field(default_factory=list)
    no_answer: list[tuple[float, str, str]] = field(default_factory=list)
    """Requests that got no HTTP answer at all: (time, method and path, error)."""
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def call(self, method: str, path: str, body: dict[str, Any], *, ok: int) -> dict[str, Any]:
        """Send until the answer is ``ok``, retrying 503 and 409 (key in flight) with the same key."""
        key = str(uuid.uuid4())
        assert self.stack.http is not None
        while True:
            started = time.monotonic()
            try:
                async with self.stack.http.request(
                    method,
                    f"{self.stack.base}{path}",
                    json=body,
                    headers={"Authorization": f"Bearer {self.stack.token}", "Idempotency-Key": key},
                    timeout=aiohttp.ClientTimeout(total=60),
                ) as resp:
                    answer = await resp.json(content_type=None)
                    retry_after = resp.headers.get("Retry-After")
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.no_answer.append((started, f"{method} {path}", repr(exc)))
                await asyncio.sleep(1)
                continue
            code = answer.get("code", "") if isinstance(answer, dict) else ""
            self.answers.append((started, f"{method} {path}", status, code))
            if status == ok:
                return answer
            assert status in (503, 409), (method, path, status, answer)
            if status == 503:
                assert retry_after is not None, answer
            await asyncio.sleep(min(float(retry_after or 1), 2.0))

    async def promote(self, environment: str, n: int) -> None:
        release = await self.call(
            "POST",
            "/api/v1/releases",
            {"name": f"fault-{n}", "components": [{"component": c, "digest": d} for c, d in DIGESTS.items()]},
            ok=201,
        )
        await self.call("POST", f"/api/v1/releases/{release['id']}/ready", {}, ok=200)
        promotion = await self.call(
            "POST",
            "/api/v1/promotions",
            {"release_id": release["id"], "target_environment_id": environment, "reason": f"flow {n}"},
            ok=201,
        )
        self.promotions.append(promotion["id"])

    async def run(self, environment: str) -> None:
        """Request promotions until told to stop, at most ``RATE_PER_S`` per second across the workers."""
        counter = iter(range(1_000_000))
        next_slot = time.monotonic()

        async def worker() -> None:
            nonlocal next_slot
            while not self.stop.is_set():
                # Steady: one slot every 1/RATE_PER_S seconds, and no burst to catch up after an outage.
                now = time.monotonic()
                slot, next_slot = max(next_slot, now), max(next_slot, now) + 1 / RATE_PER_S
                await asyncio.sleep(slot - now)
                await self.promote(environment, next(counter))

        await asyncio.gather(*(worker() for _ in range(WORKERS)))

    def answers_between(self, start: float, end: float) -> list[tuple[float, str, int, str]]:
        return [a for a in self.answers if start <= a[0] <= end]


async def _get_all(stack: Stack, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        query = f"page_size=500&page_token={token}" if token else "page_size=500"
        status, page, _ = await stack.call("GET", f"{path}{'&' if '?' in path else '?'}{query}")
        assert status == 200, page
        items += page["items"]
        token = page["next_page_token"]
        if token is None:
            return items


async def _outage(stop: Any, start: Any) -> tuple[float, float]:
    """Stop a server for ``OUTAGE_S`` seconds; returns when it was down (monotonic times)."""
    await asyncio.to_thread(stop)
    down = time.monotonic()
    await asyncio.sleep(OUTAGE_S)
    up = time.monotonic()
    await asyncio.to_thread(start)
    return down, up


async def test_a_flow_of_promotions_survives_postgres_and_nats_outages(
    faulty_stack: Stack, servers: Servers, tmp_path: Path
) -> None:
    stack = faulty_stack
    for component in DIGESTS:
        status, body, _ = await stack.call(
            "POST",
            "/api/v1/components",
            json={"name": component, "image_repository": f"registry.invalid/faults/{component}"},
        )
        assert status == 201, body
    status, env, _ = await stack.call("POST", "/api/v1/environments", json={"name": "dev", "order_index": 0})
    assert status == 201, env

    flow = Flow(stack)
    load = asyncio.create_task(flow.run(env["id"]))
    try:
        await asyncio.sleep(8)
        in_flight_at_pg_stop = len(flow.promotions)
        pg_down, pg_up = await _outage(servers.postgres.stop, servers.postgres.start)
        await asyncio.sleep(10)
        nats_down, nats_up = await _outage(servers.nats.stop, servers.nats.start)
        deadline = time.monotonic() + 300
        while len(flow.promotions) < MIN_PROMOTIONS or time.monotonic() < nats_up + 10:
            assert not load.done(), load.exception()
            assert time.monotonic() < deadline, f"only {len(flow.promotions)} promotions in time"
            await asyncio.sleep(0.5)
    finally:
        flow.stop.set()
        await load

    statuses = Counter(status for _, _, status, _ in flow.answers)
    assert flow.no_answer == [], flow.no_answer[:10]
    assert not [a for a in flow.answers if a[2] >= 500 and a[2] != 503], statuses
    # Promotions were requested before, between and after the outages.
    assert 0 < in_flight_at_pg_stop < len(flow.promotions)
    for name, (down, up) in (("postgres", (pg_down, pg_up)), ("nats", (nats_down, nats_up))):
        during = flow.answers_between(down + 2, up)
        assert any(status == 503 for _, _, status, _ in during), (name, Counter((s, c) for _, _, s, c in during))
    assert len(set(flow.promotions)) == len(flow.promotions) >= MIN_PROMOTIONS

    print(
        f"\n{len(flow.promotions)} promotions requested; answers {dict(sorted(statuses.items()))}; "
        f"503 while postgres was down: {sum(1 for a in flow.answers_between(pg_down, pg_up) if a[2] == 503)}, "
        f"while nats was down: {sum(1 for a in flow.answers_between(nats_down, nats_up) if a[2] == 503)}"
    )

    # Every promotion deployed, every run finished, exactly one decision and one deployment packet each.
    wanted = set(flow.promotions)
    settle_started = time.monotonic()
    deadline = settle_started + 180
    while True:
        listed = {p["id"]: p for p in await _get_all(stack, "/api/v1/promotions") if p["id"] in wanted}
        undecided = [p for p in listed.values() if p["status"] not in DECIDED]
        with_evidence = wanted
        for packet_type in ("release_decision", "deployment"):
            packets = await _get_all(stack, f"/api/v1/evidence?packet_type={packet_type}")
            with_evidence = with_evidence & {p["promotion_id"] for p in packets}
        if len(listed) == len(wanted) and not undecided and with_evidence == wanted:
            break
        assert time.monotonic() < deadline, (
            f"{len(wanted) - len(listed)} promotions missing, {len(undecided)} undecided "
            f"(e.g. {undecided[:2]}), {len(wanted - with_evidence)} without both packets"
        )
        await asyncio.sleep(1)
    print(f"all decided with their evidence {time.monotonic() - settle_started:.1f}s after the flow stopped")
    assert {p["status"] for p in listed.values()} == {"deployed"}
    for promotion in listed.values():
        run = await stack.until(
            f"/api/v1/workflow-runs/{promotion['workflow_run_id']}",
            lambda r: r["status"] in ("succeeded", "failed", "cancelled"),
            timeout=60,
        )
        assert run["status"] == "succeeded", run
    for packet_type in ("release_decision", "deployment"):
        packets = await _get_all(stack, f"/api/v1/evidence?packet_type={packet_type}")
        per_promotion = Counter(p["promotion_id"] for p in packets)
        assert {pid: n for pid, n in per_promotion.items() if n != 1} == {}, packet_type
        assert set(per_promotion) == wanted, packet_type

    # The chain verifies offline, from the exported bundle alone.
    assert stack.http is not None
    async with stack.http.get(
        f"{stack.base}/api/v1/evidence/export", headers={"Authorization": f"Bearer {stack.token}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        bundle = tmp_path / "evidence.tar.gz"
        bundle.write_bytes(await resp.read())
    verified = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "stella.evidence.verify", str(bundle), "--trust-bundle-keys"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # Nothing was dead-lettered, in any tenant, by any consumer.
    client = await nats_py.connect(servers.nats.url)
    try:
        info = await client.jetstream().stream_info(Names("faults").stream(DEAD_LETTERS))
        assert info.state.messages == 0, info.state
    finally:
        await client.close()
    status, letters, _ = await stack.call("GET", "/api/v1/admin/dead-letters")
    assert (status, letters["items"]) == (200, [])
