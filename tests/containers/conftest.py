"""The Stella image and the root compose file on the real Docker engine, with local stand-in images.

The session builds the stand-ins from Debian packages once (``deploy/images/local-base.sh`` keeps them
between runs and rebuilds only when their recipe changes) and the Stella image with ``make image`` from
them, tagged for this session only and untagged at the end (its layers stay as build cache). A compose
project gets a name of its own, so nothing here touches what others run on the shared engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stella.kit.embedded import free_port
from stella.testing.docker import DockerEngine
from stella.testing.messaging import unique_token

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DATABASE_ROLES = (
    "gateway",
    "release",
    "promotion",
    "approval",
    "workflow",
    "deployment",
    "evidence",
    "events",
    "integration",
)
"""The services that log in to Postgres as their own role, ``stella_<service>``."""


def role_passwords() -> dict[str, str]:
    """A fresh password for every service role, as the compose file's variables."""
    return {f"STELLA_{service.upper()}_DATABASE_PASSWORD": f"pw-{unique_token()}" for service in DATABASE_ROLES}


def compose_command() -> list[str] | None:
    """``docker compose`` when the v2 plugin is there, else ``docker-compose``, else None."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def run(
    argv: list[str], *, timeout: float = 600, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command, failing with its output when it fails."""
    done: subprocess.CompletedProcess[str] = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, **kwargs
    )
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="session")
def local_images(docker_engine: DockerEngine) -> dict[str, str]:
    """The stand-in images' variables (BASE_IMAGE, POSTGRES_IMAGE, NATS_IMAGE, PGBOUNCER_IMAGE, PROXY_IMAGE)."""
    done = run([str(ROOT / "deploy/images/local-base.sh")], timeout=1800)
    return dict(line.split("=", 1) for line in done.stdout.split() if "=" in line)


@pytest.fixture(scope="session")
def stella_image(local_images: dict[str, str]) -> Iterator[str]:
    """The Stella image, built by ``make image`` on the local base; untagged after the session."""
    tag = f"localhost/stella-test:{unique_token()}"
    started = time.monotonic()
    run(["make", "-s", "image", f"IMAGE={tag}", f"BASE_IMAGE={local_images['BASE_IMAGE']}"], cwd=ROOT, timeout=1800)
    print(f"built {tag} in {time.monotonic() - started:.0f}s")
    try:
        yield tag
    finally:
        # The layers stay as the next build's cache; only this session's name goes.
        subprocess.run(["docker", "rmi", "--no-prune", tag], capture_output=True, timeout=120)


@dataclass
class ComposeProject:
    """A project of the root compose file with a name and an environment of its own."""

    command: list[str]
    name: str
    env_file: Path
    logs: Path
    port: int
    variables: dict[str, str] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a compose command on this project."""
        argv = [*self.command, "-p", self.name, "-f", str(COMPOSE_FILE), "--env-file", str(self.env_file), *args]
        return run(argv, timeout=timeout, check=check, cwd=ROOT)

    def configure(self, **variables: str) -> None:
        """Set more of the compose file's variables (for what is started from now on)."""
        self.variables.update(variables)
        self.env_file.write_text("".join(f"{key}={value}\n" for key, value in self.variables.items()))

    def containers(self, service: str | None = None) -> list[str]:
        """Names of the project's running or stopped containers (of one service), sorted."""
        filters = ["--filter", f"label=com.docker.compose.project={self.name}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        done = run(["docker", "ps", "-a", "--format", "{{.Names}}", *filters])
        return sorted(done.stdout.split())

    def inspect(self, container: str) -> dict[str, Any]:
        """``docker inspect`` of one container."""
        info: dict[str, Any] = json.loads(run(["docker", "inspect", container]).stdout)[0]
        return info

    def address(self, service: str) -> str:
        """The IP address of a service's first container on the project network (reachable from this host)."""
        info = self.inspect(self.containers(service)[0])
        networks = info["NetworkSettings"]["Networks"]
        return str(next(iter(networks.values()))["IPAddress"])

    def save_logs(self) -> None:
        """Write every container's log to ``logs`` (kept with the test's temporary directory)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        for container in self.containers():
            done = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=120)
            (self.logs / f"{container}.log").write_text(done.stdout + done.stderr)


@pytest.fixture
def compose_project(stella_image: str, local_images: dict[str, str], tmp_path: Path) -> Iterator[ComposeProject]:
    """A compose project on the stand-ins and the session's image; taken down with its volumes afterwards."""
    command = compose_command()
    if command is None:
        pytest.fail("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")
    port = free_port()
    variables = {
        **local_images,
        "STELLA_IMAGE": stella_image,
        "POSTGRES_PASSWORD": f"pw-{unique_token()}",
        **role_passwords(),
        "STELLA_HTTP_PORT": str(port),
        "STELLA_BOOTSTRAP_TENANT": "acme",
    }
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in variables.items()))
    project = ComposeProject(command, f"stella-t{unique_token()}", env_file, tmp_path / "logs", port, variables)
    try:
        yield project
    finally:
        project.save_logs()
        project.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
        # Containers of services behind a profile (the agent) are left by some Compose versions' `down`.
        left = project.containers()
        if left:
            subprocess.run(["docker", "rm", "-f", "-v", *left], capture_output=True, timeout=120)


def docker_run(
    image: str, *args: str, env: dict[str, str], network: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``docker run --rm`` of the image with an environment; returns the finished process."""
    argv = ["docker", "run", "--rm", f"--name=stella-t{unique_token()}"]
    if network:
        argv.append(f"--network={network}")
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    return subprocess.run([*argv, image, *args], capture_output=True, text=True, timeout=180, env=os.environ)
