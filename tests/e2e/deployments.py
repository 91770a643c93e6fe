"""What the deployment end-to-end tests share: agents as processes, releases of real images, and reading targets.

Agents run as ``python -m stella.agent`` processes with the real Docker and Compose drivers against the
test engine, each with its own state directory (credential, journal, stickers, lock files). Images come
from :mod:`stella.testing.images` (pushed to a local registry, so they have real digests); every target a
test creates is handed to the Docker janitor, which removes its containers afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stella.testing.docker import DockerEngine, DockerJanitor
from stella.testing.images import HEALTH_PATH, HTTP_PORT, AppImage

from .conftest import Stack

TARGET_LABEL = "stella.target.id"
STICKER_FILE = "stella.version.json"
LOCK_FILE = "compose.stella.lock.yml"

HTTP_CHECK = {"type": "http", "path": HEALTH_PATH, "port": HTTP_PORT, "timeout_s": 3, "retries": 10, "interval_s": 0.5}
"""Passes on the healthy test images, fails (404) on the broken one, within a few seconds."""

WEB_RUNTIME = {"web": {"ports": [{"container_port": HTTP_PORT, "host_ip": "127.0.0.1"}]}}
"""The component publishes its port on a free loopback port, so many targets share one engine."""


@dataclass
class AgentProcess:
    """One agent process of a test."""

    name: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    log: Path
    agent_id: str | None = None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, nothing flushed."""
        with suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    @property
    def credential(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "credential.json").read_text())

    def target_dir(self, target_id: str) -> Path:
        return self.state_dir / "targets" / target_id

    def sticker(self, target_id: str) -> dict[str, Any]:
        return json.loads((self.target_dir(target_id) / STICKER_FILE).read_text())


@dataclass
class Agents:
    """Agent processes of one test, stopped at its end."""

    stack: Stack
    root: Path
    engine: DockerEngine
    janitor: DockerJanitor
    running: dict[str, AgentProcess] = field(default_factory=dict)

    async def token(self, **body: Any) -> str:
        status, created, _ = await self.stack.call("POST", "/api/v1/agent-tokens", json=body)
        assert status == 201, created
        return str(created["token"])

    async def start(self, name: str, *, token: str | None = None, register: bool = True, **env: str) -> AgentProcess:
        """Start an agent (with a fresh registration token unless it registered before) and wait until it is online."""
        state = self.root / "agents" / name
        state.mkdir(parents=True, exist_ok=True)
        agent_env = {key: value for key, value in self.stack.env.items() if not key.startswith("STELLA_AGENT_")}
        agent_env.update(
            {
                "STELLA_AGENT_GATEWAY_URL": self.stack.base,
                "STELLA_AGENT_NAME": name,
                "STELLA_AGENT_STATE_DIR": str(state),
                "STELLA_AGENT_DOCKER_URL": self.engine.url,
                "STELLA_AGENT_LOG_LEVEL": "DEBUG",
                **env,
            }
        )
        if register and not (state / "credential.json").exists():
            agent_env["STELLA_AGENT_REGISTRATION_TOKEN"] = token or await self.token()
        log = self.root / f"agent-{name}.log"
        agent = AgentProcess(name, state, _spawn(agent_env, log), log)
        self.running[name] = agent
        if register:
            listed = await self.stack.until(
                "/api/v1/agents",
                lambda page: _online(page, name) is not None or agent.process.poll() is not None,
                timeout=60,
            )
            assert agent.process.poll() is None, agent.log_tail()
            agent.agent_id = _online(listed, name)
            # Listed once the gateway registered it; the agent writes its credential when the answer arrives.
            deadline = time.monotonic() + 30
            while not (state / "credential.json").exists() and time.monotonic() < deadline:
                assert agent.process.poll() is None, agent.log_tail()
                await asyncio.sleep(0.05)
        return agent

    def stop_all(self) -> None:
        for agent in self.running.values():
            with suppress(ProcessLookupError):
                agent.process.send_signal(signal.SIGTERM)
        for agent in self.running.values():
            try:
                agent.process.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
        self.running.clear()

    async def exited(self, agent: AgentProcess, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while agent.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        code = agent.process.poll()
        assert code is not None, f"agent {agent.name} did not exit:\n{agent.log_tail()}"
        return code


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "stella.agent"], env=env, stdout=out, stderr=subprocess.STDOUT)


def _online(page: dict[str, Any], name: str) -> str | None:
    for agent in page.get("items", []):
        if agent["name"] == name and agent["status"] == "online":
            return str(agent["id"])
    return None


async def component(stack: Stack, name: str, image: AppImage) -> None:
    status, body, _ = await stack.call(
        "POST",
        "/api/v1/components",
        json={"name": name, "image_repository": image.repository, "versioning_strategy": {"resolve": "version-map"}},
    )
    assert status in (201, 409), body


