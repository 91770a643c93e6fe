"""Settings of the release service (environment prefix ``STELLA_RELEASE_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

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

    credential_refs: dict[str, list[str]] = Field(default_factory=dict)
    """The credential references each tenant may name in ``registry_credential_ref``, as JSON: tenant id ->
    ``["env:NAME", "file:/path"]`` (``"*"``: every tenant). Nothing else is accepted or ever read, so a client
    cannot make the service read the host's environment or files. Empty: no tenant may use a credential."""
