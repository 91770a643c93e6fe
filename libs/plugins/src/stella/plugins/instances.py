"""The plugins one tenant may use: its plugin instances, as the integration service answers for them.

A plugin gate or step is usable by a tenant only through an *enabled* instance of the plugin; the config the
plugin receives is the instance's (the tenant's defaults) with the gate's or step's own ``config`` merged over
it. The services that run plugins ask the integration service for the instances (``resolve_plugins``) when a
gate or template is saved and again before each call, so an instance disabled later makes the next call fail
closed. They run a plugin only from a directory inside their own plugin path, and only with the manifest
recorded at install (same version, same permissions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stella.plugins.errors import ManifestError, PluginNotEnabled, PluginNotFound
from stella.plugins.install import is_trusted
from stella.plugins.manifest import Capability, InstalledPlugin, Manifest, load_plugin


@dataclass(frozen=True)
class EnabledPlugin:
    """A plugin the tenant may call, and the config of its instance."""

    plugin: InstalledPlugin
    config: Mapping[str, Any]

    def params_config(self, own: Mapping[str, Any] | None) -> dict[str, Any]:
        """The config a call sends: the instance's, with the gate's or step's ``own`` merged over it."""
        return {**self.config, **(own or {})}


def _merged_check(manifest: Manifest, base: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], list[str]]:
    def check(own: Mapping[str, Any]) -> list[str]:
        return manifest.config_errors({**base, **own})

    return check


class TenantPlugins:
    """One tenant's instances of some plugins offering ``capability``.

    Args:
        instances: What the integration service answered, by plugin id: ``{plugin_id, version, directory,
            manifest, enabled, config}`` (a plugin with no instance is absent).
        roots: The service's plugin path: the only directories it runs plugins from.
        capability: The capability the caller uses.
    """

    def __init__(
        self, instances: Mapping[str, Mapping[str, Any]], roots: Iterable[Path], capability: Capability | str
    ) -> None:
        self._instances = dict(instances)
        self._roots = list(roots)
        self.capability = Capability(capability)

    def _instance(self, plugin_id: str) -> Mapping[str, Any]:
        found = self._instances.get(plugin_id)
        if found is None:
            raise PluginNotEnabled(
                f"plugin {plugin_id!r} is not enabled for this tenant: it has no plugin instance of a plugin "
                f"offering {self.capability.value} (POST /api/v1/plugin-instances)"
            )
        if not found.get("enabled"):
            raise PluginNotEnabled(f"plugin {plugin_id!r} is disabled for this tenant (its plugin instance)")
        return found

    def checkers(self) -> dict[str, Callable[[Mapping[str, Any]], list[str]]]:
        """Each enabled plugin's config check, by id: the gate's or step's config merged over the instance's
        must satisfy the plugin's config schema (empty list: it does)."""
        checks: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {}
        for plugin_id, found in self._instances.items():
            if not found.get("enabled"):
                continue
            try:
                manifest = Manifest.model_validate(found["manifest"])
            except (ValidationError, KeyError):
                continue
            checks[plugin_id] = _merged_check(manifest, dict(found.get("config") or {}))
        return checks

    def problem(self, plugin_id: str) -> str | None:
        """Why the tenant cannot use ``plugin_id`` (None: it can)."""
        try:
            self._instance(plugin_id)
        except PluginNotEnabled as exc:
            return str(exc)
        return None

    def get(self, plugin_id: str) -> EnabledPlugin:
        """The enabled plugin ``plugin_id``, loaded from its directory and checked again.

        Raises:
            PluginNotEnabled: the tenant has no instance of it, or a disabled one.
            PluginNotFound: its directory is outside this service's plugin path, holds no valid plugin, or
                holds another id or version than the one installed.
        """
        found = self._instance(plugin_id)
        directory = Path(str(found.get("directory", "")))
        if not is_trusted(directory, self._roots):
            raise PluginNotFound(f"plugin {plugin_id!r} is installed outside this service's plugin path")
        try:
            plugin = load_plugin(directory)
        except ManifestError as exc:
            raise PluginNotFound(f"plugin {plugin_id!r} cannot be loaded: {exc.detail}") from None
        if (plugin.id, plugin.manifest.version) != (plugin_id, found.get("version")):
            raise PluginNotFound(
                f"the plugin at {directory.name} is {plugin.id} {plugin.manifest.version}, not the installed "
                f"{plugin_id} {found.get('version')}; reinstall it"
            )
        if plugin.manifest.model_dump(mode="json") != found.get("manifest"):
            # Its permissions (what the operator granted at install) or its entrypoint may have changed.
            raise PluginNotFound(
                f"plugin {plugin_id!r}'s manifest changed on disk since it was installed; reinstall it"
            )
        if not plugin.manifest.offers(self.capability):
            raise PluginNotFound(f"plugin {plugin_id!r} does not offer {self.capability.value}")
        return EnabledPlugin(plugin, dict(found.get("config") or {}))
