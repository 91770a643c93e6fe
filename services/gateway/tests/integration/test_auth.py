"""Bearer tokens against a real database: who gets in, and what they may do."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from stella.gateway.settings import Settings

from .conftest import Gateway, assert_problem


async def test_a_request_without_a_token_is_401(gateway: Gateway) -> None:
    response = await gateway.call("GET", "/api/v1/principals", None)
    assert_problem(response, 401, "AUTH_TOKEN_MISSING")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_wrong_or_malformed_token_is_401(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    assert_problem(await gateway.call("GET", "/api/v1/principals", tenant.token + "x"), 401, "AUTH_TOKEN_INVALID")
    assert_problem(await gateway.call("GET", "/api/v1/principals", "stl_nope"), 401, "AUTH_TOKEN_INVALID")
    basic = await gateway.call("GET", "/api/v1/principals", None, headers={"Authorization": "Basic YTpi"})
    assert_problem(basic, 401, "AUTH_TOKEN_INVALID")


async def test_a_bootstrapped_admin_token_works(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call("GET", "/api/v1/principals", tenant.token)
    assert response.status_code == 200, response.text
    assert [(p["name"], p["roles"]) for p in response.json()["items"]] == [("admin", ["tenant-admin"])]


async def test_a_revoked_token_is_401_at_once(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    issued = await gateway.principal_token(tenant, "ci", ["developer"])
    token, token_id = issued.token, issued.token_id
    # The token is used (and cached) before it is revoked.
    assert (await gateway.call("GET", "/api/v1/components/not-a-uuid", token)).status_code == 400
    revoked = await gateway.call("DELETE", f"/api/v1/tokens/{token_id}", tenant.token)
    assert revoked.status_code == 204, revoked.text
    assert_problem(await gateway.call("GET", "/api/v1/components/not-a-uuid", token), 401, "AUTH_TOKEN_REVOKED")
    again = await gateway.call("DELETE", f"/api/v1/tokens/{token_id}", tenant.token)
    assert again.status_code == 204
    shown = await gateway.call("GET", f"/api/v1/tokens/{token_id}", tenant.token)
    assert shown.json()["revoked_at"] is not None


async def test_an_expired_token_is_401(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    principal = await gateway.call(
        "POST", "/api/v1/principals", tenant.token, json={"name": "temp", "roles": ["viewer"]}
    )
    expires_at = (gateway.clock() + timedelta(hours=1)).isoformat()
    created = await gateway.call(
        "POST",
        "/api/v1/tokens",
        tenant.token,
        json={"principal_id": principal.json()["id"], "name": "short", "expires_at": expires_at},
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert (await gateway.call("GET", "/api/v1/releases/not-a-uuid", token)).status_code == 400
    gateway.clock.advance(hours=1, seconds=1)
    assert_problem(await gateway.call("GET", "/api/v1/releases/not-a-uuid", token), 401, "AUTH_TOKEN_EXPIRED")


async def test_an_expiry_in_the_past_is_refused(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    past = (gateway.clock() - timedelta(minutes=1)).isoformat()
    response = await gateway.call(
        "POST", "/api/v1/tokens", tenant.token, json={"principal_id": str(tenant.admin_id), "expires_at": past}
    )
    body = assert_problem(response, 400, "VAL_INVALID_REQUEST")
    assert body["errors"] == [{"loc": ["body", "expires_at"], "msg": "must be in the future"}]


async def test_a_viewer_may_read_but_not_write_and_not_manage_principals(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    viewer = (await gateway.principal_token(tenant, "vera", ["viewer"])).token
    denied = await gateway.call(
        "POST", "/api/v1/components", viewer, json={"name": "web", "image_repository": "registry.test/web"}
    )
    body = assert_problem(denied, 403, "PERM_DENIED")
    assert body["required_permission"] == "release:create"
    assert_problem(await gateway.call("GET", "/api/v1/principals", viewer), 403, "PERM_DENIED")
    assert_problem(
        await gateway.call("POST", "/api/v1/tokens", viewer, json={"principal_id": str(tenant.admin_id)}),
        403,
        "PERM_DENIED",
    )
    # Reading releases is allowed: the malformed id is the first thing that fails.
    assert_problem(await gateway.call("GET", "/api/v1/releases/123", viewer), 400, "VAL_INVALID_ID")


async def test_deleting_a_principal_revokes_its_tokens(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    leaver = await gateway.principal_token(tenant, "leaver", ["developer"])
    assert (await gateway.call("GET", "/api/v1/releases/x", leaver.token)).status_code == 400
    deleted = await gateway.call("DELETE", f"/api/v1/principals/{leaver.principal_id}", tenant.token)
    assert deleted.status_code == 204
    assert_problem(await gateway.call("GET", "/api/v1/releases/x", leaver.token), 401, "AUTH_TOKEN_INVALID")
    tokens = (await gateway.call("GET", f"/api/v1/tokens?principal_id={leaver.principal_id}", tenant.token)).json()
    assert [t["revoked_at"] is not None for t in tokens["items"]] == [True]


async def test_last_use_is_recorded_in_batches(gateway: Gateway, gateway_settings: Settings) -> None:
    tenant = await gateway.tenant()
    await gateway.call("GET", "/api/v1/principals", tenant.token)
    conn = await asyncpg.connect(gateway_settings.database_url)
    try:
        before = await conn.fetchval("SELECT last_used_at FROM gateway.tokens WHERE principal_id = $1", tenant.admin_id)
        assert before is None
        assert gateway.runtime.authenticator is not None
        assert await gateway.runtime.authenticator.flush_usage() == 1
        after = await conn.fetchval("SELECT last_used_at FROM gateway.tokens WHERE principal_id = $1", tenant.admin_id)
    finally:
        await conn.close()
    assert after is not None
    assert abs((after - gateway.clock()).total_seconds()) < 60


async def test_the_tenant_always_comes_from_the_token(gateway: Gateway) -> None:
    first, second = await gateway.tenant("a"), await gateway.tenant("b")
    created = await gateway.call("POST", "/api/v1/principals", first.token, json={"name": "only-in-a"})
    assert created.status_code == 201
    names = [p["name"] for p in (await gateway.call("GET", "/api/v1/principals", second.token)).json()["items"]]
    assert names == ["admin"]
