"""The platform API for tenants: only the operator's platform admins create and read tenants."""

from __future__ import annotations

import uuid

from stella.gateway.admin import bootstrap

from .conftest import Gateway, assert_problem


async def _platform_token(gateway: Gateway) -> str:
    assert gateway.runtime.pool is not None
    async with gateway.runtime.pool.acquire() as conn:
        issued = await bootstrap(conn, f"ops-{gateway.unique_id}", "operator", gateway.clock(), platform=True)
        assert issued is not None
        # There is one platform tenant.
        assert await bootstrap(conn, f"ops2-{gateway.unique_id}", "operator", gateway.clock(), platform=True) is None
    return issued.token


async def test_a_platform_admin_creates_a_tenant_whose_admin_can_work_at_once(gateway: Gateway) -> None:
    platform = await _platform_token(gateway)
    key = {"Idempotency-Key": f"tenant-{uuid.uuid4()}"}
    body = {"name": f"shop-{gateway.unique_id}", "admin": "alice"}
    created = await gateway.call("POST", "/api/v1/tenants", platform, json=body, headers=key)
    assert created.status_code == 201, created.text
    tenant = created.json()
    assert tenant["name"] == body["name"] and tenant["is_platform"] is False
    assert created.headers["location"] == f"/api/v1/tenants/{tenant['id']}"
    principals = await gateway.call("GET", "/api/v1/principals", tenant["admin_token"])
    assert [(p["name"], p["roles"]) for p in principals.json()["items"]] == [("alice", ["tenant-admin"])]
    # A replay shows the tenant again but never the token.
    replay = await gateway.call("POST", "/api/v1/tenants", platform, json=body, headers=key)
    assert replay.status_code == 201 and "admin_token" not in replay.json()
    assert_problem(await gateway.call("POST", "/api/v1/tenants", platform, json=body), 409, "RES_ALREADY_EXISTS")
    listed = await gateway.call("GET", "/api/v1/tenants", platform)
    assert body["name"] in [t["name"] for t in listed.json()["items"]]
    one = await gateway.call("GET", f"/api/v1/tenants/{tenant['id']}", platform)
    assert one.json()["id"] == tenant["id"]
    assert_problem(await gateway.call("GET", f"/api/v1/tenants/{uuid.uuid4()}", platform), 404, "RES_NOT_FOUND")
    # The platform admin manages tenants, not what is inside them: its own tenant's principals are all it sees.
    seen = await gateway.call("GET", "/api/v1/principals", platform)
    assert [p["name"] for p in seen.json()["items"]] == ["operator"]


async def test_tenant_admins_neither_manage_tenants_nor_grant_platform_admin(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    for method, path, body in (
        ("POST", "/api/v1/tenants", {"name": "mine"}),
        ("GET", "/api/v1/tenants", None),
        ("GET", f"/api/v1/tenants/{tenant.id}", None),
    ):
        response = await gateway.call(method, path, tenant.token, json=body)
        assert assert_problem(response, 403, "PERM_DENIED")["required_permission"].startswith("tenant:")
    refused = await gateway.call(
        "POST", "/api/v1/principals", tenant.token, json={"name": "sneaky", "roles": ["platform-admin"]}
    )
    assert_problem(refused, 422, "VAL_ROLE_NOT_ALLOWED")
    update = await gateway.call(
        "PUT", f"/api/v1/principals/{tenant.admin_id}", tenant.token, json={"roles": ["tenant-admin", "platform-admin"]}
    )
    assert_problem(update, 422, "VAL_ROLE_NOT_ALLOWED")
    # Even a binding written behind the API's back grants nothing outside the platform tenant.
    assert gateway.runtime.pool is not None
    async with gateway.runtime.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO role_bindings (tenant_id, principal_id, role, created_at) VALUES ($1, $2, 'platform-admin', now())",
            tenant.id,
            tenant.admin_id,
        )
    gateway.runtime.get_authenticator().forget_principal(tenant.admin_id)
    assert_problem(await gateway.call("GET", "/api/v1/tenants", tenant.token), 403, "PERM_DENIED")
