"""What the Docker and Compose drivers share: running a task of any type against a target on an engine.

A deploy (or rollback, the same towards older digests) goes:

1. check the task (a deployment, components, a sticker that names this target and the task's digests);
2. pull every image by digest and prove it (:func:`~stella.agent.drivers.engine.ensure_images`); on any
   failure nothing on the target has been touched;
3. apply: the subclass makes the target run the components (containers replaced, or Compose run);
4. health-check them (the task's check, else a ``container`` check with the reference's defaults);
5. only then write the sticker, and report each component's running digest with the artifacts.

Every step converges: a task run after an attempt that died half way finishes the job without redoing
what is already in place, and the same work sent as a new task changes nothing. A deploy, rollback or
write-sticker that succeeded is remembered by its idempotency key in the target's directory
(:data:`REMEMBERED`): delivered again, it reports that result and does nothing. Tasks for one target never
run at the same time in one agent.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiodocker
from aiodocker.exceptions import DockerError

from stella.agent.drivers.base import LogSink
from stella.agent.drivers.config import DriverConfig
from stella.agent.drivers.drift import assess_drift
from stella.agent.drivers.engine import Engines, RunningContainer, docker_failure, ensure_images
from stella.agent.drivers.errors import (
    DOCKER_ERROR,
    HEALTH_CHECK_FAILED,
    INVALID_TASK,
    STICKER_ERROR,
    TIMEOUT,
    UNSUPPORTED,
    TaskFailure,
)
from stella.agent.drivers.files import (
    StickerUnreadable,
    read_sticker,
    recall_result,
    remember_result,
    sticker_components,
    target_directory,
    validate_sticker,
    write_sticker,
)
from stella.agent.drivers.health import check_health
from stella.contracts.agent import (
    LABEL_PREFIX,
    AgentTask,
    Artifact,
    Capability,
    ComponentSpec,
    ComponentState,
    DriftReport,
    HealthCheckSpec,
    TargetType,
    TaskResult,
    TaskType,
)
from stella.contracts.envelope import utcnow

MAX_MESSAGE = 4000
MAX_COMPONENTS = 200

REMEMBERED = frozenset({TaskType.DEPLOY, TaskType.ROLLBACK, TaskType.WRITE_STICKER})
"""Task types whose success is remembered per idempotency key: delivered again, they report it and do nothing.

A stale duplicate of an old deploy must not undo a later rollback. Failures are not remembered: a task
re-leased after a failure or a lost agent is tried again, and converges from wherever the last attempt
stopped. Inspections and health checks always look afresh.
"""


@dataclass
class Target:
    """A task's target, resolved on this agent: its engine, its directory, its address for health checks."""

    task: AgentTask
    url: str
    docker: aiodocker.Docker
    directory: Path
    host: str
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each component's verified image inspection, by component name (set before ``_apply``)."""

    @property
    def target_id(self) -> str:
        """The target's id as labels carry it."""
        return str(self.task.target.target_id)


@dataclass
class Outcome:
    """What a successful task reports."""

    message: str
    components: list[ComponentState] = field(default_factory=list)
    sticker: dict[str, Any] | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    drift: DriftReport | None = None


