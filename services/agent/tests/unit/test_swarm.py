"""Many simulated agents in one process, against the stand-in of the agent channel."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp

from stella.agent.swarm import Swarm
from stella.contracts.agent import AgentTask, TargetSpec, TargetType, TaskType

from .conftest import GatewayDouble


def _inspect(target_type: TargetType) -> AgentTask:
    return AgentTask(
        task_id=uuid.uuid4(),
        idempotency_key=str(uuid.uuid4()),
        type=TaskType.INSPECT,
        target=TargetSpec(target_id=uuid.uuid4(), name="t", target_type=target_type),
    )


async def test_a_swarm_registers_every_agent_once_and_serves_their_tasks(
    gateway: GatewayDouble, tmp_path: Path
) -> None:
    tokens = [gateway.new_token() for _ in range(5)]
    async with aiohttp.ClientSession() as session:
        swarm = Swarm(session, gateway.url, tmp_path, 5, tokens, labels={"pool": "sim"})
        run = asyncio.create_task(swarm.run())
        await gateway.wait_for(lambda: len(gateway.agents) == 5)
        assert {agent.name for agent in gateway.agents.values()} == {f"sim-{index}" for index in range(5)}
        assert all(agent.labels == {"pool": "sim"} for agent in gateway.agents.values())

        given = []
        for index, agent_id in enumerate(gateway.agents):
            tasks = [_inspect(TargetType.DOCKER_HOST if index % 2 else TargetType.COMPOSE_HOST) for _ in range(4)]
            given += tasks
            gateway.give(agent_id, *tasks)
        await gateway.deliver(next(iter(gateway.agents)))
        await gateway.wait_for(lambda: all(task.task_id in gateway.results for task in given))
        assert all(gateway.results[task.task_id].drift is not None for task in given)
        assert swarm.tasks_run == 20
        swarm.stop()
        await asyncio.wait_for(run, 30)

        again = Swarm(session, gateway.url, tmp_path, 5)  # no tokens left: the stored credentials serve
        await again.register()
        assert gateway.registrations == 5
