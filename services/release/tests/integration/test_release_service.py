"""The release service over real NATS and Postgres, resolving tags against a real OCI registry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web

from stella.contracts import release as c
from stella.release.app import ReleaseApp
from stella.testing.messaging import collect_messages
from stella.testing.registry import LocalRegistry, push_image

from .conftest import Caller


def _digest(ch: str) -> str:
    return "sha256:" + ch * 64


async def _component(caller: Caller, name: str, repository: str, **fields) -> dict:
    reply = await caller.command(
        c.CREATE_COMPONENT, c.CreateComponent, name=name, image_repository=repository, **fields
    )
    assert reply.ok, reply.error
    return reply.data


async def _table_counts(app: ReleaseApp) -> dict[str, int]:
    async with app.runtime.pool.acquire() as conn:
        return {
            t: await conn.fetchval(f"SELECT count(*) FROM {t}")
            for t in ("components", "versions", "releases", "outbox")
        }


async def test_sync_then_release_by_tags_pins_registry_digests(
    caller: Caller, oci_registry: LocalRegistry, unique_id: str
) -> None:
    repo = f"{unique_id}/api"
    pushed = {tag: push_image(oci_registry.url, repo, tag) for tag in ("1.0.0", "1.1.0-rc.1", "latest")}
    component = await _component(caller, "api", f"{oci_registry.address}/{repo}")

    sync = await caller.command(c.SYNC_VERSIONS, c.SyncVersions, component_id=component["id"])
    assert sync.ok, sync.error
    assert sync.data == {"component_id": component["id"], "tags_seen": 3, "resolved": 3, "updated": 0, "unchanged": 0}
    again = await caller.command(c.SYNC_VERSIONS, c.SyncVersions, component_id=component["id"])
    assert again.data["unchanged"] == 3

    versions = await caller.query(c.LIST_VERSIONS, c.ListVersions, component_id=component["id"])
    by_tag = {v["tag"]: v for v in versions.data["items"]}
    assert {t: v["digest"] for t, v in by_tag.items()} == pushed
    assert by_tag["1.1.0-rc.1"]["channel"] == "beta"
    assert by_tag["1.0.0"]["semver"] == "1.0.0"

    created = await caller.command(
        c.CREATE_RELEASE, c.CreateRelease, name="r1", components=[{"component": "api", "tag": "1.0.0"}]
    )
    assert created.ok, created.error
    [pinned] = created.data["components"]
    assert pinned["digest"] == pushed["1.0.0"]
    assert pinned["tag"] == "1.0.0"
    read = await caller.query(c.GET_RELEASE, c.GetRelease, release_id=created.data["id"])
    assert read.data == created.data


async def test_a_moved_tag_updates_the_map_but_not_existing_releases(
    caller: Caller, oci_registry: LocalRegistry, unique_id: str
) -> None:
    repo = f"{unique_id}/web"
    first = push_image(oci_registry.url, repo, "stable", files={"v": b"1"})
    component = await _component(caller, "web", f"{oci_registry.address}/{repo}")
    r1 = await caller.command(
        c.CREATE_RELEASE, c.CreateRelease, name="r1", components=[{"component": "web", "tag": "stable"}]
    )
    assert r1.data["components"][0]["digest"] == first
    second = push_image(oci_registry.url, repo, "stable", files={"v": b"2"})
    assert second != first
    r2 = await caller.command(
        c.CREATE_RELEASE, c.CreateRelease, name="r2", components=[{"component": "web", "tag": "stable"}]
    )
    assert r2.data["components"][0]["digest"] == second
    old = await caller.query(c.GET_RELEASE, c.GetRelease, release_id=r1.data["id"])
    assert old.data["components"][0]["digest"] == first
    versions = await caller.query(c.LIST_VERSIONS, c.ListVersions, component_id=component["id"])
    assert [v["digest"] for v in versions.data["items"]] == [second]


async def test_unknown_tag_is_422_and_creates_nothing(
    caller: Caller, release_app: ReleaseApp, oci_registry: LocalRegistry, unique_id: str
) -> None:
    repo = f"{unique_id}/api"
    push_image(oci_registry.url, repo, "1.0.0")
    await _component(caller, "api", f"{oci_registry.address}/{repo}")
    before = await _table_counts(release_app)
    reply = await caller.command(
        c.CREATE_RELEASE, c.CreateRelease, name="r", components=[{"component": "api", "tag": "9.9.9"}]
    )
    assert not reply.ok
    assert (reply.error.code, reply.error.status) == ("REL_UNKNOWN_TAG", 422)
    assert "9.9.9" in reply.error.detail
    assert await _table_counts(release_app) == before


async def test_registry_down_is_a_clear_error_and_no_partial_release(
    caller: Caller, release_app: ReleaseApp, make_oci_registry, unique_id: str
) -> None:
    registry: LocalRegistry = make_oci_registry()
    repo = f"{unique_id}/api"
    push_image(registry.url, repo, "1.0.0")
    push_image(registry.url, f"{unique_id}/db", "1.0.0")
    await _component(caller, "api", f"{registry.address}/{repo}")
    await _component(caller, "db", f"{registry.address}/{unique_id}/db")
    registry.stop()
    before = await _table_counts(release_app)
    reply = await caller.command(
        c.CREATE_RELEASE,
        c.CreateRelease,
        name="r",
        components=[{"component": "db", "digest": _digest("d")}, {"component": "api", "tag": "1.0.0"}],
    )
    assert not reply.ok
    assert (reply.error.code, reply.error.status) == ("REL_REGISTRY_UNAVAILABLE", 503)
    assert registry.address in reply.error.detail
    sync = await caller.command(
        c.SYNC_VERSIONS,
        c.SyncVersions,
        component_id=(await caller.query(c.LIST_COMPONENTS, c.ListComponents)).data["items"][0]["id"],
    )
    assert sync.error.code == "REL_REGISTRY_UNAVAILABLE"
    assert await _table_counts(release_app) == before
    registry.start()
    retry = await caller.command(
        c.CREATE_RELEASE, c.CreateRelease, name="r", components=[{"component": "api", "tag": "1.0.0"}]
    )
    assert retry.ok, retry.error


REGISTRY_AUTH_REF = "env:STELLA_TEST_PRIVATE_REGISTRY_AUTH"


@pytest.mark.parametrize("credential_refs", [[REGISTRY_AUTH_REF]], indirect=True)
async def test_a_deprecated_credential_reference_is_still_read_but_no_new_one_is_accepted(
    caller: Caller, release_app: ReleaseApp, oci_registry_with_auth: LocalRegistry, unique_id: str, monkeypatch
) -> None:
    registry = oci_registry_with_auth
    assert registry.credentials is not None
    user, password = registry.credentials
    repo = f"{unique_id}/private"
    digest = push_image(registry.url, repo, "2.0.0", auth=registry.credentials)
    anonymous = await _component(caller, "anon", f"{registry.address}/{repo}")
    refused = await caller.command(c.SYNC_VERSIONS, c.SyncVersions, component_id=anonymous["id"])
    assert (refused.error.code, refused.error.status) == ("REL_REGISTRY_AUTH_FAILED", 422)

    # A new reference is refused, even one the operator allows: registry integrations replace them.
    monkeypatch.setenv(REGISTRY_AUTH_REF.removeprefix("env:"), f"{user}:{password}")
    for reply in (
        await caller.command(
            c.CREATE_COMPONENT,
            c.CreateComponent,
            name="private",
            image_repository=f"{registry.address}/{repo}",
            registry_credential_ref=REGISTRY_AUTH_REF,
        ),
        await caller.command(
            c.UPDATE_COMPONENT,
            c.UpdateComponent,
            component_id=anonymous["id"],
            registry_credential_ref=REGISTRY_AUTH_REF,
        ),
    ):
        assert (reply.error.code, reply.error.status) == ("REL_REGISTRY_CREDENTIAL_REF_DEPRECATED", 422)
        assert "registry_integration_id" in reply.error.detail

    # A component stored with one before the deprecation is still read through it, as a fallback.
    async with release_app.runtime.pool.acquire() as conn:
        await conn.execute(
            "UPDATE components SET registry_credential_ref = $1 WHERE id = $2",
            REGISTRY_AUTH_REF,
            uuid.UUID(anonymous["id"]),
        )
    sync = await caller.command(c.SYNC_VERSIONS, c.SyncVersions, component_id=anonymous["id"])
    assert sync.ok, sync.error
    versions = await caller.query(c.LIST_VERSIONS, c.ListVersions, component_id=anonymous["id"])
    assert versions.data["items"][0]["digest"] == digest
    monkeypatch.setenv(REGISTRY_AUTH_REF.removeprefix("env:"), f"{user}:wrong")
    wrong = await caller.command(c.SYNC_VERSIONS, c.SyncVersions, component_id=anonymous["id"])
    assert wrong.error.code == "REL_REGISTRY_AUTH_FAILED"
    assert password not in wrong.model_dump_json()

    # A component cannot name both (the migration's constraint); clearing the reference is allowed.
    async with release_app.runtime.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "UPDATE components SET registry_integration_id = $1 WHERE id = $2",
                uuid.uuid4(),
                uuid.UUID(anonymous["id"]),
            )
    cleared = await caller.command(
        c.UPDATE_COMPONENT, c.UpdateComponent, component_id=anonymous["id"], clear_registry_credential_ref=True
    )
    assert cleared.ok, cleared.error
    assert cleared.data["registry_credential_ref"] is None


async def test_ready_release_is_immutable_even_in_the_database(caller: Caller, release_app: ReleaseApp) -> None:
    await _component(caller, "api", "127.0.0.1:1/api", versioning_strategy={"resolve": "version-map"})
    created = await caller.command(
        c.CREATE_RELEASE, c.CreateRelease, name="r", components=[{"component": "api", "digest": _digest("a")}]
    )
    rid = created.data["id"]
    edit = await caller.command(c.UPDATE_RELEASE, c.UpdateRelease, release_id=rid, display_name="Renamed")
    assert edit.ok and edit.data["display_name"] == "Renamed"
    ready = await caller.command(c.MARK_RELEASE_READY, c.MarkReleaseReady, release_id=rid)
    assert ready.ok and ready.data["status"] == "ready" and ready.data["ready_at"]

    refused = await caller.command(
        c.UPDATE_RELEASE, c.UpdateRelease, release_id=rid, components=[{"component": "api", "digest": _digest("b")}]
    )
    assert (refused.error.code, refused.error.status) == ("REL_IMMUTABLE", 409)
    twice = await caller.command(c.MARK_RELEASE_READY, c.MarkReleaseReady, release_id=rid)
    assert (twice.error.code, twice.error.status) == ("REL_INVALID_TRANSITION", 409)
    async with release_app.runtime.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE releases SET components = '[]' WHERE id = $1", uuid.UUID(rid))
    read = await caller.query(c.GET_RELEASE, c.GetRelease, release_id=rid)
    assert read.data["components"][0]["digest"] == _digest("a")
    deprecated = await caller.command(c.DEPRECATE_RELEASE, c.DeprecateRelease, release_id=rid, reason="CVE-2026-1")
    assert deprecated.data["status"] == "deprecated" and deprecated.data["deprecation_reason"] == "CVE-2026-1"


async def test_names_are_unique_per_tenant_and_tenants_are_isolated(caller: Caller) -> None:
    await _component(caller, "api", "127.0.0.1:1/api", versioning_strategy={"resolve": "version-map"})
    duplicate = await caller.command(
        c.CREATE_COMPONENT, c.CreateComponent, name="api", image_repository="127.0.0.1:1/x"
    )
    assert (duplicate.error.code, duplicate.error.status) == ("RES_DUPLICATE_NAME", 409)
    created = await caller.command(
        c.CREATE_RELEASE, c.CreateRelease, name="r", components=[{"component": "api", "digest": _digest("a")}]
    )
    dup_release = await caller.command(
        c.CREATE_RELEASE, c.CreateRelease, name="r", components=[{"component": "api", "digest": _digest("b")}]
    )
    assert (dup_release.error.code, dup_release.error.status) == ("RES_DUPLICATE_NAME", 409)

    other = caller.other_tenant()
    hidden = await other.query(c.GET_RELEASE, c.GetRelease, release_id=created.data["id"])
    assert (hidden.error.code, hidden.error.status) == ("REL_RELEASE_NOT_FOUND", 404)
    assert (await other.query(c.LIST_RELEASES, c.ListReleases)).data["items"] == []
    foreign = await other.command(
        c.CREATE_RELEASE, c.CreateRelease, name="r", components=[{"component": "api", "digest": _digest("a")}]
    )
    assert (foreign.error.code, foreign.error.status) == ("REL_UNKNOWN_COMPONENT", 422)
    # The same name is free in another tenant.
    assert (
        await other.command(c.CREATE_COMPONENT, c.CreateComponent, name="api", image_repository="127.0.0.1:1/api")
    ).ok


async def test_component_in_use_cannot_be_deleted(caller: Caller) -> None:
    used = await _component(caller, "api", "127.0.0.1:1/api", versioning_strategy={"resolve": "version-map"})
    unused = await _component(caller, "spare", "127.0.0.1:1/spare")
    await caller.command(
        c.CREATE_RELEASE, c.CreateRelease, name="r", components=[{"component": used["id"], "digest": _digest("a")}]
    )
    refused = await caller.command(c.DELETE_COMPONENT, c.DeleteComponent, component_id=used["id"])
    assert (refused.error.code, refused.error.status) == ("REL_COMPONENT_IN_USE", 409)
    assert (await caller.command(c.DELETE_COMPONENT, c.DeleteComponent, component_id=unused["id"])).ok
    gone = await caller.query(c.GET_COMPONENT, c.GetComponent, component_id=unused["id"])
    assert gone.error.status == 404


async def test_version_map_resolution_for_air_gapped_components(caller: Caller) -> None:
    comp = await _component(caller, "api", "registry.invalid/api", versioning_strategy={"resolve": "version-map"})
    registered = await caller.command(
        c.REGISTER_VERSION, c.RegisterVersion, component_id=comp["id"], tag="2.0.0", digest=_digest("e")
    )
    assert registered.ok and registered.data["semver"] == "2.0.0"
    created = await caller.command(
        c.CREATE_RELEASE, c.CreateRelease, name="r", components=[{"component": "api", "tag": "2.0.0"}]
    )
    assert created.ok, created.error
    assert created.data["components"][0]["digest"] == _digest("e")
    missing = await caller.command(
        c.CREATE_RELEASE, c.CreateRelease, name="r2", components=[{"component": "api", "tag": "3.0.0"}]
    )
    assert missing.error.code == "REL_UNKNOWN_TAG"


async def test_lists_paginate_deterministically(caller: Caller) -> None:
    await _component(caller, "api", "127.0.0.1:1/api", versioning_strategy={"resolve": "version-map"})
    names = [f"r{i:02d}" for i in range(7)]
    for name in names:
        assert (
            await caller.command(
                c.CREATE_RELEASE, c.CreateRelease, name=name, components=[{"component": "api", "digest": _digest("a")}]
            )
        ).ok
    seen: list[str] = []
    token = None
    while True:
        page = await caller.query(c.LIST_RELEASES, c.ListReleases, page={"page_size": 3, "page_token": token})
        seen += [r["name"] for r in page.data["items"]]
        token = page.data["next_page_token"]
        if token is None:
            break
    assert seen == list(reversed(names))
    bad = await caller.query(c.LIST_RELEASES, c.ListReleases, page={"page_size": 3, "page_token": "garbage"})
    assert (bad.error.code, bad.error.status) == ("VAL_PAGE_TOKEN", 400)
    filtered = await caller.query(c.LIST_RELEASES, c.ListReleases, name_prefix="r0")
    assert len(filtered.data["items"]) == 7
    assert (await caller.query(c.LIST_RELEASES, c.ListReleases, status="ready")).data["items"] == []


async def test_events_are_published_for_each_change(caller: Caller, release_app: ReleaseApp, nats) -> None:
    names = release_app.runtime.names
    async with collect_messages(nats.jetstream(), names.subject("stella.evt.release.>")) as events:
        comp = await _component(caller, "api", "127.0.0.1:1/api", versioning_strategy={"resolve": "version-map"})
        await caller.command(
            c.REGISTER_VERSION, c.RegisterVersion, component_id=comp["id"], tag="1", digest=_digest("a")
        )
        await caller.command(
            c.REGISTER_VERSION, c.RegisterVersion, component_id=comp["id"], tag="1", digest=_digest("b")
        )
        created = await caller.command(
            c.CREATE_RELEASE, c.CreateRelease, name="r", components=[{"component": "api", "tag": "1"}]
        )
        await caller.command(c.MARK_RELEASE_READY, c.MarkReleaseReady, release_id=created.data["id"])
        msgs = await events.wait(5, timeout=10)
    assert [names.local(m.subject) for m in msgs] == [
        c.COMPONENT_CREATED,
        c.VERSION_RESOLVED,
        c.VERSION_UPDATED,
        c.RELEASE_CREATED,
        c.RELEASE_READY,
    ]
    updated = c.VersionUpdated.model_validate_json(msgs[2].data)
    assert (updated.previous_digest, updated.version.digest) == (_digest("a"), _digest("b"))
    ready = c.ReleaseReady.model_validate_json(msgs[4].data)
    assert ready.tenant_id == caller.tenant_id and ready.release.components[0].digest == _digest("b")
    await asyncio.sleep(0)


async def test_releases_are_counted_once_each_after_their_event_is_published(
    caller: Caller, release_app: ReleaseApp, nats
) -> None:
    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("stella_releases_total") or 0.0
    await _component(caller, "api", "127.0.0.1:1/api", versioning_strategy={"resolve": "version-map"})
    names = release_app.runtime.names
    async with collect_messages(nats.jetstream(), names.subject(c.RELEASE_CREATED)) as created:
        for name in ("m1", "m2"):
            reply = await caller.command(
                c.CREATE_RELEASE, c.CreateRelease, name=name, components=[{"component": "api", "digest": _digest("a")}]
            )
            assert reply.ok, reply.error
        await created.wait(2, timeout=10)
    # The counter moves right after the relay's publish is acknowledged, a moment after the events arrive.
    for _ in range(100):
        if REGISTRY.get_sample_value("stella_releases_total") == before + 2:
            break
        await asyncio.sleep(0.02)
    assert REGISTRY.get_sample_value("stella_releases_total") == before + 2
    duplicate = await caller.command(
        c.CREATE_RELEASE, c.CreateRelease, name="m1", components=[{"component": "api", "digest": _digest("a")}]
    )
    assert not duplicate.ok
    assert REGISTRY.get_sample_value("stella_releases_total") == before + 2


class CapturingRegistry:
    """An HTTP server that plays a registry an attacker controls: it asks for Basic auth and keeps what it gets."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []
        self.requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def everything(request: web.Request) -> web.Response:
            self.requests += 1
            if "Authorization" in request.headers:
                self.authorizations.append(request.headers["Authorization"])
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="loot"'})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", everything)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def loot() -> AsyncIterator[CapturingRegistry]:
    registry = CapturingRegistry()
    await registry.start()
    try:
        yield registry
    finally:
        await registry.stop()