async def release(stack: Stack, name: str, images: dict[str, AppImage]) -> dict[str, Any]:
    """A ready release of ``images`` by component name."""
    for component_name, image in images.items():
        await component(stack, component_name, image)
    status, created, _ = await stack.call(
        "POST",
        "/api/v1/releases",
        json={"name": name, "components": [{"component": c, "digest": i.digest} for c, i in images.items()]},
    )
    assert status == 201, created
    status, ready, _ = await stack.call("POST", f"/api/v1/releases/{created['id']}/ready")
    assert status == 200, ready
    return dict(ready)


async def environment(stack: Stack, name: str, order: int, deployment: dict[str, Any], **fields: Any) -> str:
    config = {"deployment": {"health_check": HTTP_CHECK, "components": WEB_RUNTIME, **deployment}}
    status, env, _ = await stack.call(
        "POST", "/api/v1/environments", json={"name": name, "order_index": order, "config": config, **fields}
    )
    assert status == 201, env
    return str(env["id"])


async def target(
    stack: Stack,
    janitor: DockerJanitor,
    environment_id: str,
    name: str,
    agent: AgentProcess | None,
    target_type: str = "docker_host",
    labels: dict[str, str] | None = None,
    health_check: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "target_type": target_type, "labels": labels or {}}
    if agent is not None:  # else any capable agent of the tenant may serve it
        body["agent_id"] = agent.agent_id
    if health_check is not None:
        body["health_check"] = health_check
    status, created, _ = await stack.call("POST", f"/api/v1/environments/{environment_id}/targets", json=body)
    assert status == 201, created
    janitor.add_label(TARGET_LABEL, str(created["id"]))
    if target_type == "compose_host":
        janitor.add_compose_project(f"stella-{created['id'].replace('-', '')}")
    return dict(created)


async def promote(stack: Stack, release_id: str, environment_id: str) -> dict[str, Any]:
    status, promotion, _ = await stack.call(
        "POST", "/api/v1/promotions", json={"release_id": release_id, "target_environment_id": environment_id}
    )
    assert status == 201, promotion
    return dict(promotion)


async def settled(stack: Stack, promotion_id: str, *expect: str, timeout: float = 180) -> dict[str, Any]:
    """The promotion once it reaches one of ``expect`` (an AssertionError naming its tasks if it ends otherwise)."""
    final = {"deployed", "rolled_back", "failed", "rejected", "cancelled"}
    body = await stack.until(
        f"/api/v1/promotions/{promotion_id}", lambda p: p["status"] in expect or p["status"] in final, timeout=timeout
    )
    if body["status"] not in expect:
        _, job, _ = await stack.call("GET", f"/api/v1/promotions/{promotion_id}/deployment")
        tasks = [
            {k: task.get(k) for k in ("target_name", "type", "status", "error_code", "message", "logs")}
            for task in (job or {}).get("tasks", [])
        ]
        raise AssertionError(
            f"promotion {body['status']}, not {' or '.join(expect)}: {body.get('status_message')}; tasks: {tasks}"
        )
    return dict(body)


async def deployment_job(stack: Stack, promotion_id: str) -> dict[str, Any]:
    """The promotion's deployment job with its tasks."""
    status, job, _ = await stack.call("GET", f"/api/v1/promotions/{promotion_id}/deployment")
    assert status == 200, job
    return dict(job)


async def deploy(
    stack: Stack, name: str, images: dict[str, AppImage], environment_id: str, *expect: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Promote a new release ``name`` of ``images`` to the environment and wait until the promotion ends in one of
    ``expect`` (``deployed`` when none is given): the promotion and its deployment job."""
    made = await release(stack, name, images)
    promotion = await settled(
        stack, (await promote(stack, made["id"], environment_id))["id"], *(expect or ("deployed",))
    )
    return promotion, await deployment_job(stack, promotion["id"])


def container_of(engine: DockerEngine, target_id: str, component_name: str = "web") -> dict[str, Any]:
    """``docker inspect`` of the container running ``component_name`` on a target (docker_host or compose_host)."""
    found = engine.client.containers.list(all=True, filters={"label": [f"{TARGET_LABEL}={target_id}"]})
    for container in found:
        labels = container.attrs["Config"]["Labels"] or {}
        if (
            labels.get("stella.component.name") == component_name
            or labels.get("com.docker.compose.service") == component_name
        ):
            return dict(engine.client.api.inspect_container(str(container.id)))
    raise AssertionError(f"no {component_name} container on target {target_id}")


def running_digests(engine: DockerEngine, target_id: str, component_name: str = "web") -> list[str]:
    """The repo digests of the image the component's container runs (``docker inspect``'s answer)."""
    inspection = container_of(engine, target_id, component_name)
    image = engine.client.api.inspect_image(inspection["Image"])
    return [ref.rpartition("@")[2] for ref in image.get("RepoDigests") or []]


def lock_file_hash_holds(text: str) -> bool:
    """Whether a lock file's ``x-stella.content_hash`` is the sha256 of its bytes with that value blanked."""
    lines = text.splitlines(keepends=True)
    last = lines[-1]
    claimed = last.split("'")[1]
    blanked = "".join([*lines[:-1], "  content_hash: ''\n"])
    return claimed == "sha256:" + hashlib.sha256(blanked.encode()).hexdigest()


def environ_without_agent() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("STELLA_AGENT_")}
