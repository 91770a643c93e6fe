"""Installing plugins from the server's plugin path and enabling them per tenant, over real NATS and Postgres."""

from __future__ import annotations

import json
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client

from stella.contracts import integration as c
from stella.integration.app import IntegrationApp, create_app
from stella.testing.services import TenantCaller, service_client

EXAMPLES = Path(__file__).parents[4] / "plugins"


def _plugin(root: Path, name: str, **manifest: object) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    fields: dict[str, object] = {
        "id": name,
        "version": "1.0.0",
        "vendor": "Tests",
        "capabilities": ["gate"],
        "entrypoint": "p.py",
    }
    fields.update(manifest)
    (directory / "stella-plugin.json").write_text(json.dumps({k: v for k, v in fields.items() if v is not None}))
    (directory / "p.py").write_text("")
    return directory


@pytest.fixture
def plugin_root(tmp_path: Path) -> Path:
    root = tmp_path / "plugins"
    root.mkdir()
    return root


@pytest_asyncio.fixture
async def plugin_app(make_settings, master_key_file: Path, plugin_root: Path) -> AsyncIterator[IntegrationApp]:
    settings = make_settings(master_key_file).model_copy(
        update={"plugin_path": f"{EXAMPLES}:{plugin_root}", "plugin_permissions": ("network", "execute")}
    )
    app = create_app(settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest_asyncio.fixture
async def callers(
    plugin_app: IntegrationApp, nats: Client, tenant_id: uuid.UUID
) -> AsyncIterator[tuple[TenantCaller, TenantCaller]]:
    async with service_client(nats, plugin_app.runtime.names) as client:
        yield TenantCaller(client, tenant_id=tenant_id), TenantCaller(client, tenant_id=uuid.uuid4())


async def _counts(app: IntegrationApp) -> tuple[int, int, int]:
    async with app.runtime.pool.acquire() as conn:
        return (
            await conn.fetchval("SELECT count(*) FROM plugins"),
            await conn.fetchval("SELECT count(*) FROM plugin_instances"),
            await conn.fetchval("SELECT count(*) FROM outbox"),
        )


async def test_install_then_enable_per_tenant(
    callers: tuple[TenantCaller, TenantCaller], plugin_app: IntegrationApp
) -> None:
    mine, other = callers
    installed = await mine.command(c.INSTALL_PLUGIN, c.InstallPlugin, source="change_ticket")
    assert installed.ok, installed.error
    plugin = c.PluginView.model_validate(installed.data)
    assert (plugin.plugin_id, plugin.version, plugin.capabilities) == ("change-ticket", "1.0.0", ["gate"])
    assert plugin.permissions == ["network"] and plugin.entrypoint == "change_ticket.py"
    again = await mine.command(c.INSTALL_PLUGIN, c.InstallPlugin, source="change_ticket")
    assert again.error is not None and again.error.code == "PLUGIN_ALREADY_INSTALLED"

    listed = await other.query(c.LIST_PLUGINS, c.ListPlugins, capability="gate")
    assert [p["plugin_id"] for p in listed.data["items"]] == ["change-ticket"]
    assert (await other.query(c.LIST_PLUGINS, c.ListPlugins, capability="step")).data["items"] == []

    bad = await mine.command(
        c.CREATE_PLUGIN_INSTANCE, c.CreatePluginInstance, plugin_id="change-ticket", config={"url": 5}
    )
    assert bad.error is not None and bad.error.code == "PLUGIN_CONFIG_INVALID", bad.error
    assert bad.error.errors[0]["loc"] == ["config", "url"]
    absent = await mine.command(c.CREATE_PLUGIN_INSTANCE, c.CreatePluginInstance, plugin_id="not-there")
    assert absent.error is not None and absent.error.code == "PLUGIN_NOT_FOUND"
    assert (await _counts(plugin_app))[1] == 0

    created = await mine.command(
        c.CREATE_PLUGIN_INSTANCE,
        c.CreatePluginInstance,
        plugin_id="change-ticket",
        config={"url": "http://tickets.example"},
    )
    assert created.ok, created.error
    instance = c.PluginInstanceView.model_validate(created.data)
    assert instance.enabled
    twice = await mine.command(c.CREATE_PLUGIN_INSTANCE, c.CreatePluginInstance, plugin_id="change-ticket")
    assert twice.error is not None and twice.error.code == "PLUGIN_INSTANCE_EXISTS"

    resolved = await mine.query(
        c.RESOLVE_PLUGINS, c.ResolvePlugins, plugin_ids=["change-ticket", "smoke-test"], capability="gate"
    )
    [found] = [c.ResolvedPlugin.model_validate(r) for r in resolved.data]
    assert found.enabled and found.config == {"url": "http://tickets.example"}
    assert Path(found.directory) == (EXAMPLES / "change_ticket").resolve()
    assert (
        await mine.query(c.RESOLVE_PLUGINS, c.ResolvePlugins, plugin_ids=["change-ticket"], capability="step")
    ).data == []

    # Another tenant neither sees, changes nor resolves this tenant's instance.
    hidden = await other.query(c.GET_PLUGIN_INSTANCE, c.GetPluginInstance, instance_id=instance.id)
    assert hidden.error is not None and hidden.error.status == 404
    changed = await other.command(
        c.UPDATE_PLUGIN_INSTANCE, c.UpdatePluginInstance, instance_id=instance.id, enabled=False
    )
    assert changed.error is not None and changed.error.code == "PLUGIN_INSTANCE_NOT_FOUND"
    removed = await other.command(c.DELETE_PLUGIN_INSTANCE, c.DeletePluginInstance, instance_id=instance.id)
    assert removed.error is not None and removed.error.code == "PLUGIN_INSTANCE_NOT_FOUND"
    assert (await other.query(c.LIST_PLUGIN_INSTANCES, c.ListPluginInstances)).data["items"] == []
    assert (
        await other.query(c.RESOLVE_PLUGINS, c.ResolvePlugins, plugin_ids=["change-ticket"], capability="gate")
    ).data == []

    disabled = await mine.command(
        c.UPDATE_PLUGIN_INSTANCE, c.UpdatePluginInstance, instance_id=instance.id, enabled=False
    )
    assert disabled.ok and disabled.data["enabled"] is False
    resolved = await mine.query(c.RESOLVE_PLUGINS, c.ResolvePlugins, plugin_ids=["change-ticket"], capability="gate")
    assert resolved.data[0]["enabled"] is False
    deleted = await mine.command(c.DELETE_PLUGIN_INSTANCE, c.DeletePluginInstance, instance_id=instance.id)
    assert deleted.ok, deleted.error
    assert (await mine.query(c.LIST_PLUGIN_INSTANCES, c.ListPluginInstances)).data["items"] == []


@pytest.mark.parametrize(
    ("source", "setup", "code"),
    [
        ("change_ticket/../../etc", None, "PLUGIN_SOURCE_REFUSED"),
        ("escape", "symlink", "PLUGIN_SOURCE_REFUSED"),
        ("nothing-here", None, "PLUGIN_SOURCE_NOT_FOUND"),
        ("unknown-cap", {"capabilities": ["teleport"]}, "PLUGIN_UNKNOWN_CAPABILITY"),
        ("no-entry", {"entrypoint": None}, "PLUGIN_MISSING_ENTRYPOINT"),
        ("needs-fs", {"permissions": ["filesystem"]}, "PLUGIN_PERMISSION_NOT_ALLOWED"),
        ("wheel.whl", "wheel", "PLUGIN_SOURCE_REFUSED"),
    ],
)
async def test_a_refused_install_stores_nothing(
    callers: tuple[TenantCaller, TenantCaller],
    plugin_app: IntegrationApp,
    plugin_root: Path,
    tmp_path: Path,
    source: str,
    setup: object,
    code: str,
) -> None:
    if setup == "symlink":
        (plugin_root / source).symlink_to(_plugin(tmp_path / "outside", "escape"))
    elif setup == "wheel":
        (plugin_root / source).write_bytes(b"PK")  # wheels are refused while no install directory is configured
    elif isinstance(setup, dict):
        _plugin(plugin_root, source, **setup)
    before = await _counts(plugin_app)
    reply = await callers[0].command(c.INSTALL_PLUGIN, c.InstallPlugin, source=source)
    assert reply.error is not None and reply.error.code == code, reply.error
    assert await _counts(plugin_app) == (before[0], before[1], before[2])
    missing = await callers[0].query(c.GET_PLUGIN, c.GetPlugin, plugin_id="escape")
    assert missing.error is not None and missing.error.status == 404


async def test_a_wheel_on_the_plugin_path_is_unpacked_and_installed(
    make_settings, master_key_file: Path, plugin_root: Path, tmp_path: Path, nats: Client, tenant_id: uuid.UUID
) -> None:
    install_dir = tmp_path / "unpacked"
    manifest = {
        "id": "wheel-step",
        "version": "0.2.0",
        "vendor": "Tests",
        "capabilities": ["step"],
        "entrypoint": "run.py",
    }
    with zipfile.ZipFile(plugin_root / "wheel_step-0.2.0-py3-none-any.whl", "w") as archive:
        archive.writestr("wheel_step/stella-plugin.json", json.dumps(manifest))
        archive.writestr("wheel_step/run.py", "")
    settings = make_settings(master_key_file).model_copy(
        update={"plugin_path": str(plugin_root), "plugin_install_dir": install_dir}
    )
    app = create_app(settings)
    await app.start()
    try:
        async with service_client(nats, app.runtime.names) as client:
            caller = TenantCaller(client, tenant_id=tenant_id)
            reply = await caller.command(c.INSTALL_PLUGIN, c.InstallPlugin, source="wheel_step-0.2.0-py3-none-any.whl")
            assert reply.ok, reply.error
            assert reply.data["plugin_id"] == "wheel-step" and reply.data["version"] == "0.2.0"
            async with app.runtime.pool.acquire() as conn:
                directory = await conn.fetchval("SELECT directory FROM plugins WHERE plugin_id = 'wheel-step'")
            assert Path(directory) == (install_dir / "wheel-step-0.2.0").resolve()
            assert (Path(directory) / "run.py").is_file()
    finally:
        await app.stop()
