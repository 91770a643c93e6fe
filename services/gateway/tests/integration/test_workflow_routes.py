"""Workflow template and run routes: what goes to the workflow service and how its replies are shown.

A stand-in answers the workflow subjects on the real NATS server; the full service is covered end to end.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from stella.contracts import workflow as wf
from stella.contracts.envelope import ErrorDetail

from . import views
from .conftest import Gateway, StandIn, assert_problem

TEMPLATE: dict[str, Any] = {
    "name": "canary",
    "nodes": [
        {"id": "gates", "type": "gate"},
        {"id": "soak", "type": "wait", "config": {"seconds": 60}, "timeout_s": 120, "retry": {"max_attempts": 3}},
    ],
    "edges": [{"from": "gates", "to": "soak"}],
    "inputs": {"promotion_id": {"required": True}},
}


async def test_list_templates_with_paging(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vic", ["viewer"])
    builtin = views.template("standard-promotion", tenant_id=None, is_builtin=True)
    services.answer(wf.LIST_TEMPLATES, views.page([builtin], "more"))
    response = await gateway.call("GET", "/api/v1/workflow-templates?page_size=1", viewer.token)
    assert response.status_code == 200, response.text
    # The workflow service writes edges as {from, to}, as the API shows them.
    assert builtin["edges"] == [{"from": "gates", "to": "soak"}]
    assert response.json() == {"items": [builtin], "next_page_token": "more"}
    assert services.last(wf.LIST_TEMPLATES).payload["page"] == {"page_size": 1, "page_token": None}


async def test_save_a_template_answers_201_with_the_new_version(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    developer = await gateway.principal_token(tenant, "dev", ["developer"])
    view = views.template("canary", version=3)
    services.answer(wf.SAVE_TEMPLATE, view)
    response = await gateway.call("POST", "/api/v1/workflow-templates", developer.token, json=TEMPLATE)
    assert response.status_code == 201, response.text
    assert response.json() == view
    assert response.json()["edges"] == [{"from": "gates", "to": "soak"}]
    assert response.headers["location"] == "/api/v1/workflow-templates/canary?version=3"
    sent = services.last(wf.SAVE_TEMPLATE).payload
    assert sent["actor_id"] == str(developer.principal_id)
    assert sent["name"] == "canary"
    assert wf.SaveTemplate.model_validate(sent).edges == [wf.EdgeSpec(source="gates", target="soak")]
    nodes = {node["id"]: node for node in sent["nodes"]}
    assert nodes["soak"]["retry"] == {"max_attempts": 3, "backoff_s": 0}
    assert (nodes["soak"]["timeout_s"], nodes["soak"]["config"], nodes["gates"]["run_on"]) == (
        120,
        {"seconds": 60},
        "success",
    )
    assert sent["inputs"] == {"promotion_id": {"required": True}}


@pytest.mark.parametrize(
    ("code", "detail"),
    [
        ("WF_CYCLE", "gates -> soak -> gates is a cycle"),
        ("WF_UNKNOWN_STEP_TYPE", "step soak has the unknown type teleport"),
        ("WF_DANGLING_EDGE", "edge gates -> deploy names no step deploy"),
    ],
)
async def test_the_workflow_services_validation_errors_are_400(
    gateway: Gateway, services: StandIn, code: str, detail: str
) -> None:
    tenant = await gateway.tenant()
    services.answer(
        wf.SAVE_TEMPLATE,
        error=ErrorDetail(
            code=code, status=400, title="Invalid template", detail=detail, errors=[{"loc": ["edges"], "msg": detail}]
        ),
    )
    response = await gateway.call("POST", "/api/v1/workflow-templates", tenant.token, json=TEMPLATE)
    body = assert_problem(response, 400, code)
    assert (body["detail"], body["errors"]) == (detail, [{"loc": ["edges"], "msg": detail}])


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"nodes": []}, ["body", "nodes"]),
        ({"name": "Canary Deploy"}, ["body", "name"]),
        ({"edges": [{"source": "gates", "target": "soak"}]}, ["body", "edges", 0, "from"]),
        ({"nodes": [{"id": "Gates", "type": "gate"}]}, ["body", "nodes", 0, "id"]),
        ({"nodes": [{"id": "gates", "type": "gate", "retry": {"max_attempts": 0}}]}, ["body", "nodes", 0, "retry"]),
        ({"nodes": [{"id": "gates", "type": "gate", "run_on": "sometimes"}]}, ["body", "nodes", 0, "run_on"]),
    ],
)
async def test_malformed_templates_are_400_before_anything_is_sent(
    gateway: Gateway, services: StandIn, change: dict[str, Any], loc: list[Any]
) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call("POST", "/api/v1/workflow-templates", tenant.token, json={**TEMPLATE, **change})
    problem = assert_problem(response, 400, "VAL_INVALID_REQUEST")
    assert any(error["loc"][: len(loc)] == loc for error in problem["errors"]), problem
    assert services.received == []


async def test_viewers_and_approvers_cannot_save_templates(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    for roles in (["viewer"], ["approver"]):
        principal = await gateway.principal_token(tenant, roles[0], roles)
        response = await gateway.call("POST", "/api/v1/workflow-templates", principal.token, json=TEMPLATE)
        assert assert_problem(response, 403, "PERM_DENIED")["required_permission"] == "workflow:create"
    assert services.received == []


async def test_read_a_template_latest_or_by_version(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    view = views.template("canary", version=2)
    services.answer(wf.GET_TEMPLATE, view)
    latest = await gateway.call("GET", "/api/v1/workflow-templates/canary", tenant.token)
    assert (latest.status_code, latest.json()) == (200, view)
    sent = services.last(wf.GET_TEMPLATE).payload
    assert (sent["name"], sent["version"]) == ("canary", None)

    pinned = await gateway.call("GET", "/api/v1/workflow-templates/canary?version=1", tenant.token)
    assert pinned.status_code == 200
    assert services.last(wf.GET_TEMPLATE).payload["version"] == 1

    services.answer(wf.GET_TEMPLATE, error=ErrorDetail(code="WF_TEMPLATE_NOT_FOUND", status=404, title="Not found"))
    assert_problem(
        await gateway.call("GET", "/api/v1/workflow-templates/nope", tenant.token), 404, "WF_TEMPLATE_NOT_FOUND"
    )

    # Edges in any other shape than the workflow service's {from, to} are not a template the API can show.
    services.answer(wf.GET_TEMPLATE, {**view, "edges": [{"source": "gates", "target": "soak"}]})
    assert_problem(await gateway.call("GET", "/api/v1/workflow-templates/canary", tenant.token), 502, "SYS_BAD_GATEWAY")

    received = len(services.received)
    for path in ("/api/v1/workflow-templates/Bad_Name", "/api/v1/workflow-templates/canary?version=0"):
        assert_problem(await gateway.call("GET", path, tenant.token), 400, "VAL_INVALID_REQUEST")
    assert len(services.received) == received


async def test_read_a_run_with_its_steps(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vic", ["viewer"])
    run = views.run()
    services.answer(wf.GET_RUN, run)
    response = await gateway.call("GET", f"/api/v1/workflow-runs/{run['id']}", viewer.token)
    assert response.status_code == 200, response.text
    assert response.json() == run
    assert [(s["node_id"], s["status"], s["attempt_number"]) for s in response.json()["steps"]] == [
        ("gates", "succeeded", 2),
        ("approval", "waiting", 1),
    ]
    assert services.last(wf.GET_RUN).payload["run_id"] == run["id"]

    services.answer(wf.GET_RUN, error=ErrorDetail(code="WF_RUN_NOT_FOUND", status=404, title="Not found"))
    assert_problem(
        await gateway.call("GET", f"/api/v1/workflow-runs/{uuid.uuid4()}", viewer.token), 404, "WF_RUN_NOT_FOUND"
    )
    received = len(services.received)
    assert_problem(await gateway.call("GET", "/api/v1/workflow-runs/x1", viewer.token), 400, "VAL_INVALID_ID")
    assert len(services.received) == received
