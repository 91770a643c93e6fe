"""Deployment routes against the real deployment service: targets, agents and their channel, jobs.

The deployment service runs in-process on its own database, in the gateway's NATS namespace; the promotion
and release services it asks are played by a stand-in that knows each tenant's environments and releases.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio
from nats.aio.client import Client

from stella.contracts import deployment as dep
from stella.contracts.envelope import ErrorDetail, Reply
from stella.contracts.promotion import GET_ENVIRONMENT
from stella.contracts.release import GET_RELEASE
from stella.contracts.workflow import ExecuteStep
from stella.deployment.app import MIGRATIONS as DEPLOYMENT_MIGRATIONS
from stella.deployment.app import DeploymentApp, create_app
from stella.deployment.settings import Settings as DeploymentSettings
from stella.testing.services import service_client

from .conftest import Gateway, StandIn, Tenant, assert_problem


def digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


@dataclass
class ServiceClock:
    """The deployment service's clock: real time plus an offset."""

    offset: timedelta = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class World:
    """The gateway, the deployment service, and what the stand-in knows per tenant."""

    gateway: Gateway
    app: DeploymentApp
    clock: ServiceClock
    nats: Client
    environments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    releases: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def environment(self, tenant: Tenant, **config: Any) -> str:
        environment_id = str(uuid.uuid4())
        now = datetime.now(UTC).isoformat()
        self.environments[(str(tenant.id), environment_id)] = {
            "id": environment_id,
            "name": "dev",
            "display_name": "Dev",
            "order_index": 0,
            "required_approvals": 0,
            "require_sod": False,
            "config": config,
            "promotion_policy": {},
            "created_at": now,
            "updated_at": now,
        }
        return environment_id

    def release(self, tenant: Tenant, version: str = "1") -> str:
        release_id = str(uuid.uuid4())
        now = datetime.now(UTC).isoformat()
        self.releases[(str(tenant.id), release_id)] = {
            "id": release_id,
            "name": f"rel-{version}",
            "display_name": "Release",
            "status": "ready",
            "components": [
                {
                    "component_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "api")),
                    "name": "api",
                    "image_repository": "registry.test/api",
                    "digest": digest(f"api:{version}"),
                    "tag": f"v{version}",
                    "semver": f"{version}.0.0",
                }
            ],
            "source_ref": {},
            "created_by": None,
            "created_at": now,
            "updated_at": now,
            "ready_at": now,
            "deprecated_at": None,
            "deprecation_reason": None,
        }
        return release_id

    async def deploy(self, tenant: Tenant, environment_id: str, release_id: str) -> uuid.UUID:
        """Send the workflow's deploy step for a new promotion (as the workflow service would)."""
        promotion_id = uuid.uuid4()
        step = ExecuteStep(
            tenant_id=tenant.id,
            correlation_id=uuid.uuid4(),
            run_id=uuid.uuid4(),
            node_id="deploy",
            attempt=1,
            step_type="deploy",
            config={},
            inputs={
                "inputs": {
                    "promotion_id": str(promotion_id),
                    "release_id": release_id,
                    "environment_id": environment_id,
                }
            },
            subject_id=promotion_id,
        )
        async with service_client(self.nats, self.gateway.names) as client:
            reply = await client.command(dep.EXECUTE_STEP, step)
        assert reply.ok, reply.error
        return promotion_id

    async def agent(self, tenant: Tenant, name: str = "agent-1", **body: Any) -> tuple[str, str]:
        """Register an agent through the API: ``(agent id, credential)``."""
        token = await self.gateway.call("POST", "/api/v1/agent-tokens", tenant.token, json={})
        assert token.status_code == 201, token.text
        registered = await self.gateway.call(
            "POST",
            "/api/v1/agents/register",
            None,
            json={
                "registration_token": token.json()["token"],
                "name": name,
                "version": "1.0.0",
                "capabilities": ["docker", "compose"],
                **body,
            },
        )
        assert registered.status_code == 201, registered.text
        return registered.json()["agent_id"], registered.json()["credential"]


def _lookup(table: dict[tuple[str, str], dict[str, Any]], key: str) -> Any:
    def answer(payload: dict[str, Any]) -> Reply:
        found = table.get((payload["tenant_id"], payload[key]))
        if found is None:
            return Reply.failure(ErrorDetail(code="RES_NOT_FOUND", status=404, title="Not found", detail="not found"))
        return Reply.success(found)

    return answer


