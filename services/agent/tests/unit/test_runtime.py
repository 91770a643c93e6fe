"""The agent runtime against an in-process stand-in of the gateway's agent channel.

Registration and its stored credential, the task feed, results posted once and again verbatim when lost,
the journal answering re-delivered tasks, cancellation, outages, a revoked credential, bounded concurrency,
and secrets kept out of the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from stella.agent.channel import CredentialRefused, GatewayChannel
from stella.agent.drivers.base import Driver, LogSink
from stella.agent.drivers.simulated import SimulatedDriver, simulated_drivers
from stella.agent.runtime import CANCELLED, Agent, AgentOptions, RegistrationFailed
from stella.contracts.agent import (
    AgentTask,
    Capability,
    ComponentSpec,
    DeploymentRef,
    RegistryCredential,
    TargetSpec,
    TargetType,
    TaskResult,
    TaskType,
)
from stella.contracts.envelope import utcnow

from .conftest import GatewayDouble

DIGEST = "sha256:" + "ab" * 32


def deploy_task(
    target_type: TargetType = TargetType.DOCKER_HOST, *, key: str | None = None, attempt: int = 1, **fields: Any
) -> AgentTask:
    target_id = uuid.uuid4()
    job_id = uuid.uuid4()
    component = ComponentSpec(
        component_id=uuid.uuid4(), name="web", image_repository="localhost:5000/web", digest=DIGEST
    )
    sticker = {
        "version": "1.0",
        "release": {"id": str(uuid.uuid4()), "name": "shop-1", "components": [{"name": "web", "digest": DIGEST}]},
        "deployment": {"id": str(job_id), "target_id": str(target_id)},
    }
    return AgentTask(
        task_id=uuid.uuid4(),
        idempotency_key=key or f"{job_id}:{target_id}:deploy",
        type=TaskType.DEPLOY,
        attempt=attempt,
        target=TargetSpec(target_id=target_id, name="web-1", target_type=target_type),
        components=[component],
        deployment=DeploymentRef(
            job_id=job_id,
            release_id=uuid.uuid4(),
            release_name="shop-1",
            environment_id=uuid.uuid4(),
            environment_name="dev",
            strategy="all-at-once",
        ),
        sticker=sticker,
        **fields,
    )


class GateDriver:
    """Blocks every task until released; counts how many run at once and how many ran."""

    capability: Capability = "docker"
    target_types = frozenset({TargetType.DOCKER_HOST})

    def __init__(self, say: Callable[[AgentTask], str] | None = None) -> None:
        self.release = asyncio.Event()
        self.checked = asyncio.Event()
        self.checked.set()
        self.running = 0
        self.most = 0
        self.runs = 0
        self.say = say

    async def check(self) -> tuple[bool, str]:
        await self.checked.wait()
        return False, "engine gone"

    async def run(self, task: AgentTask, log: LogSink) -> TaskResult:
        self.runs += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if self.say is not None:
                log(self.say(task))
            await self.release.wait()
        finally:
            self.running -= 1
        now = utcnow()
        return TaskResult(
            task_id=task.task_id,
            idempotency_key=task.idempotency_key,
            attempt=task.attempt,
            status="succeeded",
            started_at=now,
            finished_at=now,
        )

    async def close(self) -> None:
        pass


class Running:
    """Agents started by a test, stopped at its end."""

    def __init__(self, gateway: GatewayDouble, tmp_path: Path, session: aiohttp.ClientSession) -> None:
        self.gateway = gateway
        self.tmp_path = tmp_path
        self.session = session
        self.runs: list[asyncio.Task[None]] = []

    def agent(
        self,
        drivers: list[Driver] | None = None,
        *,
        token: str | None = "new",  # noqa: S107 (a fresh token from the gateway double)
        name: str = "agent-1",
        **options: Any,
    ) -> Agent:
        state = self.tmp_path / name
        agent_options = AgentOptions(
            name=name,
            state_dir=state,
            credential_path=state / "credential.json",
            registration_token=self.gateway.new_token() if token == "new" else token,
            max_backoff_s=0.2,
            shutdown_grace_s=1.0,
            **options,
        )
        channel = GatewayChannel(self.session, self.gateway.url, request_timeout_s=5.0)
        return Agent(
            channel, drivers if drivers is not None else list(simulated_drivers()), agent_options, self.gateway.url
        )

    async def start(self, agent: Agent) -> asyncio.Task[None]:
        run = asyncio.create_task(agent.run())
        self.runs.append(run)
        await self.gateway.wait_for(lambda: (agent.identity is not None and self.heartbeats(agent) > 0) or run.done())
        if run.done():
            run.result()
        return run

    def heartbeats(self, agent: Agent) -> int:
        assert agent.identity is not None
        return sum(1 for agent_id, _ in self.gateway.heartbeats if agent_id == agent.identity.agent_id)

    async def stop(self, agent: Agent, run: asyncio.Task[None]) -> None:
        agent.stop()
        await asyncio.wait_for(run, 10)


@pytest_asyncio.fixture
async def running(gateway: GatewayDouble, tmp_path: Path) -> AsyncIterator[Running]:
    async with aiohttp.ClientSession() as session:
        started = Running(gateway, tmp_path, session)
        try:
            yield started
        finally:
            for run in started.runs:
                run.cancel()
                with contextlib.suppress(BaseException):
                    await run


def agent_id(agent: Agent) -> uuid.UUID:
    assert agent.identity is not None
    return agent.identity.agent_id


async def test_registers_once_and_keeps_the_credential_readable_by_its_owner_only(
    running: Running, gateway: GatewayDouble
) -> None:
    agent = running.agent(labels={"zone": "eu-1"})
    run = await running.start(agent)
    await running.stop(agent, run)

    path = agent.options.credential_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    registered = gateway.agents[agent_id(agent)]
    assert registered.credential in path.read_text()
    assert registered.capabilities == ["compose", "docker"]
    assert registered.labels == {"zone": "eu-1"}
    assert gateway.tokens == set(), "the one-time token was used"

    again = running.agent(token=None)  # same state directory, no token: the stored credential serves
    run = await running.start(again)
    await running.stop(again, run)
    assert gateway.registrations == 1
    assert agent_id(again) == agent_id(agent)


async def test_a_refused_registration_token_stops_with_a_clear_error(running: Running) -> None:
    with pytest.raises(RegistrationFailed, match="used, expired or unknown"):
        await running.agent(token="stl_reg_not-a-token-anyone-made").run()
    with pytest.raises(RegistrationFailed, match="registration token"):
        await running.agent(token=None, name="agent-2").run()


async def test_a_credential_file_others_can_read_is_refused(running: Running) -> None:
    agent = running.agent()
    run = await running.start(agent)
    await running.stop(agent, run)
    agent.options.credential_path.chmod(0o644)
    with pytest.raises(Exception, match="readable by other users"):
        await running.agent(token=None).run()


async def test_heartbeats_carry_the_drivers_self_checks_and_the_running_tasks(
    running: Running, gateway: GatewayDouble
) -> None:
    driver = GateDriver()
    agent = running.agent([driver])
    run = await running.start(agent)
    task = deploy_task()
    await gateway.deliver(agent_id(agent), task)
    await gateway.wait_for(
        lambda: any(task.task_id in beat.running_tasks and beat.checks for _, beat in gateway.heartbeats)
    )
    beat = next(beat for _, beat in gateway.heartbeats if task.task_id in beat.running_tasks and beat.checks)
    checks = {check.name: check for check in beat.checks}
    assert not checks["docker"].ok
    assert checks["docker"].message == "engine gone"
    assert checks["disk"].ok
    driver.release.set()
    await gateway.wait_for(lambda: task.task_id in gateway.results)
    await running.stop(agent, run)


async def test_each_feed_request_lists_the_tasks_the_agent_holds(running: Running, gateway: GatewayDouble) -> None:
    """So that tasks leased to it whose hand-over was lost are handed over again at once."""
    driver = GateDriver()
    agent = running.agent([driver], max_concurrent_tasks=2)
    run = await running.start(agent)
    await gateway.wait_for(lambda: gateway.held[-1:] == [[]])
    task = deploy_task()
    await gateway.deliver(agent_id(agent), task)
    await gateway.wait_for(lambda: [task.task_id] in gateway.held)
    driver.release.set()
    await gateway.wait_for(lambda: task.task_id in gateway.results)
    await running.stop(agent, run)


async def test_a_task_runs_once_and_its_result_and_numbered_logs_reach_the_gateway(
    running: Running, gateway: GatewayDouble
) -> None:
    drivers = simulated_drivers()
    agent = running.agent(list(drivers))
    run = await running.start(agent)
    task = deploy_task(TargetType.COMPOSE_HOST)
    await gateway.deliver(agent_id(agent), task)
    await gateway.wait_for(lambda: task.task_id in gateway.results and task.task_id in gateway.logs)

    result = gateway.results[task.task_id]
    assert result.status == "succeeded"
    assert result.idempotency_key == task.idempotency_key
    assert result.components[0].running_digest == DIGEST
    assert [driver.runs for driver in drivers] == [0, 1], "the compose driver ran it"
    assert sorted(gateway.logs[task.task_id]) == list(range(len(gateway.logs[task.task_id])))
    assert min(gateway.logs[task.task_id]) == 0
    assert "simulated deploy on web-1" in gateway.log_lines(task.task_id)
    assert len([post for post in gateway.result_posts if post[0] == task.task_id]) == 1
    await running.stop(agent, run)


async def test_a_lost_result_is_posted_again_with_the_same_bytes(running: Running, gateway: GatewayDouble) -> None:
    gateway.fail_results = 3
    agent = running.agent()
    run = await running.start(agent)
    task = deploy_task()
    await gateway.deliver(agent_id(agent), task)
    await gateway.wait_for(lambda: task.task_id in gateway.results)

    bodies = [body for task_id, body in gateway.result_posts if task_id == task.task_id]
    assert len(bodies) == 4
    assert len(set(bodies)) == 1, "every post carries the very same result"
    await running.stop(agent, run)


async def test_a_result_not_taken_before_a_restart_is_posted_by_the_next_start(
    running: Running, gateway: GatewayDouble
) -> None:
    gateway.fail_results = 10_000
    agent = running.agent()
    run = await running.start(agent)
    task = deploy_task()
    await gateway.deliver(agent_id(agent), task)
    await gateway.wait_for(lambda: sum(1 for task_id, _ in gateway.result_posts if task_id == task.task_id) >= 2)
    run.cancel()  # the process dies: nothing is flushed
    with contextlib.suppress(asyncio.CancelledError):
        await run
    first = next(body for task_id, body in gateway.result_posts if task_id == task.task_id)

    gateway.fail_results = 0
    again = running.agent(token=None)
    run = await running.start(again)
    await gateway.wait_for(lambda: task.task_id in gateway.results)
    assert gateway.result_posts[-1][1] == first
    assert gateway.results[task.task_id].status == "succeeded"
    await running.stop(again, run)


async def test_a_redelivered_task_reports_its_earlier_result_instead_of_running_twice(
    running: Running, gateway: GatewayDouble
) -> None:
    drivers = simulated_drivers()
    agent = running.agent(list(drivers))
    run = await running.start(agent)
    task = deploy_task()
    await gateway.deliver(agent_id(agent), task)
    await gateway.wait_for(lambda: task.task_id in gateway.results)
    first = gateway.results.pop(task.task_id)

    await gateway.deliver(agent_id(agent), task)  # the same lease again (the service lost the first answer)
    await gateway.wait_for(lambda: task.task_id in gateway.results)
    assert gateway.results[task.task_id] == first

    leased_again = task.model_copy(update={"task_id": uuid.uuid4(), "attempt": 2})
    await gateway.deliver(agent_id(agent), leased_again)
    await gateway.wait_for(lambda: leased_again.task_id in gateway.results)
    answer = gateway.results[leased_again.task_id]
    assert answer.attempt == 2
    assert answer.components == first.components
    assert answer.finished_at == first.finished_at, "reported, not run again"
    assert drivers[0].runs == 1

    # Restarted, the agent still remembers: the journal is on disk.
    await running.stop(agent, run)
    fresh = simulated_drivers()
    again = running.agent(list(fresh), token=None)
    run = await running.start(again)
    third = task.model_copy(update={"task_id": uuid.uuid4(), "attempt": 3})
    await gateway.deliver(agent_id(again), third)
    await gateway.wait_for(lambda: third.task_id in gateway.results)
    assert gateway.results[third.task_id].finished_at == first.finished_at
    assert fresh[0].runs == 0
    await running.stop(again, run)


async def test_a_failed_task_leased_again_runs_again(running: Running, gateway: GatewayDouble) -> None:
    docker_only = SimulatedDriver("docker", frozenset({TargetType.DOCKER_HOST}))
    agent = running.agent([docker_only])
    run = await running.start(agent)
    compose = deploy_task(TargetType.COMPOSE_HOST)
    await gateway.deliver(agent_id(agent), compose)
    await gateway.wait_for(lambda: compose.task_id in gateway.results)
    first = gateway.results[compose.task_id]
    assert first.error_code == "AGT_UNSUPPORTED"

    retry = compose.model_copy(update={"task_id": uuid.uuid4(), "attempt": 2})
    await gateway.deliver(agent_id(agent), retry)
    await gateway.wait_for(lambda: retry.task_id in gateway.results)
    assert gateway.results[retry.task_id].attempt == 2
    assert gateway.results[retry.task_id].started_at > first.finished_at, "tried again, not recalled"
    await running.stop(agent, run)


async def test_a_task_stella_cancels_is_stopped(running: Running, gateway: GatewayDouble) -> None:
    driver = GateDriver()
    agent = running.agent([driver])
    run = await running.start(agent)
    task = deploy_task()
    gateway.cancel.add(task.task_id)
    await gateway.deliver(agent_id(agent), task)
    await gateway.wait_for(lambda: task.task_id in gateway.results)
    result = gateway.results[task.task_id]
    assert result.status == "failed"
    assert result.error_code == CANCELLED
    assert driver.running == 0
    await running.stop(agent, run)


async def test_the_agent_waits_out_a_gateway_outage(running: Running, gateway: GatewayDouble) -> None:
    agent = running.agent()
    run = await running.start(agent)
    await gateway.stop()  # the port closes: connections are refused
    await asyncio.sleep(0.5)  # several heartbeat intervals and feed attempts with no gateway at all
    assert not run.done()
    gateway.unavailable = True  # back, but answering 503 for a while
    await gateway.start()
    await asyncio.sleep(0.3)
    assert not run.done()
    beats = running.heartbeats(agent)
    gateway.unavailable = False
    task = deploy_task()
    await gateway.deliver(agent_id(agent), task)
    await gateway.wait_for(lambda: task.task_id in gateway.results and running.heartbeats(agent) > beats)
    await running.stop(agent, run)


async def test_a_revoked_credential_stops_the_agent(running: Running, gateway: GatewayDouble) -> None:
    agent = running.agent()
    run = await running.start(agent)
    gateway.agents[agent_id(agent)].revoked = True
    with pytest.raises(CredentialRefused):
        await asyncio.wait_for(run, 10)


async def test_no_more_tasks_run_at_once_than_allowed(running: Running, gateway: GatewayDouble) -> None:
    driver = GateDriver()
    agent = running.agent([driver], max_concurrent_tasks=2)
    run = await running.start(agent)
    tasks = [deploy_task() for _ in range(5)]
    await gateway.deliver(agent_id(agent), *tasks)
    await gateway.wait_for(lambda: driver.running == 2)
    await asyncio.sleep(0.3)  # feed polls happen meanwhile; none may start a third task
    assert driver.running == 2
    driver.release.set()
    await gateway.wait_for(lambda: all(task.task_id in gateway.results for task in tasks))
    assert driver.most == 2
    assert driver.runs == 5
    await running.stop(agent, run)


async def test_secrets_never_reach_the_logs(running: Running, gateway: GatewayDouble) -> None:
    password = "hunter2-registry-password"
    driver = GateDriver(say=lambda task: f"pulling with {task.credentials[0].password} and {password[:6]}")
    driver.release.set()
    agent = running.agent([driver])
    run = await running.start(agent)
    task = deploy_task(credentials=[RegistryCredential(registry="localhost:5000", username="ci", password=password)])
    await gateway.deliver(agent_id(agent), task)
    await gateway.wait_for(lambda: task.task_id in gateway.results and task.task_id in gateway.logs)
    lines = gateway.log_lines(task.task_id)
    assert lines == ["pulling with *** and hunter"]
    assert password not in str(gateway.results[task.task_id])
    await running.stop(agent, run)


async def test_heartbeats_keep_their_pace_while_a_self_check_hangs(running: Running, gateway: GatewayDouble) -> None:
    driver = GateDriver()
    driver.checked.clear()  # the engine does not answer the self-check
    agent = running.agent([driver])
    run = await running.start(agent)
    beats = running.heartbeats(agent)
    await gateway.wait_for(lambda: running.heartbeats(agent) >= beats + 5)
    assert all(not beat.checks for _, beat in gateway.heartbeats), "no self-check result yet"
    driver.checked.set()
    await gateway.wait_for(lambda: any(beat.checks for _, beat in gateway.heartbeats))
    await running.stop(agent, run)


async def test_results_that_end_while_a_post_is_on_its_way_go_together_in_the_next_post(
    running: Running, gateway: GatewayDouble
) -> None:
    gateway.fail_results = 1  # the first post waits out a backoff, while the other tasks end
    driver = GateDriver()
    agent = running.agent([driver], max_concurrent_tasks=10)
    run = await running.start(agent)
    tasks = [deploy_task() for _ in range(6)]
    await gateway.deliver(agent_id(agent), *tasks)
    await gateway.wait_for(lambda: driver.running == 6)
    driver.release.set()
    await gateway.wait_for(lambda: all(task.task_id in gateway.results for task in tasks))

    assert max(len(batch) for batch in gateway.batch_posts) >= 2, "several results went in one post"
    assert all(sum(1 for posted, _ in gateway.result_posts if posted == task.task_id) <= 2 for task in tasks)
    assert {task.task_id for task in tasks} == set(gateway.results)
    assert all(agent.journal.recall(task.idempotency_key) is not None for task in tasks)
    await running.stop(agent, run)
    assert agent.journal.pending() == [], "every result is marked as taken"


async def test_a_gateway_without_the_results_endpoint_gets_each_result_on_its_own(
    running: Running, gateway: GatewayDouble
) -> None:
    gateway.serves_batches = False
    gateway.fail_results = 1
    driver = GateDriver()
    agent = running.agent([driver], max_concurrent_tasks=10)
    run = await running.start(agent)
    tasks = [deploy_task() for _ in range(6)]
    await gateway.deliver(agent_id(agent), *tasks)
    await gateway.wait_for(lambda: driver.running == 6)
    driver.release.set()
    await gateway.wait_for(lambda: all(task.task_id in gateway.results for task in tasks))

    assert gateway.batch_posts == []
    assert {task.task_id for task in tasks} == set(gateway.results)
    await running.stop(agent, run)
    assert agent.journal.pending() == []


async def test_the_last_log_lines_go_with_the_result_in_one_post(running: Running, gateway: GatewayDouble) -> None:
    agent = running.agent(list(simulated_drivers()))
    run = await running.start(agent)
    task = deploy_task()
    await gateway.deliver(agent_id(agent), task)
    await gateway.wait_for(lambda: task.task_id in gateway.results)

    assert gateway.carried_logs >= 1, "the log came with the result"
    assert "simulated deploy on web-1" in gateway.log_lines(task.task_id)
    assert [posted for posted, _ in gateway.result_posts] == [task.task_id]
    await running.stop(agent, run)


async def test_a_gateway_without_the_results_endpoint_gets_the_log_lines_on_their_own(
    running: Running, gateway: GatewayDouble
) -> None:
    gateway.serves_batches = False
    agent = running.agent(list(simulated_drivers()))
    run = await running.start(agent)
    tasks = [deploy_task(), deploy_task()]
    await gateway.deliver(agent_id(agent), *tasks)
    await gateway.wait_for(lambda: all(t.task_id in gateway.results and t.task_id in gateway.logs for t in tasks))

    assert gateway.carried_logs == 0
    assert all("simulated deploy on web-1" in gateway.log_lines(task.task_id) for task in tasks)
    await running.stop(agent, run)
