"""Settings of the approval service (environment prefix ``STELLA_APPROVAL_``)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from stella.approval.domain import DEFAULT_APPROVAL_TIMEOUT
from stella.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Approval service settings."""

    model_config = SettingsConfigDict(env_prefix="STELLA_APPROVAL_", extra="ignore", frozen=True)

    approval_timeout_s: float = Field(default=DEFAULT_APPROVAL_TIMEOUT.total_seconds(), gt=0, le=30 * 86_400)
    """Seconds an approval request stays open before it expires, which denies it (7 days by default).

    Keep it below the approval step's own timeout in the workflow template (7 days and an hour for
    ``standard-promotion``), so the request's expiry, with its votes, decides the step rather than the backstop.
    """

    expiry_batch_size: int = Field(default=100, ge=1, le=10_000)
    """Expired requests handled per transaction by the expiry timer."""

    timer_max_sleep_s: float = Field(default=60.0, gt=0, le=3600)
    """Longest the expiry timer sleeps without re-reading the next expiry (bounds a missed wake-up, e.g. a
    request opened by another replica)."""

    @property
    def approval_timeout(self) -> timedelta:
        """The approval timeout as a duration."""
        return timedelta(seconds=self.approval_timeout_s)
