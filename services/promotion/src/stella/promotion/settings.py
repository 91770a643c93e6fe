"""Settings of the promotion service (environment prefix ``STELLA_PROMOTION_``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from stella.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Promotion service settings."""

    model_config = SettingsConfigDict(env_prefix="STELLA_PROMOTION_", extra="ignore", frozen=True)

    release_query_timeout_s: float = Field(default=5.0, gt=0, le=120)
    """Seconds a promotion request waits for the release service before it fails with 503."""

    default_workflow_template: str = Field(default="standard-promotion", min_length=1, max_length=100)
    """Workflow template of promotions whose environment's ``promotion_policy`` names none."""

    timer_batch_size: int = Field(default=100, ge=1, le=10_000)
    """Held promotions (or freeze windows) one timer round handles before it looks again."""

    timer_retry_s: float = Field(default=30.0, gt=0, le=3600)
    """Delay before a held promotion whose re-evaluation failed is tried again."""

    timer_max_sleep_s: float = Field(default=60.0, gt=0, le=3600)
    """Longest a timer sleeps without looking again (bounds the effect of a missed wake-up)."""

    run_start_timeout_s: float = Field(default=60.0, gt=0, le=86_400)
    """Seconds a promotion waits for its workflow run to bring the gate step before the run's start is sent
    again; each further wait is twice as long."""

    run_start_attempts: int = Field(default=5, ge=0, le=50)
    """How often a run's start is sent again before the promotion is rejected with ``PROM_RUN_NOT_STARTED``
    (with the default timeout: about an hour after the request)."""

    plugin_path: str = Field(default="", validation_alias=AliasChoices("plugin_path", "STELLA_PLUGIN_PATH"))
    """Directories holding installed plugins (``STELLA_PLUGIN_PATH``, separated like ``PATH``): the gate plugins this
    service runs must lie inside them. Which plugin a tenant may use, and with which config, is its plugin
    instance in the integration service (installed through ``POST /api/v1/plugins``)."""

    plugin_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """Wall-clock limit of one plugin call; the plugin is killed then and its gate denies. The gate step's command
    waits for its gate plugins: keep it well below ``STELLA_PROMOTION_ACK_WAIT_S``."""

    plugin_cpu_s: int = Field(default=10, ge=1, le=600)
    """CPU-time limit of one plugin call."""

    plugin_memory_mb: int = Field(default=512, ge=32, le=65_536)
    """Memory (address space) limit of one plugin call, in MiB."""

    plugin_concurrency: int = Field(default=4, ge=1, le=256)
    """Plugin calls this process runs at once."""

    plugin_require_network_isolation: bool = False
    """Refuse to call a plugin without the ``network`` permission when this host cannot run it in a network
    namespace of its own (by default it then runs without one)."""
