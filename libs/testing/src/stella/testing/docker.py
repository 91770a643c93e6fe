"""A real Docker engine for tests, and a janitor that removes exactly what a test created there.

The engine is shared with other people: tests name everything they create with a random suffix and hand
it to a :class:`DockerJanitor`, which removes those containers, compose projects' containers and networks,
and image references at the end, and never anything else (no prune, no removal by pattern).

:func:`find_docker_engine` takes ``DOCKER_HOST`` when set, else the default socket; a test that needs an
engine skips, with the reason, when none answers, unless ``STELLA_TEST_REQUIRE_DOCKER=1`` (set by CI,
which starts an engine) turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import docker
import docker.errors
from docker import DockerClient

DEFAULT_DOCKER_URL: Final[str] = "unix:///var/run/docker.sock"
"""Where the engine answers when ``DOCKER_HOST`` is not set."""

REQUIRE_DOCKER_ENV: Final[str] = "STELLA_TEST_REQUIRE_DOCKER"
"""When ``1``/``true``, a missing engine fails the tests that need one instead of skipping them."""

_PROBE_TIMEOUT = 10


class DockerUnavailableError(RuntimeError):
    """No Docker engine answers."""


class DockerPullError(RuntimeError):
    """The engine refused or failed a pull; the message is the engine's."""


@dataclass
class DockerEngine:
    """A Docker engine that answered a ping.

    Attributes:
        url: Its address (``unix:///...`` or ``tcp://...``), as an agent would be configured with it.
        client: A docker-py client for the test's own checks (``docker inspect`` and the like).
        version: The engine's version.
        api_version: The API version it speaks.
    """

    url: str
    client: DockerClient
    version: str
    api_version: str

    def pull(self, ref: str) -> None:
        """Pull an image, raising the engine's own message when the pull fails.

        docker-py's ``images.pull`` ignores errors reported inside the progress stream (a digest that does
        not verify is one); this reads the stream.

        Raises:
            DockerPullError: with the engine's message.
        """
        for event in self.client.api.pull(ref, stream=True, decode=True):
            if "error" in event:
                raise DockerPullError(str(event.get("errorDetail", {}).get("message") or event["error"]))

    def close(self) -> None:
        """Close the client."""
        self.client.close()


def docker_required() -> bool:
    """Whether a missing engine must fail the tests (``STELLA_TEST_REQUIRE_DOCKER``)."""
    return os.environ.get(REQUIRE_DOCKER_ENV, "").strip().lower() in ("1", "true", "yes")


def find_docker_engine() -> DockerEngine:
    """Connect to the engine of ``DOCKER_HOST``, else the default socket, and ping it.

    Returns:
        The engine.

    Raises:
        DockerUnavailableError: with the reason, when none answers.
    """
    url = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL
    try:
        client = docker.DockerClient(base_url=url, timeout=_PROBE_TIMEOUT)
    except docker.errors.DockerException as exc:
        raise DockerUnavailableError(f"no Docker engine at {url}: {exc}") from exc
    try:
        client.ping()
        info = client.version()
    except Exception as exc:  # connection refused, missing socket, permission denied: all mean "no engine"
        client.close()
        raise DockerUnavailableError(f"no Docker engine answers at {url}: {exc}") from exc
    return DockerEngine(url, client, str(info.get("Version", "?")), str(info.get("ApiVersion", "?")))


@dataclass
class DockerJanitor:
    """Removes what a test created in a shared engine, and only that.

    Register resources as they are created (or before: unknown names are ignored at clean-up).
    """

    client: DockerClient
    containers: set[str] = field(default_factory=set)
    """Container names or ids."""
    labels: set[str] = field(default_factory=set)
    """``key=value`` labels: every container carrying one is removed (use values unique to the test)."""
    networks: set[str] = field(default_factory=set)
    """Network names."""
    images: set[str] = field(default_factory=set)
    """Image references (``repo@sha256:...``); untagged, and deleted when nothing else refers to them."""
    registries: set[str] = field(default_factory=set)
    """Registry addresses (``127.0.0.1:port``) owned by the test: every image reference into one is removed."""

    def add_container(self, name: str) -> str:
        """Register a container; returns the name."""
        self.containers.add(name)
        return name

    def add_label(self, key: str, value: str) -> None:
        """Remove every container labelled ``key=value`` at clean-up."""
        self.labels.add(f"{key}={value}")

    def add_compose_project(self, project: str) -> None:
        """Remove the containers and the default network of a Compose project at clean-up."""
        self.add_label("com.docker.compose.project", project)
        self.networks.add(f"{project}_default")
        self.networks.add(f"{project}-default")

    def add_image(self, ref: str) -> str:
        """Register an image reference; returns it."""
        self.images.add(ref)
        return ref

    def add_registry(self, address: str) -> None:
        """Remove every image pulled from the registry at ``address`` at clean-up."""
        self.registries.add(address)

    def _labelled(self) -> list[Any]:
        found: dict[str, Any] = {}
        for label in self.labels:
            for container in self.client.containers.list(all=True, filters={"label": label}):
                if container.id is not None:
                    found[container.id] = container
        return list(found.values())

    def _images_from_registries(self) -> Iterable[str]:
        if not self.registries:
            return []
        refs: list[str] = []
        for image in self.client.images.list():
            for ref in [*image.attrs.get("RepoDigests", []), *image.attrs.get("RepoTags", [])]:
                if any(ref.startswith(f"{address}/") for address in self.registries):
                    refs.append(ref)
        return refs

    def clean(self) -> list[str]:
        """Remove everything registered; never raises for what is already gone.

        Returns:
            Problems met (resources that could not be removed), for the test report.
        """
        problems: list[str] = []
        containers = {container.id: container for container in self._labelled()}
        for name in self.containers:
            with contextlib.suppress(docker.errors.NotFound):
                container = self.client.containers.get(name)
                containers[container.id] = container
        for container in containers.values():
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                problems.append(f"container {container.name}: {exc}")
        for name in self.networks:
            try:
                self.client.networks.get(name).remove()
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                problems.append(f"network {name}: {exc}")
        for ref in {*self.images, *self._images_from_registries()}:
            try:
                self.client.images.remove(ref)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                problems.append(f"image {ref}: {exc}")
        return problems