@pytest_asyncio.fixture
async def world(gateway: Gateway, nats: Client, make_database: Any, nats_url: str) -> AsyncIterator[World]:
    dsn = await make_database([("deployment", DEPLOYMENT_MIGRATIONS)])
    clock = ServiceClock()
    app = create_app(
        DeploymentSettings(
            database_url=dsn,
            nats_url=nats_url,
            nats_namespace=gateway.names.namespace,
            outbox_poll_s=0.2,
            db_pool_size=5,
        ),
        overrides={"clock": clock},
    )
    await app.start()
    world = World(gateway, app, clock, nats)
    others = StandIn(nats, gateway.names, contexts=("promotion", "release"))
    others.on(GET_ENVIRONMENT, _lookup(world.environments, "environment_id"))
    others.on(GET_RELEASE, _lookup(world.releases, "release_id"))
    await others.start()
    try:
        yield world
    finally:
        await others.stop()
        await app.stop()


def agent_headers(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def test_targets_are_created_listed_changed_and_deleted_within_the_tenant(world: World) -> None:
    gateway = world.gateway
    tenant = await gateway.tenant("a")
    environment = world.environment(tenant)
    body = {
        "name": "web-1",
        "target_type": "compose_host",
        "connection": {"project": "shop", "directory": "/srv/shop"},
        "labels": {"color": "blue"},
        "health_check": {"type": "http", "port": 8080, "path": "/healthz"},
    }
    created = await gateway.call("POST", f"/api/v1/environments/{environment}/targets", tenant.token, json=body)
    assert created.status_code == 201, created.text
    target = created.json()
    assert created.headers["location"] == f"/api/v1/targets/{target['id']}"
    assert target["health_status"] == "unknown" and target["current"] == {}
    listed = await gateway.call("GET", f"/api/v1/environments/{environment}/targets", tenant.token)
    assert [t["name"] for t in listed.json()["items"]] == ["web-1"]

    changed = await gateway.call(
        "PUT", f"/api/v1/targets/{target['id']}", tenant.token, json={"labels": {"color": "green"}}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["labels"] == {"color": "green"}
    assert changed.json()["connection"] == body["connection"]

    other = await gateway.tenant("b")
    assert_problem(
        await gateway.call("GET", f"/api/v1/targets/{target['id']}", other.token), 404, "DEPLOY_TARGET_NOT_FOUND"
    )
    assert_problem(
        await gateway.call("DELETE", f"/api/v1/targets/{target['id']}", other.token), 404, "DEPLOY_TARGET_NOT_FOUND"
    )
    assert (await gateway.call("GET", "/api/v1/targets", other.token)).json()["items"] == []

    deleted = await gateway.call("DELETE", f"/api/v1/targets/{target['id']}", tenant.token)
    assert deleted.status_code == 204, deleted.text
    assert_problem(
        await gateway.call("GET", f"/api/v1/targets/{target['id']}", tenant.token), 404, "DEPLOY_TARGET_NOT_FOUND"
    )


async def test_bad_targets_are_refused_and_nothing_is_stored(world: World) -> None:
    gateway = world.gateway
    tenant = await gateway.tenant("a")
    other = await gateway.tenant("b")
    environment = world.environment(tenant)
    foreign = world.environment(other)
    base = {"name": "web-1", "target_type": "docker_host"}
    cases = [
        (environment, {**base, "target_type": "kubernetes"}, 400, "VAL_INVALID_REQUEST"),
        (environment, {**base, "health_check": {"type": "http"}}, 400, "VAL_INVALID_REQUEST"),
        (environment, {**base, "health_check": {"type": "tcp", "port": 70000}}, 400, "VAL_INVALID_REQUEST"),
        (environment, {**base, "connection": {"docker_url": "http://10.0.0.1:2375"}}, 400, "VAL_INVALID_CONNECTION"),
        (environment, {**base, "connection": {"project": "x"}}, 400, "VAL_INVALID_CONNECTION"),
        (foreign, base, 404, "ENV_NOT_FOUND"),
        (str(uuid.uuid4()), base, 404, "ENV_NOT_FOUND"),
        (environment, {**base, "agent_id": str(uuid.uuid4())}, 404, "AGT_NOT_FOUND"),
    ]
    for environment_id, body, status, code in cases:
        response = await gateway.call("POST", f"/api/v1/environments/{environment_id}/targets", tenant.token, json=body)
        assert_problem(response, status, code)
    for who in (tenant, other):
        assert (await gateway.call("GET", "/api/v1/targets", who.token)).json()["items"] == []
    ok = await gateway.call("POST", f"/api/v1/environments/{environment}/targets", tenant.token, json=base)
    assert ok.status_code == 201
    again = await gateway.call("POST", f"/api/v1/environments/{environment}/targets", tenant.token, json=base)
    assert_problem(again, 409, "DEPLOY_TARGET_NAME_TAKEN")


async def test_registration_tokens_are_one_time_and_expire(world: World) -> None:
    gateway = world.gateway
    tenant = await gateway.tenant("a")
    viewer = await gateway.principal_token(tenant, "viewer", ["viewer"])
    assert_problem(await gateway.call("POST", "/api/v1/agent-tokens", viewer.token, json={}), 403, "PERM_DENIED")

    token = (await gateway.call("POST", "/api/v1/agent-tokens", tenant.token, json={"labels": {"zone": "a"}})).json()
    body = {"registration_token": token["token"], "name": "edge-1", "version": "1.2.0", "capabilities": ["docker"]}
    first = await gateway.call("POST", "/api/v1/agents/register", None, json=body)
    assert first.status_code == 201, first.text
    assert first.json()["credential"].startswith("stag_")
    assert_problem(await gateway.call("POST", "/api/v1/agents/register", None, json=body), 409, "AGT_TOKEN_USED")

    short = (await gateway.call("POST", "/api/v1/agent-tokens", tenant.token, json={"expires_in_s": 60})).json()
    world.clock.offset += timedelta(seconds=120)
    expired = await gateway.call(
        "POST", "/api/v1/agents/register", None, json={**body, "registration_token": short["token"], "name": "edge-2"}
    )
    assert_problem(expired, 422, "AGT_TOKEN_EXPIRED")
    forged = f"stra_{tenant.id.hex}_{'x' * 43}"
    assert_problem(
        await gateway.call(
            "POST", "/api/v1/agents/register", None, json={**body, "registration_token": forged, "name": "edge-3"}
        ),
        401,
        "AGT_TOKEN_INVALID",
    )
    assert_problem(
        await gateway.call(
            "POST",
            "/api/v1/agents/register",
            None,
            json={**body, "registration_token": "not-a-token-at-all", "name": "edge-3"},
        ),
        401,
        "AGT_TOKEN_INVALID",
    )
    agents = (await gateway.call("GET", "/api/v1/agents", tenant.token)).json()["items"]
    assert [(a["name"], a["labels"], a["status"]) for a in agents] == [("edge-1", {"zone": "a"}, "online")]


async def test_the_agent_channel_carries_a_deployment_from_task_feed_to_result(world: World) -> None:
    gateway = world.gateway
    tenant = await gateway.tenant("a")
    environment = world.environment(tenant)
    target = (
        await gateway.call(
            "POST",
            f"/api/v1/environments/{environment}/targets",
            tenant.token,
            json={"name": "web-1", "target_type": "docker_host"},
        )
    ).json()
    agent_id, credential = await world.agent(tenant)
    headers = agent_headers(credential)
    beat = await gateway.call(
        "POST", f"/api/v1/agents/{agent_id}/heartbeat", None, headers=headers, json={"version": "1.0.0"}
    )
    assert beat.status_code == 200, beat.text
    assert beat.json() == {"status": "online", "cancel_tasks": []}

    # The feed waits; the deploy step releases a task, which wakes it.
    feed = asyncio.create_task(gateway.call("GET", f"/api/v1/agents/{agent_id}/tasks?wait=20", None, headers=headers))
    await asyncio.sleep(0.3)
    assert not feed.done()
    promotion_id = await world.deploy(tenant, environment, world.release(tenant))
    answered = await asyncio.wait_for(feed, 10)
    assert answered.status_code == 200, answered.text
    [task] = answered.json()["tasks"]
    assert task["target"]["target_id"] == target["id"]
    assert task["components"][0]["digest"] == digest("api:1")

    # Had that answer been lost on its way, the agent's next request, listing what it holds, gets it again.
    feed_url = f"/api/v1/agents/{agent_id}/tasks?wait=0"
    lost = await gateway.call("GET", f"{feed_url}&held=", None, headers=headers)
    assert lost.status_code == 200, lost.text
    assert [(t["task_id"], t["attempt"]) for t in lost.json()["tasks"]] == [(task["task_id"], 1)]
    held = await gateway.call("GET", f"{feed_url}&held={task['task_id']}", None, headers=headers)
    assert held.status_code == 200 and held.json()["tasks"] == [], held.text
    assert_problem(await gateway.call("GET", f"{feed_url}&held=nope", None, headers=headers), 400, "VAL_INVALID_ID")

    chunk = {"task_id": task["task_id"], "attempt": 1, "seq": 0, "lines": ["pulling", "started"]}
    logged = await gateway.call(
        "POST", f"/api/v1/agents/{agent_id}/tasks/{task['task_id']}/logs", None, headers=headers, json=chunk
    )
    assert logged.status_code == 200 and logged.json() == {"accepted": True}
    again = await gateway.call(
        "POST", f"/api/v1/agents/{agent_id}/tasks/{task['task_id']}/logs", None, headers=headers, json=chunk
    )
    assert again.json() == {"accepted": False}

    now = datetime.now(UTC).isoformat()
    result = {
        "task_id": task["task_id"],
        "idempotency_key": task["idempotency_key"],
        "attempt": 1,
        "status": "succeeded",
        "components": [
            {"name": "api", "expected_digest": digest("api:1"), "running_digest": digest("api:1"), "state": "running"}
        ],
        "sticker": task["sticker"],
        "artifacts": [{"type": "sticker", "name": "stella.version.json", "content_hash": digest("sticker")}],
        "started_at": now,
        "finished_at": now,
    }
    posted = await gateway.call(
        "POST", f"/api/v1/agents/{agent_id}/tasks/{task['task_id']}/result", None, headers=headers, json=result
    )
    assert posted.status_code == 200 and posted.json() == {"accepted": True}, posted.text

    # The same result again with an unknown task's, through the endpoint taking several: each its own outcome.
    # The last log chunk comes along, kept before the results (the task had ended: still its attempt's).
    results_url = f"/api/v1/agents/{agent_id}/results"
    unknown = {**result, "task_id": str(uuid.uuid4())}
    last = {"task_id": task["task_id"], "attempt": 1, "seq": 1, "lines": ["healthy"]}
    batch = await gateway.call(
        "POST", results_url, None, headers=headers, json={"results": [result, unknown], "logs": [last]}
    )
    assert batch.status_code == 200, batch.text
    outcomes = batch.json()["results"]
    assert [(o["task_id"], o["accepted"]) for o in outcomes] == [(task["task_id"], True), (unknown["task_id"], False)]
    assert (outcomes[1]["status"], outcomes[1]["code"]) == (404, "AGT_TASK_NOT_FOUND")
    empty = await gateway.call("POST", results_url, None, headers=headers, json={"results": []})
    assert_problem(empty, 400, "VAL_INVALID_REQUEST")
    big = [{**last, "seq": seq, "lines": ["x" * 4000] * 40} for seq in range(2, 4)]
    too_much = await gateway.call("POST", results_url, None, headers=headers, json={"results": [result], "logs": big})
    assert_problem(too_much, 400, "VAL_INVALID_REQUEST")

    deployment = await gateway.call("GET", f"/api/v1/promotions/{promotion_id}/deployment", tenant.token)
    assert deployment.status_code == 200, deployment.text
    job = deployment.json()
    assert job["status"] == "succeeded"
    assert job["tasks"][0]["logs"] == ["pulling", "started", "healthy"]
    assert job["artifacts"][0]["content_hash"] == digest("sticker")
    listed = await gateway.call("GET", f"/api/v1/deployment-jobs?promotion_id={promotion_id}", tenant.token)
    assert [j["id"] for j in listed.json()["items"]] == [job["id"]]
    seen = (await gateway.call("GET", f"/api/v1/targets/{target['id']}", tenant.token)).json()
    assert seen["current"] == {"api": digest("api:1")}
    other = await gateway.tenant("b")
    assert_problem(
        await gateway.call("GET", f"/api/v1/deployment-jobs/{job['id']}", other.token), 404, "DEPLOY_JOB_NOT_FOUND"
    )

    # A first deployment has nothing to roll back to.
    rollback = await gateway.call("POST", f"/api/v1/deployment-jobs/{job['id']}/rollback", tenant.token, json={})
    assert_problem(rollback, 422, "DEPLOY_NO_PREVIOUS_DIGEST")


async def test_agent_credentials_unknown_revoked_or_of_another_agent_are_refused(world: World) -> None:
    gateway = world.gateway
    tenant = await gateway.tenant("a")
    agent_id, credential = await world.agent(tenant, "a1")
    other_id, _ = await world.agent(tenant, "a2")
    beat = {"version": "1.0.0"}
    assert_problem(
        await gateway.call("POST", f"/api/v1/agents/{agent_id}/heartbeat", None, json=beat),
        401,
        "AGT_CREDENTIAL_INVALID",
    )
    assert_problem(
        await gateway.call("POST", f"/api/v1/agents/{agent_id}/heartbeat", tenant.token, json=beat),
        401,
        "AGT_CREDENTIAL_INVALID",
    )
    forged = credential[:-4] + "AAAA"
    assert_problem(
        await gateway.call(
            "POST", f"/api/v1/agents/{agent_id}/heartbeat", None, headers=agent_headers(forged), json=beat
        ),
        401,
        "AGT_CREDENTIAL_INVALID",
    )
    assert_problem(
        await gateway.call(
            "POST", f"/api/v1/agents/{other_id}/heartbeat", None, headers=agent_headers(credential), json=beat
        ),
        401,
        "AGT_CREDENTIAL_INVALID",
    )
    revoked = await gateway.call("POST", f"/api/v1/agents/{agent_id}/revoke", tenant.token)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert_problem(
        await gateway.call("GET", f"/api/v1/agents/{agent_id}/tasks", None, headers=agent_headers(credential)),
        401,
        "AGT_CREDENTIAL_REVOKED",
    )
    # Another tenant cannot revoke (or see) the tenant's agents.
    other = await gateway.tenant("b")
    assert_problem(await gateway.call("POST", f"/api/v1/agents/{other_id}/revoke", other.token), 404, "AGT_NOT_FOUND")


async def test_an_agent_sees_only_the_tasks_of_targets_assigned_to_it(world: World) -> None:
    gateway = world.gateway
    tenant = await gateway.tenant("a")
    environment = world.environment(tenant)
    pinned_id, pinned_credential = await world.agent(tenant, "pinned")
    other_id, other_credential = await world.agent(tenant, "other")
    body = {"name": "web-1", "target_type": "docker_host", "agent_id": pinned_id}
    assert (
        await gateway.call("POST", f"/api/v1/environments/{environment}/targets", tenant.token, json=body)
    ).status_code == 201
    await world.deploy(tenant, environment, world.release(tenant))
    stranger = await gateway.call(
        "GET", f"/api/v1/agents/{other_id}/tasks?wait=1", None, headers=agent_headers(other_credential)
    )
    assert stranger.json() == {"tasks": []}
    mine = await gateway.call(
        "GET", f"/api/v1/agents/{pinned_id}/tasks?wait=5", None, headers=agent_headers(pinned_credential)
    )
    assert len(mine.json()["tasks"]) == 1
    task = mine.json()["tasks"][0]
    now = datetime.now(UTC).isoformat()
    stolen = {
        "task_id": task["task_id"],
        "idempotency_key": task["idempotency_key"],
        "status": "failed",
        "error_code": "AGT_DOCKER_ERROR",
        "started_at": now,
        "finished_at": now,
    }
    posted = await gateway.call(
        "POST",
        f"/api/v1/agents/{other_id}/tasks/{task['task_id']}/result",
        None,
        headers=agent_headers(other_credential),
        json=stolen,
    )
    assert posted.status_code == 200 and posted.json() == {"accepted": False}
    job = (await gateway.call("GET", f"/api/v1/deployment-jobs?environment_id={environment}", tenant.token)).json()[
        "items"
    ][0]
    assert job["status"] == "running"


async def test_jobs_are_cancelled_and_rolled_back_through_the_api(world: World) -> None:
    gateway = world.gateway
    tenant = await gateway.tenant("a")
    environment = world.environment(tenant)
    for name in ("web-1", "web-2"):
        body = {"name": name, "target_type": "docker_host"}
        assert (
            await gateway.call("POST", f"/api/v1/environments/{environment}/targets", tenant.token, json=body)
        ).status_code == 201
    agent_id, credential = await world.agent(tenant)
    headers = agent_headers(credential)

    async def deploy(version: str) -> str:
        await world.deploy(tenant, environment, world.release(tenant, version))
        tasks = (await gateway.call("GET", f"/api/v1/agents/{agent_id}/tasks?wait=5", None, headers=headers)).json()[
            "tasks"
        ]
        assert len(tasks) == 2
        now = datetime.now(UTC).isoformat()
        for task in tasks:
            result = {
                "task_id": task["task_id"],
                "idempotency_key": task["idempotency_key"],
                "attempt": task["attempt"],
                "status": "succeeded",
                "sticker": task["sticker"],
                "started_at": now,
                "finished_at": now,
            }
            posted = await gateway.call(
                "POST", f"/api/v1/agents/{agent_id}/tasks/{task['task_id']}/result", None, headers=headers, json=result
            )
            assert posted.json() == {"accepted": True}
        return str(tasks[0]["deployment"]["job_id"])

    await deploy("1")
    second = await deploy("2")
    assert_problem(
        await gateway.call(
            "POST", f"/api/v1/deployment-jobs/{second}/rollback", tenant.token, json={"target_ids": "all"}
        ),
        400,
        "VAL_INVALID_REQUEST",
    )
    viewer = await gateway.principal_token(tenant, "viewer", ["viewer"])
    assert_problem(
        await gateway.call("POST", f"/api/v1/deployment-jobs/{second}/rollback", viewer.token), 403, "PERM_DENIED"
    )
    rollback = await gateway.call(
        "POST", f"/api/v1/deployment-jobs/{second}/rollback", tenant.token, headers={"Idempotency-Key": "rb-1"}
    )
    assert rollback.status_code == 201, rollback.text
    job = rollback.json()
    assert job["rollback_of"] == second and job["kind"] == "rollback"
    assert {t["components"][0]["digest"] for t in job["tasks"]} == {digest("api:1")}
    replay = await gateway.call(
        "POST", f"/api/v1/deployment-jobs/{second}/rollback", tenant.token, headers={"Idempotency-Key": "rb-1"}
    )
    assert replay.json()["id"] == job["id"]
    assert_problem(
        await gateway.call("POST", f"/api/v1/deployment-jobs/{second}/rollback", tenant.token),
        409,
        "DEPLOY_ENVIRONMENT_BUSY",
    )
    resume = f"/api/v1/deployment-jobs/{job['id']}/resume"
    assert_problem(await gateway.call("POST", resume, viewer.token), 403, "PERM_DENIED")
    not_paused = await gateway.call("POST", resume, tenant.token, json={"reason": "go on"})
    assert_problem(not_paused, 409, "DEPLOY_JOB_NOT_PAUSED")

    cancelled = await gateway.call("POST", f"/api/v1/deployment-jobs/{job['id']}/cancel", tenant.token)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert_problem(
        await gateway.call(
            "POST", f"/api/v1/deployment-jobs/{job['id']}/cancel", tenant.token, json={"reason": "again"}
        ),
        409,
        "DEPLOY_JOB_STATE",
    )
    jobs = (await gateway.call("GET", "/api/v1/deployment-jobs?page_size=2", tenant.token)).json()
    assert [j["id"] for j in jobs["items"]] == [job["id"], second]
    following = await gateway.call(
        "GET", f"/api/v1/deployment-jobs?page_size=2&page_token={jobs['next_page_token']}", tenant.token
    )
    assert len(following.json()["items"]) == 1
    wrong_list = await gateway.call("GET", f"/api/v1/targets?page_token={jobs['next_page_token']}", tenant.token)
    assert_problem(wrong_list, 400, "VAL_PAGE_TOKEN")

    # A job's tasks come a page at a time.
    first = (await gateway.call("GET", f"/api/v1/deployment-jobs/{second}?page_size=1", tenant.token)).json()
    assert [t["target_name"] for t in first["tasks"]] == ["web-1"]
    rest = await gateway.call(
        "GET", f"/api/v1/deployment-jobs/{second}?page_size=1&page_token={first['next_page_token']}", tenant.token
    )
    assert [t["target_name"] for t in rest.json()["tasks"]] == ["web-2"]
    assert rest.json()["next_page_token"] is None
    assert_problem(
        await gateway.call(
            "GET", f"/api/v1/deployment-jobs/{second}?page_token={jobs['next_page_token']}", tenant.token
        ),
        400,
        "VAL_PAGE_TOKEN",
    )
