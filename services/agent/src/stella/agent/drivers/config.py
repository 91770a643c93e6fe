"""What the agent's operator decides for its drivers: where state lives, which engines and directories a task may use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

DEFAULT_DOCKER_URL: Final[str] = "unix:///var/run/docker.sock"
"""The engine a target reaches when its connection names none (``DOCKER_HOST`` wins when set)."""


def default_docker_url() -> str:
    """``DOCKER_HOST`` when set, else the default socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL


@dataclass(frozen=True)
class DriverConfig:
    """Settings shared by the Docker and Compose drivers; built once by the agent from its own settings.

    A task comes from the Stella server, but it never decides on its own which engine the agent talks to or
    where on the host it writes: a target's ``docker_url`` must be the agent's engine or one the operator
    allowed, and a Compose target's ``directory`` must lie under a directory the operator allowed.

    Attributes:
        state_dir: The agent's state directory. Each target gets ``<state_dir>/targets/<target_id>/``,
            holding its sticker (``stella.version.json``) and, for a Compose target without a
            ``directory``, its lock file (``compose.stella.lock.yml``).
        docker_url: The engine used when a target's connection names none.
        allowed_docker_urls: Other engines a target's ``connection.docker_url`` may name.
        allowed_directories: Directories under which a Compose target's ``connection.directory`` may lie
            (``<state_dir>/targets`` is always allowed).
        compose_command: The Compose command line, e.g. ``("docker", "compose")``; detected when None
            (``docker compose`` where the plugin answers, else ``docker-compose``).
        health_host: Address used to reach published ports for health checks when the engine is local
            (a ``unix://`` URL) and the check names no host; for ``tcp://host:port`` engines, ``host``.
        stop_timeout_s: Seconds a replaced container gets to stop before it is killed.
        probe_timeout_s: Seconds a heartbeat self-check may take.
    """

    state_dir: Path
    docker_url: str = field(default_factory=default_docker_url)
    allowed_docker_urls: frozenset[str] = frozenset()
    allowed_directories: tuple[Path, ...] = ()
    compose_command: tuple[str, ...] | None = None
    health_host: str = "127.0.0.1"
    stop_timeout_s: int = 10
    probe_timeout_s: float = 10.0

    @property
    def targets_dir(self) -> Path:
        """``<state_dir>/targets``: where per-target directories live."""
        return self.state_dir / "targets"
