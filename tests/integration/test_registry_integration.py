"""The release service reads a private registry through a `registry` integration of the integration service:
the credential lives only encrypted in the integration service's secret store and reaches the release service
over NATS, on request, for the integration's own registry host and the owning tenant only."""

from __future__ import annotations

import uuid

from stella.contracts import integration as i
from stella.contracts import release as r
from stella.integration.app import IntegrationApp
from stella.release.app import ReleaseApp
from stella.testing.registry import LocalRegistry, push_image
from stella.testing.services import TenantCaller


async def _registry_integration(caller: TenantCaller, url: str, secret: str, value: str) -> str:
    stored = await caller.query(i.STORE_SECRET, i.StoreSecret, name=secret, value=value)
    assert stored.ok, stored.error
    created = await caller.command(
        i.CREATE_INTEGRATION,
        i.CreateIntegration,
        name=f"reg-{secret}",
        type_id="registry",
        config={"url": url},
        credential_ref=f"secret:{secret}",
    )
    assert created.ok, created.error
    return str(created.data["id"])


async def test_a_basic_auth_registry_is_synced_through_a_registry_integration(
    caller: TenantCaller,
    services: tuple[IntegrationApp, ReleaseApp],
    oci_registry_with_auth: LocalRegistry,
    unique_id: str,
) -> None:
    integration, _ = services
    registry = oci_registry_with_auth
    assert registry.credentials is not None
    user, password = registry.credentials
    repo = f"{unique_id}/private"
    digest = push_image(registry.url, repo, "3.1.0", auth=registry.credentials)
    good = await _registry_integration(caller, registry.url, "login", f"{user}:{password}")

    component = await caller.command(
        r.CREATE_COMPONENT,
        r.CreateComponent,
        name="private",
        image_repository=f"{registry.address}/{repo}",
        registry_integration_id=good,
    )
    assert component.ok, component.error
    assert component.data["registry_integration_id"] == good
    sync = await caller.command(r.SYNC_VERSIONS, r.SyncVersions, component_id=component.data["id"])
    assert sync.ok, sync.error
    assert (sync.data["tags_seen"], sync.data["resolved"]) == (1, 1)
    versions = await caller.query(r.LIST_VERSIONS, r.ListVersions, component_id=component.data["id"])
    assert [(v["tag"], v["digest"]) for v in versions.data["items"]] == [("3.1.0", digest)]
    release = await caller.command(
        r.CREATE_RELEASE, r.CreateRelease, name="rel", components=[{"component": "private", "tag": "3.1.0"}]
    )
    assert release.ok, release.error
    assert release.data["components"][0]["digest"] == digest

    # The password is stored only encrypted.
    async with integration.runtime.pool.acquire() as conn:
        ciphertext = bytes(await conn.fetchval("SELECT ciphertext FROM secrets WHERE name = 'login'"))
        rows = await conn.fetchval("SELECT string_agg(t::text, ' ') FROM secrets t")
    assert password.encode() not in ciphertext and password not in rows

    # A wrong password: the sync says the registry refused, and so do the connection test and the health.
    bad = await _registry_integration(caller, registry.url, "wrong", f"{user}:wrong-{password}")
    moved = await caller.command(
        r.UPDATE_COMPONENT, r.UpdateComponent, component_id=component.data["id"], registry_integration_id=bad
    )
    assert moved.ok, moved.error
    refused = await caller.command(r.SYNC_VERSIONS, r.SyncVersions, component_id=component.data["id"])
    assert (refused.error.code, refused.error.status) == ("REL_REGISTRY_AUTH_FAILED", 422)
    assert password not in refused.model_dump_json()
    tested = await caller.command(i.TEST_INTEGRATION, i.TestIntegration, integration_id=bad)
    assert tested.data["health_status"] == "unhealthy"
    assert "refused the credentials" in tested.data["detail"]
    health = await caller.query(i.GET_INTEGRATION, i.GetIntegration, integration_id=bad)
    assert health.data["health_status"] == "unhealthy"


