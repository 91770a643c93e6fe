"""The dashboard under /ui: sign-in into a session cookie, CSRF on every form, CSP, tenant scoping, votes.

Stand-ins answer the promotion and approval subjects on the real NATS server; the browser tests run the
dashboard against every service (tests/e2e/test_dashboard.py).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest_asyncio
from nats.aio.client import Client

from stella.contracts import approval as appr
from stella.contracts import deployment as dep
from stella.contracts import evidence as evid
from stella.contracts import promotion as prom
from stella.contracts import release as rel
from stella.contracts import workflow as wf
from stella.contracts.envelope import ErrorDetail, Reply
from stella.gateway.controllers.ui import CSP, CSRF_FIELD, SESSION_COOKIE, SIGN_IN_COOKIE

from . import views
from .conftest import Gateway, StandIn


@pytest_asyncio.fixture
async def services(gateway: Gateway, nats: Client) -> AsyncIterator[StandIn]:
    """Stand-ins for every service the dashboard reads: releases and deployments too."""
    stand_in = StandIn(
        nats, gateway.names, contexts=("promotion", "approval", "workflow", "evidence", "release", "deployment")
    )
    await stand_in.start()
    try:
        yield stand_in
    finally:
        await stand_in.stop()


@asynccontextmanager
async def _browser(gateway: Gateway, base_url: str = "http://gateway.test") -> AsyncIterator[httpx.AsyncClient]:
    """A client with a cookie jar of its own, as one browser."""
    transport = httpx.ASGITransport(app=gateway.app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        yield client


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def _sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = await client.get("/ui/sign-in")
    assert form.status_code == 200, form.text
    return await client.post("/ui/sign-in", data={"token": token, CSRF_FIELD: _field(form.text, CSRF_FIELD)})


def _set_cookie(response: httpx.Response, name: str) -> str:
    [header] = [value for value in response.headers.get_list("set-cookie") if value.startswith(f"{name}=")]
    return header


async def test_sign_in_keeps_the_token_in_a_strict_http_only_cookie(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    async with _browser(gateway) as client:
        assert (await client.get("/ui/")).headers["location"] == "/ui/sign-in"
        signed_in = await _sign_in(client, tenant.token)
        assert signed_in.status_code == 303, signed_in.text
        assert signed_in.headers["location"] == "/ui"
        cookie = _set_cookie(signed_in, SESSION_COOKIE).lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        assert "secure" not in cookie  # plain HTTP here; see the HTTPS case below
        assert signed_in.headers["content-security-policy"] == CSP
    async with _browser(gateway, "https://gateway.test") as client:
        cookie = _set_cookie(await _sign_in(client, tenant.token), SESSION_COOKIE).lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie


async def test_a_wrong_token_or_a_sign_in_without_its_form_token_sets_no_session(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    async with _browser(gateway) as client:
        wrong = await _sign_in(client, "stl_not-a-token")
        assert wrong.status_code == 401
        assert "The token is not valid." in wrong.text
        assert SESSION_COOKIE not in client.cookies
        # A page of another site posting the sign-in form has no form token bound to this browser.
        forged = await client.post("/ui/sign-in", data={"token": tenant.token, CSRF_FIELD: "guess"})
        assert forged.status_code == 403
        assert "AUTH_CSRF_INVALID" in forged.text
        assert SESSION_COOKIE not in client.cookies
    async with _browser(gateway) as client:
        client.cookies.set(SIGN_IN_COOKIE, "x", path="/ui/sign-in")
        missing = await client.post("/ui/sign-in", data={"token": tenant.token})
        assert missing.status_code == 403
        assert SESSION_COOKIE not in client.cookies


async def test_every_page_has_a_strict_content_security_policy(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    services.answer(prom.GET_ENVIRONMENT_BOARD, views.board([]))
    services.answer(prom.LIST_PROMOTIONS, views.page([]))
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        for path in ("/ui/sign-in", "/ui/", "/ui/approvals"):
            page = await client.get(path)
            assert page.status_code == 200, (path, page.text)
            assert page.headers["content-security-policy"] == CSP
            assert "script-src 'self';" in CSP and "'unsafe-inline'" not in CSP and "default-src 'none'" in CSP
            assert "frame-ancestors 'none'" in CSP
            assert page.headers["x-content-type-options"] == "nosniff"
            assert "<script" not in page.text


async def test_the_overview_shows_each_release_where_it_is_with_the_freeze_state(
    gateway: Gateway, services: StandIn
) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vera", ["viewer"])
    dev, prod = views.environment("dev", order_index=0), views.environment("prod", order_index=1)
    shop = str(uuid.uuid4())
    in_dev = views.promotion(
        "approved",
        release_id=shop,
        release_name="shop-1",
        target_environment_id=dev["id"],
        target_environment_name="dev",
    )
    in_prod = views.promotion(
        "pending_approval",
        release_id=shop,
        release_name="shop-1",
        target_environment_id=prod["id"],
        target_environment_name="prod",
    )
    services.answer(prom.GET_ENVIRONMENT_BOARD, views.board([(dev, False, []), (prod, True, [])], [in_prod, in_dev]))
    async with _browser(gateway) as client:
        await _sign_in(client, viewer.token)
        page = await client.get("/ui/")
    assert page.status_code == 200, page.text
    text = page.text
    assert text.index(">dev<") < text.index(">prod<")  # promotion order
    assert "shop-1" in text
    assert f'href="/ui/promotions/{in_dev["id"]}">approved</a>' in text
    assert f'href="/ui/promotions/{in_prod["id"]}">pending_approval</a>' in text
    assert "frozen" in text and "open" in text
    # Read as the signed-in principal of its tenant, like any API client, in one query whatever the environments.
    asked = services.last(prom.GET_ENVIRONMENT_BOARD).payload
    assert asked["tenant_id"] == str(tenant.id) and asked["releases"] > 0
    assert not [r for r in services.received if r.subject in (prom.GET_ENVIRONMENT_STATE, prom.LIST_PROMOTIONS)]


async def test_another_tenants_promotion_is_a_404_page(gateway: Gateway, services: StandIn) -> None:
    ours, theirs = await gateway.tenant("a"), await gateway.tenant("b")
    owned = views.promotion()
    owner = str(theirs.id)

    def get_promotion(payload: dict[str, Any]) -> Reply:
        if payload["tenant_id"] != owner:
            return Reply.failure(
                ErrorDetail(code="RES_NOT_FOUND", status=404, title="Not Found", detail="promotion not found")
            )
        return Reply.success(owned)

    services.on(prom.GET_PROMOTION, get_promotion)
    services.answer(evid.LIST_PACKETS, views.page([]))
    services.answer(wf.GET_RUN, views.run())
    services.answer(appr.GET_APPROVALS, error=_not_found("approval request"))
    async with _browser(gateway) as client:
        await _sign_in(client, theirs.token)
        assert (await client.get(f"/ui/promotions/{owned['id']}")).status_code == 200
    async with _browser(gateway) as client:
        await _sign_in(client, ours.token)
        page = await client.get(f"/ui/promotions/{owned['id']}")
        api = await gateway.call("GET", f"/api/v1/promotions/{owned['id']}", ours.token)
    assert page.status_code == api.status_code == 404
    assert "promotion not found" in page.text
    assert page.headers["content-security-policy"] == CSP


async def test_a_vote_without_the_csrf_token_is_refused_and_sends_nothing(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    waiting = views.promotion("pending_approval")
    services.answer(prom.LIST_PROMOTIONS, views.page([waiting]))
    services.answer(appr.CAST_VOTE, views.approval_request(waiting["id"], votes=1))
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        for form in ({"action": "approved"}, {"action": "approved", CSRF_FIELD: "0" * 64}):
            refused = await client.post(f"/ui/promotions/{waiting['id']}/vote", data=form)
            assert refused.status_code == 403, refused.text
            assert "AUTH_CSRF_INVALID" in refused.text
        assert not [r for r in services.received if r.subject == appr.CAST_VOTE]
        inbox = await client.get("/ui/approvals")
        voted = await client.post(
            f"/ui/promotions/{waiting['id']}/vote",
            data={"action": "approved", "comment": "looks good", CSRF_FIELD: _field(inbox.text, CSRF_FIELD)},
        )
    assert voted.status_code == 303, voted.text
    sent = services.last(appr.CAST_VOTE).payload
    assert (sent["tenant_id"], sent["promotion_id"], sent["action"], sent["comment"]) == (
        str(tenant.id),
        waiting["id"],
        "approved",
        "looks good",
    )


async def test_the_separation_of_duties_refusal_is_shown_as_a_message(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    waiting = views.promotion("pending_approval", release_name="shop-7")
    services.answer(prom.LIST_PROMOTIONS, views.page([waiting]))
    services.answer(
        appr.CAST_VOTE,
        error=ErrorDetail(
            code="PROM_SOD_VIOLATION",
            status=422,
            title="Unprocessable",
            detail="The requester of a promotion cannot approve it.",
        ),
    )
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        inbox = await client.get("/ui/approvals")
        assert "shop-7" in inbox.text
        refused = await client.post(
            f"/ui/promotions/{waiting['id']}/vote",
            data={"action": "approved", CSRF_FIELD: _field(inbox.text, CSRF_FIELD)},
        )
    assert refused.status_code == 422
    assert 'role="alert"' in refused.text
    assert "The requester of a promotion cannot approve it." in refused.text
    assert "PROM_SOD_VIOLATION" in refused.text


async def test_sign_out_needs_the_csrf_token_and_ends_the_session(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    services.answer(prom.LIST_PROMOTIONS, views.page([]))
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        page = await client.get("/ui/approvals")
        assert (await client.post("/ui/sign-out", data={})).status_code == 403
        assert SESSION_COOKIE in client.cookies
        stolen = client.cookies[SESSION_COOKIE]
        out = await client.post("/ui/sign-out", data={CSRF_FIELD: _field(page.text, CSRF_FIELD)})
        assert out.status_code == 303
        assert SESSION_COOKIE not in client.cookies
        assert (await client.get("/ui/approvals")).headers["location"] == "/ui/sign-in"
    # A copy of the cookie taken before the sign-out signs nobody in afterwards: the session ended on the server.
    async with _browser(gateway) as thief:
        thief.cookies.set(SESSION_COOKIE, stolen, path="/ui")
        replay = await thief.get("/ui/approvals")
        assert replay.status_code == 303 and replay.headers["location"] == "/ui/sign-in"
        posted = await thief.post("/ui/sign-out", data={CSRF_FIELD: _field(page.text, CSRF_FIELD)})
        assert posted.headers["location"] == "/ui/sign-in"


async def test_the_session_cookie_is_not_the_api_token_and_dies_with_it(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    worker = await gateway.principal_token(tenant, "wes", ["viewer"])
    services.answer(prom.LIST_PROMOTIONS, views.page([]))
    async with _browser(gateway) as client:
        await _sign_in(client, worker.token)
        cookie = client.cookies[SESSION_COOKIE]
        assert cookie != worker.token and worker.token not in cookie
        assert (await gateway.call("GET", "/api/v1/releases", cookie)).status_code == 401  # not an API token
        assert (await client.get("/ui/approvals")).status_code == 200
        revoked = await gateway.call("DELETE", f"/api/v1/tokens/{worker.token_id}", tenant.token)
        assert revoked.status_code == 204, revoked.text
        assert (await client.get("/ui/approvals")).headers["location"] == "/ui/sign-in"


async def test_a_packet_that_fails_verification_says_which_check_failed(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    packet_id = str(uuid.uuid4())
    services.answer(
        evid.VERIFY_PACKET,
        {
            "packet_id": packet_id,
            "valid": False,
            "checks": {"signature": True, "content_hash": False, "chain": True},
            "findings": ["content hash does not match the content"],
        },
    )
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        page = await client.get(f"/ui/evidence/{packet_id}")
        malformed = await client.get("/ui/evidence/not-an-id")
    assert page.status_code == 200, page.text
    assert "Not valid" in page.text and 'role="alert"' in page.text
    assert "<td>content_hash</td><td>FAILS</td>" in page.text
    assert "<td>signature</td><td>holds</td>" in page.text
    assert "content hash does not match the content" in page.text
    assert services.last(evid.VERIFY_PACKET).payload["tenant_id"] == str(tenant.id)
    assert malformed.status_code == 400


def _not_found(what: str) -> ErrorDetail:
    return ErrorDetail(code="RES_NOT_FOUND", status=404, title="Not Found", detail=f"{what} not found")


def _job(promotion: dict[str, Any], status: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """A deployment service's job view as JSON."""
    now = views._now()
    return {
        "id": str(uuid.uuid4()),
        "promotion_id": promotion["id"],
        "release_id": promotion["release_id"],
        "release_name": promotion["release_name"],
        "environment_id": promotion["target_environment_id"],
        "environment_name": promotion["target_environment_name"],
        "kind": "deploy",
        "strategy": "rolling",
        "status": status,
        "rollback_of": None,
        "reason": "",
        "target_count": len(tasks),
        "created_at": now,
        "started_at": now,
        "finished_at": None,
        "spec": {},
        "tasks": tasks,
        "artifacts": [],
        "next_page_token": None,
    }


