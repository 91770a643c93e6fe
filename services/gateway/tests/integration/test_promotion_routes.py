"""Promotion routes: requests, decisions, votes, cancellation, freeze overrides and a promotion's evidence.

Stand-ins answer the promotion, approval and evidence subjects on the real NATS server; the full services are
covered end to end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from stella.contracts import approval as appr
from stella.contracts import evidence as evid
from stella.contracts import promotion as prom
from stella.contracts.envelope import ErrorDetail, Reply
from stella.gateway.permissions import permissions_for

from . import views
from .conftest import Gateway, StandIn, assert_problem


def _request_body() -> dict[str, Any]:
    return {"release_id": str(uuid.uuid4()), "target_environment_id": str(uuid.uuid4()), "reason": "weekly release"}


async def test_request_promotion_sends_the_command_as_the_caller_and_answers_201(
    gateway: Gateway, services: StandIn
) -> None:
    tenant = await gateway.tenant()
    developer = await gateway.principal_token(tenant, "dev", ["developer"])
    body = _request_body()
    view = views.promotion(release_id=body["release_id"], target_environment_id=body["target_environment_id"])
    services.answer(prom.REQUEST_PROMOTION, view)
    response = await gateway.call("POST", "/api/v1/promotions", developer.token, json=body)
    assert response.status_code == 201, response.text
    assert response.json() == view
    assert response.headers["location"] == f"/api/v1/promotions/{view['id']}"
    sent = services.last(prom.REQUEST_PROMOTION).payload
    assert (sent["tenant_id"], sent["actor_id"], sent["correlation_id"]) == (
        str(tenant.id),
        str(developer.principal_id),
        response.headers["x-trace-id"],
    )
    assert (sent["actor_name"], sent["actor_display_name"]) == ("dev", None)  # a principal without a display name
    assert (sent["release_id"], sent["target_environment_id"], sent["source_environment_id"], sent["reason"]) == (
        body["release_id"],
        body["target_environment_id"],
        None,
        "weekly release",
    )


async def test_a_repeated_promotion_request_is_sent_once(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    body = _request_body()
    services.answer(prom.REQUEST_PROMOTION, views.promotion())
    key = {"Idempotency-Key": f"promote-{uuid.uuid4()}"}
    first = await gateway.call("POST", "/api/v1/promotions", tenant.token, json=body, headers=key)
    again = await gateway.call("POST", "/api/v1/promotions", tenant.token, json=body, headers=key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert [r.subject for r in services.received] == [prom.REQUEST_PROMOTION]
    # The command id comes from the key, so a retry that reaches the service is the same command.
    assert uuid.UUID(services.received[0].payload["message_id"]).version == 5


async def test_business_refusals_of_a_request_keep_their_code(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    order = ErrorDetail(
        code="PROM_ORDER_VIOLATION",
        status=422,
        title="Promotion order violated",
        detail="promote r1 to staging before prod",
    )
    services.answer(prom.REQUEST_PROMOTION, error=order)
    body = assert_problem(
        await gateway.call("POST", "/api/v1/promotions", tenant.token, json=_request_body()),
        422,
        "PROM_ORDER_VIOLATION",
    )
    assert body["detail"] == "promote r1 to staging before prod"


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"release_id": "r1"}, ["body", "release_id"]),
        ({"target_environment_id": None}, ["body", "target_environment_id"]),
        ({"reason": "x" * 2001}, ["body", "reason"]),
        ({"status": "approved"}, ["body", "status"]),
    ],
)
async def test_malformed_promotion_requests_are_400(
    gateway: Gateway, services: StandIn, change: dict[str, Any], loc: list[Any]
) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call("POST", "/api/v1/promotions", tenant.token, json={**_request_body(), **change})
    problem = assert_problem(response, 400, "VAL_INVALID_REQUEST")
    assert loc in [error["loc"] for error in problem["errors"]], problem
    assert services.received == []


async def test_list_promotions_passes_filters_and_paging_through(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    items = [views.promotion("pending_approval"), views.promotion("pending_approval")]
    services.answer(prom.LIST_PROMOTIONS, views.page(items, "cursor-2"))
    release_id, environment_id = str(uuid.uuid4()), str(uuid.uuid4())
    response = await gateway.call(
        "GET",
        f"/api/v1/promotions?status=pending_approval&release_id={release_id}&environment_id={environment_id}"
        "&page_size=2&page_token=cursor-1",
        tenant.token,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"items": items, "next_page_token": "cursor-2"}
    sent = services.last(prom.LIST_PROMOTIONS).payload
    assert (sent["status"], sent["release_id"], sent["environment_id"], sent["page"]) == (
        "pending_approval",
        release_id,
        environment_id,
        {"page_size": 2, "page_token": "cursor-1"},
    )
    unfiltered = await gateway.call("GET", "/api/v1/promotions", tenant.token)
    assert unfiltered.status_code == 200
    sent = services.last(prom.LIST_PROMOTIONS).payload
    assert (sent["status"], sent["release_id"], sent["page"]) == (None, None, {"page_size": 50, "page_token": None})

    for query in ("status=shipped", "release_id=r1", "environment_id=prod", "page_size=0", "page_size=501"):
        bad = await gateway.call("GET", f"/api/v1/promotions?{query}", tenant.token)
        assert bad.json()["errors"][0]["loc"][0] == "query", bad.text
        assert_problem(bad, 400, "VAL_INVALID_REQUEST")


async def test_read_a_promotion_and_its_decision(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vic", ["viewer"])
    view = views.promotion("approved", decision_record={"result": "allow", "gates": []})
    services.answer(prom.GET_PROMOTION, view)
    read = await gateway.call("GET", f"/api/v1/promotions/{view['id']}", viewer.token)
    assert (read.status_code, read.json()) == (200, view)
    assert services.last(prom.GET_PROMOTION).payload["promotion_id"] == view["id"]

    decision = views.decision(view["id"])
    services.answer(prom.GET_DECISION, decision)
    record = await gateway.call("GET", f"/api/v1/promotions/{view['id']}/decision", viewer.token)
    assert (record.status_code, record.json()) == (200, decision)
    assert services.last(prom.GET_DECISION).payload["promotion_id"] == view["id"]


async def test_a_decision_is_404_until_the_gates_were_evaluated(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    none_yet = ErrorDetail(
        code="PROM_NOT_FOUND", status=404, title="Not found", detail="promotion p1 has no decision yet"
    )
    services.answer(prom.GET_DECISION, error=none_yet)
    response = await gateway.call("GET", f"/api/v1/promotions/{uuid.uuid4()}/decision", tenant.token)
    assert assert_problem(response, 404, "PROM_NOT_FOUND")["detail"] == "promotion p1 has no decision yet"


async def test_approve_casts_a_vote_with_the_callers_permissions_and_groups(
    gateway: Gateway, services: StandIn
) -> None:
    tenant = await gateway.tenant()
    approver = await gateway.principal_token(
        tenant, "amy", ["approver"], groups=["release-managers", "oncall"], display_name="Amy Example"
    )
    promotion_id = str(uuid.uuid4())
    request = views.approval_request(promotion_id, votes=1)
    services.answer(appr.CAST_VOTE, request)
    response = await gateway.call(
        "POST", f"/api/v1/promotions/{promotion_id}/approve", approver.token, json={"comment": "looks good"}
    )
    assert response.status_code == 200, response.text
    answered = response.json()
    # The workflow step the request waits on is the services' business, not the API's.
    assert "step" not in answered
    assert answered == {k: v for k, v in request.items() if k != "step"}
    sent = services.last(appr.CAST_VOTE).payload
    assert (sent["promotion_id"], sent["action"], sent["comment"], sent["actor_id"]) == (
        promotion_id,
        "approved",
        "looks good",
        str(approver.principal_id),
    )
    assert sent["permissions"] == sorted(permissions_for(["approver"]))
    assert "promotion:approve" in sent["permissions"]
    assert sent["groups"] == ["oncall", "release-managers"]
    # The vote names the approver as well as its id, so records of it need not ask the gateway back.
    assert (sent["actor_name"], sent["actor_display_name"]) == ("amy", "Amy Example")

    # A change of the voter's groups reaches its next vote (this gateway forgets the cached token at once).
    changed = await gateway.call(
        "PUT", f"/api/v1/principals/{approver.principal_id}", tenant.token, json={"groups": ["sre"]}
    )
    assert changed.status_code == 200, changed.text
    await gateway.call("POST", f"/api/v1/promotions/{promotion_id}/approve", approver.token)
    assert services.last(appr.CAST_VOTE).payload["groups"] == ["sre"]
    cleared = await gateway.call(
        "PUT", f"/api/v1/principals/{approver.principal_id}", tenant.token, json={"groups": []}
    )
    assert cleared.status_code == 200, cleared.text
    await gateway.call("POST", f"/api/v1/promotions/{promotion_id}/reject", approver.token)
    assert services.last(appr.CAST_VOTE).payload["groups"] == []


async def test_reject_casts_a_rejection_and_the_comment_is_optional(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    promotion_id = str(uuid.uuid4())
    services.answer(appr.CAST_VOTE, views.approval_request(promotion_id, status="denied"))
    with_comment = await gateway.call(
        "POST", f"/api/v1/promotions/{promotion_id}/reject", tenant.token, json={"comment": "CVE-2026-1 is open"}
    )
    assert (with_comment.status_code, with_comment.json()["status"]) == (200, "denied")
    sent = services.last(appr.CAST_VOTE).payload
    assert (sent["action"], sent["comment"]) == ("rejected", "CVE-2026-1 is open")
    assert sent["permissions"] == sorted(permissions_for(["tenant-admin"]))

    without = await gateway.call("POST", f"/api/v1/promotions/{promotion_id}/reject", tenant.token)
    assert without.status_code == 200, without.text
    assert services.last(appr.CAST_VOTE).payload["comment"] == ""


async def test_the_approval_services_refusals_pass_through(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    promotion_id = str(uuid.uuid4())
    refusals = [
        ErrorDetail(
            code="PROM_SOD_VIOLATION",
            status=422,
            title="Separation of duties",
            detail="the requester of a promotion may not approve it",
        ),
        ErrorDetail(code="PROM_ALREADY_VOTED", status=409, title="Already voted", detail="amy voted already"),
        ErrorDetail(code="PROM_APPROVAL_NOT_PENDING", status=409, title="Not pending", detail="already rejected"),
        ErrorDetail(code="PROM_APPROVAL_NOT_FOUND", status=404, title="Not found", detail="no approval request"),
        ErrorDetail(code="PROM_APPROVER_NOT_ELIGIBLE", status=403, title="Not eligible", detail="not an approver"),
    ]
    for refusal in refusals:
        services.answer(appr.CAST_VOTE, error=refusal)
        response = await gateway.call("POST", f"/api/v1/promotions/{promotion_id}/approve", tenant.token)
        body = assert_problem(response, refusal.status, refusal.code)
        assert (body["title"], body["detail"]) == (refusal.title, refusal.detail)


async def test_a_repeated_approval_under_one_key_is_one_vote(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    promotion_id = str(uuid.uuid4())
    services.answer(appr.CAST_VOTE, views.approval_request(promotion_id, votes=1))
    key = {"Idempotency-Key": f"vote-{uuid.uuid4()}"}
    path = f"/api/v1/promotions/{promotion_id}/approve"
    first = await gateway.call("POST", path, tenant.token, json={"comment": "ok"}, headers=key)
    again = await gateway.call("POST", path, tenant.token, json={"comment": "ok"}, headers=key)
    assert (first.status_code, again.status_code, again.headers["idempotent-replayed"]) == (200, 200, "true")
    assert len(services.received) == 1


async def test_viewers_and_developers_cannot_vote(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vic", ["viewer"])
    developer = await gateway.principal_token(tenant, "dev", ["developer"])
    operator = await gateway.principal_token(tenant, "ops", ["operator"])
    promotion_id = str(uuid.uuid4())
    for token in (viewer.token, developer.token, operator.token):
        for action in ("approve", "reject"):
            response = await gateway.call("POST", f"/api/v1/promotions/{promotion_id}/{action}", token)
            denied = assert_problem(response, 403, "PERM_DENIED")
            assert denied["required_permission"] == "promotion:approve"
    assert services.received == []


async def test_read_a_promotions_approval_request(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vic", ["viewer"])
    promotion_id = str(uuid.uuid4())
    request = views.approval_request(promotion_id, votes=2, status="granted")
    services.answer(appr.GET_APPROVALS, request)
    response = await gateway.call("GET", f"/api/v1/promotions/{promotion_id}/approvals", viewer.token)
    assert response.status_code == 200, response.text
    assert response.json()["votes"] == request["votes"]
    assert response.json()["status"] == "granted"
    assert services.last(appr.GET_APPROVALS).payload["promotion_id"] == promotion_id

    services.answer(appr.GET_APPROVALS, error=ErrorDetail(code="PROM_APPROVAL_NOT_FOUND", status=404, title="x"))
    assert_problem(
        await gateway.call("GET", f"/api/v1/promotions/{promotion_id}/approvals", viewer.token),
        404,
        "PROM_APPROVAL_NOT_FOUND",
    )


async def test_cancel_needs_promotion_update(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    developer = await gateway.principal_token(tenant, "dev", ["developer"])
    operator = await gateway.principal_token(tenant, "ops", ["operator"])
    view = views.promotion("cancelled")
    path = f"/api/v1/promotions/{view['id']}/cancel"
    denied = assert_problem(await gateway.call("POST", path, developer.token), 403, "PERM_DENIED")
    assert denied["required_permission"] == "promotion:update"
    assert services.received == []

    services.answer(prom.CANCEL_PROMOTION, view)
    response = await gateway.call("POST", path, operator.token, json={"reason": "wrong release"})
    assert (response.status_code, response.json()["status"]) == (200, "cancelled")
    sent = services.last(prom.CANCEL_PROMOTION).payload
    assert (sent["promotion_id"], sent["reason"], sent["actor_id"]) == (
        view["id"],
        "wrong release",
        str(operator.principal_id),
    )
    assert (await gateway.call("POST", path, operator.token)).status_code == 200
    assert services.last(prom.CANCEL_PROMOTION).payload["reason"] is None

    deploying = ErrorDetail(code="PROM_CANCEL_NOT_ALLOWED", status=409, title="Cannot cancel", detail="deploying")
    services.answer(prom.CANCEL_PROMOTION, error=deploying)
    assert_problem(await gateway.call("POST", path, operator.token), 409, "PROM_CANCEL_NOT_ALLOWED")


def _freeze_exceptions(*allowed: uuid.UUID) -> Callable[[dict[str, Any]], Reply]:
    """Plays the promotion service's override rule: window exceptions, or callers holding freeze:override."""

    def decide(payload: dict[str, Any]) -> Reply:
        if payload["may_override"] or uuid.UUID(payload["actor_id"]) in allowed:
            return Reply.success(
                views.promotion(
                    "pending_approval",
                    id=payload["promotion_id"],
                    freeze_override={"principal": payload["actor_id"], "reason": payload["reason"]},
                )
            )
        return Reply.failure(
            ErrorDetail(
                code="GATE_FREEZE_OVERRIDE_FORBIDDEN",
                status=422,
                title="Freeze override forbidden",
                detail="the caller is not an exception of the window",
            )
        )

    return decide


