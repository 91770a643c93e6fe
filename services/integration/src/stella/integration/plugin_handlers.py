"""Use cases of plugins: installing one from the server's plugin path, and each tenant's plugin instances.

Installing reads the server's disk (a plugin directory, or a wheel unpacked into the install directory) before
the transaction that records the plugin; every refusal (a source outside the plugin path, a bad manifest, a
permission the operator does not grant) happens before anything is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from stella.contracts.envelope import Page, Reply, utcnow
from stella.contracts.integration import (
    PLUGIN_INSTALLED,
    PLUGIN_INSTANCE_CHANGED,
    CreatePluginInstance,
    DeletePluginInstance,
    GetPlugin,
    GetPluginInstance,
    InstallPlugin,
    ListPluginInstances,
    ListPlugins,
    PluginInstalled,
    PluginInstanceChanged,
    ResolvePlugins,
    UpdatePluginInstance,
)
from stella.integration import domain, repo
from stella.kit.broker import CommandProcessor
from stella.kit.errors import ServiceError, error_detail
from stella.kit.outbox import add_events
from stella.plugins import InstalledPlugin, ManifestError, Permission, PluginNotFound, PluginSourceRefused, load_source


class PluginHandlers:
    """Installing plugins and managing the tenants' plugin instances.

    Args:
        pool: The service's connection pool (once started).
        commands: Runs a command once (its reply is kept for a retry).
        roots: The server's plugin path entries; an install names a source inside one of them.
        install_dir: Where wheels are unpacked (None: wheels are refused).
        permissions: The permissions the operator grants plugins.
    """

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        commands: CommandProcessor,
        *,
        roots: Sequence[Path],
        install_dir: Path | None,
        permissions: Sequence[Permission],
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], UUID] = uuid4,
    ) -> None:
        self._pool = pool
        self.commands = commands
        self.roots = list(roots)
        self.install_dir = install_dir
        self.permissions = frozenset(Permission(p) for p in permissions)
        self.clock = clock
        self.new_id = new_id

    def _load(self, source: str) -> InstalledPlugin:
        """The plugin ``source`` names, checked (see the module docstring).

        Raises:
            PluginSourceRefused, PluginSourceNotFound, PluginManifestInvalid, PluginPermissionNotAllowed.
        """
        if not self.roots:
            raise domain.PluginSourceNotFound("no plugin path is configured on the server (STELLA_PLUGIN_PATH)")
        try:
            plugin = load_source(self.roots, source, self.install_dir)
        except PluginSourceRefused as exc:
            raise domain.PluginSourceRefused(exc.detail) from None
        except PluginNotFound as exc:
            raise domain.PluginSourceNotFound(str(exc)) from None
        except ManifestError as exc:
            raise domain.PluginManifestInvalid(exc.detail, code=exc.code) from None
        refused = sorted(p.value for p in plugin.manifest.permissions if p not in self.permissions)
        if refused:
            granted = ", ".join(sorted(p.value for p in self.permissions)) or "none"
            raise domain.PluginPermissionNotAllowed(
                f"plugin {plugin.id!r} asks for the permission(s) {', '.join(refused)}, which the operator does not "
                f"grant plugins (granted: {granted}; STELLA_INTEGRATION_PLUGIN_PERMISSIONS)",
                errors=[{"loc": ["manifest", "permissions"], "msg": f"not granted: {p}"} for p in refused],
            )
        return plugin

    async def install_plugin(self, cmd: InstallPlugin) -> Reply:
        """Install the plugin directory or wheel ``cmd.source`` names on the plugin path."""
        if (seen := await self.commands.seen(cmd)) is not None:
            return seen
        try:
            async with self._pool().acquire() as conn:
                if await repo.get_plugin_id_of_source(conn, cmd.source):
                    raise domain.PluginAlreadyInstalled(f"{cmd.source!r} is installed already")
            plugin = await asyncio.to_thread(self._load, cmd.source)
        except ServiceError as exc:
            return Reply.failure(error_detail(exc))

        async def execute(conn: asyncpg.Connection) -> object:
            manifest = plugin.manifest
            fields: dict[str, Any] = {
                "plugin_id": manifest.id,
                "version": manifest.version,
                "vendor": manifest.vendor,
                "manifest": manifest.model_dump(mode="json"),
                "entrypoint": manifest.entrypoint,
                "source": cmd.source,
                "directory": str(plugin.directory),
            }
            view = await repo.insert_plugin(conn, fields, cmd.actor_id, self.clock())
            if view is None:
                raise domain.PluginAlreadyInstalled(f"a plugin with id {manifest.id!r} is installed already")
            await add_events(conn, [(PLUGIN_INSTALLED, cmd.caused(PluginInstalled, plugin=view))])
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def get_plugin(self, q: GetPlugin) -> Reply:
        """One installed plugin."""
        async with self._pool().acquire() as conn:
            view = await repo.get_plugin(conn, q.plugin_id)
        if view is None:
            raise domain.PluginNotInstalled(f"no plugin {q.plugin_id!r} is installed")
        return Reply.success(view.model_dump(mode="json"))

    async def list_plugins(self, q: ListPlugins) -> Reply:
        """A page of the installed plugins."""
        async with self._pool().acquire() as conn:
            items, token = await repo.list_plugins(conn, q.capability, q.page.page_size, q.page.page_token)
        return Reply.success(Page(items=[i.model_dump(mode="json") for i in items], next_page_token=token).model_dump())

    # --- instances --------------------------------------------------------------------------------------

    async def _check_config(self, conn: asyncpg.Connection, plugin_id: str, config: dict[str, Any]) -> None:
        plugin = await repo.get_plugin(conn, plugin_id)
        if plugin is None:
            raise domain.PluginNotInstalled(f"no plugin {plugin_id!r} is installed")
        problems = domain.instance_config_problems(plugin.config_schema, config)
        if problems:
            raise domain.PluginConfigInvalid(
                f"the config does not match plugin {plugin_id!r}'s config schema", errors=problems
            )

    async def create_plugin_instance(self, cmd: CreatePluginInstance) -> Reply:
        """Enable an installed plugin for the tenant (one instance per plugin), its config checked."""

        async def execute(conn: asyncpg.Connection) -> object:
            await self._check_config(conn, cmd.plugin_id, cmd.config)
            view = await repo.insert_instance(
                conn, cmd.tenant_id, self.new_id(), cmd.plugin_id, cmd.config, cmd.enabled, self.clock()
            )
            if view is None:
                raise domain.PluginInstanceExists(f"this tenant has an instance of plugin {cmd.plugin_id!r} already")
            await add_events(conn, [(PLUGIN_INSTANCE_CHANGED, cmd.caused(PluginInstanceChanged, instance=view))])
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def update_plugin_instance(self, cmd: UpdatePluginInstance) -> Reply:
        """Change an instance's config or enable or disable it."""

        async def execute(conn: asyncpg.Connection) -> object:
            current = await repo.get_instance(conn, cmd.tenant_id, cmd.instance_id)
            if current is None:
                raise domain.PluginInstanceNotFound(f"plugin instance {cmd.instance_id} does not exist")
            updated = current.model_copy(update=cmd.model_dump(include={"config", "enabled"}, exclude_none=True))
            if cmd.config is not None:
                await self._check_config(conn, current.plugin_id, cmd.config)
            if updated == current:
                return current.model_dump(mode="json")
            view = await repo.update_instance(conn, cmd.tenant_id, updated, self.clock())
            await add_events(conn, [(PLUGIN_INSTANCE_CHANGED, cmd.caused(PluginInstanceChanged, instance=view))])
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def delete_plugin_instance(self, cmd: DeletePluginInstance) -> Reply:
        """Remove an instance: gates and steps naming the plugin deny or fail from now on."""

        async def execute(conn: asyncpg.Connection) -> object:
            view = await repo.delete_instance(conn, cmd.tenant_id, cmd.instance_id)
            if view is None:
                raise domain.PluginInstanceNotFound(f"plugin instance {cmd.instance_id} does not exist")
            await add_events(
                conn, [(PLUGIN_INSTANCE_CHANGED, cmd.caused(PluginInstanceChanged, instance=view, deleted=True))]
            )
            return {"id": str(cmd.instance_id), "deleted": True}

        return await self.commands.run(cmd, execute)

    async def get_plugin_instance(self, q: GetPluginInstance) -> Reply:
        """One plugin instance of the tenant."""
        async with self._pool().acquire() as conn:
            view = await repo.get_instance(conn, q.tenant_id, q.instance_id)
        if view is None:
            raise domain.PluginInstanceNotFound(f"plugin instance {q.instance_id} does not exist")
        return Reply.success(view.model_dump(mode="json"))

    async def list_plugin_instances(self, q: ListPluginInstances) -> Reply:
        """A page of the tenant's plugin instances."""
        async with self._pool().acquire() as conn:
            items, token = await repo.list_instances(conn, q.tenant_id, q.page.page_size, q.page.page_token)
        return Reply.success(Page(items=[i.model_dump(mode="json") for i in items], next_page_token=token).model_dump())

    async def resolve_plugins(self, q: ResolvePlugins) -> Reply:
        """The tenant's instances of the named plugins offering a capability (internal bus only)."""
        async with self._pool().acquire() as conn:
            found = await repo.resolve_plugins(conn, q.tenant_id, sorted(set(q.plugin_ids)), q.capability)
        return Reply.success([f.model_dump(mode="json") for f in found])
