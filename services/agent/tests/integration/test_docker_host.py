"""The docker_host driver on the real engine: deploy, replace, repeat, roll back, refuse, recover."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from stella.agent.drivers import DockerHostDriver, DriverConfig
from stella.agent.drivers.docker_host import ASIDE_SUFFIX, container_name, container_spec
from stella.agent.drivers.engine_driver import Target
from stella.contracts.agent import STICKER_FILE, HealthCheckSpec, PortMapping, RegistryCredential, TaskType
from stella.testing.docker import DockerEngine, DockerJanitor
from stella.testing.images import HTTP_PORT, VERSION_PATH, AppImages, push_app_image
from stella.testing.messaging import unique_token
from stella.testing.plugin import MakeRegistry
from stella.testing.registry import LocalRegistry
from stella.testing.tampering import TamperingRegistry, tampered_image

from .conftest import Component, TaskLog, TestTarget

pytestmark = pytest.mark.docker


def container(engine: DockerEngine, name: str) -> dict[str, Any]:
    return engine.client.api.inspect_container(name)


def running_repo_digests(engine: DockerEngine, name: str) -> list[str]:
    """What `docker inspect` says the container runs: its image's repo digests."""
    image_id = container(engine, name)["Image"]
    return list(engine.client.api.inspect_image(image_id)["RepoDigests"])


def published_port(engine: DockerEngine, name: str) -> int:
    return int(container(engine, name)["NetworkSettings"]["Ports"][f"{HTTP_PORT}/tcp"][0]["HostPort"])


def http_get(port: int, path: str) -> tuple[int, bytes]:
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def sticker_path(config: DriverConfig, target: TestTarget) -> Path:
    return config.state_dir / "targets" / str(target.target_id) / STICKER_FILE


def containers_of(engine: DockerEngine, target: TestTarget) -> dict[str, dict[str, Any]]:
    found = engine.client.api.containers(all=True, filters={"label": f"stella.target.id={target.target_id}"})
    return {item["Names"][0].lstrip("/"): item for item in found}


