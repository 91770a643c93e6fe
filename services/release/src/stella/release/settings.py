"""Settings of the release service (environment prefix ``STELLA_RELEASE_``)."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from stella.kit.addresses import parse_networks
from stella.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Release service settings."""

    model_config = SettingsConfigDict(env_prefix="STELLA_RELEASE_", extra="ignore", frozen=True)

    registry_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """Seconds one registry request may take before the registry counts as unavailable."""

    registry_concurrency: int = Field(default=8, ge=1, le=64)
    """Manifest requests in flight at once during a sync."""

    max_tags_per_sync: int = Field(default=5000, ge=1, le=100_000)
    """Upper bound on the tags one sync reads, so a huge repository cannot exhaust memory."""

    insecure_registries: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"])
    """Registry hosts reached over plain HTTP (matched without the port); every other host uses HTTPS."""

    registry_allowed_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    """Networks the service may reach registries in although they are not public, comma-separated
    (``127.0.0.0/8,10.20.0.0/16``). Registries at loopback, link-local (cloud metadata), private and reserved
    addresses are refused otherwise, so a tenant cannot make the service send requests into its own network."""

    credential_refs: dict[str, list[str]] = Field(default_factory=dict)
    """The credential references each tenant may name in ``registry_credential_ref``, as JSON: tenant id ->
    ``["env:NAME", "file:/path"]`` (``"*"``: every tenant). Nothing else is accepted or ever read, so a client
    cannot make the service read the host's environment or files. Empty: no tenant may use a credential."""

    @field_validator("registry_allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        return parse_networks(value)
