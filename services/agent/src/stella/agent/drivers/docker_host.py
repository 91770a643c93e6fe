"""The ``docker_host`` driver: one container per component, replaced through the Docker Engine API.

Container names are namespaced per target, ``stella-<component>-<target id without dashes>``, because
several targets (of one or several environments) may share an engine. Each container carries the labels
``stella.target.id``, ``stella.component.id``, ``stella.component.name``, ``stella.digest``,
``stella.release.id``, ``stella.deployment.id``, ``stella.environment.id`` and ``stella.config.hash``,
plus the component's own labels, and restarts unless stopped.

``stella.config.hash`` is the sha256 of what defines the container: image digest, environment, command,
ports, the component's own labels, network, component and target. A container whose hash matches and
that runs the verified image is left alone (a repeated or redundant deploy changes nothing, whichever
release or deployment asks for it; ``stella.release.id`` and ``stella.deployment.id`` then keep naming
the deployment that created it, and the sticker names the current one). Otherwise it is replaced:

1. the current container is stopped and renamed ``<name>-previous``;
2. the new one is created under ``<name>`` and started;
3. if it cannot be created or started, it is removed and ``<name>-previous`` gets its name back and is
   started again, and the task fails; otherwise ``<name>-previous`` is removed.

Each step is one engine call, so an attempt that dies between any two leaves a state the next attempt
finishes from: a ``<name>-previous`` with no ``<name>`` is the fallback for the new container; a ``<name>``
with the right hash that is not running is started; a leftover ``<name>-previous`` is removed. Containers
of this target whose component the sticker no longer names are removed once the deployment is healthy.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Final
from uuid import UUID

import aiodocker
from aiodocker.exceptions import DockerError

from stella.agent.drivers import labels
from stella.agent.drivers.base import LogSink
from stella.agent.drivers.engine import (
    RunningContainer,
    describe,
    docker_failure,
    inspect_container,
    list_containers,
)
from stella.agent.drivers.engine_driver import EngineDriver, Target
from stella.agent.drivers.errors import DOCKER_ERROR, INVALID_TASK, TaskFailure
from stella.contracts.agent import Artifact, Capability, ComponentSpec, TargetType

ASIDE_SUFFIX: Final[str] = "-previous"
"""Suffix of the name a replaced container carries until its successor runs."""

_NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def container_name(target_id: UUID, component: str) -> str:
    """The name of a component's container on a target: ``stella-<component>-<target id hex>``."""
    return f"stella-{component}-{target_id.hex}"


def _network(target: Target) -> str | None:
    network = target.task.target.connection.get("network")
    if network is None:
        return None
    if not isinstance(network, str) or not _NETWORK.match(network):
        raise TaskFailure(INVALID_TASK, "connection.network must be a Docker network name")
    return network


def container_spec(target: Target, component: ComponentSpec, network: str | None) -> tuple[dict[str, Any], str]:
    """The engine's create body for a component, and its configuration hash.

    Returns:
        ``(config, config_hash)``.
    """
    task = target.task
    assert task.deployment is not None
    name = container_name(task.target.target_id, component.name)
    ports = sorted(
        (mapping.container_port, mapping.protocol, mapping.host_ip or "", mapping.host_port or 0)
        for mapping in component.ports
    )
    defining = {
        "image": component.image_ref,
        "env": dict(sorted(component.env.items())),
        "command": component.command,
        "ports": ports,
        "labels": dict(sorted(component.labels.items())),
        "network": network,
        "name": name,
        "component_id": str(component.component_id),
        "target_id": target.target_id,
    }
    config_hash = "sha256:" + hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()
    container_labels = {
        **component.labels,
        labels.TARGET: target.target_id,
        labels.COMPONENT_ID: str(component.component_id),
        labels.COMPONENT: component.name,
        labels.DIGEST: component.digest,
        labels.RELEASE: str(task.deployment.release_id),
        labels.DEPLOYMENT: str(task.deployment.job_id),
        labels.ENVIRONMENT: str(task.deployment.environment_id),
        labels.CONFIG_HASH: config_hash,
    }
    bindings: dict[str, list[dict[str, str]]] = {}
    for container_port, protocol, host_ip, host_port in ports:
        bindings.setdefault(f"{container_port}/{protocol}", []).append(
            {"HostIp": host_ip, "HostPort": str(host_port) if host_port else ""}
        )
    host_config: dict[str, Any] = {
        "PortBindings": bindings,
        "RestartPolicy": {"Name": "unless-stopped"},
    }
    if network is not None:
        host_config["NetworkMode"] = network
    config: dict[str, Any] = {
        "Image": component.image_ref,
        "Env": [f"{key}={value}" for key, value in sorted(component.env.items())],
        "Labels": container_labels,
        "ExposedPorts": {key: {} for key in bindings},
        "HostConfig": host_config,
    }
    if component.command is not None:
        config["Cmd"] = component.command
    return config, config_hash


