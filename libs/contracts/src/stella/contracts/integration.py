"""The integration context: integrations with outside systems (registries, notification webhooks, HashiCorp
Vault) and the built-in secret store.

Commands go to the integration service (``stella.cmd.integration.*``), reads are request/reply
(``stella.rpc.integration.*``), and the service publishes events (``stella.evt.integration.*``).

Two request/reply subjects carry a secret value and are, on purpose, not commands: a command rests in the
commands stream for days, and a secret value must rest nowhere but encrypted in the integration service's
tables. :data:`STORE_SECRET` carries a value in (write-only: the answer holds only metadata), and
:data:`GET_REGISTRY_CONNECTION` and :data:`GET_REGISTRY_CONNECTIONS` carry decrypted credentials out to the
release service (tag reads) and the deployment service (pull credentials in a leased agent task), on the internal
bus only; the gateway never relays those.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

from pydantic import Field, SecretStr, field_serializer

from stella.contracts.envelope import Command, Event, Model, PageRequest, Query
from stella.contracts.validation import DisplayName, Name

CONTEXT: Final[str] = "integration"
"""Context name in subjects."""

INTEGRATION_CREDENTIAL_REF_PATTERN: Final[str] = (
    r"^(secret:[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?"
    r"|vault:[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}){0,15}#[A-Za-z0-9_.-]{1,128}"
    r"|(env|file):[A-Za-z0-9_./-]{1,255})$"
)
"""``secret:<name>`` (a secret of the tenant's own store), ``vault:<path>#<key>`` (the field ``key`` of the KV v2
secret at ``path`` in the tenant's ``vault`` integration; no path segment starts with a dot, so no ``..``), or
``env:NAME`` / ``file:/path`` (only those the operator allows the tenant)."""

# --- subjects -------------------------------------------------------------------------------------------

CREATE_INTEGRATION: Final[str] = "stella.cmd.integration.create_integration"
"""Command :class:`CreateIntegration`; replies with an :class:`IntegrationView`."""
UPDATE_INTEGRATION: Final[str] = "stella.cmd.integration.update_integration"
"""Command :class:`UpdateIntegration`; replies with an :class:`IntegrationView`."""
DELETE_INTEGRATION: Final[str] = "stella.cmd.integration.delete_integration"
"""Command :class:`DeleteIntegration`."""
TEST_INTEGRATION: Final[str] = "stella.cmd.integration.test_integration"
"""Command :class:`TestIntegration`: run the connection test now; replies with a :class:`ConnectionTestResult`."""
DELETE_SECRET: Final[str] = "stella.cmd.integration.delete_secret"
"""Command :class:`DeleteSecret`."""

STORE_SECRET: Final[str] = "stella.rpc.integration.store_secret"
"""Request :class:`StoreSecret` -> :class:`SecretView`. A write on request/reply so the value is never kept
in a stream (see the module docstring); a retry with the same ``message_id`` answers the first outcome."""
LIST_SECRETS: Final[str] = "stella.rpc.integration.list_secrets"
"""Query :class:`ListSecrets` -> page of :class:`SecretView` (names and metadata, never values)."""
LIST_INTEGRATION_TYPES: Final[str] = "stella.rpc.integration.list_integration_types"
"""Query :class:`ListIntegrationTypes` -> list of :class:`IntegrationTypeView`."""
GET_INTEGRATION: Final[str] = "stella.rpc.integration.get_integration"
"""Query :class:`GetIntegration` -> :class:`IntegrationView`."""
LIST_INTEGRATIONS: Final[str] = "stella.rpc.integration.list_integrations"
"""Query :class:`ListIntegrations` -> page of :class:`IntegrationView`."""
GET_REGISTRY_CONNECTION: Final[str] = "stella.rpc.integration.get_registry_connection"
"""Internal query :class:`GetRegistryConnection` -> :class:`RegistryConnection`, with the decrypted
credential. Asked by the release service only; never relayed by the gateway."""
GET_REGISTRY_CONNECTIONS: Final[str] = "stella.rpc.integration.get_registry_connections"
"""Internal query :class:`GetRegistryConnections` -> :class:`RegistryConnections`: the connections, with their
decrypted credentials, of several ``registry`` integrations of the tenant at once. Asked by the deployment
service once per agent lease for the pull credentials of the leased tasks; never relayed by the gateway."""
SEND_NOTIFICATION: Final[str] = "stella.rpc.integration.send_notification"
"""Internal request :class:`SendNotification` -> :class:`NotificationSent`: send a message through a
``notification`` integration of the tenant now (asked by the workflow service's ``notify`` steps). Errors:
``INT_INTEGRATION_NOT_FOUND`` (404: none of that id or name in the tenant), ``INT_NOT_A_NOTIFICATION`` (422),
``INT_NOTIFICATION_FAILED`` (502: the webhook refused the message or could not be reached; sending again may
succeed). Not a command: its effect is outside, and the caller's retry policy decides whether to send again."""

INSTALL_PLUGIN: Final[str] = "stella.cmd.integration.install_plugin"
"""Command :class:`InstallPlugin` (an operator's action); replies with a :class:`PluginView`. Errors:
``PLUGIN_SOURCE_REFUSED`` (400: the source leaves the plugin path), ``PLUGIN_SOURCE_NOT_FOUND`` (404),
``PLUGIN_UNKNOWN_CAPABILITY`` / ``PLUGIN_MISSING_ENTRYPOINT`` / ``PLUGIN_MANIFEST_INVALID`` (422),
``PLUGIN_PERMISSION_NOT_ALLOWED`` (422: a permission the operator does not grant), ``PLUGIN_ALREADY_INSTALLED`` (409)."""
CREATE_PLUGIN_INSTANCE: Final[str] = "stella.cmd.integration.create_plugin_instance"
"""Command :class:`CreatePluginInstance`: enable a plugin for the tenant; replies with a :class:`PluginInstanceView`."""
UPDATE_PLUGIN_INSTANCE: Final[str] = "stella.cmd.integration.update_plugin_instance"
"""Command :class:`UpdatePluginInstance`; replies with a :class:`PluginInstanceView`."""
DELETE_PLUGIN_INSTANCE: Final[str] = "stella.cmd.integration.delete_plugin_instance"
"""Command :class:`DeletePluginInstance`."""
GET_PLUGIN: Final[str] = "stella.rpc.integration.get_plugin"
"""Query :class:`GetPlugin` -> :class:`PluginView`."""
LIST_PLUGINS: Final[str] = "stella.rpc.integration.list_plugins"
"""Query :class:`ListPlugins` -> page of :class:`PluginView`."""
GET_PLUGIN_INSTANCE: Final[str] = "stella.rpc.integration.get_plugin_instance"
"""Query :class:`GetPluginInstance` -> :class:`PluginInstanceView`."""
LIST_PLUGIN_INSTANCES: Final[str] = "stella.rpc.integration.list_plugin_instances"
"""Query :class:`ListPluginInstances` -> page of :class:`PluginInstanceView`."""
RESOLVE_PLUGINS: Final[str] = "stella.rpc.integration.resolve_plugins"
"""Internal query :class:`ResolvePlugins` -> list of :class:`ResolvedPlugin`: the tenant's instances of the
named plugins offering a capability, with where each plugin lives on the server. Asked by the promotion
service (gate plugins) and the workflow service (step plugins) when a gate or template is saved and before
each call; never relayed by the gateway."""

INTEGRATION_CREATED: Final[str] = "stella.evt.integration.integration_created"
"""Event :class:`IntegrationCreated`."""
INTEGRATION_UPDATED: Final[str] = "stella.evt.integration.integration_updated"
"""Event :class:`IntegrationUpdated`."""
INTEGRATION_DELETED: Final[str] = "stella.evt.integration.integration_deleted"
"""Event :class:`IntegrationDeleted`."""
INTEGRATION_HEALTH_CHANGED: Final[str] = "stella.evt.integration.health_changed"
"""Event :class:`IntegrationHealthChanged`: a connection test (on demand or scheduled) changed the health."""
SECRET_STORED: Final[str] = "stella.evt.integration.secret_stored"
"""Event :class:`SecretStored` (name and metadata only)."""
SECRET_DELETED: Final[str] = "stella.evt.integration.secret_deleted"
"""Event :class:`SecretDeleted`."""
PLUGIN_INSTALLED: Final[str] = "stella.evt.integration.plugin_installed"
"""Event :class:`PluginInstalled`."""
PLUGIN_INSTANCE_CHANGED: Final[str] = "stella.evt.integration.plugin_instance_changed"
"""Event :class:`PluginInstanceChanged`: a plugin instance was created, changed (enabled, disabled, config) or
deleted."""

PLUGIN_ID_PATTERN: Final[str] = r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$"
"""A plugin's id as its manifest declares it."""
PLUGIN_SOURCE_PATTERN: Final[str] = r"^[A-Za-z0-9_][A-Za-z0-9_.+/-]{0,254}$"
"""What an install names: a directory or wheel relative to the server's plugin path (the service also
refuses ``..`` parts and symbolic links leading out of the path)."""


class HealthStatus(StrEnum):
    """What the last connection test of an integration found."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


# --- views ----------------------------------------------------------------------------------------------


class IntegrationTypeView(Model):
    """An integration type and the JSON Schemas its ``config`` and its secret must satisfy."""

    type_id: str
    description: str
    config_schema: dict[str, Any]
    secrets_schema: dict[str, Any]
    testable: bool


class IntegrationView(Model):
    """An integration as clients see it; ``credential_ref`` names a secret, never holds one."""

    id: UUID
    type_id: str
    name: Name
    display_name: str
    config: dict[str, Any]
    credential_ref: str | None
    health_status: HealthStatus
    health_detail: str
    health_checked_at: datetime | None
    created_at: datetime
    updated_at: datetime


class SecretView(Model):
    """A stored secret's metadata: never its value."""

    name: Name
    description: str
    created_at: datetime
    updated_at: datetime


class ConnectionTestResult(Model):
    """The outcome of a connection test."""

    integration_id: UUID
    health_status: HealthStatus
    detail: str
    checked_at: datetime


class RegistryConnection(Model):
    """How to reach a registry integration's registry, with the decrypted credential (internal bus only)."""

    integration_id: UUID
    url: str
    ca_pem: str | None = None
    username: str | None = None
    password: SecretStr | None = None

    @field_serializer("password", when_used="json")
    def _reveal(self, value: SecretStr | None) -> str | None:
        # Travels in clear on the internal bus only (the release service needs the value); ``repr`` masks it.
        return value.get_secret_value() if value is not None else None


class PluginStatus(StrEnum):
    """Whether an installed plugin can be used."""

    INSTALLED = "installed"


class PluginView(Model):
    """A plugin installed on the server (every tenant sees the catalogue; each enables what it uses)."""

    plugin_id: str
    version: str
    vendor: str
    description: str
    capabilities: list[str]
    permissions: list[str]
    config_schema: dict[str, Any]
    entrypoint: str
    source: str
    status: PluginStatus
    manifest: dict[str, Any]
    installed_at: datetime


class PluginInstanceView(Model):
    """A plugin enabled for a tenant, with the tenant's config (what the plugin receives, a gate's or step's
    own ``config`` merged over it)."""

    id: UUID
    plugin_id: str
    config: dict[str, Any]
    enabled: bool
    created_at: datetime
    updated_at: datetime


class ResolvedPlugin(Model):
    """The tenant's instance of a plugin and where the plugin lives (internal bus only)."""

    plugin_id: str
    version: str
    directory: str
    manifest: dict[str, Any]
    instance_id: UUID
    enabled: bool
    config: dict[str, Any]


# --- commands -------------------------------------------------------------------------------------------


class InstallPlugin(Command):
    """Install the plugin directory or wheel ``source`` names on the server's plugin path."""

    source: str = Field(pattern=PLUGIN_SOURCE_PATTERN)


class CreatePluginInstance(Command):
    """Enable an installed plugin for the tenant with a config its manifest's schema accepts."""

    plugin_id: str = Field(min_length=2, max_length=63, pattern=PLUGIN_ID_PATTERN)
    config: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True


class UpdatePluginInstance(Command):
    """Change a plugin instance; omitted fields keep their value."""

    instance_id: UUID
    config: dict[str, Any] | None = None
    enabled: bool | None = None


class DeletePluginInstance(Command):
    """Remove a plugin instance: the tenant can no longer use the plugin."""

    instance_id: UUID


class CreateIntegration(Command):
    """Create an integration of a known type with a config its type's schema accepts."""

    type_id: str = Field(min_length=1, max_length=63)
    name: Name
    display_name: DisplayName | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    credential_ref: str | None = Field(default=None, pattern=INTEGRATION_CREDENTIAL_REF_PATTERN)


class UpdateIntegration(Command):
    """Change an integration; omitted fields keep their value."""

    integration_id: UUID
    display_name: DisplayName | None = None
    config: dict[str, Any] | None = None
    credential_ref: str | None = Field(default=None, pattern=INTEGRATION_CREDENTIAL_REF_PATTERN)
    clear_credential_ref: bool = False


class DeleteIntegration(Command):
    """Delete an integration."""

    integration_id: UUID


class TestIntegration(Command):
    """Run an integration's connection test now and record its health."""

    __test__ = False  # not a pytest test class

    integration_id: UUID


class DeleteSecret(Command):
    """Delete a secret of the tenant's store."""

    name: Name


# --- requests and queries -------------------------------------------------------------------------------


class StoreSecret(Query):
    """Store a new secret under a name unique in the tenant (write-only; ``repr`` never shows the value)."""

    name: Name
    value: SecretStr = Field(min_length=1, max_length=65536)
    description: str = Field(default="", max_length=500)
    actor_id: UUID | None = None

    @field_serializer("value", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        # Travels on core request/reply only, to the service that encrypts it; never stored in a stream.
        return value.get_secret_value()


class ListSecrets(Query):
    """A page of the tenant's secrets (metadata)."""

    page: PageRequest = Field(default_factory=PageRequest)


class ListIntegrationTypes(Query):
    """Every integration type."""


class GetIntegration(Query):
    """One integration of the tenant."""

    integration_id: UUID


class ListIntegrations(Query):
    """A page of the tenant's integrations, optionally of one type."""

    type_id: str | None = Field(default=None, max_length=63)
    page: PageRequest = Field(default_factory=PageRequest)


class GetRegistryConnection(Query):
    """The registry connection of a ``registry`` integration of the tenant, with its decrypted credential."""

    integration_id: UUID


class GetRegistryConnections(Query):
    """The registry connections of several ``registry`` integrations of the tenant, with their decrypted
    credentials. Ids that name no registry integration of the tenant, or whose credential cannot be read, are
    left out of the answer (listed in :attr:`RegistryConnections.missing`)."""

    integration_ids: list[UUID] = Field(min_length=1, max_length=200)


class RegistryConnections(Model):
    """Answer to :class:`GetRegistryConnections`: the connections found, and the ids left out."""

    connections: list[RegistryConnection] = Field(default_factory=list)
    missing: list[UUID] = Field(default_factory=list)


class SendNotification(Query):
    """Send ``message`` through a ``notification`` integration of the tenant, named by id or name.

    The integration's ``template`` is filled with ``$message``, ``$integration`` and each of ``fields``.
    ``idempotency_key`` is sent to the webhook as the ``Idempotency-Key`` header, so a receiver can drop a
    message sent twice.
    """

    integration: str = Field(min_length=1, max_length=63)
    message: str = Field(min_length=1, max_length=4000)
    fields: dict[str, str] = Field(default_factory=dict, max_length=64)
    idempotency_key: str | None = Field(default=None, max_length=200)


class GetPlugin(Query):
    """One installed plugin."""

    plugin_id: str = Field(min_length=2, max_length=63, pattern=PLUGIN_ID_PATTERN)


class ListPlugins(Query):
    """A page of the installed plugins, optionally only those offering a capability."""

    capability: str | None = Field(default=None, max_length=32)
    page: PageRequest = Field(default_factory=PageRequest)


class GetPluginInstance(Query):
    """One plugin instance of the tenant."""

    instance_id: UUID


class ListPluginInstances(Query):
    """A page of the tenant's plugin instances."""

    page: PageRequest = Field(default_factory=PageRequest)


class ResolvePlugins(Query):
    """The tenant's instances (enabled or not) of ``plugin_ids`` whose plugin offers ``capability``."""

    plugin_ids: list[str] = Field(max_length=100)
    capability: str = Field(min_length=1, max_length=32)


class NotificationSent(Model):
    """A notification the webhook accepted."""

    integration_id: UUID
    name: Name
    status: int
    detail: str


# --- events ---------------------------------------------------------------------------------------------


class IntegrationCreated(Event):
    """An integration was created."""

    integration: IntegrationView


class IntegrationUpdated(Event):
    """An integration was changed."""

    integration: IntegrationView


class IntegrationDeleted(Event):
    """An integration was deleted."""

    integration_id: UUID
    name: Name


class IntegrationHealthChanged(Event):
    """A connection test found another health than the one recorded before."""

    integration_id: UUID
    name: Name
    type_id: str
    previous: HealthStatus
    health_status: HealthStatus
    detail: str


class SecretStored(Event):
    """A secret was stored (never its value)."""

    secret: SecretView


class SecretDeleted(Event):
    """A secret was deleted."""

    name: Name


class PluginInstalled(Event):
    """A plugin was installed on the server."""

    plugin: PluginView


class PluginInstanceChanged(Event):
    """A tenant's plugin instance was created, changed or deleted (``deleted``: the view as it was)."""

    instance: PluginInstanceView
    deleted: bool = False
