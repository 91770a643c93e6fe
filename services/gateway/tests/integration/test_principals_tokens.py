"""Principals and tokens: create, read, list by pages, delete; always inside the caller's tenant."""

from __future__ import annotations

import uuid

import pytest

from .conftest import Gateway, assert_problem


async def test_principal_lifecycle(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    created = await gateway.call(
        "POST",
        "/api/v1/principals",
        tenant.token,
        json={
            "name": "deploy-bot",
            "kind": "service",
            "display_name": "Deploy bot",
            "roles": ["operator", "viewer"],
            "groups": ["platform", "oncall"],
        },
    )
    assert created.status_code == 201, created.text
    principal = created.json()
    assert created.headers["location"] == f"/api/v1/principals/{principal['id']}"
    assert principal["kind"] == "service"
    assert principal["roles"] == ["operator", "viewer"]
    assert principal["groups"] == ["oncall", "platform"]
    assert principal["created_by"] == str(tenant.admin_id)

    read = await gateway.call("GET", created.headers["location"], tenant.token)
    assert read.json() == principal

    duplicate = await gateway.call("POST", "/api/v1/principals", tenant.token, json={"name": "deploy-bot"})
    assert_problem(duplicate, 409, "RES_ALREADY_EXISTS")

    assert (await gateway.call("DELETE", created.headers["location"], tenant.token)).status_code == 204
    assert_problem(await gateway.call("GET", created.headers["location"], tenant.token), 404, "RES_NOT_FOUND")
    assert_problem(await gateway.call("DELETE", created.headers["location"], tenant.token), 404, "RES_NOT_FOUND")
    # The name is free again once its principal is gone; the new principal has none of the old one's groups.
    again = await gateway.call("POST", "/api/v1/principals", tenant.token, json={"name": "deploy-bot"})
    assert again.status_code == 201
    assert (again.json()["roles"], again.json()["groups"]) == ([], [])


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"name": "Not Valid"}, ["body", "name"]),
        ({"name": "ok", "kind": "robot"}, ["body", "kind"]),
        ({"name": "ok", "roles": ["root"]}, ["body", "roles", 0]),
        ({"name": "ok", "roles": ["viewer", "viewer"]}, ["body", "roles"]),
        ({"name": "ok", "tenant_id": str(uuid.uuid4())}, ["body", "tenant_id"]),
        ({}, ["body", "name"]),
        ({"name": "ok", "groups": ["Release Managers"]}, ["body", "groups", 0]),
        ({"name": "ok", "groups": ["ops", "ops"]}, ["body", "groups"]),
        ({"name": "ok", "groups": [f"g{n}" for n in range(51)]}, ["body", "groups"]),
        ({"name": "ok", "groups": "ops"}, ["body", "groups"]),
    ],
)
async def test_invalid_principals_are_400_with_field_errors(gateway: Gateway, body: dict, loc: list) -> None:
    tenant = await gateway.tenant()
    problem = assert_problem(
        await gateway.call("POST", "/api/v1/principals", tenant.token, json=body), 400, "VAL_INVALID_REQUEST"
    )
    assert loc in [error["loc"] for error in problem["errors"]], problem


async def test_update_replaces_roles_and_groups_and_applies_to_existing_tokens(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    dev = await gateway.principal_token(tenant, "dev", ["developer"], groups=["web"])
    path = f"/api/v1/principals/{dev.principal_id}"
    assert (await gateway.call("GET", "/api/v1/releases", dev.token)).status_code != 403

    only_groups = await gateway.call("PUT", path, tenant.token, json={"groups": ["web", "release-managers"]})
    assert only_groups.status_code == 200, only_groups.text
    assert (only_groups.json()["roles"], only_groups.json()["groups"]) == (["developer"], ["release-managers", "web"])

    only_roles = await gateway.call("PUT", path, tenant.token, json={"roles": ["approver", "viewer"]})
    assert only_roles.status_code == 200, only_roles.text
    assert (only_roles.json()["roles"], only_roles.json()["groups"]) == (
        ["approver", "viewer"],
        ["release-managers", "web"],
    )
    # The principal's token lost release:create at once on this gateway (its cached lookup was dropped).
    refused = await gateway.call("POST", "/api/v1/releases", dev.token, json={"name": "r1", "components": []})
    assert assert_problem(refused, 403, "PERM_DENIED")["required_permission"] == "release:create"

    both = await gateway.call("PUT", path, tenant.token, json={"roles": [], "groups": []})
    assert (both.json()["roles"], both.json()["groups"]) == ([], [])
    read = await gateway.call("GET", path, tenant.token)
    assert read.json() == both.json()
    assert read.json()["name"] == "dev" and read.json()["created_by"] == str(tenant.admin_id)
    listed = (await gateway.call("GET", "/api/v1/principals", tenant.token)).json()["items"]
    assert [p["groups"] for p in listed if p["name"] == "dev"] == [[]]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body"]),
        ({"roles": None, "groups": None}, ["body"]),
        ({"roles": ["root"]}, ["body", "roles", 0]),
        ({"groups": ["-ops"]}, ["body", "groups", 0]),
        ({"groups": ["ops", "ops"]}, ["body", "groups"]),
        ({"groups": [f"g{n}" for n in range(51)]}, ["body", "groups"]),
        ({"groups": ["ops"], "name": "renamed"}, ["body", "name"]),
    ],
)
async def test_invalid_updates_are_400_and_change_nothing(gateway: Gateway, body: dict, loc: list) -> None:
    tenant = await gateway.tenant()
    dev = await gateway.principal_token(tenant, "dev", ["developer"], groups=["web"])
    path = f"/api/v1/principals/{dev.principal_id}"
    problem = assert_problem(await gateway.call("PUT", path, tenant.token, json=body), 400, "VAL_INVALID_REQUEST")
    assert any(error["loc"][: len(loc)] == loc for error in problem["errors"]), problem
    read = (await gateway.call("GET", path, tenant.token)).json()
    assert (read["roles"], read["groups"]) == (["developer"], ["web"])


