"""The compose_host driver on the real engine with the machine's Compose."""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from stella.agent.drivers import ComposeHostDriver, DriverConfig
from stella.contracts.agent import COMPOSE_LOCK_FILE, STICKER_FILE, RegistryCredential, TaskType
from stella.testing.docker import DockerEngine, DockerJanitor
from stella.testing.images import HEALTH_PATH, HTTP_PORT, AppImage, AppImages, push_app_image
from stella.testing.messaging import unique_token
from stella.testing.plugin import MakeRegistry
from stella.testing.registry import LocalRegistry
from stella.testing.tampering import TamperingRegistry

from .conftest import Component, TaskLog, TestTarget

pytestmark = pytest.mark.docker


def target_dir(config: DriverConfig, target: TestTarget) -> Path:
    return config.state_dir / "targets" / str(target.target_id)


def project_containers(engine: DockerEngine, target: TestTarget) -> dict[str, dict[str, Any]]:
    """``service -> docker inspect`` for the target's Compose project."""
    found = engine.client.api.containers(
        all=True, filters={"label": f"com.docker.compose.project=stella-{target.target_id.hex}"}
    )
    inspected = [engine.client.api.inspect_container(item["Id"]) for item in found]
    return {item["Config"]["Labels"]["com.docker.compose.service"]: item for item in inspected}


def repo_digests(engine: DockerEngine, inspection: dict[str, Any]) -> list[str]:
    return list(engine.client.api.inspect_image(inspection["Image"])["RepoDigests"])


def independent_lock_hash(data: bytes) -> tuple[str, str]:
    """(stated, computed): the hash the file states, and the sha256 of the file with that value blank."""
    text = data.decode()
    match = re.search(r"^  content_hash: '(sha256:[0-9a-f]{64})'\n\Z", text, re.MULTILINE)
    assert match, "the lock file must end with its content_hash line"
    blank = text[: match.start()] + "  content_hash: ''\n"
    return match.group(1), "sha256:" + hashlib.sha256(blank.encode()).hexdigest()


