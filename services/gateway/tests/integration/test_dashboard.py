"""The dashboard under /ui: sign-in into a session cookie, CSRF on every form, CSP, tenant scoping, votes.

Stand-ins answer the promotion and approval subjects on the real NATS server; the browser tests run the
dashboard against every service (tests/e2e/test_dashboard.py).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from stella.contracts import approval as appr
from stella.contracts import evidence as evid
from stella.contracts import promotion as prom
from stella.contracts.envelope import ErrorDetail, Reply
from stella.gateway.controllers.ui import CSP, CSRF_FIELD, SESSION_COOKIE, SIGN_IN_COOKIE

from . import views
from .conftest import Gateway, StandIn


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
    services.answer(prom.LIST_ENVIRONMENTS, views.page([]))
    services.answer(prom.LIST_PROMOTIONS, views.page([]))
    async with _browser(gateway) as client:
        await _sign_in(client, tenant.token)
        for path in ("/ui/sign-in", "/ui/", "/ui/approvals"):
            page = await client.get(path)
            assert page.status_code == 200, (path, page.text)
            assert page.headers["content-security-policy"] == CSP
            assert "script-src" not in CSP and "default-src 'none'" in CSP
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
    services.answer(prom.LIST_ENVIRONMENTS, views.page([dev, prod]))
    services.answer(prom.LIST_PROMOTIONS, views.page([in_prod, in_dev]))
    states = {dev["id"]: False, prod["id"]: True}
    services.on(
        prom.GET_ENVIRONMENT_STATE,
        lambda payload: Reply.success(
            views.environment_state(payload["environment_id"], closed=states[payload["environment_id"]])
        ),
    )
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
    # Read as the signed-in principal of its tenant, like any API client.
    for subject in (prom.LIST_ENVIRONMENTS, prom.LIST_PROMOTIONS, prom.GET_ENVIRONMENT_STATE):
        assert services.last(subject).payload["tenant_id"] == str(tenant.id)


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
