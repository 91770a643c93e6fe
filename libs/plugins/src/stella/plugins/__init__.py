"""Stella plugins: manifests, the catalogue of installed plugins, and the isolated runner.

A plugin is a directory holding a manifest (:mod:`stella.plugins.manifest`) and an entrypoint program. The
services find installed plugins on the server's plugin path (:mod:`stella.plugins.catalogue`) and call them
through :class:`~stella.plugins.runner.PluginRunner`, one isolated subprocess per call speaking JSON-RPC 2.0
over stdio. The methods a plugin answers depend on its capabilities:

* ``gate``: ``gate.evaluate`` with ``{config, promotion, release, environment}``, answering
  ``{"allow": bool, "message": str, "details"?: {...}, "reason_codes"?: [str]}``;
* ``step``: ``step.execute`` with ``{config, inputs, attempt, idempotency_key}``, answering
  ``{"outputs": {...}, "logs"?: str, "succeeded"?: bool, "error"?: str}``.
"""

from stella.plugins.catalogue import PluginCatalogue
from stella.plugins.errors import (
    DuplicatePlugin,
    ManifestError,
    MissingEntrypoint,
    PluginAnswerTooLarge,
    PluginCrashed,
    PluginError,
    PluginIsolationUnavailable,
    PluginNotEnabled,
    PluginNotFound,
    PluginProtocolError,
    PluginRemoteError,
    PluginResourceLimit,
    PluginSourceRefused,
    PluginTimeout,
    UnknownCapability,
)
from stella.plugins.install import is_trusted, load_source, locate_source, split_path, unpack_wheel
from stella.plugins.instances import EnabledPlugin, TenantPlugins
from stella.plugins.manifest import Capability, InstalledPlugin, Manifest, Permission, load_plugin, parse_manifest
from stella.plugins.runner import Limits, PluginRunner, network_isolation_available

GATE_METHOD = "gate.evaluate"
"""The JSON-RPC method a gate plugin answers."""
STEP_METHOD = "step.execute"
"""The JSON-RPC method a step plugin answers."""

__all__ = [
    "GATE_METHOD",
    "STEP_METHOD",
    "Capability",
    "DuplicatePlugin",
    "EnabledPlugin",
    "InstalledPlugin",
    "Limits",
    "Manifest",
    "ManifestError",
    "MissingEntrypoint",
    "Permission",
    "PluginAnswerTooLarge",
    "PluginCatalogue",
    "PluginCrashed",
    "PluginError",
    "PluginIsolationUnavailable",
    "PluginNotEnabled",
    "PluginNotFound",
    "PluginProtocolError",
    "PluginRemoteError",
    "PluginResourceLimit",
    "PluginRunner",
    "PluginSourceRefused",
    "PluginTimeout",
    "TenantPlugins",
    "UnknownCapability",
    "is_trusted",
    "load_plugin",
    "load_source",
    "locate_source",
    "network_isolation_available",
    "parse_manifest",
    "split_path",
    "unpack_wheel",
]
