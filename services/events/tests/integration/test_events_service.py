"""The events service against real Postgres, NATS and HTTP: projection, webhooks, retries, SSRF, disabling."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from nats.aio.client import Client
from standardwebhooks import Webhook

from stella.contracts import deployment, promotion
from stella.contracts import events as c
from stella.contracts.approval import APPROVAL_GRANTED
from stella.contracts.public import CloudEvent, public_subject
from stella.events.domain import public_event_id
from stella.events.settings import Settings
from stella.testing.messaging import collect_messages

from .conftest import Harness, Receiver, approval_changed, body, promotion_changed, running


async def _webhook(events: Harness, url: str, **fields: Any) -> dict[str, Any]:
    reply = await events.caller.command(c.CREATE_WEBHOOK, c.CreateWebhook, url=url, **fields)
    assert reply.ok, reply.error
    return reply.data


async def test_internal_events_become_cloud_events_once_on_the_tenants_subject(events: Harness, nats: Client) -> None:
    tenant = events.caller.tenant_id
    other = uuid.uuid4()
    event = promotion_changed(tenant)
    mine = events.names.subject(f"stella.public.{tenant}.>")
    theirs = events.names.subject(f"stella.public.{other}.>")
    async with collect_messages(nats, mine) as received, collect_messages(nats, theirs) as leaked:
        await events.publish_internal(promotion.PROMOTION_APPROVED, event)
        [msg] = await received.wait(1)
        # The same internal event delivered again (a relay's resend beyond the duplicate window): no second event.
        again = event.model_copy(update={})
        await nats.jetstream().publish(
            events.names.subject(promotion.PROMOTION_APPROVED),
            again.model_dump_json().encode(),
            headers={"Nats-Msg-Id": f"{event.message_id}:resend"},
        )
        await events.publish_internal(promotion.PROMOTION_REQUESTED, promotion_changed(tenant))
        await received.wait(2)
        await asyncio.sleep(0.5)
    assert len(received.messages) == 2
    assert leaked.messages == []
    assert msg.headers is not None
    assert events.names.local(msg.subject) == public_subject(tenant, "org.stellaops.promotion.approved")
    assert msg.headers["Content-Type"] == "application/cloudevents+json"
    cloud = CloudEvent.model_validate(body(msg))
    assert msg.headers["Nats-Msg-Id"] == cloud.id
    assert cloud.type == "org.stellaops.promotion.approved"
    assert cloud.source == f"/tenants/{tenant}/promotions/{event.promotion.id}"
    assert cloud.subject == str(event.promotion.id)
    assert cloud.tenantid == str(tenant)
    assert cloud.dataschema == "urn:stellaops:schema:org.stellaops.promotion.approved:v1"
    assert cloud.data["status"] == "approved"
    assert cloud.data["components"] == [{"name": "api", "digest": "sha256:" + "a" * 64}]
    assert cloud.data["decision"]["result"] == "allow"
    assert await events.table_count("public_events") == 2


async def test_a_webhook_gets_signed_events_and_a_failing_receiver_gets_it_on_the_fourth_try(
    events: Harness, receiver: Receiver
) -> None:
    created = await _webhook(events, receiver.url, event_types=["org.stellaops.promotion.*"], description="ci")
    secret = created["secret"]
    assert secret.startswith("whsec_")
    webhook_id = created["id"]
    receiver.fail_next(3)
    event = promotion_changed(events.caller.tenant_id)
    await events.publish_internal(promotion.PROMOTION_APPROVED, event)
    # Not subscribed to approvals: this one never reaches the receiver.
    await events.publish_internal(APPROVAL_GRANTED, approval_changed(events.caller.tenant_id, event.promotion.id))
    requests = await receiver.wait(lambda r: len([x for x in r if x.answered == 200]) == 1)
    assert [r.answered for r in requests] == [500, 500, 500, 200]
    ids = {r.headers["webhook-id"] for r in requests}
    assert len(ids) == 1  # the same message on every retry
    for request in requests:
        payload = Webhook(secret).verify(request.body, request.headers)
        assert payload["type"] == "org.stellaops.promotion.approved"
        assert request.headers["Content-Type"] == "application/cloudevents+json"
    [delivery] = await events.deliveries(uuid.UUID(webhook_id), lambda d: bool(d) and d[0]["status"] == "succeeded")
    assert delivery["attempts"] == 4
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 500, 200]
    assert delivery["event_id"] == requests[0].headers["webhook-id"]
    # The secret was shown once: reading the webhook does not show it, nor does a repeat of the command.
    read = await events.caller.query(c.GET_WEBHOOK, c.GetWebhook, webhook_id=uuid.UUID(webhook_id))
    assert "secret" not in read.data
    async with events.app.runtime.pool.acquire() as conn:
        stored = await conn.fetch("SELECT reply::text AS reply FROM inbox WHERE consumer = 'events-commands'")
        sealed = await conn.fetchval("SELECT secret_sealed FROM webhooks")
    assert all(secret not in row["reply"] for row in stored)
    assert secret.encode() not in bytes(sealed)
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 4


async def test_manual_redelivery_sends_the_same_event_again(events: Harness, receiver: Receiver) -> None:
    created = await _webhook(events, receiver.url)
    await events.publish_internal(promotion.PROMOTION_APPROVED, promotion_changed(events.caller.tenant_id))
    await receiver.wait(lambda r: len(r) == 1)
    webhook_id = uuid.UUID(created["id"])
    [first] = await events.deliveries(webhook_id, lambda d: bool(d) and d[0]["status"] == "succeeded")
    reply = await events.caller.command(
        c.REDELIVER, c.Redeliver, webhook_id=webhook_id, delivery_id=uuid.UUID(first["id"])
    )
    assert reply.ok, reply.error
    assert reply.data["redelivery_of"] == first["id"]
    requests = await receiver.wait(lambda r: len(r) == 2)
    assert requests[0].headers["webhook-id"] == requests[1].headers["webhook-id"]
    assert requests[0].body == requests[1].body
    missing = await events.caller.command(c.REDELIVER, c.Redeliver, webhook_id=webhook_id, delivery_id=uuid.uuid4())
    assert missing.error is not None and missing.error.code == "INT_DELIVERY_NOT_FOUND"


async def test_bad_webhooks_are_refused_and_nothing_is_stored(events_settings: Settings, nats: Client) -> None:
    strict = events_settings.model_copy(update={"webhook_require_https": True, "webhook_allowed_networks": ()})
    async with running(strict, nats) as events:
        cases = {
            "http://169.254.169.254/latest/meta-data/": (422, "VAL_WEBHOOK_URL_FORBIDDEN"),
            "https://169.254.169.254/latest/meta-data/": (422, "VAL_WEBHOOK_URL_FORBIDDEN"),
            "https://[::ffff:127.0.0.1]/": (422, "VAL_WEBHOOK_URL_FORBIDDEN"),
            "https://localhost/hooks": (422, "VAL_WEBHOOK_URL_FORBIDDEN"),
            "https://10.1.2.3/": (422, "VAL_WEBHOOK_URL_FORBIDDEN"),
            "http://hooks.example.com/": (422, "VAL_WEBHOOK_URL_NOT_HTTPS"),
            "https://nothing.invalid/": (422, "VAL_WEBHOOK_URL_UNRESOLVABLE"),
            "gopher://example.com/": (400, "VAL_WEBHOOK_URL_INVALID"),
        }
        for url, (status, code) in cases.items():
            reply = await events.caller.command(c.CREATE_WEBHOOK, c.CreateWebhook, url=url)
            assert reply.error is not None, url
            assert (reply.error.status, reply.error.code) == (status, code), (url, reply.error)
        unknown = await events.caller.command(
            c.CREATE_WEBHOOK,
            c.CreateWebhook,
            url="https://93.184.216.34/",
            event_types=["org.stellaops.promotion.exploded"],
        )
        assert unknown.error is not None and (unknown.error.status, unknown.error.code) == (
            400,
            "VAL_UNKNOWN_EVENT_TYPE",
        )
        assert await events.table_count("webhooks") == 0


async def test_a_name_that_resolves_elsewhere_at_delivery_time_reaches_nothing(
    events_settings: Settings, nats: Client, receiver: Receiver
) -> None:
    """DNS rebinding: the name looked public when the webhook was saved, and resolves to loopback later."""
    strict = events_settings.model_copy(update={"webhook_allowed_networks": ()})

    async def public_at_first(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address("93.184.216.34")]

    async with running(strict, nats, {"resolve": public_at_first}) as events:
        created = await _webhook(events, f"http://localhost:{receiver.port}/hooks")
        await events.publish_internal(promotion.PROMOTION_APPROVED, promotion_changed(events.caller.tenant_id))
        webhook_id = uuid.UUID(created["id"])
        items = await events.deliveries(webhook_id, lambda d: bool(d) and len(d[0]["attempt_log"]) >= 2)
        attempt = items[0]["attempt_log"][0]
        assert attempt["status_code"] is None
        assert "no address a webhook may reach" in attempt["error"]
    assert receiver.requests == []


async def test_a_webhook_that_keeps_failing_is_disabled_with_an_event(
    events_settings: Settings, nats: Client, receiver: Receiver
) -> None:
    fast = events_settings.model_copy(update={"disable_after_s": 0.0, "disable_after_failures": 3})
    async with running(fast, nats) as events:
        tenant = events.caller.tenant_id
        receiver.fail_next(1000)
        failing = await _webhook(events, receiver.url)
        watcher_receiver = Receiver()
        await watcher_receiver.start()
        try:
            watcher = await _webhook(events, watcher_receiver.url, event_types=["org.stellaops.webhook.disabled"])
            async with collect_messages(nats, events.names.subject(f"stella.public.{tenant}.webhook.>")) as published:
                await events.publish_internal(promotion.PROMOTION_APPROVED, promotion_changed(tenant))
                [msg] = await published.wait(1, timeout=20)
            disabled = CloudEvent.model_validate(body(msg))
            assert disabled.type == "org.stellaops.webhook.disabled"
            assert disabled.subject == failing["id"]
            assert disabled.data["consecutive_failures"] == 3
            assert "500" in disabled.data["last_error"]
            assert "url" not in disabled.data  # a URL may hold a token: never published
            [notified] = await watcher_receiver.wait(lambda r: len(r) == 1)
            assert Webhook(watcher["secret"]).verify(notified.body, notified.headers)["id"] == disabled.id
        finally:
            await watcher_receiver.stop()
        read = await events.caller.query(c.GET_WEBHOOK, c.GetWebhook, webhook_id=uuid.UUID(failing["id"]))
        assert read.data["enabled"] is False
        assert "3 delivery attempts" in read.data["disabled_reason"]
        attempts_when_disabled = len(receiver.requests)
        await asyncio.sleep(0.5)
        assert len(receiver.requests) == attempts_when_disabled == 3
        # Redelivery waits for the webhook to be enabled again; enabling it resumes its deliveries.
        [delivery] = await events.deliveries(uuid.UUID(failing["id"]), bool)
        refused = await events.caller.command(
            c.REDELIVER, c.Redeliver, webhook_id=uuid.UUID(failing["id"]), delivery_id=uuid.UUID(delivery["id"])
        )
        assert refused.error is not None and refused.error.code == "INT_WEBHOOK_DISABLED"
        receiver.fail_next(0)
        enabled = await events.caller.command(
            c.UPDATE_WEBHOOK, c.UpdateWebhook, webhook_id=uuid.UUID(failing["id"]), enabled=True
        )
        assert enabled.ok and enabled.data["consecutive_failures"] == 0 and enabled.data["disabled_reason"] is None
        await receiver.wait(lambda r: any(x.answered == 200 for x in r))


async def test_webhooks_and_events_are_tenant_scoped(events: Harness, receiver: Receiver) -> None:
    created = await _webhook(events, receiver.url)
    other = events.caller.other_tenant()
    missing = await other.query(c.GET_WEBHOOK, c.GetWebhook, webhook_id=uuid.UUID(created["id"]))
    assert missing.error is not None and missing.error.status == 404
    deleted = await other.command(c.DELETE_WEBHOOK, c.DeleteWebhook, webhook_id=uuid.UUID(created["id"]))
    assert deleted.error is not None and deleted.error.status == 404
    # Another tenant's event never reaches this tenant's webhook.
    await events.publish_internal(promotion.PROMOTION_APPROVED, promotion_changed(other.tenant_id))
    mine = promotion_changed(events.caller.tenant_id)
    await events.publish_internal(promotion.PROMOTION_APPROVED, mine)
    [request] = await receiver.wait(lambda r: len(r) == 1)
    assert body_tenant(request.body) == str(events.caller.tenant_id)
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 1
    listing = await other.query(c.LIST_WEBHOOKS, c.ListWebhooks)
    assert listing.data["items"] == []


def body_tenant(text: str) -> str:
    return str(json.loads(text)["tenantid"])


async def test_a_promotions_timeline_lists_its_events_in_order(events: Harness) -> None:
    tenant = events.caller.tenant_id
    requested = promotion_changed(tenant, "pending_gate")
    pid = requested.promotion.id
    await events.publish_internal(promotion.PROMOTION_REQUESTED, requested)
    await events.publish_internal(APPROVAL_GRANTED, approval_changed(tenant, pid))
    await events.publish_internal(promotion.PROMOTION_APPROVED, promotion_changed(tenant, "approved", pid))
    await events.publish_internal(promotion.PROMOTION_APPROVED, promotion_changed(tenant, "approved"))  # another one
    for _ in range(100):
        page = await events.caller.query(c.LIST_EVENTS, c.ListEvents, resource=f"promotions/{pid}")
        if len(page.data["items"]) == 3:
            break
        await asyncio.sleep(0.05)
    types = [e["type"] for e in page.data["items"]]
    assert types == [
        "org.stellaops.promotion.requested",
        "org.stellaops.approval.granted",
        "org.stellaops.promotion.approved",
    ]
    only = await events.caller.query(
        c.LIST_EVENTS,
        c.ListEvents,
        resource=f"promotions/{pid}",
        types=["org.stellaops.approval.*"],
        page={"page_size": 1},
    )
    assert [e["type"] for e in only.data["items"]] == ["org.stellaops.approval.granted"]
    assert only.data["next_page_token"] is None
    paged = await events.caller.query(c.LIST_EVENTS, c.ListEvents, resource=f"promotions/{pid}", page={"page_size": 2})
    assert len(paged.data["items"]) == 2 and paged.data["next_page_token"]
    bad = await events.caller.query(c.LIST_EVENTS, c.ListEvents, resource="promotions/nope")
    assert bad.error is not None and bad.error.status == 400
    elsewhere = await events.caller.other_tenant().query(c.LIST_EVENTS, c.ListEvents, resource=f"promotions/{pid}")
    assert elsewhere.data["items"] == []


async def test_retries_stop_at_the_end_of_the_window(
    events_settings: Settings, nats: Client, receiver: Receiver
) -> None:
    short = events_settings.model_copy(update={"retry_window_s": 0.6, "disable_after_failures": 1000})
    async with running(short, nats) as events:
        receiver.fail_next(1000, status=503)
        created = await _webhook(events, receiver.url)
        await events.publish_internal(promotion.PROMOTION_APPROVED, promotion_changed(events.caller.tenant_id))
        webhook_id = uuid.UUID(created["id"])
        [delivery] = await events.deliveries(webhook_id, lambda d: bool(d) and d[0]["status"] == "failed")
        assert delivery["status"] == "failed"
        assert delivery["next_attempt_at"] is None
        # How many attempts fit in the window depends on the machine; each one reached the receiver and is logged.
        assert delivery["attempts"] == len(delivery["attempt_log"]) == len(receiver.requests) >= 1
        assert delivery["last_status_code"] == 503
        made = len(receiver.requests)
        await asyncio.sleep(timedelta(seconds=0.5).total_seconds())
        assert len(receiver.requests) == made


async def test_task_progress_is_projected_onto_the_tenants_stream_about_its_job_and_promotion(
    events: Harness, nats: Client
) -> None:
    tenant, other = events.caller.tenant_id, uuid.uuid4()
    job_id, promotion_id = uuid.uuid4(), uuid.uuid4()
    progressed = deployment.TasksProgressed(
        tenant_id=tenant,
        correlation_id=uuid.uuid4(),
        job_id=job_id,
        promotion_id=promotion_id,
        release_id=uuid.uuid4(),
        environment_id=uuid.uuid4(),
        strategy="rolling",
        job_status="running",
        current_batch=1,
        batch_count=3,
        target_count=6,
        agent_id=uuid.uuid4(),
        tasks=[
            deployment.TaskProgress(
                task_id=uuid.uuid4(),
                target_id=uuid.uuid4(),
                target_name=f"web-{i}",
                type="deploy",
                batch=1,
                status="succeeded" if i else "running",
                attempt=1,
                log_lines=4 * i,
                log_seq=i,
            )
            for i in range(2)
        ],
        at=datetime.now(UTC),
    )
    mine = events.names.subject(f"stella.public.{tenant}.>")
    theirs = events.names.subject(f"stella.public.{other}.>")
    async with collect_messages(nats, mine) as received, collect_messages(nats, theirs) as leaked:
        await events.publish_internal(deployment.TASKS_PROGRESSED, progressed)
        [msg] = await received.wait(1)
        await asyncio.sleep(0.3)
    assert leaked.messages == []
    assert events.names.local(msg.subject) == public_subject(tenant, "org.stellaops.deployment.tasks_progressed")
    cloud = CloudEvent.model_validate(body(msg))
    assert (cloud.source, cloud.subject) == (f"/tenants/{tenant}/deployment-jobs/{job_id}", str(job_id))
    assert [(t["target_name"], t["status"], t["log_lines"], t["log_seq"]) for t in cloud.data["tasks"]] == [
        ("web-0", "running", 0, 0),
        ("web-1", "succeeded", 4, 1),
    ]
    assert (cloud.data["current_batch"], cloud.data["batch_count"]) == (1, 3)
    assert "agent_id" not in cloud.data
    # Found by the promotion it deploys (what the dashboard's live view follows), by this tenant only.
    page = await events.caller.query(c.LIST_EVENTS, c.ListEvents, resource=f"promotions/{promotion_id}")
    assert [e["id"] for e in page.data["items"]] == [cloud.id]
    elsewhere = await events.caller.other_tenant().query(
        c.LIST_EVENTS, c.ListEvents, resource=f"promotions/{promotion_id}"
    )
    assert elsewhere.data["items"] == []


async def test_delivery_loops_are_woken_only_when_a_webhook_takes_the_event(
    events: Harness, receiver: Receiver
) -> None:
    tenant = events.caller.tenant_id
    woken: list[str] = []
    listener = await asyncpg.connect(events.app.runtime.settings.database_url)
    schema = events.app.runtime.schema
    try:
        await listener.add_listener(f"stella_deliveries_{schema}", lambda *args: woken.append(args[2]))
        # No webhook takes the event: it is projected and published, and no delivery loop is woken.
        async with collect_messages(events.nats, events.names.subject(f"stella.public.{tenant}.>")) as published:
            await events.publish_internal(promotion.PROMOTION_APPROVED, promotion_changed(tenant))
            await published.wait(1)
        await asyncio.sleep(0.3)
        assert woken == []
        # A webhook takes the next one: its delivery wakes the loops once.
        await _webhook(events, receiver.url, event_types=["org.stellaops.promotion.*"])
        await events.publish_internal(promotion.PROMOTION_APPROVED, promotion_changed(tenant))
        await receiver.wait(lambda requests: len(requests) == 1)
        await asyncio.sleep(0.3)
        assert woken == [f"stella_deliveries_{schema}"]
    finally:
        await listener.close()


async def test_a_burst_of_internal_events_is_recorded_in_order_once_each_and_queued_for_the_webhooks_it_matches(
    events: Harness, receiver: Receiver, nats: Client
) -> None:
    """Events arriving together (handled in batches): one public event per internal event, numbered in stream
    order, each published once and queued once for each webhook of its tenant whose filter takes it."""
    created = await _webhook(events, receiver.url, event_types=["org.stellaops.promotion.*"])
    tenant, other = events.caller.tenant_id, uuid.uuid4()
    sent: list[tuple[str, promotion.PromotionChanged]] = []
    for i in range(30):
        subject = promotion.PROMOTION_APPROVED if i % 3 else promotion.PROMOTION_REQUESTED
        sent.append((subject, promotion_changed(tenant if i % 2 == 0 else other)))
    mine = events.names.subject(f"stella.public.{tenant}.>")
    async with collect_messages(nats, mine) as published:
        await asyncio.gather(*(events.publish_internal(subject, event) for subject, event in sent[:20]))
        for subject, event in sent[20:]:
            await events.publish_internal(subject, event)
        # One of them once more, as a relay's resend beyond the duplicate window: no second public event.
        await nats.jetstream().publish(
            events.names.subject(sent[4][0]),
            sent[4][1].model_dump_json().encode(),
            headers={"Nats-Msg-Id": f"{sent[4][1].message_id}:resend"},
        )
        await published.wait(15)
        for _ in range(200):
            if await events.table_count("public_events") == 30:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    assert await events.table_count("public_events") == 30
    assert len(published.messages) == 15
    async with events.app.runtime.pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, tenant_id, seq FROM public_events ORDER BY seq")
        queued = await conn.fetch("SELECT event_id, webhook_id FROM deliveries")
    by_id = {r["id"]: r for r in rows}
    ids = [public_event_id(event.message_id) for _, event in sent]
    assert set(by_id) == set(ids)
    # The stream's order, within the events published one after the other.
    tail = [by_id[i]["seq"] for i in ids[20:]]
    assert tail == sorted(tail) and min(tail) > max(by_id[i]["seq"] for i in ids[:20])
    assert sorted(str(r["event_id"]) for r in queued) == sorted(
        str(public_event_id(event.message_id)) for _, event in sent if event.tenant_id == tenant
    )
    assert {str(r["webhook_id"]) for r in queued} == {created["id"]}
