"""The dashboard in a real browser against every service: sign in, the overview matrix, the approvals inbox
with separation of duties, a promotion's decision record, cookie flags, CSP, tenant scoping, accessibility.

Debian's Chromium is driven by Playwright (the Playwright browser download cannot be reached here). axe-core
(tests/e2e/assets/axe-core, from its npm package) runs in each page; it is injected in a context that
bypasses the page's Content-Security-Policy, since that policy rightly allows no script at all.
Screenshots of each page are saved under the test's output directory.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from .conftest import Stack
from .test_promotions import _environment, _promote, _release, _settled

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path("/usr/bin/chromium").exists() and shutil.which("chromium") is None,
        reason="Debian's chromium is not installed (`apt-get install -y chromium`)",
    ),
]

CHROMIUM = str(Path("/usr/bin/chromium") if Path("/usr/bin/chromium").exists() else shutil.which("chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
AXE = Path(__file__).parent / "assets" / "axe-core" / "axe.min.js"


async def _sign_in(page: Any, base: str, token: str) -> None:
    await page.goto(f"{base}/ui/sign-in")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base}/ui")


async def _serious_violations(browser: Any, base: str, token: str, paths: list[str]) -> dict[str, list[str]]:
    """axe-core's serious and critical violations of each page, by path."""
    context = await browser.new_context(bypass_csp=True)
    found: dict[str, list[str]] = {}
    try:
        page = await context.new_page()
        await _sign_in(page, base, token)
        for path in paths:
            await page.goto(f"{base}{path}")
            await page.add_script_tag(path=str(AXE))
            result = await page.evaluate("async () => (await axe.run(document)).violations")
            found[path] = [
                f"{v['id']} ({v['impact']}): {v['help']}" for v in result if v["impact"] in ("serious", "critical")
            ]
        await page.goto(f"{base}/ui/sign-in")
    finally:
        await context.close()
    return found