async def test_another_tenants_or_another_hosts_integration_cannot_be_used(
    caller: TenantCaller, services: tuple[IntegrationApp, ReleaseApp]
) -> None:
    _, release = services
    theirs = await _registry_integration(caller, "http://127.0.0.1:5999", "login", "alice:pw")
    other = caller.other_tenant()
    before = await _count_components(release)
    borrowed = await other.command(
        r.CREATE_COMPONENT,
        r.CreateComponent,
        name="api",
        image_repository="127.0.0.1:5999/team/api",
        registry_integration_id=theirs,
    )
    assert (borrowed.error.code, borrowed.error.status) == ("REL_REGISTRY_INTEGRATION_NOT_FOUND", 422)
    elsewhere = await caller.command(
        r.CREATE_COMPONENT,
        r.CreateComponent,
        name="api",
        image_repository="127.0.0.1:6000/team/api",
        registry_integration_id=theirs,
    )
    assert (elsewhere.error.code, elsewhere.error.status) == ("REL_REGISTRY_INTEGRATION_UNUSABLE", 422)
    assert "pw" not in elsewhere.model_dump_json()
    assert await _count_components(release) == before


async def _count_components(app: ReleaseApp) -> int:
    async with app.runtime.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM components"))


async def test_naming_an_integration_moves_a_component_off_its_deprecated_credential_reference(
    caller: TenantCaller, services: tuple[IntegrationApp, ReleaseApp]
) -> None:
    _, release = services
    component = await caller.command(
        r.CREATE_COMPONENT, r.CreateComponent, name="legacy", image_repository="127.0.0.1:5999/team/api"
    )
    assert component.ok, component.error
    async with release.runtime.pool.acquire() as conn:
        await conn.execute(
            "UPDATE components SET registry_credential_ref = 'env:LEGACY_AUTH' WHERE id = $1",
            uuid.UUID(component.data["id"]),
        )
    integration = await _registry_integration(caller, "http://127.0.0.1:5999", "login", "alice:pw")
    moved = await caller.command(
        r.UPDATE_COMPONENT, r.UpdateComponent, component_id=component.data["id"], registry_integration_id=integration
    )
    assert moved.ok, moved.error
    assert (moved.data["registry_integration_id"], moved.data["registry_credential_ref"]) == (integration, None)


async def test_the_deployment_services_batched_lookup_is_scoped_to_the_tenant_and_the_release_names_the_integration(
    caller: TenantCaller, services: tuple[IntegrationApp, ReleaseApp]
) -> None:
    ours = await _registry_integration(caller, "http://127.0.0.1:5999", "login", "alice:pw-batch-0123")
    unknown = uuid.uuid4()
    found = await caller.query(
        i.GET_REGISTRY_CONNECTIONS, i.GetRegistryConnections, integration_ids=[ours, str(unknown), ours]
    )
    assert found.ok, found.error
    answer = i.RegistryConnections.model_validate(found.data)
    assert [(str(c.integration_id), c.url, c.username) for c in answer.connections] == [
        (ours, "http://127.0.0.1:5999", "alice")
    ]
    assert answer.connections[0].password is not None
    assert answer.connections[0].password.get_secret_value() == "pw-batch-0123"
    assert answer.missing == [unknown]

    theirs = await caller.other_tenant().query(
        i.GET_REGISTRY_CONNECTIONS, i.GetRegistryConnections, integration_ids=[ours]
    )
    assert theirs.ok, theirs.error
    assert theirs.data["connections"] == [] and theirs.data["missing"] == [ours]

    component = await caller.command(
        r.CREATE_COMPONENT,
        r.CreateComponent,
        name="api",
        image_repository="127.0.0.1:5999/team/api",
        registry_integration_id=ours,
    )
    assert component.ok, component.error
    digest = "sha256:" + "ab" * 32
    made = await caller.command(
        r.CREATE_RELEASE, r.CreateRelease, name="rel-1", components=[{"component": "api", "digest": digest}]
    )
    assert made.ok, made.error
    assert made.data["components"][0]["registry_integration_id"] == ours
