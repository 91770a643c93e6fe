"""What outside systems see, with every service running as a process: the same CloudEvents on NATS and on a
webhook, each once in effect, signed, valid against the AsyncAPI document, never another tenant's; and a
live stream that resumes after a disconnect without losing or repeating an event."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from cloudevents.core.formats.json import JSONFormat
from jsonschema import Draft7Validator
from nats.aio.client import Client
from standardwebhooks import Webhook

from stella.contracts.public import BY_TYPE, asyncapi
from stella.kit.embedded import free_port

from .conftest import Stack

pytestmark = pytest.mark.e2e

DIGEST = "sha256:" + "e" * 64
REQUIRED = ("specversion", "id", "source", "type")


class Receiver:
    """A webhook receiver on loopback that fails the first ``fail_first`` deliveries of every event."""

    def __init__(self, fail_first: int = 0) -> None:
        self.port = free_port()
        self.fail_first = fail_first
        self.requests: list[tuple[dict[str, str], str, int]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        tries = sum(
            1 for headers, _, _ in self.requests if headers.get("webhook-id") == request.headers.get("webhook-id")
        )
        status = 500 if tries < self.fail_first else 204
        self.requests.append((dict(request.headers), body, status))
        return web.Response(status=status)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await self._runner.cleanup()


async def _tenant_id(dsn: str, token_prefix: str) -> uuid.UUID:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT tenant_id FROM gateway.tokens WHERE prefix = $1", token_prefix)
    finally:
        await conn.close()


async def _ready_release(stack: Stack, name: str) -> str:
    status, body, _ = await stack.call(
        "POST",
        "/api/v1/components",
        json={
            "name": "api",
            "image_repository": "registry.invalid/shop/api",
            "versioning_strategy": {"resolve": "version-map"},
        },
    )
    assert status in (201, 409), body
    status, release, _ = await stack.call(
        "POST", "/api/v1/releases", json={"name": name, "components": [{"component": "api", "digest": DIGEST}]}
    )
    assert status == 201, release
    status, ready, _ = await stack.call("POST", f"/api/v1/releases/{release['id']}/ready")
    assert status == 200, ready
    return str(release["id"])


def _validate(event: dict[str, Any], document: dict[str, Any]) -> None:
    """Check a CloudEvent against the spec's required attributes (the SDK) and its type's AsyncAPI schema."""
    for attribute in REQUIRED:
        assert event.get(attribute), (attribute, event)
    JSONFormat().read(None, json.dumps(event))
    name = "".join(
        part.capitalize() for part in event["type"].removeprefix("org.stellaops.").replace(".", "_").split("_")
    )
    Draft7Validator({"$ref": f"#/components/schemas/{name}Event", "components": document["components"]}).validate(event)
    assert event["type"] in BY_TYPE


async def test_nats_subscribers_and_webhooks_get_the_same_events_once_signed_and_tenant_scoped(
    full_stack: Stack, nats: Client, fresh_database: str, unique_id: str
) -> None:
    stack = full_stack
    document = asyncapi.document()
    tenant = await _tenant_id(fresh_database, stack.token[:12])
    other_token = stack.bootstrap(f"other-{unique_id}")
    other = await _tenant_id(fresh_database, other_token[:12])
    mine: list[Any] = []
    theirs: list[Any] = []

    async def collect_mine(msg: Any) -> None:
        mine.append(msg)

    async def collect_theirs(msg: Any) -> None:
        theirs.append(msg)

    sub = await nats.subscribe(stack.names.subject(f"stella.public.{tenant}.>"), cb=collect_mine)
    other_sub = await nats.subscribe(stack.names.subject(f"stella.public.{other}.>"), cb=collect_theirs)
    await nats.flush()
    receiver = Receiver(fail_first=3)
    async with receiver.running():
        status, hook, _ = await stack.call("POST", "/api/v1/webhooks", json={"url": receiver.url, "description": "ci"})
        assert status == 201, hook
        secret = hook["secret"]
        # The other tenant has a webhook too: it must receive nothing of this tenant.
        other_receiver = Receiver()
        async with other_receiver.running():
            status, _, _ = await stack.call(
                "POST", "/api/v1/webhooks", token=other_token, json={"url": other_receiver.url}
            )
            assert status == 201

            release = await _ready_release(stack, "shop-1")
            status, env, _ = await stack.call("POST", "/api/v1/environments", json={"name": "dev", "order_index": 0})
            assert status == 201, env
            status, promotion, _ = await stack.call(
                "POST", "/api/v1/promotions", json={"release_id": release, "target_environment_id": env["id"]}
            )
            assert status == 201, promotion
            # Everything up to the evidence of the promotion's decision (its workflow's last step, after the
            # deployment: the environment has no targets, so that ends at once).
            async with asyncio.timeout(60):
                while not any(
                    json.loads(m.data)["type"] == "org.stellaops.evidence.recorded"
                    and json.loads(m.data)["data"]["packet_type"] == "release_decision"
                    for m in mine
                ):
                    await asyncio.sleep(0.1)
            async with asyncio.timeout(60):
                while len({h["webhook-id"] for h, _, code in receiver.requests if code < 300}) < len(
                    {json.loads(m.data)["id"] for m in mine}
                ):
                    await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # anything duplicated would have arrived by now
            assert other_receiver.requests == []
    await sub.unsubscribe()
    await other_sub.unsubscribe()

    on_nats = [json.loads(m.data) for m in mine]
    types = [e["type"] for e in on_nats]
    for expected in (
        "org.stellaops.release.created",
        "org.stellaops.release.ready",
        "org.stellaops.promotion.requested",
        "org.stellaops.promotion.approved",
        "org.stellaops.promotion.started",
        "org.stellaops.promotion.completed",
        "org.stellaops.deployment.job_started",
        "org.stellaops.deployment.job_completed",
        "org.stellaops.evidence.recorded",
    ):
        assert expected in types, types
    # Each event once on NATS, with its id as Nats-Msg-Id and the CloudEvents content type.
    assert len({e["id"] for e in on_nats}) == len(on_nats)
    for msg, event in zip(mine, on_nats, strict=True):
        assert msg.headers["Nats-Msg-Id"] == event["id"]
        assert msg.headers["Content-Type"] == "application/cloudevents+json"
        assert (
            stack.names.local(msg.subject) == f"stella.public.{tenant}.{event['type'].removeprefix('org.stellaops.')}"
        )
        assert event["tenantid"] == str(tenant)
        assert event["source"].startswith(f"/tenants/{tenant}/")
        _validate(event, document)
    assert theirs == []
    # The webhook got the same events: each accepted exactly once, every request signed.
    accepted: dict[str, dict[str, Any]] = {}
    for headers, body, code in receiver.requests:
        payload = Webhook(secret).verify(body, headers)
        assert payload["id"] == headers["webhook-id"]
        assert headers["Content-Type"] == "application/cloudevents+json"
        if code < 300:
            assert payload["id"] not in accepted, "an event was accepted twice"
            accepted[payload["id"]] = payload
    assert accepted == {e["id"]: e for e in on_nats}
    # The receiver failed three times for every event, and got each on the fourth try.
    for event_id in accepted:
        attempts = [code for headers, _, code in receiver.requests if headers["webhook-id"] == event_id]
        assert attempts == [500, 500, 500, 204], attempts
    status, log, _ = await stack.call("GET", f"/api/v1/webhooks/{hook['id']}/deliveries?page_size=500")
    assert status == 200, log
    assert {d["event_id"] for d in log["items"]} == set(accepted)
    for delivery in log["items"]:
        assert (delivery["status"], delivery["attempts"]) == ("succeeded", 4)
        assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 500, 204]


async def _sse_events(
    response: aiohttp.ClientResponse, count: int, timeout: float = 60
) -> list[tuple[int, dict[str, Any]]]:
    events: list[tuple[int, dict[str, Any]]] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(timeout):
        while len(events) < count:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith(":"):
                continue
            if line == "":
                if "data" in fields:
                    events.append((int(fields["id"]), json.loads(fields["data"])))
                fields = {}
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
    return events


async def test_the_live_stream_resumes_mid_promotion_without_losing_or_repeating(full_stack: Stack) -> None:
    stack = full_stack
    release = await _ready_release(stack, "shop-2")
    status, env, _ = await stack.call(
        "POST",
        "/api/v1/environments",
        json={"name": "dev", "order_index": 0, "required_approvals": 1, "require_sod": True},
    )
    assert status == 201, env
    _, approver_token = await stack.principal("approver", ["approver"])
    headers = {"Authorization": f"Bearer {stack.token}"}
    url = f"{stack.base}/api/v1/events/stream"
    async with aiohttp.ClientSession() as session:
        async with session.get(
            url,
            headers=headers,
            params={"type": ["org.stellaops.promotion.*", "org.stellaops.approval.*", "org.stellaops.evidence.*"]},
        ) as first:
            assert first.status == 200, await first.text()
            assert (await first.content.readline()).startswith(b":")
            status, promotion, _ = await stack.call(
                "POST", "/api/v1/promotions", json={"release_id": release, "target_environment_id": env["id"]}
            )
            assert status == 201, promotion
            # promotion.requested, approval.requested: then the client goes away mid-run.
            before = await _sse_events(first, 2)
        status, vote, _ = await stack.call(
            "POST", f"/api/v1/promotions/{promotion['id']}/approve", token=approver_token, json={"comment": "ok"}
        )
        assert status == 200, vote
        # The decision's packet and the deployment's (the environment has no targets: deployed at once).
        await stack.until(f"/api/v1/promotions/{promotion['id']}/evidence", lambda b: len(b["items"]) == 2)
        resume = {**headers, "Last-Event-ID": str(before[-1][0])}
        async with session.get(
            url,
            headers=resume,
            params={"type": ["org.stellaops.promotion.*", "org.stellaops.approval.*", "org.stellaops.evidence.*"]},
        ) as second:
            assert second.status == 200
            # approval.granted, promotion.approved, then the deployment's start and end and both packets.
            after = await _sse_events(second, 6)
    streamed = [event for _, event in before + after]
    ids = [i for i, _ in before + after]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    types = [e["type"] for e in streamed]
    assert types[:4] == [
        "org.stellaops.promotion.requested",
        "org.stellaops.approval.requested",
        "org.stellaops.approval.granted",
        "org.stellaops.promotion.approved",
    ]
    # The job's end reaches the promotion and the evidence services at once: their events may interleave.
    assert sorted(types[4:]) == [
        "org.stellaops.evidence.recorded",
        "org.stellaops.evidence.recorded",
        "org.stellaops.promotion.completed",
        "org.stellaops.promotion.started",
    ]
    assert types.index("org.stellaops.promotion.started") < types.index("org.stellaops.promotion.completed")
    # The same events, in the same order, as the promotion's recorded timeline.
    # (The timeline also holds the promotion's deployment job events, which the stream's filter left out.)
    timeline = await stack.until(f"/api/v1/promotions/{promotion['id']}/events", lambda b: len(b["items"]) >= 10)
    shown = [e for e in timeline["items"] if not e["type"].startswith("org.stellaops.deployment.")]
    assert [e["id"] for e in shown] == [e["id"] for e in streamed]
    assert sorted(e["type"] for e in timeline["items"] if e not in shown) == [
        "org.stellaops.deployment.job_completed",
        "org.stellaops.deployment.job_started",
    ]
