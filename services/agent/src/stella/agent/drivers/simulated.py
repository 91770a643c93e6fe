"""A driver that touches nothing and completes every task at once: for load tests of the server side only.

It answers like a real driver would on a target where everything goes right: a deploy or rollback reports
every component running its pinned digest, healthy, with the task's sticker (and its artifact hash) as
written; an inspect reports no drift; a read-sticker returns the last sticker it "wrote" for that target
(kept in memory). Nothing is pulled, started or written on the host. Never use it on a real target.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from stella.agent.drivers.base import LogSink
from stella.agent.drivers.files import make_artifact, render_sticker
from stella.contracts.agent import (
    AgentTask,
    Artifact,
    Capability,
    ComponentState,
    DriftReport,
    TargetType,
    TaskResult,
    TaskType,
)
from stella.contracts.envelope import utcnow

_WRITES = frozenset({TaskType.DEPLOY, TaskType.ROLLBACK, TaskType.WRITE_STICKER})


class SimulatedDriver:
    """Completes tasks of the given target types instantly (or after ``delay_s``).

    Args:
        capability: The capability it stands for (``docker`` or ``compose``).
        target_types: The target types it serves.
        delay_s: Pause before each answer, to model a slower target.
    """

    def __init__(self, capability: Capability, target_types: frozenset[TargetType], delay_s: float = 0.0) -> None:
        self.capability: Capability = capability
        self.target_types = target_types
        self.delay_s = delay_s
        self._stickers: dict[UUID, dict[str, Any]] = {}
        self.runs = 0
        """Tasks run (a load test compares it with the tasks Stella planned)."""

    async def check(self) -> tuple[bool, str]:
        """Always ready."""
        return True, "simulated"

    async def run(self, task: AgentTask, log: LogSink) -> TaskResult:
        """Answer ``task`` as if it went well."""
        started = utcnow()
        self.runs += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        log(f"simulated {task.type} on {task.target.name}")
        artifacts: list[Artifact] = []
        sticker = self._stickers.get(task.target.target_id)
        if task.type in _WRITES and task.sticker is not None:
            sticker = task.sticker
            self._stickers[task.target.target_id] = sticker
            artifacts.append(make_artifact("sticker", "stella.version.json", render_sticker(sticker)))
        components = [
            ComponentState(
                name=component.name,
                expected_digest=component.digest,
                running_digest=component.digest,
                container=f"sim-{component.name}",
                state="running",
                healthy=True if task.type != TaskType.READ_STICKER else None,
            )
            for component in task.components
        ]
        return TaskResult(
            task_id=task.task_id,
            idempotency_key=task.idempotency_key,
            attempt=task.attempt,
            status="succeeded",
            message=f"simulated {task.type}",
            components=components,
            sticker=sticker,
            artifacts=artifacts,
            drift=DriftReport(drifted=False, sticker_found=sticker is not None)
            if task.type == TaskType.INSPECT
            else None,
            started_at=started,
            finished_at=utcnow(),
        )

    async def close(self) -> None:
        """Nothing to release."""


def simulated_drivers(delay_s: float = 0.0) -> list[SimulatedDriver]:
    """A simulated ``docker`` driver (``docker_host``) and a simulated ``compose`` one (``compose_host``)."""
    return [
        SimulatedDriver("docker", frozenset({TargetType.DOCKER_HOST}), delay_s),
        SimulatedDriver("compose", frozenset({TargetType.COMPOSE_HOST}), delay_s),
    ]
