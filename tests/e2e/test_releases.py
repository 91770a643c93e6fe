"""Components, versions and releases through the public API, against a real local OCI registry."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from nats.aio.client import Client

from stella.contracts.streams import EVENTS, HEADER_MSG_ID
from stella.testing.messaging import collect_messages
from stella.testing.registry import LocalRegistry, push_image

from .conftest import Stack

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"


def _problem(status: int, body: dict, headers: dict[str, str], code: str) -> None:
    assert headers["Content-Type"].startswith(PROBLEM), headers
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["trace_id"]
    assert body["title"]


async def test_component_versions_release_lifecycle(
    stack: Stack, oci_registry: LocalRegistry, registry_repo: str
) -> None:
    digests = {t: push_image(oci_registry.url, registry_repo, t) for t in ("1.0.0", "1.1.0", "latest")}
    status, component, headers = await stack.call(
        "POST",
        "/api/v1/components",
        json={"name": "shop-api", "image_repository": f"{oci_registry.address}/{registry_repo}"},
    )
    assert status == 201, component
    assert headers["Location"].endswith(f"/api/v1/components/{component['id']}")

    status, sync, _ = await stack.call("POST", f"/api/v1/components/{component['id']}/sync-versions")
    assert status == 200, sync
    assert (sync["tags_seen"], sync["resolved"]) == (3, 3)
    status, versions, _ = await stack.call("GET", f"/api/v1/components/{component['id']}/versions")
    assert {v["tag"]: v["digest"] for v in versions["items"]} == digests

    status, release, _ = await stack.call(
        "POST",
        "/api/v1/releases",
        json={
            "name": "shop-2026-11",
            "components": [{"component": "shop-api", "tag": "1.1.0"}],
            "source_ref": {"commit": "abc123"},
        },
    )
    assert status == 201, release
    assert release["status"] == "draft"
    assert release["components"][0]["digest"] == digests["1.1.0"]

    status, read, _ = await stack.call("GET", f"/api/v1/releases/{release['id']}")
    assert status == 200
    assert read["components"] == release["components"]

    status, ready, _ = await stack.call("POST", f"/api/v1/releases/{release['id']}/ready")
    assert status == 200, ready
    assert ready["status"] == "ready"

    status, body, headers = await stack.call(
        "PUT", f"/api/v1/releases/{release['id']}", json={"components": [{"component": "shop-api", "tag": "1.0.0"}]}
    )
    _problem(409, body, headers, "REL_IMMUTABLE")
    status, after, _ = await stack.call("GET", f"/api/v1/releases/{release['id']}")
    assert after["components"][0]["digest"] == digests["1.1.0"]

    status, listed, _ = await stack.call("GET", "/api/v1/releases?status=ready&page_size=10")
    assert [r["id"] for r in listed["items"]] == [release["id"]]


async def test_bad_input_gets_a_specific_error_and_changes_nothing(
    stack: Stack, oci_registry: LocalRegistry, make_oci_registry, registry_repo: str
) -> None:
    push_image(oci_registry.url, registry_repo, "1.0.0")
    status, _, _ = await stack.call(
        "POST",
        "/api/v1/components",
        json={"name": "api", "image_repository": f"{oci_registry.address}/{registry_repo}"},
    )
    assert status == 201

    status, body, headers = await stack.call(
        "POST", "/api/v1/releases", json={"name": "r1", "components": [{"component": "api", "tag": "no-such-tag"}]}
    )
    _problem(422, body, headers, "REL_UNKNOWN_TAG")
    status, body, headers = await stack.call(
        "POST", "/api/v1/releases", json={"name": "r1", "components": [{"component": "api", "digest": "sha256:1234"}]}
    )
    assert status == 400, body
    assert headers["Content-Type"].startswith(PROBLEM)
    status, body, headers = await stack.call(
        "POST", "/api/v1/releases", json={"name": "Not A Name!", "components": [{"component": "api", "tag": "1.0.0"}]}
    )
    assert status == 400, body
    assert (await stack.call("GET", "/api/v1/releases"))[1]["items"] == []

    status, _, _ = await stack.call(
        "POST", "/api/v1/releases", json={"name": "r1", "components": [{"component": "api", "tag": "1.0.0"}]}
    )
    assert status == 201
    status, body, headers = await stack.call(
        "POST", "/api/v1/releases", json={"name": "r1", "components": [{"component": "api", "tag": "1.0.0"}]}
    )
    _problem(409, body, headers, "RES_DUPLICATE_NAME")

    status, body, headers = await stack.call("GET", "/api/v1/releases", token="")
    assert status == 401
    assert body["code"].startswith("AUTH_")
    status, body, _ = await stack.call("GET", "/api/v1/releases", token="stl_wrong")
    assert status == 401

    status, viewer, _ = await stack.call("POST", "/api/v1/principals", json={"name": "vera", "roles": ["viewer"]})
    assert status == 201, viewer
    status, token, _ = await stack.call("POST", "/api/v1/tokens", json={"principal_id": viewer["id"]})
    assert status == 201, token
    status, body, headers = await stack.call(
        "POST",
        "/api/v1/releases",
        token=token["token"],
        json={"name": "r2", "components": [{"component": "api", "tag": "1.0.0"}]},
    )
    assert status == 403
    assert body["code"].startswith("PERM_")
    assert (await stack.call("GET", "/api/v1/releases", token=token["token"]))[0] == 200

    other = stack.bootstrap(f"other-{uuid.uuid4().hex[:8]}")
    mine = (await stack.call("GET", "/api/v1/releases"))[1]["items"][0]
    status, body, headers = await stack.call("GET", f"/api/v1/releases/{mine['id']}", token=other)
    assert status == 404
    assert mine["name"] not in str(body)
    assert (await stack.call("GET", "/api/v1/releases", token=other))[1]["items"] == []

    down: LocalRegistry = make_oci_registry()
    push_image(down.url, registry_repo, "1.0.0")
    status, _, _ = await stack.call(
        "POST", "/api/v1/components", json={"name": "api2", "image_repository": f"{down.address}/{registry_repo}"}
    )
    assert status == 201
    down.stop()
    status, body, headers = await stack.call(
        "POST",
        "/api/v1/releases",
        json={
            "name": "r3",
            "components": [{"component": "api", "tag": "1.0.0"}, {"component": "api2", "tag": "1.0.0"}],
        },
    )
    _problem(503, body, headers, "REL_REGISTRY_UNAVAILABLE")
    names = [r["name"] for r in (await stack.call("GET", "/api/v1/releases"))[1]["items"]]
    assert "r3" not in names


@pytest.mark.parametrize("fault", ["relay.before_publish", "relay.after_publish"])
async def test_event_published_exactly_once_when_killed_around_publish(stack: Stack, nats: Client, fault: str) -> None:
    subject = stack.names.subject("stella.evt.release.component_created")
    stack.kill("release")
    stack.start("release", STELLA_FAULT=fault)
    await stack.wait_service("release", nats)
    status, body, _ = await stack.call(
        "POST",
        "/api/v1/components",
        json={"name": "crash-me", "image_repository": "127.0.0.1:1/crash"},
        headers={"Idempotency-Key": "crash-1"},
    )
    # The reply may or may not have left before the crash; either way the change is committed.
    assert status in (201, 503), body
    assert stack.wait_exit("release") == 137
    stack.start("release")
    await stack.wait_service("release", nats)
    async with collect_messages(nats.jetstream(), subject) as events:
        [event] = await events.wait(1, timeout=20)
    assert event.headers and event.headers[HEADER_MSG_ID]
    # Once the restarted relay has marked everything, the stream must hold that event exactly once.
    conn = await asyncpg.connect(stack.env["STELLA_DATABASE_URL"])
    try:
        for _ in range(200):
            if await conn.fetchval("SELECT count(*) FROM release.outbox WHERE published_at IS NULL") == 0:
                break
            await asyncio.sleep(0.05)
        assert await conn.fetchval("SELECT count(*) FROM release.outbox WHERE published_at IS NULL") == 0
    finally:
        await conn.close()
    info = await nats.jetstream().stream_info(stack.names.stream(EVENTS), subjects_filter=subject)
    assert info.state.subjects == {subject: 1}
    status, listed, _ = await stack.call("GET", "/api/v1/components")
    assert [c["name"] for c in listed["items"]] == ["crash-me"]
    # Repeating the request with its Idempotency-Key gives the original result, not a second component.
    status, again, _ = await stack.call(
        "POST",
        "/api/v1/components",
        json={"name": "crash-me", "image_repository": "127.0.0.1:1/crash"},
        headers={"Idempotency-Key": "crash-1"},
    )
    assert status == 201, again
    assert again["name"] == "crash-me"


async def test_connections_are_pooled_not_opened_per_request(stack: Stack) -> None:
    """Hundreds of requests reuse the services' pools: almost no new database session is established."""
    dsn = stack.env["STELLA_DATABASE_URL"]
    database = dsn.rsplit("/", 1)[1]
    # pg_stat_database.sessions counts every session ever established to the database (PostgreSQL 14+).
    sessions = "SELECT pg_stat_clear_snapshot(), (SELECT sessions FROM pg_stat_database WHERE datname = $1)"
    conn = await asyncpg.connect(dsn)
    try:
        status, _, _ = await stack.call(
            "POST", "/api/v1/components", json={"name": "pool", "image_repository": "127.0.0.1:1/pool"}
        )
        assert status == 201
        before = (await conn.fetchrow(sessions, database))[1]
        calls = [stack.call("GET", "/api/v1/components?page_size=5") for _ in range(200)]
        calls += [
            stack.call("POST", "/api/v1/components", json={"name": f"c{i}", "image_repository": "127.0.0.1:1/c"})
            for i in range(50)
        ]
        results = await asyncio.gather(*calls)
        assert {status for status, _, _ in results} <= {200, 201}
        after = (await conn.fetchrow(sessions, database))[1]
    finally:
        await conn.close()
    # The pools may grow towards their size (10 each for the gateway and the release service) under this
    # concurrent load; a session per request would add at least 250.
    assert after - before <= 40, (before, after)
