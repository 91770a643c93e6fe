"""``Idempotency-Key``: one effect per key, the first answer replayed, retries after 503 reach the same command."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx

from stella.contracts import release as rel
from stella.contracts.envelope import ErrorDetail, Reply
from stella.contracts.streams import HEADER_MSG_ID
from stella.gateway.settings import Settings

from . import views
from .conftest import Gateway, StandIn, assert_problem

COMPONENT = {"name": "web", "image_repository": "registry.test/team/web"}


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"key-{uuid.uuid4()}"}


async def test_a_repeat_replays_the_first_answer_and_has_no_second_effect(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    key = _key()
    first = await gateway.call("POST", "/api/v1/principals", tenant.token, json={"name": "bob"}, headers=key)
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    again = await gateway.call("POST", "/api/v1/principals", tenant.token, json={"name": "bob"}, headers=key)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["x-trace-id"] != first.headers["x-trace-id"]
    names = [p["name"] for p in (await gateway.call("GET", "/api/v1/principals", tenant.token)).json()["items"]]
    assert names.count("bob") == 1


async def test_key_order_and_spacing_of_the_body_do_not_matter(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    key = _key()
    first = await gateway.call(
        "POST",
        "/api/v1/principals",
        tenant.token,
        content=b'{"name": "eve", "kind": "user"}',
        headers={**key, "Content-Type": "application/json"},
    )
    again = await gateway.call(
        "POST",
        "/api/v1/principals",
        tenant.token,
        content=b'{"kind":"user","name":"eve"}',
        headers={**key, "Content-Type": "application/json"},
    )
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"


async def test_the_same_key_with_another_body_is_422(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    key = _key()
    assert (
        await gateway.call("POST", "/api/v1/principals", tenant.token, json={"name": "a1"}, headers=key)
    ).status_code == 201
    reused = await gateway.call("POST", "/api/v1/principals", tenant.token, json={"name": "a2"}, headers=key)
    assert_problem(reused, 422, "VAL_IDEMPOTENCY_KEY_REUSED")
    names = [p["name"] for p in (await gateway.call("GET", "/api/v1/principals", tenant.token)).json()["items"]]
    assert "a2" not in names


async def test_keys_are_scoped_to_tenant_and_path(gateway: Gateway) -> None:
    first, second = await gateway.tenant("a"), await gateway.tenant("b")
    key = _key()
    one = await gateway.call("POST", "/api/v1/principals", first.token, json={"name": "same"}, headers=key)
    two = await gateway.call("POST", "/api/v1/principals", second.token, json={"name": "same"}, headers=key)
    assert (one.status_code, two.status_code) == (201, 201)
    assert "idempotent-replayed" not in two.headers
    assert one.json()["id"] != two.json()["id"]
    token = await gateway.call(
        "POST", "/api/v1/tokens", first.token, json={"principal_id": one.json()["id"]}, headers=key
    )
    assert token.status_code == 201
    assert "idempotent-replayed" not in token.headers


async def test_client_errors_are_final_and_replayed(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    key = _key()
    bad = await gateway.call("POST", "/api/v1/principals", tenant.token, json={"name": "Bad Name"}, headers=key)
    assert_problem(bad, 400, "VAL_INVALID_REQUEST")
    again = await gateway.call("POST", "/api/v1/principals", tenant.token, json={"name": "Bad Name"}, headers=key)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["errors"] == bad.json()["errors"]
    assert again.headers["content-type"].startswith("application/problem+json")


async def test_a_forbidden_attempt_does_not_use_up_the_key(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vic", ["viewer"])
    key = _key()
    denied = await gateway.call("POST", "/api/v1/principals", viewer.token, json={"name": "x1"}, headers=key)
    assert_problem(denied, 403, "PERM_DENIED")
    allowed = await gateway.call("POST", "/api/v1/principals", tenant.token, json={"name": "x1"}, headers=key)
    assert allowed.status_code == 201
    assert "idempotent-replayed" not in allowed.headers


async def test_a_replayed_token_creation_never_shows_the_token_again(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    tenant = await gateway.tenant()
    key = _key()
    body = {"principal_id": str(tenant.admin_id), "name": "ci"}
    first = await gateway.call("POST", "/api/v1/tokens", tenant.token, json=body, headers=key)
    assert first.status_code == 201
    secret = first.json()["token"]
    again = await gateway.call("POST", "/api/v1/tokens", tenant.token, json=body, headers=key)
    assert again.headers["idempotent-replayed"] == "true"
    assert "token" not in again.json()
    assert again.json()["id"] == first.json()["id"]
    conn = await asyncpg.connect(gateway_settings.database_url)
    try:
        stored = await conn.fetch("SELECT response_body FROM gateway.idempotency_keys")
    finally:
        await conn.close()
    assert stored
    assert all(secret.encode() not in bytes(row["response_body"]) for row in stored)


async def test_an_invalid_key_is_400(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    for key in ("x" * 256, "tab\tkey"):
        response = await gateway.call(
            "POST", "/api/v1/principals", tenant.token, json={"name": "k"}, headers={"Idempotency-Key": key}
        )
        body = assert_problem(response, 400, "VAL_IDEMPOTENCY_KEY_INVALID")
        assert body["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    longest = await gateway.call(
        "POST", "/api/v1/principals", tenant.token, json={"name": "k"}, headers={"Idempotency-Key": "x" * 255}
    )
    assert longest.status_code == 201


async def test_keys_expire_after_a_day(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    key = _key()
    assert (
        await gateway.call("POST", "/api/v1/principals", tenant.token, json={"name": "d1"}, headers=key)
    ).status_code == 201
    gateway.clock.advance(hours=24, seconds=1)
    fresh = await gateway.call("POST", "/api/v1/principals", tenant.token, json={"name": "d2"}, headers=key)
    assert fresh.status_code == 201
    assert "idempotent-replayed" not in fresh.headers


async def test_a_duplicate_while_the_first_is_in_flight_is_409(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    gate = asyncio.Event()
    view = views.component()

    async def slow(_: dict[str, Any]) -> Reply:
        await gate.wait()
        return Reply.success(view)

    release_service.on(rel.CREATE_COMPONENT, slow)
    key = _key()
    first = asyncio.create_task(gateway.call("POST", "/api/v1/components", tenant.token, json=COMPONENT, headers=key))
    await release_service.wait_for(1)
    duplicate = await gateway.call("POST", "/api/v1/components", tenant.token, json=COMPONENT, headers=key)
    assert_problem(duplicate, 409, "RES_IDEMPOTENCY_IN_FLIGHT")
    assert duplicate.headers["retry-after"] == "1"
    gate.set()
    assert (await first).status_code == 201
    replay = await gateway.call("POST", "/api/v1/components", tenant.token, json=COMPONENT, headers=key)
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (201, "true")
    assert len(release_service.received) == 1


async def test_the_command_id_is_derived_from_the_key(gateway: Gateway, release_service: StandIn) -> None:
    tenant = await gateway.tenant()
    release_service.answer(rel.CREATE_COMPONENT, views.component())
    key = _key()
    assert (
        await gateway.call("POST", "/api/v1/components", tenant.token, json=COMPONENT, headers=key)
    ).status_code == 201
    assert uuid.UUID(release_service.last(rel.CREATE_COMPONENT).payload["message_id"]).version == 5


async def test_a_retry_after_a_pending_command_gets_its_late_result(
    gateway: Gateway, release_service: StandIn, gateway_settings: Settings
) -> None:
    tenant = await gateway.tenant()
    assert gateway.runtime.relay is not None
    gateway.runtime.relay.command_timeout_s = 0.5
    gate = asyncio.Event()
    view = views.component()

    async def slow(_: dict[str, Any]) -> Reply:
        await gate.wait()
        return Reply.success(view)

    release_service.on(rel.CREATE_COMPONENT, slow)
    key = _key()
    pending = await gateway.call("POST", "/api/v1/components", tenant.token, json=COMPONENT, headers=key)
    assert_problem(pending, 503, "SYS_PENDING")
    assert pending.headers["retry-after"] == "1"

    # A retry while the service still works sends the command again under a new stream id (the same one
    # would be dropped as a duplicate); it is the same command, which the service answers once.
    still = await gateway.call("POST", "/api/v1/components", tenant.token, json=COMPONENT, headers=key)
    assert_problem(still, 503, "SYS_PENDING")
    await release_service.wait_for(2)
    first, second = release_service.received
    # The same command: only the envelope of the request that sent it differs (its trace id and time).
    envelope = {"correlation_id", "occurred_at"}
    assert {k: v for k, v in first.payload.items() if k not in envelope} == {
        k: v for k, v in second.payload.items() if k not in envelope
    }
    assert first.headers[HEADER_MSG_ID] == first.payload["message_id"]
    assert second.headers[HEADER_MSG_ID].startswith(first.payload["message_id"] + ":")

    gate.set()
    conn = await asyncpg.connect(gateway_settings.database_url)
    try:
        async with asyncio.timeout(10):
            while (
                await conn.fetchval(
                    "SELECT late_reply FROM gateway.idempotency_keys WHERE key = $1", key["Idempotency-Key"]
                )
                is None
            ):
                await asyncio.sleep(0.02)  # the reply is stored by the gateway's NATS callback; nothing to await
    finally:
        await conn.close()

    done = await gateway.call("POST", "/api/v1/components", tenant.token, json=COMPONENT, headers=key)
    assert done.status_code == 201, done.text
    assert done.json() == view
    assert "idempotent-replayed" not in done.headers
    replay = await gateway.call("POST", "/api/v1/components", tenant.token, json=COMPONENT, headers=key)
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (201, "true")
    assert len(release_service.received) == 2


async def test_a_retry_reaches_the_service_when_its_first_reply_was_lost(
    gateway: Gateway, release_service: StandIn
) -> None:
    tenant = await gateway.tenant()
    assert gateway.runtime.relay is not None
    gateway.runtime.relay.command_timeout_s = 0.5
    view = views.component()
    handled: dict[str, Reply] = {}

    def crash_before_replying_once(payload: dict[str, Any]) -> Reply | None:
        # Plays a service that committed the command and died before replying, then answers repeats of
        # the same message_id from its inbox.
        if payload["message_id"] not in handled:
            handled[payload["message_id"]] = Reply.success(view)
            return None
        return handled[payload["message_id"]]

    release_service.on(rel.CREATE_COMPONENT, crash_before_replying_once)
    key = _key()
    lost = await gateway.call("POST", "/api/v1/components", tenant.token, json=COMPONENT, headers=key)
    assert_problem(lost, 503, "SYS_PENDING")
    retried = await gateway.call("POST", "/api/v1/components", tenant.token, json=COMPONENT, headers=key)
    assert retried.status_code == 201, retried.text
    assert retried.json() == view
    assert len(handled) == 1
    assert [r.payload["message_id"] for r in release_service.received] == list(handled) * 2


async def test_a_caller_without_the_permission_gets_403_even_with_a_used_key(gateway: Gateway) -> None:
    """Authorization runs before the key is looked up: a viewer replaying an admin's key is refused."""
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vera", ["viewer"])
    key = _key()
    body = {"name": "made-by-admin"}
    assert (await gateway.call("POST", "/api/v1/principals", tenant.token, json=body, headers=key)).status_code == 201
    replay = await gateway.call("POST", "/api/v1/principals", viewer.token, json=body, headers=key)
    problem = assert_problem(replay, 403, "PERM_DENIED")
    assert "made-by-admin" not in replay.text
    assert "idempotent-replayed" not in replay.headers
    assert problem["required_permission"] == "principal:create"


