"""Composition root of the agent: settings -> drivers, channel, :class:`~stella.agent.runtime.Agent`; and serving it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from typing import Final

import aiohttp

from stella.agent.channel import CredentialRefused, GatewayChannel
from stella.agent.credential import CredentialFileError
from stella.agent.drivers import Driver, DriverConfig, engine_drivers
from stella.agent.drivers.simulated import simulated_drivers
from stella.agent.runtime import Agent, AgentOptions, RegistrationFailed
from stella.agent.settings import AgentSettings

logger = logging.getLogger("stella.agent")

EXIT_STOPPED: Final[int] = 0
"""Stopped on request (SIGTERM, SIGINT)."""

EXIT_REGISTRATION: Final[int] = 3
"""No credential could be had: no token, or the token was refused."""

EXIT_REVOKED: Final[int] = 4
"""The gateway refused the stored credential (revoked or unknown)."""

EXIT_STATE: Final[int] = 5
"""The state directory or the credential file cannot be used safely."""

HTTP_CONNECTIONS: Final[int] = 32
"""Connections the agent keeps to the gateway (long poll, heartbeat, results and logs in parallel)."""


def build_drivers(settings: AgentSettings) -> list[Driver]:
    """The drivers the settings ask for: the real Docker and Compose ones, or simulated ones."""
    if settings.driver == "simulated":
        return list(simulated_drivers())
    config = DriverConfig(
        state_dir=settings.state_dir,
        docker_url=settings.docker_url,
        allowed_docker_urls=frozenset(settings.allowed_docker_urls),
        allowed_directories=tuple(settings.allowed_directories),
        health_host=settings.health_host,
    )
    return engine_drivers(config)


def build_agent(settings: AgentSettings, session: aiohttp.ClientSession, drivers: Sequence[Driver]) -> Agent:
    """The agent the settings describe, talking through ``session``."""
    options = AgentOptions(
        name=settings.name,
        state_dir=settings.state_dir,
        credential_path=settings.credential_path,
        registration_token=settings.registration_token.get_secret_value() if settings.registration_token else None,
        labels=settings.labels,
        max_concurrent_tasks=settings.max_concurrent_tasks,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        task_poll_timeout_s=settings.task_poll_timeout_s,
        max_backoff_s=settings.max_backoff_s,
    )
    channel = GatewayChannel(session, settings.gateway_url, settings.request_timeout_s)
    return Agent(channel, drivers, options, settings.gateway_url)


async def serve(settings: AgentSettings) -> int:
    """Run one agent until SIGTERM/SIGINT; the process's exit code."""
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    drivers = build_drivers(settings)
    connector = aiohttp.TCPConnector(limit=HTTP_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        agent = build_agent(settings, session, drivers)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, agent.stop)
        try:
            await agent.run()
        except RegistrationFailed as exc:
            logger.error("cannot register: %s", exc)
            return EXIT_REGISTRATION
        except CredentialRefused as exc:
            logger.error(
                "the gateway refused this agent's credential (revoked or unknown): %s; stopping. "
                "Register again with a new token after removing %s",
                exc,
                settings.credential_path,
            )
            return EXIT_REVOKED
        except CredentialFileError as exc:
            logger.error("%s", exc)
            return EXIT_STATE
        finally:
            for driver in drivers:
                with contextlib.suppress(Exception):
                    await driver.close()
    logger.info("stopped")
    return EXIT_STOPPED
