"""The ``compose_host`` driver: a digest-pinned Compose file per target, run with Compose.

A deploy writes ``compose.stella.lock.yml`` in the target's directory (``connection.directory``, else
``<state_dir>/targets/<target_id>``), pulls and proves every image through the engine API, runs
``<compose> -p <project> -f compose.stella.lock.yml up -d --remove-orphans`` (``docker compose`` where the
plugin answers, else ``docker-compose``), health-checks, and writes the sticker next to the lock file. The
project is ``connection.project``, else ``stella-<target id without dashes>``.

The lock file names every image ``repository@sha256:...``; each service carries the labels
``stella.target.id``, ``stella.component.id``, ``stella.component.name``, ``stella.release.id`` and
``stella.digest`` (and the component's own labels). Deployment ids live only in the ``x-stella`` block,
so a new deployment of what already runs leaves the containers alone. ``x-stella`` holds the release,
environment, deployment (job), promotion and target ids and names, the project, and ``content_hash``.

``content_hash``: the file is written with ``x-stella`` as its last top-level key and ``content_hash``
as that block's last line, ``  content_hash: 'sha256:<hex>'``. ``<hex>`` is the SHA-256 of the file's
exact bytes in which that line reads ``  content_hash: ''`` instead. To verify: replace the quoted value
on that last line by ``''`` and hash the bytes. The same task always renders the same bytes, so a
repeated deploy rewrites nothing and Compose, finding every container up to date, changes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final

import yaml

from stella.agent.drivers import labels
from stella.agent.drivers.base import LogSink
from stella.agent.drivers.engine import RunningContainer, describe, list_containers
from stella.agent.drivers.engine_driver import EngineDriver, Target
from stella.agent.drivers.errors import COMPOSE_ERROR, INVALID_TASK, TaskFailure
from stella.agent.drivers.files import make_artifact, sha256_digest, write_atomic
from stella.contracts.agent import (
    COMPOSE_LOCK_FILE,
    DOCKER_HUB_HOSTS,
    AgentTask,
    Artifact,
    Capability,
    PortMapping,
    RegistryCredential,
    TargetSpec,
    TargetType,
)

BLANK_HASH_LINE: Final[str] = "  content_hash: ''\n"
"""The lock file's last line as it is hashed."""

HASH_LINE: Final[re.Pattern[str]] = re.compile(r"^  content_hash: '(sha256:[0-9a-f]{64})'\n\Z", re.MULTILINE)
"""The lock file's last line as written."""

_PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_PROBE_TIMEOUT_S = 15.0
_OUTPUT_TAIL = 20


_DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"


