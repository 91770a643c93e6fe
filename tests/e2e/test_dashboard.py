"""The dashboard in a real browser against every service: sign in, the overview matrix, the approvals inbox
with separation of duties, a promotion's decision record, cookie flags, CSP, tenant scoping, accessibility;
the first load of the overview at 50 environments x 200 releases (printed); a deployment on a real agent
followed live without reloading, rolled back, a drifted target remediated, and the agents page.

Debian's Chromium is driven by Playwright (the Playwright browser download cannot be reached here). axe-core
(tests/e2e/assets/axe-core, from its npm package) runs in each page; it is injected in a context that
bypasses the page's Content-Security-Policy, since that policy rightly allows only the gateway's own script.
Screenshots of each page are saved under the test's output directory.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stella.testing.docker import DockerEngine, DockerJanitor
from stella.testing.images import AppImages

from .conftest import Stack
from .deployments import Agents, container_of, deploy, environment, promote, release, target
from .test_deployments import agents, deploy_stack, fast_agents  # noqa: F401 (fixtures of the live deployment test)
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
            assert "default-src 'none'" in csp and "script-src 'self';" in csp and "unsafe-inline" not in csp

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


@pytest.mark.timeout(900)
async def test_the_first_load_of_the_overview_at_50_environments_by_200_releases(
    full_stack: Stack, tmp_path: Path
) -> None:
    """Measured and printed (the goal is under 1 s on this machine), not asserted on time. The first
    environment needs an approval, so the 200 promotions settle waiting for it (no deployments to wait for)."""
    from playwright.async_api import async_playwright

    stack = full_stack
    base = stack.base
    shots = tmp_path / "screenshots"
    shots.mkdir()
    environments = [
        await _environment(stack, f"env-{i:02d}", i, **({"required_approvals": 1} if i == 0 else {})) for i in range(50)
    ]
    gate = asyncio.Semaphore(4)

    async def promoted(i: int) -> None:
        async with gate:
            release = await _release(stack, f"shop-{i:03d}")
            body = {"release_id": release, "target_environment_id": environments[0], "reason": "load"}
            key = {"Idempotency-Key": uuid.uuid4().hex}
            for _ in range(10):  # a loaded machine may answer 503 "queued": the same key gets its result
                status, promotion, _ = await stack.call("POST", "/api/v1/promotions", json=body, headers=key)
                if status != 503:
                    break
            assert status == 201, promotion

    started = time.perf_counter()
    await asyncio.gather(*(promoted(i) for i in range(200)))
    await stack.until(
        "/api/v1/promotions?status=pending_approval&page_size=500",
        lambda body: len(body["items"]) >= 200,
        timeout=600,
    )
    print(f"seeded 50 environments x 200 releases in {time.perf_counter() - started:.1f} s")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            await _sign_in(page, base, stack.token)
            loads = []
            for _ in range(3):  # the first load, then two more to see the spread
                fresh = await context.new_page()
                begun = time.perf_counter()
                await fresh.goto(f"{base}/ui", wait_until="load")
                loads.append(time.perf_counter() - begun)
                timing = await fresh.evaluate(
                    "() => { const n = performance.getEntriesByType('navigation')[0];"
                    " return [n.responseStart - n.requestStart, n.loadEventEnd - n.startTime]; }"
                )
                await fresh.close()
            print(
                f"first load of the overview at 50 environments x 200 releases: {loads[0]:.3f} s "
                f"(server answer {timing[0] / 1000:.3f} s, load event {timing[1] / 1000:.3f} s of the last; "
                f"next loads {', '.join(f'{t:.3f} s' for t in loads[1:])})"
            )
            await page.goto(f"{base}/ui")
            matrix = page.get_by_role("table", name="Releases by environment")
            assert await matrix.locator("thead th").count() == 51
            assert await matrix.locator("tbody tr").count() == 200
            await page.screenshot(path=str(shots / "overview-50x200.png"))
        finally:
            await browser.close()
    print(f"screenshots in {shots}")


# Records, in the page, each event the live script receives from the stream (and each time the stream opens)
# and each fetch of a live fragment, on one clock: what proves that every fetch followed an event.
WATCH_LIVE = """
(() => {
  const log = (window.stellaLive = []);
  const now = () => performance.now();
  const NativeEventSource = window.EventSource;
  window.EventSource = function (url, options) {
    const source = new NativeEventSource(url, options);
    source.addEventListener("open", () => log.push({ kind: "open", at: now() }));
    const add = source.addEventListener.bind(source);
    source.addEventListener = (type, listener, more) =>
      add(type, (event) => { log.push({ kind: type, at: now() }); listener(event); }, more);
    return source;
  };
  const nativeFetch = window.fetch;
  window.fetch = function (input, init) {
    if (String(input).includes("/deployment/job")) {
      log.push({ kind: "fetch", at: now() });
    }
    return nativeFetch.call(this, input, init);
  };
})();
"""


def _fetches_without_a_cause(log: list[dict[str, Any]]) -> list[int]:
    """The fragment fetches (by index) with no stream event (or stream opening) since the fetch before them.

    The script fetches when an event arrives, or once more after the fetch in flight when events arrived during
    it; a fetch made on a timer has no event between it and the one before.
    """
    causeless = []
    previous = float("-inf")
    fetches = [entry["at"] for entry in log if entry["kind"] == "fetch"]
    causes = [entry["at"] for entry in log if entry["kind"] != "fetch"]
    for index, at in enumerate(fetches):
        if not any(previous < cause <= at for cause in causes):
            causeless.append(index)
        previous = at
    return causeless


async def test_a_deployment_followed_live_then_rolled_back_a_drift_remediated_and_the_agents_page(
    deploy_stack: Stack,  # noqa: F811 (the fixture imported above)
    agents: Agents,  # noqa: F811
    app_images: AppImages,
    docker_engine: DockerEngine,
    docker_janitor: DockerJanitor,
    tmp_path: Path,
) -> None:
    from playwright.async_api import async_playwright

    stack = deploy_stack
    base = stack.base
    shots = tmp_path / "screenshots"
    shots.mkdir()
    agent = await agents.start("edge-1", STELLA_AGENT_LABELS="region=eu-west-1")
    dev = await environment(stack, "dev", 0, {"strategy": "all-at-once"})
    web = await target(stack, docker_janitor, dev, "web-1", agent)
    await deploy(stack, "shop-1", {"web": app_images.v1}, dev)
    second = await release(stack, "shop-2", {"web": app_images.v2})

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            await page.add_init_script(WATCH_LIVE)
            fragment_requests: list[str] = []
            page.on(
                "request",
                lambda request: fragment_requests.append(request.url) if "/deployment/job" in request.url else None,
            )
            await _sign_in(page, base, stack.token)

            # The deployment page of a promotion just requested follows it to the end without a reload, each
            # refresh of its job section caused by an event of the stream (the job's and its tasks'), none by
            # a timer.
            promotion = await promote(stack, second["id"], dev)
            await page.goto(f"{base}/ui/promotions/{promotion['id']}/deployment")
            await page.evaluate("() => { window.stellaSamePage = true; }")
            first = await page.locator("#job").inner_text()
            # Not ended when the page first shows it (its progress line may read "0 of 1 tasks succeeded").
            job_status = " ".join(await page.locator("#job-status").all_inner_texts())
            assert "succeeded" not in job_status, first
            await page.locator("#job-status", has_text="succeeded").wait_for(timeout=180_000)
            assert await page.evaluate("() => window.stellaSamePage === true")  # never reloaded
            assert int(await page.evaluate("() => document.body.dataset.liveUpdates || '0'")) >= 1
            assert "web-1" in await page.get_by_role("table", name="Tasks").inner_text()
            assert await page.locator("#job-note").inner_text() == "Live updates ended: the deployment is over."
            live = await page.evaluate("() => window.stellaLive")
            received = [entry["kind"] for entry in live if entry["kind"] not in ("open", "fetch")]
            assert "org.stellaops.deployment.tasks_progressed" in received, live
            assert _fetches_without_a_cause(live) == [], live
            fetched = sum(1 for entry in live if entry["kind"] == "fetch")
            assert fetched >= 1 and len(fragment_requests) == fetched, (fragment_requests, live)
            # Over: the stream is closed and nothing is fetched any more.
            settled = len(fragment_requests)
            await page.wait_for_timeout(3_000)
            assert len(fragment_requests) == settled
            await page.screenshot(path=str(shots / "deployment-live.png"), full_page=True)
            deployment_path = page.url.removeprefix(base)

            # Roll the finished job back from the page: the target runs shop-1 again.
            await page.get_by_label("Reason for the rollback").fill("shop-2 misbehaves")
            await page.get_by_role("button", name="Roll back this deployment").click()
            await page.wait_for_url(f"{base}{deployment_path}")
            await stack.until(
                f"/api/v1/targets/{web['id']}",
                lambda t: t["current"].get("web") == app_images.v1.digest,
                timeout=180,
            )
            await page.screenshot(path=str(shots / "deployment-rolled-back.png"), full_page=True)

            # Drift made by hand, reported, then remediated from the deployments page.
            running = container_of(docker_engine, web["id"])
            name = running["Name"].lstrip("/")
            docker_engine.pull(app_images.v2.ref)
            docker_engine.client.api.remove_container(running["Id"], force=True)
            docker_engine.client.containers.run(
                app_images.v2.ref, name=name, detach=True, labels=running["Config"]["Labels"]
            )
            status, body, _ = await stack.call("POST", f"/api/v1/targets/{web['id']}/check-drift")
            assert status in (200, 202), body
            await stack.until(f"/api/v1/targets/{web['id']}", lambda t: t["drift_detected"], timeout=60)
            await page.goto(f"{base}/ui/deployments")
            assert "drifted" in await page.get_by_role("table", name="Targets").inner_text()
            await page.screenshot(path=str(shots / "deployments-drift.png"), full_page=True)
            await page.get_by_role("button", name="Remediate web-1").click()
            await page.get_by_role("status").wait_for()
            assert "Remediation started" in await page.get_by_role("status").inner_text()
            await stack.until(
                f"/api/v1/targets/{web['id']}",
                lambda t: not t["drift_detected"] and t["current"].get("web") == app_images.v1.digest,
                timeout=180,
            )

            # The agents page: status, heartbeat, version, capabilities and labels.
            await page.get_by_role("link", name="Agents").click()
            agents_table = await page.get_by_role("table", name="Agents").inner_text()
            assert "edge-1" in agents_table and "online" in agents_table and "docker" in agents_table
            assert "region=eu-west-1" in agents_table
            await page.screenshot(path=str(shots / "agents.png"), full_page=True)

            violations = await _serious_violations(
                browser, base, stack.token, [deployment_path, "/ui/deployments", "/ui/agents"]
            )
            assert violations == {path: [] for path in violations}, violations
        finally:
            await browser.close()
    print(f"screenshots in {shots}")
