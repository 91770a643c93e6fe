"""One trace from the gateway request through every NATS hop and Postgres call of a promotion.

Every service runs in this process on a fresh database and a NATS namespace of the test's own, with tracing
installed on an in-memory exporter: the spans of all services land in one place, told apart by their
``stella.service`` attribute.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from stella.approval.app import create_app as approval_app
from stella.approval.settings import Settings as ApprovalSettings
from stella.deployment.app import create_app as deployment_app
from stella.deployment.settings import Settings as DeploymentSettings
from stella.events.app import create_app as events_app
from stella.events.settings import Settings as EventsSettings
from stella.evidence.app import create_app as evidence_app
from stella.evidence.settings import Settings as EvidenceSettings
from stella.gateway.admin import bootstrap
from stella.gateway.app import create_app as gateway_app
from stella.gateway.dependencies import RUNTIME_STATE_KEY
from stella.gateway.settings import Settings as GatewaySettings
from stella.kit import tracing
from stella.kit.service import ServiceApp
from stella.promotion.app import create_app as promotion_app
from stella.promotion.settings import Settings as PromotionSettings
from stella.release.app import create_app as release_app
from stella.release.settings import Settings as ReleaseSettings
from stella.workflow.app import create_app as workflow_app
from stella.workflow.settings import Settings as WorkflowSettings


@pytest_asyncio.fixture
async def exporter() -> AsyncIterator[InMemorySpanExporter]:
    """Tracing on, in this process, into memory."""
    spans = InMemorySpanExporter()
    tracing.install(tracing.new_provider("test", SimpleSpanProcessor(spans)))
    try:
        yield spans
    finally:
        tracing.uninstall()


async def _until(client: httpx.AsyncClient, path: str, token: str, check: Any, timeout: float = 30) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
            if response.status_code == 200 and check(response.json()):
                return response.json()
            await asyncio.sleep(0.1)


async def test_one_trace_spans_gateway_promotion_workflow_and_evidence(
    exporter: InMemorySpanExporter, fresh_database: str, nats_url: str, stella_namespace: str, tmp_path: Path
) -> None:
    common: dict[str, Any] = {
        "database_url": fresh_database,
        "nats_url": nats_url,
        "nats_namespace": stella_namespace,
        "db_pool_size": 4,
        "outbox_poll_s": 0.2,
    }
    services: list[ServiceApp] = [
        release_app(ReleaseSettings(**common)),
        promotion_app(PromotionSettings(**common)),
        approval_app(ApprovalSettings(**common)),
        workflow_app(WorkflowSettings(**common)),
        evidence_app(EvidenceSettings(**common, key_dir=tmp_path / "keys")),
        events_app(EventsSettings(**common, key_dir=tmp_path / "keys")),
        # The deploy step of standard-promotion (no targets here: deployed at once).
        deployment_app(DeploymentSettings(**common)),
    ]
    for service in services:
        await service.start()
    gateway = gateway_app(GatewaySettings(**{k: v for k, v in common.items() if k != "outbox_poll_s"}))
    try:
        async with gateway.lifespan():
            runtime = gateway.state[RUNTIME_STATE_KEY]
            async with runtime.pool.acquire() as conn:
                credential = await bootstrap(conn, f"t-{uuid.uuid4().hex[:8]}", "admin", datetime.now(UTC))
            assert credential is not None
            token = credential.token
            auth = {"Authorization": f"Bearer {token}"}
            transport = httpx.ASGITransport(app=gateway)  # type: ignore[arg-type]
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
                created = await client.post(
                    "/api/v1/components",
                    headers=auth,
                    json={
                        "name": "api",
                        "image_repository": "registry.invalid/shop/api",
                        "versioning_strategy": {"resolve": "version-map"},
                    },
                )
                assert created.status_code == 201, created.text
                release = await client.post(
                    "/api/v1/releases",
                    headers=auth,
                    json={"name": "shop-1", "components": [{"component": "api", "digest": "sha256:" + "c" * 64}]},
                )
                assert release.status_code == 201, release.text
                ready = await client.post(f"/api/v1/releases/{release.json()['id']}/ready", headers=auth)
                assert ready.status_code == 200, ready.text
                env = await client.post("/api/v1/environments", headers=auth, json={"name": "dev", "order_index": 0})
                assert env.status_code == 201, env.text
                exporter.clear()
                requested = await client.post(
                    "/api/v1/promotions",
                    headers=auth,
                    json={"release_id": release.json()["id"], "target_environment_id": env.json()["id"]},
                )
                assert requested.status_code == 201, requested.text
                promotion_id = requested.json()["id"]
                await _until(
                    client,
                    f"/api/v1/promotions/{promotion_id}/evidence",
                    token,
                    lambda b: {p["packet_type"] for p in b["items"]} == {"release_decision", "deployment"},
                )
                # The run's end too (its last step records evidence): the decision's packet is recorded when
                # the decision is announced, before the run's evidence step.
                await _until(
                    client,
                    f"/api/v1/workflow-runs/{requested.json()['workflow_run_id']}",
                    token,
                    lambda b: b["status"] == "succeeded",
                )
                timeline = await _until(
                    client,
                    f"/api/v1/promotions/{promotion_id}/events",
                    token,
                    lambda b: any(e["type"] == "org.stellaops.evidence.recorded" for e in b["items"]),
                )
    finally:
        for service in reversed(services):
            await service.stop()

    spans = exporter.get_finished_spans()
    [root] = [s for s in spans if s.name == "POST /api/v1/promotions" and s.kind == SpanKind.SERVER]
    trace_id = root.context.trace_id
    # The trace id is the one the API gave the client for this request.
    assert uuid.UUID(requested.headers["x-trace-id"]).int == trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    by_service: dict[str, set[str]] = {}
    for span in in_trace:
        by_service.setdefault(str((span.attributes or {}).get(tracing.SERVICE_ATTRIBUTE)), set()).add(span.name)
    assert {"gateway", "promotion", "workflow", "evidence"} <= set(by_service), by_service
    assert "handle stella.cmd.promotion.request_promotion" in by_service["promotion"]
    assert "handle stella.cmd.evidence.collect_evidence" in by_service["evidence"]
    assert any(name.startswith("publish stella.cmd.workflow") for name in by_service["promotion"])
    assert any(name.startswith("handle stella.cmd.workflow") for name in by_service["workflow"])
    # Postgres calls are spans of the trace too; and each hop is a child of the one before.
    database = [
        s for s in in_trace if (s.attributes or {}).get("db.system") or (s.attributes or {}).get("db.system.name")
    ]
    assert len(database) > 5
    ids = {s.context.span_id for s in in_trace}
    assert all(s.parent is not None and s.parent.span_id in ids for s in in_trace if s is not root)
    # The public events carry the trace on to outside subscribers.
    requested_event = next(e for e in timeline["items"] if e["type"] == "org.stellaops.promotion.requested")
    assert requested_event["traceparent"].split("-")[1] == f"{trace_id:032x}"
    assert json.dumps(timeline)  # plain JSON all the way
