"""OpenTelemetry traces from a gateway request through every NATS hop and every Postgres call.

Tracing is off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (:func:`configure_from_env`, called by every
service's start-up) or a test installs a provider of its own (:func:`install`). Off, every hook below returns at
its first line: nothing is extracted, injected, stored or created.

On, the W3C trace context travels in the ``traceparent`` (and ``tracestate``) headers of NATS messages:

* a publisher (:func:`inject` for direct publishes, :func:`stored_context` for the outbox, whose rows keep the
  context of the transaction that wrote them) puts the current context in the message's headers;
* a consumer (:func:`consume`) continues the trace in a span of its own for the handling of that message;
* the outbox relay (:func:`publish`) opens a producer span under the context the row kept;
* Postgres calls are spans of the asyncpg instrumentation; a call outside any trace (a poll loop) is not
  recorded, so a trace shows the calls made for one request and nothing else.

The span attribute ``stella.service`` names the service a span belongs to, so one process running several
services (a test) still tells them apart. The gateway gives a request without ``traceparent`` its own trace id
(:func:`root_trace_id`), so the ``trace_id`` of a problem response finds the trace.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # OpenTelemetry is imported only once tracing is turned on: off, it costs no start-up time
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

ENDPOINT_ENV: Final[str] = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""Tracing is on when this (the OTLP exporter's own setting) is set; spans go there over OTLP/HTTP."""

SERVICE_ATTRIBUTE: Final[str] = "stella.service"
"""Span attribute naming the Stella service a span belongs to."""

TRACEPARENT: Final[str] = "traceparent"
"""The W3C trace context header."""

_wanted_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("stella_trace_id", default=None)
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_propagator: TraceContextTextMapPropagator | None = None


@functools.cache
def _sdk() -> Any:
    """The OpenTelemetry parts tracing needs, imported on first use, with Stella's id generator and sampler."""
    from types import SimpleNamespace

    from opentelemetry import trace
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    class IdGenerator(RandomIdGenerator):
        """Random ids, except the trace id of a root span started under :func:`server`."""

        def generate_trace_id(self) -> int:
            wanted = _wanted_trace_id.get()
            return wanted if wanted else super().generate_trace_id()

    class NoOrphanQueries(Sampler):
        """Root spans are sampled, except database calls made outside any trace (poll loops, timers)."""

        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            attrs = attributes or {}
            if kind == SpanKind.CLIENT and ("db.system" in attrs or "db.system.name" in attrs):
                return SamplingResult(Decision.DROP)
            return ALWAYS_ON.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return "StellaNoOrphanQueries"

    return SimpleNamespace(
        trace=trace,
        SpanKind=SpanKind,
        Propagator=TraceContextTextMapPropagator,
        IdGenerator=IdGenerator,
        NoOrphanQueries=NoOrphanQueries,
    )


def new_provider(service: str, processor: SpanProcessor) -> TracerProvider:
    """A tracer provider for ``service`` sending spans to ``processor`` (Stella's id generator and sampler)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased

    sdk = _sdk()
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or f"stella-{service}"}),
        id_generator=sdk.IdGenerator(),
        sampler=ParentBased(root=sdk.NoOrphanQueries()),
    )
    provider.add_span_processor(processor)
    return provider


def install(provider: TracerProvider) -> None:
    """Turn tracing on in this process with ``provider`` (Postgres calls included)."""
    global _tracer, _provider, _propagator
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=provider)
    _provider = provider
    _propagator = _sdk().Propagator()
    _tracer = provider.get_tracer("stella")


def uninstall() -> None:
    """Turn tracing off again, flushing what the provider holds."""
    global _tracer, _provider
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    provider, _provider, _tracer, _propagator = _provider, None, None, None
    if provider is not None:
        provider.shutdown()


def configure_from_env(service: str) -> bool:
    """Turn tracing on with an OTLP/HTTP exporter when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

    The exporter reads its other settings (``OTEL_EXPORTER_OTLP_HEADERS``, timeouts...) from the environment
    itself. Returns whether tracing is now on.
    """
    if not os.environ.get(ENDPOINT_ENV):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    install(new_provider(service, BatchSpanProcessor(OTLPSpanExporter())))
    log.info("tracing on", extra={"otlp_endpoint": os.environ[ENDPOINT_ENV]})
    return True


def enabled() -> bool:
    """Whether tracing is on in this process."""
    return _tracer is not None


def inject(headers: dict[str, str]) -> None:
    """Add the current trace context to ``headers`` of a message about to be published (nothing when off)."""
    if _propagator is None:
        return
    _propagator.inject(headers)


def stored_context() -> dict[str, str] | None:
    """The current trace context as headers to keep with an outbox row; None when off or outside a trace."""
    if _propagator is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier or None


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span; None when off or outside a trace."""
    if _propagator is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(TRACEPARENT)


@contextlib.contextmanager
def consume(headers: Mapping[str, str] | None, name: str, service: str, **attributes: Any) -> Iterator[None]:
    """Handle a received message in a consumer span continuing the trace its ``headers`` carry."""
    if _tracer is None or _propagator is None:
        yield
        return
    parent = _propagator.extract(dict(headers or {}))
    with _tracer.start_as_current_span(
        name,
        context=parent,
        kind=_sdk().SpanKind.CONSUMER,
        attributes={SERVICE_ATTRIBUTE: service, "messaging.system": "nats", **attributes},
    ):
        yield


@contextlib.contextmanager
def publish(subject: str, service: str, stored: Mapping[str, str] | None, headers: dict[str, str]) -> Iterator[None]:
    """Publish a message written earlier in a producer span under the context ``stored`` with it.

    The span's context is added to ``headers``. A message stored without a context is published untraced.
    """
    if _tracer is None or _propagator is None or not stored:
        yield
        return
    parent = _propagator.extract(dict(stored))
    with _tracer.start_as_current_span(
        f"publish {subject}",
        context=parent,
        kind=_sdk().SpanKind.PRODUCER,
        attributes={SERVICE_ATTRIBUTE: service, "messaging.system": "nats", "messaging.destination.name": subject},
    ):
        _propagator.inject(headers)
        yield


@contextlib.contextmanager
def server(
    name: str, service: str, headers: Mapping[str, str], trace_id: uuid.UUID, **attributes: Any
) -> Iterator[Span | None]:
    """A server span for an incoming request: under its ``traceparent``, else the root of trace ``trace_id``."""
    if _tracer is None or _propagator is None:
        yield None
        return
    parent = _propagator.extract(dict(headers))
    token = _wanted_trace_id.set(trace_id.int)  # read by the id generator when the span is a root
    try:
        current = _tracer.start_span(
            name, context=parent, kind=_sdk().SpanKind.SERVER, attributes={SERVICE_ATTRIBUTE: service, **attributes}
        )
    finally:
        _wanted_trace_id.reset(token)
    with _sdk().trace.use_span(current, end_on_exit=True):
        yield current


def root_trace_id() -> uuid.UUID | None:
    """The trace id of the current span as a UUID; None when off or outside a trace."""
    if _tracer is None:
        return None
    context = _sdk().trace.get_current_span().get_span_context()
    return uuid.UUID(int=context.trace_id) if context.is_valid else None
