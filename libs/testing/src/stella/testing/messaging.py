"""NATS helpers for tests: isolated names on a shared server, and awaiting messages without sleeping.

Several test sessions may share one NATS server, and JetStream refuses two streams whose subjects
overlap. A :class:`NatsNamespace` gives each test its own subject prefix and stream names, and deletes the
streams it created when the test ends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import StreamInfo
from nats.js.errors import NotFoundError


def unique_token() -> str:
    """Return a short random token usable in subjects, stream and consumer names, and database names."""
    return uuid.uuid4().hex[:12]


class MessageCollector:
    """Messages received on a subscription, and a way to await a number of them.

    Obtained from :func:`collect_messages`, which subscribes before the test acts, so no message published
    afterwards can be missed.
    """

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.messages: list[Msg] = []
        self._arrived = asyncio.Event()

    async def _receive(self, msg: Msg) -> None:
        self.messages.append(msg)
        self._arrived.set()

    async def wait(self, count: int = 1, timeout: float = 10.0) -> list[Msg]:
        """Wait until at least ``count`` messages have arrived.

        Args:
            count: How many messages to wait for.
            timeout: Seconds to wait in total.

        Returns:
            The first ``count`` messages, in arrival order.

        Raises:
            TimeoutError: when fewer than ``count`` messages arrived in time.
        """
        try:
            async with asyncio.timeout(timeout):
                while len(self.messages) < count:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise TimeoutError(
                f"received {len(self.messages)} of {count} messages on {self.subject!r} within {timeout}s"
            ) from None
        return self.messages[:count]


@asynccontextmanager
async def collect_messages(client: Client | JetStreamContext, subject: str) -> AsyncIterator[MessageCollector]:
    """Subscribe to ``subject`` for the duration of the block and collect what arrives.

    With a JetStream context an ephemeral ordered consumer is used, so messages already stored in the
    stream that covers ``subject`` are delivered too; with a plain client only messages published after
    subscribing arrive.

    Args:
        client: A connected client (core NATS) or its JetStream context.
        subject: Subject or wildcard to listen on.

    Yields:
        The collector; await :meth:`MessageCollector.wait` inside the block.
    """
    collector = MessageCollector(subject)
    subscription: Subscription
    if isinstance(client, JetStreamContext):
        subscription = await client.subscribe(subject, cb=collector._receive, ordered_consumer=True)
    else:
        subscription = await client.subscribe(subject, cb=collector._receive)
        # A round trip guarantees the server registered the interest before the test publishes.
        await client.flush()
    try:
        yield collector
    finally:
        await subscription.unsubscribe()


async def wait_for_messages(
    client: Client | JetStreamContext, subject: str, count: int = 1, timeout: float = 10.0
) -> list[Msg]:
    """Wait for ``count`` messages on ``subject``.

    With a JetStream context this replays the stream, so it also finds messages published before the
    call. With a plain client it sees only later messages; to wait for the effect of an action, use
    :func:`collect_messages` around the action instead.

    Args:
        client: A connected client (core NATS) or its JetStream context.
        subject: Subject or wildcard to listen on.
        count: How many messages to wait for.
        timeout: Seconds to wait in total.

    Returns:
        The first ``count`` messages, in order.

    Raises:
        TimeoutError: when fewer than ``count`` messages arrived in time.
    """
    async with collect_messages(client, subject) as collector:
        return await collector.wait(count, timeout)


class NatsNamespace:
    """Unique subjects and stream names for one test, on a server other tests may share.

    Args:
        client: A connected client.
        token: The unique part of every name; random when None.
    """

    def __init__(self, client: Client, token: str | None = None) -> None:
        self.client = client
        self.jetstream = client.jetstream()
        self.token = token or unique_token()
        self._streams: list[str] = []

    @property
    def prefix(self) -> str:
        """The subject prefix owned by this test, ``test.<token>``."""
        return f"test.{self.token}"

    def subject(self, *tokens: str) -> str:
        """Return a subject under this test's prefix, e.g. ``subject("evt", "x")`` -> ``test.<token>.evt.x``.

        Args:
            tokens: Subject tokens to append; none gives the prefix itself.

        Returns:
            The subject.
        """
        return ".".join((self.prefix, *tokens))

    def name(self, base: str = "TEST") -> str:
        """Return a stream, consumer or bucket name unique to this test, ``<base>_<token>``.

        Args:
            base: A readable stem.

        Returns:
            The name.
        """
        return f"{base}_{self.token}"

    async def add_stream(
        self, *, name: str | None = None, subjects: Sequence[str] | None = None, **config: Any
    ) -> StreamInfo:
        """Create a stream that is deleted when the test ends.

        Args:
            name: Stream name; :meth:`name` when None.
            subjects: Subjects it captures; everything under :attr:`prefix` when None.
            config: Further ``StreamConfig`` fields (``storage``, ``duplicate_window``, ...).

        Returns:
            The created stream's info.
        """
        stream = name or self.name()
        info = await self.jetstream.add_stream(name=stream, subjects=list(subjects or [self.subject(">")]), **config)
        self._streams.append(stream)
        return info

    async def cleanup(self) -> None:
        """Delete the streams this namespace created (and with them their consumers)."""
        while self._streams:
            stream = self._streams.pop()
            with suppress(NotFoundError):
                await self.jetstream.delete_stream(stream)