async def test_override_freeze_tells_the_service_whether_the_caller_may_override(
    gateway: Gateway, services: StandIn
) -> None:
    tenant = await gateway.tenant()
    operator = await gateway.principal_token(tenant, "ops", ["operator"])
    promotion_id = str(uuid.uuid4())
    path = f"/api/v1/promotions/{promotion_id}/override-freeze"
    services.on(prom.OVERRIDE_FREEZE, _freeze_exceptions())
    response = await gateway.call("POST", path, tenant.token, json={"reason": "  hotfix for incident 42 "})
    assert response.status_code == 200, response.text
    assert response.json()["freeze_override"] == {"principal": str(tenant.admin_id), "reason": "hotfix for incident 42"}
    sent = services.last(prom.OVERRIDE_FREEZE).payload
    assert (sent["promotion_id"], sent["reason"], sent["may_override"], sent["actor_id"]) == (
        promotion_id,
        "hotfix for incident 42",
        True,
        str(tenant.admin_id),
    )

    # Operators hold freeze:override too.
    by_operator = await gateway.call("POST", path, operator.token, json={"reason": "hotfix"})
    assert by_operator.status_code == 200, by_operator.text
    sent = services.last(prom.OVERRIDE_FREEZE).payload
    assert (sent["may_override"], sent["actor_id"]) == (True, str(operator.principal_id))


