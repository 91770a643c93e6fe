"""Settings of the integration service (environment prefix ``STELLA_INTEGRATION_``)."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from stella.kit.addresses import parse_networks
from stella.kit.settings import ServiceSettings
from stella.plugins import Permission


class Settings(ServiceSettings):
    """Integration service settings."""

    model_config = SettingsConfigDict(env_prefix="STELLA_INTEGRATION_", extra="ignore", frozen=True)

    master_key_file: Path | None = None
    """File holding the master key (32 random bytes, base64) that wraps every tenant's data key. Either this
    or ``master_key`` must be set; the service does not start without a master key."""

    master_key: SecretStr | None = None
    """The master key itself (base64 of 32 bytes), for installs that pass it in the environment."""

    previous_master_key_files: Annotated[tuple[Path, ...], NoDecode] = ()
    """Files of former master keys, comma-separated. At start, every data key still wrapped by one of them is
    re-wrapped by the current master key (key rotation); secret values are not re-encrypted."""

    credential_refs: dict[str, list[str]] = Field(default_factory=dict)
    """The host credential references (``env:NAME``, ``file:/path``) each tenant may name in an integration's
    ``credential_ref``, as JSON: tenant id -> list (``"*"``: every tenant). ``secret:<name>`` references
    (the tenant's own store) need no listing."""

    allowed_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    """Networks integrations may reach although they are not public, comma-separated. Loopback, link-local,
    private and reserved addresses are refused otherwise."""

    insecure_registries: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"])
    """Hosts a ``registry`` integration (its ``url``) or a ``vault`` integration (its ``address``) may name with
    plain ``http://`` (matched without the port)."""

    request_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """Seconds one request to an outside system (a connection test, a notification) may take."""

    health_interval_s: float = Field(default=300.0, ge=1, le=86_400)
    """Seconds between two scheduled connection tests of an integration."""

    plugin_path: str = Field(default="", validation_alias=AliasChoices("plugin_path", "STELLA_PLUGIN_PATH"))
    """Directories (``STELLA_PLUGIN_PATH``, separated like ``PATH``) an install may name a plugin directory or
    wheel in, relative to one of them; nothing outside them is ever installed. The promotion and workflow
    services run only plugins inside the same directories."""

    plugin_install_dir: Path | None = None
    """Where plugin wheels are unpacked (``<id>-<version>`` inside it); without it, installing a wheel is
    refused. Put it on the plugin path too, so the services that run plugins trust it."""

    plugin_permissions: Annotated[tuple[Permission, ...], NoDecode] = ()
    """Permissions (``network``, ``execute``, ``filesystem``; comma-separated) the operator grants plugins: a
    plugin whose manifest asks for another is refused at install (422 ``PLUGIN_PERMISSION_NOT_ALLOWED``)."""

    @field_validator("plugin_permissions", mode="before")
    @classmethod
    def _permissions(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        return parse_networks(value)

    @field_validator("previous_master_key_files", mode="before")
    @classmethod
    def _paths(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(Path(p.strip()) for p in value.split(",") if p.strip())
        return value
