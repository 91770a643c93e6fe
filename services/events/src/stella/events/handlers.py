"""Use cases of the events service: project internal events, manage webhooks, deliver.

Projection: an internal event the catalogue names becomes its public CloudEvent in the transaction that
claims the event in the inbox: the public event is recorded, written to the outbox (published on
``stella.public.<tenant>.<context>.<event>`` with ``Nats-Msg-Id`` = its id) and queued for every enabled webhook
of the same tenant whose filters take it. A redelivered internal event therefore has one effect, and no
statement ever reads or writes another tenant's webhooks.

Deliveries are worked by a timer loop: due deliveries are claimed with a lease (``FOR UPDATE SKIP LOCKED``,
so replicas share the work), sent outside any transaction, and their outcome recorded: success, a retry with
back-off and jitter until the retry window ends, or failure. A webhook whose attempts keep failing is disabled
and ``org.stellaops.webhook.disabled`` is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID, uuid4

import asyncpg

from stella.contracts import events as c
from stella.contracts.envelope import Event, Page, Reply, utcnow
from stella.contracts.public import (
    MEDIA_TYPE,
    WEBHOOK_DISABLED,
    PublicData,
    PublicEventSpec,
    check_resource_filter,
    public_subject,
    to_cloudevent,
)
from stella.contracts.public.catalogue import WebhookDisabledData
from stella.contracts.public.cloudevents import TYPE_PREFIX
from stella.events import domain, metrics, repo
from stella.events.delivery import Outcome, Sender, signed_headers
from stella.events.domain import (
    AddressPolicy,
    DisablePolicy,
    Health,
    IPAddress,
    RetryPolicy,
    check_addresses,
    check_event_types,
    parse_webhook_url,
)
from stella.events.sealing import Sealer, SealingError, new_secret
from stella.kit import tracing
from stella.kit.broker import CommandProcessor
from stella.kit.errors import ServiceError, error_detail
from stella.kit.outbox import message_headers
from stella.kit.pagination import aware_datetime, decode_cursor, encode_cursor, int64

log = logging.getLogger(__name__)

Resolve = Callable[[str, int], Awaitable[list[IPAddress]]]
"""``resolve(host, port)``: the addresses a host name stands for."""

SERVICE: Final[str] = "events"
"""The service's name in spans."""


