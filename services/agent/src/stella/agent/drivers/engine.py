"""Talking to a Docker engine through aiodocker: pulling by digest and proving it, finding what runs.

An image is only ever named ``repository@sha256:...``. Pulling by digest makes the engine check the
manifest it receives against the digest (a registry that serves another manifest fails the pull with
"manifest verification failed"); the driver then also checks that the pulled image's ``RepoDigests``
contain the pinned reference, so nothing is started from an image whose identity was not proven.

The digest a container *runs* is read from its image's ``RepoDigests`` (never from a label, which anyone
can copy): a container started by hand from another image shows that image's digest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from stella.agent.drivers.base import LogSink
from stella.agent.drivers.config import DriverConfig
from stella.agent.drivers.errors import DIGEST_MISMATCH, DOCKER_ERROR, INVALID_TASK, PULL_FAILED, TaskFailure
from stella.contracts.agent import ComponentSpec, RegistryCredential, TargetSpec, registry_host, serves_host

_VERIFICATION_FAILURES = ("verification failed", "digest mismatch", "digest did not match", "unexpected commit digest")
_REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10)


def familiar(reference: str) -> str:
    """A repository or ``repository@digest`` in the short form the engine reports (``nginx`` for ``docker.io/library/nginx``)."""
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if reference.startswith(prefix):
            reference = reference[len(prefix) :]
            if reference.startswith("library/") and reference.count("/") == 1:
                reference = reference[len("library/") :]
            break
    return reference


def repo_digests(image: dict[str, Any]) -> list[str]:
    """The image's ``RepoDigests`` (``repository@sha256:...``), in the engine's short form."""
    return [familiar(ref) for ref in image.get("RepoDigests") or []]


def has_repo_digest(image: dict[str, Any], repository: str, digest: str) -> bool:
    """Whether the engine recorded ``repository@digest`` for this image (it pulled it by that digest)."""
    return familiar(f"{repository}@{digest}") in repo_digests(image)


def running_digest(image: dict[str, Any] | None, repository: str | None, expected: str | None) -> str | None:
    """The digest an image stands for, as seen against what was expected.

    The expected digest when the image carries it (whatever the repository: a digest names content); else
    the digest recorded for ``repository``; else any recorded digest; None for an image pulled by no
    digest (built or imported locally).
    """
    if image is None:
        return None
    digests = [ref.rpartition("@")[2] for ref in repo_digests(image)]
    if expected is not None and expected in digests:
        return expected
    if repository is not None:
        for ref in repo_digests(image):
            name, _, digest = ref.rpartition("@")
            if name == familiar(repository):
                return digest
    return digests[0] if digests else None


def credential_for(repository: str, credentials: Sequence[RegistryCredential]) -> RegistryCredential | None:
    """The task's credential for the repository's registry, if any."""
    host = registry_host(repository)
    for credential in credentials:
        if serves_host(credential.registry, host):
            return credential
    return None


class Engines:
    """aiodocker clients, one per engine URL, opened on first use and closed together.

    Args:
        config: The drivers' configuration (default engine, allowed engines).
    """

    def __init__(self, config: DriverConfig) -> None:
        self._config = config
        self._clients: dict[str, aiodocker.Docker] = {}

    def url_for(self, target: TargetSpec) -> str:
        """The engine URL of a target: its ``connection.docker_url`` if the operator allows it, else the default.

        Raises:
            TaskFailure: ``AGT_INVALID_TASK`` for an engine the agent was not allowed to use.
        """
        named = target.connection.get("docker_url")
        if named is None or named == self._config.docker_url:
            return self._config.docker_url
        if isinstance(named, str) and named in self._config.allowed_docker_urls:
            return named
        raise TaskFailure(INVALID_TASK, f"this agent is not allowed to use the Docker engine {named!r}")

    def client(self, url: str) -> aiodocker.Docker:
        """The client of the engine at ``url``."""
        client = self._clients.get(url)
        if client is None:
            client = aiodocker.Docker(url=url, timeout=_REQUEST_TIMEOUT)
            self._clients[url] = client
        return client

    async def close(self) -> None:
        """Close every client."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


def docker_failure(action: str, exc: DockerError) -> TaskFailure:
    """A failed result for an engine error."""
    return TaskFailure(DOCKER_ERROR, f"{action}: {exc.message}")


async def inspect_image(docker: aiodocker.Docker, ref: str) -> dict[str, Any] | None:
    """``docker image inspect``; None when the engine has no such image."""
    try:
        return await docker.images.inspect(ref)
    except DockerError as exc:
        if exc.status == 404:
            return None
        raise docker_failure(f"inspect image {ref}", exc) from exc


async def inspect_container(docker: aiodocker.Docker, name: str) -> dict[str, Any] | None:
    """``docker container inspect``; None when there is no such container."""
    try:
        container = await docker.containers.get(name)
    except DockerError as exc:
        if exc.status == 404:
            return None
        raise docker_failure(f"inspect container {name}", exc) from exc
    return dict(container._container)


