"""Health checks of deployed components: ``container``, ``http``, ``tcp`` and ``command`` (reference §4).

Every check first requires the component's container to be running. Then, per type:

``container``
    Healthy when running and, if the image declares a Docker ``HEALTHCHECK``, when Docker reports it
    ``healthy`` (``starting`` is retried, like any failure).
``http``
    ``GET http://<host>:<port><path>`` answers ``expected_status``, or any 2xx/3xx when none is given
    (redirects are not followed).
``tcp``
    ``<host>:<port>`` accepts a connection that the peer does not close at once. Docker's port proxy
    accepts connections on a published port even when nothing listens in the container, and closes
    them right away; such a port is not healthy.
``command``
    ``command`` run inside the container (``docker exec``) exits 0.

Which port an ``http``/``tcp`` check reaches: when the check names a ``port`` that a component publishes
(as its host port, or as its container port, then through whatever host port Docker bound), that
component is checked there; when no component publishes it, the port is checked once on the host for all
of them (a router in front, say). Without a ``port``, each component is checked on its first published
port. A component the check cannot reach that way (it publishes no port) counts as healthy when running,
and the log says so. ``host`` defaults to the target's address.

An attempt is bounded by ``timeout_s``; a component that failed is tried again after ``interval_s``, up
to ``retries`` more times; a component that passed is not checked again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from stella.agent.drivers.base import LogSink
from stella.agent.drivers.engine import RunningContainer
from stella.contracts.agent import ComponentSpec, HealthCheckSpec

Locate = Callable[[], Awaitable[Mapping[str, RunningContainer | None]]]
"""Finds each component's container now (state and health change between attempts)."""

_EOF_GRACE_S = 0.3
_OUTPUT_LIMIT = 2000


