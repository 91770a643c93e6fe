"""The whole system started as processes, on a fresh database and a NATS namespace of the test's own."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from nats.aio.client import Client

from stella.contracts.streams import health_subject
from stella.kit.embedded import free_port
from stella.kit.naming import Names


class Stack:
    """Service processes of one test: start, kill -9, restart; and an HTTP client for the gateway."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.port = int(env["STELLA_GATEWAY_PORT"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.names = Names(env["STELLA_NATS_NAMESPACE"])
        self.token = ""
        self.http: aiohttp.ClientSession | None = None

    def start(self, service: str, **extra_env: str) -> None:
        """Start ``python -m stella.<service>`` (the gateway with ``serve``).

        Raises:
            RuntimeError: the service runs already (a second process would be left running at the end).
        """
        running = self.procs.get(service)
        if running is not None and running.poll() is None:
            raise RuntimeError(f"{service} runs already (pid {running.pid})")
        argv = [sys.executable, "-m", f"stella.{service}"] + (["serve"] if service == "gateway" else [])
        log = (self.logs / f"{service}.log").open("ab")
        self.procs[service] = subprocess.Popen(argv, env={**self.env, **extra_env}, stdout=log, stderr=log)

    def kill(self, service: str) -> None:
        """SIGKILL a service: no clean shutdown, nothing flushed."""
        proc = self.procs.pop(service)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def wait_exit(self, service: str, timeout: float = 30) -> int:
        """Wait for a service to exit on its own (a fault-injected crash) and return its code."""
        proc = self.procs.pop(service)
        return proc.wait(timeout)

    async def ready(self, timeout: float = 180) -> None:
        """Wait until the gateway answers /readyz."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                with suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"{self.base}/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise TimeoutError(f"gateway not ready; logs in {self.logs}:\n{self.log_tail('gateway')}")

    async def wait_service(self, service: str, nats: Client, timeout: float = 180) -> None:
        """Wait until a headless service answers its health subject."""
        subject = self.names.subject(health_subject(service))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with suppress(Exception):
                await nats.request(subject, b"", timeout=1)
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{service} did not become healthy:\n{self.log_tail(service)}")

    def log_tail(self, service: str, lines: int = 40) -> str:
        path = self.logs / f"{service}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def bootstrap(self, tenant: str, admin: str = "admin") -> str:
        """Create a tenant with an admin through the gateway's CLI; returns the token."""
        token_file = self.logs / f"{tenant}-token"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "stella.gateway",
                "bootstrap",
                "--tenant",
                tenant,
                "--admin",
                admin,
                "--token-file",
                str(token_file),
            ],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        return token_file.read_text().strip()

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """One HTTP call; returns (status, decoded body, headers)."""
        assert self.http is not None
        hdrs = dict(headers or {})
        bearer = self.token if token is None else token
        if bearer:
            hdrs["Authorization"] = f"Bearer {bearer}"
        async with self.http.request(method, f"{self.base}{path}", json=json, headers=hdrs) as resp:
            body = await resp.json(content_type=None) if (await resp.read()) else None
            return resp.status, body, dict(resp.headers)

    async def until(self, path: str, check: Any, *, timeout: float = 30, token: str | None = None) -> Any:
        """GET ``path`` until ``check(body)`` holds; returns that body (the HTTP API offers nothing to await)."""
        deadline = time.monotonic() + timeout
        body: Any = None
        while time.monotonic() < deadline:
            status, body, _ = await self.call("GET", path, token=token)
            if status == 200 and check(body):
                return body
            await asyncio.sleep(0.1)
        raise AssertionError(f"GET {path} never satisfied the check; last answer: {body}")

    async def principal(
        self, name: str, roles: list[str], groups: list[str] | None = None, *, display_name: str | None = None
    ) -> tuple[str, str]:
        """Create a principal (with a display name, if given) and a token; returns (principal id, token)."""
        body: dict[str, Any] = {"name": name, "roles": roles, "groups": groups or []}
        if display_name is not None:
            body["display_name"] = display_name
        status, created, _ = await self.call("POST", "/api/v1/principals", json=body)
        assert status == 201, created
        status, token, _ = await self.call("POST", "/api/v1/tokens", json={"principal_id": created["id"]})
        assert status == 201, token
        return created["id"], token["token"]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


HEADLESS = ("release", "promotion", "approval", "workflow", "deployment", "evidence", "events", "integration")
"""Every headless service, in start order."""


@asynccontextmanager
async def _running(
    services: tuple[str, ...],
    fresh_database: str,
    nats_url: str,
    nats: Client,
    namespace: str,
    unique_id: str,
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    """Start ``services`` and the gateway on a fresh database and namespace, with a bootstrapped tenant."""
    master_key = tmp_path / "keys" / "integration-master.key"
    master_key.parent.mkdir(parents=True, exist_ok=True)
    master_key.write_text(base64.b64encode(os.urandom(32)).decode())
    env = {
        **os.environ,
        "STELLA_DATABASE_URL": fresh_database,
        "STELLA_INTEGRATION_MASTER_KEY_FILE": str(master_key),
        "STELLA_INTEGRATION_ALLOWED_NETWORKS": "127.0.0.0/8",
        "STELLA_NATS_URL": nats_url,
        "STELLA_NATS_NAMESPACE": namespace,
        "STELLA_GATEWAY_PORT": str(free_port()),
        "STELLA_LOG_LEVEL": "INFO",
        "STELLA_EVIDENCE_KEY_DIR": str(tmp_path / "keys"),
        "STELLA_EVENTS_KEY_DIR": str(tmp_path / "keys"),
        # Webhook receivers of the tests listen on loopback over plain HTTP, and retries are quick.
        "STELLA_EVENTS_WEBHOOK_REQUIRE_HTTPS": "false",
        "STELLA_EVENTS_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        # The local OCI registry of the tests listens on loopback.
        "STELLA_RELEASE_REGISTRY_ALLOWED_NETWORKS": "127.0.0.0/8",
        "STELLA_EVENTS_RETRY_BASE_S": "0.2",
        "STELLA_EVENTS_RETRY_MAX_INTERVAL_S": "1",
    }
    system = Stack(env, tmp_path)
    for service in services:
        system.start(service)
    system.start("gateway")
    system.http = aiohttp.ClientSession()
    try:
        await system.ready()
        for service in services:
            await system.wait_service(service, nats)
        system.token = system.bootstrap(f"tenant-{unique_id}")
        yield system
    finally:
        await system.http.close()
        system.stop_all()


@pytest_asyncio.fixture
async def stack(
    fresh_database: str, nats_url: str, nats: Client, stella_namespace: str, unique_id: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    """The release service and the gateway as processes; more can be started with ``stack.start``."""
    services = ("release",)
    async with _running(services, fresh_database, nats_url, nats, stella_namespace, unique_id, tmp_path) as system:
        yield system


@pytest_asyncio.fixture
async def full_stack(
    fresh_database: str, nats_url: str, nats: Client, stella_namespace: str, unique_id: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    """Every service and the gateway as processes."""
    async with _running(HEADLESS, fresh_database, nats_url, nats, stella_namespace, unique_id, tmp_path) as system:
        yield system


@pytest.fixture
def registry_repo(unique_id: str) -> str:
    """A repository name unique to the test."""
    return f"e2e-{unique_id}/app"
