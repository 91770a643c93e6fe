"""A tenant cannot make the release service send requests into the service's own network (SSRF).

Registries at loopback, link-local (cloud metadata), private and reserved addresses are refused unless the
operator allows their network: as a literal address when the component is saved, as a host name when a
connection is made (so a name that later resolves inward reaches nothing), and as the target of a redirect or a
token realm a registry names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from aiohttp import web

from stella.contracts import release as c
from stella.release.app import ReleaseApp

from .conftest import Caller

NONE_ALLOWED = pytest.mark.parametrize("registry_networks", [[]], indirect=True)


class Recorder:
    """A loopback HTTP server standing in for a registry: answers as configured and counts requests."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.respond: Callable[[web.Request], web.Response] = _registry
        self.address = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path_qs)
        return self.respond(request)


def _registry(request: web.Request) -> web.Response:
    if request.path.endswith("/tags/list"):
        return web.json_response({"name": "shop/api", "tags": ["1.0.0"]})
    return web.Response(headers={"Docker-Content-Digest": "sha256:" + "a" * 64})


@pytest_asyncio.fixture
async def recorder() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    recorder.address = f"127.0.0.1:{port}"
    try:
        yield recorder
    finally:
        await runner.cleanup()


async def _count(app: ReleaseApp) -> int:
    async with app.runtime.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM components"))


async def _sync(caller: Caller, component_id: str):
    return await caller.command(c.SYNC_VERSIONS, c.SyncVersions, component_id=component_id)


@NONE_ALLOWED
@pytest.mark.parametrize(
    "repository",
    ["127.0.0.1:5000/shop/api", "169.254.169.254/latest/meta-data", "10.1.2.3:443/x/y", "100.64.0.1/a/b"],
)
async def test_a_literal_internal_registry_is_refused_when_saved(
    caller: Caller, release_app: ReleaseApp, repository: str
) -> None:
    reply = await caller.command(c.CREATE_COMPONENT, c.CreateComponent, name="api", image_repository=repository)
    assert not reply.ok
    assert (reply.error.code, reply.error.status) == ("REL_REGISTRY_ADDRESS_FORBIDDEN", 422)
    assert "STELLA_RELEASE_REGISTRY_ALLOWED_NETWORKS" in reply.error.detail
    assert await _count(release_app) == 0


@NONE_ALLOWED
async def test_a_name_that_resolves_inward_reaches_nothing(caller: Caller, recorder: Recorder) -> None:
    port = recorder.address.rsplit(":", 1)[1]
    created = await caller.command(
        c.CREATE_COMPONENT, c.CreateComponent, name="api", image_repository=f"localhost:{port}/shop/api"
    )
    assert created.ok, created.error
    reply = await _sync(caller, created.data["id"])
    assert (reply.error.code, reply.error.status) == ("REL_REGISTRY_ADDRESS_FORBIDDEN", 422)
    assert recorder.requests == []


async def test_an_allowed_network_is_reached(caller: Caller, recorder: Recorder) -> None:
    created = await caller.command(
        c.CREATE_COMPONENT, c.CreateComponent, name="api", image_repository=f"{recorder.address}/shop/api"
    )
    assert created.ok, created.error
    reply = await _sync(caller, created.data["id"])
    assert recorder.requests, reply
    assert reply.ok, reply.error


@pytest.mark.parametrize(
    "respond",
    [
        lambda _: web.Response(status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}),
        lambda _: web.Response(
            status=401, headers={"WWW-Authenticate": 'Bearer realm="http://10.9.8.7/token",service="r"'}
        ),
    ],
    ids=["redirect", "token-realm"],
)
async def test_a_registry_cannot_point_the_service_inward(caller: Caller, recorder: Recorder, respond) -> None:
    recorder.respond = respond
    created = await caller.command(
        c.CREATE_COMPONENT, c.CreateComponent, name="api", image_repository=f"{recorder.address}/shop/api"
    )
    assert created.ok, created.error
    reply = await _sync(caller, created.data["id"])
    assert (reply.error.code, reply.error.status) == ("REL_REGISTRY_ADDRESS_FORBIDDEN", 422)
    assert len(recorder.requests) == 1
