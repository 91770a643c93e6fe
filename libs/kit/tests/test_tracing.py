"""Tracing: off it does nothing; on, the trace context crosses NATS hops and the outbox, and orphan queries
are not recorded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from nats.aio.client import Client
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from stella.kit import tracing
from stella.kit.outbox import OutboxMessage, add_messages
from stella.testing.messaging import collect_messages

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install(tracing.new_provider("kittest", SimpleSpanProcessor(exporter)))
    try:
        yield exporter
    finally:
        tracing.uninstall()


def test_off_every_hook_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tracing.ENDPOINT_ENV, raising=False)
    assert not tracing.configure_from_env("kittest")
    assert not tracing.enabled()
    headers: dict[str, str] = {}
    tracing.inject(headers)
    assert headers == {}
    assert tracing.stored_context() is None
    assert tracing.current_traceparent() is None
    with tracing.consume({"traceparent": PARENT}, "handle x", "kittest"):
        assert tracing.current_traceparent() is None
    with tracing.server("GET /", "gateway", {}, uuid.uuid4()) as span:
        assert span is None


def test_an_otlp_endpoint_turns_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracing.ENDPOINT_ENV, "http://127.0.0.1:9")  # nothing listens: spans are dropped, not raised
    try:
        assert tracing.configure_from_env("kittest")
        assert tracing.enabled()
    finally:
        tracing.uninstall()
    assert not tracing.enabled()


def test_a_request_is_the_root_of_its_own_trace_id_or_continues_the_callers(spans: InMemorySpanExporter) -> None:
    wanted = uuid.uuid4()
    with tracing.server("POST /x", "gateway", {}, wanted):
        assert tracing.root_trace_id() == wanted
        stored = tracing.stored_context()
        assert stored is not None and stored["traceparent"].split("-")[1] == wanted.hex
    with tracing.server("POST /y", "gateway", {"traceparent": PARENT}, uuid.uuid4()):
        assert tracing.root_trace_id() == uuid.UUID("0af7651916cd43dd8448eb211c80319c")
    first, second = spans.get_finished_spans()
    assert first.parent is None and first.context.trace_id == wanted.int
    assert second.parent is not None and second.parent.span_id == int("b7ad6b7169203331", 16)


def test_a_consumer_continues_the_trace_of_the_message(spans: InMemorySpanExporter) -> None:
    with tracing.consume({"traceparent": PARENT}, "handle stella.cmd.x.y", "kittest"):
        outgoing: dict[str, str] = {}
        tracing.inject(outgoing)
    [span] = spans.get_finished_spans()
    assert span.kind == SpanKind.CONSUMER
    assert span.attributes and span.attributes[tracing.SERVICE_ATTRIBUTE] == "kittest"
    assert span.context.trace_id == int("0af7651916cd43dd8448eb211c80319c", 16)
    assert outgoing["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"


async def test_the_relay_publishes_stored_headers_under_the_writers_trace(
    spans: InMemorySpanExporter, start_runtime, nats: Client
) -> None:
    runtime = await start_runtime(lambda runtime, router: None)
    subject = "stella.public.kittest.thing.done"
    message = OutboxMessage(
        uuid.uuid4(), uuid.uuid4(), subject, '{"x": 1}', {"Content-Type": "application/cloudevents+json"}
    )
    async with collect_messages(nats, runtime.names.subject(subject)) as published:
        with tracing.consume({"traceparent": PARENT}, "handle", "kittest"):
            async with runtime.pool.acquire() as conn, conn.transaction():
                await add_messages(conn, [message])
        runtime.relay.wake()
        [msg] = await published.wait(1)
    assert msg.data == b'{"x": 1}'
    assert msg.headers is not None
    assert msg.headers["Content-Type"] == "application/cloudevents+json"
    assert msg.headers["Nats-Msg-Id"] == str(message.message_id)
    for _ in range(100):  # the producer span ends once the stream acknowledged, maybe after delivery
        finished = spans.get_finished_spans()
        if any(s.kind == SpanKind.PRODUCER for s in finished):
            break
        await asyncio.sleep(0.02)
    [producer] = [s for s in finished if s.kind == SpanKind.PRODUCER]
    assert producer.context.trace_id == int("0af7651916cd43dd8448eb211c80319c", 16)
    assert msg.headers["traceparent"].split("-")[2] == f"{producer.context.span_id:016x}"
    # The INSERT made inside the trace is a span of it; the relay's own polling outside any trace is not.
    database = [
        s for s in finished if (s.attributes or {}).get("db.system") or (s.attributes or {}).get("db.system.name")
    ]
    assert database
    assert all(s.parent is not None for s in database)
