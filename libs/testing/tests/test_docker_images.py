"""The Docker fixtures: test images that run and answer, a registry that tampers, a janitor that cleans."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import docker.errors
import pytest

from stella.testing.docker import DockerEngine, DockerJanitor, DockerPullError
from stella.testing.images import HEALTH_PATH, HTTP_PORT, VERSION_PATH, AppImage, AppImages
from stella.testing.messaging import unique_token
from stella.testing.registry import LocalRegistry
from stella.testing.tampering import TamperingRegistry

pytestmark = pytest.mark.docker


def run(engine: DockerEngine, janitor: DockerJanitor, image: AppImage) -> tuple[str, int]:
    name = janitor.add_container(f"stella-test-{unique_token()}")
    engine.pull(image.ref)
    container = engine.client.containers.run(  # type: ignore[call-overload]  # (host, None) binds a random port; the stubs omit it
        image.ref, name=name, detach=True, ports={f"{HTTP_PORT}/tcp": ("127.0.0.1", None)}
    )
    container.reload()
    port = int(container.attrs["NetworkSettings"]["Ports"][f"{HTTP_PORT}/tcp"][0]["HostPort"])
    return name, port


def get(port: int, path: str) -> tuple[int, bytes]:
    # httpd starts a moment after the container; there is no event to await.
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def health_status(engine: DockerEngine, name: str, wanted: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        status = str(engine.client.containers.get(name).attrs["State"].get("Health", {}).get("Status"))
        if status == wanted or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def app_images_have_distinct_digests_and_run_httpd(
    docker_engine: DockerEngine, docker_janitor: DockerJanitor, app_images: AppImages
) -> None:
    digests = {app_images.v1.digest, app_images.v2.digest, app_images.broken.digest}
    assert len(digests) == 3
    name, port = run(docker_engine, docker_janitor, app_images.v2)
    assert get(port, VERSION_PATH) == (200, f"{app_images.v2.version}\n".encode())
    assert get(port, HEALTH_PATH) == (200, b"ok\n")
    assert health_status(docker_engine, name, "healthy") == "healthy"
    image = docker_engine.client.images.get(app_images.v2.ref)
    assert app_images.v2.ref in image.attrs["RepoDigests"]


def test_the_broken_image_fails_its_health_checks(
    docker_engine: DockerEngine, docker_janitor: DockerJanitor, app_images: AppImages
) -> None:
    name, port = run(docker_engine, docker_janitor, app_images.broken)
    assert get(port, VERSION_PATH)[0] == 200
    assert get(port, HEALTH_PATH)[0] == 404
    assert health_status(docker_engine, name, "unhealthy") == "unhealthy"


def test_the_tampering_registry_serves_another_manifest_and_the_engine_notices(
    docker_engine: DockerEngine,
    app_images: AppImages,
    oci_registry: LocalRegistry,
    tampering_registry: TamperingRegistry,
) -> None:
    repository = app_images.v1.repository.split("/", 1)[1]
    tampering_registry.swap(repository, app_images.v1.digest, app_images.v2.digest)
    pinned = f"{tampering_registry.address}/{repository}@{app_images.v1.digest}"
    with pytest.raises(DockerPullError, match="verification failed"):
        docker_engine.pull(pinned)
    assert tampering_registry.served_swaps >= 1
    with pytest.raises(docker.errors.ImageNotFound):
        docker_engine.client.images.get(pinned)
    # Everything else is forwarded unchanged.
    honest = f"{tampering_registry.address}/{repository}@{app_images.v2.digest}"
    docker_engine.pull(honest)
    assert honest in docker_engine.client.images.get(honest).attrs["RepoDigests"]


def test_the_janitor_removes_what_was_registered_and_nothing_else(
    docker_engine: DockerEngine, app_images: AppImages
) -> None:
    janitor = DockerJanitor(docker_engine.client)
    other = DockerJanitor(docker_engine.client)
    token = unique_token()
    try:
        docker_engine.pull(app_images.v1.ref)
        by_name = janitor.add_container(f"stella-test-{token}-a")
        docker_engine.client.containers.create(app_images.v1.ref, name=by_name)
        janitor.add_label("stella.test", token)
        docker_engine.client.containers.create(
            app_images.v1.ref, name=f"stella-test-{token}-b", labels={"stella.test": token}
        )
        kept = other.add_container(f"stella-test-{token}-kept")
        docker_engine.client.containers.create(app_images.v1.ref, name=kept, labels={"stella.test": "other"})
        assert janitor.clean() == []
        names = {c.name for c in docker_engine.client.containers.list(all=True, filters={"name": token})}
        assert names == {kept}
    finally:
        other.clean()
