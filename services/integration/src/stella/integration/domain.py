"""The integration types, their schemas, and the rules of integrations and secrets. No I/O.

A type's ``config_schema`` is what ``config`` must satisfy (JSON Schema draft 2020-12); its
``secrets_schema`` describes the text the integration's ``credential_ref`` must name.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template
from typing import Any, Final
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator

from stella.contracts.integration import HealthStatus, IntegrationTypeView
from stella.kit.errors import Conflict, NotFound, ServiceError, Unprocessable

REGISTRY: Final[str] = "registry"
"""An OCI distribution registry (basic or bearer-token auth, optional custom CA)."""
NOTIFICATION: Final[str] = "notification"
"""A webhook receiving notifications (plain JSON or a Slack-compatible ``{"text": ...}`` body)."""
SECRET_STORE: Final[str] = "secret-store"
"""The built-in secret store (``secret:<name>`` references)."""
VAULT: Final[str] = "vault"
"""A HashiCorp Vault (or API-compatible) KV version 2 secrets engine (``vault:<path>#<key>`` references)."""


class IntegrationNotFound(NotFound):
    """No such integration in the tenant (another tenant's looks the same)."""

    code = "INT_INTEGRATION_NOT_FOUND"
    title = "Integration not found"


class SecretNotFound(NotFound):
    """No such secret in the tenant."""

    code = "INT_SECRET_NOT_FOUND"
    title = "Secret not found"


class UnknownIntegrationType(Unprocessable):
    """The type id names no integration type."""

    code = "INT_UNKNOWN_TYPE"
    title = "Unknown integration type"


class InvalidIntegrationConfig(Unprocessable):
    """The config does not satisfy its type's schema."""

    code = "INT_CONFIG_INVALID"
    title = "Integration config does not match its type's schema"


class IntegrationNameTaken(Conflict):
    """Another integration of the tenant has this name."""

    code = "INT_NAME_TAKEN"
    title = "Integration name already used"


class SecretNameTaken(Conflict):
    """Another secret of the tenant has this name; nothing was stored."""

    code = "INT_SECRET_EXISTS"
    title = "Secret name already used"


class CredentialRefNotAllowed(Unprocessable):
    """The credential reference is an operator-only one this tenant may not use."""

    code = "INT_CREDENTIAL_REF_NOT_ALLOWED"
    title = "Credential reference not allowed"


class CredentialUnresolved(Unprocessable):
    """The credential reference names nothing readable (a deleted secret, an unset variable)."""

    code = "INT_CREDENTIAL_UNRESOLVED"
    title = "Credential reference cannot be resolved"


class CredentialInvalid(Unprocessable):
    """The secret behind the reference does not have the shape the type needs (the value is never shown)."""

    code = "INT_CREDENTIAL_INVALID"
    title = "Credential does not match its type's schema"


class VaultRefNotAllowed(Unprocessable):
    """A ``vault`` integration's own token cannot come from a vault."""

    code = "INT_CREDENTIAL_REF_NOT_ALLOWED"
    title = "Credential reference not allowed"


class NotARegistry(Unprocessable):
    """The integration is not of type ``registry``."""

    code = "INT_NOT_A_REGISTRY"
    title = "Not a registry integration"


class NotANotification(Unprocessable):
    """The integration is not of type ``notification``."""

    code = "INT_NOT_A_NOTIFICATION"
    title = "Not a notification integration"


class NotificationFailed(ServiceError):
    """The webhook refused the message or could not be reached; sending again may succeed."""

    code = "INT_NOTIFICATION_FAILED"
    status = 502
    title = "Notification not delivered"


class SecretInUse(Conflict):
    """An integration names the secret; delete or change it first."""

    code = "INT_SECRET_IN_USE"
    title = "Secret in use"


class PluginNotInstalled(NotFound):
    """No installed plugin has this id."""

    code = "PLUGIN_NOT_FOUND"
    title = "Plugin not found"


class PluginSourceNotFound(NotFound):
    """The install names nothing on the server's plugin path."""

    code = "PLUGIN_SOURCE_NOT_FOUND"
    title = "Plugin source not found"


class PluginSourceRefused(ServiceError):
    """The install names something outside the plugin path, or not a plugin directory or safe wheel."""

    code = "PLUGIN_SOURCE_REFUSED"
    status = 400
    title = "Plugin source refused"


class PluginManifestInvalid(Unprocessable):
    """The plugin's manifest cannot be used (its ``code`` says why: unknown capability, missing entrypoint...)."""

    code = "PLUGIN_MANIFEST_INVALID"
    title = "Plugin manifest invalid"


class PluginPermissionNotAllowed(Unprocessable):
    """The manifest asks for a permission the operator does not grant plugins."""

    code = "PLUGIN_PERMISSION_NOT_ALLOWED"
    title = "Plugin permission not allowed"


class PluginAlreadyInstalled(Conflict):
    """A plugin with this id is installed already."""

    code = "PLUGIN_ALREADY_INSTALLED"
    title = "Plugin already installed"


class PluginInstanceNotFound(NotFound):
    """No such plugin instance in the tenant (another tenant's looks the same)."""

    code = "PLUGIN_INSTANCE_NOT_FOUND"
    title = "Plugin instance not found"


class PluginInstanceExists(Conflict):
    """The tenant has an instance of this plugin already (one per plugin and tenant)."""

    code = "PLUGIN_INSTANCE_EXISTS"
    title = "Plugin instance already exists"


class PluginConfigInvalid(Unprocessable):
    """The instance's config does not satisfy the plugin's config schema."""

    code = "PLUGIN_CONFIG_INVALID"
    title = "Plugin config does not match the plugin's schema"


def instance_config_problems(config_schema: dict[str, Any], config: dict[str, Any]) -> list[dict[str, object]]:
    """What is wrong with a plugin instance's ``config`` under the plugin's ``config_schema``.

    An instance holds the tenant's defaults: every field it sets must be valid, but fields the schema
    requires may be left to each gate or step (whose config is merged over the instance's and checked whole
    when the gate or template is saved).
    """
    partial = {k: v for k, v in config_schema.items() if k != "required"}
    return [
        {"loc": ["config", *map(str, e.absolute_path)], "msg": e.message}
        for e in sorted(Draft202012Validator(partial).iter_errors(config), key=str)
    ]


_URL = {"type": "string", "pattern": "^https?://[^\\s/?#]+(/[^\\s?#]*)?$", "maxLength": 2048}

TYPES: Final[dict[str, IntegrationTypeView]] = {
    t.type_id: t
    for t in (
        IntegrationTypeView(
            type_id=REGISTRY,
            description="An OCI distribution registry; the connection test is GET /v2/ with the credential.",
            config_schema={
                "type": "object",
                "additionalProperties": False,
                "required": ["url"],
                "properties": {
                    "url": {**_URL, "description": "Base URL: https://registry.example:5000"},
                    "ca_pem": {
                        "type": "string",
                        "maxLength": 65536,
                        "pattern": "-----BEGIN CERTIFICATE-----",
                        "description": "PEM certificates trusted for this registry's TLS, besides the system's.",
                    },
                },
            },
            secrets_schema={
                "type": "string",
                "pattern": "^[^:\\s]+:.+$",
                "description": "user:password (HTTP basic, and for a bearer-token registry the token service).",
            },
            testable=True,
        ),
        IntegrationTypeView(
            type_id=NOTIFICATION,
            description='A webhook: POST of a JSON body, or a Slack-compatible {"text": ...} body.',
            config_schema={
                "type": "object",
                "additionalProperties": False,
                "required": ["url"],
                "properties": {
                    "url": {**_URL, "description": "Where messages are POSTed."},
                    "format": {"enum": ["json", "slack"], "default": "json"},
                    "template": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 4000,
                        "default": "$message",
                        "description": "Message text; $name placeholders are replaced by the message's fields.",
                    },
                },
            },
            secrets_schema={
                "type": "string",
                "minLength": 1,
                "description": "Optional bearer token sent as Authorization: Bearer <token>.",
            },
            testable=True,
        ),
        IntegrationTypeView(
            type_id=VAULT,
            description=(
                "HashiCorp Vault KV version 2: credential references vault:<path>#<key> read the field <key> of "
                "the secret at <path>; the connection test checks the server's health and the token."
            ),
            config_schema={
                "type": "object",
                "additionalProperties": False,
                "required": ["address"],
                "properties": {
                    "address": {**_URL, "description": "The Vault address: https://vault.example:8200"},
                    "mount": {
                        "type": "string",
                        "pattern": "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}){0,7}$",
                        "default": "secret",
                        "description": "Mount path of the KV version 2 secrets engine.",
                    },
                    "namespace": {
                        "type": "string",
                        "pattern": "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}){0,7}/?$",
                        "description": "Vault Enterprise namespace (sent as X-Vault-Namespace).",
                    },
                    "ca_pem": {
                        "type": "string",
                        "maxLength": 65536,
                        "pattern": "-----BEGIN CERTIFICATE-----",
                        "description": "PEM certificates trusted for this Vault's TLS, besides the system's.",
                    },
                },
            },
            secrets_schema={
                "type": "string",
                "minLength": 1,
                "maxLength": 4096,
                "pattern": "^\\S+$",
                "description": "A Vault token (sent as X-Vault-Token) allowed to read the secrets named.",
            },
            testable=True,
        ),
        IntegrationTypeView(
            type_id=SECRET_STORE,
            description="The built-in secret store: values encrypted at rest (AES-256-GCM), named secret:<name>.",
            config_schema={"type": "object", "additionalProperties": False, "properties": {}},
            secrets_schema={"type": "string"},
            testable=True,
        ),
    )
}
"""Every integration type, by id."""