async def test_a_window_exception_without_freeze_override_is_left_to_the_promotion_service(
    gateway: Gateway, services: StandIn
) -> None:
    tenant = await gateway.tenant()
    listed = await gateway.principal_token(tenant, "dev", ["developer"])
    unlisted = await gateway.principal_token(tenant, "eve", ["developer"])
    approver = await gateway.principal_token(tenant, "amy", ["approver"])
    path = f"/api/v1/promotions/{uuid.uuid4()}/override-freeze"
    services.on(prom.OVERRIDE_FREEZE, _freeze_exceptions(listed.principal_id))

    # A developer named in the window's exceptions gets through, though it may not change promotions.
    let_through = await gateway.call("POST", path, listed.token, json={"reason": "hotfix"})
    assert let_through.status_code == 200, let_through.text
    assert let_through.json()["freeze_override"]["principal"] == str(listed.principal_id)
    assert services.last(prom.OVERRIDE_FREEZE).payload["may_override"] is False

    # Anyone else without freeze:override gets the promotion service's refusal as it gave it.
    for principal in (unlisted, approver):
        refused = await gateway.call("POST", path, principal.token, json={"reason": "hotfix"})
        body = assert_problem(refused, 422, "GATE_FREEZE_OVERRIDE_FORBIDDEN")
        assert body["detail"] == "the caller is not an exception of the window"
        sent = services.last(prom.OVERRIDE_FREEZE).payload
        assert (sent["may_override"], sent["actor_id"]) == (False, str(principal.principal_id))


