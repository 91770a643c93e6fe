"""The live stream of a tenant's public events as Server-Sent Events, read from the public JetStream stream.

Each client gets an ephemeral pull consumer of ``STELLA_PUBLIC`` filtered on its own tenant's subjects
(``stella.public.<tenant>.>``; narrower when it asks for one type or one context), so the tenant comes from the
token and another tenant's events are never read. Pulling keeps a slow client from piling up events in the
gateway: the next batch is fetched only when the previous one was written.

Every event goes out as::

    id: <sequence of the event in the public stream>
    event: <its type>
    data: <the CloudEvent as JSON>

A client that reconnects with ``Last-Event-ID: <id>`` (or ``?last_event_id=``) gets every event after that one,
none twice: the consumer starts at the next sequence, and filtered-out events are skipped, never counted.
``Last-Event-ID: 0`` replays the whole retention of the stream. Idle streams get a ``: keep-alive`` comment
every ``stream_heartbeat_s`` seconds, so proxies keep them open and a gone client is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from stella.contracts.public import (
    PUBLIC,
    PUBLIC_PREFIX,
    public_subject,
    related_resources,
    tenant_subjects,
    type_filter_matches,
)
from stella.gateway.problems import ProblemError
from stella.kit.naming import Names

log = logging.getLogger(__name__)

MEDIA_TYPE: Final[str] = "text/event-stream"
"""Media type of the live stream."""

MAX_EVENT_ID: Final[int] = 2**63 - 1
"""Largest id an event can have (a JetStream sequence)."""

_EVENT_ID: Final = re.compile(r"^[0-9]{1,19}$")
_BATCH: Final[int] = 64


def parse_last_event_id(value: str | None) -> int | None:
    """Read a ``Last-Event-ID``: the decimal id of the last event a client received.

    Raises:
        ProblemError: 400 ``VAL_INVALID_LAST_EVENT_ID`` for anything but such an id.
    """
    if value is None:
        return None
    text = value.strip()
    if not _EVENT_ID.match(text) or int(text) > MAX_EVENT_ID:
        raise ProblemError(
            400,
            "VAL_INVALID_LAST_EVENT_ID",
            "Last-Event-ID must be the id of an event this stream sent (a decimal number), or 0 for the oldest kept.",
            errors=[{"loc": ["header", "Last-Event-ID"], "msg": "the decimal id of an event"}],
        )
    return int(text)


@dataclass
class StreamFilter:
    """What a client asked for: event types (exact or ``org.stellaops.<context>.*``) and a resource."""

    types: Sequence[str] = ()
    resource: str | None = None

    def subject(self, tenant_id: uuid.UUID) -> str:
        """The narrowest subject covering the filter within the tenant's tree."""
        if len(self.types) == 1:
            (only,) = self.types
            if only.endswith(".*"):
                context = only.removeprefix("org.stellaops.").removesuffix(".*")
                return f"{PUBLIC_PREFIX}.{tenant_id}.{context}.>"
            return public_subject(tenant_id, only)
        return tenant_subjects(tenant_id)

    def matches(self, event: dict[str, Any]) -> bool:
        """Whether a received event passes the filter."""
        event_type = event.get("type")
        if not isinstance(event_type, str):
            return False
        try:
            if not type_filter_matches(self.types, event_type):
                return False
            if self.resource is None:
                return True
            return self.resource in related_resources(event_type, event.get("data") or {})
        except (KeyError, ValueError, ValidationError):
            return False  # a type this gateway does not know yet cannot be matched to a resource


def sse(event_id: int, event_type: str, data: str) -> bytes:
    """One Server-Sent Event."""
    return f"id: {event_id}\nevent: {event_type}\ndata: {data}\n\n".encode()


