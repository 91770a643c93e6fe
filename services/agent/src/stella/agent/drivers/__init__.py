"""Drivers: how an agent runs a task against one kind of target (see :mod:`stella.agent.drivers.base`).

:class:`DockerHostDriver` serves ``docker_host`` targets through the Docker Engine API, and
:class:`ComposeHostDriver` serves ``compose_host`` targets with a digest-pinned Compose file; both share
one :class:`DriverConfig` and, through :func:`engine_drivers`, one set of engine connections.
"""

from stella.agent.drivers.base import Driver, LogSink
from stella.agent.drivers.compose_host import ComposeHostDriver
from stella.agent.drivers.config import DriverConfig
from stella.agent.drivers.docker_host import DockerHostDriver
from stella.agent.drivers.engine import Engines


def engine_drivers(config: DriverConfig) -> list[Driver]:
    """The Docker and Compose drivers, sharing engine connections (closing either closes them; they reopen on use).

    Args:
        config: Where state lives and what tasks may use.

    Returns:
        ``[DockerHostDriver, ComposeHostDriver]``.
    """
    engines = Engines(config)
    return [DockerHostDriver(config, engines), ComposeHostDriver(config, engines)]


__all__ = ["ComposeHostDriver", "DockerHostDriver", "Driver", "DriverConfig", "LogSink", "engine_drivers"]
