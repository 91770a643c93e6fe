"""Helpers for tests that run Stella services: a NATS namespace per test, and a caller playing one tenant.

A service started with ``nats_namespace=<ns>`` declares its streams as ``<NAME>_<NS>`` (see
:class:`stella.kit.naming.Names`), and JetStream object stores and key-value buckets named the same way live in
streams ``OBJ_<bucket>`` / ``KV_<bucket>``. :func:`delete_namespace_streams` removes all of these once the test
is over, and nothing of any other namespace.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any, Self, TypeVar, cast

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamInfo, StreamsListIterator
from nats.js.errors import NotFoundError

from stella.contracts.envelope import Command, Message, Query, Reply
from stella.contracts.streams import ALL_STREAMS
from stella.kit.broker import ServiceClient
from stella.kit.naming import Names

M = TypeVar("M", bound=Message)

# The streams behind JetStream buckets: ``OBJ_<bucket>`` capturing ``$O.<bucket>.>``, ``KV_<bucket>`` ``$KV.<bucket>.>``.
_BUCKET_STREAMS = (("OBJ_", "$O"), ("KV_", "$KV"))

# Deleting while paging through the stream list (other sessions may share the server) can skip a stream;
# the list is read again until it shows none of the namespace's, a few times at most.
_DELETE_PASSES = 5


def namespace_stream_suffix(names: Names) -> str:
    """Return what :meth:`Names.stream` appends to a stream's name in ``names``' namespace.

    Args:
        names: A non-empty namespace.

    Returns:
        The suffix, e.g. ``_T1A2B`` for the namespace ``t1a2b``.

    Raises:
        ValueError: for the empty namespace, whose streams carry no suffix at all.
    """
    if not names.namespace:
        raise ValueError("the empty namespace has no stream suffix")
    spec = ALL_STREAMS[0]
    return names.stream(spec).removeprefix(spec.name)


def owns_stream(names: Names, info: StreamInfo) -> bool:
    """Tell whether a stream belongs to ``names``' namespace.

    A stream does when its name ends with the namespace's suffix and it captures only subjects of the
    namespace; a bucket's stream when its name ends with the suffix and it captures only its bucket's subjects.

    Args:
        names: A non-empty namespace.
        info: The stream, as JetStream lists it.

    Returns:
        True for a stream of this namespace.
    """
    name = info.config.name or ""
    subjects = info.config.subjects or []
    if not name.endswith(namespace_stream_suffix(names)) or not subjects:
        return False
    for prefix, root in _BUCKET_STREAMS:
        if name.startswith(prefix):
            return all(subject.startswith(f"{root}.{name.removeprefix(prefix)}.") for subject in subjects)
    # The name alone cannot tell the namespace "t1" from "x-t1" (both end in "_T1"); the subjects can.
    wire_prefix = names.subject("stella.>").removesuffix(">")
    return all(subject.startswith(wire_prefix) for subject in subjects)


async def _list_streams(js: JetStreamContext) -> list[StreamInfo]:
    streams: list[StreamInfo] = []
    while True:
        # Annotated as a plain iterable, it is a page that also tells the total number of streams.
        page = cast(StreamsListIterator, await js.streams_info_iterator(offset=len(streams)))
        batch = list(page)
        streams.extend(batch)
        if not batch or len(streams) >= page.total:
            return streams


async def delete_namespace_streams(js: JetStreamContext, names: Names) -> list[str]:
    """Delete every stream of ``names``' namespace, with its consumers, object stores and key-value buckets.

    Args:
        js: A JetStream context.
        names: A non-empty namespace.

    Returns:
        The names of the deleted streams.

    Raises:
        ValueError: for the empty namespace, which would name streams of real installations.
    """
    namespace_stream_suffix(names)  # refuses the empty namespace before anything is listed
    deleted: list[str] = []
    for _ in range(_DELETE_PASSES):
        owned = [info.config.name for info in await _list_streams(js) if owns_stream(names, info)]
        if not owned:
            break
        for name in owned:
            if name is not None:
                with suppress(NotFoundError):
                    await js.delete_stream(name)
                deleted.append(name)
    return deleted


@asynccontextmanager
async def service_client(nats: Client, names: Names) -> AsyncIterator[ServiceClient]:
    """Run a :class:`ServiceClient` on ``nats`` in ``names``' namespace for the duration of the block.

    Args:
        nats: A connected client.
        names: The namespace of the services to call.

    Yields:
        The started client; it is stopped when the block ends.
    """
    client = ServiceClient(nats, nats.jetstream(), names=names)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


@dataclass
class TenantCaller:
    """Sends commands and queries to services as one tenant, exactly as the gateway and other services do.

    Subclass it to add a service's own helpers; :meth:`other_tenant` and :meth:`acting_as` keep the subclass
    and its fields.
    """

    client: ServiceClient
    """The started client the messages go through."""
    _: KW_ONLY
    tenant_id: uuid.UUID = field(default_factory=uuid.uuid4)
    """The tenant every message is sent as."""
    actor_id: uuid.UUID | None = None
    """The principal commands are sent on behalf of (unless a command names one); None sends none."""
    query_timeout: float | None = None
    """Seconds a query waits for its answer; None keeps the client's default."""

    def message(self, model: type[M], **fields: Any) -> M:
        """Build a message of this tenant, with a correlation id of its own.

        Args:
            model: The message class.
            fields: Its other fields.

        Returns:
            The message.
        """
        return model(tenant_id=self.tenant_id, correlation_id=uuid.uuid4(), **fields)

    async def command(self, subject: str, model: type[Command], **fields: Any) -> Reply:
        """Send a command and wait for its reply.

        Args:
            subject: The command's contract subject.
            model: The command class.
            fields: Its fields besides tenant, correlation and (by default) actor.

        Returns:
            The service's reply.
        """
        if self.actor_id is not None:
            fields.setdefault("actor_id", self.actor_id)
        return await self.client.command(subject, self.message(model, **fields))

    async def query(self, subject: str, model: type[Query], **fields: Any) -> Reply:
        """Ask a query and wait for its answer.

        Args:
            subject: The query's contract subject.
            model: The query class.
            fields: Its fields besides tenant and correlation.

        Returns:
            The service's reply.
        """
        query = self.message(model, **fields)
        if self.query_timeout is None:
            return await self.client.query(subject, query)
        return await self.client.query(subject, query, timeout=self.query_timeout)

    def other_tenant(self) -> Self:
        """Return this caller as a tenant of its own; one acting as a principal acts as a new principal there."""
        actor_id = None if self.actor_id is None else uuid.uuid4()
        return replace(self, tenant_id=uuid.uuid4(), actor_id=actor_id)

    def acting_as(self, actor_id: uuid.UUID) -> Self:
        """Return this caller sending commands on behalf of the principal ``actor_id``."""
        return replace(self, actor_id=actor_id)
