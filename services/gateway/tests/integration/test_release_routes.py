"""Component, version and release routes: what the gateway sends on NATS and how it maps the replies.

A stand-in answers the release subjects on the real NATS server; the full service is covered end to end.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from stella.contracts import release as rel
from stella.contracts.envelope import ErrorDetail, Reply
from stella.contracts.streams import HEADER_MSG_ID

from . import views
from .conftest import Gateway, StandIn, Tenant, assert_problem

COMPONENT = {"name": "web", "image_repository": "registry.test/team/web"}


def _envelope(received: dict[str, Any], tenant: Tenant, trace_id: str) -> None:
    assert received["tenant_id"] == str(tenant.id)
    assert received["correlation_id"] == trace_id


async def test_create_component_sends_the_command_as_the_caller_and_answers_201(
    gateway: Gateway, release_service: StandIn
) -> None:
    tenant = await gateway.tenant()
    view = views.component("web", image_repository="registry.test/team/web")
    release_service.answer(rel.CREATE_COMPONENT, view)
    response = await gateway.call(
        "POST", "/api/v1/components", tenant.token, json={**COMPONENT, "default_channel": "edge"}
    )
    assert response.status_code == 201, response.text
    assert response.json() == view
    assert response.headers["location"] == f"/api/v1/components/{view['id']}"
    sent = release_service.last(rel.CREATE_COMPONENT)
    _envelope(sent.payload, tenant, response.headers["x-trace-id"])
    assert sent.payload["actor_id"] == str(tenant.admin_id)
    assert (sent.payload["name"], sent.payload["image_repository"], sent.payload["default_channel"]) == (
        "web",
        "registry.test/team/web",
        "edge",
    )
    # Without an Idempotency-Key the command id is random, and it is the JetStream de-duplication id.
    assert sent.headers[HEADER_MSG_ID] == sent.payload["message_id"]
    assert uuid.UUID(sent.payload["message_id"]).version == 4


async def test_the_request_id_becomes_the_correlation_id(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    release_service.answer(rel.GET_COMPONENT, views.component())
    request_id = str(uuid.uuid4())
    response = await gateway.call(
        "GET", f"/api/v1/components/{uuid.uuid4()}", tenant.token, headers={"X-Request-Id": request_id}
    )
    assert response.status_code == 200
    assert response.headers["x-trace-id"] == request_id
    assert release_service.last(rel.GET_COMPONENT).payload["correlation_id"] == request_id


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({**COMPONENT, "name": "Web App"}, ["body", "name"]),
        ({**COMPONENT, "image_repository": "registry.test/Team/Web"}, ["body", "image_repository"]),
        ({**COMPONENT, "registry_credential_ref": "hunter2"}, ["body", "registry_credential_ref"]),
        ({**COMPONENT, "default_channel": "Not A Channel"}, ["body", "default_channel"]),
        ({**COMPONENT, "tenant_id": str(uuid.uuid4())}, ["body", "tenant_id"]),
        ({"name": "web"}, ["body", "image_repository"]),
    ],
)
async def test_malformed_components_are_400_before_anything_is_sent(
    gateway: Gateway, release_service: StandIn, body: dict[str, Any], loc: list[Any]
) -> None:
    tenant = await gateway.tenant()
    problem = assert_problem(
        await gateway.call("POST", "/api/v1/components", tenant.token, json=body), 400, "VAL_INVALID_REQUEST"
    )
    assert loc in [error["loc"] for error in problem["errors"]], problem
    assert release_service.received == []


async def test_list_components_passes_paging_and_filters_through(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    items = [views.component("api"), views.component("web")]
    release_service.answer(rel.LIST_COMPONENTS, views.page(items, "next-cursor"))
    response = await gateway.call("GET", "/api/v1/components?page_size=2&page_token=abc&name_prefix=a", tenant.token)
    assert response.status_code == 200, response.text
    assert response.json() == {"items": items, "next_page_token": "next-cursor"}
    sent = release_service.last(rel.LIST_COMPONENTS).payload
    assert sent["page"] == {"page_size": 2, "page_token": "abc"}
    assert sent["name_prefix"] == "a"
    first = await gateway.call("GET", "/api/v1/components", tenant.token)
    assert first.status_code == 200
    assert release_service.last(rel.LIST_COMPONENTS).payload["page"] == {"page_size": 50, "page_token": None}


async def test_bad_paging_of_a_service_list_is_400_without_asking_it(
    gateway: Gateway, release_service: StandIn
) -> None:
    tenant = await gateway.tenant()
    for query in ("page_size=0", "page_size=501", "page_size=x"):
        for path in ("/api/v1/components", "/api/v1/releases", f"/api/v1/components/{uuid.uuid4()}/versions"):
            response = await gateway.call("GET", f"{path}?{query}", tenant.token)
            problem = assert_problem(response, 400, "VAL_INVALID_REQUEST")
            assert problem["errors"][0]["loc"] == ["query", "page_size"]
    assert release_service.received == []


async def test_service_errors_keep_their_status_and_code(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    missing = ErrorDetail(code="RES_NOT_FOUND", status=404, title="Resource not found", detail="no component x")
    release_service.answer(rel.GET_COMPONENT, error=missing)
    body = assert_problem(
        await gateway.call("GET", f"/api/v1/components/{uuid.uuid4()}", tenant.token), 404, "RES_NOT_FOUND"
    )
    assert body["detail"] == "no component x"

    in_use = ErrorDetail(code="REL_COMPONENT_IN_USE", status=409, title="Component in use", detail="used by r1")
    release_service.answer(rel.DELETE_COMPONENT, error=in_use)
    body = assert_problem(
        await gateway.call("DELETE", f"/api/v1/components/{uuid.uuid4()}", tenant.token), 409, "REL_COMPONENT_IN_USE"
    )
    assert body["title"] == "Component in use"

    unknown_tag = ErrorDetail(
        code="REL_UNKNOWN_TAG",
        status=422,
        title="Unknown tag",
        detail="web has no tag 9.9",
        errors=[{"loc": ["components", 0, "tag"], "msg": "unknown"}],
    )
    release_service.answer(rel.CREATE_RELEASE, error=unknown_tag)
    response = await gateway.call(
        "POST",
        "/api/v1/releases",
        tenant.token,
        json={"name": "r1", "components": [{"component": "web", "tag": "9.9"}]},
    )
    body = assert_problem(response, 422, "REL_UNKNOWN_TAG")
    assert body["errors"] == [{"loc": ["components", 0, "tag"], "msg": "unknown"}]


async def test_a_service_fault_is_500_without_its_internals(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    fault = ErrorDetail(code="SYS_COMMAND_FAILED", status=500, title="failed", detail="KeyError: 'db_password'")
    release_service.answer(rel.SYNC_VERSIONS, error=fault)
    response = await gateway.call("POST", f"/api/v1/components/{uuid.uuid4()}/sync-versions", tenant.token)
    assert_problem(response, 500, "SYS_COMMAND_FAILED")
    assert "db_password" not in response.text


async def test_a_reply_of_the_wrong_shape_is_502(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    release_service.answer(rel.GET_RELEASE, {"unexpected": True})
    assert_problem(await gateway.call("GET", f"/api/v1/releases/{uuid.uuid4()}", tenant.token), 502, "SYS_BAD_GATEWAY")


async def test_reads_without_a_release_service_are_503(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call("GET", "/api/v1/components", tenant.token)
    assert_problem(response, 503, "SYS_UNAVAILABLE")
    assert response.headers["retry-after"] == "1"


async def test_update_component_sends_only_what_changed(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    component_id = str(uuid.uuid4())
    release_service.answer(rel.UPDATE_COMPONENT, views.component(id=component_id, display_name="Web"))
    response = await gateway.call(
        "PUT", f"/api/v1/components/{component_id}", tenant.token, json={"display_name": "Web"}
    )
    assert response.status_code == 200, response.text
    sent = release_service.last(rel.UPDATE_COMPONENT).payload
    assert sent["component_id"] == component_id
    assert sent["display_name"] == "Web"
    assert sent["image_repository"] is None
    assert sent["clear_registry_credential_ref"] is False

    cleared = await gateway.call(
        "PUT", f"/api/v1/components/{component_id}", tenant.token, json={"registry_credential_ref": None}
    )
    assert cleared.status_code == 200
    assert release_service.last(rel.UPDATE_COMPONENT).payload["clear_registry_credential_ref"] is True


async def test_delete_component_is_204(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    component_id = str(uuid.uuid4())
    release_service.answer(rel.DELETE_COMPONENT, {"id": component_id, "deleted": True})
    response = await gateway.call("DELETE", f"/api/v1/components/{component_id}", tenant.token)
    assert response.status_code == 204
    assert response.content == b""
    assert release_service.last(rel.DELETE_COMPONENT).payload["component_id"] == component_id


async def test_versions_register_list_and_sync(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    component_id = str(uuid.uuid4())
    entry = views.version(component_id, "1.2.0")
    release_service.answer(rel.REGISTER_VERSION, entry)
    created = await gateway.call(
        "POST",
        f"/api/v1/components/{component_id}/versions",
        tenant.token,
        json={"tag": "1.2.0", "digest": views.DIGEST, "semver": "1.2.0"},
    )
    assert created.status_code == 201, created.text
    assert created.json() == entry
    assert created.headers["location"] == f"/api/v1/components/{component_id}/versions"
    sent = release_service.last(rel.REGISTER_VERSION).payload
    assert (sent["component_id"], sent["tag"], sent["digest"], sent["channel"]) == (
        component_id,
        "1.2.0",
        views.DIGEST,
        None,
    )

    release_service.answer(rel.LIST_VERSIONS, views.page([entry]))
    listed = await gateway.call("GET", f"/api/v1/components/{component_id}/versions?channel=beta", tenant.token)
    assert listed.json()["items"] == [entry]
    assert release_service.last(rel.LIST_VERSIONS).payload["channel"] == "beta"

    result = {"component_id": component_id, "tags_seen": 3, "resolved": 2, "updated": 1, "unchanged": 0}
    release_service.answer(rel.SYNC_VERSIONS, result)
    synced = await gateway.call("POST", f"/api/v1/components/{component_id}/sync-versions", tenant.token)
    assert synced.status_code == 200
    assert synced.json() == result


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"tag": "1.0.0", "digest": "sha256:abc"}, ["body", "digest"]),
        ({"tag": "1.0.0", "digest": "md5:" + "a" * 32}, ["body", "digest"]),
        ({"tag": "-bad", "digest": views.DIGEST}, ["body", "tag"]),
        ({"tag": "1.0.0", "digest": views.DIGEST, "semver": "one"}, ["body", "semver"]),
    ],
)
async def test_malformed_versions_are_400(
    gateway: Gateway, release_service: StandIn, body: dict[str, Any], loc: list[Any]
) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call("POST", f"/api/v1/components/{uuid.uuid4()}/versions", tenant.token, json=body)
    problem = assert_problem(response, 400, "VAL_INVALID_REQUEST")
    assert loc in [error["loc"] for error in problem["errors"]], problem
    assert release_service.received == []


async def test_release_lifecycle_routes(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    draft = views.release("r1")
    release_service.answer(rel.CREATE_RELEASE, draft)
    created = await gateway.call(
        "POST",
        "/api/v1/releases",
        tenant.token,
        json={
            "name": "r1",
            "components": [{"component": "web", "tag": "1.0.0"}, {"component": "api", "digest": views.DIGEST}],
            "source_ref": {"commit": "abc123"},
        },
    )
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/api/v1/releases/{draft['id']}"
    sent = release_service.last(rel.CREATE_RELEASE).payload
    assert sent["components"] == [
        {"component": "web", "tag": "1.0.0", "digest": None},
        {"component": "api", "tag": None, "digest": views.DIGEST},
    ]
    assert sent["source_ref"] == {"commit": "abc123"}

    release_service.answer(rel.GET_RELEASE, draft)
    assert (await gateway.call("GET", created.headers["location"], tenant.token)).json() == draft

    release_service.answer(rel.UPDATE_RELEASE, {**draft, "display_name": "Release one"})
    updated = await gateway.call("PUT", created.headers["location"], tenant.token, json={"display_name": "Release one"})
    assert updated.json()["display_name"] == "Release one"
    assert release_service.last(rel.UPDATE_RELEASE).payload["components"] is None

    release_service.answer(rel.MARK_RELEASE_READY, {**draft, "status": "ready"})
    ready = await gateway.call("POST", f"{created.headers['location']}/ready", tenant.token)
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    assert release_service.last(rel.MARK_RELEASE_READY).payload["release_id"] == draft["id"]

    release_service.answer(rel.DEPRECATE_RELEASE, {**draft, "status": "deprecated"})
    with_reason = await gateway.call(
        "POST", f"{created.headers['location']}/deprecate", tenant.token, json={"reason": "CVE-2026-1"}
    )
    assert with_reason.status_code == 200, with_reason.text
    assert release_service.last(rel.DEPRECATE_RELEASE).payload["reason"] == "CVE-2026-1"
    without = await gateway.call("POST", f"{created.headers['location']}/deprecate", tenant.token)
    assert without.status_code == 200, without.text
    assert release_service.last(rel.DEPRECATE_RELEASE).payload["reason"] is None


async def test_list_releases_passes_filters_through(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    release_service.answer(rel.LIST_RELEASES, views.page([views.release("r2", "ready")]))
    component_id = str(uuid.uuid4())
    response = await gateway.call(
        "GET",
        f"/api/v1/releases?status=ready&name_prefix=r&component_id={component_id}&page_size=10",
        tenant.token,
    )
    assert response.status_code == 200, response.text
    sent = release_service.last(rel.LIST_RELEASES).payload
    assert (sent["status"], sent["name_prefix"], sent["component_id"], sent["page"]["page_size"]) == (
        "ready",
        "r",
        component_id,
        10,
    )
    bad = await gateway.call("GET", "/api/v1/releases?status=shipped", tenant.token)
    assert assert_problem(bad, 400, "VAL_INVALID_REQUEST")["errors"][0]["loc"] == ["query", "status"]
    bad_id = await gateway.call("GET", "/api/v1/releases?component_id=nope", tenant.token)
    assert_problem(bad_id, 400, "VAL_INVALID_REQUEST")


@pytest.mark.parametrize(
    ("components", "loc"),
    [
        ([{"component": "web", "tag": "bad tag"}], ["body", "components", 0, "tag"]),
        ([{"component": "web", "digest": "sha256:short"}], ["body", "components", 0, "digest"]),
        ([{"component": "web"}], ["body", "components", 0]),
        ([{"component": "web", "tag": "1", "digest": views.DIGEST}], ["body", "components", 0]),
        ([{"component": "web", "tag": "1"}, {"component": "web", "tag": "2"}], ["body", "components"]),
        ([], ["body", "components"]),
    ],
)
async def test_malformed_releases_are_400(
    gateway: Gateway, release_service: StandIn, components: list[dict[str, Any]], loc: list[Any]
) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call(
        "POST", "/api/v1/releases", tenant.token, json={"name": "r1", "components": components}
    )
    problem = assert_problem(response, 400, "VAL_INVALID_REQUEST")
    assert loc in [error["loc"] for error in problem["errors"]], problem
    assert release_service.received == []


async def test_malformed_path_ids_are_400_on_every_route(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    for method, path, body in [
        ("GET", "/api/v1/components/x1", None),
        ("PUT", "/api/v1/components/x1", {"display_name": "X"}),
        ("DELETE", "/api/v1/components/x1", None),
        ("GET", "/api/v1/components/x1/versions", None),
        ("POST", "/api/v1/components/x1/versions", {"tag": "1", "digest": views.DIGEST}),
        ("POST", "/api/v1/components/x1/sync-versions", None),
        ("GET", "/api/v1/releases/x1", None),
        ("PUT", "/api/v1/releases/x1", {"display_name": "X"}),
        ("POST", "/api/v1/releases/x1/ready", None),
        ("POST", "/api/v1/releases/x1/deprecate", None),
    ]:
        response = await gateway.call(method, path, tenant.token, json=body)
        assert_problem(response, 400, "VAL_INVALID_ID")
    assert release_service.received == []


async def test_another_tenants_component_is_404(gateway: Gateway, release_service: StandIn) -> None:
    owner, stranger = await gateway.tenant("owner"), await gateway.tenant("stranger")
    view = views.component()

    def scoped(payload: dict[str, Any]) -> Reply:
        # Plays the service's tenant filter: the component exists only for its owner.
        if payload["tenant_id"] == str(owner.id) and payload["component_id"] == view["id"]:
            return Reply.success(view)
        return Reply.failure(ErrorDetail(code="RES_NOT_FOUND", status=404, title="Resource not found"))

    release_service.on(rel.GET_COMPONENT, scoped)
    assert (await gateway.call("GET", f"/api/v1/components/{view['id']}", owner.token)).status_code == 200
    assert_problem(await gateway.call("GET", f"/api/v1/components/{view['id']}", stranger.token), 404, "RES_NOT_FOUND")


async def test_roles_decide_who_may_change_components(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vic", ["viewer"])
    developer = await gateway.principal_token(tenant, "dev", ["developer"])
    approver = await gateway.principal_token(tenant, "amy", ["approver"])
    release_service.answer(rel.CREATE_COMPONENT, views.component())
    release_service.answer(rel.LIST_COMPONENTS, views.page([]))
    assert (await gateway.call("GET", "/api/v1/components", viewer.token)).status_code == 200
    assert (await gateway.call("POST", "/api/v1/components", developer.token, json=COMPONENT)).status_code == 201
    assert release_service.last(rel.CREATE_COMPONENT).payload["actor_id"] == str(developer.principal_id)
    for token in (viewer.token, approver.token):
        assert_problem(await gateway.call("POST", "/api/v1/components", token, json=COMPONENT), 403, "PERM_DENIED")
        assert_problem(await gateway.call("POST", f"/api/v1/releases/{uuid.uuid4()}/ready", token), 403, "PERM_DENIED")


@pytest.mark.parametrize("ref", ["env:STELLA_DATABASE_URL", "file:/etc/passwd", None])
async def test_naming_a_credential_reference_needs_credential_update(
    gateway: Gateway, release_service: StandIn, ref: str | None
) -> None:
    tenant = await gateway.tenant()
    developer = await gateway.principal_token(tenant, "dev", ["developer", "operator"])
    body = {**COMPONENT, "registry_credential_ref": ref}
    refused = await gateway.call("POST", "/api/v1/components", developer.token, json=body)
    assert assert_problem(refused, 403, "PERM_DENIED")["required_permission"] == "credential:update"
    update = await gateway.call(
        "PUT", f"/api/v1/components/{uuid.uuid4()}", developer.token, json={"registry_credential_ref": ref}
    )
    assert_problem(update, 403, "PERM_DENIED")
    assert release_service.received == []
    # Without the field the developer creates components as before; a tenant admin may name a reference.
    release_service.answer(rel.CREATE_COMPONENT, views.component("web"))
    assert (await gateway.call("POST", "/api/v1/components", developer.token, json=COMPONENT)).status_code == 201
    assert (await gateway.call("POST", "/api/v1/components", tenant.token, json=body)).status_code == 201