class DockerHostDriver(EngineDriver):
    """Runs tasks against ``docker_host`` targets (see the module's description)."""

    capability: ClassVar[Capability] = "docker"
    target_types: ClassVar[frozenset[TargetType]] = frozenset({TargetType.DOCKER_HOST})

    def _preferred_names(self, target: Target, names: Sequence[str]) -> dict[str, str]:
        return {name: container_name(target.task.target.target_id, name) for name in names}

    async def _containers(self, target: Target, names: Sequence[str]) -> list[RunningContainer]:
        images: dict[str, Any] = {}
        by_name = {value: key for key, value in self._preferred_names(target, names).items()}
        inspections = {
            inspection["Id"]: inspection
            for inspection in await list_containers(target.docker, labels=[f"{labels.TARGET}={target.target_id}"])
        }
        # A container put in place by hand under a component's name may carry no Stella label at all.
        for name in by_name:
            inspection = await inspect_container(target.docker, name)
            if inspection is not None:
                inspections.setdefault(inspection["Id"], inspection)
        found = []
        for inspection in inspections.values():
            found_labels = _labels(inspection)
            name = str(inspection.get("Name", "")).lstrip("/")
            component = (
                found_labels.get(labels.COMPONENT) if found_labels.get(labels.TARGET) == target.target_id else None
            )
            found.append(await describe(target.docker, inspection, component or by_name.get(name), images))
        return found

    async def _apply(self, target: Target, log: LogSink) -> list[Artifact]:
        network = _network(target)
        for component in target.task.components:
            await self._converge(target, component, network, log)
        return []

    async def _converge(self, target: Target, component: ComponentSpec, network: str | None, log: LogSink) -> None:
        docker = target.docker
        name = container_name(target.task.target.target_id, component.name)
        aside = name + ASIDE_SUFFIX
        config, config_hash = container_spec(target, component, network)
        image_id = target.images[component.name].get("Id")
        current = await inspect_container(docker, name)
        if (
            current is not None
            and _labels(current).get(labels.CONFIG_HASH) == config_hash
            and current.get("Image") == image_id
        ):
            if (current.get("State") or {}).get("Running"):
                log(f"{component.name}: {name} already runs {component.digest} with this configuration")
            else:
                log(f"{component.name}: starting {name}, which has the wanted image and configuration")
                await self._start(docker, name, component)
            await self._remove(docker, aside, log)
            return
        if current is not None:
            await self._remove(docker, aside, log)
            await self._set_aside(docker, current, aside, log)
        elif await inspect_container(docker, aside) is not None:
            log(f"{component.name}: {aside} is left from an interrupted attempt; keeping it as the fallback")
        log(f"{component.name}: creating {name} from {component.image_ref}")
        try:
            created = await docker.containers.create(config, name=name)
            await created.start()
        except DockerError as exc:
            await self._remove(docker, name, log)
            restored = await self._restore(docker, aside, name, log)
            raise TaskFailure(
                DOCKER_ERROR,
                f"{component.name}: cannot start {name}: {exc.message}"
                + ("; the previous container runs again" if restored else ""),
            ) from exc
        await self._remove(docker, aside, log)

    async def _start(self, docker: aiodocker.Docker, name: str, component: ComponentSpec) -> None:
        try:
            await docker.containers.container(name).start()
        except DockerError as exc:
            raise TaskFailure(DOCKER_ERROR, f"{component.name}: cannot start {name}: {exc.message}") from exc

    async def _set_aside(self, docker: aiodocker.Docker, current: dict[str, Any], aside: str, log: LogSink) -> None:
        name = str(current.get("Name", "")).lstrip("/")
        container = docker.containers.container(str(current["Id"]))
        try:
            if (current.get("State") or {}).get("Running"):
                log(f"stopping {name}")
                await container.stop(t=self.config.stop_timeout_s)
            await container.rename(aside)
        except DockerError as exc:
            raise docker_failure(f"set {name} aside", exc) from exc

    async def _restore(self, docker: aiodocker.Docker, aside: str, name: str, log: LogSink) -> bool:
        previous = await inspect_container(docker, aside)
        if previous is None:
            return False
        try:
            container = docker.containers.container(str(previous["Id"]))
            await container.rename(name)
            await container.start()
        except DockerError as exc:
            log(f"could not bring {aside} back as {name}: {exc.message}")
            return False
        log(f"{name}: the previous container runs again")
        return True

    async def _remove(self, docker: aiodocker.Docker, name: str, log: LogSink) -> None:
        try:
            await docker.containers.container(name).delete(force=True)
        except DockerError as exc:
            if exc.status == 404:
                return
            raise docker_failure(f"remove {name}", exc) from exc
        log(f"removed {name}")

    async def _after_healthy(self, target: Target, expected: Sequence[str], log: LogSink) -> None:
        keep = {*expected, *(component.name for component in target.task.components)}
        for inspection in await list_containers(target.docker, labels=[f"{labels.TARGET}={target.target_id}"]):
            component = _labels(inspection).get(labels.COMPONENT)
            if component not in keep:
                name = str(inspection.get("Name", "")).lstrip("/")
                log(f"{name}: its component {component} is not in the release any more")
                await self._remove(target.docker, name, log)


def _labels(inspection: dict[str, Any]) -> dict[str, str]:
    return dict((inspection.get("Config") or {}).get("Labels") or {})
