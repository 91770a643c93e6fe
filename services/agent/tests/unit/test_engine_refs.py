"""How image references, repo digests and credentials are matched."""

from __future__ import annotations

import pytest

from stella.agent.drivers.engine import credential_for, familiar, has_repo_digest, running_digest
from stella.contracts.agent import RegistryCredential, registry_host

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.mark.parametrize(
    ("repository", "host"),
    [
        ("nginx", "docker.io"),
        ("library/nginx", "docker.io"),
        ("team/app", "docker.io"),
        ("docker.io/team/app", "docker.io"),
        ("registry.example/team/app", "registry.example"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000"),
        ("localhost/app", "localhost"),
        ("Registry.Example:5000/team/app", "registry.example:5000"),
    ],
)
def test_registry_host(repository: str, host: str) -> None:
    assert registry_host(repository) == host


def test_familiar_names_match_what_the_engine_reports() -> None:
    assert familiar("docker.io/library/nginx") == "nginx"
    assert familiar(f"docker.io/library/nginx@{D1}") == f"nginx@{D1}"
    assert familiar("docker.io/team/app") == "team/app"
    assert familiar("index.docker.io/library/x/y") == "library/x/y"
    assert familiar("127.0.0.1:5000/app") == "127.0.0.1:5000/app"


def test_repo_digest_matching_is_exact() -> None:
    image = {"RepoDigests": [f"nginx@{D1}", f"127.0.0.1:5000/app@{D2}"]}
    assert has_repo_digest(image, "docker.io/library/nginx", D1)
    assert has_repo_digest(image, "127.0.0.1:5000/app", D2)
    assert not has_repo_digest(image, "127.0.0.1:5000/app", D1)
    assert not has_repo_digest(image, "127.0.0.1:5001/app", D2)
    assert not has_repo_digest({"RepoDigests": None}, "nginx", D1)


def test_running_digest() -> None:
    image = {"RepoDigests": [f"a/x@{D1}", f"b/x@{D2}"]}
    assert running_digest(image, "b/x", D1) == D1
    assert running_digest(image, "b/x", None) == D2
    assert running_digest(image, "c/x", None) == D1
    assert running_digest({"RepoDigests": []}, "a/x", D1) is None
    assert running_digest(None, "a/x", D1) is None


def test_the_credential_of_the_images_registry_is_chosen() -> None:
    credentials = [
        RegistryCredential(registry="registry.example", username="u1", password="p1"),
        RegistryCredential(registry="docker.io", username="u2", password="p2"),
    ]
    assert credential_for("registry.example/app", credentials) is credentials[0]
    # The host is matched as the deployment service attached it: without regard to case.
    assert credential_for("Registry.Example/app", credentials) is credentials[0]
    assert credential_for("team/app", credentials) is credentials[1]
    assert credential_for("other.example/app", credentials) is None
    assert "p1" not in repr(credentials[0])