class EngineDriver:
    """Base of the drivers that work through a Docker engine; subclasses say how components are run.

    Args:
        config: The drivers' configuration.
        engines: Engine clients to share with another driver; its own when None. :meth:`close` closes them
            (a closed set reopens a client on its next use).
    """

    capability: ClassVar[Capability]
    target_types: ClassVar[frozenset[TargetType]]

    def __init__(self, config: DriverConfig, engines: Engines | None = None) -> None:
        self.config = config
        self._engines = engines if engines is not None else Engines(config)
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()

    # --- what a subclass provides -----------------------------------------------------------------------

    async def _apply(self, target: Target, log: LogSink) -> list[Artifact]:
        """Make the target run the task's components (their images are present and verified)."""
        raise NotImplementedError

    async def _containers(self, target: Target, names: Sequence[str]) -> list[RunningContainer]:
        """Every container of the target, with the component each runs; ``names`` are the components expected."""
        raise NotImplementedError

    def _preferred_names(self, target: Target, names: Sequence[str]) -> dict[str, str]:
        """The container name each component must have, when the target type fixes one."""
        return {}

    async def _after_healthy(self, target: Target, expected: Sequence[str], log: LogSink) -> None:
        """Clean-up once the deployed components are healthy (``expected``: every component the sticker names)."""

    async def _check_tools(self) -> tuple[bool, str]:
        """Self-check of what the driver needs besides the engine."""
        return True, ""

    # --- the Driver protocol ----------------------------------------------------------------------------

    async def check(self) -> tuple[bool, str]:
        """Whether the default engine answers (and the subclass's tools are present)."""
        try:
            async with asyncio.timeout(self.config.probe_timeout_s):
                version = await self._engines.client(self.config.docker_url).version()
        except (DockerError, OSError, TimeoutError) as exc:
            return False, f"Docker engine at {self.config.docker_url} does not answer: {exc}"
        engine = f"Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')})"
        ok, tools = await self._check_tools()
        return ok, f"{engine}; {tools}" if tools else engine

    async def run(self, task: AgentTask, log: LogSink) -> TaskResult:
        """Carry out ``task`` and return its one result; expected failures are failed results, never raised."""
        started = utcnow()
        timer = asyncio.timeout(task.timeout_s)
        try:
            if task.target.target_type not in self.target_types:
                raise TaskFailure(UNSUPPORTED, f"this driver serves {sorted(self.target_types)}")
            async with timer:
                target = self._target(task)
                async with self._lock(target):
                    remembered = task.type in REMEMBERED and recall_result(target.directory, task.idempotency_key)
                    if remembered:
                        log("a task with this idempotency key already succeeded here; reporting its result again")
                        return remembered.model_copy(update={"task_id": task.task_id, "attempt": task.attempt})
                    outcome = await self._dispatch(target, log)
                    result = self._result(
                        task,
                        started,
                        "succeeded",
                        outcome.message,
                        components=outcome.components,
                        sticker=outcome.sticker,
                        artifacts=outcome.artifacts,
                        drift=outcome.drift,
                    )
                    if task.type in REMEMBERED:
                        remember_result(target.directory, result)
                    return result
        except TaskFailure as failure:
            log(f"failed: {failure.code}: {failure.message}")
            return self._result(
                task, started, "failed", failure.message, code=failure.code, components=failure.components
            )
        except TimeoutError:
            if not timer.expired():  # a request to the engine that got no answer in time
                message = "the Docker engine did not answer in time"
                log(f"failed: {DOCKER_ERROR}: {message}")
                return self._result(task, started, "failed", message, code=DOCKER_ERROR)
            message = f"the task did not finish within {task.timeout_s:g}s"
            log(f"failed: {TIMEOUT}: {message}")
            return self._result(task, started, "failed", message, code=TIMEOUT)
        except DockerError as exc:
            engine_failure = docker_failure("Docker engine", exc)
            log(f"failed: {engine_failure.code}: {engine_failure.message}")
            return self._result(task, started, "failed", engine_failure.message, code=DOCKER_ERROR)

    async def close(self) -> None:
        """Close the engine clients."""
        await self._engines.close()

    # --- shared steps -----------------------------------------------------------------------------------

    def _target(self, task: AgentTask) -> Target:
        url = self._engines.url_for(task.target)
        parts = urlsplit(url)
        host = parts.hostname if parts.scheme in ("tcp", "http", "https") and parts.hostname else None
        return Target(
            task=task,
            url=url,
            docker=self._engines.client(url),
            directory=target_directory(self.config, task.target),
            host=host or self.config.health_host,
        )

    def _lock(self, target: Target) -> asyncio.Lock:
        key = (target.url, target.target_id)
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    def _result(
        self,
        task: AgentTask,
        started: Any,
        status: str,
        message: str,
        *,
        code: str | None = None,
        components: Sequence[ComponentState] = (),
        sticker: dict[str, Any] | None = None,
        artifacts: Sequence[Artifact] = (),
        drift: DriftReport | None = None,
    ) -> TaskResult:
        if len(components) > MAX_COMPONENTS:
            components = components[:MAX_COMPONENTS]  # the rest is in the log and the drift report
        return TaskResult(
            task_id=task.task_id,
            idempotency_key=task.idempotency_key,
            attempt=task.attempt,
            status="succeeded" if status == "succeeded" else "failed",
            error_code=code,
            message=message.replace("\n", " ")[:MAX_MESSAGE],
            components=list(components),
            sticker=sticker,
            artifacts=list(artifacts),
            drift=drift,
            started_at=started,
            finished_at=utcnow(),
        )

    async def _dispatch(self, target: Target, log: LogSink) -> Outcome:
        task = target.task
        log(f"{task.type} on {task.target.target_type} target {task.target.name} (attempt {task.attempt})")
        if task.type in (TaskType.DEPLOY, TaskType.ROLLBACK):
            return await self._deploy(target, log)
        if task.type == TaskType.HEALTH_CHECK:
            return await self._health_check(target, log)
        if task.type == TaskType.INSPECT:
            return await self._inspect(target, log)
        if task.type == TaskType.READ_STICKER:
            return self._read_sticker(target, log)
        if task.type == TaskType.WRITE_STICKER:
            return self._write_sticker(target, log)
        raise TaskFailure(UNSUPPORTED, f"unknown task type {task.type}")

    def _check_deploy(self, task: AgentTask) -> dict[str, Any]:
        if task.deployment is None:
            raise TaskFailure(INVALID_TASK, f"a {task.type} task must name its deployment")
        if not task.components:
            raise TaskFailure(INVALID_TASK, f"a {task.type} task must name at least one component")
        names = [component.name for component in task.components]
        if len(set(names)) != len(names):
            raise TaskFailure(INVALID_TASK, "the task names a component twice")
        for component in task.components:
            reserved = [key for key in component.labels if key.startswith(LABEL_PREFIX)]
            if reserved:
                raise TaskFailure(INVALID_TASK, f"{component.name}: labels {reserved} are reserved for Stella")
        if task.sticker is None:
            raise TaskFailure(INVALID_TASK, f"a {task.type} task must carry the sticker to leave on the target")
        validate_sticker(task.sticker, task.target)
        named = {entry["name"]: entry["digest"] for entry in sticker_components(task.sticker)}
        for component in task.components:
            if named.get(component.name) != component.digest:
                raise TaskFailure(INVALID_TASK, f"the sticker does not name {component.name} at {component.digest}")
        return task.sticker

    async def _locate(self, target: Target, components: Sequence[ComponentSpec]) -> dict[str, RunningContainer | None]:
        names = [component.name for component in components]
        preferred = self._preferred_names(target, names)
        found: dict[str, RunningContainer | None] = dict.fromkeys(names)
        for container in await self._containers(target, names):
            if container.component not in found:
                continue
            current = found[container.component]
            if (
                current is None
                or container.name == preferred.get(container.component)
                or (container.running and not current.running and current.name != preferred.get(container.component))
            ):
                found[container.component] = container
        return found

    async def _health(
        self, target: Target, components: Sequence[ComponentSpec], log: LogSink
    ) -> tuple[bool, str, list[ComponentState]]:
        spec = target.task.health_check or HealthCheckSpec()
        if spec.type == "command" and not spec.command:
            raise TaskFailure(INVALID_TASK, "a command health check must name its command")
        outcome = await check_health(
            target.docker, spec, components, lambda: self._locate(target, components), target.host, log
        )
        found = await self._locate(target, components)
        states = [
            self._state(component, found[component.name], outcome.healthy[component.name]) for component in components
        ]
        return outcome.ok, outcome.summary(), states

    @staticmethod
    def _state(component: ComponentSpec, container: RunningContainer | None, healthy: bool | None) -> ComponentState:
        if container is None:
            return ComponentState(name=component.name, expected_digest=component.digest, healthy=healthy)
        digest = container.digest(component.image_repository, component.digest)
        return ComponentState(
            name=component.name,
            expected_digest=component.digest,
            running_digest=digest if container.running else None,
            container=container.name,
            state=container.status,
            healthy=healthy,
        )

    async def _deploy(self, target: Target, log: LogSink) -> Outcome:
        task = target.task
        sticker = self._check_deploy(task)
        target.images = await ensure_images(target.docker, task.components, task.credentials, log)
        artifacts = await self._apply(target, log)
        ok, summary, states = await self._health(target, task.components, log)
        if not ok:
            raise TaskFailure(HEALTH_CHECK_FAILED, f"health check failed: {summary}", states)
        expected = [entry["name"] for entry in sticker_components(sticker)]
        await self._after_healthy(target, expected, log)
        artifact, changed = write_sticker(target.directory, sticker)
        log(f"sticker {'written' if changed else 'unchanged'}: {artifact.content_hash}")
        running = ", ".join(f"{state.name}@{state.running_digest}" for state in states)
        return Outcome(
            message=f"{task.type}: {running} healthy",
            components=states,
            sticker=sticker,
            artifacts=[*artifacts, artifact],
        )

    async def _health_check(self, target: Target, log: LogSink) -> Outcome:
        components = target.task.components
        if not components:
            raise TaskFailure(INVALID_TASK, "a health-check task must name the components to check")
        ok, summary, states = await self._health(target, components, log)
        if not ok:
            raise TaskFailure(HEALTH_CHECK_FAILED, f"health check failed: {summary}", states)
        return Outcome(message="healthy", components=states)

    def _sticker_or_problem(self, target: Target) -> tuple[dict[str, Any] | None, Artifact | None, str | None]:
        try:
            found = read_sticker(target.directory)
        except StickerUnreadable as exc:
            return None, None, str(exc)
        if found is None:
            return None, None, None
        sticker, artifact = found
        try:
            sticker_components(sticker)
        except ValueError as exc:
            return None, artifact, f"the sticker is not one Stella wrote: {exc}"
        return sticker, artifact, None

    async def _inspect(self, target: Target, log: LogSink) -> Outcome:
        sticker, artifact, problem = self._sticker_or_problem(target)
        fallback = target.task.components
        names = [entry["name"] for entry in sticker_components(sticker)] if sticker else [c.name for c in fallback]
        containers = await self._containers(target, names)
        report, states = assess_drift(
            sticker=sticker,
            sticker_problem=problem,
            fallback=fallback,
            containers=containers,
            preferred_names=self._preferred_names(target, names),
        )
        for difference in report.differences:
            log(f"drift: {_describe(difference)}")
        message = f"drift: {len(report.differences)} difference(s)" if report.drifted else "no drift"
        log(message)
        return Outcome(
            message=message,
            components=states,
            sticker=sticker,
            artifacts=[artifact] if artifact is not None else [],
            drift=report,
        )

    def _read_sticker(self, target: Target, log: LogSink) -> Outcome:
        try:
            found = read_sticker(target.directory)
        except StickerUnreadable as exc:
            raise TaskFailure(STICKER_ERROR, str(exc)) from exc
        if found is None:
            log("no sticker on the target")
            return Outcome(message="no sticker")
        sticker, artifact = found
        log(f"sticker read: {artifact.content_hash}")
        return Outcome(message="sticker read", sticker=sticker, artifacts=[artifact])

    def _write_sticker(self, target: Target, log: LogSink) -> Outcome:
        sticker = target.task.sticker
        if sticker is None:
            raise TaskFailure(INVALID_TASK, "a write-sticker task must carry the sticker")
        validate_sticker(sticker, target.task.target)
        artifact, changed = write_sticker(target.directory, sticker)
        log(f"sticker {'written' if changed else 'unchanged'}: {artifact.content_hash}")
        return Outcome(message="sticker written", sticker=sticker, artifacts=[artifact])


def _describe(difference: Mapping[str, Any]) -> str:
    parts = [str(difference["kind"])]
    for key in ("component", "container", "expected", "actual", "state", "detail"):
        if difference.get(key) is not None:
            parts.append(f"{key}={difference[key]}")
    return " ".join(parts)
