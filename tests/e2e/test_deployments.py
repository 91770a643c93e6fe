"""Deployments on the real Docker engine: every service and the gateway as processes, agents as processes.

The releases are real images with real digests in a local registry; what runs is checked with
``docker inspect``, never with Stella's own word. Heartbeats are fast (1 s) and leases short (6 s) so agents
that vanish are noticed within seconds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client

from stella.testing.docker import DockerEngine, DockerJanitor
from stella.testing.images import AppImage, AppImages
from stella.testing.registry import LocalRegistry
from stella.testing.tampering import TamperingRegistry, tampered_image

from .conftest import HEADLESS, Stack, _running
from .deployments import (
    LOCK_FILE,
    Agents,
    container_of,
    deploy,
    deployment_job,
    environment,
    lock_file_hash_holds,
    promote,
    release,
    running_digests,
    settled,
    target,
)

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


SERVICES = HEADLESS


@pytest.fixture
def fast_agents(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats every second (offline after 3 s of silence), leases of 6 s, long polls of 2 s."""
    monkeypatch.setenv("STELLA_DEPLOYMENT_HEARTBEAT_INTERVAL_S", "1")
    monkeypatch.setenv("STELLA_DEPLOYMENT_LEASE_S", "6")
    monkeypatch.setenv("STELLA_DEPLOYMENT_TASK_POLL_TIMEOUT_S", "2")


