"""Environment, freeze window, environment state and scan result routes: what goes to the promotion service.

A stand-in answers the promotion subjects on the real NATS server; the full service is covered end to end.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from stella.contracts import promotion as prom
from stella.contracts.envelope import ErrorDetail

from . import views
from .conftest import Gateway, StandIn, assert_problem

ENVIRONMENT = {"name": "prod", "order_index": 2, "required_approvals": 2, "require_sod": True}
WINDOW = {
    "kind": "deny",
    "rrule": "FREQ=WEEKLY;BYDAY=FR;BYHOUR=16;BYMINUTE=0",
    "duration_s": 64 * 3600,
    "dtstart": "2026-01-02T16:00:00",
    "timezone": "Europe/Berlin",
    "reason": "weekend freeze",
}


async def test_create_environment_sends_the_command_and_answers_201(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    view = views.environment("prod")
    services.answer(prom.CREATE_ENVIRONMENT, view)
    body = {
        **ENVIRONMENT,
        "display_name": "Production",
        "config": {"deployment_timeout_s": 900, "variables": {"REGION": "eu"}},
        "promotion_policy": {"workflow_template": "standard-promotion", "approver_groups": ["release-managers"]},
    }
    response = await gateway.call("POST", "/api/v1/environments", tenant.token, json=body)
    assert response.status_code == 201, response.text
    assert response.json() == view
    assert response.headers["location"] == f"/api/v1/environments/{view['id']}"
    sent = services.last(prom.CREATE_ENVIRONMENT).payload
    assert (sent["tenant_id"], sent["actor_id"], sent["correlation_id"]) == (
        str(tenant.id),
        str(tenant.admin_id),
        response.headers["x-trace-id"],
    )
    assert {k: sent[k] for k in body} == body


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({**ENVIRONMENT, "required_approvals": -1}, ["body", "required_approvals"]),
        ({**ENVIRONMENT, "required_approvals": 51}, ["body", "required_approvals"]),
        ({**ENVIRONMENT, "order_index": -1}, ["body", "order_index"]),
        ({**ENVIRONMENT, "name": "Prod EU"}, ["body", "name"]),
        ({**ENVIRONMENT, "tenant_id": str(uuid.uuid4())}, ["body", "tenant_id"]),
        ({"name": "prod"}, ["body", "order_index"]),
    ],
)
async def test_malformed_environments_are_400_before_anything_is_sent(
    gateway: Gateway, services: StandIn, body: dict[str, Any], loc: list[Any]
) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call("POST", "/api/v1/environments", tenant.token, json=body)
    problem = assert_problem(response, 400, "VAL_INVALID_REQUEST")
    assert loc in [error["loc"] for error in problem["errors"]], problem
    assert services.received == []


async def test_read_list_update_and_delete_environments(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    view = views.environment("staging", order_index=1)
    services.answer(prom.LIST_ENVIRONMENTS, views.page([view], "next"))
    listed = await gateway.call("GET", "/api/v1/environments?page_size=1&page_token=abc", tenant.token)
    assert listed.json() == {"items": [view], "next_page_token": "next"}
    assert services.last(prom.LIST_ENVIRONMENTS).payload["page"] == {"page_size": 1, "page_token": "abc"}

    services.answer(prom.GET_ENVIRONMENT, view)
    read = await gateway.call("GET", f"/api/v1/environments/{view['id']}", tenant.token)
    assert read.json() == view
    assert services.last(prom.GET_ENVIRONMENT).payload["environment_id"] == view["id"]

    services.answer(prom.UPDATE_ENVIRONMENT, {**view, "required_approvals": 1})
    updated = await gateway.call(
        "PUT", f"/api/v1/environments/{view['id']}", tenant.token, json={"required_approvals": 1}
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["required_approvals"] == 1
    sent = services.last(prom.UPDATE_ENVIRONMENT).payload
    assert sent["environment_id"] == view["id"]
    assert sent["required_approvals"] == 1
    # Omitted fields keep their value: they are not sent.
    assert (sent["order_index"], sent["require_sod"], sent["config"], sent["promotion_policy"]) == (
        None,
        None,
        None,
        None,
    )

    services.answer(prom.DELETE_ENVIRONMENT, {"id": view["id"], "deleted": True})
    deleted = await gateway.call("DELETE", f"/api/v1/environments/{view['id']}", tenant.token)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert services.last(prom.DELETE_ENVIRONMENT).payload["environment_id"] == view["id"]


async def test_service_refusals_keep_their_status_and_code(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    in_use = ErrorDetail(
        code="ENV_IN_USE", status=409, title="Environment is used by promotions", detail="prod has promotions"
    )
    services.answer(prom.DELETE_ENVIRONMENT, error=in_use)
    body = assert_problem(
        await gateway.call("DELETE", f"/api/v1/environments/{uuid.uuid4()}", tenant.token), 409, "ENV_IN_USE"
    )
    assert body["detail"] == "prod has promotions"

    missing = ErrorDetail(code="ENV_NOT_FOUND", status=404, title="Environment not found", detail="no such env")
    services.answer(prom.GET_ENVIRONMENT_STATE, error=missing)
    assert_problem(
        await gateway.call("GET", f"/api/v1/environments/{uuid.uuid4()}/state", tenant.token), 404, "ENV_NOT_FOUND"
    )

    taken = ErrorDetail(code="RES_DUPLICATE_NAME", status=409, title="Name already in use")
    services.answer(prom.CREATE_ENVIRONMENT, error=taken)
    assert_problem(
        await gateway.call("POST", "/api/v1/environments", tenant.token, json=ENVIRONMENT), 409, "RES_DUPLICATE_NAME"
    )


async def test_freeze_windows_add_list_and_remove(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    environment_id = str(uuid.uuid4())
    exception = str(uuid.uuid4())
    window = views.freeze_window(environment_id, exceptions=[exception])
    services.answer(prom.ADD_FREEZE_WINDOW, window)
    added = await gateway.call(
        "POST",
        f"/api/v1/environments/{environment_id}/freeze-windows",
        tenant.token,
        json={**WINDOW, "exceptions": [exception]},
    )
    assert added.status_code == 201, added.text
    assert added.json() == window
    assert added.headers["location"] == f"/api/v1/environments/{environment_id}/freeze-windows"
    sent = services.last(prom.ADD_FREEZE_WINDOW).payload
    assert sent["environment_id"] == environment_id
    # The recurring window's first occurrence stays a wall time (no offset) of its zone.
    assert sent["window"] == {
        "kind": "deny",
        "start": None,
        "end": None,
        "rrule": WINDOW["rrule"],
        "duration_s": WINDOW["duration_s"],
        "dtstart": "2026-01-02T16:00:00",
        "timezone": "Europe/Berlin",
        "reason": "weekend freeze",
        "exceptions": [exception],
    }

    one_off = {"start": "2026-12-24T00:00:00+01:00", "end": "2026-12-27T00:00:00+01:00", "reason": "holidays"}
    services.answer(prom.ADD_FREEZE_WINDOW, views.freeze_window(environment_id, rrule=None))
    assert (
        await gateway.call("POST", f"/api/v1/environments/{environment_id}/freeze-windows", tenant.token, json=one_off)
    ).status_code == 201
    sent_window = services.last(prom.ADD_FREEZE_WINDOW).payload["window"]
    assert (sent_window["kind"], sent_window["timezone"], sent_window["rrule"]) == ("deny", "UTC", None)
    assert datetime.fromisoformat(sent_window["start"]) == datetime(2026, 12, 23, 23, tzinfo=UTC)

    services.answer(prom.LIST_FREEZE_WINDOWS, views.page([window]))
    listed = await gateway.call(
        "GET", f"/api/v1/environments/{environment_id}/freeze-windows?page_size=10", tenant.token
    )
    assert listed.json()["items"] == [window]
    sent = services.last(prom.LIST_FREEZE_WINDOWS).payload
    assert (sent["environment_id"], sent["page"]["page_size"]) == (environment_id, 10)

    services.answer(prom.REMOVE_FREEZE_WINDOW, {"id": window["id"], "deleted": True})
    removed = await gateway.call(
        "DELETE", f"/api/v1/environments/{environment_id}/freeze-windows/{window['id']}", tenant.token
    )
    assert removed.status_code == 204
    sent = services.last(prom.REMOVE_FREEZE_WINDOW).payload
    assert (sent["environment_id"], sent["window_id"]) == (environment_id, window["id"])

    gone = ErrorDetail(code="ENV_FREEZE_WINDOW_NOT_FOUND", status=404, title="Freeze window not found")
    services.answer(prom.REMOVE_FREEZE_WINDOW, error=gone)
    assert_problem(
        await gateway.call(
            "DELETE", f"/api/v1/environments/{environment_id}/freeze-windows/{uuid.uuid4()}", tenant.token
        ),
        404,
        "ENV_FREEZE_WINDOW_NOT_FOUND",
    )


async def test_a_window_the_service_finds_invalid_is_its_400(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    bad_rrule = ErrorDetail(
        code="ENV_FREEZE_RRULE_INVALID",
        status=400,
        title="Invalid recurrence rule",
        detail="FREQ=SOMETIMES is not an RFC 5545 frequency",
        errors=[{"loc": ["window", "rrule"], "msg": "unknown frequency"}],
    )
    services.answer(prom.ADD_FREEZE_WINDOW, error=bad_rrule)
    response = await gateway.call(
        "POST",
        f"/api/v1/environments/{uuid.uuid4()}/freeze-windows",
        tenant.token,
        json={**WINDOW, "rrule": "FREQ=SOMETIMES"},
    )
    body = assert_problem(response, 400, "ENV_FREEZE_RRULE_INVALID")
    assert body["errors"] == [{"loc": ["window", "rrule"], "msg": "unknown frequency"}]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({**WINDOW, "reason": ""}, ["body", "reason"]),
        ({key: value for key, value in WINDOW.items() if key != "reason"}, ["body", "reason"]),
        ({**WINDOW, "kind": "maybe"}, ["body", "kind"]),
        ({**WINDOW, "duration_s": -5}, ["body", "duration_s"]),
        ({**WINDOW, "exceptions": ["alice"]}, ["body", "exceptions", 0]),
        ({"start": "2026-12-24T00:00:00", "end": "2026-12-27T00:00:00+00:00", "reason": "x"}, ["body", "start"]),
    ],
)
async def test_malformed_windows_are_400_before_anything_is_sent(
    gateway: Gateway, services: StandIn, body: dict[str, Any], loc: list[Any]
) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call(
        "POST", f"/api/v1/environments/{uuid.uuid4()}/freeze-windows", tenant.token, json=body
    )
    problem = assert_problem(response, 400, "VAL_INVALID_REQUEST")
    assert loc in [error["loc"] for error in problem["errors"]], problem
    assert services.received == []


async def test_environment_state(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vic", ["viewer"])
    environment_id = str(uuid.uuid4())
    state = views.environment_state(environment_id, closed=True)
    services.answer(prom.GET_ENVIRONMENT_STATE, state)
    response = await gateway.call("GET", f"/api/v1/environments/{environment_id}/state", viewer.token)
    assert response.status_code == 200, response.text
    assert response.json() == state
    assert services.last(prom.GET_ENVIRONMENT_STATE).payload["environment_id"] == environment_id


async def test_roles_decide_who_may_change_environments(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    developer = await gateway.principal_token(tenant, "dev", ["developer"])
    approver = await gateway.principal_token(tenant, "amy", ["approver"])
    operator = await gateway.principal_token(tenant, "ops", ["operator"])
    environment_id = str(uuid.uuid4())
    services.answer(prom.LIST_ENVIRONMENTS, views.page([]))
    services.answer(prom.CREATE_ENVIRONMENT, views.environment())
    services.answer(prom.ADD_FREEZE_WINDOW, views.freeze_window(environment_id))
    for token in (developer.token, approver.token):
        assert (await gateway.call("GET", "/api/v1/environments", token)).status_code == 200
        denied = assert_problem(
            await gateway.call("POST", "/api/v1/environments", token, json=ENVIRONMENT), 403, "PERM_DENIED"
        )
        assert denied["required_permission"] == "environment:create"
        for method, path, body in [
            ("PUT", f"/api/v1/environments/{environment_id}", {"required_approvals": 0}),
            ("DELETE", f"/api/v1/environments/{environment_id}", None),
            ("POST", f"/api/v1/environments/{environment_id}/freeze-windows", WINDOW),
            ("DELETE", f"/api/v1/environments/{environment_id}/freeze-windows/{uuid.uuid4()}", None),
        ]:
            assert_problem(await gateway.call(method, path, token, json=body), 403, "PERM_DENIED")
    assert [r.subject for r in services.received] == [prom.LIST_ENVIRONMENTS, prom.LIST_ENVIRONMENTS]

    created = await gateway.call("POST", "/api/v1/environments", operator.token, json=ENVIRONMENT)
    assert created.status_code == 201
    assert services.last(prom.CREATE_ENVIRONMENT).payload["actor_id"] == str(operator.principal_id)
    window = await gateway.call(
        "POST", f"/api/v1/environments/{environment_id}/freeze-windows", operator.token, json=WINDOW
    )
    assert window.status_code == 201


async def test_malformed_path_ids_are_400_on_every_environment_route(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    good = str(uuid.uuid4())
    for method, path, body in [
        ("GET", "/api/v1/environments/x1", None),
        ("PUT", "/api/v1/environments/x1", {"required_approvals": 1}),
        ("DELETE", "/api/v1/environments/x1", None),
        ("GET", "/api/v1/environments/x1/state", None),
        ("GET", "/api/v1/environments/x1/freeze-windows", None),
        ("POST", "/api/v1/environments/x1/freeze-windows", WINDOW),
        ("DELETE", "/api/v1/environments/x1/freeze-windows/" + good, None),
        ("DELETE", f"/api/v1/environments/{good}/freeze-windows/x1", None),
    ]:
        assert_problem(await gateway.call(method, path, tenant.token, json=body), 400, "VAL_INVALID_ID")
    assert services.received == []


# --- scan results ---------------------------------------------------------------------------------------

SCAN = {"digest": views.DIGEST, "critical": 0, "high": 2, "medium": 7, "scanner": "trivy"}


async def test_a_scan_result_is_recorded_and_its_verdict_answered(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    scanner = await gateway.principal_token(tenant, "scanner", ["operator"])
    verdict = views.scan_result()
    services.answer(prom.RECORD_SCAN_RESULT, verdict)
    body = {**SCAN, "low": 11, "max_epss": 0.12, "kev": False, "scanned_at": "2026-01-05T10:00:00Z"}
    response = await gateway.call("POST", "/api/v1/scan-results", scanner.token, json=body)
    assert response.status_code == 200, response.text
    assert response.json() == verdict
    sent = services.last(prom.RECORD_SCAN_RESULT).payload
    assert sent["actor_id"] == str(scanner.principal_id)
    assert {k: sent[k] for k in ("digest", "critical", "high", "medium", "low", "max_epss", "kev", "scanner")} == {
        k: body[k] for k in ("digest", "critical", "high", "medium", "low", "max_epss", "kev", "scanner")
    }
    assert sent["scanned_at"] == "2026-01-05T10:00:00Z"


async def test_developers_cannot_vouch_for_their_own_images(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    for roles in (["developer"], ["viewer"], ["approver"]):
        principal = await gateway.principal_token(tenant, roles[0], roles)
        denied = assert_problem(
            await gateway.call("POST", "/api/v1/scan-results", principal.token, json=SCAN), 403, "PERM_DENIED"
        )
        assert denied["required_permission"] == "integration:create"
    assert services.received == []


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({**SCAN, "digest": "sha256:abc"}, ["body", "digest"]),
        ({**SCAN, "critical": -1}, ["body", "critical"]),
        ({**SCAN, "max_epss": 1.5}, ["body", "max_epss"]),
        ({key: value for key, value in SCAN.items() if key != "high"}, ["body", "high"]),
        ({**SCAN, "scanned_at": "2026-01-05T10:00:00"}, ["body", "scanned_at"]),
    ],
)
async def test_malformed_scan_results_are_400(
    gateway: Gateway, services: StandIn, body: dict[str, Any], loc: list[Any]
) -> None:
    tenant = await gateway.tenant()
    problem = assert_problem(
        await gateway.call("POST", "/api/v1/scan-results", tenant.token, json=body), 400, "VAL_INVALID_REQUEST"
    )
    assert loc in [error["loc"] for error in problem["errors"]], problem
    assert services.received == []
