"""The web dashboard under load: 50 users signed in at once, each loading 200 pages, against the whole system.

Starts every service and the gateway as processes on a throwaway database and NATS namespace (the Postgres
and NATS of STELLA_DATABASE_URL / STELLA_NATS_URL, or the local defaults), as ``make run`` does, bootstraps a
tenant with environments, ready releases and deployed promotions (the environments have no targets, so an
approved promotion deploys at once), and one viewer principal per user. Each user is an aiohttp session with
its own cookie jar that signs in through the sign-in form, then walks the dashboard's pages in turn (overview,
releases, a release, promotions, a promotion, its deployment, approvals, deployments, freeze calendar,
evidence). Prints p50/p95/max page latency, overall and per page, and the page views per second.

Every page must answer 200: a page that does not is a missed goal (the run exits non-zero).

    uv run python tests/bench/dashboard.py [--users N] [--views M] [--environments E] [--releases R]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from collections import Counter, defaultdict

import aiohttp

from stella.testing.system import System, percentile, sandbox

SERVICES = ("release", "promotion", "approval", "workflow", "evidence", "events", "deployment")
DIGEST = "sha256:" + "a" * 64
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def seed(
    system: System, session: aiohttp.ClientSession, environments: int, releases: int
) -> tuple[list[str], list[str]]:
    """Environments, ready releases each promoted to the first environment; returns (releases, promotions)."""
    envs = []
    for i in range(environments):
        env = await system.call(session, "POST", "/environments", {"name": f"env-{i}", "order_index": i})
        envs.append(env["id"])
    await system.call(
        session,
        "POST",
        "/components",
        {
            "name": "api",
            "image_repository": "registry.invalid/shop/api",
            "versioning_strategy": {"resolve": "version-map"},
        },
    )
    made: list[str] = []
    promoted: list[str] = []
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        async with gate:
            body = {"name": f"shop-{i}", "components": [{"component": "api", "digest": DIGEST}]}
            release = await system.call(session, "POST", "/releases", body)
            await system.call(session, "POST", f"/releases/{release['id']}/ready")
            made.append(release["id"])
            body = {"release_id": release["id"], "target_environment_id": envs[0], "reason": "bench"}
            promoted.append((await system.call(session, "POST", "/promotions", body))["id"])

    await asyncio.gather(*(one(i) for i in range(releases)))
    # Wait until the promotions settled, so the pages show deployed promotions with their evidence.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        page = await system.call(session, "GET", "/promotions?status=deployed&page_size=500")
        if len(page["items"]) >= len(promoted):
            break
        await asyncio.sleep(0.5)
    return made, promoted


async def viewers(system: System, session: aiohttp.ClientSession, count: int) -> list[str]:
    """``count`` viewer principals, a token each."""
    tokens = []
    for i in range(count):
        principal = await system.call(
            session, "POST", "/principals", {"name": f"viewer-{i}", "kind": "user", "roles": ["viewer"]}
        )
        token = await system.call(session, "POST", "/tokens", {"principal_id": principal["id"]})
        tokens.append(token["token"])
    return tokens


async def user(
    root: str,
    connector: aiohttp.BaseConnector,
    token: str,
    paths: list[tuple[str, str]],
    views: int,
    offset: int,
    timings: dict[str, list[float]],
    failures: list[str],
) -> None:
    """One browser: sign in through the form, then load ``views`` pages in turn."""
    jar = aiohttp.CookieJar(unsafe=True)  # cookies of 127.0.0.1
    async with aiohttp.ClientSession(connector=connector, connector_owner=False, cookie_jar=jar) as browser:
        async with browser.get(f"{root}/ui/sign-in") as resp:
            nonce = _CSRF.search(await resp.text())
        assert nonce is not None
        form = {"token": token, "csrf_token": nonce.group(1)}
        async with browser.post(f"{root}/ui/sign-in", data=form, allow_redirects=False) as resp:
            if resp.status != 303:
                failures.append(f"sign-in: {resp.status}")
                return
        for i in range(views):
            name, path = paths[(offset + i) % len(paths)]
            started = time.perf_counter()
            async with browser.get(f"{root}{path}", allow_redirects=False) as resp:
                await resp.read()
                elapsed = time.perf_counter() - started
                if resp.status != 200:
                    failures.append(f"{name}: {resp.status}")
            timings[name].append(elapsed)


async def main(args: argparse.Namespace) -> int:
    timings: dict[str, list[float]] = defaultdict(list)
    failures: list[str] = []
    async with sandbox() as box:
        system = System(SERVICES, box.env, box.logs)
        connector = aiohttp.TCPConnector(limit=args.users * 2, keepalive_timeout=2)
        try:
            async with aiohttp.ClientSession(connector=connector, connector_owner=False) as session:
                system.start()
                await system.ready(session, box.nc, box.names)
                system.bootstrap(f"bench-{box.names.namespace}")
                started = time.perf_counter()
                releases, promoted = await seed(system, session, args.environments, args.releases)
                tokens = await viewers(system, session, args.users)
                print(
                    f"seeded {args.environments} environments, {len(releases)} releases and promotions, "
                    f"{len(tokens)} viewers in {time.perf_counter() - started:.1f} s; logs in {box.logs}",
                    flush=True,
                )
            root = system.base.removesuffix("/api/v1")
            paths = [
                ("overview", "/ui"),
                ("releases", "/ui/releases"),
                ("release", f"/ui/releases/{releases[0]}"),
                ("promotions", "/ui/promotions"),
                ("promotion", f"/ui/promotions/{promoted[0]}"),
                ("deployment", f"/ui/promotions/{promoted[0]}/deployment"),
                ("approvals", "/ui/approvals"),
                ("deployments", "/ui/deployments"),
                ("freeze", "/ui/freeze"),
                ("evidence", "/ui/evidence"),
            ]
            started = time.perf_counter()
            await asyncio.gather(
                *(
                    user(root, connector, token, paths, args.views, i, timings, failures)
                    for i, token in enumerate(tokens)
                )
            )
            elapsed = time.perf_counter() - started
        finally:
            system.stop()
            await connector.close()

    every = [t for values in timings.values() for t in values]
    print(
        f"{args.users} users x {args.views} page views = {len(every)} pages in {elapsed:.1f} s "
        f"({len(every) / elapsed:.0f} pages/s)"
    )
    print(
        f"all pages: p50 {statistics.median(every) * 1e3:.0f} ms, p95 {percentile(every, 0.95) * 1e3:.0f} ms, "
        f"max {max(every) * 1e3:.0f} ms"
    )
    for name, _ in paths:
        values = timings[name]
        if not values:
            print(f"  {name:12s} n=    0  (not loaded in this run)")
            continue
        print(
            f"  {name:12s} n={len(values):5d}  p50 {statistics.median(values) * 1e3:6.0f} ms  "
            f"p95 {percentile(values, 0.95) * 1e3:6.0f} ms"
        )
    if failures:
        by_page = ", ".join(f"{what} x{count}" for what, count in Counter(failures).most_common())
        print(f"GOAL MISSED: {len(failures)} page loads did not answer 200: {by_page}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=50, help="users signed in at once")
    parser.add_argument("--views", type=int, default=200, help="page views per user")
    parser.add_argument("--environments", type=int, default=5, help="environments of the tenant")
    parser.add_argument("--releases", type=int, default=50, help="ready releases, each promoted to the first")
    sys.exit(asyncio.run(main(parser.parse_args())))
