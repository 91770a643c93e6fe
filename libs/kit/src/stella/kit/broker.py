"""Broker wiring: streams, durable consumers with bounded redelivery and dead letters, commands, queries.

Every JetStream consumer made here is durable, named ``<service>-<purpose>``, delivers from the start of its
subject (``DeliverPolicy.ALL``) and acks explicitly. What happens to a message whose handler fails depends on
the kind of failure (the rule every service follows is in :mod:`stella.kit.faults`):

* a transient fault (the database or NATS is away, another service does not answer) keeps the message in the
  process and tries it again with capped exponential back-off for as long as the outage lasts, telling
  JetStream it is still in progress; it spends nothing of the message's poison budget;
* a permanent failure (Postgres refused one of its values) answers a command at once with a 400 reply, and
  dead-letters an event at once;
* any other failure redelivers the message with a growing delay; after ``max_deliver`` failures it goes to
  ``stella.dlq.<consumer>.<tenant>`` with the error and is acknowledged, so it blocks nothing. A message that
  cannot even be parsed is dead-lettered at once: retrying cannot fix it.

Dead letters are listed and replayed through :mod:`stella.kit.deadletters`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import asyncpg
import nats.errors
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsMessage, NatsRouter, PullSub
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from stella.contracts.envelope import Command, ErrorDetail, Event, Message, Query, Reply
from stella.contracts.streams import (
    ALL_STREAMS,
    COMMANDS,
    EVENTS,
    HEADER_CONSUMER,
    HEADER_DELIVERIES,
    HEADER_ERROR,
    HEADER_MSG_ID,
    HEADER_ORIGINAL_MSG_ID,
    HEADER_ORIGINAL_SUBJECT,
    HEADER_REPLY_TO,
    StreamSpec,
    dead_letter_subject,
)
from stella.kit import logs, metrics, tracing
from stella.kit.db import sql_literal
from stella.kit.errors import error_detail, is_reportable
from stella.kit.faults import Failure, classify, is_permanent, is_transient, refused, retry_delay
from stella.kit.naming import Names
from stella.kit.outbox import deferring_writes
from stella.kit.settings import ServiceSettings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
CommandHandler = Callable[[Any], Awaitable[Reply]]
QueryHandler = Callable[[Any], Awaitable[Reply]]
EventHandler = Callable[[Any, asyncpg.Connection], Awaitable[None]]
PreparedEventHandler = Callable[[Any, asyncpg.Connection, Any], Awaitable[None]]
"""An event handler that also takes what its ``prepare`` step read before the transaction opened."""
OwnedEventHandler = Callable[[Any, Any], Awaitable[None]]
"""``handler(event, prepared)`` that opens its own transaction and claims the event's inbox row in it."""
EventBinder = Callable[[Any], Awaitable[EventHandler]]
"""An event route's step before the transaction: it reads what the handler needs and binds the handler to it."""


class PoisonMessage(Exception):
    """A message no retry can handle (unparseable, unknown subject): dead-lettered at once."""


