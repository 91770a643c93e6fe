"""The local OCI registry and the image pusher, against a real distribution registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from stella.testing.plugin import MakeRegistry
from stella.testing.registry import (
    OCI_MANIFEST,
    LocalRegistry,
    RegistryError,
    busybox_files,
    fetch_manifest,
    push_image,
    request,
)


def fetch_layer(registry: LocalRegistry, repository: str, manifest: bytes) -> tarfile.TarFile:
    layer = json.loads(manifest)["layers"][0]
    response = request("GET", f"{registry.url}/v2/{repository}/blobs/{layer['digest']}", auth=registry.credentials)
    assert response.status == 200
    assert "sha256:" + hashlib.sha256(response.body).hexdigest() == layer["digest"]
    return tarfile.open(fileobj=io.BytesIO(gzip.decompress(response.body)))


def test_push_image_returns_the_digest_the_registry_serves(oci_registry: LocalRegistry, unique_id: str) -> None:
    repository = f"stella/api-{unique_id}"
    digest = push_image(oci_registry.url, repository, "1.0.0")
    by_tag = fetch_manifest(oci_registry.url, repository, "1.0.0")
    assert by_tag.status == 200
    assert by_tag.headers["Docker-Content-Digest"] == digest
    assert digest == "sha256:" + hashlib.sha256(by_tag.body).hexdigest()
    assert json.loads(by_tag.body)["mediaType"] == OCI_MANIFEST
    by_digest = fetch_manifest(oci_registry.url, repository, digest)
    assert by_digest.status == 200
    assert by_digest.body == by_tag.body
    layer = fetch_layer(oci_registry, repository, by_tag.body)
    member = layer.extractfile("etc/stella-image")
    assert member is not None
    assert member.read() == f"{repository}:1.0.0\n".encode()


def test_pushed_images_are_reproducible_and_distinct_per_tag(oci_registry: LocalRegistry, unique_id: str) -> None:
    repository = f"stella/web-{unique_id}"
    files = {"app/version": b"42\n"}
    first = push_image(oci_registry.url, repository, "a", files=files)
    again = push_image(oci_registry.url, repository, "b", files=files)
    other = push_image(oci_registry.url, repository, "c")
    assert first == again
    assert other != first
    tags = json.loads(request("GET", f"{oci_registry.url}/v2/{repository}/tags/list").body)
    assert sorted(tags["tags"]) == ["a", "b", "c"]


def test_busybox_image_keeps_the_binary_executable(oci_registry: LocalRegistry, unique_id: str) -> None:
    files = busybox_files()
    if files is None:
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    repository = f"stella/busybox-{unique_id}"
    push_image(oci_registry.url, repository, "latest", files=files)
    manifest = fetch_manifest(oci_registry.url, repository, "latest")
    entry = fetch_layer(oci_registry, repository, manifest.body).getmember("bin/busybox")
    assert entry.mode == 0o755
    assert entry.size == len(files["bin/busybox"])


def test_authenticating_registry_refuses_anonymous_access(
    oci_registry_with_auth: LocalRegistry, unique_id: str
) -> None:
    registry = oci_registry_with_auth
    assert registry.credentials is not None
    anonymous = request("GET", f"{registry.url}/v2/")
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    wrong = request("GET", f"{registry.url}/v2/", auth=(registry.credentials[0], "wrong password"))
    assert wrong.status == 401
    with pytest.raises(RegistryError) as refused:
        push_image(registry.url, f"stella/private-{unique_id}", "1")
    assert refused.value.status == 401
    digest = push_image(registry.url, f"stella/private-{unique_id}", "1", auth=registry.credentials)
    manifest = fetch_manifest(registry.url, f"stella/private-{unique_id}", "1", auth=registry.credentials)
    assert manifest.headers["Docker-Content-Digest"] == digest
    assert fetch_manifest(registry.url, f"stella/private-{unique_id}", "1").status == 401


def test_a_stopped_registry_is_unreachable_and_restarts_with_its_images(make_oci_registry: MakeRegistry) -> None:
    registry = make_oci_registry()
    digest = push_image(registry.url, "stella/kept", "1")
    address = registry.address
    registry.stop()
    with pytest.raises(RegistryError, match="unreachable") as down:
        fetch_manifest(registry.url, "stella/kept", "1")
    assert down.value.status is None
    registry.restart()
    assert registry.address == address
    assert fetch_manifest(registry.url, "stella/kept", "1").headers["Docker-Content-Digest"] == digest


def test_unknown_manifest_is_not_found(oci_registry: LocalRegistry, unique_id: str) -> None:
    assert fetch_manifest(oci_registry.url, f"stella/none-{unique_id}", "missing").status == 404
