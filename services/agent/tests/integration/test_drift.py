"""Drift on the real engine: the sticker against what runs, after people changed things by hand."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from stella.agent.drivers import DockerHostDriver, DriverConfig
from stella.agent.drivers.docker_host import container_name
from stella.contracts.agent import STICKER_FILE, TaskType
from stella.testing.docker import DockerEngine, DockerJanitor
from stella.testing.images import HTTP_PORT, AppImages
from stella.testing.messaging import unique_token

from .conftest import Component, TaskLog, TestTarget

pytestmark = pytest.mark.docker


def sticker_file(config: DriverConfig, target: TestTarget) -> Path:
    return config.state_dir / "targets" / str(target.target_id) / STICKER_FILE


def replace_by_hand(engine: DockerEngine, name: str, ref: str) -> None:
    """What an operator does: remove the container and run another image under its name and labels."""
    labels = engine.client.api.inspect_container(name)["Config"]["Labels"]
    engine.client.api.remove_container(name, force=True)
    engine.pull(ref)
    engine.client.containers.run(  # type: ignore[call-overload]  # (host, None) binds a random port; the stubs omit it
        ref, name=name, labels=labels, detach=True, ports={f"{HTTP_PORT}/tcp": ("127.0.0.1", None)}
    )


async def inspect(
    driver: DockerHostDriver, target: TestTarget, log: TaskLog, components: list[Component] | None = None
) -> Any:
    result = await driver.run(target.simple_task(TaskType.INSPECT, components or []), log)
    assert result.status == "succeeded", log.text
    assert result.drift is not None
    return result


async def test_what_the_sticker_says_runs_is_no_drift(
    docker_driver: DockerHostDriver,
    driver_config: DriverConfig,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    task = docker_target.task([Component("api", app_images.v1), Component("web", app_images.v2)])
    assert (await docker_driver.run(task, task_log)).status == "succeeded"
    result = await inspect(docker_driver, docker_target, task_log)
    assert result.drift.drifted is False
    assert result.drift.sticker_found is True
    assert result.drift.differences == []
    assert {(c.name, c.expected_digest, c.running_digest) for c in result.components} == {
        ("api", app_images.v1.digest, app_images.v1.digest),
        ("web", app_images.v2.digest, app_images.v2.digest),
    }
    assert result.sticker == task.sticker
    [artifact] = result.artifacts
    assert (
        artifact.content_hash
        == "sha256:" + hashlib.sha256(sticker_file(driver_config, docker_target).read_bytes()).hexdigest()
    )
    # Reading the sticker alone gives the same sticker and hash.
    read = await docker_driver.run(docker_target.simple_task(TaskType.READ_STICKER), task_log)
    assert (read.sticker, read.artifacts) == (task.sticker, result.artifacts)


async def test_a_container_changed_by_hand_is_drift_with_expected_and_actual_digests_and_a_redeploy_remediates(
    docker_driver: DockerHostDriver,
    docker_engine: DockerEngine,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    task = docker_target.task([Component("api", app_images.v1)])
    assert (await docker_driver.run(task, task_log)).status == "succeeded"
    name = container_name(docker_target.target_id, "api")
    replace_by_hand(docker_engine, name, app_images.v2.ref)

    result = await inspect(docker_driver, docker_target, task_log)
    assert result.drift.drifted is True
    [difference] = result.drift.differences
    assert difference["kind"] == "digest"
    assert difference["component"] == "api"
    assert (difference["expected"], difference["actual"]) == (app_images.v1.digest, app_images.v2.digest)
    assert difference["container"] == name
    [state] = result.components
    assert (state.expected_digest, state.running_digest) == (app_images.v1.digest, app_images.v2.digest)

    # Remediation redeploys the sticker's release: the hand-made container goes even though it kept the labels.
    assert (await docker_driver.run(docker_target.anew(task), task_log)).status == "succeeded"
    assert (
        app_images.v1.ref
        in docker_engine.client.api.inspect_image(docker_engine.client.api.inspect_container(name)["Image"])[
            "RepoDigests"
        ]
    )
    assert (await inspect(docker_driver, docker_target, task_log)).drift.drifted is False


async def test_a_container_without_any_label_under_the_component_name_is_still_seen(
    docker_driver: DockerHostDriver,
    docker_engine: DockerEngine,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    assert (
        await docker_driver.run(docker_target.task([Component("api", app_images.v1)]), task_log)
    ).status == "succeeded"
    name = container_name(docker_target.target_id, "api")
    docker_engine.client.api.remove_container(name, force=True)
    docker_engine.pull(app_images.v2.ref)
    docker_engine.client.containers.run(app_images.v2.ref, name=name, detach=True)
    try:
        result = await inspect(docker_driver, docker_target, task_log)
    finally:
        docker_engine.client.api.remove_container(name, force=True)
    [difference] = result.drift.differences
    assert (difference["kind"], difference["expected"], difference["actual"]) == (
        "digest",
        app_images.v1.digest,
        app_images.v2.digest,
    )


async def test_a_missing_sticker_is_drift(
    docker_driver: DockerHostDriver,
    driver_config: DriverConfig,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    api = Component("api", app_images.v1)
    assert (await docker_driver.run(docker_target.task([api]), task_log)).status == "succeeded"
    sticker_file(driver_config, docker_target).unlink()
    result = await inspect(docker_driver, docker_target, task_log, [api])
    assert result.drift.drifted is True
    assert result.drift.sticker_found is False
    assert [d["kind"] for d in result.drift.differences] == ["missing_sticker"]
    # What runs is still compared with the task's components.
    assert result.components[0].running_digest == app_images.v1.digest
    read = await docker_driver.run(docker_target.simple_task(TaskType.READ_STICKER), task_log)
    assert (read.status, read.sticker, read.artifacts) == ("succeeded", None, [])

    sticker_file(driver_config, docker_target).write_text("{not json")
    result = await inspect(docker_driver, docker_target, task_log, [api])
    [difference] = result.drift.differences
    assert difference["kind"] == "missing_sticker"
    assert "not valid JSON" in difference["detail"]
    assert result.drift.sticker_found is True


async def test_an_unexpected_stella_container_for_the_target_is_drift(
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
    intruder = docker_janitor.add_container(f"stella-test-intruder-{unique_token()}")
    docker_engine.client.containers.run(
        app_images.v2.ref,
        name=intruder,
        detach=True,
        labels={"stella.target.id": str(docker_target.target_id), "stella.component.name": "worker"},
    )
    # A Stella container of another target is none of this target's business.
    other = docker_janitor.add_container(f"stella-test-other-{unique_token()}")
    docker_engine.client.containers.run(
        app_images.v2.ref,
        name=other,
        detach=True,
        labels={"stella.target.id": "another", "stella.component.name": "api"},
    )
    result = await inspect(docker_driver, docker_target, task_log)
    [difference] = result.drift.differences
    assert difference["kind"] == "unexpected_container"
    assert (difference["component"], difference["container"], difference["actual"]) == (
        "worker",
        intruder,
        app_images.v2.digest,
    )

    # Remediation (redeploying the sticker's release) removes it.
    assert (
        await docker_driver.run(docker_target.task([Component("api", app_images.v1)]), task_log)
    ).status == "succeeded"
    assert (await inspect(docker_driver, docker_target, task_log)).drift.drifted is False
    assert docker_engine.client.containers.get(other).status == "running"


async def test_stopped_and_missing_containers_are_drift(
    docker_driver: DockerHostDriver,
    docker_engine: DockerEngine,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    task = docker_target.task([Component("api", app_images.v1), Component("web", app_images.v2)])
    assert (await docker_driver.run(task, task_log)).status == "succeeded"
    docker_engine.client.api.stop(container_name(docker_target.target_id, "api"), timeout=1)
    docker_engine.client.api.remove_container(container_name(docker_target.target_id, "web"), force=True)
    result = await inspect(docker_driver, docker_target, task_log)
    kinds = {d["component"]: d for d in result.drift.differences}
    assert kinds["api"]["kind"] == "stopped_container"
    assert kinds["api"]["actual"] == app_images.v1.digest
    assert kinds["web"]["kind"] == "missing_container"
    assert kinds["web"]["expected"] == app_images.v2.digest

    # The same deployment again starts what is stopped and recreates what is missing.
    assert (await docker_driver.run(docker_target.anew(task), task_log)).status == "succeeded"
    assert (await inspect(docker_driver, docker_target, task_log)).drift.drifted is False


async def test_write_sticker_writes_it_and_refuses_one_for_another_target(
    docker_driver: DockerHostDriver,
    driver_config: DriverConfig,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    sticker = docker_target.task([Component("api", app_images.v1)]).sticker
    assert sticker is not None
    result = await docker_driver.run(docker_target.simple_task(TaskType.WRITE_STICKER, sticker=sticker), task_log)
    assert result.status == "succeeded"
    data = sticker_file(driver_config, docker_target).read_bytes()
    assert result.artifacts[0].content_hash == "sha256:" + hashlib.sha256(data).hexdigest()

    foreign = {**sticker, "deployment": {**sticker["deployment"], "target_id": "00000000-0000-0000-0000-000000000000"}}
    refused = await docker_driver.run(docker_target.simple_task(TaskType.WRITE_STICKER, sticker=foreign), task_log)
    assert (refused.status, refused.error_code) == ("failed", "AGT_INVALID_TASK")
    assert sticker_file(driver_config, docker_target).read_bytes() == data