@dataclass
class HealthOutcome:
    """The verdict per component, with the last reason of each failure."""

    healthy: dict[str, bool] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every component passed."""
        return all(self.healthy.values())

    def summary(self) -> str:
        """One line naming what failed and why."""
        failed = [f"{name}: {self.reasons.get(name, 'failed')}" for name, ok in sorted(self.healthy.items()) if not ok]
        return "; ".join(failed) if failed else "healthy"


def _endpoint(
    spec: HealthCheckSpec, component: ComponentSpec, container: RunningContainer, others: Sequence[ComponentSpec]
) -> int | None:
    """The host port to probe for this component, or None when the check does not reach it."""
    if spec.port is not None:
        for mapping in component.ports:
            if mapping.host_port == spec.port:
                return spec.port
        for mapping in component.ports:
            if mapping.container_port == spec.port:
                return container.ports.get(f"{mapping.container_port}/{mapping.protocol}")
        published_elsewhere = any(
            spec.port in (mapping.host_port, mapping.container_port) for other in others for mapping in other.ports
        )
        return None if published_elsewhere else spec.port
    for mapping in component.ports:
        if mapping.protocol == "tcp":
            return container.ports.get(f"{mapping.container_port}/tcp")
    return None


async def _probe_container(container: RunningContainer) -> tuple[bool, str]:
    if container.health in (None, "healthy"):
        return True, "running" + (" and healthy" if container.health else "")
    return False, f"Docker reports it {container.health}"


async def _probe_http(session: aiohttp.ClientSession, spec: HealthCheckSpec, host: str, port: int) -> tuple[bool, str]:
    url = f"http://{host}:{port}{spec.path}"
    try:
        async with session.get(url, allow_redirects=False) as response:
            await response.content.read(_OUTPUT_LIMIT)
            status = response.status
    except aiohttp.ClientError as exc:
        return False, f"GET {url}: {exc.__class__.__name__}: {exc}"
    wanted = spec.expected_status
    ok = status == wanted if wanted is not None else 200 <= status < 400
    return ok, f"GET {url} answered {status}"


async def _probe_tcp(host: str, port: int) -> tuple[bool, str]:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return False, f"connect {host}:{port}: {exc.strerror or exc}"
    try:
        try:
            data = await asyncio.wait_for(reader.read(1), _EOF_GRACE_S)
        except TimeoutError:
            return True, f"{host}:{port} accepts connections"
        except OSError as exc:
            return False, f"{host}:{port} reset the connection: {exc.strerror or exc}"
        if data == b"":
            return False, f"{host}:{port} closed the connection at once (nothing listens behind it)"
        return True, f"{host}:{port} accepts connections"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _probe_command(docker: aiodocker.Docker, container: RunningContainer, command: list[str]) -> tuple[bool, str]:
    try:
        execution = await docker.containers.container(container.id).exec(command, stdout=True, stderr=True)
        output = bytearray()
        async with execution.start(detach=False) as stream:
            while (message := await stream.read_out()) is not None:
                if len(output) < _OUTPUT_LIMIT:
                    output.extend(message.data)
        exit_code = (await execution.inspect()).get("ExitCode")
    except DockerError as exc:
        return False, f"exec failed: {exc.message}"
    text = output.decode(errors="replace").strip().replace("\n", " ")[:300]
    if exit_code == 0:
        return True, "command exited 0"
    return False, f"command exited {exit_code}" + (f": {text}" if text else "")


async def check_health(
    docker: aiodocker.Docker,
    spec: HealthCheckSpec,
    components: Sequence[ComponentSpec],
    locate: Locate,
    host: str,
    log: LogSink,
) -> HealthOutcome:
    """Run ``spec`` against each component's container, with its timeout, retries and interval.

    Args:
        docker: The engine.
        spec: The check.
        components: The components to check.
        locate: Finds each component's container now.
        host: The target's address, used when the check names no ``host``.
        log: The task's log.

    Returns:
        The verdict per component.
    """
    outcome = HealthOutcome(healthy={component.name: False for component in components})
    pending = {component.name: component for component in components}
    address = spec.host or host
    attempts = spec.retries + 1
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=spec.timeout_s)) as session:
        for attempt in range(1, attempts + 1):
            found = await locate()
            for name, component in sorted(pending.items()):
                container = found.get(name)
                try:
                    async with asyncio.timeout(spec.timeout_s):
                        ok, reason = await _probe(docker, session, spec, component, container, components, address)
                except TimeoutError:
                    ok, reason = False, f"no answer within {spec.timeout_s:g}s"
                outcome.reasons[name] = reason
                if ok:
                    outcome.healthy[name] = True
                    del pending[name]
                    log(f"health ({spec.type}) {name}: {reason}")
            if not pending:
                break
            waiting = ", ".join(f"{name}: {outcome.reasons[name]}" for name in sorted(pending))
            if attempt < attempts:
                log(
                    f"health ({spec.type}) attempt {attempt}/{attempts} not passed ({waiting}); next in {spec.interval_s:g}s"
                )
                await asyncio.sleep(spec.interval_s)
            else:
                log(f"health ({spec.type}) failed after {attempts} attempt(s): {waiting}")
    return outcome


async def _probe(
    docker: aiodocker.Docker,
    session: aiohttp.ClientSession,
    spec: HealthCheckSpec,
    component: ComponentSpec,
    container: RunningContainer | None,
    components: Sequence[ComponentSpec],
    host: str,
) -> tuple[bool, str]:
    if container is None:
        return False, "no container"
    if not container.running:
        return False, f"container {container.name} is {container.status}"
    if spec.type == "container":
        return await _probe_container(container)
    if spec.type == "command":
        if not spec.command:
            return False, "the command check names no command"
        return await _probe_command(docker, container, spec.command)
    others = [other for other in components if other.name != component.name]
    port = _endpoint(spec, component, container, others)
    if port is None:
        return True, f"running (publishes no port the {spec.type} check reaches)"
    if spec.type == "http":
        return await _probe_http(session, spec, host, port)
    return await _probe_tcp(host, port)