@dataclass
class EventStreams:
    """Opens live streams of public events; at most ``max_clients`` at once in this gateway.

    Args:
        js: The gateway's JetStream context.
        names: The installation's namespace.
        heartbeat_s: Seconds of silence after which a keep-alive comment is sent.
        max_clients: Streams open at once, at most.
    """

    js: JetStreamContext
    names: Names
    heartbeat_s: float = 15.0
    max_clients: int = 1000
    open_streams: int = field(default=0, init=False)

    async def open(self, tenant_id: uuid.UUID, flt: StreamFilter, last_event_id: int | None) -> AsyncIterator[bytes]:
        """Check ``last_event_id`` against the stream, create the consumer and return the event stream.

        Raises:
            ProblemError: 400 ``VAL_INVALID_LAST_EVENT_ID`` for an id beyond the stream's last event; 410
                ``RES_EVENTS_EXPIRED`` when events after it are no longer kept; 503 when too many streams
                are open or NATS does not answer.
        """
        if self.open_streams >= self.max_clients:
            raise ProblemError(
                503, "SYS_STREAM_LIMIT", "Too many live streams are open; retry later.", headers={"Retry-After": "5"}
            )
        stream = self.names.stream(PUBLIC)
        try:
            info = await self.js.stream_info(stream)
        except (nats.errors.Error, TimeoutError) as exc:
            raise ProblemError(503, "SYS_UNAVAILABLE", "The event stream does not answer; retry later.") from exc
        config = ConsumerConfig(
            name=f"sse-{uuid.uuid4().hex}",
            filter_subject=self.names.subject(flt.subject(tenant_id)),
            ack_policy=AckPolicy.NONE,
            inactive_threshold=max(60.0, self.heartbeat_s * 4),
            mem_storage=True,
            max_waiting=1,
        )
        if last_event_id is None:
            config.deliver_policy = DeliverPolicy.NEW
        else:
            last = info.state.last_seq
            first = info.state.first_seq
            if last_event_id > last:
                raise ProblemError(
                    400,
                    "VAL_INVALID_LAST_EVENT_ID",
                    f"Last-Event-ID {last_event_id} is beyond the last event of the stream ({last}).",
                    errors=[{"loc": ["header", "Last-Event-ID"], "msg": "not an id this stream sent"}],
                )
            if last_event_id + 1 < first and info.state.messages > 0:
                raise ProblemError(
                    410,
                    "RES_EVENTS_EXPIRED",
                    f"Events after {last_event_id} are no longer kept (the oldest kept is {first}); read what you "
                    "missed from GET /api/v1/events and reconnect without Last-Event-ID.",
                )
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(last_event_id + 1, first, 1)
        try:
            await self.js.add_consumer(stream, config=config)
            subscription = await self.js.pull_subscribe_bind(consumer=config.name, stream=stream)
        except (nats.errors.Error, TimeoutError) as exc:
            raise ProblemError(503, "SYS_UNAVAILABLE", "The event stream does not answer; retry later.") from exc
        self.open_streams += 1
        return self._events(stream, config.name or "", subscription, flt)

    async def _events(self, stream: str, consumer: str, subscription: Any, flt: StreamFilter) -> AsyncIterator[bytes]:
        try:
            yield b": stream open\nretry: 2000\n\n"
            while True:
                try:
                    messages = await subscription.fetch(_BATCH, timeout=self.heartbeat_s)
                except (nats.errors.TimeoutError, TimeoutError):
                    yield b": keep-alive\n\n"
                    continue
                for msg in messages:
                    if msg.metadata is None or msg.metadata.sequence is None:
                        continue  # a status message, not an event
                    try:
                        event = json.loads(msg.data)
                    except ValueError:
                        log.error("a public event is not JSON", extra={"subject": msg.subject})
                        continue
                    if flt.matches(event):
                        yield sse(msg.metadata.sequence.stream, event["type"], msg.data.decode())
        finally:
            self.open_streams -= 1
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
            with contextlib.suppress(NotFoundError, nats.errors.Error, TimeoutError, asyncio.CancelledError):
                await self.js.delete_consumer(stream, consumer)
