"""Request and response bodies of the integration API: integration types, integrations, secrets, plugins and
plugin instances.

A secret's value is accepted in exactly one body (:class:`SecretCreate`) and appears in no response body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import Field, SecretStr

from stella.contracts.integration import (
    INTEGRATION_CREDENTIAL_REF_PATTERN,
    PLUGIN_ID_PATTERN,
    PLUGIN_SOURCE_PATTERN,
)
from stella.contracts.validation import DisplayName, Name
from stella.gateway.schemas import RequestBody, ResponseBody

_CREDENTIAL_REF = Field(
    default=None,
    pattern=INTEGRATION_CREDENTIAL_REF_PATTERN,
    description=(
        "Where the integration's secret lives: secret:<name> (the tenant's secret store), or env:NAME / "
        "file:PATH on the integration service's host, only those the operator allows the tenant. Never the secret."
    ),
)


class IntegrationTypeOut(ResponseBody):
    """An integration type with the JSON Schemas of its config and of its secret."""

    type_id: str
    description: str
    config_schema: dict[str, Any]
    secrets_schema: dict[str, Any]
    testable: bool


class IntegrationTypeList(ResponseBody):
    """Every integration type."""

    items: list[IntegrationTypeOut]


class IntegrationCreate(RequestBody):
    """A new integration: a type, a unique name, a config its type's schema accepts, and a credential reference."""

    type_id: str = Field(min_length=1, max_length=63, description="One of GET /api/v1/integration-types.")
    name: Name
    display_name: DisplayName | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    credential_ref: str | None = _CREDENTIAL_REF


class IntegrationUpdate(RequestBody):
    """New values for an integration; omitted fields keep theirs, ``credential_ref: null`` removes the credential."""

    display_name: DisplayName | None = None
    config: dict[str, Any] | None = None
    credential_ref: str | None = _CREDENTIAL_REF


class IntegrationOut(ResponseBody):
    """An integration and its last known health."""

    id: UUID
    type_id: str
    name: str
    display_name: str
    config: dict[str, Any]
    credential_ref: str | None
    health_status: Literal["unknown", "healthy", "unhealthy"]
    health_detail: str
    health_checked_at: datetime | None
    created_at: datetime
    updated_at: datetime


class IntegrationPage(ResponseBody):
    """A page of integrations, by name."""

    items: list[IntegrationOut]
    next_page_token: str | None


class ConnectionTestOut(ResponseBody):
    """What a connection test found."""

    integration_id: UUID
    health_status: Literal["unknown", "healthy", "unhealthy"]
    detail: str
    checked_at: datetime


class SecretCreate(RequestBody):
    """A new secret of the tenant's store. The value is write-only: no answer ever contains it."""

    name: Name
    value: SecretStr = Field(min_length=1, max_length=65536, json_schema_extra={"writeOnly": True})
    description: str = Field(default="", max_length=500)


class SecretOut(ResponseBody):
    """A secret's name and metadata (never its value)."""

    name: str
    description: str
    created_at: datetime
    updated_at: datetime


class SecretPage(ResponseBody):
    """A page of secrets, by name."""

    items: list[SecretOut]
    next_page_token: str | None


class PluginInstall(RequestBody):
    """What to install: a plugin directory or a ``.whl`` file relative to the server's plugin path."""

    source: str = Field(
        pattern=PLUGIN_SOURCE_PATTERN,
        description=(
            "A directory or wheel on the server's plugin path, relative to it (change_ticket, "
            "acme_gate-1.0.0-py3-none-any.whl); nothing outside the plugin path is ever installed."
        ),
    )


class PluginOut(ResponseBody):
    """A plugin installed on the server: its manifest's id, version, capabilities, permissions and config schema."""

    plugin_id: str
    version: str
    vendor: str
    description: str
    capabilities: list[str]
    permissions: list[str]
    config_schema: dict[str, Any]
    entrypoint: str
    source: str
    status: Literal["installed"]
    manifest: dict[str, Any]
    installed_at: datetime


class PluginPage(ResponseBody):
    """A page of installed plugins, by id."""

    items: list[PluginOut]
    next_page_token: str | None


class PluginInstanceCreate(RequestBody):
    """Enable an installed plugin for the tenant: the config is the tenant's defaults for every gate or step."""

    plugin_id: str = Field(min_length=2, max_length=63, pattern=PLUGIN_ID_PATTERN)
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Checked against the plugin's config schema (fields it requires may be left to each gate or step).",
    )
    enabled: bool = True


class PluginInstanceUpdate(RequestBody):
    """New values for a plugin instance; omitted fields keep theirs."""

    config: dict[str, Any] | None = None
    enabled: bool | None = None


class PluginInstanceOut(ResponseBody):
    """A plugin enabled (or disabled) for the tenant, with the tenant's config."""

    id: UUID
    plugin_id: str
    config: dict[str, Any]
    enabled: bool
    created_at: datetime
    updated_at: datetime


class PluginInstancePage(ResponseBody):
    """A page of the tenant's plugin instances, by plugin id."""

    items: list[PluginInstanceOut]
    next_page_token: str | None
