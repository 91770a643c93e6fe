"""Settings shared by every service; each service subclasses with its own ``STELLA_<SERVICE>_`` prefix."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class ServiceSettings(BaseSettings):
    """Connection and runtime settings every service has.

    The shared connection settings (``STELLA_DATABASE_URL``, ``STELLA_NATS_URL``, ``STELLA_NATS_NAMESPACE``,
    ``STELLA_LOG_LEVEL``) are the same variables for every service; the other fields take the service's prefix.
    """

    model_config = SettingsConfigDict(env_prefix="STELLA_", extra="ignore", frozen=True)

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("database_url", "STELLA_DATABASE_URL"),
    )
    """PostgreSQL DSN; the service only touches its own schema in that database."""

    nats_url: str = Field(
        default=DEFAULT_NATS_URL,
        validation_alias=AliasChoices("nats_url", "STELLA_NATS_URL"),
    )
    """NATS server URL(s), comma separated; JetStream must be enabled."""

    nats_namespace: str = Field(
        default="",
        pattern=r"^([a-z0-9][a-z0-9-]{0,31})?$",
        validation_alias=AliasChoices("nats_namespace", "STELLA_NATS_NAMESPACE"),
    )
    """Puts the installation's subjects under ``stella.<namespace>.`` (empty: the plain contract subjects)."""

    db_pool_size: int = Field(default=20, ge=1, le=200)
    """Maximum connections in the service's asyncpg pool."""

    log_level: str = Field(default="INFO", validation_alias=AliasChoices("log_level", "STELLA_LOG_LEVEL"))
    """Root log level (DEBUG, INFO, WARNING...)."""

    max_deliver: int = Field(default=5, ge=1, le=100)
    """Failures of a message (its poison budget) before it goes to the dead-letter subject. Transient faults
    (a database or NATS outage, see :mod:`stella.kit.faults`) do not count."""

    delivery_limit: int = Field(default=100, ge=10, le=10_000)
    """Deliveries JetStream makes of one message at most (the consumer's ``max_deliver``). Only a crash or a
    stall redelivers a message that is not failing, so this is a last resort against a message that kills its
    handler: the kit dead-letters a message delivered this often (less one) before JetStream would give up
    on it without a trace."""

    ack_wait_s: float = Field(default=30.0, gt=0)
    """Seconds JetStream waits for an ack before redelivering."""

    redelivery_backoff_s: float = Field(default=1.0, ge=0)
    """Base delay of a negative ack; grows with the number of failures."""

    fault_retry_base_s: float = Field(default=0.2, gt=0)
    """First delay before a message that hit a transient fault is tried again; it doubles on every retry."""

    fault_retry_max_s: float = Field(default=5.0, gt=0)
    """Longest delay between two tries of a message during an outage. The consumer tells JetStream it is still
    working on the message before each wait, so the delay never exceeds half of ``ack_wait_s`` either."""

    max_in_flight: int = Field(default=64, ge=1, le=10_000)
    """Messages one consumer handles at once (bounds memory and pool pressure)."""

    outbox_batch_size: int = Field(default=200, ge=1, le=10_000)
    """Events the outbox relay publishes per round."""

    outbox_poll_s: float = Field(default=1.0, gt=0)
    """Fallback poll interval of the relay; LISTEN/NOTIFY wakes it sooner."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Prometheus ``/metrics`` endpoint; none when unset."""
