"""Settings of the deployment service (environment prefix ``STELLA_DEPLOYMENT_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from stella.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Deployment service settings."""

    model_config = SettingsConfigDict(env_prefix="STELLA_DEPLOYMENT_", extra="ignore", frozen=True)

    heartbeat_interval_s: float = Field(default=30.0, gt=0, le=3600)
    """Seconds between an agent's heartbeats (told to each agent when it registers); 3 missed -> ``offline``."""

    task_poll_timeout_s: float = Field(default=20.0, gt=0, le=300)
    """Longest an agent's task feed request waits for work before answering empty (told to each agent)."""

    lease_s: float = Field(default=90.0, gt=0, le=86_400)
    """Seconds a leased task stays with its agent without a heartbeat, log chunk or result naming it; then it
    goes back to the queue for another lease (a new attempt)."""

    max_log_lines_per_task: int = Field(default=5000, ge=10, le=1_000_000)
    """Log lines kept per task; later lines are dropped and the task is marked ``logs_truncated``."""

    max_tasks_per_poll: int = Field(default=100, ge=1, le=100)
    """Most tasks one poll of the task feed leases to an agent (an agent asks for as many as it has free slots)."""

    timer_batch_size: int = Field(default=200, ge=1, le=10_000)
    """Due items (silent agents, expired leases, deadlines, paused batches) handled per transaction."""

    timer_max_sleep_s: float = Field(default=30.0, gt=0, le=3600)
    """Longest the timer sleeps without re-reading the next due time."""

    dependency_timeout_s: float = Field(default=5.0, gt=0, le=120)
    """Seconds to wait for the promotion and release services when a job is planned or a target created."""

    job_sweep_s: float = Field(default=30.0, gt=0, le=3600)
    """Seconds between looks at every running job, moving one whose last task ended while the process that
    recorded it stopped before moving the job."""

    drift_check_interval_s: float = Field(default=3600.0, ge=0, le=30 * 86_400)
    """Seconds between scheduled drift inspections of a deployed target (0: only on demand)."""
