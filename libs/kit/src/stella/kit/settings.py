"""Settings shared by every service; each service subclasses with its own ``STELLA_<SERVICE>_`` prefix."""

from __future__ import annotations

from typing import Literal
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

_DATABASE_SCHEMES = ("postgresql", "postgres")
_NATS_SCHEMES = ("nats", "tls", "ws", "wss")

PoolMode = Literal["session", "transaction"]
"""How ``STELLA_DATABASE_URL`` reaches Postgres: ``session`` (directly, or a pooler in session mode) or
``transaction`` (PgBouncer in transaction pooling mode)."""


def database_host(dsn: str) -> str | None:
    """The server a ``postgresql://`` URL names: its host, or the absolute directory of a ``?host=`` Unix socket.

    None when it names neither (libpq's spelling of a socket, ``postgresql://user@/db?host=/run/postgresql``,
    is the only host-less form accepted: connections then skip TCP, which on one machine costs less per round
    trip than the loopback interface).
    """
    parts = urlsplit(dsn)
    if parts.hostname:
        return parts.hostname
    socket_dirs = [d for d in parse_qs(parts.query).get("host", []) if d.startswith("/")]
    return socket_dirs[0] if socket_dirs else None


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

    database_direct_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("database_direct_url", "STELLA_DATABASE_DIRECT_URL"),
    )
    """A DSN that reaches Postgres without a transaction pooler, for the work that needs a session of its own:
    migrations at start (a session advisory lock) and the outbox relay (its leader lock and ``LISTEN``).
    Unset: ``database_url`` is used for that too."""

    database_pool_mode: PoolMode = Field(
        default="session",
        validation_alias=AliasChoices("database_pool_mode", "STELLA_DATABASE_POOL_MODE"),
    )
    """``session`` when ``database_url`` reaches Postgres directly; ``transaction`` when it goes through PgBouncer
    in transaction pooling mode. Then the pool keeps no prepared statements and sends no ``search_path``: the
    pooler must set it (one pooler database per service whose ``connect_query`` sets it, or a per-service role
    with its own ``search_path``), and ``database_direct_url`` is required."""

    database_service_roles: bool = Field(
        default=False,
        validation_alias=AliasChoices("database_service_roles", "STELLA_DATABASE_SERVICE_ROLES"),
    )
    """Connect as the service's own login role (``<database_role_prefix><schema>``, e.g. ``stella_evidence``)
    instead of the user of ``database_url``, which then only runs the migrations (it must own the schemas and
    may create roles). The role gets exactly the grants the service declares (:mod:`stella.kit.roles`)."""

    database_role_prefix: str = Field(
        default="stella_",
        pattern=r"^[a-z_][a-z0-9_]{0,30}$",
        validation_alias=AliasChoices("database_role_prefix", "STELLA_DATABASE_ROLE_PREFIX"),
    )
    """Prefix of the services' login roles."""

    database_password: SecretStr | None = None
    """Password of the service's login role (``STELLA_<SERVICE>_DATABASE_PASSWORD``), when Postgres asks for
    one; the migration step sets it on the role."""

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

    nats_stream_replicas: int = Field(
        default=1, ge=1, le=5, validation_alias=AliasChoices("nats_stream_replicas", "STELLA_NATS_STREAM_REPLICAS")
    )
    """Copies JetStream keeps of each stream: 1 on a single server, 3 in a three-node NATS cluster."""

    db_pool_size: int = Field(default=10, ge=1, le=200)
    """Maximum connections in the service's asyncpg pool.

    The budget on one Postgres: seven pools (six services and the gateway) of 10, plus one connection per
    service for its outbox relay and two listeners, is about 80, below Postgres's default
    ``max_connections`` of 100 (the embedded server's too). Raise it only with ``max_connections``, or put
    PgBouncer in front (``STELLA_DATABASE_POOL_MODE=transaction``)."""

    query_workers: int | None = Field(default=None, ge=1, le=200)
    """Queries one replica answers at once (``STELLA_<SERVICE>_QUERY_WORKERS``); unset: the service's own
    default. Each holds a pool connection while it reads; at most ``db_pool_size`` read at once, and any
    above wait for a connection beside the commands and events."""

    db_pool_min_size: int = Field(default=2, ge=0, le=200)
    """Connections the pool opens at start and keeps (at most ``db_pool_size``): a burst then does not start
    by opening connections."""

    log_level: str = Field(default="INFO", validation_alias=AliasChoices("log_level", "STELLA_LOG_LEVEL"))
    """Root log level (DEBUG, INFO, WARNING...)."""

    startup_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, validation_alias=AliasChoices("startup_timeout_s", "STELLA_STARTUP_TIMEOUT_S")
    )
    """Seconds a starting process waits for a configured Postgres and NATS to answer before it exits (code 69)."""

    event_loop: Literal["asyncio", "uvloop"] = Field(
        default="uvloop", validation_alias=AliasChoices("event_loop", "STELLA_EVENT_LOOP")
    )
    """The event loop the process runs on: ``uvloop`` (libuv; falls back to ``asyncio`` where uvloop is not
    installed) or ``asyncio`` (the standard library's). The services do the same work on both; uvloop spends
    less CPU per socket round trip (docs/performance.md)."""

    migrate_on_start: bool = Field(
        default=True, validation_alias=AliasChoices("migrate_on_start", "STELLA_MIGRATE_ON_START")
    )
    """Apply the schema's migrations at start. False where a migration job does it first (containers): the
    process then only checks that every migration it needs is applied, waiting up to ``startup_timeout_s``."""

    health_port: int | None = Field(
        default=None, ge=0, le=65535, validation_alias=AliasChoices("health_port", "STELLA_HEALTH_PORT")
    )
    """Port of the HTTP probes of a headless service on every interface: ``/healthz`` (the process answers),
    ``/readyz`` (its database and NATS answer) and ``/metrics``. None: no probe server (``make run``)."""

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

    @field_validator("database_url", "database_direct_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if urlsplit(value).scheme not in _DATABASE_SCHEMES or database_host(value) is None:
            raise ValueError(
                "must be a postgresql://user:password@host:port/database URL, or "
                "postgresql://user@/database?host=/run/postgresql for a server's Unix socket directory"
            )
        return value

    @field_validator("nats_url")
    @classmethod
    def _check_nats_url(cls, value: str) -> str:
        servers = [url.strip() for url in value.split(",") if url.strip()]
        if not servers:
            raise ValueError("must name at least one server, e.g. nats://nats:4222")
        for url in servers:
            parts = urlsplit(url)
            if parts.scheme not in _NATS_SCHEMES or not parts.hostname:
                raise ValueError(f"{url!r} is not a nats://host:port URL")
        return value

    @model_validator(mode="after")
    def _direct_url_when_pooled(self) -> ServiceSettings:
        if self.database_pool_mode == "transaction" and not self.database_direct_url:
            raise ValueError(
                "STELLA_DATABASE_POOL_MODE=transaction needs STELLA_DATABASE_DIRECT_URL (a connection that bypasses "
                "the pooler, for migrations and the outbox relay)"
            )
        return self

    def service_role(self, schema: str) -> str | None:
        """The login role the service connects as, or ``None`` when it uses ``database_url``'s user."""
        return f"{self.database_role_prefix}{schema}" if self.database_service_roles else None

    @property
    def role_password(self) -> str | None:
        """The service role's password in clear, for the connection that sets or uses it."""
        return self.database_password.get_secret_value() if self.database_password is not None else None

    def as_service(self, dsn: str, schema: str) -> str:
        """``dsn`` with the service's login role and password in place of its user, when roles are on."""
        role = self.service_role(schema)
        if role is None:
            return dsn
        parts = urlsplit(dsn)
        host = parts.netloc.rsplit("@", 1)[-1]
        secret = self.role_password
        userinfo = quote(role, safe="") + (f":{quote(secret, safe='')}" if secret else "")
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))

    @property
    def direct_database_url(self) -> str:
        """The DSN for session-level work: ``database_direct_url``, else ``database_url``."""
        return self.database_direct_url or self.database_url

    @property
    def nats_servers(self) -> list[str]:
        """The NATS server URLs of ``nats_url``."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]
