"""Many simulated agents in one process, for load tests of the server side: ``python -m stella.agent.swarm``.

Each agent of the swarm is a full :class:`~stella.agent.runtime.Agent` (it registers, heartbeats, long-polls
its task feed, streams logs, journals and posts results) whose drivers are simulated: tasks complete at once
and nothing on the host is touched. The agents share one HTTP session. Agent ``i`` is named
``<prefix>-<i>`` and keeps its state (credential, journal) in ``<state_dir>/<prefix>-<i>``, so a swarm
started again reuses its registrations; a new agent takes the next unused registration token.

    python -m stella.agent.swarm --gateway-url http://127.0.0.1:8000 --count 50 --tokens-file tokens.txt
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import aiohttp

from stella.agent.channel import GatewayChannel
from stella.agent.credential import load_credential
from stella.agent.drivers.simulated import SimulatedDriver, simulated_drivers
from stella.agent.runtime import Agent, AgentOptions
from stella.agent.settings import CREDENTIAL_FILE, parse_labels

logger = logging.getLogger("stella.agent.swarm")


class Swarm:
    """``count`` simulated agents sharing one HTTP session.

    Args:
        session: The shared session (its connector bounds the connections to the gateway).
        gateway_url: The gateway.
        state_dir: Parent of each agent's state directory.
        count: Number of agents.
        tokens: One-time registration tokens for agents not registered yet (used in order).
        prefix: Agent name prefix.
        labels: Labels every agent declares.
        max_concurrent_tasks: Tasks each agent runs at once.
        heartbeat_interval_s: Overrides the gateway's heartbeat interval.
        task_poll_timeout_s: Overrides the gateway's long-poll wait.
        delay_s: Simulated time per task.
        durable_journal: Flush each agent's results to disk before posting them, as a real agent does. The
            agents of a swarm share one host's disk and one event loop, so their flushes, which real agents
            make each on its own host, add up here; False measures the server side alone.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        gateway_url: str,
        state_dir: Path,
        count: int,
        tokens: Iterable[str] = (),
        *,
        prefix: str = "sim",
        labels: dict[str, str] | None = None,
        max_concurrent_tasks: int = 16,
        heartbeat_interval_s: float | None = None,
        task_poll_timeout_s: float | None = None,
        delay_s: float = 0.0,
        durable_journal: bool = True,
    ) -> None:
        unused = iter(tokens)
        self.agents: list[Agent] = []
        self.drivers: list[SimulatedDriver] = []
        for index in range(count):
            directory = state_dir / f"{prefix}-{index}"
            credential_path = directory / CREDENTIAL_FILE
            token = None if load_credential(credential_path) is not None else next(unused, None)
            drivers = simulated_drivers(delay_s)
            self.drivers.extend(drivers)
            options = AgentOptions(
                name=f"{prefix}-{index}",
                state_dir=directory,
                credential_path=credential_path,
                registration_token=token,
                labels=dict(labels or {}),
                max_concurrent_tasks=max_concurrent_tasks,
                heartbeat_interval_s=heartbeat_interval_s,
                task_poll_timeout_s=task_poll_timeout_s,
                shutdown_grace_s=5.0,
                durable_journal=durable_journal,
            )
            self.agents.append(Agent(GatewayChannel(session, gateway_url), drivers, options, gateway_url))

    @property
    def tasks_run(self) -> int:
        """Tasks the swarm's drivers ran."""
        return sum(driver.runs for driver in self.drivers)

    async def register(self) -> None:
        """Register every agent that has no credential yet (all at once)."""
        await asyncio.gather(*(agent.ensure_registered() for agent in self.agents))

    def stop(self) -> None:
        """Ask every agent to stop."""
        for agent in self.agents:
            agent.stop()

    async def run(self) -> None:
        """Run every agent until :meth:`stop`; an agent that fails is logged, the others go on."""
        outcomes = await asyncio.gather(*(agent.run() for agent in self.agents), return_exceptions=True)
        for agent, outcome in zip(self.agents, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                logger.error("agent %s stopped: %s", agent.options.name, outcome)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stella.agent.swarm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway-url", required=True)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--tokens-file", type=Path, help="one registration token per line (for unregistered agents)")
    parser.add_argument("--state-dir", type=Path, default=Path(".stella/swarm"))
    parser.add_argument("--prefix", default="sim")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--max-concurrent-tasks", type=int, default=16)
    parser.add_argument("--heartbeat-interval-s", type=float)
    parser.add_argument("--task-poll-timeout-s", type=float)
    parser.add_argument("--delay-s", type=float, default=0.0, help="simulated seconds per task")
    return parser


async def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    tokens = args.tokens_file.read_text().split() if args.tokens_file else []
    connector = aiohttp.TCPConnector(limit=max(32, args.count * 3))
    async with aiohttp.ClientSession(connector=connector) as session:
        swarm = Swarm(
            session,
            args.gateway_url.rstrip("/"),
            args.state_dir,
            args.count,
            tokens,
            prefix=args.prefix,
            labels=parse_labels(args.label),
            max_concurrent_tasks=args.max_concurrent_tasks,
            heartbeat_interval_s=args.heartbeat_interval_s,
            task_poll_timeout_s=args.task_poll_timeout_s,
            delay_s=args.delay_s,
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, swarm.stop)
        logger.info("starting %d simulated agents against %s", args.count, args.gateway_url)
        await swarm.run()
        logger.info("stopped; %d tasks run", swarm.tasks_run)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Run a swarm until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(_main(argv)))


if __name__ == "__main__":
    main()