class FailureLedger:
    """How often each message failed in this process: the poison budget's counter, bounded in size.

    Transient faults are not recorded. Kept in memory: a restart gives a failing message a fresh budget,
    and :attr:`~stella.kit.settings.ServiceSettings.delivery_limit` bounds the deliveries of a message across
    restarts.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._counts: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._max_entries = max_entries

    def record(self, consumer: str, sequence: int) -> int:
        """Count one more failure of the message at stream ``sequence``; returns its failures so far."""
        key = (consumer, sequence)
        count = self._counts.pop(key, 0) + 1
        self._counts[key] = count
        while len(self._counts) > self._max_entries:
            self._counts.popitem(last=False)
        return count

    def forget(self, consumer: str, sequence: int) -> None:
        """The message is settled (acknowledged or dead-lettered)."""
        self._counts.pop((consumer, sequence), None)


class Host(Protocol):
    """What routes need from the process that runs them (a :class:`~stella.kit.service.ServiceRuntime`)."""

    settings: ServiceSettings
    names: Names
    failures: FailureLedger
    consumers: list[tuple[str, ConsumerConfig]]
    retired_consumers: list[RetiredConsumer]
    batch_consumers: list[OrderedBatchConsumer]

    @property
    def js(self) -> JetStreamContext: ...

    @property
    def nats(self) -> NatsClient: ...


async def declare_streams(
    js: JetStreamContext,
    names: Names | None = None,
    specs: tuple[StreamSpec, ...] = ALL_STREAMS,
    *,
    replicas: int = 1,
) -> None:
    """Create the streams, or update them to the declared configuration; safe from many processes at once.

    Args:
        js: The JetStream context.
        names: The installation's namespace.
        specs: The streams.
        replicas: Copies of each stream in a NATS cluster (``STELLA_NATS_STREAM_REPLICAS``; 1 on one server).
    """
    names = names or Names()
    for spec in specs:
        name = names.stream(spec)
        config = StreamConfig(
            name=name,
            description=spec.description,
            subjects=names.stream_subjects(spec),
            storage=StorageType.FILE,
            max_age=spec.max_age_s,
            duplicate_window=spec.duplicate_window_s,
            num_replicas=replicas,
        )
        try:
            await js.stream_info(name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                continue
            except nats.js.errors.BadRequestError:
                pass  # another process created it first
        await js.update_stream(config)


def takes_many_filters(nc: NatsClient) -> bool:
    """Whether the connected server filters a consumer on several subjects (NATS 2.10 and later; 2.9 takes one)."""
    version = nc.connected_server_version
    try:
        return (version.major, version.minor) >= (2, 10)
    except ValueError:  # a version that is not semver: assume the oldest server we support
        return False


def consumer_config(
    name: str, subject: str, settings: ServiceSettings, deliver_policy: DeliverPolicy = DeliverPolicy.ALL
) -> ConsumerConfig:
    """The JetStream configuration of a durable consumer named ``name`` filtered on one ``subject``.

    The server's ``max_deliver`` is the kit's ``delivery_limit``, far above the poison budget: failures are
    counted by the kit (:class:`FailureLedger`) and a transient fault holds the message instead of
    redelivering it, so only crashes and stalls spend server deliveries. The kit dead-letters a message one
    delivery before that limit, so the server never drops one without a trace.
    """
    return ConsumerConfig(
        durable_name=name,
        deliver_policy=deliver_policy,
        max_deliver=settings.delivery_limit,
        ack_wait=settings.ack_wait_s,
        filter_subject=subject,
        max_ack_pending=settings.max_in_flight * 4,
    )


@dataclass(frozen=True)
class RetiredConsumer:
    """A durable consumer an earlier version made, replaced by ``successors`` (consumers declared beside it)."""

    stream: str
    name: str
    successors: tuple[str, ...]


async def retire_consumers(
    js: JetStreamContext, consumers: list[tuple[str, ConsumerConfig]], retired: list[RetiredConsumer]
) -> None:
    """Hand what retired consumers have not acknowledged to their successors, then delete them.

    A successor that does not exist yet starts at the stream sequence after the retired consumer's ack floor
    (everything at or below it was acknowledged); what was handled above the floor is delivered again and
    absorbed by the inbox, which the successors share with the retired consumer (the inbox key is the
    logical consumer, not the durable). Safe from many processes at once: a successor made by another
    process is kept as it is, and a consumer deleted by another process is already gone.
    """
    declared = {config.durable_name: config for _, config in consumers}
    for retiring in retired:
        try:
            info = await js.consumer_info(retiring.stream, retiring.name)
        except NotFoundError:
            continue
        start = (info.ack_floor.stream_seq if info.ack_floor is not None else 0) + 1
        for name in retiring.successors:
            try:
                await js.consumer_info(retiring.stream, name)
                continue  # made already (by another process, or before)
            except NotFoundError:
                pass
            config = dataclasses.replace(
                declared[name], deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
            )
            with contextlib.suppress(nats.js.errors.BadRequestError):  # another process made it meanwhile
                await js.add_consumer(retiring.stream, config)
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(retiring.stream, retiring.name)
        log.info(
            "durable consumer retired",
            extra={"consumer": retiring.name, "successors": list(retiring.successors), "start_sequence": start},
        )


async def declare_consumers(
    js: JetStreamContext,
    consumers: list[tuple[str, ConsumerConfig]],
    retired: list[RetiredConsumer] | None = None,
) -> None:
    """Create each durable consumer, or bring an existing one to its declared configuration.

    A subscriber alone would keep the configuration an older version of the service created the consumer
    with (its redelivery limits above all). Consumers in ``retired`` are replaced first (see
    :func:`retire_consumers`). Where a consumer starts reading is fixed when it is made: an existing
    consumer keeps its deliver policy and start sequence.
    """
    await retire_consumers(js, consumers, retired or [])
    for stream, config in consumers:
        try:
            await js.add_consumer(stream, config)
            continue
        except nats.js.errors.APIError as exc:  # a changed deliver policy is a server error, not a bad request
            refused = exc
        # Refused: read the consumer only now (one request per consumer on the usual start). A consumer made
        # with another start (a retired consumer's successor) keeps it; the rest of its configuration is
        # brought up to date.
        with contextlib.suppress(NotFoundError):
            existing = await js.consumer_info(stream, str(config.durable_name))
            if existing.config.deliver_policy != config.deliver_policy:
                kept = dataclasses.replace(
                    config,
                    deliver_policy=existing.config.deliver_policy,
                    opt_start_seq=existing.config.opt_start_seq,
                    opt_start_time=existing.config.opt_start_time,
                )
                try:
                    await js.add_consumer(stream, kept)
                    continue
                except nats.js.errors.APIError as exc:
                    refused = exc
        if not isinstance(refused, nats.js.errors.BadRequestError):
            raise refused
        # A server that cannot change this field of an existing consumer keeps its configuration.
        log.warning(
            "could not update a consumer's configuration",
            extra={"consumer": config.durable_name, "error": str(refused)},
        )


async def undecoded(msg: NatsMessage) -> NatsMessage:
    """The decoder of every subscriber: the handler gets the delivery and parses its body with its own model.

    The broker injects nothing (``apply_types=False``), so a handler is called with what this returns.
    """
    return msg


def durable_subscriber(
    router: NatsRouter,
    host: Host,
    stream: StreamSpec,
    subject: str,
    consumer: str,
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
) -> Callable[[Callable[[NatsMessage], Awaitable[None]]], object]:
    """The decorator registering a durable pull consumer ``consumer`` on ``subject`` of ``stream``.

    Acks are manual (see :func:`settle`); at most ``max_in_flight`` messages are handled at once. The consumer
    reads from the start of the stream (``ALL``), or from the messages published after it is made (``NEW``).
    """
    settings, names = host.settings, host.names
    wire_subject = names.subject(subject)
    config = consumer_config(consumer, wire_subject, settings, deliver_policy)
    host.consumers.append((names.stream(stream), config))
    return router.subscriber(
        wire_subject,
        stream=JStream(names.stream(stream), declare=False),
        durable=consumer,
        config=config,
        deliver_policy=deliver_policy,
        pull_sub=PullSub(batch_size=min(settings.max_in_flight, 32), timeout=1.0),
        ack_policy=AckPolicy.MANUAL,
        max_workers=settings.max_in_flight,
        title=consumer,
        decoder=undecoded,
    )


@dataclass
class DeliveryOutcome:
    """What happened to one delivery (for tests and metrics).

    ``outcome`` is ``ok``, ``retried`` (redelivered after a failure), ``dead_lettered`` or ``refused``
    (a command Postgres refused a value of: ``reply`` is its 400 answer).
    """

    outcome: str
    error: str | None = None
    reply: Reply | None = None


async def settle(
    msg: Msg,
    consumer: str,
    host: Host,
    work: Callable[[], Awaitable[None]],
    *,
    refusable: bool = False,
) -> DeliveryOutcome:
    """Run ``work`` for a JetStream delivery and ack it, hold it through an outage, retry or dead-letter it.

    Args:
        msg: The delivery.
        consumer: The durable consumer's name.
        host: The running service.
        work: Handles the message; raises on failure.
        refusable: The message is a command whose sender takes a 400 reply when Postgres refuses one of its
            values (the outcome is then ``refused``, acknowledged); otherwise such a message is dead-lettered.

    Errors are never swallowed: each is logged, counted, and the message is either handled later or kept in
    the dead-letter stream with the error.
    """
    settings = host.settings
    delivered = msg.metadata.num_delivered if msg.metadata else 1
    sequence = msg.metadata.sequence.stream if msg.metadata else 0
    started = time.perf_counter()
    try:
        if delivered >= settings.delivery_limit - 1:
            error = f"delivered {delivered} times without an outcome: its handler crashes or stalls"
            log.error("dead-lettering a message that never finished", extra={"consumer": consumer, "error": error})
            return await _give_up(host, msg, consumer, error, delivered, sequence)
        retries = 0
        while True:
            try:
                await work()
            except PoisonMessage as exc:
                log.error("dead-lettering unprocessable message", extra={"consumer": consumer, "error": str(exc)})
                return await _give_up(host, msg, consumer, f"unprocessable: {exc}", delivered, sequence)
            except Exception as exc:
                kind = classify(exc)
                if kind is Failure.TRANSIENT:
                    retries += 1
                    await _hold(msg, consumer, exc, retries, settings)
                    continue
                metrics.error_total.labels(type(exc).__name__).inc()
                if kind is Failure.PERMANENT:
                    return await _refuse(host, msg, consumer, exc, delivered, sequence, refusable=refusable)
                return await _fail(host, msg, consumer, exc, delivered, sequence)
            else:
                await _ack(msg, consumer)
                host.failures.forget(consumer, sequence)
                metrics.messages_handled.labels(consumer, "ok").inc()
                return DeliveryOutcome("ok")
    finally:
        metrics.handle_seconds.labels(consumer).observe(time.perf_counter() - started)


async def _hold(msg: Msg, consumer: str, exc: Exception, retries: int, settings: ServiceSettings) -> None:
    """Wait before trying a message that hit a transient fault again, keeping JetStream from redelivering it."""
    cap = min(settings.fault_retry_max_s, settings.ack_wait_s / 2)
    delay = retry_delay(retries, settings.fault_retry_base_s, cap) * random.uniform(0.5, 1.0)
    metrics.messages_handled.labels(consumer, "held").inc()
    metrics.error_total.labels(type(exc).__name__).inc()
    if retries == 1 or retries % 20 == 0:
        log.warning(
            "transient fault; holding the message and trying again (not counted against its poison budget)",
            extra={"consumer": consumer, "retries": retries, "error": f"{type(exc).__name__}: {exc}"},
        )
    with contextlib.suppress(Exception):
        # NATS itself may be away; the message is then redelivered after ack_wait and the inbox absorbs it.
        await msg.in_progress()
    await asyncio.sleep(delay)


async def _ack(msg: Msg, consumer: str) -> None:
    try:
        await msg.ack()
    except Exception as exc:
        if not is_transient(exc):
            raise
        # Handled and committed: a redelivery is answered from the inbox.
        log.warning("could not acknowledge a handled message", extra={"consumer": consumer, "error": repr(exc)})


async def _fail(host: Host, msg: Msg, consumer: str, exc: Exception, delivered: int, sequence: int) -> DeliveryOutcome:
    """Spend one unit of the message's poison budget: redeliver it later, or dead-letter it when spent."""
    failures = host.failures.record(consumer, sequence)
    if failures >= host.settings.max_deliver:
        log.exception("giving up after %d failures; dead-lettering", failures, extra={"consumer": consumer})
        return await _give_up(host, msg, consumer, f"{type(exc).__name__}: {exc}", delivered, sequence)
    log.exception("handler failed; will retry", extra={"consumer": consumer, "failures": failures})
    await msg.nak(delay=host.settings.redelivery_backoff_s * failures)
    metrics.messages_handled.labels(consumer, "retried").inc()
    return DeliveryOutcome("retried", str(exc))


