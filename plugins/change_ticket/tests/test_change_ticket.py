"""The change-ticket gate plugin, run through the isolated runner against a local ticket API."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from stella.plugins import GATE_METHOD, InstalledPlugin, PluginRunner, load_plugin

TICKETS = {"CHG-1": "approved", "CHG-2": "pending", "CHG-3": "implemented"}


@pytest.fixture(scope="module")
def plugin() -> InstalledPlugin:
    return load_plugin(Path(__file__).parents[1])


@pytest.fixture
async def ticket_api() -> AsyncIterator[str]:
    async def ticket(request: web.Request) -> web.Response:
        status = TICKETS.get(request.match_info["ticket"])
        if status is None:
            return web.json_response({"error": "no such ticket"}, status=404)
        return web.json_response({"id": request.match_info["ticket"], "status": status})

    async def broken(request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>")

    app = web.Application()
    app.router.add_get("/changes/{ticket}", ticket)
    app.router.add_get("/broken/{ticket}", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def evaluate(plugin: InstalledPlugin, config: dict[str, Any], reason: str | None = None) -> Any:
    params = {"config": config, "promotion": {"reason": reason}, "release": {}, "environment": {}}
    return await PluginRunner().call(plugin, GATE_METHOD, params)


async def test_an_approved_ticket_allows(plugin: InstalledPlugin, ticket_api: str) -> None:
    verdict = await evaluate(plugin, {"url": f"{ticket_api}/changes", "ticket": "CHG-1"})
    assert verdict["allow"] is True
    assert verdict["details"] == {"ticket": "CHG-1", "status": "approved"}


async def test_a_pending_ticket_denies_with_its_status(plugin: InstalledPlugin, ticket_api: str) -> None:
    verdict = await evaluate(plugin, {"url": f"{ticket_api}/changes", "ticket": "CHG-2"})
    assert verdict["allow"] is False
    assert verdict["reason_codes"] == ["CHANGE_TICKET_NOT_APPROVED"]
    assert "pending" in verdict["message"]


async def test_other_approved_statuses_can_be_configured(plugin: InstalledPlugin, ticket_api: str) -> None:
    config = {"url": f"{ticket_api}/changes", "ticket": "CHG-3", "approved_statuses": ["approved", "implemented"]}
    assert (await evaluate(plugin, config))["allow"] is True


async def test_the_ticket_is_found_in_the_promotion_reason(plugin: InstalledPlugin, ticket_api: str) -> None:
    verdict = await evaluate(plugin, {"url": f"{ticket_api}/changes"}, reason="hotfix for CHG-1, reviewed")
    assert verdict["allow"] is True
    missing = await evaluate(plugin, {"url": f"{ticket_api}/changes"}, reason="no ticket here")
    assert missing["allow"] is False
    assert missing["reason_codes"] == ["CHANGE_TICKET_MISSING"]


async def test_an_unknown_ticket_denies(plugin: InstalledPlugin, ticket_api: str) -> None:
    verdict = await evaluate(plugin, {"url": f"{ticket_api}/changes", "ticket": "CHG-404"})
    assert (verdict["allow"], verdict["reason_codes"]) == (False, ["CHANGE_TICKET_NOT_FOUND"])


async def test_an_answer_without_status_denies(plugin: InstalledPlugin, ticket_api: str) -> None:
    verdict = await evaluate(plugin, {"url": f"{ticket_api}/broken", "ticket": "CHG-1"})
    assert (verdict["allow"], verdict["reason_codes"]) == (False, ["CHANGE_TICKET_API_ERROR"])


async def test_an_unreachable_api_denies(plugin: InstalledPlugin) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        verdict = await evaluate(plugin, {"url": f"http://127.0.0.1:{port}/changes", "ticket": "CHG-1"})
    assert (verdict["allow"], verdict["reason_codes"]) == (False, ["CHANGE_TICKET_API_UNREACHABLE"])


def test_the_config_schema_refuses_what_the_plugin_cannot_use(plugin: InstalledPlugin) -> None:
    manifest = plugin.manifest
    assert manifest.config_errors({"url": "https://tickets.example/api"}) == []
    assert manifest.config_errors({}) == ["(config): 'url' is a required property"]
    assert manifest.config_errors({"url": "file:///etc/passwd"}) != []
    assert manifest.config_errors({"url": "https://x", "colour": "red"}) != []
