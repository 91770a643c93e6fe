"""Settings of the events service (environment prefix ``STELLA_EVENTS_``)."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from stella.kit.addresses import parse_networks
from stella.kit.settings import ServiceSettings

KEY_FILE_NAME = "webhook-secrets.key"
"""Name of the key sealing webhook secrets inside :attr:`Settings.key_dir`."""


class Settings(ServiceSettings):
    """Events service settings."""

    model_config = SettingsConfigDict(env_prefix="STELLA_EVENTS_", extra="ignore", frozen=True)

    max_in_flight: int = Field(default=1, ge=1, le=10_000)
    """Messages handled at once per consumer. 1 keeps public events in the order of the internal stream
    (a promotion's ``requested`` is published before its ``approved``); more trades that order for throughput."""

    projection_batch_size: int = Field(default=64, ge=1, le=1000)
    """Internal events the projection handles in one transaction at most, in stream order (one commit for
    them all: the projection keeps the stream's order and is not bound to one commit per event). 1 handles
    each event in its own transaction, ``max_in_flight`` of them at once."""

    key_dir: Path = Path(".stella/keys")
    """Directory holding the key that seals webhook secrets at rest (``webhook-secrets.key``, 32 random bytes,
    mode 0600, made on first start), relative to the working directory unless absolute."""

    key_file: Path | None = None
    """An explicit key file used instead of the one in ``key_dir``; made on first start when missing."""

    webhook_require_https: bool = True
    """Refuse webhook URLs that are not ``https://`` (at creation and at every delivery)."""

    webhook_allowed_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    """Comma-separated networks (CIDR) a webhook may reach although they are not public: loopback, link-local,
    private and reserved ranges are refused unless listed here (e.g. ``10.20.0.0/16`` for an internal receiver,
    ``127.0.0.0/8`` in tests). Checked at creation and at every delivery, on the addresses the URL resolves to."""

    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    """Seconds one delivery attempt may take (connect, send, first bytes of the answer)."""

    webhook_concurrency: int = Field(default=16, ge=1, le=1000)
    """Delivery attempts in flight at once (every webhook of every tenant together)."""

    retry_base_s: float = Field(default=5.0, gt=0, le=3600)
    """Delay before the second attempt; each later one waits twice as long, with jitter."""

    retry_max_interval_s: float = Field(default=3600.0, gt=0, le=86400)
    """Longest wait between two attempts."""

    retry_window_s: float = Field(default=24 * 3600.0, gt=0, le=7 * 86400)
    """How long a delivery is retried before it is given up (24 hours)."""

    disable_after_s: float = Field(default=24 * 3600.0, ge=0, le=30 * 86400)
    """A webhook whose attempts have all failed for this long (and at least ``disable_after_failures`` times)
    is disabled and ``org.stellaops.webhook.disabled`` is published."""

    disable_after_failures: int = Field(default=10, ge=1, le=100_000)
    """Failed attempts in a row, at least, before a webhook is disabled."""

    resolve_timeout_s: float = Field(default=5.0, gt=0, le=60)
    """Seconds a webhook URL's host name may take to resolve when the webhook is saved."""

    event_retention_s: float = Field(default=30 * 86400.0, gt=0)
    """How long public events and their delivery log are kept (a timeline reaches this far back)."""

    timer_max_sleep_s: float = Field(default=60.0, gt=0, le=3600)
    """Longest the delivery loop sleeps without re-reading the next due delivery."""

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        return parse_networks(value)

    @property
    def secret_key_path(self) -> Path:
        """Where the key sealing webhook secrets lives."""
        return self.key_file if self.key_file is not None else self.key_dir / KEY_FILE_NAME
