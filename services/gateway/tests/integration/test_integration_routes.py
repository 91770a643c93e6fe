"""Integration, integration type and secret routes through the gateway to a real integration service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from stella.integration.app import MIGRATIONS as INTEGRATION_MIGRATIONS
from stella.integration.app import IntegrationApp
from stella.integration.app import create_app as integration_app
from stella.integration.keys import new_master_key
from stella.integration.settings import Settings as IntegrationSettings

from .conftest import Gateway, assert_problem


@pytest_asyncio.fixture
async def integration_service(
    gateway: Gateway, make_database: Any, nats_url: str, tmp_path: Path
) -> AsyncIterator[IntegrationApp]:
    key = tmp_path / "master.key"
    key.write_text(new_master_key())
    dsn = await make_database([("integration", INTEGRATION_MIGRATIONS)])
    app = integration_app(
        IntegrationSettings(
            database_url=dsn, nats_url=nats_url, nats_namespace=gateway.names.namespace, master_key_file=key
        )
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def test_secrets_are_write_only_and_integrations_are_tenant_scoped(
    gateway: Gateway, integration_service: IntegrationApp
) -> None:
    tenant, other = await gateway.tenant("a"), await gateway.tenant("b")
    value = "s3cret-registry-password"

    stored = await gateway.call(
        "POST", "/api/v1/secrets", tenant.token, json={"name": "login", "value": f"robot:{value}"}
    )
    assert stored.status_code == 201, stored.text
    assert set(stored.json()) == {"name", "description", "created_at", "updated_at"}
    again = await gateway.call("POST", "/api/v1/secrets", tenant.token, json={"name": "login", "value": "other:x"})
    assert_problem(again, 409, "INT_SECRET_EXISTS")
    listed = await gateway.call("GET", "/api/v1/secrets", tenant.token)
    assert [s["name"] for s in listed.json()["items"]] == ["login"]

    types = await gateway.call("GET", "/api/v1/integration-types", tenant.token)
    assert types.status_code == 200, types.text
    by_id = {t["type_id"]: t for t in types.json()["items"]}
    assert {"registry", "notification", "secret-store"} <= set(by_id)
    assert by_id["registry"]["config_schema"]["required"] == ["url"]

    body = {
        "type_id": "registry",
        "name": "hub",
        "config": {"url": "https://registry.example"},
        "credential_ref": "secret:login",
    }
    created = await gateway.call("POST", "/api/v1/integrations", tenant.token, json=body)
    assert created.status_code == 201, created.text
    integration = created.json()
    assert created.headers["location"] == f"/api/v1/integrations/{integration['id']}"
    path = f"/api/v1/integrations/{integration['id']}"
    assert (await gateway.call("GET", path, tenant.token)).json() == integration

    unknown = await gateway.call("POST", "/api/v1/integrations", tenant.token, json={**body, "type_id": "ftp"})
    assert_problem(unknown, 422, "INT_UNKNOWN_TYPE")
    invalid = await gateway.call(
        "POST", "/api/v1/integrations", tenant.token, json={**body, "name": "bad", "config": {"url": 5}}
    )
    assert_problem(invalid, 422, "INT_CONFIG_INVALID")
    assert len((await gateway.call("GET", "/api/v1/integrations", tenant.token)).json()["items"]) == 1

    for method, route in (("GET", path), ("PUT", path), ("DELETE", path), ("POST", f"{path}/test")):
        answer = await gateway.call(method, route, other.token, json={"display_name": "x"} if method == "PUT" else None)
        assert_problem(answer, 404, "INT_INTEGRATION_NOT_FOUND")
    assert (await gateway.call("GET", "/api/v1/secrets", other.token)).json()["items"] == []
    assert_problem(await gateway.call("DELETE", "/api/v1/secrets/login", other.token), 404, "INT_SECRET_NOT_FOUND")

    in_use = await gateway.call("DELETE", "/api/v1/secrets/login", tenant.token)
    assert_problem(in_use, 409, "INT_SECRET_IN_USE")
    removed = await gateway.call("DELETE", path, tenant.token)
    assert removed.status_code == 204, removed.text
    assert (await gateway.call("DELETE", "/api/v1/secrets/login", tenant.token)).status_code == 204

    everything = json.dumps([stored.json(), listed.json(), integration, again.json()])
    assert value not in everything


async def test_a_viewer_may_read_integrations_but_not_store_secrets(
    gateway: Gateway, integration_service: IntegrationApp
) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "viewer-1", ["viewer"])
    assert (await gateway.call("GET", "/api/v1/integrations", viewer.token)).status_code == 200
    refused = await gateway.call("POST", "/api/v1/secrets", viewer.token, json={"name": "x", "value": "y"})
    assert_problem(refused, 403, "PERM_DENIED")
    assert (await gateway.call("GET", "/api/v1/secrets", tenant.token)).json()["items"] == []