async def _refuse(
    host: Host, msg: Msg, consumer: str, exc: Exception, delivered: int, sequence: int, *, refusable: bool
) -> DeliveryOutcome:
    """A permanent failure: answer the command with a 400 at once, or dead-letter what has nobody to answer."""
    problem = refused(exc)
    if not refusable:
        log.error("a value was refused; dead-lettering", extra={"consumer": consumer, "error": str(exc)})
        return await _give_up(host, msg, consumer, f"{type(exc).__name__}: {exc}", delivered, sequence)
    log.warning("a value was refused; answering 400", extra={"consumer": consumer, "error": str(exc)})
    await _ack(msg, consumer)
    host.failures.forget(consumer, sequence)
    metrics.messages_handled.labels(consumer, "refused").inc()
    return DeliveryOutcome("refused", str(exc), Reply.failure(error_detail(problem)))


async def _give_up(host: Host, msg: Msg, consumer: str, error: str, delivered: int, sequence: int) -> DeliveryOutcome:
    await dead_letter(host, msg, consumer, error, delivered)
    await msg.ack()
    host.failures.forget(consumer, sequence)
    metrics.messages_handled.labels(consumer, "dead_lettered").inc()
    return DeliveryOutcome("dead_lettered", error)


def payload_tenant(data: bytes) -> uuid.UUID | None:
    """The ``tenant_id`` a message payload names, if it is a JSON object naming a valid one."""
    try:
        payload = json.loads(data)
        return uuid.UUID(str(payload["tenant_id"])) if isinstance(payload, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


async def dead_letter(host: Host, msg: Msg, consumer: str, error: str, delivered: int) -> None:
    """Store ``msg`` on ``stella.dlq.<consumer>.<tenant>`` with why and how often it failed."""
    headers = dict(msg.headers or {})
    stream_seq = msg.metadata.sequence.stream if msg.metadata else 0
    original_id = headers.get(HEADER_MSG_ID)
    headers.pop(HEADER_REPLY_TO, None)  # whoever waited for a reply has been answered already
    headers.update(
        {
            HEADER_ERROR: error[:2000].replace("\r", " ").replace("\n", " "),
            HEADER_CONSUMER: consumer,
            HEADER_DELIVERIES: str(delivered),
            HEADER_ORIGINAL_SUBJECT: host.names.local(msg.subject),
            # One dead letter per (consumer, original message) even if dead-lettering is retried.
            HEADER_MSG_ID: f"{consumer}:{stream_seq}",
        }
    )
    if original_id:
        headers[HEADER_ORIGINAL_MSG_ID] = original_id
    subject = host.names.subject(dead_letter_subject(consumer, payload_tenant(msg.data)))
    await host.js.publish(subject, msg.data, headers=headers, timeout=5)
    metrics.dead_letters.labels(consumer).inc()


def parse(model: type[M], data: bytes) -> M:
    """Validate a wire payload as ``model`` (upcasting old versions); bad payloads are poison."""
    try:
        return model.parse(data)
    except (ValidationError, ValueError) as exc:
        raise PoisonMessage(f"payload is not a valid {model.__name__}: {exc}") from exc


def _bind_context(message: Message) -> None:
    logs.correlation_id.set(str(message.correlation_id))
    logs.tenant_id.set(str(message.tenant_id))


delivery_attempt: ContextVar[int | None] = ContextVar("stella_delivery_attempt", default=None)
"""How many times JetStream has delivered the command being handled (1 the first time); ``None`` outside a
delivery (a handler called directly)."""


class CommandRoutes:
    """The commands of one context, served by one durable consumer ``<service>-commands``.

    Handlers return a :class:`Reply`; business errors are replies, not exceptions. When a command carries
    a ``Stella-Reply-To`` header, the reply is published there once the handler's transaction committed.
    """

    def __init__(self, context: str, service: str) -> None:
        self.context = context
        self.service = service
        self.consumer = f"{service}-commands"
        self.routes: dict[str, tuple[type[Command], CommandHandler]] = {}

    def on(self, subject: str, model: type[Command], handler: CommandHandler) -> None:
        """Route ``subject`` to ``handler`` with payloads validated as ``model``."""
        if not subject.startswith(f"stella.cmd.{self.context}."):
            raise ValueError(f"{subject} is not a command of context {self.context}")
        self.routes[subject] = (model, handler)

    def attach(self, router: NatsRouter, host: Host) -> None:
        """Register the durable consumer on ``router``."""
        names = host.names

        @durable_subscriber(router, host, COMMANDS, f"stella.cmd.{self.context}.>", self.consumer)
        async def on_command(msg: NatsMessage) -> None:
            raw: Msg = msg.raw_message
            reply_to = (raw.headers or {}).get(HEADER_REPLY_TO)
            final: list[Reply] = []

            async def work() -> None:
                route = self.routes.get(names.local(raw.subject))
                if route is None:
                    raise PoisonMessage(f"no handler for {raw.subject}")
                model, handler = route
                command = parse(model, raw.data)
                _bind_context(command)
                delivery_attempt.set(raw.metadata.num_delivered if raw.metadata else None)
                final.append(await handler(command))

            with tracing.consume(raw.headers, f"handle {names.local(raw.subject)}", self.service):
                outcome = await settle(raw, self.consumer, host, work, refusable=True)
            if reply_to:
                if final:
                    await _reply(host.nats, reply_to, final[0])
                elif outcome.reply is not None:
                    await _reply(host.nats, reply_to, outcome.reply)
                elif outcome.outcome == "dead_lettered":
                    await _reply(
                        host.nats,
                        reply_to,
                        Reply.failure(
                            ErrorDetail(
                                code="SYS_COMMAND_FAILED",
                                status=500,
                                title="The command could not be handled",
                                detail=outcome.error or "",
                            )
                        ),
                    )


async def _reply(nc: NatsClient, subject: str, reply: Reply) -> None:
    # Core publish on the caller's inbox: the caller may be gone, which is fine, and so may NATS (the caller
    # then repeats the command and is answered from the inbox).
    try:
        await nc.publish(subject, reply.model_dump_json().encode())
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("could not send a command reply", extra={"subject": subject, "error": repr(exc)})


class QueryRoutes:
    """The request/reply reads of one context on core NATS, load-balanced over the service's replicas.

    Args:
        context: The bounded context (subjects ``stella.rpc.<context>.*``).
        service: The service (its queue group).
        workers: Queries answered at once by one replica (1: one after the other), unless the service's
            ``query_workers`` setting says otherwise. More suit a context whose queries mostly wait on the
            database, like the deployment service's agent channel.
    """

    def __init__(self, context: str, service: str, *, workers: int = 1) -> None:
        self.context = context
        self.service = service
        self.workers = workers
        self.routes: dict[str, tuple[type[Query], QueryHandler]] = {}

    def on(self, subject: str, model: type[Query], handler: QueryHandler) -> None:
        """Route ``subject`` to ``handler`` with payloads validated as ``model``."""
        if not subject.startswith(f"stella.rpc.{self.context}."):
            raise ValueError(f"{subject} is not a query of context {self.context}")
        self.routes[subject] = (model, handler)

    def attach(self, router: NatsRouter, host: Host) -> None:
        """Register the queue-group subscription on ``router``."""
        names = host.names

        @router.subscriber(
            names.subject(f"stella.rpc.{self.context}.>"),
            queue=self.service,
            title=f"{self.service}-queries",
            max_workers=host.settings.query_workers or max(1, self.workers),
            decoder=undecoded,
        )
        async def on_query(msg: NatsMessage) -> bytes:
            raw: Msg = msg.raw_message
            route = self.routes.get(names.local(raw.subject))
            if route is None:
                return _failure("SYS_UNKNOWN_QUERY", 404, f"no query {raw.subject}")
            model, handler = route
            try:
                query = model.parse(raw.data)
            except (ValidationError, ValueError) as exc:
                return _failure("VAL_INVALID_QUERY", 400, str(exc))
            _bind_context(query)
            try:
                with tracing.consume(raw.headers, f"answer {names.local(raw.subject)}", self.service):
                    reply = await handler(query)
            except Exception as exc:
                if is_reportable(exc):
                    return Reply.failure(error_detail(exc)).model_dump_json().encode()
                kind = classify(exc)
                if kind is Failure.TRANSIENT:
                    log.warning("query hit a transient fault", extra={"subject": raw.subject, "error": repr(exc)})
                    return _failure("SYS_UNAVAILABLE", 503, f"{self.service}: a dependency is unavailable; retry later")
                if kind is Failure.PERMANENT:
                    return Reply.failure(error_detail(refused(exc))).model_dump_json().encode()
                log.exception("query failed", extra={"subject": raw.subject})
                metrics.error_total.labels(type(exc).__name__).inc()
                return _failure("SYS_INTERNAL", 500, "the query failed; see the service log")
            return reply.model_dump_json().encode()


def _failure(code: str, status: int, detail: str) -> bytes:
    return (
        Reply.failure(ErrorDetail(code=code, status=status, title=detail[:80], detail=detail))
        .model_dump_json()
        .encode()
    )


async def _no_transaction_handler(event: Any, conn: asyncpg.Connection) -> None:
    raise RuntimeError("an event whose handler owns its transaction was handled in another")


async def _owned_binder(event: Any) -> EventHandler:
    return _no_transaction_handler


@dataclass(frozen=True)
class Prepared:
    """A parsed event and the handler that runs it in the transaction (bound to what ``prepare`` read)."""

    event: Event
    handler: EventHandler
    owned: Callable[[], Awaitable[None]] | None = None
    """Set for a route whose handler owns its transaction (:meth:`EventRoutes.on_owned`): runs it whole."""


class EventRoutes:
    """One durable consumer ``<service>-<purpose>`` on one subject filter (NATS 2.9 allows one per consumer).

    The filter may be a wildcard (``stella.evt.approval.>``); each event subject under it is routed to its
    handler, and events nobody here handles are acknowledged and ignored (a producer may add events later).
    A handler runs inside a transaction that also records ``(consumer, message_id)`` in the inbox, so a
    redelivered event has one effect; the transaction opens with that claim and its outbox messages are
    written as it commits (:func:`_transaction_claiming`), so the handler must not open
    ``conn.transaction()`` in it. A handler that needs another service's answer names a ``prepare`` step:
    it runs before the transaction opens (no connection waits on the other service) and its result is the
    handler's third argument.

    With ``batch_size`` above 1 the consumer is ordered and group-commits: it handles the events in stream
    order, up to ``batch_size`` of them in one transaction (see :class:`OrderedBatchConsumer`). Otherwise
    up to ``max_in_flight`` events are handled at once, each in its own transaction.

    With ``per_subject`` (unordered consumers only) each routed subject gets a durable consumer of its own,
    ``<service>-<purpose>-<event>``, filtered on that subject alone, so the server never delivers the
    events nobody here handles (a wildcard filter delivers every event under it, each to be fetched,
    acknowledged and dropped). The events of different subjects are then handled in no particular order
    relative to each other, as they may be with ``max_in_flight`` above 1 anyway. The inbox and the dead
    letters keep the one name ``<service>-<purpose>``; a wildcard consumer of that name left by an earlier
    version is retired at start, its successors beginning where it stopped acknowledging
    (:func:`retire_consumers`).

    With ``from_now`` a consumer made for the first time reads the events published after it is made, not
    the stream's history: for a consumer that only hastens what another path guarantees (a new consumer
    of an installation that has run for years would otherwise work through every event it ever kept).
    """

    def __init__(
        self,
        service: str,
        purpose: str,
        subject: str,
        pool: Callable[[], asyncpg.Pool],
        *,
        batch_size: int = 1,
        per_subject: bool = False,
        from_now: bool = False,
    ) -> None:
        if per_subject and batch_size > 1:
            raise ValueError("an ordered batch consumer reads one stream of events: it cannot be split per subject")
        self.service = service
        self.consumer = f"{service}-{purpose}"
        self.subject = subject
        self.pool = pool
        self.batch_size = batch_size
        self.per_subject = per_subject
        self.deliver_policy = DeliverPolicy.NEW if from_now else DeliverPolicy.ALL
        self.routes: dict[str, tuple[type[Event], EventBinder]] = {}
        self._owned: dict[str, tuple[Callable[[Any], Awaitable[Any]], OwnedEventHandler]] = {}

    def on(self, subject: str, model: type[Event], handler: EventHandler) -> None:
        """Route ``subject`` (under this consumer's filter) to ``handler(event, conn)``."""

        async def bind(event: Any) -> EventHandler:
            return handler

        self.routes[subject] = (model, bind)

    def on_prepared(
        self,
        subject: str,
        model: type[Event],
        prepare: Callable[[Any], Awaitable[Any]],
        handler: PreparedEventHandler,
    ) -> None:
        """Route ``subject`` to ``handler(event, conn, await prepare(event))``, ``prepare`` outside the transaction.

        ``prepare`` may run for a redelivered event the inbox then drops: it must only read.
        """

        async def bind(event: Any) -> EventHandler:
            read = await prepare(event)

            async def bound(event: Any, conn: asyncpg.Connection) -> None:
                await handler(event, conn, read)

            return bound

        self.routes[subject] = (model, bind)

    def on_owned(
        self, subject: str, model: type[Event], prepare: Callable[[Any], Awaitable[Any]], handler: OwnedEventHandler
    ) -> None:
        """Route ``subject`` to ``handler(event, await prepare(event))``, which opens its own transaction.

        For a handler that writes together with other work (a group commit): it must claim the event's inbox
        row of this consumer (:attr:`consumer`) in the transaction that makes its effect, so a redelivered
        event has one effect, and return only once that transaction committed (the event is acknowledged
        then). Unordered consumers only: an ordered batch consumer handles its events in its own transaction.
        """
        if self.batch_size > 1:
            raise ValueError("an ordered batch consumer handles its events in its own transaction")
        self.routes[subject] = (model, _owned_binder)
        self._owned[subject] = (prepare, handler)

    async def prepare(self, raw: Msg, names: Names) -> Prepared | None:
        """Parse one delivery and run its route's ``prepare`` step, before any transaction opens.

        Returns:
            The event with its handler bound to what the ``prepare`` step read; None for an event this
            consumer does not handle.

        Raises:
            PoisonMessage: the payload is not a valid event of its subject.
        """
        local = names.local(raw.subject)
        route = self.routes.get(local)
        if route is None:
            return None
        model, bind = route
        event = parse(model, raw.data)
        owned = self._owned.get(local)
        if owned is not None:
            prepare, handler = owned
            read = await prepare(event)
            return Prepared(event, _no_transaction_handler, lambda: handler(event, read))
        return Prepared(event, await bind(event))

    async def apply(self, conn: asyncpg.Connection, ready: Prepared) -> None:
        """Handle one prepared delivery in a transaction of its own on ``conn``, opened by claiming it in the
        inbox (one round trip), then run its handler."""
        _bind_context(ready.event)
        async with _transaction_claiming(conn, self.consumer, [ready.event.message_id]) as claim:
            if claim.claimed:
                await ready.handler(ready.event, conn)
            else:
                metrics.messages_handled.labels(self.consumer, "duplicate").inc()

    def durable_name(self, subject: str) -> str:
        """The durable consumer of one routed subject when split per subject: ``<consumer>-<event>``."""
        return f"{self.consumer}-{subject.rsplit('.', 1)[-1].replace('_', '-')}"

    def attach(self, router: NatsRouter, host: Host) -> None:
        """Register the durable consumer(s) on ``router`` (an ordered batch consumer on ``host``)."""
        if self.batch_size > 1:
            host.batch_consumers.append(OrderedBatchConsumer(self, host))
            return
        if not self.per_subject:
            self._subscribe(router, host, self.subject, self.consumer)
            return
        successors = []
        for subject in self.routes:
            if not subject.startswith(self.subject.removesuffix(">")):
                raise ValueError(f"{subject} is not under {self.consumer}'s filter {self.subject}")
            successors.append(self.durable_name(subject))
            self._subscribe(router, host, subject, successors[-1])
        host.retired_consumers.append(RetiredConsumer(host.names.stream(EVENTS), self.consumer, tuple(successors)))

    def _subscribe(self, router: NatsRouter, host: Host, subject: str, durable: str) -> None:
        @durable_subscriber(router, host, EVENTS, subject, durable, self.deliver_policy)
        async def on_event(msg: NatsMessage) -> None:
            await self.settle_one(msg.raw_message, host)

    async def settle_one(self, raw: Msg, host: Host) -> DeliveryOutcome:
        """Handle one delivery in a transaction of its own and settle it (ack, hold, retry or dead-letter)."""
        names = host.names

        async def work() -> None:
            ready = await self.prepare(raw, names)
            if ready is None:
                return  # an event this consumer does not handle: acked without a connection or transaction
            if ready.owned is not None:
                _bind_context(ready.event)
                await ready.owned()
                return
            async with self.pool().acquire() as conn:
                await self.apply(conn, ready)

        with tracing.consume(raw.headers, f"handle {names.local(raw.subject)}", self.service):
            return await settle(raw, self.consumer, host, work)


class OrderedBatchConsumer:
    """Pulls an :class:`EventRoutes` consumer's events in stream order and handles each batch in one transaction.

    A fetch returns what is waiting, up to ``batch_size`` events (at once: no batch is waited for, so a lone
    event goes through as fast as alone). The batch is handled in one transaction, each event with its own
    inbox row, and acknowledged after the commit, so one commit (one WAL flush) serves many events. A crash
    before the commit redelivers the batch; after it, the inbox absorbs the redelivery. When anything in the
    batch fails, or an event is a redelivery, the batch is rolled back and its events are handled one at a
    time, in order, through :func:`settle`, with the usual holding, retries and dead letters.

    On a server that filters a consumer on several subjects (NATS 2.10 and later) the consumer is filtered on
    its routed subjects, so the events under its wildcard that nobody here handles are not delivered at all
    (a consumer made with the wildcard alone is narrowed where it stands); NATS 2.9 keeps the wildcard.
    """

    def __init__(self, routes: EventRoutes, host: Host) -> None:
        self.routes = routes
        self.host = host
        self.batch_size = routes.batch_size
        settings = host.settings
        config = consumer_config(routes.consumer, host.names.subject(routes.subject), settings, routes.deliver_policy)
        # A whole batch is unacknowledged while it is handled, and the next one is fetched right after.
        config.max_ack_pending = max(config.max_ack_pending or 0, 2 * self.batch_size)
        if routes.routes and takes_many_filters(host.nats):
            # The server delivers only the routed subjects, in stream order, instead of every event under the
            # wildcard for most to be fetched, acknowledged and dropped.
            config.filter_subject = None
            config.filter_subjects = sorted(host.names.subject(subject) for subject in routes.routes)
        self.stream = host.names.stream(EVENTS)
        host.consumers.append((self.stream, config))
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._busy = False

    def start(self) -> None:
        """Start pulling (after the consumer was declared)."""
        self._task = asyncio.create_task(self._run(), name=f"batch-consumer-{self.routes.consumer}")

    async def stop(self) -> None:
        """Stop after the batch in hand (waiting for it at most ``ack_wait_s``)."""
        self._stopping = True
        if self._task is None:
            return
        if not self._busy:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._task, timeout=self.host.settings.ack_wait_s)

    async def _run(self) -> None:
        consumer = self.routes.consumer
        sub: JetStreamContext.PullSubscription | None = None
        retries = failures = 0
        while not self._stopping:
            try:
                if sub is None:
                    sub = await self.host.js.pull_subscribe_bind(durable=consumer, stream=self.stream)
                msgs = await sub.fetch(self.batch_size, timeout=5)
            except TimeoutError:
                continue  # nothing waiting
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # NATS is away or restarting: the consumer's events wait in the stream.
                retries += 1
                log.warning("batch consumer waits for NATS", extra={"consumer": consumer, "error": repr(exc)})
                await asyncio.sleep(retry_delay(retries, self.host.settings.fault_retry_base_s, 5.0))
                continue
            retries = 0
            self._busy = True
            try:
                await self.handle(msgs)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                # The loop must outlive the fault, or the consumer's events would wait until a restart. What the
                # batch left unacknowledged is given back at once (a redelivery comes before newer events) and
                # then handled one at a time; the inbox absorbs what had committed.
                failures += 1
                log.exception(
                    "batch consumer failed; its unacknowledged events come again", extra={"consumer": consumer}
                )
                for raw in msgs:
                    with contextlib.suppress(Exception):
                        await raw.nak()
                await asyncio.sleep(retry_delay(failures, self.host.settings.fault_retry_base_s, 5.0))
            finally:
                self._busy = False

    async def handle(self, msgs: list[Msg]) -> None:
        """Handle ``msgs`` (in stream order) in one transaction and acknowledge them, else one at a time."""
        if not msgs:
            return  # a fetch can end with nothing (its pull request expired, or a status answered it)
        consumer, names = self.routes.consumer, self.host.names
        started = time.perf_counter()
        if all((m.metadata.num_delivered if m.metadata else 1) <= 1 for m in msgs):
            try:
                routed = [(raw, await self.routes.prepare(raw, names)) for raw in msgs]
                # A batch of events this consumer does not handle is acknowledged without a transaction.
                if any(r is not None for _, r in routed):
                    async with self.routes.pool().acquire() as conn:
                        await self._apply(conn, routed)
            except Exception as exc:
                log.debug("batch failed; handling its events one at a time", extra={"consumer": consumer}, exc_info=exc)
            else:
                for raw in msgs:
                    await _ack(raw, consumer)
                metrics.messages_handled.labels(consumer, "ok").inc(len(msgs))
                metrics.handle_seconds.labels(consumer).observe((time.perf_counter() - started) / len(msgs))
                return
        for raw in msgs:
            await self.routes.settle_one(raw, self.host)

    async def _apply(self, conn: asyncpg.Connection, routed: list[tuple[Msg, Prepared | None]]) -> None:
        """Handle a batch's events in one transaction on ``conn``, each once, in order.

        The transaction opens by claiming every event of the batch in the inbox (one round trip). When one of
        them was handled before, the batch is rolled back and its events go one at a time (the caller's path
        for a failed batch), which answers each from the inbox."""
        consumer, names = self.routes.consumer, self.host.names
        ids = [r.event.message_id for _, r in routed if r is not None]
        wanted = set(ids)
        async with _transaction_claiming(conn, consumer, ids) as claim:
            if claim.claimed < len(wanted):
                raise _HandledBefore(f"{len(wanted) - claim.claimed} of the batch's events were handled before")
            for raw, r in routed:
                if r is None:
                    continue  # an event this consumer does not handle
                if r.event.message_id not in wanted:
                    metrics.messages_handled.labels(consumer, "duplicate").inc()
                    continue  # named twice in the batch: handled at its first place
                wanted.discard(r.event.message_id)
                _bind_context(r.event)
                with tracing.consume(raw.headers, f"handle {names.local(raw.subject)}", self.routes.service):
                    await r.handler(r.event, conn)


