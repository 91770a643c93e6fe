"""A target's ``connection.docker_url`` is obeyed only when it is the agent's own engine or one the operator allowed.

The refused URL below reaches the very engine the test runs on (the same socket, spelled with a ``/./``): the
refusal comes from the agent's allow-list, not from an engine that cannot be reached. The same task with
the URL allowed succeeds, so the refusal is not an accident of the task either.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from stella.agent.drivers import ComposeHostDriver, DockerHostDriver, DriverConfig
from stella.agent.drivers.base import Driver
from stella.contracts.agent import STICKER_FILE, TargetType
from stella.testing.docker import DockerEngine, DockerJanitor
from stella.testing.images import AppImages

from .conftest import Component, TaskLog, TestTarget

pytestmark = pytest.mark.docker


def same_engine_other_url(engine: DockerEngine) -> str:
    """The test engine's address written differently (``unix:///var/run/./docker.sock``)."""
    scheme, _, path = engine.url.partition("://")
    if scheme != "unix":
        pytest.skip(f"the test engine is at {engine.url}, not on a unix socket")
    head, _, name = path.rpartition("/")
    return f"unix://{head}/./{name}"


def driver_of(target_type: TargetType, config: DriverConfig) -> Driver:
    return DockerHostDriver(config) if target_type is TargetType.DOCKER_HOST else ComposeHostDriver(config)


def labelled(engine: DockerEngine, target: TestTarget) -> list[object]:
    return list(engine.client.containers.list(all=True, filters={"label": f"stella.target.id={target.target_id}"}))


@pytest.mark.parametrize("target_type", [TargetType.DOCKER_HOST, TargetType.COMPOSE_HOST])
async def test_a_task_naming_an_engine_the_agent_may_not_use_is_refused_and_runs_nothing(
    target_type: TargetType,
    driver_config: DriverConfig,
    docker_engine: DockerEngine,
    docker_janitor: DockerJanitor,
    app_images: AppImages,
    task_log: TaskLog,
    tmp_path: Path,
) -> None:
    other = same_engine_other_url(docker_engine)
    target = TestTarget(target_type, {"docker_url": other})
    docker_janitor.add_label("stella.target.id", str(target.target_id))
    if target_type is TargetType.COMPOSE_HOST:
        docker_janitor.add_compose_project(f"stella-{target.target_id.hex}")
    task = target.task([Component("api", app_images.v1)])

    driver = driver_of(target_type, driver_config)
    try:
        refused = await driver.run(task, task_log)
    finally:
        await driver.close()

    assert refused.status == "failed"
    assert refused.error_code == "AGT_INVALID_TASK", (refused.error_code, refused.message)
    assert other in (refused.message or "") and "not allowed" in (refused.message or ""), refused.message
    assert labelled(docker_engine, target) == [], "nothing was started on the engine"
    assert not (driver_config.state_dir / "targets" / str(target.target_id) / STICKER_FILE).exists()

    allowed = dataclasses.replace(driver_config, allowed_docker_urls=frozenset({other}))
    driver = driver_of(target_type, allowed)
    try:
        result = await driver.run(target.anew(task), task_log)
    finally:
        await driver.close()
    assert result.status == "succeeded", (result.error_code, result.message, task_log.text)
    assert len(labelled(docker_engine, target)) == 1
