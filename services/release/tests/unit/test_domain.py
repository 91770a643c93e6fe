"""The release domain and the registry helpers, with no I/O."""

from __future__ import annotations

import pytest

from stella.contracts.release import CreateRelease, ReleaseComponentSpec, ReleaseStatus
from stella.release import domain
from stella.release.handlers import _channel_for, _semver_of
from stella.release.registry import CredentialUnresolved, resolve_credential_ref, split_repository


@pytest.mark.parametrize("status", [ReleaseStatus.READY, ReleaseStatus.DEPLOYED, ReleaseStatus.DEPRECATED])
def test_only_drafts_are_editable(status: ReleaseStatus) -> None:
    domain.ensure_editable("r", ReleaseStatus.DRAFT)
    with pytest.raises(domain.ReleaseImmutable) as err:
        domain.ensure_editable("r", status)
    assert (err.value.code, err.value.status) == ("REL_IMMUTABLE", 409)


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        (ReleaseStatus.DRAFT, ReleaseStatus.READY, True),
        (ReleaseStatus.DRAFT, ReleaseStatus.DEPRECATED, True),
        (ReleaseStatus.READY, ReleaseStatus.READY, False),
        (ReleaseStatus.READY, ReleaseStatus.DEPRECATED, True),
        (ReleaseStatus.DEPRECATED, ReleaseStatus.READY, False),
        (ReleaseStatus.DEPRECATED, ReleaseStatus.DEPRECATED, False),
        (ReleaseStatus.DEPLOYED, ReleaseStatus.DRAFT, False),
    ],
)
def test_transitions(current: ReleaseStatus, target: ReleaseStatus, allowed: bool) -> None:
    if allowed:
        assert domain.transition("r", current, target) is target
    else:
        with pytest.raises(domain.InvalidReleaseTransition):
            domain.transition("r", current, target)


def test_version_changes_are_classified() -> None:
    known = domain.KnownVersion("sha256:" + "a" * 64, "1.0.0", "stable")
    assert domain.classify_version(None, known.digest, None, "stable") is domain.VersionChange.RESOLVED
    assert domain.classify_version(known, known.digest, "1.0.0", "stable") is domain.VersionChange.UNCHANGED
    assert domain.classify_version(known, "sha256:" + "b" * 64, "1.0.0", "stable") is domain.VersionChange.UPDATED
    assert domain.classify_version(known, known.digest, "1.0.0", "beta") is domain.VersionChange.UPDATED


def test_resolution_source_follows_the_versioning_strategy() -> None:
    assert domain.resolves_from_registry({})
    assert domain.resolves_from_registry({"type": "semver"})
    assert not domain.resolves_from_registry({"resolve": "version-map"})


def test_semver_tags_and_channels() -> None:
    assert _semver_of("1.2.3") == "1.2.3"
    assert _semver_of("v1.2.3-rc.1") == "v1.2.3-rc.1"
    assert _semver_of("latest") is None
    assert _channel_for("1.2.3-rc.1", "stable") == "beta"
    assert _channel_for("1.2.3+build.5", "stable") == "stable"
    assert _channel_for(None, "edge") == "edge"


@pytest.mark.parametrize(
    ("repository", "base", "path"),
    [
        ("127.0.0.1:5000/team/app", "http://127.0.0.1:5000", "team/app"),
        ("localhost/app", "http://localhost", "app"),
        ("registry.example.com/app", "https://registry.example.com", "app"),
        ("nginx", "https://registry-1.docker.io", "library/nginx"),
        ("team/app", "https://registry-1.docker.io", "team/app"),
    ],
)
def test_repositories_split_into_registry_and_path(repository: str, base: str, path: str) -> None:
    ref = split_repository(repository, ["localhost", "127.0.0.1"])
    assert (ref.base_url, ref.path) == (base, path)


def test_credential_references(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("STELLA_TEST_REG", "alice:s3cret:with:colons")
    creds = resolve_credential_ref("env:STELLA_TEST_REG")
    assert creds is not None
    assert (creds.username, creds.password) == ("alice", "s3cret:with:colons")
    assert "s3cret" not in repr(creds)
    secret = tmp_path / "reg"
    secret.write_text("bob:pw\n")
    creds = resolve_credential_ref(f"file:{secret}")
    assert creds is not None
    assert (creds.username, creds.password) == ("bob", "pw")
    assert resolve_credential_ref(None) is None
    with pytest.raises(CredentialUnresolved, match="is not set"):
        resolve_credential_ref("env:STELLA_TEST_MISSING")
    with pytest.raises(CredentialUnresolved, match="cannot read"):
        resolve_credential_ref(f"file:{tmp_path / 'nope'}")
    monkeypatch.setenv("STELLA_TEST_REG", "no-colon")
    with pytest.raises(CredentialUnresolved, match="user:password"):
        resolve_credential_ref("env:STELLA_TEST_REG")


def test_a_release_names_each_component_once_by_tag_or_digest() -> None:
    ids = {
        "tenant_id": "00000000-0000-0000-0000-000000000001",
        "correlation_id": "00000000-0000-0000-0000-000000000002",
    }
    with pytest.raises(ValueError, match="exactly one of tag or digest"):
        ReleaseComponentSpec(component="web")
    with pytest.raises(ValueError, match="exactly one of tag or digest"):
        ReleaseComponentSpec(component="web", tag="1", digest="sha256:" + "a" * 64)
    with pytest.raises(ValueError, match="appears twice"):
        CreateRelease(name="r", components=[{"component": "web", "tag": "1"}, {"component": "web", "tag": "2"}], **ids)
    with pytest.raises(ValueError, match=r"should match pattern"):
        ReleaseComponentSpec(component="web", digest="sha256:XYZ")