class TooManyWebhooks(ServiceError):
    """The tenant has as many webhooks as it may."""

    code = "INT_WEBHOOK_LIMIT"
    status = 409
    title = "Too many webhooks"


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """Resolve ``host`` with the system's resolver (in a thread: ``getaddrinfo`` blocks)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return sorted({ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}, key=str)


def _without_secret(data: Any) -> Any:
    """What a create-webhook reply stores for repeats: everything but the secret (it is shown once)."""
    return {**data, "secret": None} if isinstance(data, dict) else data


def _failure(exc: ServiceError) -> Reply:
    return Reply.failure(error_detail(exc))


class Handlers:
    """The events service's use cases.

    Args:
        pool: Returns the service's pool.
        processor: Runs commands once and remembers their replies.
        sealer: Seals and opens webhook secrets.
        sender: Sends delivery attempts.
        policy: Which webhook URLs and addresses are allowed.
        retry: How failed deliveries are retried.
        disable: When a failing webhook is disabled.
        concurrency: Delivery attempts in flight at once.
        resolve_timeout_s: Seconds a URL's host may take to resolve when a webhook is saved.
        max_webhooks: Webhooks one tenant may have.
        resolve: How host names are resolved when a webhook is saved.
        clock: Current UTC time.
        jitter: A random number in [0, 1) per retry.
        on_queued: Called when deliveries may have become due (wakes the delivery loop).
    """

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        processor: CommandProcessor,
        *,
        sealer: Sealer,
        sender: Sender,
        policy: AddressPolicy,
        retry: RetryPolicy,
        disable: DisablePolicy,
        concurrency: int,
        resolve_timeout_s: float = 5.0,
        max_webhooks: int = 100,
        resolve: Resolve = system_resolve,
        clock: Callable[[], datetime] = utcnow,
        jitter: Callable[[], float] = random.random,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._pool = pool
        self._processor = processor
        self._sealer = sealer
        self._sender = sender
        self._policy = policy
        self._retry = retry
        self._disable = disable
        self._concurrency = concurrency
        self._resolve_timeout_s = resolve_timeout_s
        self._max_webhooks = max_webhooks
        self._resolve = resolve
        self._clock = clock
        self._jitter = jitter
        self._on_queued = on_queued
        self._in_flight: set[asyncio.Task[None]] = set()
        self._lease = timedelta(seconds=sender.timeout_s * 2 + 30)

    # --- projection --------------------------------------------------------------------------------------

    def projector(self, spec: PublicEventSpec[Any]) -> Callable[[Event, asyncpg.Connection], Awaitable[None]]:
        """The event handler turning internal events of ``spec`` into its public event."""

        async def project(event: Event, conn: asyncpg.Connection) -> None:
            assert spec.project is not None
            data = spec.project(event)
            await self.record(
                conn,
                spec,
                data,
                tenant_id=event.tenant_id,
                event_id=domain.public_event_id(event.message_id),
                time=event.occurred_at,
            )

        return project

    async def record(
        self,
        conn: asyncpg.Connection,
        spec: PublicEventSpec[Any],
        data: PublicData,
        *,
        tenant_id: UUID,
        event_id: UUID,
        time: datetime,
        except_webhook: UUID | None = None,
    ) -> None:
        """Record a public event, queue it for the tenant's webhooks and write it to the outbox (in ``conn``'s
        transaction, one statement, made as it commits when its owner defers the last writes)."""
        event = to_cloudevent(
            spec, data, tenant_id=tenant_id, event_id=event_id, time=time, traceparent=tracing.current_traceparent()
        )
        payload = event.to_json()
        now = self._clock()
        await repo.record_event_at_commit(
            conn,
            event_id=event_id,
            tenant_id=tenant_id,
            event_type=spec.type,
            context=spec.context,
            context_filter=f"{TYPE_PREFIX}{spec.context}.*",
            time=event.time,
            related=data.related(),
            payload=payload,
            now=now,
            deadline=now + self._retry.window,
            subject=public_subject(tenant_id, spec.type),
            headers=message_headers({"Content-Type": MEDIA_TYPE}),
            except_webhook=except_webhook,
        )

    # --- webhook commands --------------------------------------------------------------------------------

    async def _check_url(self, url: str) -> None:
        target = parse_webhook_url(url, self._policy)
        if not target.needs_resolution:
            return
        try:
            async with asyncio.timeout(self._resolve_timeout_s):
                addresses = await self._resolve(target.host, target.port)
        except TimeoutError:
            addresses = []
        check_addresses(target, addresses, self._policy)

    async def create_webhook(self, cmd: c.CreateWebhook) -> Reply:
        """Create a webhook with a new secret; the reply holds the secret, which is never shown again."""
        seen = await self._processor.seen(cmd)
        if seen is not None:
            return seen
        try:
            event_types = check_event_types(cmd.event_types)
            await self._check_url(cmd.url)
        except ServiceError as exc:
            return _failure(exc)
        secret = new_secret()
        webhook_id = uuid4()

        async def execute(conn: asyncpg.Connection) -> dict[str, Any]:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('stella.webhooks:' || $1::text, 0))", str(cmd.tenant_id)
            )
            count = await conn.fetchval("SELECT count(*) FROM webhooks WHERE tenant_id = $1", cmd.tenant_id)
            if count >= self._max_webhooks:
                raise TooManyWebhooks(f"a tenant may have {self._max_webhooks} webhooks; delete one first")
            row = await repo.insert_webhook(
                conn,
                webhook_id=webhook_id,
                tenant_id=cmd.tenant_id,
                url=cmd.url,
                description=cmd.description,
                event_types=event_types,
                secret_sealed=self._sealer.seal(secret, cmd.tenant_id, webhook_id),
                enabled=cmd.enabled,
                created_by=cmd.actor_id,
                now=self._clock(),
            )
            created = c.CreatedWebhookView(**row.view().model_dump(), secret=secret)
            return created.model_dump(mode="json")

        return await self._processor.run(cmd, execute, keep=_without_secret)

    async def update_webhook(self, cmd: c.UpdateWebhook) -> Reply:
        """Change a webhook (a new URL is checked like a new webhook's)."""
        seen = await self._processor.seen(cmd)
        if seen is not None:
            return seen
        try:
            event_types = check_event_types(cmd.event_types) if cmd.event_types is not None else None
            if cmd.url is not None:
                await self._check_url(cmd.url)
        except ServiceError as exc:
            return _failure(exc)

        async def execute(conn: asyncpg.Connection) -> dict[str, Any]:
            row = await repo.update_webhook(
                conn,
                cmd.tenant_id,
                cmd.webhook_id,
                url=cmd.url,
                description=cmd.description,
                event_types=event_types,
                enabled=cmd.enabled,
                now=self._clock(),
            )
            if row is None:
                raise domain.WebhookNotFound(f"webhook {cmd.webhook_id} does not exist")
            return row.view().model_dump(mode="json")

        reply = await self._processor.run(cmd, execute)
        if reply.ok and cmd.enabled:
            self._on_queued()  # its waiting deliveries are due again
        return reply

    async def delete_webhook(self, cmd: c.DeleteWebhook) -> Reply:
        """Delete a webhook and its delivery log."""

        async def execute(conn: asyncpg.Connection) -> None:
            if not await repo.delete_webhook(conn, cmd.tenant_id, cmd.webhook_id):
                raise domain.WebhookNotFound(f"webhook {cmd.webhook_id} does not exist")

        return await self._processor.run(cmd, execute)

    async def redeliver(self, cmd: c.Redeliver) -> Reply:
        """Queue a delivery's event for its webhook again (a new delivery, with a fresh retry window)."""

        async def execute(conn: asyncpg.Connection) -> dict[str, Any]:
            webhook = await repo.lock_webhook(conn, cmd.tenant_id, cmd.webhook_id)
            if webhook is None:
                raise domain.WebhookNotFound(f"webhook {cmd.webhook_id} does not exist")
            if not webhook.enabled:
                raise domain.WebhookDisabled("the webhook is disabled; enable it (PUT with enabled: true) first")
            now = self._clock()
            new_id = uuid4()
            if not await repo.redeliver(
                conn,
                cmd.tenant_id,
                cmd.webhook_id,
                cmd.delivery_id,
                new_id=new_id,
                now=now,
                deadline=now + self._retry.window,
            ):
                raise domain.DeliveryNotFound(f"webhook {cmd.webhook_id} has no delivery {cmd.delivery_id}")
            view = await repo.get_delivery(conn, cmd.tenant_id, cmd.webhook_id, new_id)
            assert view is not None
            return view.model_dump(mode="json")

        return await self._processor.run(cmd, execute)

    # --- queries -----------------------------------------------------------------------------------------

    async def get_webhook(self, query: c.GetWebhook) -> Reply:
        """Read one webhook."""
        row = await repo.get_webhook(self._pool(), query.tenant_id, query.webhook_id)
        if row is None:
            raise domain.WebhookNotFound(f"webhook {query.webhook_id} does not exist")
        return Reply.success(row.view().model_dump(mode="json"))

    async def list_webhooks(self, query: c.ListWebhooks) -> Reply:
        """The tenant's webhooks, oldest first."""
        after = decode_cursor(query.page.page_token, aware_datetime, UUID, kind="webhooks")
        rows = await repo.list_webhooks(
            self._pool(), query.tenant_id, after=(after[0], after[1]) if after else None, limit=query.page.page_size + 1
        )
        more = len(rows) > query.page.page_size
        rows = rows[: query.page.page_size]
        token = encode_cursor(rows[-1].created_at.isoformat(), rows[-1].id, kind="webhooks") if more else None
        return Reply.success(
            Page(items=[r.view().model_dump(mode="json") for r in rows], next_page_token=token).model_dump(mode="json")
        )

    async def list_deliveries(self, query: c.ListDeliveries) -> Reply:
        """A webhook's delivery log, newest first, each delivery with its attempts."""
        pool = self._pool()
        if await repo.get_webhook(pool, query.tenant_id, query.webhook_id) is None:
            raise domain.WebhookNotFound(f"webhook {query.webhook_id} does not exist")
        before = decode_cursor(query.page.page_token, aware_datetime, UUID, kind="deliveries")
        views = await repo.list_deliveries(
            pool,
            query.tenant_id,
            query.webhook_id,
            status=query.status,
            before=(before[0], before[1]) if before else None,
            limit=query.page.page_size + 1,
        )
        more = len(views) > query.page.page_size
        views = views[: query.page.page_size]
        token = encode_cursor(views[-1].created_at.isoformat(), views[-1].id, kind="deliveries") if more else None
        return Reply.success(
            Page(items=[v.model_dump(mode="json") for v in views], next_page_token=token).model_dump(mode="json")
        )

    async def list_events(self, query: c.ListEvents) -> Reply:
        """Public events already recorded, oldest first, optionally about one resource and of some types."""
        resource = None
        if query.resource is not None:
            try:
                resource = check_resource_filter(query.resource)
            except ValueError as exc:
                raise domain.InvalidFilter(str(exc)) from None
        filters = check_event_types(query.types)
        exact = [f for f in filters if not f.endswith(".*")]
        contexts = [f[len(TYPE_PREFIX) : -2] for f in filters if f.endswith(".*")]
        after = decode_cursor(query.page.page_token, int64, kind="events")
        rows = await repo.list_events(
            self._pool(),
            query.tenant_id,
            resource=resource,
            types=exact,
            contexts=contexts,
            after=after[0] if after else None,
            limit=query.page.page_size + 1,
        )
        more = len(rows) > query.page.page_size
        rows = rows[: query.page.page_size]
        token = encode_cursor(rows[-1][0], kind="events") if more else None
        return Reply.success(
            Page(items=[json.loads(payload) for _, payload in rows], next_page_token=token).model_dump(mode="json")
        )

    # --- deliveries --------------------------------------------------------------------------------------

    async def next_due(self) -> datetime | None:
        """When the earliest pending delivery is due (the delivery loop sleeps until then)."""
        return await repo.next_due(self._pool())

    async def run_due(self, now: datetime) -> None:
        """Start attempts of due deliveries while there is room; wait for room when there is none."""
        free = self._concurrency - len(self._in_flight)
        if free <= 0:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            return
        async with self._pool().acquire() as conn, conn.transaction():
            claimed = await repo.claim_due(conn, now, now + self._lease, free)
        if not claimed:
            await asyncio.sleep(0.05)  # what is due is being claimed by another replica right now
            return
        for delivery in claimed:
            task = asyncio.create_task(self._attempt(delivery), name=f"delivery-{delivery.id}")
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._on_queued()

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Let attempts in flight finish (at most ``timeout_s``), then cancel the rest: their leases end later."""
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(set(self._in_flight), timeout=timeout_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _attempt(self, delivery: repo.ClaimedDelivery) -> None:
        started = self._clock()
        try:
            secret = self._sealer.open(delivery.secret_sealed, delivery.tenant_id, delivery.webhook_id)
        except SealingError as exc:
            outcome = Outcome(None, str(exc), 0.0, None)
        else:
            headers = signed_headers(secret, str(delivery.event_id), delivery.payload, started)
            outcome = await self._send(delivery, headers)
        try:
            await self._settle(delivery, outcome, started)
        except Exception:
            # The lease makes the delivery due again; the attempt counts, its log line is lost.
            log.exception("could not record a delivery attempt", extra={"delivery_id": str(delivery.id)})

    async def _send(self, delivery: repo.ClaimedDelivery, headers: dict[str, str]) -> Outcome:
        if not tracing.enabled():
            return await self._sender.send(delivery.url, delivery.payload, headers)
        traceparent = json.loads(delivery.payload).get("traceparent")
        with tracing.publish("webhook", SERVICE, {"traceparent": traceparent} if traceparent else None, headers):
            return await self._sender.send(delivery.url, delivery.payload, headers)

    async def _settle(self, delivery: repo.ClaimedDelivery, outcome: Outcome, started: datetime) -> None:
        result, disabled = await self._record_outcome(delivery, outcome, started)
        metrics.webhook_attempts.labels(result).inc()
        if disabled:
            metrics.webhooks_disabled.inc()

    async def _record_outcome(
        self, delivery: repo.ClaimedDelivery, outcome: Outcome, started: datetime
    ) -> tuple[str, bool]:
        """Record an attempt and what follows from it; returns (succeeded|retried|failed, webhook disabled)."""
        now = self._clock()
        async with self._pool().acquire() as conn, conn.transaction():
            await repo.record_attempt(
                conn,
                delivery,
                started_at=started,
                duration_ms=outcome.duration_ms,
                status_code=outcome.status_code,
                error=outcome.error,
                response_excerpt=outcome.response_excerpt,
            )
            if outcome.ok:
                await repo.finish_attempt(
                    conn,
                    delivery,
                    status=c.DeliveryStatus.SUCCEEDED,
                    next_attempt_at=None,
                    completed_at=now,
                    status_code=outcome.status_code,
                    error=None,
                )
                await repo.webhook_succeeded(conn, delivery.tenant_id, delivery.webhook_id)
                return "succeeded", False
            next_at = self._retry.next_attempt(delivery.attempt, delivery.deadline, now, self._jitter())
            await repo.finish_attempt(
                conn,
                delivery,
                status=c.DeliveryStatus.PENDING if next_at is not None else c.DeliveryStatus.FAILED,
                next_attempt_at=next_at,
                completed_at=None if next_at is not None else now,
                status_code=outcome.status_code,
                error=outcome.error,
            )
            result = "retried" if next_at is not None else "failed"
            state = await repo.webhook_failed(conn, delivery.tenant_id, delivery.webhook_id, now, outcome.error or "")
            if state is None:
                return result, False
            failures, failing_since, enabled = state
            health = Health(failures, failing_since)
            if enabled and self._disable.should_disable(health, now):
                reason = self._disable.reason(health)
                if await repo.disable_webhook(conn, delivery.tenant_id, delivery.webhook_id, reason, now):
                    log.warning("webhook disabled", extra={"webhook_id": str(delivery.webhook_id), "reason": reason})
                    data = WebhookDisabledData(
                        webhook_id=delivery.webhook_id,
                        reason=reason,
                        disabled_at=now,
                        failing_since=failing_since,
                        consecutive_failures=failures,
                        last_error=outcome.error,
                    )
                    await self.record(
                        conn,
                        WEBHOOK_DISABLED,
                        data,
                        tenant_id=delivery.tenant_id,
                        event_id=uuid4(),
                        time=now,
                        except_webhook=delivery.webhook_id,
                    )
                    return result, True
            return result, False

    async def purge(self, before: datetime) -> int:
        """Delete public events recorded before ``before`` and their deliveries."""
        async with self._pool().acquire() as conn:
            return await repo.purge_events(conn, before)