class _HandledBefore(Exception):
    """A batch holds an event its consumer handled before: the batch goes one event at a time."""


_CLAIM = """
    INSERT INTO inbox (consumer, message_id) VALUES ($1, $2)
    ON CONFLICT (consumer, message_id) DO NOTHING
    RETURNING true
"""
_CLAIM_MANY = """
    INSERT INTO inbox (consumer, message_id) SELECT $1, id FROM unnest($2::uuid[]) AS id
    ON CONFLICT (consumer, message_id) DO NOTHING
    RETURNING message_id
"""
_CLAIM_WITH_REPLY = """
    INSERT INTO inbox (consumer, message_id, reply) VALUES ($1, $2, $3)
    ON CONFLICT (consumer, message_id) DO NOTHING
    RETURNING true
"""
_STORED_REPLY = "SELECT reply FROM inbox WHERE consumer = $1 AND message_id = $2"
_STORE_REPLIES = """
    UPDATE inbox SET reply = r.reply::jsonb
      FROM unnest($2::uuid[], $3::text[]) AS r (message_id, reply)
     WHERE inbox.consumer = $1 AND inbox.message_id = r.message_id
"""
# One simple-protocol message each (constants, no parameters): the transaction's first round trip claims the
# message, its last keeps the reply and commits. Their status is the last statement's.
_BEGIN_AND_CLAIM = """BEGIN; INSERT INTO inbox (consumer, message_id) VALUES {rows}
    ON CONFLICT (consumer, message_id) DO NOTHING"""