async def test_overriding_a_freeze_needs_at_least_promotion_read(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    nobody = await gateway.principal_token(tenant, "nobody", [])
    path = f"/api/v1/promotions/{uuid.uuid4()}/override-freeze"
    denied = assert_problem(
        await gateway.call("POST", path, nobody.token, json={"reason": "please"}), 403, "PERM_DENIED"
    )
    assert denied["required_permission"] == "promotion:read"
    assert services.received == []


@pytest.mark.parametrize("body", [None, {}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 2001}])
async def test_an_override_without_a_reason_is_400(gateway: Gateway, services: StandIn, body: Any) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call("POST", f"/api/v1/promotions/{uuid.uuid4()}/override-freeze", tenant.token, json=body)
    assert_problem(response, 400, "VAL_INVALID_REQUEST")
    assert services.received == []


async def test_a_promotions_evidence(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vic", ["viewer"])
    promotion_id = str(uuid.uuid4())
    packets = [views.packet(promotion_id, 7), views.packet(promotion_id, 9)]
    services.answer(prom.GET_PROMOTION, views.promotion(id=promotion_id))
    services.answer(evid.LIST_PACKETS, views.page(packets, "after-9"))
    response = await gateway.call(
        "GET", f"/api/v1/promotions/{promotion_id}/evidence?packet_type=release_decision&page_size=2", viewer.token
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"items": packets, "next_page_token": "after-9"}
    sent = services.last(evid.LIST_PACKETS).payload
    assert (sent["promotion_id"], sent["packet_type"], sent["page"]["page_size"]) == (
        promotion_id,
        "release_decision",
        2,
    )
    bad = await gateway.call("GET", f"/api/v1/promotions/{promotion_id}/evidence?packet_type=selfie", viewer.token)
    assert_problem(bad, 400, "VAL_INVALID_REQUEST")


async def test_the_evidence_of_another_tenants_promotion_is_404(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    services.answer(
        prom.GET_PROMOTION,
        error=ErrorDetail(code="RES_NOT_FOUND", status=404, title="Not found", detail="no such promotion"),
    )
    services.answer(evid.LIST_PACKETS, views.page([]))
    response = await gateway.call("GET", f"/api/v1/promotions/{uuid.uuid4()}/evidence", tenant.token)
    assert_problem(response, 404, "RES_NOT_FOUND")
    assert [r.subject for r in services.received] == [prom.GET_PROMOTION]


async def test_a_principal_without_roles_reads_no_promotion(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    nobody = await gateway.principal_token(tenant, "nobody", [])
    promotion_id = str(uuid.uuid4())
    for path, permission in [
        ("/api/v1/promotions", "promotion:read"),
        (f"/api/v1/promotions/{promotion_id}", "promotion:read"),
        (f"/api/v1/promotions/{promotion_id}/decision", "promotion:read"),
        (f"/api/v1/promotions/{promotion_id}/approvals", "promotion:read"),
        (f"/api/v1/promotions/{promotion_id}/evidence", "evidence:read"),
    ]:
        denied = assert_problem(await gateway.call("GET", path, nobody.token), 403, "PERM_DENIED")
        assert denied["required_permission"] == permission
    denied = assert_problem(
        await gateway.call("POST", "/api/v1/promotions", nobody.token, json=_request_body()), 403, "PERM_DENIED"
    )
    assert denied["required_permission"] == "promotion:create"
    assert services.received == []


async def test_malformed_path_ids_are_400_on_every_promotion_route(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    for method, path, body in [
        ("GET", "/api/v1/promotions/x1", None),
        ("GET", "/api/v1/promotions/x1/decision", None),
        ("GET", "/api/v1/promotions/x1/approvals", None),
        ("GET", "/api/v1/promotions/x1/evidence", None),
        ("POST", "/api/v1/promotions/x1/approve", None),
        ("POST", "/api/v1/promotions/x1/reject", {"comment": "no"}),
        ("POST", "/api/v1/promotions/x1/cancel", None),
        ("POST", "/api/v1/promotions/x1/override-freeze", {"reason": "hotfix"}),
    ]:
        assert_problem(await gateway.call(method, path, tenant.token, json=body), 400, "VAL_INVALID_ID")
    assert services.received == []


async def test_a_promotion_of_another_tenant_is_404(gateway: Gateway, services: StandIn) -> None:
    owner, stranger = await gateway.tenant("owner"), await gateway.tenant("stranger")
    view = views.promotion()

    def scoped(payload: dict[str, Any]) -> Reply:
        # Plays the service's tenant filter: the promotion exists only for its owner.
        if payload["tenant_id"] == str(owner.id) and payload["promotion_id"] == view["id"]:
            return Reply.success(view)
        return Reply.failure(ErrorDetail(code="PROM_NOT_FOUND", status=404, title="Not found"))

    services.on(prom.GET_PROMOTION, scoped)
    assert (await gateway.call("GET", f"/api/v1/promotions/{view['id']}", owner.token)).status_code == 200
    assert_problem(await gateway.call("GET", f"/api/v1/promotions/{view['id']}", stranger.token), 404, "PROM_NOT_FOUND")