async def test_another_principal_reusing_a_key_gets_422_and_nothing_runs(gateway: Gateway, services: StandIn) -> None:
    """Approver B reusing approver A's key on /approve neither sees A's answer nor passes for a vote."""
    tenant = await gateway.tenant()
    first = await gateway.principal_token(tenant, "ann", ["approver"])
    second = await gateway.principal_token(tenant, "ben", ["approver"])
    promotion_id = uuid.uuid4()
    services.on(
        "stella.cmd.approval.cast_vote", lambda payload: Reply.success(views.approval_request(str(promotion_id)))
    )
    key = _key()
    path = f"/api/v1/promotions/{promotion_id}/approve"
    assert (await gateway.call("POST", path, first.token, json={}, headers=key)).status_code == 200
    votes = len([r for r in services.received if r.subject == "stella.cmd.approval.cast_vote"])
    replay = await gateway.call("POST", path, second.token, json={}, headers=key)
    assert_problem(replay, 422, "VAL_IDEMPOTENCY_KEY_OTHER_PRINCIPAL")
    assert "idempotent-replayed" not in replay.headers
    assert len([r for r in services.received if r.subject == "stella.cmd.approval.cast_vote"]) == votes
    # The owner still gets its replay.
    again = await gateway.call("POST", path, first.token, json={}, headers=key)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"