_STORE_REPLY_CONSTANTS = (
    "UPDATE inbox SET reply = {reply}::jsonb WHERE consumer = {consumer} AND message_id = '{message_id}'"
)


async def begin_claiming(conn: asyncpg.Connection, consumer: str, message_ids: Sequence[uuid.UUID]) -> int:
    """Open a transaction on ``conn`` and claim ``message_ids`` for ``consumer`` in it, in **one** round trip;
    returns how many of them were claimed now (one handled before is not; an id named twice counts once). The
    transaction is open whatever the count.

    ``BEGIN`` and the claim go in one simple-protocol message, their values written as constants: the
    consumer's name comes from the code and the ids are UUIDs. The transaction is not asyncpg's
    ``Connection.transaction()``: whoever calls this ends it with a ``COMMIT`` or a ``ROLLBACK`` (see
    :func:`_transaction_claiming`), and code run in it must not open ``conn.transaction()`` itself. A
    concurrent delivery of the same message waits on the row until the first transaction ends.
    """
    name = sql_literal(consumer)
    rows = ", ".join(f"({name}, '{uuid.UUID(str(message_id))}')" for message_id in dict.fromkeys(message_ids))
    try:
        status = await conn.execute(_BEGIN_AND_CLAIM.format(rows=rows))
    except BaseException:
        await _roll_back_quietly(conn)
        raise
    return int(status.rsplit(" ", 1)[-1])