def integration_type(type_id: str) -> IntegrationTypeView:
    """The type ``type_id``.

    Raises:
        UnknownIntegrationType: no such type.
    """
    found = TYPES.get(type_id)
    if found is None:
        raise UnknownIntegrationType(f"there is no integration type {type_id!r}; known: {', '.join(sorted(TYPES))}")
    return found


def validate_config(type_id: str, config: dict[str, Any], insecure_hosts: list[str]) -> None:
    """Check ``config`` against the type's schema and rules.

    Raises:
        UnknownIntegrationType: no such type.
        InvalidIntegrationConfig: the config breaks the schema (every problem in ``errors``).
    """
    spec = integration_type(type_id)
    problems = [
        {"loc": ["config", *map(str, e.absolute_path)], "msg": e.message}
        for e in sorted(Draft202012Validator(spec.config_schema).iter_errors(config), key=str)
    ]
    url_field = {REGISTRY: "url", VAULT: "address"}.get(type_id)
    if not problems and url_field is not None:
        parts = urlsplit(config[url_field])
        bare = parts.hostname or ""
        host = f"[{bare}]" if ":" in bare else bare
        if parts.scheme == "http" and host not in insecure_hosts:
            problems.append({"loc": ["config", url_field], "msg": f"plain http is allowed only for {insecure_hosts}"})
    if problems:
        raise InvalidIntegrationConfig(
            f"the config of a {type_id!r} integration does not match its schema", errors=problems
        )