def _task(target: str, batch: int, status: str, digest: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "job_id": None,
        "target_id": str(uuid.uuid4()),
        "target_name": target,
        "type": "deploy",
        "batch": batch,
        "status": status,
        "attempt": 1,
        "agent_id": None,
        "idempotency_key": uuid.uuid4().hex,
        "components": [{"name": "web", "digest": digest}],
        "error_code": None,
        "message": "",
        "result": None,
        "artifacts": [],
        "logs": [f"pulling {digest}"],
        "logs_truncated": False,
        "created_at": views._now(),
        "started_at": None,
        "finished_at": None,
    }


def _target(name: str, environment_id: str, digest: str, drift: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "environment_id": environment_id,
        "name": name,
        "target_type": "docker",
        "connection": {},
        "labels": {},
        "health_check": None,
        "agent_id": None,
        "health_status": "healthy",
        "current": {"web": digest},
        "current_release_id": None,
        "drift_detected": drift is not None,
        "last_drift": drift,
        "sticker": None,
        "created_at": views._now(),
        "updated_at": views._now(),
    }


async def test_every_new_page_is_strict_and_reads_as_the_signed_in_tenant(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    services.answer(prom.LIST_ENVIRONMENTS, views.page([]))
    services.answer(prom.GET_ENVIRONMENT_BOARD, views.board([]))
    services.answer(prom.LIST_PROMOTIONS, views.page([]))
    services.answer(rel.LIST_RELEASES, views.page([]))
    services.answer(dep.LIST_JOBS, views.page([]))
    services.answer(dep.LIST_TARGETS, views.page([]))
    services.answer(dep.LIST_AGENTS, views.page([]))
    services.answer(evid.LIST_PACKETS, views.page([]))
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        for path in ("/ui/releases", "/ui/promotions", "/ui/deployments", "/ui/agents", "/ui/freeze", "/ui/evidence"):
            page = await client.get(path)
            assert page.status_code == 200, (path, page.text)
            assert page.headers["content-security-policy"] == CSP
            assert "<script" not in page.text
            assert 'role="alert"' not in page.text
    for subject in (
        rel.LIST_RELEASES,
        prom.LIST_PROMOTIONS,
        dep.LIST_JOBS,
        dep.LIST_TARGETS,
        dep.LIST_AGENTS,
        evid.LIST_PACKETS,
    ):
        assert services.last(subject).payload["tenant_id"] == str(tenant.id), subject


async def test_releases_are_listed_by_name_and_status_a_page_at_a_time(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    shop = views.release("shop-2", status="ready")
    services.answer(rel.LIST_RELEASES, views.page([shop], next_page_token="c2hvcC0y"))
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        page = await client.get("/ui/releases", params={"name": "shop", "status": "ready"})
        assert page.status_code == 200, page.text
        sent = services.last(rel.LIST_RELEASES).payload
        assert (sent["name_prefix"], sent["status"], sent["page"]["page_token"]) == ("shop", "ready", None)
        assert f'href="/ui/releases/{shop["id"]}">shop-2</a>' in page.text
        assert 'href="/ui/releases?name=shop&amp;status=ready&amp;page_token=c2hvcC0y"' in page.text
        assert 'value="shop"' in page.text and '<option value="ready" selected>' in page.text
        await client.get("/ui/releases", params={"name": "shop", "status": "ready", "page_token": "c2hvcC0y"})
        assert services.last(rel.LIST_RELEASES).payload["page"]["page_token"] == "c2hvcC0y"
        sent_before = len(services.received)
        for bad in ({"status": "gone"}, {"name": "x" * 64}, {"page_token": "not a token"}):
            refused = await client.get("/ui/releases", params=bad)
            assert refused.status_code == 400, (bad, refused.text)
            assert 'role="alert"' in refused.text
        assert len(services.received) == sent_before


async def test_a_release_shows_its_digests_where_it_went_and_promotes_to_the_next(
    gateway: Gateway, services: StandIn
) -> None:
    tenant = await gateway.tenant()
    shop = views.release("shop-3", status="ready")
    dev, stage, prod = (views.environment(name, order_index=i) for i, name in enumerate(("dev", "stage", "prod")))
    in_dev = views.promotion("deployed", release_id=shop["id"], target_environment_id=dev["id"])
    services.answer(rel.GET_RELEASE, shop)
    services.answer(prom.LIST_ENVIRONMENTS, views.page([dev, stage, prod]))
    services.answer(prom.LIST_PROMOTIONS, views.page([in_dev]))
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        page = await client.get(f"/ui/releases/{shop['id']}")
        assert page.status_code == 200, page.text
        assert views.DIGEST in page.text and "registry.test/web" in page.text
        assert "<td>dev</td><td>yes</td>" in page.text and "<td>stage</td><td>no</td>" in page.text
        assert (
            "Promote to stage" in page.text and "Promote to prod" not in page.text and "Promote to dev" not in page.text
        )
        assert services.last(prom.LIST_PROMOTIONS).payload["release_id"] == shop["id"]

        # Without the form's CSRF token nothing is requested.
        action = f"/ui/releases/{shop['id']}/promote"
        forged = await client.post(action, data={"environment_id": stage["id"]})
        assert forged.status_code == 403 and "AUTH_CSRF_INVALID" in forged.text
        assert not [r for r in services.received if r.subject == prom.REQUEST_PROMOTION]

        requested = views.promotion("pending_gate", release_id=shop["id"], target_environment_id=stage["id"])
        services.answer(prom.REQUEST_PROMOTION, requested)
        csrf = _field(page.text, CSRF_FIELD)
        done = await client.post(action, data={"environment_id": stage["id"], "reason": "qa", CSRF_FIELD: csrf})
        assert done.status_code == 303, done.text
        assert done.headers["location"] == f"/ui/promotions/{requested['id']}"
        sent = services.last(prom.REQUEST_PROMOTION).payload
        assert (sent["tenant_id"], sent["release_id"], sent["target_environment_id"], sent["reason"]) == (
            str(tenant.id),
            shop["id"],
            stage["id"],
            "qa",
        )

        # A refusal of the promotion service is shown on the release's page.
        services.answer(
            prom.REQUEST_PROMOTION,
            error=ErrorDetail(
                code="PROM_ORDER_VIOLATION", status=422, title="Unprocessable", detail="deploy it to dev first"
            ),
        )
        refused = await client.post(action, data={"environment_id": prod["id"], CSRF_FIELD: csrf})
        assert refused.status_code == 422
        assert 'role="alert"' in refused.text and "deploy it to dev first" in refused.text
        assert "Release shop-3" in refused.text


async def test_another_tenants_release_is_a_404_page_as_in_the_api(gateway: Gateway, services: StandIn) -> None:
    ours, theirs = await gateway.tenant("a"), await gateway.tenant("b")
    owned = views.release("theirs-1", status="ready")

    def get_release(payload: dict[str, Any]) -> Reply:
        if payload["tenant_id"] != str(theirs.id):
            return Reply.failure(_not_found("release"))
        return Reply.success(owned)

    services.on(rel.GET_RELEASE, get_release)
    services.answer(prom.LIST_ENVIRONMENTS, views.page([]))
    services.answer(prom.LIST_PROMOTIONS, views.page([]))
    async with _browser(gateway) as client:
        await _sign_in(client, ours.token)
        page = await client.get(f"/ui/releases/{owned['id']}")
        malformed = await client.get("/ui/releases/not-an-id")
    api = await gateway.call("GET", f"/api/v1/releases/{owned['id']}", ours.token)
    assert page.status_code == api.status_code == 404
    assert "theirs-1" not in page.text
    assert malformed.status_code == 404


async def test_promotions_are_listed_by_status_and_environment(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    prod = views.environment("prod", order_index=1)
    live = views.promotion("deployed", release_name="shop-4", target_environment_id=prod["id"])
    services.answer(prom.LIST_ENVIRONMENTS, views.page([prod]))
    services.answer(prom.LIST_PROMOTIONS, views.page([live], next_page_token="bmV4dA"))
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        page = await client.get("/ui/promotions", params={"status": "deployed", "environment": prod["id"]})
        bad_status = await client.get("/ui/promotions", params={"status": "sideways"})
        bad_environment = await client.get("/ui/promotions", params={"environment": "prod"})
    assert page.status_code == 200, page.text
    sent = services.last(prom.LIST_PROMOTIONS).payload
    assert (sent["status"], sent["environment_id"]) == ("deployed", prod["id"])
    assert f'href="/ui/promotions/{live["id"]}">deployed</a>' in page.text
    assert f'<option value="{prod["id"]}" selected>prod</option>' in page.text
    assert "page_token=bmV4dA" in page.text
    assert bad_status.status_code == bad_environment.status_code == 400


async def test_a_promotion_shows_its_timeline_approvals_and_evidence(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    waiting = views.promotion("pending_approval", release_name="shop-5")
    run = views.run(id=waiting["workflow_run_id"])
    run["steps"][0]["logs"] = "gate freeze: open\ngate scan: pass"
    services.answer(prom.GET_PROMOTION, waiting)
    services.answer(wf.GET_RUN, run)
    services.answer(appr.GET_APPROVALS, views.approval_request(waiting["id"], votes=1))
    services.answer(evid.LIST_PACKETS, views.page([views.packet(waiting["id"])]))
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        page = await client.get(f"/ui/promotions/{waiting['id']}")
    assert page.status_code == 200, page.text
    text = page.text
    assert "<td>gates</td><td>succeeded</td><td>2</td>" in text  # step, status, attempt
    assert "<td>approval</td><td>waiting</td><td>1</td>" in text
    assert "gate scan: pass" in text and "<details>" in text
    assert "pending: 1 of 2 approvals, separation of duties" in text
    assert "release_decision" in text and ">Verify</a>" in text
    assert f'href="/ui/promotions/{waiting["id"]}/deployment"' in text
    assert services.last(wf.GET_RUN).payload["run_id"] == waiting["workflow_run_id"]
    assert services.last(appr.GET_APPROVALS).payload["tenant_id"] == str(tenant.id)


async def test_a_running_deployment_follows_live_and_shows_tasks_targets_and_drift(
    gateway: Gateway, services: StandIn
) -> None:
    tenant = await gateway.tenant()
    deploying = views.promotion("deploying", release_name="shop-6", target_environment_name="prod")
    new, old = "sha256:" + "b" * 64, "sha256:" + "c" * 64
    tasks = [_task("web-1", 1, "succeeded", new), _task("web-2", 2, "running", new)]
    drift = {
        "drifted": True,
        "differences": [{"kind": "digest", "component": "web", "expected": new, "actual": old}],
    }
    services.answer(prom.GET_PROMOTION, deploying)
    services.answer(dep.GET_PROMOTION_DEPLOYMENT, _job(deploying, "running", tasks))
    services.answer(
        dep.LIST_TARGETS,
        views.page(
            [
                _target("web-1", deploying["target_environment_id"], new),
                _target("web-2", deploying["target_environment_id"], old, drift),
            ]
        ),
    )
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        page = await client.get(f"/ui/promotions/{deploying['id']}/deployment")
        assert page.status_code == 200, page.text
        text = page.text
        # Live through the gateway's own versioned script; without script, the page refreshes itself.
        assert '<noscript><meta http-equiv="refresh" content="3"></noscript>' in text
        [script] = re.findall(r'<script src="(/ui/assets/live\.[0-9a-f]{16}\.js)" defer></script>', text)
        fragment = f"/ui/promotions/{deploying['id']}/deployment/job"
        assert f'data-live-fragment="{fragment}"' in text and 'data-live-active="true"' in text
        assert f'data-live-stream="/ui/events/stream?resource=promotions%2F{deploying["id"]}"' in text
        asset = await client.get(script)
        assert asset.status_code == 200 and "EventSource" in asset.text
        # Named by its content: a changed script is a new URL, never a stale cached copy.
        assert script == f"/ui/assets/live.{hashlib.sha256(asset.content).hexdigest()[:16]}.js"
        # Refreshed by the job's and its tasks' events only: nothing on a timer, no polling attribute.
        assert "org.stellaops.deployment.tasks_progressed" in asset.text
        assert "setInterval" not in asset.text and "setTimeout" not in asset.text
        assert "data-live-poll" not in text
        assert asset.headers["content-type"].startswith("text/javascript")
        assert "immutable" in asset.headers["cache-control"]
        assert (await client.get("/ui/assets/live.0000000000000000.js")).status_code == 404
        section = await client.get(fragment)
        assert section.status_code == 200 and section.text.startswith('<section id="job"')
        assert "<td>web-2</td><td>2</td><td>deploy</td><td>running</td>" in section.text
        assert "Roll back" not in text  # not while the job runs
        assert "<td>web-1</td><td>1</td><td>deploy</td><td>succeeded</td>" in text
        assert "<td>web-2</td><td>2</td><td>deploy</td><td>running</td>" in text
        assert "1 of 2 tasks succeeded" in text
        assert f"pulling {new}" in text
        assert f"expected <code>{new}</code>, actual <code>{old}</code>" in text
        assert "drifted" in text and "healthy" in text
        assert text.count(">Remediate</button>") == 1  # the drifted target only
        assert services.last(dep.LIST_TARGETS).payload["environment_id"] == deploying["target_environment_id"]

        # Once the job ended, the page stops reloading.
        services.answer(
            dep.GET_PROMOTION_DEPLOYMENT,
            _job(deploying, "succeeded", [_task("web-1", 1, "succeeded", new), _task("web-2", 2, "succeeded", new)]),
        )
        ended = await client.get(f"/ui/promotions/{deploying['id']}/deployment")
        assert "http-equiv" not in ended.text and "2 of 2 tasks succeeded" in ended.text
        assert "<script" not in ended.text and 'data-live-active="false"' in ended.text
        assert ">Roll back this deployment</button>" in ended.text

        # Before a job exists: said so, and nothing to reload for a promotion that will not deploy.
        rejected = views.promotion("rejected")
        services.answer(prom.GET_PROMOTION, rejected)
        services.answer(dep.GET_PROMOTION_DEPLOYMENT, error=_not_found("deployment"))
        none = await client.get(f"/ui/promotions/{rejected['id']}/deployment")
        assert none.status_code == 200 and "No deployment yet" in none.text and "http-equiv" not in none.text


async def test_the_freeze_calendar_shows_windows_and_next_open_in_the_chosen_time_zone(
    gateway: Gateway, services: StandIn
) -> None:
    tenant = await gateway.tenant()
    prod = views.environment("prod", order_index=1)
    one_off = views.freeze_window(
        prod["id"],
        rrule=None,
        duration_s=None,
        dtstart=None,
        start="2026-12-24T00:00:00Z",
        end="2026-12-27T00:00:00Z",
        reason="holidays",
    )
    services.answer(prom.GET_ENVIRONMENT_BOARD, views.board([(prod, True, [views.freeze_window(prod["id"]), one_off])]))
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        page = await client.get("/ui/freeze", params={"tz": "Europe/Berlin"})
        wrong = await client.get("/ui/freeze", params={"tz": "Mars/Olympus"})
    assert page.status_code == 200, page.text
    text = page.text
    assert "frozen" in text and "opens 2026-01-05T08:00:00+01:00" in text  # 07:00 UTC, Berlin time
    assert "FREQ=WEEKLY;BYDAY=FR" in text and "64 h each" in text and "weekend freeze" in text
    assert "2026-12-24T01:00:00+01:00 to 2026-12-27T01:00:00+01:00" in text and "holidays" in text
    assert services.last(prom.GET_ENVIRONMENT_BOARD).payload["include_windows"] is True
    assert wrong.status_code == 400 and "Mars/Olympus" in wrong.text


async def test_evidence_is_listed_by_type_and_exported_by_day(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    packet = views.packet(str(uuid.uuid4()), packet_type="deployment")
    services.answer(evid.LIST_PACKETS, views.page([packet]))
    services.answer(
        evid.EXPORT_BUNDLE,
        error=ErrorDetail(code="VAL_INVALID_REQUEST", status=422, title="Unprocessable", detail="range refused"),
    )
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        page = await client.get("/ui/evidence", params={"packet_type": "deployment"})
        wrong = await client.get("/ui/evidence", params={"packet_type": "gossip"})
        export = await client.get("/ui/evidence/export", params={"from": "2026-01-01", "to": "2026-01-31"})
        bad_day = await client.get("/ui/evidence/export", params={"from": "yesterday"})
    assert page.status_code == 200, page.text
    assert services.last(evid.LIST_PACKETS).payload["packet_type"] == "deployment"
    assert f'href="/ui/evidence/{packet["id"]}">Verify</a>' in page.text
    assert 'action="/ui/evidence/export"' in page.text
    assert wrong.status_code == 400
    sent = services.last(evid.EXPORT_BUNDLE).payload
    assert (sent["tenant_id"], sent["created_from"], sent["created_to"]) == (
        str(tenant.id),
        "2026-01-01T00:00:00Z",
        "2026-02-01T00:00:00Z",
    )
    assert export.status_code == 422 and "range refused" in export.text
    assert bad_day.status_code == 400


async def test_rollback_and_remediate_go_through_the_deployment_commands_with_csrf(
    gateway: Gateway, services: StandIn
) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vera", ["viewer"])
    deployed = views.promotion("deployed", release_name="shop-8", target_environment_name="prod")
    new, old = "sha256:" + "b" * 64, "sha256:" + "c" * 64
    job = _job(deployed, "succeeded", [_task("web-1", 1, "succeeded", new)])
    drifted = _target("web-1", deployed["target_environment_id"], old, {"drifted": True, "differences": []})
    services.answer(prom.GET_PROMOTION, deployed)
    services.answer(dep.GET_PROMOTION_DEPLOYMENT, job)
    services.answer(dep.LIST_TARGETS, views.page([drifted]))
    services.answer(dep.LIST_JOBS, views.page([]))
    services.answer(dep.ROLLBACK_JOB, {**job, "id": str(uuid.uuid4()), "kind": "rollback", "status": "pending"})
    services.answer(dep.REMEDIATE_TARGET, {**job, "id": str(uuid.uuid4()), "kind": "remediate"})
    rollback = f"/ui/promotions/{deployed['id']}/rollback"
    remediate = f"/ui/targets/{drifted['id']}/remediate"
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        page = await client.get(f"/ui/promotions/{deployed['id']}/deployment")
        csrf = _field(page.text, CSRF_FIELD)
        for path, form in ((rollback, {"job_id": job["id"]}), (remediate, {})):
            refused = await client.post(path, data=form)
            assert refused.status_code == 403 and "AUTH_CSRF_INVALID" in refused.text
        assert not [r for r in services.received if r.subject in (dep.ROLLBACK_JOB, dep.REMEDIATE_TARGET)]

        other_job = await client.post(rollback, data={"job_id": str(uuid.uuid4()), CSRF_FIELD: csrf})
        assert other_job.status_code == 404
        rolled = await client.post(rollback, data={"job_id": job["id"], "reason": "bad build", CSRF_FIELD: csrf})
        assert rolled.status_code == 303 and rolled.headers["location"] == f"/ui/promotions/{deployed['id']}/deployment"
        sent = services.last(dep.ROLLBACK_JOB).payload
        assert (sent["tenant_id"], sent["job_id"], sent["reason"]) == (str(tenant.id), job["id"], "bad build")

        fixed = await client.post(remediate, data={CSRF_FIELD: csrf})
        assert fixed.status_code == 303 and fixed.headers["location"].startswith("/ui/deployments")
        assert services.last(dep.REMEDIATE_TARGET).payload["target_id"] == drifted["id"]

        # A refusal is shown on the page, with the service's code.
        services.answer(
            dep.ROLLBACK_JOB,
            error=ErrorDetail(
                code="DEPLOY_NO_PREVIOUS_DIGEST", status=422, title="Unprocessable", detail="nothing to roll back to"
            ),
        )
        refused = await client.post(rollback, data={"job_id": job["id"], CSRF_FIELD: csrf})
        assert refused.status_code == 422 and "DEPLOY_NO_PREVIOUS_DIGEST" in refused.text
        assert 'role="alert"' in refused.text

    # A viewer sees neither button and may not post either.
    async with _browser(gateway) as client:
        await _sign_in(client, viewer.token)
        page = await client.get(f"/ui/promotions/{deployed['id']}/deployment")
        assert "Roll back this deployment" not in page.text and ">Remediate</button>" not in page.text
        csrf = _field(page.text, CSRF_FIELD)
        denied = await client.post(remediate, data={CSRF_FIELD: csrf})
        assert denied.status_code == 403 and "PERM_DENIED" in denied.text


async def test_the_agents_page_shows_status_heartbeat_version_capabilities_and_labels(
    gateway: Gateway, services: StandIn
) -> None:
    tenant = await gateway.tenant()
    agent = {
        "id": str(uuid.uuid4()),
        "name": "edge-1",
        "version": "1.4.2",
        "capabilities": ["docker_host", "compose_host"],
        "labels": {"region": "eu-west-1"},
        "status": "online",
        "checks": [],
        "last_heartbeat_at": views._now(),
        "registered_at": views._now(),
        "revoked_at": None,
    }
    services.answer(dep.LIST_AGENTS, views.page([agent]))
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        page = await client.get("/ui/agents", params={"status": "online"})
        wrong = await client.get("/ui/agents", params={"status": "asleep"})
    assert page.status_code == 200, page.text
    row = page.text[page.text.index("<td>edge-1</td>") :]
    assert "online" in row and "1.4.2" in row and "docker_host, compose_host" in row
    assert "<code>region=eu-west-1</code>" in row and " ago)" in row
    assert services.last(dep.LIST_AGENTS).payload["status"] == "online"
    assert wrong.status_code == 400


async def test_the_live_event_stream_needs_a_session(gateway: Gateway) -> None:
    async with _browser(gateway) as client:
        answer = await client.get("/ui/events/stream", params={"resource": f"promotions/{uuid.uuid4()}"})
    assert answer.status_code == 401