@pytest_asyncio.fixture
async def deploy_stack(
    fast_agents: None,
    fresh_database: str,
    nats_url: str,
    nats: Client,
    stella_namespace: str,
    unique_id: str,
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    async with _running(SERVICES, fresh_database, nats_url, nats, stella_namespace, unique_id, tmp_path) as system:
        yield system


@pytest_asyncio.fixture
async def agents(
    deploy_stack: Stack, tmp_path: Path, docker_engine: DockerEngine, docker_janitor: DockerJanitor
) -> AsyncIterator[Agents]:
    started = Agents(deploy_stack, tmp_path, docker_engine, docker_janitor)
    try:
        yield started
    finally:
        started.stop_all()


async def _strategy_world(
    stack: Stack,
    agents: Agents,
    janitor: DockerJanitor,
    v1: AppImage,
    deployment: dict[str, Any],
    targets: list[tuple[str, dict[str, Any]]],
) -> tuple[str, list[dict[str, Any]]]:
    """One agent running four tasks at once, an environment deploying with ``deployment``'s strategy, the
    ``targets`` (name and fields) served by the agent, and release ``shop-1`` (v1) deployed there: the
    environment's id and the targets."""
    agent = await agents.start("edge-1", STELLA_AGENT_MAX_CONCURRENT_TASKS="4")
    dev = await environment(stack, "dev", 0, deployment)
    created = [await target(stack, janitor, dev, name, agent, **fields) for name, fields in targets]
    await deploy(stack, "shop-1", {"web": v1}, dev)
    return dev, created


async def _packets(stack: Stack, promotion_id: str, packet_type: str) -> list[dict[str, Any]]:
    listing = await stack.until(
        f"/api/v1/promotions/{promotion_id}/evidence",
        lambda body: any(p["packet_type"] == packet_type for p in body["items"]),
        timeout=60,
    )
    return [p for p in listing["items"] if p["packet_type"] == packet_type]


async def _verify_offline(stack: Stack, tmp_path: Path) -> dict[str, Any]:
    """Export the tenant's evidence and verify the bundle with the offline verifier alone."""
    bundle = tmp_path / "evidence.tar.gz"
    assert stack.http is not None
    async with stack.http.get(
        f"{stack.base}/api/v1/evidence/export", headers={"Authorization": f"Bearer {stack.token}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        bundle.write_bytes(await resp.read())
    verified = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "stella.evidence.verify", str(bundle), "--json", "--trust-bundle-keys"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    return dict(json.loads(verified.stdout))


async def test_a_release_promoted_to_dev_runs_on_two_docker_hosts_and_a_compose_host_served_by_two_agents(
    deploy_stack: Stack,
    agents: Agents,
    app_images: AppImages,
    docker_engine: DockerEngine,
    docker_janitor: DockerJanitor,
    tmp_path: Path,
) -> None:
    stack = deploy_stack
    one = await agents.start("edge-1")
    two = await agents.start("edge-2")
    dev = await environment(stack, "dev", 0, {"strategy": "all-at-once"})
    served = [
        (await target(stack, docker_janitor, dev, "web-1", one), one),
        (await target(stack, docker_janitor, dev, "web-2", two), two),
        (await target(stack, docker_janitor, dev, "web-3", two, "compose_host"), two),
    ]
    v1 = app_images.v1
    promotion, job = await deploy(stack, "shop-1", {"web": v1}, dev)

    assert job["status"] == "succeeded", job
    assert sorted(task["target_name"] for task in job["tasks"]) == ["web-1", "web-2", "web-3"]
    for created, agent in served:
        digests = running_digests(docker_engine, created["id"])
        assert v1.digest in digests, (created["name"], digests)
        sticker = agent.sticker(created["id"])
        assert {c["name"]: c["digest"] for c in sticker["release"]["components"]} == {"web": v1.digest}
        assert sticker["deployment"]["target_id"] == created["id"]
        assert container_of(docker_engine, created["id"])["State"]["Running"]
    compose_target, compose_agent = served[2]
    lock = (compose_agent.target_dir(compose_target["id"]) / LOCK_FILE).read_text()
    assert f"image: {v1.repository}@{v1.digest}" in lock
    assert lock_file_hash_holds(lock)

    [packet] = await _packets(stack, promotion["id"], "deployment")
    status, verdict, _ = await stack.call("POST", f"/api/v1/evidence/{packet['id']}/verify")
    assert status == 200 and verdict["valid"], verdict
    report = await _verify_offline(stack, tmp_path)
    assert report["ok"] is True


async def test_a_rolling_deployment_whose_second_batch_fails_rolls_every_touched_target_back(
    deploy_stack: Stack,
    agents: Agents,
    app_images: AppImages,
    docker_engine: DockerEngine,
    docker_janitor: DockerJanitor,
) -> None:
    """Batches of two, in name order. The first batch's targets check only that a command runs in the
    container (it does in the broken image too); the second batch's use the environment's HTTP check of
    /healthz, which the broken image fails. So the second batch fails, and every target the job touched goes
    back to v1."""
    stack = deploy_stack
    port_only = {
        "type": "command",
        "command": ["/bin/busybox", "true"],
        "timeout_s": 5,
        "retries": 10,
        "interval_s": 0.5,
    }
    dev, targets = await _strategy_world(
        stack,
        agents,
        docker_janitor,
        app_images.v1,
        {"strategy": "rolling", "batch_size": "2", "failure_behavior": "rollback"},
        [(f"web-{n}", {"health_check": port_only if n <= 2 else None}) for n in range(1, 5)],
    )
    before = {created["id"]: container_of(docker_engine, created["id"])["Id"] for created in targets}

    _, job = await deploy(stack, "shop-2", {"web": app_images.broken}, dev, "rolled_back")
    assert job["strategy"] == "rolling", job["strategy"]
    deploys = {task["target_name"]: task for task in job["tasks"] if task["type"] == "deploy"}
    assert [deploys[f"web-{n}"]["batch"] for n in range(1, 5)] == [0, 0, 1, 1]
    assert deploys["web-1"]["status"] == deploys["web-2"]["status"] == "succeeded", job
    assert "failed" in {deploys["web-3"]["status"], deploys["web-4"]["status"]}, job
    rolled = {task["target_name"] for task in job["tasks"] if task["type"] == "rollback"}
    touched = {name for name, task in deploys.items() if task["status"] in ("succeeded", "failed", "timed_out")}
    assert touched <= rolled, (touched, rolled)
    for created in targets:
        assert app_images.v1.digest in running_digests(docker_engine, created["id"]), created["name"]
        assert app_images.broken.digest not in running_digests(docker_engine, created["id"])
    assert before  # every target ran v1 before; each runs v1 again now (checked with docker inspect above)
    [packet] = await _packets(stack, job["promotion_id"], "rollback")
    assert packet["content"]


async def test_a_canary_that_breaches_rolls_back_and_leaves_the_rest_untouched(
    deploy_stack: Stack,
    agents: Agents,
    app_images: AppImages,
    docker_engine: DockerEngine,
    docker_janitor: DockerJanitor,
) -> None:
    stack = deploy_stack
    dev, targets = await _strategy_world(
        stack,
        agents,
        docker_janitor,
        app_images.v1,
        {"strategy": "canary", "canary_steps": [25, 50, 100]},
        [(f"web-{n}", {}) for n in range(1, 5)],
    )
    before = {created["name"]: container_of(docker_engine, created["id"])["Id"] for created in targets}

    _, job = await deploy(stack, "shop-2", {"web": app_images.broken}, dev, "rolled_back")
    ran = {"succeeded", "failed", "timed_out"}
    canaries = {task["target_name"] for task in job["tasks"] if task["type"] == "deploy" and task["status"] in ran}
    assert job["strategy"] == "canary", job["strategy"]
    assert canaries == {"web-1"}, [
        (t["target_name"], t["type"], t["batch"], t["status"], t["error_code"]) for t in job["tasks"]
    ]
    for created in targets:
        assert app_images.v1.digest in running_digests(docker_engine, created["id"]), created["name"]
        if created["name"] not in canaries:
            assert container_of(docker_engine, created["id"])["Id"] == before[created["name"]], "never touched"


async def test_blue_green_switches_to_the_idle_group_only_once_it_is_healthy(
    deploy_stack: Stack,
    agents: Agents,
    app_images: AppImages,
    docker_engine: DockerEngine,
    docker_janitor: DockerJanitor,
) -> None:
    stack = deploy_stack
    dev, targets = await _strategy_world(
        stack,
        agents,
        docker_janitor,
        app_images.v1,
        {"strategy": "blue-green", "group_label": "color"},
        [(f"{color}-{n}", {"labels": {"color": color}}) for color in ("blue", "green") for n in (1, 2)],
    )
    groups = {color: [t for t in targets if t["labels"]["color"] == color] for color in ("blue", "green")}
    blue = {created["id"]: container_of(docker_engine, created["id"])["Id"] for created in groups["blue"]}
    for created in groups["green"]:
        assert (
            docker_engine.client.containers.list(all=True, filters={"label": [f"stella.target.id={created['id']}"]})
            == []
        )

    # The idle group (green) gets a release that fails its health check: no switch, blue untouched.
    _, job = await deploy(stack, "shop-2", {"web": app_images.broken}, dev, "failed", "rolled_back")
    assert job["strategy"] == "blue-green", job["strategy"]
    assert {task["target_name"] for task in job["tasks"] if task["type"] == "deploy"} == {"green-1", "green-2"}
    for target_id, container_id in blue.items():
        assert container_of(docker_engine, target_id)["Id"] == container_id
        assert app_images.v1.digest in running_digests(docker_engine, target_id)

    # A healthy release goes to green again (blue is still the active group), and then green is active.
    _, job = await deploy(stack, "shop-3", {"web": app_images.v2}, dev)
    assert {task["target_name"] for task in job["tasks"] if task["type"] == "deploy"} == {"green-1", "green-2"}
    assert "green" in job["reason"] and "active" in job["reason"], job["reason"]
    for created in groups["green"]:
        assert app_images.v2.digest in running_digests(docker_engine, created["id"])
    for target_id, container_id in blue.items():  # kept as it was, for an instant rollback
        assert container_of(docker_engine, target_id)["Id"] == container_id


async def test_a_registry_serving_another_manifest_for_the_pinned_digest_fails_the_task_and_starts_nothing(
    deploy_stack: Stack,
    agents: Agents,
    app_images: AppImages,
    tampering_registry: TamperingRegistry,
    oci_registry: LocalRegistry,
    docker_engine: DockerEngine,
    docker_janitor: DockerJanitor,
) -> None:
    stack = deploy_stack
    agent = await agents.start("edge-1")
    dev = await environment(stack, "dev", 0, {"strategy": "all-at-once"})
    created = await target(stack, docker_janitor, dev, "web-1", agent)
    lying = tampered_image(oci_registry, tampering_registry, app_images.v2)
    _, job = await deploy(stack, "shop-1", {"web": lying}, dev, "failed", "rolled_back")
    [task] = [task for task in job["tasks"] if task["type"] == "deploy"]
    assert task["error_code"] == "AGT_DIGEST_MISMATCH", task
    assert tampering_registry.served_swaps >= 1
    assert (
        docker_engine.client.containers.list(all=True, filters={"label": [f"stella.target.id={created['id']}"]}) == []
    )


async def test_drift_made_by_hand_is_reported_with_both_digests_and_remediated(
    deploy_stack: Stack,
    agents: Agents,
    app_images: AppImages,
    docker_engine: DockerEngine,
    docker_janitor: DockerJanitor,
) -> None:
    stack = deploy_stack
    agent = await agents.start("edge-1")
    dev = await environment(stack, "dev", 0, {"strategy": "all-at-once"})
    created = await target(stack, docker_janitor, dev, "web-1", agent)
    await deploy(stack, "shop-1", {"web": app_images.v1}, dev)

    # By hand: the component's container is replaced by one running v2, under the same name.
    running = container_of(docker_engine, created["id"])
    name = running["Name"].lstrip("/")
    docker_engine.pull(app_images.v2.ref)
    docker_engine.client.api.remove_container(running["Id"], force=True)
    docker_engine.client.containers.run(app_images.v2.ref, name=name, detach=True, labels=running["Config"]["Labels"])

    status, body, _ = await stack.call("POST", f"/api/v1/targets/{created['id']}/check-drift")
    assert status in (200, 202), body
    drifted = await stack.until(f"/api/v1/targets/{created['id']}", lambda t: t["drift_detected"], timeout=60)
    text = json.dumps(drifted["last_drift"])
    assert app_images.v1.digest in text and app_images.v2.digest in text, drifted["last_drift"]

    # The drift is evidence too: a drift packet naming the target, both digests, that verifies.
    listing = await stack.until(
        "/api/v1/evidence?packet_type=drift",
        lambda body: any(p["content"]["execution"]["target_id"] == created["id"] for p in body["items"]),
        timeout=60,
    )
    packet = next(p for p in listing["items"] if p["content"]["execution"]["target_id"] == created["id"])
    assert packet["packet_type"] == "drift"
    digests = {(c["role"], c["digest"]) for c in packet["content"]["release"]["components"]}
    assert {("expected", app_images.v1.digest), ("actual", app_images.v2.digest)} <= digests, digests
    status, verdict, _ = await stack.call("POST", f"/api/v1/evidence/{packet['id']}/verify")
    assert status == 200 and verdict["valid"], verdict

    status, body, _ = await stack.call("POST", f"/api/v1/targets/{created['id']}/remediate")
    assert status in (200, 201, 202), body
    await stack.until(
        f"/api/v1/targets/{created['id']}",
        lambda t: not t["drift_detected"] and t["current"].get("web") == app_images.v1.digest,
        timeout=120,
    )
    assert app_images.v1.digest in running_digests(docker_engine, created["id"])


async def test_an_agent_killed_mid_task_goes_offline_and_another_finishes_the_task_without_redoing_it(
    deploy_stack: Stack,
    agents: Agents,
    app_images: AppImages,
    docker_engine: DockerEngine,
    docker_janitor: DockerJanitor,
) -> None:
    """The first agent reaches published ports at an address where nothing answers, so its health check
    keeps failing for seconds after it replaced the container: it is killed right then, mid-task. The
    second agent takes the task over (a new attempt) and finds the container in place: it is not redone."""
    stack = deploy_stack
    victim = await agents.start("edge-1", STELLA_AGENT_HEALTH_HOST="127.0.0.2")
    dev = await environment(stack, "dev", 0, {"strategy": "all-at-once"})
    created = await target(stack, docker_janitor, dev, "web-1", None)
    shop = await release(stack, "shop-1", {"web": app_images.v1})

    promotion = await promote(stack, shop["id"], dev)
    label: dict[str, str | list[str] | bool] = {"label": [f"stella.target.id={created['id']}"]}
    for _ in range(600):
        containers = docker_engine.client.containers.list(filters=label)
        if containers:
            break
        await asyncio.sleep(0.1)
    [first] = containers
    victim.kill()
    await stack.until(f"/api/v1/agents/{victim.agent_id}", lambda agent: agent["status"] == "offline", timeout=15)

    survivor = await agents.start("edge-2")
    await settled(stack, promotion["id"], "deployed")
    job = await deployment_job(stack, promotion["id"])
    [task] = job["tasks"]
    assert task["agent_id"] == survivor.agent_id
    assert task["attempt"] >= 2
    [now] = docker_engine.client.containers.list(all=True, filters=label)
    assert now.id == first.id, "the second agent found the first one's container in place and kept it"
    assert app_images.v1.digest in running_digests(docker_engine, created["id"])


async def test_a_revoked_or_replayed_agent_credential_is_refused(
    deploy_stack: Stack, agents: Agents, docker_engine: DockerEngine
) -> None:
    stack = deploy_stack
    token = await agents.token()
    agent = await agents.start("edge-1", token=token)
    credential = agent.credential

    # The registration token was one-time: a second agent with it is refused, and no agent is created.
    second = await agents.start("edge-2", token=token, register=False, STELLA_AGENT_REGISTRATION_TOKEN=token)
    assert await agents.exited(second) == 3
    status, page, _ = await stack.call("GET", "/api/v1/agents")
    assert [a["name"] for a in page["items"]] == ["edge-1"]

    status, body, _ = await stack.call("POST", f"/api/v1/agents/{agent.agent_id}/revoke")
    assert status == 200, body
    assert await agents.exited(agent) == 4
    assert "revoked" in agent.log_tail()

    # The stored credential, replayed by anyone, is refused at once.
    status, body, _ = await stack.call(
        "POST",
        f"/api/v1/agents/{credential['agent_id']}/heartbeat",
        token=credential["credential"],
        json={"version": "1.0.0", "checks": [], "running_tasks": []},
    )
    assert status == 401, body
