"""The errors of plugins: a manifest that cannot be used, and a call that failed.

Each error has a stable ``code`` so a service can report it (as a problem's code, a gate's reason code or a
step's error) without parsing its message.
"""

from __future__ import annotations

from typing import ClassVar


class ManifestError(Exception):
    """A plugin manifest cannot be used."""

    code: ClassVar[str] = "PLUGIN_MANIFEST_INVALID"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnknownCapability(ManifestError):
    """The manifest names a capability that does not exist."""

    code = "PLUGIN_UNKNOWN_CAPABILITY"


class MissingEntrypoint(ManifestError):
    """The manifest names no entrypoint, or one that is not a file inside the plugin's directory."""

    code = "PLUGIN_MISSING_ENTRYPOINT"


class DuplicatePlugin(ManifestError):
    """Two installed plugins declare the same id."""

    code = "PLUGIN_DUPLICATE_ID"


class PluginSourceRefused(Exception):
    """An install names something the server does not install from: outside the plugin path, not a plugin
    directory or wheel, or a wheel with an unsafe member."""

    code: ClassVar[str] = "PLUGIN_SOURCE_REFUSED"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class PluginNotFound(LookupError):
    """No installed plugin has this id (or none offering the capability asked for)."""

    code: ClassVar[str] = "PLUGIN_NOT_FOUND"


class PluginNotEnabled(PluginNotFound):
    """The tenant has no enabled instance of the plugin: its gates deny and its steps fail."""

    code: ClassVar[str] = "PLUGIN_NOT_ENABLED"


class PluginError(Exception):
    """A plugin call failed: only this call, never the caller's process.

    Attributes:
        plugin_id: The plugin called.
        method: The JSON-RPC method called.
        detail: What went wrong, fit for a user (never the plugin's environment: it has none).
    """

    code: ClassVar[str] = "PLUGIN_CALL_FAILED"

    def __init__(self, plugin_id: str, method: str, detail: str) -> None:
        super().__init__(f"plugin {plugin_id!r} ({method}): {detail}")
        self.plugin_id = plugin_id
        self.method = method
        self.detail = detail


class PluginTimeout(PluginError):
    """The plugin did not answer within its wall-clock limit; its process group was killed."""

    code = "PLUGIN_TIMEOUT"


class PluginIsolationUnavailable(PluginError):
    """The plugin must run cut off the network (it lacks the ``network`` permission) and this host cannot."""

    code = "PLUGIN_ISOLATION_UNAVAILABLE"


class PluginResourceLimit(PluginError):
    """The plugin was stopped by its CPU-time or memory limit."""

    code = "PLUGIN_RESOURCE_LIMIT"


class PluginCrashed(PluginError):
    """The plugin's process ended without answering."""

    code = "PLUGIN_CRASHED"


class PluginAnswerTooLarge(PluginError):
    """The plugin's answer exceeded the answer size limit; it was not read further."""

    code = "PLUGIN_ANSWER_TOO_LARGE"


class PluginProtocolError(PluginError):
    """The plugin's answer is not a JSON-RPC 2.0 response to the request (malformed JSON, wrong id...)."""

    code = "PLUGIN_PROTOCOL_ERROR"


class PluginRemoteError(PluginError):
    """The plugin answered with a JSON-RPC error object (it refused or failed the request itself).

    Attributes:
        rpc_code: The error object's ``code``.
        data: The error object's ``data``, if any.
    """

    code = "PLUGIN_REMOTE_ERROR"

    def __init__(self, plugin_id: str, method: str, detail: str, *, rpc_code: int, data: object = None) -> None:
        super().__init__(plugin_id, method, detail)
        self.rpc_code = rpc_code
        self.data = data
