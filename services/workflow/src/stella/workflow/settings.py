"""Settings of the workflow service (environment prefix ``STELLA_WORKFLOW_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

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