HOST_SECRETS = ["env:STELLA_DATABASE_URL", "env:PATH", "env:HOME", "file:/etc/passwd", "file:/proc/self/environ"]


@pytest.mark.parametrize("credential_refs", [["env:STELLA_TEST_ALLOWED_ONLY"]], indirect=True)
async def test_no_reference_makes_the_service_read_the_hosts_environment_or_files(
    caller: Caller, release_app: ReleaseApp, loot: CapturingRegistry, monkeypatch
) -> None:
    monkeypatch.setenv("STELLA_DATABASE_URL", "postgresql://user:db-password@db/stella")
    repository = f"127.0.0.1:{loot.port}/team/app"
    for index, ref in enumerate([*HOST_SECRETS, "env:STELLA_TEST_ALLOWED_ONLY"]):
        refused = await caller.command(
            c.CREATE_COMPONENT,
            c.CreateComponent,
            name=f"c{index}",
            image_repository=repository,
            registry_credential_ref=ref,
        )
        assert (refused.error.code, refused.error.status) == ("REL_REGISTRY_CREDENTIAL_REF_DEPRECATED", 422), ref
        assert "No such file" not in refused.error.detail
    component = await _component(caller, "plain", repository)
    for ref in HOST_SECRETS:
        refused = await caller.command(
            c.UPDATE_COMPONENT, c.UpdateComponent, component_id=component["id"], registry_credential_ref=ref
        )
        assert refused.error.code == "REL_REGISTRY_CREDENTIAL_REF_DEPRECATED", ref

    # A reference stored before the allow-list existed is refused when it would be read, and nothing is sent.
    async with release_app.runtime.pool.acquire() as conn:
        for ref in HOST_SECRETS:
            await conn.execute(
                "UPDATE components SET registry_credential_ref = $1 WHERE id = $2", ref, uuid.UUID(component["id"])
            )
            sync = await caller.command(c.SYNC_VERSIONS, c.SyncVersions, component_id=component["id"])
            assert sync.error.code == "REL_CREDENTIAL_REF_NOT_ALLOWED", ref
            release = await caller.command(
                c.CREATE_RELEASE,
                c.CreateRelease,
                name=f"r-{uuid.uuid4().hex[:8]}",
                components=[{"component": "plain", "tag": "1.0.0"}],
            )
            assert release.error.code == "REL_CREDENTIAL_REF_NOT_ALLOWED", ref
    assert loot.authorizations == []
    assert loot.requests == 0
