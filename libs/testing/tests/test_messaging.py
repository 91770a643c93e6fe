"""NATS fixtures and helpers: isolated names on a shared server, waiting for messages without sleeps."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from stella.testing.messaging import NatsNamespace, collect_messages, wait_for_messages


async def test_nats_fixture_is_connected(nats: Client) -> None:
    assert nats.is_connected
    reply = await nats.request("$JS.API.INFO", b"", timeout=5)
    assert b"account" in reply.data or b"memory" in reply.data


async def test_wait_for_messages_replays_what_the_stream_already_holds(
    nats_namespace: NatsNamespace, jetstream: JetStreamContext
) -> None:
    await nats_namespace.add_stream()
    subject = nats_namespace.subject("evt", "created")
    for number in range(3):
        await jetstream.publish(subject, str(number).encode())
    messages = await wait_for_messages(jetstream, subject, count=3, timeout=5)
    assert [message.data for message in messages] == [b"0", b"1", b"2"]


async def test_wait_for_messages_reports_how_many_arrived(
    nats_namespace: NatsNamespace, jetstream: JetStreamContext
) -> None:
    await nats_namespace.add_stream()
    subject = nats_namespace.subject("evt", "lonely")
    await jetstream.publish(subject, b"only one")
    with pytest.raises(TimeoutError, match="received 1 of 2 messages"):
        await wait_for_messages(jetstream, subject, count=2, timeout=0.5)


async def test_collect_messages_sees_core_messages_published_inside_the_block(
    nats: Client, nats_namespace: NatsNamespace
) -> None:
    subject = nats_namespace.subject("ping")
    async with collect_messages(nats, subject) as collector:
        await nats.publish(subject, b"hello")
        await nats.publish(subject, b"again")
        messages = await collector.wait(2, timeout=5)
    assert [message.data for message in messages] == [b"hello", b"again"]


async def test_namespaces_on_one_server_do_not_collide(nats: Client) -> None:
    first, second = NatsNamespace(nats), NatsNamespace(nats)
    assert first.subject("x") != second.subject("x")
    # Both capture "their" whole prefix; overlapping subjects would make the second creation fail.
    await first.add_stream(name=first.name("EVENTS"))
    await second.add_stream(name=second.name("EVENTS"))
    await first.cleanup()
    await second.cleanup()
    js = nats.jetstream()
    for namespace in (first, second):
        with pytest.raises(NotFoundError):
            await js.stream_info(namespace.name("EVENTS"))