async def ensure_image(
    docker: aiodocker.Docker, component: ComponentSpec, credentials: Sequence[RegistryCredential], log: LogSink
) -> dict[str, Any]:
    """Make the engine hold ``component.image_ref``, proven to be that digest.

    An image the engine already recorded under that exact repository digest is used as is (it was pulled
    and verified before); otherwise it is pulled by digest with the task's credentials for its registry.

    Returns:
        The image's inspection.

    Raises:
        TaskFailure: ``AGT_DIGEST_MISMATCH`` when what the registry served is not the pinned digest,
            ``AGT_PULL_FAILED`` when the pull fails otherwise.
    """
    ref = component.image_ref
    image = await inspect_image(docker, ref)
    if image is not None and has_repo_digest(image, component.image_repository, component.digest):
        log(f"{component.name}: {ref} is already present")
        return image
    credential = credential_for(component.image_repository, credentials)
    auth = None
    pull_ref = ref
    if credential is not None:
        auth = {"username": credential.username, "password": credential.password}
        if registry_host(component.image_repository) == "docker.io" and not ref.startswith("docker.io/"):
            pull_ref = f"docker.io/{ref}"  # aiodocker needs the registry in the name to send credentials
    log(f"{component.name}: pulling {ref}" + (f" as {credential.username}" if credential else ""))
    try:
        await docker.images.pull(pull_ref, auth=auth)
    except DockerError as exc:
        message = str(exc.message)
        if any(marker in message.lower() for marker in _VERIFICATION_FAILURES):
            raise TaskFailure(
                DIGEST_MISMATCH, f"{component.name}: the registry did not serve {component.digest}: {message}"
            ) from exc
        raise TaskFailure(PULL_FAILED, f"{component.name}: pull {ref} failed: {message}") from exc
    image = await inspect_image(docker, ref)
    if image is None or not has_repo_digest(image, component.image_repository, component.digest):
        found = repo_digests(image) if image is not None else []
        raise TaskFailure(
            DIGEST_MISMATCH,
            f"{component.name}: the pulled image's repo digests {found} do not contain {familiar(ref)}",
        )
    log(f"{component.name}: verified {component.digest} (image {str(image.get('Id', ''))[:19]})")
    return image


async def ensure_images(
    docker: aiodocker.Docker,
    components: Iterable[ComponentSpec],
    credentials: Sequence[RegistryCredential],
    log: LogSink,
) -> dict[str, dict[str, Any]]:
    """Pull and verify every component's image before anything is changed on the target.

    Returns:
        Each component's image inspection, by component name.
    """
    return {component.name: await ensure_image(docker, component, credentials, log) for component in components}


@dataclass
class RunningContainer:
    """One container as found on the engine.

    Attributes:
        id: Container id.
        name: Container name (without the leading ``/``).
        component: The component it runs, when known (Stella's label, or the Compose service).
        status: ``running``, ``exited``, ``created``, ``restarting``...
        health: The Docker health status (``healthy``, ``unhealthy``, ``starting``), None without a check.
        image_id: The image id it runs.
        image: The image as it was named at creation (``Config.Image``).
        image_inspect: The image's inspection (None if the image is gone).
        labels: Its labels.
        ports: Published ports: ``"8080/tcp" -> host port``.
    """

    id: str
    name: str
    component: str | None
    status: str
    health: str | None
    image_id: str
    image: str
    image_inspect: dict[str, Any] | None
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        """Whether its process runs."""
        return self.status == "running"

    def digest(self, repository: str | None = None, expected: str | None = None) -> str | None:
        """The digest it runs (see :func:`running_digest`)."""
        return running_digest(self.image_inspect, repository, expected)


def _published_ports(inspection: dict[str, Any]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for key, bindings in ((inspection.get("NetworkSettings") or {}).get("Ports") or {}).items():
        for binding in bindings or []:
            host_port = binding.get("HostPort")
            if host_port and key not in ports:
                ports[key] = int(host_port)
    return ports


async def describe(
    docker: aiodocker.Docker, inspection: dict[str, Any], component: str | None, images: dict[str, Any]
) -> RunningContainer:
    """Turn a container inspection into a :class:`RunningContainer`; ``images`` caches image inspections by id."""
    image_id = str(inspection.get("Image", ""))
    if image_id not in images:
        images[image_id] = await inspect_image(docker, image_id) if image_id else None
    state = inspection.get("State") or {}
    config = inspection.get("Config") or {}
    return RunningContainer(
        id=str(inspection["Id"]),
        name=str(inspection.get("Name", "")).lstrip("/"),
        component=component,
        status=str(state.get("Status", "unknown")),
        health=(state.get("Health") or {}).get("Status"),
        image_id=image_id,
        image=str(config.get("Image", "")),
        image_inspect=images[image_id],
        labels=dict(config.get("Labels") or {}),
        ports=_published_ports(inspection),
    )


async def list_containers(docker: aiodocker.Docker, *, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Inspections of every container (running or not) carrying all of ``labels`` (``key=value`` or ``key``)."""
    try:
        found = await docker.containers.list(all=True, filters=json.dumps({"label": list(labels)}))
    except DockerError as exc:
        raise docker_failure("list containers", exc) from exc
    inspections = []
    for container in found:
        inspection = await inspect_container(docker, container.id)
        if inspection is not None:  # None: removed between the listing and the inspection
            inspections.append(inspection)
    return inspections
