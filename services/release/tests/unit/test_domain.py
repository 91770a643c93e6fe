"""The release domain and the registry helpers, with no I/O."""

from __future__ import annotations

import uuid

import pytest

from stella.contracts.release import CreateRelease, ReleaseComponentSpec, ReleaseStatus
from stella.release import domain
from stella.release.credentials import CredentialPolicy, CredentialRefNotAllowed, CredentialUnresolved
from stella.release.handlers import _channel_for, _semver_of
from stella.release.registry import split_repository


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


def test_allowed_credential_references_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    tenant = uuid.uuid4()
    secret = tmp_path / "reg"
    secret.write_text("bob:pw\n")
    policy = CredentialPolicy({str(tenant): ["env:STELLA_TEST_REG"], "*": [f"file:{secret}"]})
    monkeypatch.setenv("STELLA_TEST_REG", "alice:s3cret:with:colons")
    creds = policy.resolve(tenant, "env:STELLA_TEST_REG")
    assert creds is not None
    assert (creds.username, creds.password) == ("alice", "s3cret:with:colons")
    assert "s3cret" not in repr(creds)
    creds = policy.resolve(uuid.uuid4(), f"file:{secret}")
    assert creds is not None
    assert (creds.username, creds.password) == ("bob", "pw")
    assert policy.resolve(tenant, None) is None


@pytest.mark.parametrize(
    "ref",
    ["env:STELLA_DATABASE_URL", "env:PATH", "env:HOME", "file:/etc/passwd", "file:/proc/self/environ", "file:/nope"],
)
def test_references_the_operator_did_not_allow_are_never_read(ref: str) -> None:
    tenant = uuid.uuid4()
    # Another tenant's reference is not this tenant's.
    policy = CredentialPolicy({str(uuid.uuid4()): [ref]})
    with pytest.raises(CredentialRefNotAllowed) as caught:
        policy.resolve(tenant, ref)
    with pytest.raises(CredentialRefNotAllowed):
        policy.check(tenant, ref)
    assert "No such file" not in caught.value.detail
    assert caught.value.status == 422


def test_unreadable_allowed_references_say_nothing_about_the_host(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    tenant = uuid.uuid4()
    refs = ["env:STELLA_TEST_MISSING", f"file:{tmp_path / 'nope'}", f"file:{tmp_path}", "env:STELLA_TEST_REG"]
    monkeypatch.delenv("STELLA_TEST_MISSING", raising=False)
    monkeypatch.setenv("STELLA_TEST_REG", "no-colon")
    policy = CredentialPolicy({str(tenant): refs})
    details = set()
    for ref in refs:
        with pytest.raises(CredentialUnresolved) as caught:
            policy.resolve(tenant, ref)
        details.add(caught.value.detail.replace(ref, "<ref>"))
    # Missing, unreadable, a directory or malformed: the same answer, so nothing about the host is learnt.
    assert len(details) == 1
    assert not any(word in next(iter(details)) for word in ("No such", "directory", "not set", "permission"))


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
