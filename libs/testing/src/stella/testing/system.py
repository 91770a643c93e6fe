"""The whole system as processes, for benchmarks: start, wait until ready, bootstrap a tenant, call the API."""

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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats

from stella.contracts.streams import health_subject
from stella.kit.embedded import free_port
from stella.kit.naming import Names
from stella.kit.settings import ServiceSettings
from stella.testing.databases import dsn_with_database
from stella.testing.services import delete_namespace_streams

CPU_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sandbox:
    """A throwaway database and NATS namespace, and the environment that points a system at them."""

    dsn: str
    names: Names
    nc: nats.NATS
    logs: Path
    env: dict[str, str]


@contextlib.asynccontextmanager
async def sandbox(log_level: str = "WARNING") -> AsyncIterator[Sandbox]:
    """A fresh database and namespace on the configured Postgres and NATS, removed on exit.

    The environment carries ``os.environ`` with the database, NATS namespace, a free gateway port, the log level
    and key directories under the logs directory (kept after exit, for reading).
    """
    base = ServiceSettings()
    admin = await asyncpg.connect(base.database_url)
    db = f"bench_{uuid.uuid4().hex[:8]}"
    names = Names(f"bench{uuid.uuid4().hex[:6]}")
    try:
        await admin.execute(f'CREATE DATABASE "{db}"')
        nc = await nats.connect(base.nats_url)
        try:
            dsn = dsn_with_database(base.database_url, db)
            logs = Path(tempfile.mkdtemp(prefix="stella-bench-"))
            env = {
                **os.environ,
                "STELLA_DATABASE_URL": dsn,
                "STELLA_NATS_URL": base.nats_url,
                "STELLA_NATS_NAMESPACE": names.namespace,
                "STELLA_GATEWAY_PORT": str(free_port()),
                "STELLA_LOG_LEVEL": log_level,
                "STELLA_EVIDENCE_KEY_DIR": str(logs / "keys"),
                "STELLA_EVENTS_KEY_DIR": str(logs / "keys"),
            }
            yield Sandbox(dsn, names, nc, logs, env)
        finally:
            await delete_namespace_streams(nc.jetstream(), names)
            await nc.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


class System:
    """``services`` and the gateway as processes on ``env``'s database and NATS, and calls as the tenant's admin.

    Logs go to ``logs/<service>.log``. Used by the benchmarks (tests/bench), which start the system as
    ``make run`` does and drive it over HTTP.
    """

    def __init__(self, services: tuple[str, ...], env: dict[str, str], logs: Path) -> None:
        self.services = services
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.base = f"http://127.0.0.1:{env['STELLA_GATEWAY_PORT']}/api/v1"
        self.token = ""

    def start(self) -> None:
        for service in (*self.services, "gateway"):
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

    def cpu_ms(self) -> dict[str, float]:
        """CPU time (user + system) each process used so far, in milliseconds."""
        used = {}
        for name, proc in self.procs.items():
            with open(f"/proc/{proc.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            used[name] = (int(fields[11]) + int(fields[12])) * 1000 / CPU_TICKS
        return used

    def log_errors(self) -> list[str]:
        """Lines of the logs that say a connection was refused for lack of slots, or a traceback."""
        found = []
        for path in self.logs.glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if "TooManyConnections" in line or "too many clients" in line:
                    found.append(f"{path.stem}: {line[:200]}")
        return found

    async def ready(self, session: aiohttp.ClientSession, nc: nats.NATS, names: Names, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        root = self.base.removesuffix("/api/v1")
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{root}/readyz") as resp:
                    if resp.status == 200:
                        break
            await asyncio.sleep(0.3)
        for service in self.services:
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{service} did not start; see {self.logs}")
                with contextlib.suppress(Exception):
                    await nc.request(names.subject(health_subject(service)), b"", timeout=1)
                    break
                await asyncio.sleep(0.3)

    def bootstrap(self, tenant: str) -> None:
        token_file = self.logs / "token"
        options = ["--tenant", tenant, "--admin", "admin", "--token-file", str(token_file)]
        subprocess.run(
            [sys.executable, "-m", "stella.gateway", "bootstrap", *options],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.token = token_file.read_text().strip()

    async def call(self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with session.request(method, f"{self.base}{path}", json=body, headers=headers) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return data


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
