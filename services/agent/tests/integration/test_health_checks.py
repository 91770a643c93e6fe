"""Every health check type passing on a healthy deployment and failing on a broken one, on the real engine."""

from __future__ import annotations

import pytest

from stella.agent.drivers import DockerHostDriver, DriverConfig
from stella.contracts.agent import STICKER_FILE, HealthCheckSpec, PortMapping, TaskType
from stella.testing.images import HEALTH_COMMAND, HEALTH_PATH, HTTP_PORT, VERSION_PATH, AppImages

from .conftest import Component, TaskLog, TestTarget

pytestmark = pytest.mark.docker

QUICK = {"timeout_s": 3.0, "retries": 20, "interval_s": 0.25}
"""Passing checks: up to ~5 s for httpd (and Docker's own check) to come up."""

FAILING = {"timeout_s": 2.0, "retries": 2, "interval_s": 0.25}
"""Failing checks: three attempts, then the verdict."""

SLEEPER = ["/bin/busybox", "sleep", "3600"]
"""A command override under which nothing listens."""


def specs(failing: bool) -> dict[str, HealthCheckSpec]:
    timing = FAILING if failing else QUICK
    return {
        "http": HealthCheckSpec(type="http", path=HEALTH_PATH, port=HTTP_PORT, **timing),
        "tcp": HealthCheckSpec(type="tcp", port=HTTP_PORT, **timing),
        "container": HealthCheckSpec(type="container", **timing),
        "command": HealthCheckSpec(type="command", command=list(HEALTH_COMMAND), **timing),
    }


@pytest.mark.parametrize("check", ["http", "tcp", "container", "command"])
async def test_each_check_passes_on_a_healthy_deployment(
    check: str, docker_driver: DockerHostDriver, docker_target: TestTarget, app_images: AppImages, task_log: TaskLog
) -> None:
    task = docker_target.task([Component("api", app_images.v1)], health_check=specs(failing=False)[check])
    result = await docker_driver.run(task, task_log)
    assert result.status == "succeeded", task_log.text
    assert [state.healthy for state in result.components] == [True]
    assert f"health ({check}) api:" in task_log.text


@pytest.mark.parametrize("check", ["http", "tcp", "container", "command"])
async def test_each_check_fails_on_a_broken_deployment_and_no_sticker_is_written(
    check: str,
    docker_driver: DockerHostDriver,
    driver_config: DriverConfig,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
) -> None:
    # The broken image answers 404 on /healthz and fails Docker's health check; under `sleep` nothing listens.
    broken = Component("api", app_images.broken, command=SLEEPER if check == "tcp" else None)
    task = docker_target.task([broken], health_check=specs(failing=True)[check])
    result = await docker_driver.run(task, task_log)
    assert (result.status, result.error_code) == ("failed", "AGT_HEALTH_CHECK_FAILED"), task_log.text
    [state] = result.components
    assert (state.name, state.healthy, state.state) == ("api", False, "running")
    assert state.running_digest == app_images.broken.digest
    assert "api:" in result.message
    assert "failed after 3 attempt(s)" in task_log.text
    assert not (driver_config.state_dir / "targets" / str(docker_target.target_id) / STICKER_FILE).exists()


async def test_http_checks_the_status_asked_for_and_any_2xx_or_3xx_otherwise(
    docker_driver: DockerHostDriver, docker_target: TestTarget, app_images: AppImages, task_log: TaskLog
) -> None:
    expecting_404 = HealthCheckSpec(type="http", path=HEALTH_PATH, port=HTTP_PORT, expected_status=404, **QUICK)
    result = await docker_driver.run(
        docker_target.task([Component("api", app_images.broken)], health_check=expecting_404), task_log
    )
    assert result.status == "succeeded", task_log.text
    missing = HealthCheckSpec(type="http", path="/missing", port=HTTP_PORT, **FAILING)
    result = await docker_driver.run(
        docker_target.task([Component("api", app_images.v1)], health_check=missing), task_log
    )
    assert result.error_code == "AGT_HEALTH_CHECK_FAILED"
    assert "answered 404" in result.message


async def test_a_fixed_host_port_is_checked_where_it_is_published(
    docker_driver: DockerHostDriver,
    docker_target: TestTarget,
    app_images: AppImages,
    task_log: TaskLog,
    unused_tcp_port: int,
) -> None:
    pinned = Component(
        "api",
        app_images.v2,
        ports=[PortMapping(container_port=HTTP_PORT, host_port=unused_tcp_port, host_ip="127.0.0.1")],
    )
    by_host_port = HealthCheckSpec(type="http", path=VERSION_PATH, port=unused_tcp_port, **QUICK)
    result = await docker_driver.run(docker_target.task([pinned], health_check=by_host_port), task_log)
    assert result.status == "succeeded", task_log.text
    assert f"127.0.0.1:{unused_tcp_port}{VERSION_PATH} answered 200" in task_log.text


async def test_a_health_check_task_checks_what_runs_now(
    docker_driver: DockerHostDriver, docker_target: TestTarget, app_images: AppImages, task_log: TaskLog
) -> None:
    api = Component("api", app_images.v1)
    assert (await docker_driver.run(docker_target.task([api]), task_log)).status == "succeeded"
    check = docker_target.simple_task(TaskType.HEALTH_CHECK, [api], health_check=specs(failing=False)["http"])
    result = await docker_driver.run(check, task_log)
    assert result.status == "succeeded", task_log.text
    assert result.components[0].healthy is True
    assert result.components[0].running_digest == app_images.v1.digest

    failing = docker_target.simple_task(
        TaskType.HEALTH_CHECK,
        [api],
        health_check=HealthCheckSpec(type="command", command=["/bin/busybox", "false"], **FAILING),
    )
    result = await docker_driver.run(failing, task_log)
    assert result.error_code == "AGT_HEALTH_CHECK_FAILED"
    assert "command exited 1" in result.message

    nothing = docker_target.simple_task(
        TaskType.HEALTH_CHECK, [Component("web", app_images.v1)], health_check=specs(True)["container"]
    )
    result = await docker_driver.run(nothing, task_log)
    assert result.error_code == "AGT_HEALTH_CHECK_FAILED"
    assert "no container" in result.message
