"""Webhooks, public events, the live stream and the AsyncAPI document through the gateway, with the real
events service running in-process on the same NATS namespace."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import uvicorn
from nats.aio.client import Client

from stella.contracts import promotion
from stella.contracts.public import asyncapi
from stella.contracts.streams import HEADER_MSG_ID
from stella.events.app import MIGRATIONS as EVENTS_MIGRATIONS
from stella.events.app import EventsApp
from stella.events.app import create_app as create_events_app
from stella.events.settings import Settings as EventsSettings
from stella.kit.embedded import free_port

from .conftest import Gateway, StandIn, assert_problem


@pytest_asyncio.fixture
async def events_service(
    gateway: Gateway, make_database: Any, nats_url: str, tmp_path: Any
) -> AsyncIterator[EventsApp]:
    """The events service in the gateway's namespace; webhooks must be HTTPS and public (the default)."""
    settings = EventsSettings(
        database_url=await make_database([("events", EVENTS_MIGRATIONS)]),
        nats_url=nats_url,
        nats_namespace=gateway.names.namespace,
        key_dir=tmp_path / "keys",
        outbox_poll_s=0.2,
        db_pool_size=5,
    )
    app = create_events_app(settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest_asyncio.fixture
async def served(gateway: Gateway) -> AsyncIterator[str]:
    """The same gateway application behind a real HTTP server (streams need one), as a base URL."""
    port = free_port()
    config = uvicorn.Config(gateway.app, host="127.0.0.1", port=port, lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _internal(gateway: Gateway, nats: Client, tenant_id: uuid.UUID, status: str = "approved") -> uuid.UUID:
    """Publish an internal promotion event of ``tenant_id`` as the promotion service would."""
    now = datetime.now(UTC)
    view = promotion.PromotionView(
        id=uuid.uuid4(),
        release_id=uuid.uuid4(),
        release_name="r",
        release_components=[],
        source_environment_id=None,
        target_environment_id=uuid.uuid4(),
        target_environment_name="dev",
        status=promotion.PromotionStatus(status),
        reason="",
        requested_by=None,
        requested_at=now,
        updated_at=now,
        decision_record=None,
        workflow_run_id=None,
        next_evaluation_at=None,
        freeze_override=None,
    )
    event = promotion.PromotionChanged(tenant_id=tenant_id, correlation_id=uuid.uuid4(), promotion=view)
    await nats.jetstream().publish(
        gateway.names.subject(promotion.PROMOTION_APPROVED),
        event.model_dump_json().encode(),
        headers={HEADER_MSG_ID: str(event.message_id)},
    )
    return view.id


class SseClient:
    """Reads a live stream: each event's id, type and CloudEvent."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.opened = False

    async def next_event(self, timeout: float = 15.0) -> tuple[int, str, dict[str, Any]]:
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.response.content.readline()).decode().rstrip("\n")
                if line.startswith(":"):
                    self.opened = True
                    continue
                if line == "":
                    if "data" in fields:
                        return int(fields["id"]), fields["event"], json.loads(fields["data"])
                    fields = {}
                    continue
                key, _, value = line.partition(": ")
                fields[key] = value


@contextlib.asynccontextmanager
async def sse(base: str, token: str, query: str = "", last_event_id: str | None = None) -> AsyncIterator[SseClient]:
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/api/v1/events/stream{query}", headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        client = SseClient(resp)
        first = await resp.content.readline()
        assert first.startswith(b":")  # the stream is open: the consumer exists before anything is awaited
        yield client


async def test_webhook_crud_shows_the_secret_once(gateway: Gateway, events_service: EventsApp) -> None:
    tenant = await gateway.tenant()
    body = {"url": "https://93.184.216.34/hooks", "event_types": ["org.stellaops.promotion.*"], "description": "ci"}
    created = await gateway.call("POST", "/api/v1/webhooks", tenant.token, json=body, headers={"Idempotency-Key": "w1"})
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["secret"].startswith("whsec_")
    assert created.headers["location"] == f"/api/v1/webhooks/{hook['id']}"
    replay = await gateway.call("POST", "/api/v1/webhooks", tenant.token, json=body, headers={"Idempotency-Key": "w1"})
    assert replay.status_code == 201 and replay.json()["id"] == hook["id"]
    assert "secret" not in replay.json() or replay.json()["secret"] is None
    read = await gateway.call("GET", f"/api/v1/webhooks/{hook['id']}", tenant.token)
    assert read.status_code == 200 and "secret" not in read.json()
    assert read.json()["event_types"] == ["org.stellaops.promotion.*"]
    updated = await gateway.call(
        "PUT", f"/api/v1/webhooks/{hook['id']}", tenant.token, json={"enabled": False, "description": "paused"}
    )
    assert updated.status_code == 200, updated.text
    assert (updated.json()["enabled"], updated.json()["description"]) == (False, "paused")
    listing = await gateway.call("GET", "/api/v1/webhooks", tenant.token)
    assert [w["id"] for w in listing.json()["items"]] == [hook["id"]]
    log = await gateway.call("GET", f"/api/v1/webhooks/{hook['id']}/deliveries", tenant.token)
    assert log.status_code == 200 and log.json() == {"items": [], "next_page_token": None}
    # Another tenant sees none of it.
    other = await gateway.tenant("b")
    assert_problem(
        await gateway.call("GET", f"/api/v1/webhooks/{hook['id']}", other.token), 404, "INT_WEBHOOK_NOT_FOUND"
    )
    deleted = await gateway.call("DELETE", f"/api/v1/webhooks/{hook['id']}", tenant.token)
    assert deleted.status_code == 204, deleted.text
    assert_problem(
        await gateway.call("GET", f"/api/v1/webhooks/{hook['id']}", tenant.token), 404, "INT_WEBHOOK_NOT_FOUND"
    )


async def test_bad_webhooks_are_refused_and_nothing_is_stored(gateway: Gateway, events_service: EventsApp) -> None:
    tenant = await gateway.tenant()
    cases = [
        ({"url": "http://169.254.169.254/"}, 422, "VAL_WEBHOOK_URL_FORBIDDEN"),
        ({"url": "https://169.254.169.254/latest/meta-data/"}, 422, "VAL_WEBHOOK_URL_FORBIDDEN"),
        ({"url": "https://127.0.0.1:8080/"}, 422, "VAL_WEBHOOK_URL_FORBIDDEN"),
        ({"url": "http://hooks.example.com/"}, 422, "VAL_WEBHOOK_URL_NOT_HTTPS"),
        (
            {"url": "https://93.184.216.34/", "event_types": ["org.stellaops.promotion.exploded"]},
            400,
            "VAL_UNKNOWN_EVENT_TYPE",
        ),
        ({"url": "https://93.184.216.34/", "event_types": ["org.stellaops.*"]}, 400, "VAL_UNKNOWN_EVENT_TYPE"),
        ({"url": "not a url"}, 400, "VAL_WEBHOOK_URL_INVALID"),
        ({"url": "https://93.184.216.34/", "secret": "mine"}, 400, "VAL_INVALID_REQUEST"),
        ({"url": "https://93.184.216.34/", "description": "a\u0000b"}, 400, "VAL_INVALID_CHARACTER"),
        ({"url": "https://93.184.216.34/\u0000"}, 400, "VAL_INVALID_CHARACTER"),
    ]
    for body, status, code in cases:
        problem = assert_problem(await gateway.call("POST", "/api/v1/webhooks", tenant.token, json=body), status, code)
        if code == "VAL_UNKNOWN_EVENT_TYPE":
            assert problem["errors"][0]["loc"] == ["body", "event_types", 0]
    listing = await gateway.call("GET", "/api/v1/webhooks", tenant.token)
    assert listing.json()["items"] == []
    async with events_service.runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM webhooks") == 0


async def test_webhooks_need_integration_permissions(gateway: Gateway, events_service: EventsApp) -> None:
    tenant = await gateway.tenant()
    developer = await gateway.principal_token(tenant, "dev", ["developer"])
    refused = await gateway.call("POST", "/api/v1/webhooks", developer.token, json={"url": "https://93.184.216.34/"})
    assert_problem(refused, 403, "PERM_DENIED")
    assert (await gateway.call("GET", "/api/v1/webhooks", developer.token)).status_code == 200


async def test_the_live_stream_resumes_after_a_disconnect_without_gaps_or_repeats(
    gateway: Gateway, events_service: EventsApp, served: str, nats: Client
) -> None:
    tenant = await gateway.tenant()
    other = await gateway.tenant("b")
    async with sse(served, tenant.token) as stream, sse(served, other.token) as theirs:
        first = [await _internal(gateway, nats, tenant.id) for _ in range(3)]
        seen = [await stream.next_event() for _ in range(2)]
        # The other tenant's stream sees nothing of these.
        with pytest.raises(TimeoutError):
            await theirs.next_event(timeout=1.0)
    # Disconnected after two events; more happen meanwhile.
    later = [await _internal(gateway, nats, tenant.id) for _ in range(2)]
    async with sse(served, tenant.token, last_event_id=str(seen[-1][0])) as resumed:
        rest = [await resumed.next_event() for _ in range(3)]
    subjects = [event["subject"] for _, _, event in seen + rest]
    assert subjects == [str(p) for p in first + later]
    ids = [i for i, _, _ in seen + rest]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert all(kind == "org.stellaops.promotion.approved" for _, kind, _ in seen + rest)
    # The same stream, filtered by resource, replayed from the start (Last-Event-ID 0).
    async with sse(served, tenant.token, f"?resource=promotions/{later[0]}", last_event_id="0") as filtered:
        _, _, only = await filtered.next_event()
        assert only["subject"] == str(later[0])


async def test_bad_stream_requests_are_refused(gateway: Gateway, events_service: EventsApp, served: str) -> None:
    tenant = await gateway.tenant()
    async with aiohttp.ClientSession() as session:
        for headers, query, status, code in [
            ({"Last-Event-ID": "abc"}, "", 400, "VAL_INVALID_LAST_EVENT_ID"),
            ({"Last-Event-ID": "-1"}, "", 400, "VAL_INVALID_LAST_EVENT_ID"),
            ({"Last-Event-ID": "99999999999999999999"}, "", 400, "VAL_INVALID_LAST_EVENT_ID"),
            ({"Last-Event-ID": "900000000"}, "", 400, "VAL_INVALID_LAST_EVENT_ID"),
            ({}, "?last_event_id=1e3", 400, "VAL_INVALID_LAST_EVENT_ID"),
            ({}, "?type=org.stellaops.promotion.exploded", 400, "VAL_UNKNOWN_EVENT_TYPE"),
            ({}, "?resource=promotions/nope", 400, "VAL_INVALID_RESOURCE_FILTER"),
            ({}, "?resource=secrets/" + str(uuid.uuid4()), 400, "VAL_INVALID_RESOURCE_FILTER"),
        ]:
            sent = {"Authorization": f"Bearer {tenant.token}", **headers}
            async with session.get(f"{served}/api/v1/events/stream{query}", headers=sent) as resp:
                body = await resp.json(content_type=None)
                assert (resp.status, body["code"]) == (status, code), (headers, query, body)
        async with session.get(f"{served}/api/v1/events/stream") as resp:
            assert resp.status == 401


async def test_event_lists_and_types(
    gateway: Gateway, events_service: EventsApp, nats: Client, services: StandIn
) -> None:
    tenant = await gateway.tenant()
    types = await gateway.call("GET", "/api/v1/events/types", tenant.token)
    assert types.status_code == 200
    names = [t["type"] for t in types.json()["items"]]
    assert "org.stellaops.promotion.approved" in names and "org.stellaops.webhook.disabled" in names
    pid = await _internal(gateway, nats, tenant.id)
    for _ in range(100):
        listed = await gateway.call("GET", f"/api/v1/events?resource=promotions/{pid}", tenant.token)
        if listed.json()["items"]:
            break
        await asyncio.sleep(0.05)
    [event] = listed.json()["items"]
    assert event["type"] == "org.stellaops.promotion.approved" and event["specversion"] == "1.0"
    assert_problem(await gateway.call("GET", "/api/v1/events?type=nope", tenant.token), 400, "VAL_UNKNOWN_EVENT_TYPE")
    # A promotion's timeline: 404 when the promotion service does not know it in this tenant.
    services.answer(promotion.GET_PROMOTION, error=_not_found())
    missing = await gateway.call("GET", f"/api/v1/promotions/{pid}/events", tenant.token)
    assert_problem(missing, 404, "PROM_NOT_FOUND")
    services.answer(promotion.GET_PROMOTION, data={})
    timeline = await gateway.call("GET", f"/api/v1/promotions/{pid}/events", tenant.token)
    assert timeline.status_code == 200, timeline.text
    assert [e["id"] for e in timeline.json()["items"]] == [event["id"]]


def _not_found() -> Any:
    from stella.contracts.envelope import ErrorDetail

    return ErrorDetail(code="PROM_NOT_FOUND", status=404, title="Promotion not found", detail="no such promotion")


async def test_the_asyncapi_document_is_served_without_a_token(gateway: Gateway) -> None:
    response = await gateway.call("GET", "/api/v1/asyncapi.json", None)
    assert response.status_code == 200
    assert response.json() == json.loads(asyncapi.render())
    assert response.json()["asyncapi"] == "3.0.0"