async def test_deploy_writes_a_digest_pinned_lock_file_runs_it_and_leaves_a_sticker(
    compose_driver: ComposeHostDriver,
    driver_config: DriverConfig,
    docker_engine: DockerEngine,
    compose_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    task = compose_target.task(
        [Component("api", app_images.v1, env={"MODE": "blue: green"}), Component("web", app_images.v2)]
    )
    result = await compose_driver.run(task, task_log)
    assert result.status == "succeeded", task_log.text
    assert task.deployment is not None

    directory = target_dir(driver_config, compose_target)
    lock_bytes = (directory / COMPOSE_LOCK_FILE).read_bytes()
    lock = yaml.safe_load(lock_bytes)
    assert set(lock["services"]) == {"api", "web"}
    for name, image in (("api", app_images.v1), ("web", app_images.v2)):
        service = lock["services"][name]
        assert service["image"] == image.ref
        assert re.fullmatch(r".+@sha256:[0-9a-f]{64}", service["image"])
        assert service["labels"]["stella.digest"] == image.digest
        assert service["labels"]["stella.release.id"] == str(task.deployment.release_id)
        assert service["labels"]["stella.target.id"] == str(compose_target.target_id)
        assert service["labels"]["stella.component.id"] == str(compose_target.component_ids[name])
    assert lock["services"]["api"]["environment"] == {"MODE": "blue: green"}
    block = lock["x-stella"]
    assert block["release_id"] == str(task.deployment.release_id)
    assert block["environment_id"] == str(task.deployment.environment_id)
    assert block["deployment_id"] == str(task.deployment.job_id)
    assert block["target_id"] == str(compose_target.target_id)
    stated, computed = independent_lock_hash(lock_bytes)
    assert block["content_hash"] == stated == computed

    artifacts = {artifact.type: artifact for artifact in result.artifacts}
    assert artifacts["compose-lock"].name == COMPOSE_LOCK_FILE
    assert artifacts["compose-lock"].content_hash == "sha256:" + hashlib.sha256(lock_bytes).hexdigest()
    sticker_bytes = (directory / STICKER_FILE).read_bytes()
    assert artifacts["sticker"].content_hash == "sha256:" + hashlib.sha256(sticker_bytes).hexdigest()
    assert result.sticker == task.sticker

    running = project_containers(docker_engine, compose_target)
    assert set(running) == {"api", "web"}
    assert app_images.v1.ref in repo_digests(docker_engine, running["api"])
    assert app_images.v2.ref in repo_digests(docker_engine, running["web"])
    assert {(c.name, c.running_digest, c.healthy) for c in result.components} == {
        ("api", app_images.v1.digest, True),
        ("web", app_images.v2.digest, True),
    }


async def test_upgrade_repeat_and_rollback(
    compose_driver: ComposeHostDriver,
    driver_config: DriverConfig,
    docker_engine: DockerEngine,
    compose_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    assert (
        await compose_driver.run(compose_target.task([Component("api", app_images.v1)]), task_log)
    ).status == "succeeded"
    first = project_containers(docker_engine, compose_target)["api"]

    upgrade = compose_target.task([Component("api", app_images.v2)], previous={"api": app_images.v1.digest})
    assert (await compose_driver.run(upgrade, task_log)).status == "succeeded", task_log.text
    upgraded = project_containers(docker_engine, compose_target)["api"]
    assert upgraded["Id"] != first["Id"]
    assert app_images.v2.ref in repo_digests(docker_engine, upgraded)

    lock = target_dir(driver_config, compose_target) / COMPOSE_LOCK_FILE
    lock_before = lock.stat().st_mtime_ns
    again = await compose_driver.run(compose_target.anew(upgrade), task_log)
    assert again.status == "succeeded", task_log.text
    assert project_containers(docker_engine, compose_target)["api"]["Id"] == upgraded["Id"]
    assert (
        project_containers(docker_engine, compose_target)["api"]["State"]["StartedAt"] == upgraded["State"]["StartedAt"]
    )
    assert lock.stat().st_mtime_ns == lock_before

    rollback = compose_target.task([Component("api", app_images.v1)], task_type=TaskType.ROLLBACK)
    assert (await compose_driver.run(rollback, task_log)).status == "succeeded", task_log.text
    assert app_images.v1.ref in repo_digests(docker_engine, project_containers(docker_engine, compose_target)["api"])
    assert independent_lock_hash(lock.read_bytes())[0] == independent_lock_hash(lock.read_bytes())[1]


async def test_a_tampering_registry_is_refused_before_the_lock_file_or_anything_running_changes(
    compose_driver: ComposeHostDriver,
    driver_config: DriverConfig,
    docker_engine: DockerEngine,
    compose_target: TestTarget,
    app_images: AppImages,
    oci_registry: LocalRegistry,
    tampering_registry: TamperingRegistry,
    task_log: TaskLog,
) -> None:
    assert (
        await compose_driver.run(compose_target.task([Component("api", app_images.v1)]), task_log)
    ).status == "succeeded"
    before = project_containers(docker_engine, compose_target)["api"]
    lock = (target_dir(driver_config, compose_target) / COMPOSE_LOCK_FILE).read_bytes()

    marker = unique_token()
    repository = f"stella-test/tampered-{marker}"
    pinned = push_app_image(oci_registry, repository, "pinned", f"pinned {marker}")
    served = push_app_image(oci_registry, repository, "served", f"served {marker}", healthy=False)
    tampering_registry.swap(repository, pinned.digest, served.digest)
    image = AppImage(f"{tampering_registry.address}/{repository}", pinned.digest, pinned.version, True)
    result = await compose_driver.run(compose_target.task([Component("api", image)]), task_log)

    assert (result.status, result.error_code) == ("failed", "AGT_DIGEST_MISMATCH")
    after = project_containers(docker_engine, compose_target)["api"]
    assert (after["Id"], after["State"]["StartedAt"], after["State"]["Running"]) == (
        before["Id"],
        before["State"]["StartedAt"],
        True,
    )
    assert (target_dir(driver_config, compose_target) / COMPOSE_LOCK_FILE).read_bytes() == lock


async def test_a_failing_health_check_fails_the_task_and_keeps_the_old_sticker(
    compose_driver: ComposeHostDriver,
    driver_config: DriverConfig,
    compose_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    assert (
        await compose_driver.run(compose_target.task([Component("api", app_images.v1)]), task_log)
    ).status == "succeeded"
    sticker = (target_dir(driver_config, compose_target) / STICKER_FILE).read_bytes()
    from stella.contracts.agent import HealthCheckSpec

    check = HealthCheckSpec(type="http", path=HEALTH_PATH, port=HTTP_PORT, timeout_s=2, retries=2, interval_s=0.25)
    result = await compose_driver.run(
        compose_target.task([Component("api", app_images.broken)], health_check=check), task_log
    )
    assert (result.status, result.error_code) == ("failed", "AGT_HEALTH_CHECK_FAILED")
    assert result.components[0].running_digest == app_images.broken.digest
    assert (target_dir(driver_config, compose_target) / STICKER_FILE).read_bytes() == sticker


async def test_drift_on_a_compose_target(
    compose_driver: ComposeHostDriver,
    docker_engine: DockerEngine,
    compose_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    task = compose_target.task([Component("api", app_images.v1), Component("web", app_images.v2)])
    assert (await compose_driver.run(task, task_log)).status == "succeeded"
    inspect = compose_target.simple_task(TaskType.INSPECT)
    clean = await compose_driver.run(inspect, task_log)
    assert clean.drift is not None and clean.drift.drifted is False, clean.drift

    docker_engine.client.api.stop(project_containers(docker_engine, compose_target)["web"]["Id"], timeout=1)
    drifted = await compose_driver.run(inspect, task_log)
    assert drifted.drift is not None
    [difference] = drifted.drift.differences
    assert (difference["kind"], difference["component"]) == ("stopped_container", "web")

    assert (await compose_driver.run(compose_target.anew(task), task_log)).status == "succeeded"
    healed = await compose_driver.run(inspect, task_log)
    assert healed.drift is not None and healed.drift.drifted is False


async def test_a_compose_directory_outside_the_allowed_ones_is_refused(
    compose_driver: ComposeHostDriver,
    driver_config: DriverConfig,
    compose_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
    tmp_path: Path,
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    compose_target.connection = {"directory": str(outside)}
    result = await compose_driver.run(compose_target.task([Component("api", app_images.v1)]), task_log)
    assert (result.status, result.error_code) == ("failed", "AGT_INVALID_TASK")
    assert list(outside.iterdir()) == []
    # A symbolic link inside the allowed tree that points out of it is refused too.
    link = driver_config.state_dir / "targets" / "escape"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    compose_target.connection = {"directory": str(link)}
    result = await compose_driver.run(compose_target.task([Component("api", app_images.v1)]), task_log)
    assert result.error_code == "AGT_INVALID_TASK"
    assert list(outside.iterdir()) == []


async def test_check_names_the_compose_in_use(compose_driver: ComposeHostDriver) -> None:
    ok, message = await compose_driver.check()
    assert ok, message
    assert "Compose " in message


async def test_a_private_registry_image_is_deployed_with_the_task_credentials_and_they_are_forgotten(
    compose_driver: ComposeHostDriver,
    docker_engine: DockerEngine,
    docker_janitor: DockerJanitor,
    compose_target: TestTarget,
    make_oci_registry: MakeRegistry,
    task_log: TaskLog,
) -> None:
    registry = make_oci_registry(auth=True)
    docker_janitor.add_registry(registry.address)
    assert registry.credentials is not None
    username, password = registry.credentials
    image = push_app_image(registry, f"private/app-{unique_token()}", "v1", f"private {unique_token()}")
    before = set(Path(tempfile.gettempdir()).glob("stella-docker-config-*"))

    refused = await compose_driver.run(compose_target.task([Component("api", image)]), task_log)
    assert refused.error_code == "AGT_PULL_FAILED"

    credential = RegistryCredential(registry=registry.address, username=username, password=password)
    result = await compose_driver.run(
        compose_target.task([Component("api", image)], credentials=[credential]), task_log
    )
    assert result.status == "succeeded", result.message
    assert result.components[0].running_digest == image.digest
    assert password not in task_log.text and password not in result.model_dump_json()
    assert set(Path(tempfile.gettempdir()).glob("stella-docker-config-*")) == before
