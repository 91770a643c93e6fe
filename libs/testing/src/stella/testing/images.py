"""Small runnable images for deployment tests, with real digests in a local registry.

Each image is one layer holding Debian's statically linked busybox (``/bin/busybox``) and a web root: the
container runs busybox ``httpd`` on :data:`HTTP_PORT`, serving ``/healthz`` (``ok``) and ``/version`` (the
image's version marker), and declares a Docker ``HEALTHCHECK`` that fetches ``/healthz``. The *broken*
variant serves no ``/healthz``, so its HTTP check answers 404 and its Docker health check fails: every kind
of health check has an image that passes and one that fails.

Images are pushed with :func:`~stella.testing.registry.push_image` through the distribution API, so the
engine pulls them by digest exactly as it would pull a release's images; no image is built or tagged in the
engine itself. A marker unique to the caller goes into every image, so two sessions never share a digest
(nor an image id in the engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from stella.testing.registry import Auth, LocalRegistry, RegistryError, busybox_files, push_image

HTTP_PORT: Final[int] = 8080
"""Port the test images' ``httpd`` listens on inside the container."""

HEALTH_PATH: Final[str] = "/healthz"
"""Path that answers 200 ``ok`` on a healthy image and 404 on the broken one."""

VERSION_PATH: Final[str] = "/version"
"""Path that answers the image's version marker."""

HEALTH_COMMAND: Final[tuple[str, ...]] = (
    "/bin/busybox",
    "wget",
    "-q",
    "-O",
    "/dev/null",
    f"http://127.0.0.1:{HTTP_PORT}{HEALTH_PATH}",
)
"""A command, run inside the container, that exits 0 only when the image is healthy."""

_SECOND_NS = 1_000_000_000


@dataclass(frozen=True)
class AppImage:
    """One image pushed to a registry.

    Attributes:
        repository: ``host:port/name``, as the engine names it.
        digest: The manifest digest the registry reported.
        version: The version marker ``/version`` serves (``v1 <marker>``).
        healthy: Whether ``/healthz`` answers 200 and the Docker health check passes.
    """

    repository: str
    digest: str
    version: str
    healthy: bool

    @property
    def ref(self) -> str:
        """``repository@sha256:...``."""
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True)
class AppImages:
    """The images a deployment test needs: two healthy versions and a broken one, in one repository."""

    v1: AppImage
    v2: AppImage
    broken: AppImage


def http_image_files(version: str, *, healthy: bool = True) -> dict[str, bytes]:
    """Return the layer files of a test image.

    Args:
        version: Served at :data:`VERSION_PATH`.
        healthy: Whether :data:`HEALTH_PATH` exists.

    Returns:
        ``{path: content}`` for :func:`~stella.testing.registry.push_image`.

    Raises:
        RegistryError: when busybox-static is not installed.
    """
    files = busybox_files()
    if files is None:
        raise RegistryError("busybox-static is not installed (apt-get install busybox-static)")
    files["www/version"] = f"{version}\n".encode()
    if healthy:
        files[f"www{HEALTH_PATH}"] = b"ok\n"
    return files


def http_image_config(version: str) -> dict[str, object]:
    """Return the run configuration of a test image: ``httpd`` in the foreground and a health check.

    Args:
        version: Recorded as the ``org.opencontainers.image.version`` label.

    Returns:
        The OCI image ``config`` section.
    """
    return {
        "Cmd": ["/bin/busybox", "httpd", "-f", "-p", str(HTTP_PORT), "-h", "/www"],
        "ExposedPorts": {f"{HTTP_PORT}/tcp": {}},
        "Healthcheck": {
            "Test": ["CMD", *HEALTH_COMMAND],
            "Interval": _SECOND_NS // 2,
            "Timeout": 2 * _SECOND_NS,
            "Retries": 3,
        },
        "Labels": {"org.opencontainers.image.version": version},
        # httpd runs as PID 1, which ignores SIGTERM: stop it at once instead of after Docker's 10 s grace.
        "StopSignal": "SIGKILL",
    }


def push_app_image(
    registry: LocalRegistry, repository: str, tag: str, version: str, *, healthy: bool = True, auth: Auth | None = None
) -> AppImage:
    """Push one test image and return where it is.

    Args:
        registry: A started registry.
        repository: Repository name inside the registry (without host).
        tag: Tag to push it under.
        version: Its version marker.
        healthy: False for the broken variant.
        auth: Credentials of an authenticating registry.

    Returns:
        The pushed image.
    """
    digest = push_image(
        registry.url,
        repository,
        tag,
        files=http_image_files(version, healthy=healthy),
        config=http_image_config(version),
        auth=auth if auth is not None else registry.credentials,
    )
    return AppImage(f"{registry.address}/{repository}", digest, version, healthy)


def push_app_images(registry: LocalRegistry, repository: str, marker: str) -> AppImages:
    """Push ``v1``, ``v2`` and ``broken`` images of one repository.

    Args:
        registry: A started registry.
        repository: Repository name inside the registry (without host).
        marker: Unique to the caller; part of every version marker, so digests are unique too.

    Returns:
        The three images, with distinct digests.
    """
    return AppImages(
        v1=push_app_image(registry, repository, "v1", f"v1 {marker}"),
        v2=push_app_image(registry, repository, "v2", f"v2 {marker}"),
        broken=push_app_image(registry, repository, "broken", f"broken {marker}", healthy=False),
    )
