"""A workflow's ``notify`` step sends through a ``notification`` integration of the integration service: the
workflow service asks over NATS, the integration service posts to the webhook (egress guard, credential from
its secret store); a refused delivery follows the step's retry policy, and another tenant's integration is
not found."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest_asyncio
from aiohttp import web
from nats.aio.client import Client

from stella.contracts import integration as i
from stella.contracts import workflow as w
from stella.integration.app import IntegrationApp
from stella.integration.app import create_app as integration_app
from stella.integration.keys import new_master_key
from stella.integration.settings import Settings as IntegrationSettings
from stella.testing.services import TenantCaller, service_client
from stella.workflow.app import WorkflowApp
from stella.workflow.app import create_app as workflow_app
from stella.workflow.settings import Settings as WorkflowSettings

Received = list[dict[str, Any]]


@pytest_asyncio.fixture
async def services(
    fresh_database: str, nats_url: str, stella_namespace: str, tmp_path: Path
) -> AsyncIterator[tuple[IntegrationApp, WorkflowApp]]:
    common: dict[str, Any] = {"database_url": fresh_database, "nats_url": nats_url, "nats_namespace": stella_namespace}
    key = tmp_path / "master.key"
    key.write_text(new_master_key())
    integration = integration_app(
        IntegrationSettings(
            **common, master_key_file=key, allowed_networks=(ip_network("127.0.0.0/8"),), request_timeout_s=5
        )
    )
    workflow = workflow_app(WorkflowSettings(**common, outbox_poll_s=0.2))
    await integration.start()
    await workflow.start()
    try:
        yield integration, workflow
    finally:
        await workflow.stop()
        await integration.stop()


@pytest_asyncio.fixture
async def tenants(services: tuple[IntegrationApp, WorkflowApp], nats: Client) -> AsyncIterator[list[TenantCaller]]:
    """Two tenants of the same installation."""
    async with service_client(nats, services[1].runtime.names) as client:
        yield [TenantCaller(client, tenant_id=uuid.uuid4()), TenantCaller(client, tenant_id=uuid.uuid4())]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[str, Received]]:
    """A local webhook recording what it receives; ``/status/<code>`` answers that code, ``/hooks`` 200."""
    received: Received = []

    async def record(request: web.Request) -> web.Response:
        received.append({"path": request.path, "headers": dict(request.headers), "body": await request.json()})
        return web.json_response({"ok": True}, status=int(request.match_info.get("code", 200)))

    app = web.Application()
    app.router.add_post("/hooks", record)
    app.router.add_post("/status/{code}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", received
    await runner.cleanup()


async def _integration(caller: TenantCaller, name: str, config: dict[str, Any], **kw: Any) -> str:
    created = await caller.command(
        i.CREATE_INTEGRATION,
        i.CreateIntegration,
        name=name,
        type_id=kw.pop("type_id", "notification"),
        config=config,
        **kw,
    )
    assert created.ok, created.error
    return str(created.data["id"])


async def _run(caller: TenantCaller, name: str, nodes: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    """Save a template, start a run of it and wait until the run has finished."""
    edges = kw.pop("edges", [])
    run_inputs = kw.pop("run_inputs", {})
    saved = await caller.command(
        w.SAVE_TEMPLATE, w.SaveTemplate, name=name, nodes=nodes, edges=[{"from": a, "to": b} for a, b in edges], **kw
    )
    assert saved.ok, saved.error
    started = await caller.command(w.START_RUN, w.StartRun, template_name=name, inputs=run_inputs)
    assert started.ok, started.error
    async with asyncio.timeout(60):
        while True:
            run = await caller.query(w.GET_RUN, w.GetRun, run_id=started.data["id"])
            assert run.ok, run.error
            if run.data["status"] in ("succeeded", "failed", "cancelled"):
                return dict(run.data)
            await asyncio.sleep(0.2)


def _step(run: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["node_id"] == node_id)


async def test_a_notify_step_sends_its_templated_message_through_a_notification_integration(
    tenants: list[TenantCaller], receiver: tuple[str, Received]
) -> None:
    caller = tenants[0]
    url, received = receiver
    stored = await caller.query(i.STORE_SECRET, i.StoreSecret, name="hook-token", value="s3cret-token")
    assert stored.ok, stored.error
    await _integration(
        caller,
        "ops-chat",
        {"url": f"{url}/hooks", "template": "[$env] $message"},
        credential_ref="secret:hook-token",
    )
    slack = await _integration(caller, "slack-chat", {"url": f"{url}/hooks", "format": "slack"})
    nodes = [
        {
            "id": "announce",
            "type": "notify",
            "timeout_s": 30,
            "config": {
                "integration": "ops-chat",
                "message": "release {{ inputs.release }} is out",
                "fields": {"env": "{{ inputs.env }}"},
            },
        },
        {
            "id": "echo",
            "type": "notify",
            "timeout_s": 30,
            "config": {"integration": slack, "message": "announced with HTTP {{ steps.announce.outputs.status }}"},
        },
    ]
    inputs = {"release": {"required": True}, "env": {"required": True}}

    run = await _run(
        caller,
        "announce",
        nodes,
        inputs=inputs,
        edges=[("announce", "echo")],
        run_inputs={"release": "r-7", "env": "prod"},
    )

    assert run["status"] == "succeeded", run
    assert _step(run, "announce")["outputs"] == {
        "integration_id": _step(run, "announce")["outputs"]["integration_id"],
        "integration": "ops-chat",
        "status": 200,
    }
    first, second = received
    assert first["body"] == {
        "text": "[prod] release r-7 is out",
        "event": "notification",
        "integration": "ops-chat",
        "fields": {"env": "prod"},
    }
    assert first["headers"]["Authorization"] == "Bearer s3cret-token"
    assert first["headers"]["Idempotency-Key"] == f"wf/{run['id']}/announce/1"
    assert second["body"] == {"text": "announced with HTTP 200"}
    assert "Authorization" not in second["headers"]
    assert "s3cret-token" not in json.dumps(run)


async def test_a_notify_step_naming_another_tenants_integration_fails_saying_it_does_not_exist(
    tenants: list[TenantCaller], receiver: tuple[str, Received]
) -> None:
    mine, theirs = tenants
    url, received = receiver
    foreign = await _integration(theirs, "their-chat", {"url": f"{url}/hooks"})
    store = await _integration(mine, "store", {}, type_id="secret-store")

    by_id = await _run(
        mine,
        "foreign",
        [{"id": "ping", "type": "notify", "timeout_s": 30, "config": {"integration": foreign, "message": "hi"}}],
    )
    by_name = await _run(
        mine,
        "foreign-name",
        [{"id": "ping", "type": "notify", "timeout_s": 30, "config": {"integration": "their-chat", "message": "hi"}}],
    )
    wrong_type = await _run(
        mine,
        "not-a-hook",
        [{"id": "ping", "type": "notify", "timeout_s": 30, "config": {"integration": store, "message": "hi"}}],
    )

    for run, ref in ((by_id, foreign), (by_name, "their-chat")):
        ping = _step(run, "ping")
        assert run["status"] == "failed"
        assert ping["outputs"] == {"error_code": "INT_INTEGRATION_NOT_FOUND"}
        assert f"there is no integration {ref!r}" in ping["error"]
    ping = _step(wrong_type, "ping")
    assert wrong_type["status"] == "failed"
    assert ping["outputs"] == {"error_code": "INT_NOT_A_NOTIFICATION"}
    assert "not notification" in ping["error"]
    assert received == []


async def test_a_webhook_answering_500_makes_the_notify_step_retry_per_its_policy(
    tenants: list[TenantCaller], receiver: tuple[str, Received]
) -> None:
    caller = tenants[0]
    url, received = receiver
    await _integration(caller, "broken", {"url": f"{url}/status/500"})
    node = {
        "id": "ping",
        "type": "notify",
        "timeout_s": 30,
        "retry": {"max_attempts": 3, "backoff_s": 0},
        "config": {"integration": "broken", "message": "hello"},
    }

    run = await _run(caller, "retried", [node])

    assert run["status"] == "failed"
    ping = _step(run, "ping")
    assert ping["attempt_number"] == 3
    assert "was not delivered" in ping["error"] and "answered HTTP 500" in ping["error"]
    assert [r["headers"]["Idempotency-Key"] for r in received] == [f"wf/{run['id']}/ping/{n}" for n in (1, 2, 3)]