async def test_a_developer_replaying_an_approvers_key_gets_403(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    approver = await gateway.principal_token(tenant, "amy", ["approver"])
    developer = await gateway.principal_token(tenant, "dan", ["developer"])
    promotion_id = uuid.uuid4()
    services.on(
        "stella.cmd.approval.cast_vote", lambda payload: Reply.success(views.approval_request(str(promotion_id)))
    )
    key = _key()
    path = f"/api/v1/promotions/{promotion_id}/approve"
    assert (await gateway.call("POST", path, approver.token, json={}, headers=key)).status_code == 200
    assert_problem(await gateway.call("POST", path, developer.token, json={}, headers=key), 403, "PERM_DENIED")


async def test_the_outcome_is_recorded_before_the_client_has_the_answer(
    gateway: Gateway, release_service: StandIn, gateway_settings: Settings
) -> None:
    """A client that retries the moment it has an answer finds the key released or finished, never in flight."""
    tenant = await gateway.tenant()
    key = _key()
    states: list[str] = []
    conn = await asyncpg.connect(gateway_settings.database_url)

    async def observed(scope: Any, receive: Any, send: Any) -> None:
        async def watch(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                states.append(
                    await conn.fetchval(
                        "SELECT state FROM gateway.idempotency_keys WHERE key = $1", key["Idempotency-Key"]
                    )
                )
            await send(message)

        await gateway.app(scope, receive, watch)

    busy = ErrorDetail(code="SYS_UNAVAILABLE", status=503, title="Service unavailable", detail="busy")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=observed), base_url="http://test") as client:
            headers = {**key, "Authorization": f"Bearer {tenant.token}"}
            release_service.answer(rel.CREATE_COMPONENT, error=busy)
            unavailable = await client.post("/api/v1/components", json=COMPONENT, headers=headers)
            assert_problem(unavailable, 503, "SYS_UNAVAILABLE")
            release_service.answer(rel.CREATE_COMPONENT, views.component())
            created = await client.post("/api/v1/components", json=COMPONENT, headers=headers)
            assert created.status_code == 201, created.text
    finally:
        await conn.close()
    assert states == ["retryable", "done"]