async def _roll_back_quietly(conn: asyncpg.Connection) -> None:
    """End what is left of a failed transaction. A connection that broke is dropped by its pool, whose reset
    rolls back any other: the error that brought us here is the one to report."""
    if not conn.is_closed() and conn.is_in_transaction():
        with contextlib.suppress(Exception):
            await conn.execute("ROLLBACK")


@contextlib.asynccontextmanager
async def _transaction_claiming(
    conn: asyncpg.Connection, consumer: str, message_ids: Sequence[uuid.UUID]
) -> AsyncIterator[_Claim]:
    """A transaction opened by claiming ``message_ids`` (:func:`begin_claiming`); committed when the block ends,
    in one round trip with the writes and outbox messages the block kept (:func:`stella.kit.outbox.deferring_writes`)
    and the claim's ``reply`` when one was set (one message); rolled back when it raises."""
    claim = _Claim(await begin_claiming(conn, consumer, message_ids))
    with deferring_writes(conn) as kept_writes:
        try:
            yield claim
        except BaseException:
            await _roll_back_quietly(conn)
            raise
    if not conn.is_in_transaction():
        raise RuntimeError("the claimed transaction was ended by the code run in it")
    # The last round trip makes the writes kept for it, writes the messages the transaction recorded, keeps the
    # reply and commits.
    try:
        writes = kept_writes.sql()
        reply = (
            _STORE_REPLY_CONSTANTS.format(
                reply=sql_literal(claim.reply.model_dump_json()),
                consumer=sql_literal(consumer),
                message_id=uuid.UUID(str(message_ids[0])),
            )
            if claim.reply is not None
            else ""
        )
        await conn.execute("; ".join(filter(None, [writes, reply, "COMMIT"])))
    except BaseException:
        await _roll_back_quietly(conn)
        raise


