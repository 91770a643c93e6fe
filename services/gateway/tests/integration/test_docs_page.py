"""The interactive API docs render the OpenAPI 3.1 document in a real browser, offline.

Debian's Chromium is driven by Playwright (``playwright install`` cannot download browsers here; CI installs
the ``chromium`` package). The gateway is served over TCP by uvicorn, as in production.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from stella.kit.embedded import free_port

from .conftest import Gateway

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (`apt-get install -y chromium`; .ci/run installs it)",
)


@pytest.fixture
async def served(gateway: Gateway) -> AsyncIterator[str]:
    """The gateway on a TCP port of its own (its lifespan is already running)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(gateway.app, host="127.0.0.1", port=port, lifespan="off", log_config=None))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_the_docs_page_renders_every_operation_without_the_network(served: str) -> None:
    from playwright.async_api import async_playwright

    async with httpx.AsyncClient() as client:
        document = (await client.get(f"{served}/api/v1/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    operations = [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "delete", "patch"}
    ]
    assert len(operations) > 20

    requested: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"{served}/api/docs", wait_until="networkidle")
            await page.wait_for_selector(".opblock", timeout=30_000)
            body = await page.inner_text("body")
            assert "Unable to render this definition" not in body
            assert "Stella Release Orchestrator API" in body
            shown = await page.eval_on_selector_all(
                ".opblock",
                """blocks => blocks.map(b => [
                    b.querySelector('.opblock-summary-method').textContent.trim(),
                    b.querySelector('.opblock-summary-path').getAttribute('data-path')
                ])""",
            )
            # An operation with two tags is shown under both.
            assert set(map(tuple, shown)) == set(operations)
            # Expanding an operation shows its parameters and responses.
            await page.click("#operations-components-createComponent .opblock-summary")
            await page.wait_for_selector("#operations-components-createComponent .responses-table", timeout=10_000)
            assert errors == []
        finally:
            await browser.close()
    # Offline: every script, style and image came from the gateway itself.
    assert requested and all(url.startswith(served) or url.startswith("data:") for url in requested), requested
