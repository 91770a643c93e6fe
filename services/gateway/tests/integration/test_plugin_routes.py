"""Plugin and plugin instance routes through the gateway to a real integration service with a plugin path."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from stella.gateway.admin import bootstrap
from stella.integration.app import MIGRATIONS as INTEGRATION_MIGRATIONS
from stella.integration.app import IntegrationApp
from stella.integration.app import create_app as integration_app
from stella.integration.keys import new_master_key
from stella.integration.settings import Settings as IntegrationSettings

from .conftest import Gateway, assert_problem

EXAMPLES = Path(__file__).parents[4] / "plugins"


@pytest_asyncio.fixture
async def plugin_root(tmp_path: Path) -> Path:
    root = tmp_path / "plugins"
    root.mkdir()
    return root


@pytest_asyncio.fixture
async def integration_service(
    gateway: Gateway, make_database: Any, nats_url: str, tmp_path: Path, plugin_root: Path
) -> AsyncIterator[IntegrationApp]:
    key = tmp_path / "master.key"
    key.write_text(new_master_key())
    dsn = await make_database([("integration", INTEGRATION_MIGRATIONS)])
    app = integration_app(
        IntegrationSettings(
            database_url=dsn,
            nats_url=nats_url,
            nats_namespace=gateway.names.namespace,
            master_key_file=key,
            plugin_path=f"{EXAMPLES}:{plugin_root}",
            plugin_permissions="network",
        )
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def _platform_token(gateway: Gateway) -> str:
    assert gateway.runtime.pool is not None
    async with gateway.runtime.pool.acquire() as conn:
        issued = await bootstrap(conn, f"ops-{gateway.unique_id}", "operator", gateway.clock(), platform=True)
    assert issued is not None
    return issued.token


def _write_plugin(root: Path, name: str, **manifest: Any) -> None:
    directory = root / name
    directory.mkdir(parents=True)
    fields = {"id": name, "version": "1.0.0", "vendor": "Tests", "capabilities": ["gate"], "entrypoint": "p.py"}
    fields.update(manifest)
    (directory / "stella-plugin.json").write_text(json.dumps({k: v for k, v in fields.items() if v is not None}))
    (directory / "p.py").write_text("")


async def test_an_operator_installs_and_tenants_enable_their_own_instances(
    gateway: Gateway, integration_service: IntegrationApp, plugin_root: Path, tmp_path: Path
) -> None:
    platform = await _platform_token(gateway)
    tenant, other = await gateway.tenant("a"), await gateway.tenant("b")

    # Installing is the operator's: a tenant admin may not, whatever it names.
    denied = await gateway.call("POST", "/api/v1/plugins", tenant.token, json={"source": "change_ticket"})
    assert_problem(denied, 403, "PERM_DENIED")

    # A source that leaves the plugin path is refused at the door or by the service; nothing is stored.
    for source in ("../change_ticket", "/etc", "change_ticket/../../x"):
        refused = await gateway.call("POST", "/api/v1/plugins", platform, json={"source": source})
        assert refused.status_code == 400, (source, refused.text)
    _write_plugin(tmp_path / "outside", "escape")
    (plugin_root / "escape").symlink_to(tmp_path / "outside" / "escape")
    assert_problem(
        await gateway.call("POST", "/api/v1/plugins", platform, json={"source": "escape"}), 400, "PLUGIN_SOURCE_REFUSED"
    )
    assert_problem(
        await gateway.call("POST", "/api/v1/plugins", platform, json={"source": "absent"}),
        404,
        "PLUGIN_SOURCE_NOT_FOUND",
    )
    _write_plugin(plugin_root, "teleport", capabilities=["teleport"])
    _write_plugin(plugin_root, "no-entry", entrypoint=None)
    _write_plugin(plugin_root, "runs-things", capabilities=["step"], permissions=["execute"])
    for source, code in (
        ("teleport", "PLUGIN_UNKNOWN_CAPABILITY"),
        ("no-entry", "PLUGIN_MISSING_ENTRYPOINT"),
        ("runs-things", "PLUGIN_PERMISSION_NOT_ALLOWED"),
    ):
        assert_problem(await gateway.call("POST", "/api/v1/plugins", platform, json={"source": source}), 422, code)
    assert (await gateway.call("GET", "/api/v1/plugins", tenant.token)).json()["items"] == []

    installed = await gateway.call("POST", "/api/v1/plugins", platform, json={"source": "change_ticket"})
    assert installed.status_code == 201, installed.text
    assert installed.headers["location"].endswith("/api/v1/plugins/change-ticket")
    assert installed.json()["permissions"] == ["network"]
    listed = await gateway.call("GET", "/api/v1/plugins", other.token, params={"capability": "gate"})
    assert [p["plugin_id"] for p in listed.json()["items"]] == ["change-ticket"]
    one = await gateway.call("GET", "/api/v1/plugins/change-ticket", tenant.token)
    assert one.status_code == 200 and one.json()["config_schema"]["required"] == ["url"]
    assert_problem(await gateway.call("GET", "/api/v1/plugins/nope", tenant.token), 404, "PLUGIN_NOT_FOUND")

    body = {"plugin_id": "change-ticket", "config": {"url": 7}}
    assert_problem(
        await gateway.call("POST", "/api/v1/plugin-instances", tenant.token, json=body), 422, "PLUGIN_CONFIG_INVALID"
    )
    body["config"] = {"url": "http://tickets.example"}
    created = await gateway.call("POST", "/api/v1/plugin-instances", tenant.token, json=body)
    assert created.status_code == 201, created.text
    instance = created.json()
    path = f"/api/v1/plugin-instances/{instance['id']}"
    assert created.headers["location"].endswith(path)
    assert instance["enabled"] is True and instance["config"] == {"url": "http://tickets.example"}

    # Another tenant cannot see, change or remove it, nor list it.
    assert_problem(await gateway.call("GET", path, other.token), 404, "PLUGIN_INSTANCE_NOT_FOUND")
    assert_problem(
        await gateway.call("PUT", path, other.token, json={"enabled": False}), 404, "PLUGIN_INSTANCE_NOT_FOUND"
    )
    assert_problem(await gateway.call("DELETE", path, other.token), 404, "PLUGIN_INSTANCE_NOT_FOUND")
    assert (await gateway.call("GET", "/api/v1/plugin-instances", other.token)).json()["items"] == []

    disabled = await gateway.call("PUT", path, tenant.token, json={"enabled": False})
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False
    mine = await gateway.call("GET", "/api/v1/plugin-instances", tenant.token)
    assert [i["id"] for i in mine.json()["items"]] == [instance["id"]]
    assert (await gateway.call("DELETE", path, tenant.token)).status_code == 204
    assert_problem(await gateway.call("GET", path, tenant.token), 404, "PLUGIN_INSTANCE_NOT_FOUND")
