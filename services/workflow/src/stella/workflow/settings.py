"""Settings of the workflow service (environment prefix ``STELLA_WORKFLOW_``)."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from stella.kit.addresses import parse_networks
from stella.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Workflow service settings."""

    model_config = SettingsConfigDict(env_prefix="STELLA_WORKFLOW_", extra="ignore", frozen=True)

    timer_max_sleep_s: float = Field(default=60.0, gt=0, le=3600)
    """Longest the run timer sleeps without looking at the next wake-up; bounds the effect of a missed wake-up
    (another replica moving a run's wake-up earlier)."""

    timer_batch_size: int = Field(default=100, ge=1, le=10_000)
    """Due runs the timer picks up per round; each is advanced in a transaction of its own."""

    timer_retry_s: float = Field(default=30.0, gt=0, le=86_400)
    """Delay before the timer looks again at a run whose advance failed unexpectedly, so one broken run
    cannot keep the timer busy."""

    template_cache_size: int = Field(default=1024, ge=1, le=100_000)
    """Parsed template versions kept in memory (template versions never change once stored)."""

    plugin_path: str = Field(default="", validation_alias=AliasChoices("plugin_path", "STELLA_PLUGIN_PATH"))
    """Directories holding installed plugins (``STELLA_PLUGIN_PATH``, separated like ``PATH``): the step plugins this
    service runs must lie inside them. Which plugin a tenant may use, and with which config, is its plugin
    instance in the integration service (installed through ``POST /api/v1/plugins``)."""

    plugin_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    """Wall-clock limit of one plugin call; the plugin is killed then and the attempt fails."""

    plugin_cpu_s: int = Field(default=60, ge=1, le=3600)
    """CPU-time limit of one plugin call."""

    plugin_memory_mb: int = Field(default=512, ge=32, le=65_536)
    """Memory (address space) limit of one plugin call, in MiB."""

    plugin_concurrency: int = Field(default=4, ge=1, le=256)
    """Plugin calls this process runs at once."""

    plugin_require_network_isolation: bool = False
    """Refuse to call a plugin without the ``network`` permission when this host cannot run it in a network
    namespace of its own (by default it then runs without one)."""

    http_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    """Hosts ``http`` steps may call, comma-separated (``api.example.com``, ``*.example.com``); none by default."""

    http_allowed_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    """Non-public networks ``http`` steps may reach (``10.0.0.0/8, 127.0.0.1``); public addresses need no entry."""

    @field_validator("http_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("http_allowed_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        return parse_networks(value)