@contextlib.contextmanager
def registry_config(credentials: Sequence[RegistryCredential], environ: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """The environment one Compose run needs to pull with the task's credentials, should it pull.

    With credentials: ``DOCKER_CONFIG`` naming a fresh private directory (0700) whose ``config.json`` (0600)
    holds only those credentials (and links the user's ``cli-plugins``, so ``docker compose`` is still found);
    the directory is removed when the run ends, whatever happened. Without: nothing.
    """
    if not credentials:
        yield {}
        return
    directory = Path(tempfile.mkdtemp(prefix="stella-docker-config-"))
    try:
        plugins = Path(environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "cli-plugins"
        if plugins.is_dir():
            (directory / "cli-plugins").symlink_to(plugins, target_is_directory=True)
        auths = {
            (_DOCKER_HUB_AUTH_KEY if c.registry.lower() in DOCKER_HUB_HOSTS else c.registry): {
                "auth": base64.b64encode(f"{c.username}:{c.password}".encode()).decode()
            }
            for c in credentials
        }
        descriptor = os.open(directory / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump({"auths": auths}, out)
        yield {"DOCKER_CONFIG": str(directory)}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def project_name(target: TargetSpec) -> str:
    """The Compose project of a target: ``connection.project``, else ``stella-<target id hex>``."""
    named = target.connection.get("project")
    if named is None:
        return f"stella-{target.target_id.hex}"
    if not isinstance(named, str) or not _PROJECT.match(named):
        raise TaskFailure(INVALID_TASK, "connection.project must be a Compose project name ([a-z0-9][a-z0-9_-]*)")
    return named


def _port(mapping: PortMapping) -> str:
    host_ip = mapping.host_ip or ""
    if ":" in host_ip:
        host_ip = f"[{host_ip}]"
    host = f"{host_ip}:" if host_ip else ""
    if mapping.host_port is not None:
        return f"{host}{mapping.host_port}:{mapping.container_port}/{mapping.protocol}"
    if host:
        return f"{host}:{mapping.container_port}/{mapping.protocol}"
    return f"{mapping.container_port}/{mapping.protocol}"


def render_lock_file(task: AgentTask, project: str) -> bytes:
    """The lock file's bytes for a deploy task (see the module's description of ``content_hash``)."""
    target_id = str(task.target.target_id)
    deployment = task.deployment
    assert deployment is not None
    services: dict[str, Any] = {}
    for component in task.components:
        service: dict[str, Any] = {
            "image": component.image_ref,
            "labels": {
                **dict(sorted(component.labels.items())),
                labels.TARGET: target_id,
                labels.COMPONENT_ID: str(component.component_id),
                labels.COMPONENT: component.name,
                labels.RELEASE: str(deployment.release_id),
                labels.DIGEST: component.digest,
            },
            "restart": "unless-stopped",
        }
        if component.env:
            service["environment"] = dict(sorted(component.env.items()))
        if component.command is not None:
            service["command"] = list(component.command)
        if component.ports:
            service["ports"] = [_port(mapping) for mapping in component.ports]
        services[component.name] = service
    stella = {
        "generator": "stella-agent",
        "release_id": str(deployment.release_id),
        "release_name": deployment.release_name,
        "environment_id": str(deployment.environment_id),
        "environment_name": deployment.environment_name,
        "deployment_id": str(deployment.job_id),
        "promotion_id": str(deployment.promotion_id) if deployment.promotion_id else None,
        "rollback_of": str(deployment.rollback_of) if deployment.rollback_of else None,
        "target_id": target_id,
        "target_name": task.target.name,
        "project": project,
        "content_hash": "",
    }
    header = (
        f"# Generated by Stella for target {task.target.name} ({target_id}); do not edit.\n"
        "# Every image is pinned by digest; x-stella.content_hash is the sha256 of this file with that value ''.\n"
    )
    body = header + yaml.safe_dump(
        {"services": services, "x-stella": stella},
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 20,
    )
    if not body.endswith(BLANK_HASH_LINE):  # the layout content_hash is defined on
        raise AssertionError("the lock file must end with the blank content_hash line")
    digest = sha256_digest(body.encode())
    return (body[: -len(BLANK_HASH_LINE)] + f"  content_hash: '{digest}'\n").encode()


def lock_file_hash(data: bytes) -> str | None:
    """The ``content_hash`` a lock file states about itself, if it is well-formed and states one."""
    match = HASH_LINE.search(data.decode(errors="replace"))
    return match.group(1) if match else None


def verify_lock_file(data: bytes) -> bool:
    """Whether a lock file's ``content_hash`` matches its bytes."""
    text = data.decode(errors="replace")
    match = HASH_LINE.search(text)
    if match is None:
        return False
    blank = text[: match.start()] + BLANK_HASH_LINE
    return sha256_digest(blank.encode()) == match.group(1)


class ComposeHostDriver(EngineDriver):
    """Runs tasks against ``compose_host`` targets (see the module's description)."""

    capability: ClassVar[Capability] = "compose"
    target_types: ClassVar[frozenset[TargetType]] = frozenset({TargetType.COMPOSE_HOST})

    _compose: tuple[str, ...] | None = None

    async def _compose_command(self) -> tuple[str, ...]:
        """``docker compose`` when the plugin answers, else ``docker-compose``; the configured one when set.

        Raises:
            TaskFailure: ``AGT_COMPOSE_ERROR`` when there is no Compose.
        """
        if self.config.compose_command:
            return self.config.compose_command
        if self._compose is not None:
            return self._compose
        candidates: list[tuple[str, ...]] = []
        if shutil.which("docker"):
            candidates.append(("docker", "compose"))
        if shutil.which("docker-compose"):
            candidates.append(("docker-compose",))
        for candidate in candidates:
            code, _ = await self._exec([*candidate, "version"], timeout=_PROBE_TIMEOUT_S)
            if code == 0:
                self._compose = candidate
                return candidate
        raise TaskFailure(COMPOSE_ERROR, "neither `docker compose` nor `docker-compose` is installed")

    async def _exec(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        log: LogSink | None = None,
    ) -> tuple[int, list[str]]:
        """Run a command, streaming its output lines to ``log``; returns its exit code and last lines."""
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                limit=1 << 20,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            return 127, [f"{argv[0]}: {exc.strerror}"]
        tail: list[str] = []
        assert process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                async for raw in process.stdout:
                    line = raw.decode(errors="replace").rstrip()
                    if not line:
                        continue
                    tail = [*tail[-(_OUTPUT_TAIL - 1) :], line]
                    if log is not None:
                        log(f"compose: {line}")
                return await process.wait(), tail
        except TimeoutError:
            return 124, [*tail, f"no end within {timeout:g}s"]
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    async def _check_tools(self) -> tuple[bool, str]:
        try:
            command = await self._compose_command()
        except TaskFailure as failure:
            return False, failure.message
        code, output = await self._exec([*command, "version", "--short"], timeout=_PROBE_TIMEOUT_S)
        version = output[-1] if code == 0 and output else "?"
        return True, f"Compose {version} ({' '.join(command)})"

    async def _containers(self, target: Target, names: Sequence[str]) -> list[RunningContainer]:
        project = project_name(target.task.target)
        images: dict[str, Any] = {}
        inspections: dict[str, tuple[dict[str, Any], str | None]] = {}
        for inspection in await list_containers(target.docker, labels=[f"{labels.COMPOSE_PROJECT}={project}"]):
            found = (inspection.get("Config") or {}).get("Labels") or {}
            inspections[inspection["Id"]] = (inspection, found.get(labels.COMPOSE_SERVICE))
        for inspection in await list_containers(target.docker, labels=[f"{labels.TARGET}={target.target_id}"]):
            found = (inspection.get("Config") or {}).get("Labels") or {}
            inspections.setdefault(inspection["Id"], (inspection, found.get(labels.COMPONENT)))
        return [
            await describe(target.docker, inspection, component, images)
            for inspection, component in inspections.values()
        ]

    async def _apply(self, target: Target, log: LogSink) -> list[Artifact]:
        project = project_name(target.task.target)
        data = render_lock_file(target.task, project)
        path = target.directory / COMPOSE_LOCK_FILE
        changed = write_atomic(path, data, mode=0o640)
        artifact = make_artifact("compose-lock", COMPOSE_LOCK_FILE, data)
        log(f"{COMPOSE_LOCK_FILE} {'written' if changed else 'unchanged'}: {artifact.content_hash}")
        command = await self._compose_command()
        env = {**os.environ, "DOCKER_HOST": target.url}
        argv = [*command, "-p", project, "-f", str(path), "up", "-d", "--remove-orphans"]
        log(f"running {' '.join(command)} -p {project} -f {COMPOSE_LOCK_FILE} up -d --remove-orphans")
        # Every image was pulled and proven above; should Compose pull anyway, it has the task's credentials.
        with registry_config(target.task.credentials, env) as auth_env:
            code, tail = await self._exec(argv, cwd=target.directory, env={**env, **auth_env}, log=log)
        if code != 0:
            raise TaskFailure(COMPOSE_ERROR, f"compose up exited {code}: {' / '.join(tail[-3:])}")
        return [artifact]
