"""The running gateway's dependencies, in one object built by :func:`stella.gateway.app.create_app`.

Middleware and route handlers read them from here (handlers through Litestar's dependency injection); the
object is filled in when the application starts and emptied when it stops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import asyncpg
from nats.aio.client import Client as NatsClient

from stella.gateway.agents import TaskNotices
from stella.gateway.auth import Authenticator
from stella.gateway.exports import BundleReader
from stella.gateway.idempotency import IdempotencyPolicy
from stella.gateway.relay import Relay
from stella.gateway.settings import Settings
from stella.gateway.store import GatewayStore
from stella.gateway.streams import EventStreams
from stella.kit.deadletters import DeadLetterStore
from stella.kit.errors import TransientFault

T = TypeVar("T")


class NotStartedError(TransientFault, RuntimeError):
    """A dependency was used before the application started (or after it stopped): a 503, retry later."""


@dataclass
class Runtime:
    """What a running gateway uses; ``None`` until the application's start-up filled it in.

    Attributes:
        settings: The gateway's settings.
        clock: Current UTC time; tests pass their own through ``create_app(overrides=...)``.
        pool: The asyncpg pool on the ``gateway`` schema.
        nats: The NATS connection.
        store: SQL of the gateway's schema.
        authenticator: Bearer-token authentication.
        relay: Commands and queries to services.
        idempotency: What the idempotency middleware needs.
        exports: Reads evidence export bundles from the object store.
        dead_letters: Reads and replays the dead letters of the installation.
        event_streams: Opens live streams of public events.
        task_notices: Wakes agents' long-polled task feeds.
    """

    settings: Settings
    clock: Callable[[], datetime]
    pool: asyncpg.Pool | None = None
    nats: NatsClient | None = None
    store: GatewayStore | None = None
    authenticator: Authenticator | None = None
    relay: Relay | None = None
    idempotency: IdempotencyPolicy | None = None
    exports: BundleReader | None = None
    dead_letters: DeadLetterStore | None = None
    event_streams: EventStreams | None = None
    task_notices: TaskNotices | None = None

    def get_store(self) -> GatewayStore:
        """The store; raises :class:`NotStartedError` before start-up."""
        return _started(self.store, "store")

    def get_authenticator(self) -> Authenticator:
        """The authenticator; raises :class:`NotStartedError` before start-up."""
        return _started(self.authenticator, "authenticator")

    def get_relay(self) -> Relay:
        """The relay; raises :class:`NotStartedError` before start-up."""
        return _started(self.relay, "relay")

    def get_idempotency(self) -> IdempotencyPolicy:
        """The idempotency policy; raises :class:`NotStartedError` before start-up."""
        return _started(self.idempotency, "idempotency policy")

    def get_event_streams(self) -> EventStreams:
        """The live event streams; raises :class:`NotStartedError` before start-up."""
        return _started(self.event_streams, "event streams")

    def get_task_notices(self) -> TaskNotices:
        """The task feed wake-ups; raises :class:`NotStartedError` before start-up."""
        return _started(self.task_notices, "task notices")

    def get_exports(self) -> BundleReader:
        """The export bundle reader; raises :class:`NotStartedError` before start-up."""
        return _started(self.exports, "export bundle reader")

    def get_dead_letters(self) -> DeadLetterStore:
        """The dead-letter store; raises :class:`NotStartedError` before start-up."""
        return _started(self.dead_letters, "dead-letter store")


def _started(value: T | None, what: str) -> T:
    if value is None:
        raise NotStartedError(f"the gateway's {what} is not available: the application is not running")
    return value
