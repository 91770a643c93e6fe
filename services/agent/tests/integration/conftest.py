"""Drivers against the real Docker engine: tasks built like the deployment service builds them.

Every target gets a fresh id, and so its own container names and Compose project; the janitor removes
every container labelled with the target's id (and the project's network) after the test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from stella.agent.drivers import ComposeHostDriver, DockerHostDriver, DriverConfig
from stella.agent.drivers.labels import TARGET
from stella.contracts.agent import (
    AgentTask,
    ComponentSpec,
    DeploymentRef,
    HealthCheckSpec,
    PortMapping,
    RegistryCredential,
    TargetSpec,
    TargetType,
    TaskType,
)
from stella.testing.docker import DockerEngine, DockerJanitor
from stella.testing.images import HTTP_PORT, AppImage

FAST_CONTAINER_CHECK = HealthCheckSpec(type="container", timeout_s=5, retries=30, interval_s=0.5)
"""Waits up to ~15 s for Docker to call a container healthy."""


class TaskLog:
    """A driver's log sink that keeps the lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Component:
    """A component to deploy: its image and how it runs."""

    name: str
    image: AppImage
    ports: list[PortMapping] = field(
        default_factory=lambda: [PortMapping(container_port=HTTP_PORT, host_ip="127.0.0.1")]
    )
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None
    component_id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass
class TestTarget:
    """One target of a test, and the tasks it is sent."""

    __test__ = False

    target_type: TargetType
    connection: dict[str, Any]
    target_id: uuid.UUID = field(default_factory=uuid.uuid4)
    name: str = "target-1"
    environment_id: uuid.UUID = field(default_factory=uuid.uuid4)
    component_ids: dict[str, uuid.UUID] = field(default_factory=dict)

    @property
    def spec(self) -> TargetSpec:
        return TargetSpec(
            target_id=self.target_id, name=self.name, target_type=self.target_type, connection=self.connection
        )

    def task(
        self,
        components: Sequence[Component],
        *,
        task_type: TaskType = TaskType.DEPLOY,
        health_check: HealthCheckSpec | None = FAST_CONTAINER_CHECK,
        previous: dict[str, str] | None = None,
        job_id: uuid.UUID | None = None,
        release_id: uuid.UUID | None = None,
        idempotency_key: str | None = None,
        credentials: Sequence[RegistryCredential] = (),
        sticker_components: Sequence[Component] | None = None,
        timeout_s: float = 300,
    ) -> AgentTask:
        """A deploy-like task with the sticker the deployment service would build."""
        job = job_id or uuid.uuid4()
        release = release_id or uuid.uuid4()
        specs = [self.component_spec(component, (previous or {}).get(component.name)) for component in components]
        deployment = DeploymentRef(
            job_id=job,
            promotion_id=uuid.uuid4(),
            release_id=release,
            release_name="shop-2025.1",
            environment_id=self.environment_id,
            environment_name="dev",
            strategy="all-at-once",
        )
        named = sticker_components if sticker_components is not None else components
        return AgentTask(
            task_id=uuid.uuid4(),
            idempotency_key=idempotency_key or f"{job}:{self.target_id}:{task_type}",
            type=task_type,
            target=self.spec,
            components=specs,
            deployment=deployment,
            health_check=health_check,
            sticker=make_sticker(self, deployment, named)
            if task_type in (TaskType.DEPLOY, TaskType.ROLLBACK)
            else None,
            credentials=list(credentials),
            timeout_s=timeout_s,
        )

    @staticmethod
    def anew(task: AgentTask) -> AgentTask:
        """The same work as a new task (a new idempotency key), as a remediation or a new job would send it."""
        return task.model_copy(update={"task_id": uuid.uuid4(), "idempotency_key": f"anew:{uuid.uuid4()}"})

    def component_spec(self, component: Component, previous: str | None = None) -> ComponentSpec:
        component_id = self.component_ids.setdefault(component.name, component.component_id)
        return ComponentSpec(
            component_id=component_id,
            name=component.name,
            image_repository=component.image.repository,
            digest=component.image.digest,
            previous_digest=previous,
            tag="1.0.0",
            semver="1.0.0",
            ports=component.ports,
            env=component.env,
            command=component.command,
        )

    def simple_task(self, task_type: TaskType, components: Sequence[Component] = (), **fields: Any) -> AgentTask:
        """An inspect, health-check, read-sticker or write-sticker task."""
        return AgentTask(
            task_id=uuid.uuid4(),
            idempotency_key=f"{task_type}:{uuid.uuid4()}",
            type=task_type,
            target=self.spec,
            components=[self.component_spec(component) for component in components],
            **fields,
        )


def make_sticker(target: TestTarget, deployment: DeploymentRef, components: Sequence[Component]) -> dict[str, Any]:
    """A version sticker as reference §4 defines it (fixed times, so it renders the same twice)."""
    stamp = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).isoformat()
    return {
        "version": "1.0",
        "generated_at": stamp,
        "generator": "stella-deployment",
        "release": {
            "id": str(deployment.release_id),
            "name": deployment.release_name,
            "components": [
                {"name": c.name, "digest": c.image.digest, "semver": "1.0.0", "tag": "1.0.0"} for c in components
            ],
        },
        "deployment": {
            "id": str(deployment.job_id),
            "promotion_id": str(deployment.promotion_id),
            "environment_id": str(deployment.environment_id),
            "environment_name": deployment.environment_name,
            "target_id": str(target.target_id),
            "target_name": target.name,
            "strategy": deployment.strategy,
            "started_at": stamp,
            "completed_at": stamp,
        },
        "content_hash": "sha256:" + "0" * 64,
    }


@pytest.fixture
def driver_config(tmp_path: Path, docker_engine: DockerEngine) -> DriverConfig:
    return DriverConfig(state_dir=tmp_path / "agent-state", docker_url=docker_engine.url)


@pytest_asyncio.fixture
async def docker_driver(driver_config: DriverConfig) -> AsyncIterator[DockerHostDriver]:
    driver = DockerHostDriver(driver_config)
    try:
        yield driver
    finally:
        await driver.close()


@pytest_asyncio.fixture
async def compose_driver(driver_config: DriverConfig) -> AsyncIterator[ComposeHostDriver]:
    driver = ComposeHostDriver(driver_config)
    try:
        yield driver
    finally:
        await driver.close()


@pytest.fixture
def docker_target(docker_janitor: DockerJanitor) -> TestTarget:
    """A fresh docker_host target on the test engine; its containers are removed after the test."""
    target = TestTarget(TargetType.DOCKER_HOST, {})
    docker_janitor.add_label(TARGET, str(target.target_id))
    return target


@pytest.fixture
def compose_target(docker_janitor: DockerJanitor) -> TestTarget:
    """A fresh compose_host target; its project's containers and network are removed after the test."""
    target = TestTarget(TargetType.COMPOSE_HOST, {})
    docker_janitor.add_label(TARGET, str(target.target_id))
    docker_janitor.add_compose_project(f"stella-{target.target_id.hex}")
    return target


@pytest.fixture
def task_log() -> TaskLog:
    return TaskLog()