async def test_deploy_v1_then_v2_runs_the_pinned_digests_labels_them_and_leaves_a_sticker(
    docker_driver: DockerHostDriver,
    driver_config: DriverConfig,
    docker_engine: DockerEngine,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    api = Component("api", app_images.v1, env={"GREETING": "hello world"})
    first = docker_target.task([api])
    result = await docker_driver.run(first, task_log)
    assert result.status == "succeeded", result.message
    assert (result.task_id, result.idempotency_key, result.error_code) == (first.task_id, first.idempotency_key, None)
    name = container_name(docker_target.target_id, "api")
    assert name == f"stella-api-{docker_target.target_id.hex}"
    inspected = container(docker_engine, name)
    assert inspected["State"]["Running"]
    assert app_images.v1.ref in running_repo_digests(docker_engine, name)
    labels = inspected["Config"]["Labels"]
    assert first.deployment is not None
    assert labels["stella.target.id"] == str(docker_target.target_id)
    assert labels["stella.component.id"] == str(first.components[0].component_id)
    assert labels["stella.component.name"] == "api"
    assert labels["stella.digest"] == app_images.v1.digest
    assert labels["stella.release.id"] == str(first.deployment.release_id)
    assert labels["stella.deployment.id"] == str(first.deployment.job_id)
    assert labels["stella.environment.id"] == str(docker_target.environment_id)
    assert "GREETING=hello world" in inspected["Config"]["Env"]
    assert inspected["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert http_get(published_port(docker_engine, name), VERSION_PATH) == (200, f"{app_images.v1.version}\n".encode())

    [state] = result.components
    assert (state.name, state.running_digest, state.expected_digest) == (
        "api",
        app_images.v1.digest,
        app_images.v1.digest,
    )
    assert (state.container, state.state, state.healthy) == (name, "running", True)
    written = sticker_path(driver_config, docker_target).read_bytes()
    assert json.loads(written) == first.sticker
    assert result.sticker == first.sticker
    [artifact] = result.artifacts
    assert artifact.type == "sticker"
    assert artifact.name == STICKER_FILE
    assert artifact.content_hash == "sha256:" + hashlib.sha256(written).hexdigest()

    second = docker_target.task([Component("api", app_images.v2)], previous={"api": app_images.v1.digest})
    result = await docker_driver.run(second, task_log)
    assert result.status == "succeeded", result.message
    replaced = container(docker_engine, name)
    assert replaced["Id"] != inspected["Id"]
    assert app_images.v2.ref in running_repo_digests(docker_engine, name)
    assert app_images.v1.ref not in running_repo_digests(docker_engine, name)
    assert replaced["Config"]["Labels"]["stella.digest"] == app_images.v2.digest
    assert http_get(published_port(docker_engine, name), VERSION_PATH) == (200, f"{app_images.v2.version}\n".encode())
    assert json.loads(sticker_path(driver_config, docker_target).read_bytes()) == second.sticker
    assert result.components[0].running_digest == app_images.v2.digest
    assert set(containers_of(docker_engine, docker_target)) == {name}, "the replaced container is gone"


async def test_the_same_task_again_changes_nothing(
    docker_driver: DockerHostDriver,
    driver_config: DriverConfig,
    docker_engine: DockerEngine,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    task = docker_target.task([Component("api", app_images.v1)])
    first = await docker_driver.run(task, task_log)
    assert first.status == "succeeded"
    name = container_name(docker_target.target_id, "api")
    before = container(docker_engine, name)
    sticker_before = sticker_path(driver_config, docker_target).stat()

    # Delivered again (a lost result, a re-lease): the result is reported again, nothing is done.
    again = await docker_driver.run(task.model_copy(update={"attempt": 2}), task_log)
    assert again.status == "succeeded", again.message
    assert again.attempt == 2
    assert (again.components, again.artifacts, again.started_at) == (
        first.components,
        first.artifacts,
        first.started_at,
    )
    assert "already succeeded here" in task_log.lines[-1]

    # The same work under a new key finds it in place and changes nothing, not even the sticker file.
    result = await docker_driver.run(docker_target.anew(task), task_log)
    assert result.status == "succeeded", result.message
    after = container(docker_engine, name)
    assert (after["Id"], after["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"])
    assert "already runs" in task_log.text
    assert sticker_path(driver_config, docker_target).stat().st_mtime_ns == sticker_before.st_mtime_ns

    # Another job deploying what already runs keeps the container and leaves its own sticker.
    redundant = docker_target.task([Component("api", app_images.v1)])
    assert (await docker_driver.run(redundant, task_log)).status == "succeeded"
    after = container(docker_engine, name)
    assert (after["Id"], after["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"])
    assert json.loads(sticker_path(driver_config, docker_target).read_bytes()) == redundant.sticker


async def test_a_stale_duplicate_of_an_old_deploy_does_not_undo_a_later_one(
    docker_driver: DockerHostDriver,
    docker_engine: DockerEngine,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    old = docker_target.task([Component("api", app_images.v1)])
    assert (await docker_driver.run(old, task_log)).status == "succeeded"
    newer = docker_target.task([Component("api", app_images.v2)], previous={"api": app_images.v1.digest})
    assert (await docker_driver.run(newer, task_log)).status == "succeeded"
    replayed = await docker_driver.run(old, task_log)
    assert replayed.status == "succeeded"
    assert replayed.components[0].running_digest == app_images.v1.digest  # what that task reported then
    name = container_name(docker_target.target_id, "api")
    assert app_images.v2.ref in running_repo_digests(docker_engine, name)


async def test_rollback_deploys_the_previous_digest(
    docker_driver: DockerHostDriver,
    docker_engine: DockerEngine,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    assert (
        await docker_driver.run(docker_target.task([Component("api", app_images.v1)]), task_log)
    ).status == "succeeded"
    upgrade = docker_target.task([Component("api", app_images.v2)], previous={"api": app_images.v1.digest})
    assert (await docker_driver.run(upgrade, task_log)).status == "succeeded"
    name = container_name(docker_target.target_id, "api")
    assert app_images.v2.ref in running_repo_digests(docker_engine, name)

    # The service builds the rollback from the upgrade's previous_digest.
    previous = upgrade.components[0].previous_digest
    assert previous == app_images.v1.digest
    rollback = docker_target.task(
        [Component("api", app_images.v1)], task_type=TaskType.ROLLBACK, previous={"api": app_images.v2.digest}
    )
    result = await docker_driver.run(rollback, task_log)
    assert result.status == "succeeded", result.message
    assert app_images.v1.ref in running_repo_digests(docker_engine, name)
    assert result.components[0].running_digest == previous
    assert "rollback" in task_log.text


async def test_a_registry_serving_another_manifest_is_refused_and_nothing_is_started_or_stopped(
    docker_driver: DockerHostDriver,
    driver_config: DriverConfig,
    docker_engine: DockerEngine,
    docker_target: TestTarget,
    app_images: AppImages,
    oci_registry: LocalRegistry,
    tampering_registry: TamperingRegistry,
    task_log: TaskLog,
) -> None:
    assert (
        await docker_driver.run(docker_target.task([Component("api", app_images.v1)]), task_log)
    ).status == "succeeded"
    name = container_name(docker_target.target_id, "api")
    before = container(docker_engine, name)
    sticker_before = sticker_path(driver_config, docker_target).read_bytes()

    tampered = Component("api", tampered_image(oci_registry, tampering_registry, app_images.broken))
    result = await docker_driver.run(docker_target.task([tampered]), task_log)

    assert result.status == "failed"
    assert result.error_code == "AGT_DIGEST_MISMATCH"
    assert tampered.image.digest in result.message
    assert tampering_registry.served_swaps >= 1
    after = container(docker_engine, name)
    assert (after["Id"], after["State"]["StartedAt"], after["State"]["Running"]) == (
        before["Id"],
        before["State"]["StartedAt"],
        True,
    )
    assert set(containers_of(docker_engine, docker_target)) == {name}
    assert sticker_path(driver_config, docker_target).read_bytes() == sticker_before
    with pytest.raises(docker.errors.ImageNotFound):
        docker_engine.client.images.get(tampered.image.ref)


async def test_a_first_deployment_from_a_tampering_registry_creates_no_container(
    docker_driver: DockerHostDriver,
    driver_config: DriverConfig,
    docker_engine: DockerEngine,
    docker_target: TestTarget,
    app_images: AppImages,
    oci_registry: LocalRegistry,
    tampering_registry: TamperingRegistry,
    task_log: TaskLog,
) -> None:
    api = Component("api", tampered_image(oci_registry, tampering_registry, app_images.v2))
    result = await docker_driver.run(docker_target.task([api]), task_log)
    assert result.error_code == "AGT_DIGEST_MISMATCH", task_log.text
    assert containers_of(docker_engine, docker_target) == {}
    assert not sticker_path(driver_config, docker_target).exists()


async def test_private_registry_credentials_are_used_and_never_logged(
    docker_driver: DockerHostDriver,
    docker_engine: DockerEngine,
    docker_janitor: DockerJanitor,
    docker_target: TestTarget,
    make_oci_registry: MakeRegistry,
    task_log: TaskLog,
) -> None:
    registry = make_oci_registry(auth=True)
    docker_janitor.add_registry(registry.address)
    assert registry.credentials is not None
    username, password = registry.credentials
    image = push_app_image(registry, f"private/app-{unique_token()}", "v1", f"private {unique_token()}")
    api = Component("api", image)

    refused = await docker_driver.run(docker_target.task([api]), task_log)
    assert refused.error_code == "AGT_PULL_FAILED"
    assert containers_of(docker_engine, docker_target) == {}

    credential = RegistryCredential(registry=registry.address, username=username, password=password)
    result = await docker_driver.run(docker_target.task([api], credentials=[credential]), task_log)
    assert result.status == "succeeded", result.message
    assert image.ref in running_repo_digests(docker_engine, container_name(docker_target.target_id, "api"))
    assert password not in task_log.text
    assert password not in result.model_dump_json()


async def test_a_container_that_cannot_start_gives_the_previous_one_back(
    docker_driver: DockerHostDriver,
    docker_engine: DockerEngine,
    docker_janitor: DockerJanitor,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    assert (
        await docker_driver.run(docker_target.task([Component("api", app_images.v1)]), task_log)
    ).status == "succeeded"
    name = container_name(docker_target.target_id, "api")
    before = container(docker_engine, name)
    # Another container holds the host port the new version asks for.
    blocker = docker_janitor.add_container(f"stella-test-blocker-{unique_token()}")
    docker_engine.client.containers.run(  # type: ignore[call-overload]  # (host, None) binds a random port; the stubs omit it
        app_images.v1.ref, name=blocker, detach=True, ports={f"{HTTP_PORT}/tcp": ("127.0.0.1", None)}
    )
    taken = published_port(docker_engine, blocker)
    wanted = Component(
        "api", app_images.v2, ports=[PortMapping(container_port=HTTP_PORT, host_port=taken, host_ip="127.0.0.1")]
    )
    result = await docker_driver.run(docker_target.task([wanted]), task_log)

    assert result.status == "failed"
    assert result.error_code == "AGT_DOCKER_ERROR"
    after = container(docker_engine, name)
    assert after["Id"] == before["Id"]
    assert after["State"]["Running"], task_log.text
    assert app_images.v1.ref in running_repo_digests(docker_engine, name)
    assert set(containers_of(docker_engine, docker_target)) == {name}


async def test_components_the_release_no_longer_names_are_removed(
    docker_driver: DockerHostDriver,
    docker_engine: DockerEngine,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    both = docker_target.task([Component("api", app_images.v1), Component("web", app_images.v2)])
    assert (await docker_driver.run(both, task_log)).status == "succeeded"
    api, web = (container_name(docker_target.target_id, name) for name in ("api", "web"))
    assert set(containers_of(docker_engine, docker_target)) == {api, web}
    assert app_images.v2.ref in running_repo_digests(docker_engine, web)

    # One task per component: the sticker names both, so deploying api alone keeps web.
    api_only = docker_target.task(
        [Component("api", app_images.v2)],
        sticker_components=[Component("api", app_images.v2), Component("web", app_images.v2)],
    )
    assert (await docker_driver.run(api_only, task_log)).status == "succeeded"
    assert set(containers_of(docker_engine, docker_target)) == {api, web}

    # A release without web: its container goes once api is healthy.
    assert (
        await docker_driver.run(docker_target.task([Component("api", app_images.v2)]), task_log)
    ).status == "succeeded"
    assert set(containers_of(docker_engine, docker_target)) == {api}


def _aside_state(
    engine: DockerEngine, docker_target: TestTarget, driver_config: DriverConfig, task: Any, stage: str
) -> None:
    """Leave the target as an attempt that died at ``stage`` would have."""
    name = container_name(docker_target.target_id, "api")
    aside = name + ASIDE_SUFFIX
    engine.pull(task.components[0].image_ref)
    if stage == "pulled":
        return
    engine.client.api.stop(name, timeout=1)
    if stage == "stopped":
        return
    engine.client.api.rename(name, aside)
    if stage == "set-aside":
        return
    target = Target(task=task, url=driver_config.docker_url, docker=None, directory=Path("/nonexistent"), host="")  # type: ignore[arg-type]
    config, _ = container_spec(target, task.components[0], None)
    created = engine.client.api.create_container(
        image=config["Image"],
        name=name,
        labels=config["Labels"],
        environment=config["Env"],
        ports=[HTTP_PORT],
        host_config=engine.client.api.create_host_config(
            port_bindings={HTTP_PORT: ("127.0.0.1", None)}, restart_policy={"Name": "unless-stopped"}
        ),
    )
    assert created["Id"]


@pytest.mark.parametrize("stage", ["pulled", "stopped", "set-aside", "created"])
async def test_an_attempt_that_died_half_way_is_finished_by_the_next(
    stage: str,
    docker_driver: DockerHostDriver,
    driver_config: DriverConfig,
    docker_engine: DockerEngine,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    assert (
        await docker_driver.run(docker_target.task([Component("api", app_images.v1)]), task_log)
    ).status == "succeeded"
    upgrade = docker_target.task([Component("api", app_images.v2)], previous={"api": app_images.v1.digest})
    _aside_state(docker_engine, docker_target, driver_config, upgrade, stage)

    result = await docker_driver.run(upgrade, task_log)
    assert result.status == "succeeded", result.message
    name = container_name(docker_target.target_id, "api")
    assert set(containers_of(docker_engine, docker_target)) == {name}
    assert container(docker_engine, name)["State"]["Running"]
    assert app_images.v2.ref in running_repo_digests(docker_engine, name)
    assert json.loads(sticker_path(driver_config, docker_target).read_bytes()) == upgrade.sticker


_RUN_TASK = """
import asyncio, sys
from pathlib import Path
from stella.agent.drivers import DockerHostDriver, DriverConfig
from stella.contracts.agent import AgentTask

async def main():
    task = AgentTask.model_validate_json(sys.stdin.read())
    driver = DockerHostDriver(DriverConfig(state_dir=Path(sys.argv[1]), docker_url=sys.argv[2]))
    result = await driver.run(task, lambda line: print(line, flush=True))
    print(result.model_dump_json(), flush=True)
    await driver.close()

asyncio.run(main())
"""


async def test_an_agent_killed_mid_deploy_leaves_a_state_the_next_attempt_converges_from(
    docker_driver: DockerHostDriver,
    driver_config: DriverConfig,
    docker_engine: DockerEngine,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    assert (
        await docker_driver.run(docker_target.task([Component("api", app_images.v1)]), task_log)
    ).status == "succeeded"
    name = container_name(docker_target.target_id, "api")
    upgrade = docker_target.task([Component("api", app_images.v2)], previous={"api": app_images.v1.digest})

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RUN_TASK,
        str(driver_config.state_dir),
        driver_config.docker_url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(upgrade.model_dump_json().encode())
    process.stdin.close()
    # Kill -9 as soon as the agent has set the old container aside (between stopping it and starting the new one).
    killed = False
    while (line := (await process.stdout.readline()).decode()) != "":
        if line.startswith("stopping "):
            os.kill(process.pid, signal.SIGKILL)
            killed = True
            break
    await process.wait()
    assert killed, "the agent finished before it could be killed"

    result = await docker_driver.run(upgrade, task_log)
    assert result.status == "succeeded", result.message
    assert set(containers_of(docker_engine, docker_target)) == {name}
    assert app_images.v2.ref in running_repo_digests(docker_engine, name)
    assert json.loads(sticker_path(driver_config, docker_target).read_bytes()) == upgrade.sticker


async def test_check_reports_the_engine(docker_driver: DockerHostDriver, tmp_path: Path) -> None:
    ok, message = await docker_driver.check()
    assert ok
    assert message.startswith("Docker ")
    dead = DockerHostDriver(
        DriverConfig(state_dir=tmp_path, docker_url=f"unix://{tmp_path}/no.sock", probe_timeout_s=2)
    )
    try:
        ok, message = await dead.check()
    finally:
        await dead.close()
    assert not ok
    assert "does not answer" in message


async def test_an_engine_or_directory_the_operator_did_not_allow_is_refused(
    docker_driver: DockerHostDriver, docker_target: TestTarget, app_images: AppImages, task_log: TaskLog
) -> None:
    docker_target.connection = {"docker_url": "tcp://10.0.0.1:2375"}
    result = await docker_driver.run(docker_target.task([Component("api", app_images.v1)]), task_log)
    assert (result.status, result.error_code) == ("failed", "AGT_INVALID_TASK")
    docker_target.connection = {"directory": "/etc"}
    result = await docker_driver.run(docker_target.task([Component("api", app_images.v1)]), task_log)
    assert (result.status, result.error_code) == ("failed", "AGT_INVALID_TASK")
    assert not Path("/etc", STICKER_FILE).exists()


async def test_a_sticker_that_does_not_match_the_task_is_refused(
    docker_driver: DockerHostDriver,
    docker_engine: DockerEngine,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    task = docker_target.task([Component("api", app_images.v1)], sticker_components=[Component("api", app_images.v2)])
    result = await docker_driver.run(task, task_log)
    assert (result.status, result.error_code) == ("failed", "AGT_INVALID_TASK")
    assert containers_of(docker_engine, docker_target) == {}


async def test_a_task_past_its_timeout_fails_with_agt_timeout(
    docker_driver: DockerHostDriver, docker_target: TestTarget, app_images: AppImages, task_log: TaskLog
) -> None:
    never = HealthCheckSpec(type="http", path="/missing", timeout_s=1, retries=100, interval_s=0.2)
    result = await docker_driver.run(
        docker_target.task([Component("api", app_images.v1)], health_check=never, timeout_s=3), task_log
    )
    assert (result.status, result.error_code) == ("failed", "AGT_TIMEOUT")
