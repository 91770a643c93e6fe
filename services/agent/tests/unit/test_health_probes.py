"""Which port a health check reaches, and what counts as a healthy TCP port, with real sockets."""

from __future__ import annotations

import asyncio
import uuid

from stella.agent.drivers.engine import RunningContainer
from stella.agent.drivers.health import _endpoint, _probe_tcp
from stella.contracts.agent import ComponentSpec, HealthCheckSpec, PortMapping

DIGEST = "sha256:" + "e" * 64


def component(name: str, *ports: PortMapping) -> ComponentSpec:
    return ComponentSpec(component_id=uuid.uuid4(), name=name, image_repository="app", digest=DIGEST, ports=list(ports))


def container(ports: dict[str, int]) -> RunningContainer:
    return RunningContainer(
        id="x",
        name="x",
        component=None,
        status="running",
        health=None,
        image_id="",
        image="",
        image_inspect=None,
        ports=ports,
    )


def test_port_selection() -> None:
    api = component("api", PortMapping(container_port=8080), PortMapping(container_port=9000, host_port=19000))
    web = component("web", PortMapping(container_port=80, host_port=8081))
    bound = container({"8080/tcp": 32768, "9000/tcp": 19000})
    spec = HealthCheckSpec(type="http")
    assert _endpoint(spec, api, bound, [web]) == 32768  # first published port, as Docker bound it
    assert _endpoint(spec.model_copy(update={"port": 8080}), api, bound, [web]) == 32768  # by container port
    assert _endpoint(spec.model_copy(update={"port": 19000}), api, bound, [web]) == 19000  # by host port
    assert _endpoint(spec.model_copy(update={"port": 8081}), api, bound, [web]) is None  # web's port
    assert _endpoint(spec.model_copy(update={"port": 443}), api, bound, [web]) == 443  # nobody's: on the host
    assert _endpoint(spec, component("worker"), container({}), [api]) is None


async def serve(handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_port_that_accepts_and_holds_the_connection_is_healthy() -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server, port = await serve(hold)
    async with server:
        ok, reason = await _probe_tcp("127.0.0.1", port)
    assert ok, reason


async def test_a_port_that_speaks_first_is_healthy() -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await writer.drain()
        writer.close()

    server, port = await serve(greet)
    async with server:
        ok, reason = await _probe_tcp("127.0.0.1", port)
    assert ok, reason


async def test_a_port_closed_at_once_is_not_healthy() -> None:
    # What Docker's port proxy does when nothing listens in the container.
    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server, port = await serve(close)
    async with server:
        ok, reason = await _probe_tcp("127.0.0.1", port)
    assert not ok
    assert "closed the connection at once" in reason


async def test_a_port_nobody_listens_on_is_not_healthy() -> None:
    server, port = await serve(lambda r, w: None)
    server.close()
    await server.wait_closed()
    ok, reason = await _probe_tcp("127.0.0.1", port)
    assert not ok
    assert "connect" in reason
