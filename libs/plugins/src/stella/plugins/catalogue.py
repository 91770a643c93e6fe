"""Every plugin found on a plugin path, by id: a listing of what an operator could install.

``STELLA_PLUGIN_PATH`` lists directories (separated like ``PATH``). Each entry is a plugin's directory when it
holds a manifest, otherwise every immediate subdirectory holding one is a plugin. Which plugins a tenant may
use is not decided here: a plugin is installed through the integration service and enabled per tenant as a
plugin instance (:mod:`stella.plugins.instances`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from stella.plugins.errors import DuplicatePlugin, ManifestError, PluginNotFound
from stella.plugins.manifest import Capability, InstalledPlugin, load_plugin, manifest_file


class PluginCatalogue:
    """Installed plugins by id."""

    def __init__(self, plugins: Iterable[InstalledPlugin] = ()) -> None:
        self._plugins: dict[str, InstalledPlugin] = {}
        for plugin in plugins:
            if plugin.id in self._plugins:
                raise DuplicatePlugin(
                    f"plugin id {plugin.id!r} is declared by {self._plugins[plugin.id].directory} and {plugin.directory}"
                )
            self._plugins[plugin.id] = plugin

    @classmethod
    def from_path(cls, path: str | Iterable[Path]) -> PluginCatalogue:
        """Load every plugin on ``path`` (a ``PATH``-like string, or directories).

        Raises:
            ManifestError: an entry does not exist, or a plugin on it has an invalid manifest (an operator's
                mistake is reported when the service starts, not when a promotion first needs the plugin).
        """
        entries = [Path(p) for p in path.split(os.pathsep) if p] if isinstance(path, str) else list(path)
        return cls(plugin for entry in entries for plugin in _plugins_in(entry))

    def get(self, plugin_id: str, capability: Capability | str | None = None) -> InstalledPlugin:
        """The plugin with ``plugin_id`` (offering ``capability``, when one is named).

        Raises:
            PluginNotFound: no such plugin, or it does not offer ``capability``.
        """
        plugin = self._plugins.get(plugin_id)
        if plugin is None:
            known = ", ".join(sorted(self._plugins)) or "none"
            raise PluginNotFound(f"no plugin {plugin_id!r} is installed (installed: {known})")
        if capability is not None and not plugin.manifest.offers(capability):
            offers = ", ".join(plugin.manifest.capabilities)
            raise PluginNotFound(
                f"plugin {plugin_id!r} does not offer {Capability(capability).value} (it offers {offers})"
            )
        return plugin

    def offering(self, capability: Capability | str) -> list[InstalledPlugin]:
        """The plugins offering ``capability``, by id."""
        return [p for _, p in sorted(self._plugins.items()) if p.manifest.offers(capability)]

    def __iter__(self) -> Iterator[InstalledPlugin]:
        return iter(sorted(self._plugins.values(), key=lambda p: p.id))

    def __len__(self) -> int:
        return len(self._plugins)


def _plugins_in(entry: Path) -> list[InstalledPlugin]:
    if not entry.is_dir():
        raise ManifestError(f"plugin path entry {entry} is not a directory")
    if manifest_file(entry) is not None:
        return [load_plugin(entry)]
    return [load_plugin(child) for child in sorted(entry.iterdir()) if child.is_dir() and manifest_file(child)]
