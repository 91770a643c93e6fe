"""Settings of the gateway (environment prefix ``STELLA_GATEWAY_``)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from stella.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Gateway settings; the connection settings (``STELLA_DATABASE_URL``, ``STELLA_NATS_URL``) are shared."""

    model_config = SettingsConfigDict(env_prefix="STELLA_GATEWAY_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    """Address the HTTP server listens on (``0.0.0.0`` to listen on every interface)."""

    port: int = Field(default=8080, ge=0, le=65535)
    """TCP port of the HTTP server."""

    command_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """Seconds a command's result is awaited; after that the request answers 503 ``SYS_PENDING``
    (the command stays queued and a retry with the same ``Idempotency-Key`` gets its result)."""

    query_timeout_s: float = Field(default=5.0, gt=0, le=120)
    """Seconds a read is awaited before the request answers 503 ``SYS_UNAVAILABLE``."""

    export_timeout_s: float = Field(default=60.0, gt=0, le=600)
    """Seconds an evidence export is awaited: the evidence service builds and stores the whole bundle before
    it answers, which takes longer than a read (then 503 ``SYS_UNAVAILABLE``)."""

    public_url: str | None = None
    """The URL clients reach the gateway at (e.g. ``https://stella.example.com``): the OpenAPI ``servers``
    entry and the base of ``Location`` headers. Relative ``Location`` headers when unset."""

    token_cache_ttl_s: float = Field(default=5.0, ge=0, le=60)
    """Seconds a looked-up API token is cached; a revocation made on another replica takes effect within
    this time (at once on the replica that revoked). 0 looks every request's token up."""

    token_cache_size: int = Field(default=10_000, ge=1, le=1_000_000)
    """Tokens kept in the authentication cache at most."""

    token_touch_interval_s: float = Field(default=30.0, gt=0, le=3600)
    """Seconds between the batched writes of tokens' ``last_used_at``."""

    idempotency_ttl_s: float = Field(default=24 * 3600, gt=0)
    """Seconds an ``Idempotency-Key`` and its stored response are kept."""

    idempotency_lock_s: float = Field(default=120.0, gt=0)
    """Seconds a request holds its idempotency key before a retry may take over (the first request died)."""

    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest request body accepted; larger bodies answer 413."""

    stream_heartbeat_s: float = Field(default=15.0, ge=1, le=300)
    """Seconds of silence on a live event stream (``/api/v1/events/stream``) before a keep-alive comment."""

    stream_max_clients: int = Field(default=1000, ge=1, le=100_000)
    """Live event streams one gateway keeps open at once; more answer 503 ``SYS_STREAM_LIMIT``."""

    agent_poll_max_s: float = Field(default=30.0, ge=0, le=300)
    """Longest an agent's task feed request waits for a task (its ``wait`` is cut to this)."""

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None