async def test_sign_in_matrix_approvals_with_separation_of_duties_and_security(
    full_stack: Stack, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    stack = full_stack
    base = stack.base
    shots = tmp_path / "screenshots"
    shots.mkdir()
    dev = await _environment(stack, "dev", 0)
    prod = await _environment(stack, "prod", 1, required_approvals=1, require_sod=True)
    release = await _release(stack, "shop-1")
    _, bob_token = await stack.principal("bob", ["approver"])
    to_dev = await _promote(stack, release, dev)
    await _settled(stack, to_dev["id"], expect="deployed")
    to_prod = await _promote(stack, release, prod)
    await _settled(stack, to_prod["id"], expect="pending_approval")
    other_token = stack.bootstrap(f"other-{uuid.uuid4().hex[:12]}")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # The requester signs in and sees the matrix.
            requester = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await requester.new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            started = time.perf_counter()
            await _sign_in(page, base, stack.token)
            print(f"sign-in and first load of the overview: {time.perf_counter() - started:.3f} s")
            matrix = page.get_by_role("table", name="Releases by environment")
            headers = await matrix.locator("thead th").all_inner_texts()
            assert [h.split("\n")[0] for h in headers] == ["Release", "dev", "prod"]
            row = await matrix.locator("tbody tr").first.inner_text()
            assert "shop-1" in row and "deployed" in row and "pending_approval" in row
            await page.screenshot(path=str(shots / "overview.png"), full_page=True)
            assert all(url.startswith(base) for url in requested), requested

            # Security: the cookie's flags, and the CSP header of the page.
            [cookie] = [c for c in await requester.cookies() if c["name"] == "stella_session"]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
            response = await page.goto(f"{base}/ui/approvals")
            assert response is not None
            csp = (await response.all_headers())["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src" not in csp

            # The requester may not approve: separation of duties, said plainly.
            await page.get_by_role("button", name="Approve").click()
            alert = page.get_by_role("alert")
            await alert.wait_for()
            assert "PROM_SOD_VIOLATION" in await alert.inner_text()
            await page.screenshot(path=str(shots / "approvals-sod.png"), full_page=True)

            # A form posted without its CSRF token (as another site would) is refused.
            forged = await page.request.post(
                f"{base}/ui/promotions/{to_prod['id']}/vote", form={"action": "approved"}, max_redirects=0
            )
            assert forged.status == 403

            # A second principal approves from the inbox.
            approver = await browser.new_context(viewport={"width": 390, "height": 844})
            bob = await approver.new_page()
            await _sign_in(bob, base, bob_token)
            await bob.goto(f"{base}/ui/approvals")
            await bob.get_by_label("Comment").fill("ship it")
            await bob.get_by_role("button", name="Approve").click()
            await bob.wait_for_url(f"{base}/ui/approvals")
            await _settled(stack, to_prod["id"], expect="deployed")
            await stack.until(f"/api/v1/promotions/{to_prod['id']}/evidence", lambda b: len(b["items"]) >= 1)
            await bob.goto(f"{base}/ui/promotions/{to_prod['id']}")
            decision = bob.get_by_role("table", name="Decision record")
            assert "approval" in await decision.inner_text()
            await bob.screenshot(path=str(shots / "promotion.png"), full_page=True)

            # Its evidence, verified: each check shown.
            await bob.get_by_role("link", name="Verify").first.click()
            assert "Verified: every check holds." in await bob.get_by_role("status").inner_text()
            checks = await bob.get_by_role("table", name="Checks").inner_text()
            assert "FAILS" not in checks and "holds" in checks
            verify_path = bob.url.removeprefix(base)
            await bob.screenshot(path=str(shots / "evidence.png"), full_page=True)

            # Another tenant's object URL is a 404, as in the API.
            outsider = await browser.new_context()
            stranger = await outsider.new_page()
            await _sign_in(stranger, base, other_token)
            answer = await stranger.goto(f"{base}/ui/promotions/{to_prod['id']}")
            assert answer is not None and answer.status == 404

            violations = await _serious_violations(
                browser, base, stack.token, ["/ui", "/ui/approvals", f"/ui/promotions/{to_prod['id']}", verify_path]
            )
            assert violations == {path: [] for path in violations}, violations
        finally:
            await browser.close()
    print(f"screenshots in {shots}")


async def test_releases_promotions_deployments_freeze_and_evidence_pages_with_sign_out(
    full_stack: Stack, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    stack = full_stack
    base = stack.base
    shots = tmp_path / "screenshots"
    shots.mkdir()
    await _environment(stack, "dev", 0)
    prod = await _environment(stack, "prod", 1)
    now = datetime.now(UTC)
    status, window, _ = await stack.call(
        "POST",
        f"/api/v1/environments/{prod}/freeze-windows",
        json={
            "kind": "deny",
            "start": (now - timedelta(hours=1)).isoformat(),
            "end": (now + timedelta(days=2)).isoformat(),
            "reason": "year-end freeze",
        },
    )
    assert status == 201, window
    release = await _release(stack, "shop-9")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
            page = await context.new_page()
            await _sign_in(page, base, stack.token)

            # Releases: filter by name, open the release, promote it to the next environment.
            await page.get_by_role("link", name="Releases").click()
            await page.get_by_label("Name starts with").fill("shop-9")
            await page.get_by_role("button", name="Filter").click()
            await page.get_by_role("link", name="shop-9").click()
            assert await page.get_by_role("table", name="Images").inner_text()
            await page.screenshot(path=str(shots / "release.png"), full_page=True)
            assert await page.get_by_role("button", name="Promote to prod").count() == 0
            await page.get_by_label("Reason for dev").fill("first stop")
            await page.get_by_role("button", name="Promote to dev").click()
            await page.wait_for_url(f"{base}/ui/promotions/*")
            promotion_id = page.url.rsplit("/", 1)[-1]
            await _settled(stack, promotion_id, expect="deployed")
            await stack.until(f"/api/v1/promotions/{promotion_id}/evidence", lambda b: len(b["items"]) >= 2)

            # The promotion: its timeline, then its deployment page (no targets here: deployed at once).
            await page.reload()
            assert "gates" in await page.get_by_role("table", name=re.compile("^Timeline")).inner_text()
            await page.screenshot(path=str(shots / "promotion-timeline.png"), full_page=True)
            await page.get_by_role("link", name="Deployment and targets").click()
            await page.get_by_role("heading", name="Deployment of shop-9 to dev").wait_for()
            assert await page.locator('meta[http-equiv="refresh"]').count() == 0  # it ended: no more reloads
            await page.screenshot(path=str(shots / "deployment.png"), full_page=True)

            # The release now shows where it went and offers the next environment.
            await page.goto(f"{base}/ui/releases/{release}")
            environments = await page.get_by_role("table", name="Environments").inner_text()
            assert "dev\tyes" in environments and "prod\tno" in environments
            assert await page.get_by_role("button", name="Promote to prod").count() == 1

            # Promotions filtered by status and environment.
            await page.goto(f"{base}/ui/promotions")
            await page.get_by_label("Status").select_option("deployed")
            await page.get_by_label("Environment").select_option(label="dev")
            await page.get_by_role("button", name="Filter").click()
            listed = await page.get_by_role("table", name="Promotions").inner_text()
            assert "shop-9" in listed and "deployed" in listed

            # Freeze calendar: prod is frozen until its window ends, shown in the chosen zone.
            await page.goto(f"{base}/ui/freeze")
            await page.get_by_label("Show times in (IANA time zone)").fill("Asia/Tokyo")
            await page.get_by_role("button", name="Show").click()
            calendar = await page.locator("main").inner_text()
            assert "year-end freeze" in calendar and "+09:00" in calendar and "frozen" in calendar
            await page.screenshot(path=str(shots / "freeze.png"), full_page=True)

            # Evidence: filter by type, verify one, export a bundle.
            await page.goto(f"{base}/ui/evidence")
            await page.get_by_label("Type").select_option("deployment")
            await page.get_by_role("button", name="Filter").click()
            packets = await page.get_by_role("table", name="Evidence packets").inner_text()
            assert "deployment" in packets and "release_decision" not in packets
            await page.screenshot(path=str(shots / "evidence-list.png"), full_page=True)
            async with page.expect_download() as download_info:
                await page.get_by_role("button", name="Download bundle").click()
            download = await download_info.value
            bundle = tmp_path / download.suggested_filename
            await download.save_as(bundle)
            assert bundle.read_bytes()[:2] == b"\x1f\x8b"  # a gzip stream
            await page.get_by_role("link", name="Verify").first.click()
            assert "Verified: every check holds." in await page.get_by_role("status").inner_text()

            violations = await _serious_violations(
                browser,
                base,
                stack.token,
                [
                    "/ui/releases",
                    f"/ui/releases/{release}",
                    "/ui/promotions",
                    f"/ui/promotions/{promotion_id}",
                    f"/ui/promotions/{promotion_id}/deployment",
                    "/ui/deployments",
                    "/ui/freeze",
                    "/ui/evidence",
                ],
            )
            assert violations == {path: [] for path in violations}, violations

            # Sign-out ends the session on the server: a copy of the cookie signs nobody in afterwards.
            [cookie] = [c for c in await context.cookies() if c["name"] == "stella_session"]
            assert cookie["value"] != stack.token
            await page.goto(f"{base}/ui")
            await page.get_by_role("button", name="Sign out").click()
            await page.wait_for_url(f"{base}/ui/sign-in")
            thief = await browser.new_context()
            await thief.add_cookies(
                [{"name": cookie["name"], "value": cookie["value"], "url": f"{base}/ui", "sameSite": "Strict"}]
            )
            stolen = await thief.new_page()
            await stolen.goto(f"{base}/ui/releases")
            assert stolen.url == f"{base}/ui/sign-in"
        finally:
            await browser.close()
    print(f"screenshots in {shots}")