@dataclass
class _Claim:
    claimed: int
    """How many of the messages were claimed now (the others were handled before)."""
    reply: Reply | None = None
    """The reply to keep with the (one) message's inbox row as the transaction commits."""


async def claim_inbox(conn: asyncpg.Connection, consumer: str, message_id: uuid.UUID) -> bool:
    """Record that ``consumer`` handles ``message_id`` in the open transaction; False when already handled.

    A concurrent delivery of the same message waits on the row until the first transaction ends.
    """
    return bool(await conn.fetchval(_CLAIM, consumer, message_id))


async def claim_inbox_many(conn: asyncpg.Connection, consumer: str, message_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Record that ``consumer`` handles each of ``message_ids`` in the open transaction, in one statement.

    Returns the ids claimed now; an id handled before, or named twice, is claimed once.
    """
    return {row["message_id"] for row in await conn.fetch(_CLAIM_MANY, consumer, message_ids)}


async def store_replies(conn: asyncpg.Connection, consumer: str, replies: list[tuple[uuid.UUID, Reply]]) -> None:
    """Keep each command's reply with its inbox row (claimed in the open transaction), in one statement.

    What :meth:`CommandProcessor.run` stores for one command, for commands handled together (a group commit):
    a repeated command is answered from it.
    """
    if replies:
        await conn.execute(
            _STORE_REPLIES,
            consumer,
            [message_id for message_id, _ in replies],
            [reply.model_dump_json() for _, reply in replies],
        )


class CommandProcessor:
    """Runs a command's state change exactly once and remembers its reply.

    ``run`` opens a transaction with the command's inbox claim (one round trip), runs ``execute`` and commits
    with the writes ``execute`` kept for the commit, the outbox messages it recorded and the reply kept with
    the inbox row (one round trip): on
    success that is the whole transaction (no savepoint). ``execute`` must not open ``conn.transaction()``
    (asyncpg does not track a transaction opened this way) nor end the transaction. A business error rolls
    the transaction back (the change and the claim with it) and stores its reply with the inbox row in one
    statement after it; a delivery of the same command that claimed the row in between answers for both. A repeated command
    returns the stored reply without running again. A value Postgres refuses is a business error too (400
    ``VAL_VALUE_REFUSED``, stored like one), whether a statement of ``execute`` or a write it kept for the
    commit (:func:`stella.kit.outbox.write_at_commit`) carried it. Faults (anything not reportable) roll everything back and
    propagate, so the message is retried; so does a reportable 5xx (a dependency that did not answer): it
    answers this delivery but is not stored, so the command runs again when repeated.
    """

    def __init__(self, pool: Callable[[], asyncpg.Pool], consumer: str) -> None:
        self._pool = pool
        self.consumer = consumer

    async def seen(self, command: Command, *, only_reads_before_run: bool = False) -> Reply | None:
        """The stored reply of an already handled command, or None.

        Args:
            command: The command.
            only_reads_before_run: The caller does nothing but read (queries to other services, reads of its
                own tables) before :meth:`run`. On a first delivery, which is a repeat only when its sender
                published it again after the stream's duplicate window, the inbox is then not asked here:
                :meth:`run` finds the repeat in the inbox all the same and answers it with the stored reply,
                after reads that changed nothing. A redelivery is asked about, so it makes no call again.
        """
        if only_reads_before_run and delivery_attempt.get() == 1:
            return None
        async with self._pool().acquire() as conn:
            stored = await conn.fetchval(_STORED_REPLY, self.consumer, command.message_id)
        return Reply.model_validate(stored) if stored is not None else None

    async def run(
        self,
        command: Command,
        execute: Callable[[asyncpg.Connection], Awaitable[Any]],
        *,
        keep: Callable[[Any], Any] | None = None,
    ) -> Reply:
        """Handle ``command`` with ``execute(conn)`` (whose return value is the reply data).

        ``keep`` turns successful reply data into what is stored for repeats, when the first answer holds
        something that must not be stored (a secret shown once).
        """
        async with self._pool().acquire() as conn:
            try:
                # The transaction's first round trip opens it and claims the command, its last keeps the reply
                # and commits.
                async with _transaction_claiming(conn, self.consumer, [command.message_id]) as claim:
                    if not claim.claimed:
                        answer = None  # handled before: answered from the inbox below, after the empty commit
                    else:
                        try:
                            answer = Reply.success(await execute(conn))
                        except Exception as exc:
                            raise _Refused(_command_failure(exc)) from exc  # rolls back the change and the claim
                        claim.reply = Reply.success(keep(answer.data)) if keep is not None else answer
                return answer if answer is not None else await self._stored(conn, command)
            except _Refused as refused_:
                reply = refused_.reply
            except Exception as exc:
                # The commit failed (rolled back): a write kept for it (``write_at_commit``) holding a value
                # Postgres refuses is the command's business error, as it is when the write is made at once.
                reply = _command_failure(exc)
            if reply.error is not None and reply.error.status >= 500:
                return reply  # not final: nothing is stored, a repeat runs the command again
            stored = await conn.fetchval(
                _CLAIM_WITH_REPLY, self.consumer, command.message_id, reply.model_dump(mode="json")
            )
            return reply if stored else await self._stored(conn, command)

    async def _stored(self, conn: asyncpg.Connection, command: Command) -> Reply:
        stored = await conn.fetchval(_STORED_REPLY, self.consumer, command.message_id)
        return Reply.model_validate(stored) if stored is not None else Reply.success()


def _command_failure(exc: Exception) -> Reply:
    """The reply for a command whose ``execute`` raised ``exc``; a fault is raised again."""
    if is_reportable(exc):
        return Reply.failure(error_detail(exc))
    if is_permanent(exc):
        return Reply.failure(error_detail(refused(exc)))
    raise exc


class _Refused(Exception):
    """Rolls back a command that ended in a business error (or a 5xx reply) and carries its reply."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.error.code if reply.error else "")
        self.reply = reply


LateReplyHandler = Callable[[uuid.UUID, uuid.UUID, Reply], Awaitable[None]]
"""``handler(tenant_id, message_id, reply)`` for a command reply that came after its caller gave up."""


class ServiceClient:
    """How a caller (the gateway, another service) talks to services: queries, commands, events.

    One connection and one reply subscription serve every call; pending commands are bounded. A caller
    that retries commands (the gateway, under an ``Idempotency-Key``) may ask for replies that arrive after
    it stopped waiting to be handed to ``on_late_reply``, so the retry can answer with them.
    """

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        *,
        names: Names | None = None,
        max_pending: int = 10_000,
        on_late_reply: LateReplyHandler | None = None,
        max_awaited_late: int = 10_000,
    ) -> None:
        self.nc = nc
        self.js = js
        self.names = names or Names()
        self._prefix = f"_INBOX.stella.{uuid.uuid4().hex}"
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._max_pending = max_pending
        self._on_late_reply = on_late_reply
        self._awaited_late: OrderedDict[str, uuid.UUID] = OrderedDict()
        self._max_awaited_late = max_awaited_late
        self._sub: Any = None

    async def start(self) -> None:
        """Subscribe to this client's reply inbox."""
        self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def stop(self) -> None:
        """Unsubscribe and fail pending calls."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()

    def await_late_reply(self, message_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
        """Hand a reply to ``message_id`` arriving after its caller gave up to ``on_late_reply`` (bounded)."""
        self._awaited_late[message_id.hex] = tenant_id
        self._awaited_late.move_to_end(message_id.hex)
        while len(self._awaited_late) > self._max_awaited_late:
            self._awaited_late.popitem(last=False)

    def forget_late_reply(self, message_id: uuid.UUID) -> None:
        """Stop waiting for a late reply to ``message_id`` (its caller got an answer)."""
        self._awaited_late.pop(message_id.hex, None)

    async def _on_reply(self, msg: Msg) -> None:
        key = msg.subject.rsplit(".", 1)[-1]
        try:
            reply = Reply.model_validate_json(msg.data)
        except ValidationError:
            log.error("a command reply is not a Reply", extra={"subject": msg.subject})
            return
        fut = self._pending.get(key)
        if fut is not None:
            if not fut.done():
                fut.set_result(reply)
            return
        tenant_id = self._awaited_late.pop(key, None)
        if tenant_id is None or self._on_late_reply is None:
            return  # nobody waits for it: a duplicate answer
        try:
            await self._on_late_reply(tenant_id, uuid.UUID(hex=key), reply)
        except Exception:
            # A reply callback has no caller to report to; the caller's retry sends the command again.
            log.exception("could not keep a late command reply", extra={"message_id": key})

    async def query(self, subject: str, query: Query, *, timeout: float = 5.0) -> Reply:
        """Ask a read over request/reply; a missing or silent service gives a 503 reply."""
        headers: dict[str, str] | None = None
        if tracing.enabled():
            headers = {}
            tracing.inject(headers)
        try:
            msg = await self.nc.request(
                self.names.subject(subject), query.model_dump_json().encode(), timeout=timeout, headers=headers
            )
        except nats.errors.NoRespondersError:
            return _unavailable(subject, "no service answers")
        except (TimeoutError, nats.errors.TimeoutError):
            return _unavailable(subject, f"no answer within {timeout:g}s")
        except nats.errors.Error as exc:
            if not is_transient(exc):
                raise
            return _unavailable(subject, f"the message bus is unavailable ({type(exc).__name__})")
        return Reply.model_validate_json(msg.data)

    async def command(self, subject: str, command: Command, *, timeout: float = 10.0, resend: bool = False) -> Reply:
        """Send a durable command and wait for its reply.

        The command is stored in JetStream with ``Nats-Msg-Id = message_id``, so a service that is down
        handles it when it is back. When no reply comes in ``timeout`` the result is a 503 ``SYS_PENDING``
        reply saying the command is queued.

        Args:
            subject: The command's contract subject.
            command: The command.
            timeout: Seconds to wait for the reply.
            resend: This repeats a command sent before (same ``message_id``). It then goes out with a new
                ``Nats-Msg-Id``: the old one would be dropped by the stream's duplicate window and never
                answered, while the service answers a repeat from its inbox (or handles it once if the
                first copy was lost).
        """
        if len(self._pending) >= self._max_pending:
            return _unavailable(subject, "too many commands in flight")
        key = command.message_id.hex
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        stream_id = f"{command.message_id}:{uuid.uuid4().hex}" if resend else str(command.message_id)
        headers = {HEADER_MSG_ID: stream_id, HEADER_REPLY_TO: f"{self._prefix}.{key}"}
        tracing.inject(headers)
        try:
            await self.js.publish(
                self.names.subject(subject), command.model_dump_json().encode(), headers=headers, timeout=timeout
            )
            return await asyncio.wait_for(fut, timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return Reply.failure(
                ErrorDetail(
                    code="SYS_PENDING",
                    status=503,
                    title="The command is queued but not handled yet",
                    detail=f"No result came within {timeout:g}s; the command stays queued. Repeat the request "
                    "with the same Idempotency-Key to get its result.",
                )
            )
        except nats.errors.Error as exc:
            if not is_transient(exc):
                raise
            # Nothing was stored: the caller repeats the command.
            return _unavailable(subject, f"the message bus is unavailable ({type(exc).__name__})")
        finally:
            if self._pending.get(key) is fut:
                del self._pending[key]

    async def send(self, subject: str, command: Command) -> None:
        """Send a command without waiting for its reply (service to service)."""
        headers = {HEADER_MSG_ID: str(command.message_id)}
        tracing.inject(headers)
        await self.js.publish(self.names.subject(subject), command.model_dump_json().encode(), headers=headers)


def _unavailable(subject: str, why: str) -> Reply:
    return Reply.failure(
        ErrorDetail(code="SYS_UNAVAILABLE", status=503, title="Service unavailable", detail=f"{subject}: {why}")
    )
