"""The seam between the agent's runtime (registration, heartbeat, task feed) and what it drives.

The runtime leases an :class:`~stella.contracts.agent.AgentTask`, picks the driver for the task's target
type and awaits :meth:`Driver.run`, which returns the one :class:`~stella.contracts.agent.TaskResult` the
runtime posts. A driver never raises for an expected failure (a pull that fails, a digest that does not
match, a health check that fails): it returns a failed result with an ``AGT_*`` code. It raises only for a
bug; the runtime then reports ``AGT_INTERNAL`` and keeps running.
"""

from __future__ import annotations

from typing import Protocol

from stella.contracts.agent import AgentTask, Capability, TargetType, TaskResult


class LogSink(Protocol):
    """Where a driver writes the task's log lines; the runtime batches them into chunks for the gateway."""

    def __call__(self, line: str) -> None:
        """Record one line (secrets must never be written)."""


class Driver(Protocol):
    """Runs tasks against one kind of target."""

    # Read-only properties: a driver may hold these as class or instance attributes.
    @property
    def capability(self) -> Capability:
        """The capability an agent declares when it has this driver."""
        ...

    @property
    def target_types(self) -> frozenset[TargetType]:
        """The target types this driver serves."""
        ...

    async def check(self) -> tuple[bool, str]:
        """A self-check for heartbeats: whether the driver can work now (the engine answers...), and why not."""
        ...

    async def run(self, task: AgentTask, log: LogSink) -> TaskResult:
        """Carry out ``task`` (any :class:`~stella.contracts.agent.TaskType`) and return its result.

        Must be idempotent per ``task.idempotency_key``: running a deploy again when the target already
        runs the pinned digests with the same sticker changes nothing and succeeds.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