def validate_credential(type_id: str, value: str) -> None:
    """Check the text behind a credential reference against the type's ``secrets_schema``.

    Raises:
        CredentialInvalid: it does not match; the message never holds the value.
    """
    schema = integration_type(type_id).secrets_schema
    if not Draft202012Validator(schema).is_valid(value):
        raise CredentialInvalid(f"the credential does not match the {type_id!r} type's secrets schema")


@dataclass(frozen=True)
class CredentialRef:
    """A parsed ``credential_ref``: ``scheme`` is ``secret``, ``vault``, ``env`` or ``file``; for ``vault``,
    ``target`` is the secret's path and ``key`` the field read from it."""

    scheme: str
    target: str
    key: str = ""

    @classmethod
    def parse(cls, ref: str) -> CredentialRef:
        """Split ``scheme:target`` (the contract's pattern has already checked the shape)."""
        scheme, _, target = ref.partition(":")
        if scheme == "vault":
            path, _, key = target.partition("#")
            return cls(scheme, path, key)
        return cls(scheme, target)

    @property
    def operator_only(self) -> bool:
        """Whether the reference reads the service's host (``env:``, ``file:``)."""
        return self.scheme in ("env", "file")


def health_changed(previous: HealthStatus, current: HealthStatus) -> bool:
    """Whether a connection test's outcome is news: the status differs from the one recorded."""
    return previous is not current


def notification_body(
    config: dict[str, Any], integration: str, event: str, message: str, fields: dict[str, str] | None = None
) -> dict[str, object]:
    """The JSON body a ``notification`` integration POSTs: ``{"text"}`` (Slack-compatible), plus the event,
    the integration's name and the fields for the plain ``json`` format.

    The text is the integration's ``template`` filled with ``$message``, ``$integration`` and ``fields``.
    """
    values = {**(fields or {}), "message": message, "integration": integration}
    body: dict[str, object] = {"text": render_template(config.get("template", "$message"), values)}
    if config.get("format", "json") == "json":
        body |= {"event": event, "integration": integration}
        if fields:
            body["fields"] = dict(fields)
    return body


def render_template(template: str, fields: dict[str, str]) -> str:
    """Replace ``$name`` / ``${name}`` placeholders with ``fields``; unknown placeholders stay as written."""
    return Template(template).safe_substitute(fields)