async def test_only_tenant_admins_update_principals_and_only_their_own_tenants(gateway: Gateway) -> None:
    mine, theirs = await gateway.tenant("mine"), await gateway.tenant("theirs")
    operator = await gateway.principal_token(mine, "ops", ["operator"])
    other = await gateway.principal_token(theirs, "bob", ["viewer"])
    denied = await gateway.call(
        "PUT", f"/api/v1/principals/{operator.principal_id}", operator.token, json={"roles": ["tenant-admin"]}
    )
    assert assert_problem(denied, 403, "PERM_DENIED")["required_permission"] == "principal:update"
    for target in (other.principal_id, uuid.uuid4()):
        missing = await gateway.call("PUT", f"/api/v1/principals/{target}", mine.token, json={"groups": ["x"]})
        assert_problem(missing, 404, "RES_NOT_FOUND")
    assert (await gateway.call("GET", f"/api/v1/principals/{other.principal_id}", theirs.token)).json()["groups"] == []
    assert_problem(
        await gateway.call("PUT", "/api/v1/principals/x1", mine.token, json={"groups": []}), 400, "VAL_INVALID_ID"
    )


async def test_the_last_tenant_admin_keeps_the_role(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    path = f"/api/v1/principals/{tenant.admin_id}"
    refused = await gateway.call("PUT", path, tenant.token, json={"roles": ["operator"]})
    assert_problem(refused, 409, "RES_LAST_TENANT_ADMIN")
    # Groups, and roles that keep tenant-admin, may still change.
    kept = await gateway.call("PUT", path, tenant.token, json={"roles": ["tenant-admin", "approver"], "groups": ["a"]})
    assert kept.status_code == 200, kept.text
    assert (kept.json()["roles"], kept.json()["groups"]) == (["approver", "tenant-admin"], ["a"])
    second = await gateway.principal_token(tenant, "second-admin", ["tenant-admin"])
    handed_over = await gateway.call("PUT", path, second.token, json={"roles": ["viewer"]})
    assert (handed_over.status_code, handed_over.json()["roles"]) == (200, ["viewer"])
    # The former admin's token lost its permissions at once.
    assert_problem(await gateway.call("GET", "/api/v1/principals", tenant.token), 403, "PERM_DENIED")


async def test_the_last_tenant_admin_cannot_be_deleted(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    refused = await gateway.call("DELETE", f"/api/v1/principals/{tenant.admin_id}", tenant.token)
    assert_problem(refused, 409, "RES_LAST_TENANT_ADMIN")
    second = await gateway.principal_token(tenant, "second-admin", ["tenant-admin"])
    removed = await gateway.call("DELETE", f"/api/v1/principals/{tenant.admin_id}", second.token)
    assert removed.status_code == 204
    assert_problem(
        await gateway.call("DELETE", f"/api/v1/principals/{second.principal_id}", second.token),
        409,
        "RES_LAST_TENANT_ADMIN",
    )


async def test_token_lifecycle_shows_the_value_once(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    issued = await gateway.principal_token(tenant, "ci", ["developer"])
    created = await gateway.call(
        "POST", "/api/v1/tokens", tenant.token, json={"principal_id": str(issued.principal_id), "name": "nightly"}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["token"].startswith("stl_")
    assert body["token"].startswith(body["prefix"])
    assert created.headers["location"] == f"/api/v1/tokens/{body['id']}"
    read = await gateway.call("GET", created.headers["location"], tenant.token)
    assert read.status_code == 200
    assert "token" not in read.json()
    assert read.json()["name"] == "nightly"
    listed = await gateway.call("GET", f"/api/v1/tokens?principal_id={issued.principal_id}", tenant.token)
    assert [t["id"] for t in listed.json()["items"]] == [str(issued.token_id), body["id"]]
    assert all("token" not in t for t in listed.json()["items"])
    assert body["token"] not in listed.text


async def test_a_token_for_an_unknown_principal_is_404(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call("POST", "/api/v1/tokens", tenant.token, json={"principal_id": str(uuid.uuid4())})
    assert_problem(response, 404, "RES_NOT_FOUND")


async def test_another_tenants_principals_and_tokens_answer_404(gateway: Gateway) -> None:
    mine, theirs = await gateway.tenant("mine"), await gateway.tenant("theirs")
    other = await gateway.principal_token(theirs, "bob", ["viewer"])
    for method, path in [
        ("GET", f"/api/v1/principals/{other.principal_id}"),
        ("DELETE", f"/api/v1/principals/{other.principal_id}"),
        ("GET", f"/api/v1/tokens/{other.token_id}"),
        ("DELETE", f"/api/v1/tokens/{other.token_id}"),
    ]:
        assert_problem(await gateway.call(method, path, mine.token), 404, "RES_NOT_FOUND")
    cross = await gateway.call("POST", "/api/v1/tokens", mine.token, json={"principal_id": str(other.principal_id)})
    assert_problem(cross, 404, "RES_NOT_FOUND")
    listed = await gateway.call("GET", f"/api/v1/tokens?principal_id={other.principal_id}", mine.token)
    assert listed.json() == {"items": [], "next_page_token": None}
    # Nothing happened to the other tenant's principal or token.
    assert (await gateway.call("GET", "/api/v1/releases/x", other.token)).status_code == 400


async def test_ids_malformed_in_the_path_are_400_and_unknown_ones_404(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    body = assert_problem(await gateway.call("GET", "/api/v1/principals/12345", tenant.token), 400, "VAL_INVALID_ID")
    assert body["errors"] == [{"loc": ["path", "principal_id"], "msg": "not a valid UUID"}]
    assert_problem(await gateway.call("DELETE", "/api/v1/tokens/zzz", tenant.token), 400, "VAL_INVALID_ID")
    assert_problem(await gateway.call("GET", f"/api/v1/tokens/{uuid.uuid4()}", tenant.token), 404, "RES_NOT_FOUND")


async def test_lists_are_paged_by_cursor_in_a_stable_order(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    for name in ("carol", "bob", "dave", "alice"):
        assert (await gateway.call("POST", "/api/v1/principals", tenant.token, json={"name": name})).status_code == 201
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        query = "page_size=2" + (f"&page_token={token}" if token else "")
        page = (await gateway.call("GET", f"/api/v1/principals?{query}", tenant.token)).json()
        pages += 1
        assert len(page["items"]) <= 2
        seen += [p["name"] for p in page["items"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert seen == ["admin", "alice", "bob", "carol", "dave"]
    assert pages == 3
    default = (await gateway.call("GET", "/api/v1/principals", tenant.token)).json()
    assert len(default["items"]) == 5
    assert default["next_page_token"] is None


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("page_size=0", "VAL_INVALID_REQUEST"),
        ("page_size=501", "VAL_INVALID_REQUEST"),
        ("page_size=ten", "VAL_INVALID_REQUEST"),
        ("page_token=", "VAL_INVALID_REQUEST"),
        ("page_token=" + "a" * 513, "VAL_INVALID_REQUEST"),
        ("page_token=bm90LWEtY3Vyc29y", "VAL_PAGE_TOKEN"),
        ("page_token=%25%25%25", "VAL_PAGE_TOKEN"),
    ],
)
async def test_bad_pagination_is_400(gateway: Gateway, query: str, code: str) -> None:
    tenant = await gateway.tenant()
    for path in ("/api/v1/principals", "/api/v1/tokens"):
        problem = assert_problem(await gateway.call("GET", f"{path}?{query}", tenant.token), 400, code)
        assert problem["errors"], problem
        assert problem["errors"][0]["loc"][0] == "query"


async def test_page_size_500_is_accepted(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    assert (await gateway.call("GET", "/api/v1/tokens?page_size=500", tenant.token)).status_code == 200
