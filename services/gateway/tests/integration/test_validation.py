"""The gateway's validation layer: bad input is a 400 (or 415) at the door and never reaches a service.

Every case here answered 5xx before (500 from the gateway, or 503 after a service dead-lettered the command)
or was silently coerced into another value.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from .conftest import Gateway, StandIn, assert_problem

DIGEST = "sha256:" + "a" * 64
NUL = "\x00"


def _deep(levels: int) -> str:
    return '{"x": ' * levels + "1" + "}" * levels


# Routes that relay to a service, with a valid body: each case breaks one field and must stop at the gateway.
RELAYED: dict[str, tuple[str, dict[str, Any]]] = {
    "component": ("/api/v1/components", {"name": "web", "image_repository": "registry.test/team/web"}),
    "release": ("/api/v1/releases", {"name": "r1", "components": [{"component": "web", "digest": DIGEST}]}),
    "environment": ("/api/v1/environments", {"name": "prod", "order_index": 1}),
    "scan": ("/api/v1/scan-results", {"digest": DIGEST, "critical": 0, "high": 0, "medium": 0}),
    "promotion": (
        "/api/v1/promotions",
        {"release_id": str(uuid.uuid4()), "target_environment_id": str(uuid.uuid4())},
    ),
    "window": (
        f"/api/v1/environments/{uuid.uuid4()}/freeze-windows",
        {"rrule": "FREQ=DAILY", "duration_s": 3600, "reason": "nightly"},
    ),
    "template": ("/api/v1/workflow-templates", {"name": "mine", "nodes": [{"id": "gates", "type": "gate"}]}),
}


@pytest.fixture
async def both(gateway: Gateway, release_service: StandIn, services: StandIn) -> tuple[StandIn, StandIn]:
    return release_service, services


def _nothing_sent(stand_ins: tuple[StandIn, StandIn]) -> None:
    for stand_in in stand_ins:
        assert stand_in.received == [], [r.subject for r in stand_in.received]


@pytest.mark.parametrize("route", sorted(RELAYED))
async def test_an_unknown_key_that_is_a_non_ascii_digit_is_400(
    gateway: Gateway, both: tuple[StandIn, StandIn], route: str
) -> None:
    tenant = await gateway.tenant()
    path, body = RELAYED[route]
    problem = assert_problem(
        await gateway.call("POST", path, tenant.token, json={**body, "³": 1}), 400, "VAL_INVALID_REQUEST"
    )
    assert ["body", "³"] in [error["loc"] for error in problem["errors"]]
    _nothing_sent(both)


@pytest.mark.parametrize(
    ("route", "field", "value"),
    [
        ("promotion", "reason", f"ship{NUL}it"),
        ("component", "display_name", f"Web{NUL}"),
        ("scan", "scanner", f"trivy{NUL}"),
        ("environment", "config", {"variables": {"REGION": f"eu{NUL}"}}),
        ("environment", "display_name", "Prod\x07"),
        ("release", "source_ref", {"commit": f"abc{NUL}"}),
        ("window", "reason", f"freeze{NUL}"),
        ("window", "rrule", f"FREQ=DAILY{NUL}"),
        ("template", "outputs", {f"k{NUL}": "x"}),
        ("promotion", "reason", "lone \ud800 surrogate"),
    ],
)
async def test_nul_and_control_characters_in_text_are_400(
    gateway: Gateway, both: tuple[StandIn, StandIn], route: str, field: str, value: Any
) -> None:
    tenant = await gateway.tenant()
    path, body = RELAYED[route]
    raw = json.dumps({**body, field: value}).encode()
    response = await gateway.call("POST", path, tenant.token, content=raw, headers={"Content-Type": "application/json"})
    problem = assert_problem(response, 400, "VAL_INVALID_CHARACTER")
    assert problem["errors"][0]["loc"][:2] == ["body", field]
    _nothing_sent(both)


async def test_nul_in_a_token_name_is_400(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call(
        "POST", "/api/v1/tokens", tenant.token, json={"principal_id": str(tenant.admin_id), "name": f"ci{NUL}"}
    )
    assert_problem(response, 400, "VAL_INVALID_CHARACTER")


async def test_deeply_nested_json_is_400(gateway: Gateway, both: tuple[StandIn, StandIn]) -> None:
    tenant = await gateway.tenant()
    for levels in (40, 250, 5000):
        raw = '{"name": "prod", "order_index": 1, "config": {"variables": ' + _deep(levels) + "}}"
        response = await gateway.call(
            "POST", "/api/v1/environments", tenant.token, content=raw, headers={"Content-Type": "application/json"}
        )
        assert_problem(response, 400, "VAL_TOO_DEEP")
    _nothing_sent(both)


@pytest.mark.parametrize(
    "raw",
    [b'{"name": "prod", "order_index": 1, "config": {"n": 1e999}}', b'{"name": "prod", "order_index": NaN}'],
)
async def test_numbers_json_cannot_hold_are_400(gateway: Gateway, both: tuple[StandIn, StandIn], raw: bytes) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call(
        "POST", "/api/v1/environments", tenant.token, content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    _nothing_sent(both)


async def test_integers_beyond_64_bits_are_400(gateway: Gateway, both: tuple[StandIn, StandIn]) -> None:
    tenant = await gateway.tenant()
    body = {"name": "prod", "order_index": 1, "config": {"approval_timeout_s": 2**70}}
    assert_problem(
        await gateway.call("POST", "/api/v1/environments", tenant.token, json=body), 400, "VAL_NUMBER_OUT_OF_RANGE"
    )
    _nothing_sent(both)


async def test_repeated_keys_are_400(gateway: Gateway, both: tuple[StandIn, StandIn]) -> None:
    tenant = await gateway.tenant()
    raw = b'{"name": "prod", "order_index": 1, "order_index": 2}'
    response = await gateway.call(
        "POST", "/api/v1/environments", tenant.token, content=raw, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 400, "VAL_MALFORMED_JSON")


@pytest.mark.parametrize(
    ("route", "field", "value"),
    [
        ("environment", "require_sod", 0),
        ("environment", "order_index", True),
        ("environment", "order_index", "1"),
        ("environment", "order_index", 1.5),
        ("scan", "critical", "0"),
        ("scan", "scanned_at", 0),
        ("scan", "kev", "true"),
        ("promotion", "release_id", 12),
    ],
)
async def test_values_of_another_type_are_not_coerced(
    gateway: Gateway, both: tuple[StandIn, StandIn], route: str, field: str, value: Any
) -> None:
    tenant = await gateway.tenant()
    path, body = RELAYED[route]
    problem = assert_problem(
        await gateway.call("POST", path, tenant.token, json={**body, field: value}), 400, "VAL_INVALID_REQUEST"
    )
    assert ["body", field] in [error["loc"] for error in problem["errors"]]
    _nothing_sent(both)


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {"Content-Type": "application/json; charset=latin-1"},
        {},
    ],
)
async def test_a_body_that_is_not_declared_json_is_415(
    gateway: Gateway, both: tuple[StandIn, StandIn], headers: dict[str, str]
) -> None:
    tenant = await gateway.tenant()
    raw = json.dumps({"name": "prod", "order_index": 1}).encode()
    response = await gateway.call("POST", "/api/v1/environments", tenant.token, content=raw, headers=headers)
    assert_problem(response, 415, "VAL_UNSUPPORTED_MEDIA_TYPE")
    _nothing_sent(both)


async def test_json_suffix_media_types_are_json(gateway: Gateway, both: tuple[StandIn, StandIn]) -> None:
    tenant = await gateway.tenant()
    raw = json.dumps({"name": "prod", "order_index": "x"}).encode()
    response = await gateway.call(
        "POST", "/api/v1/environments", tenant.token, content=raw, headers={"Content-Type": "application/merge+json"}
    )
    assert_problem(response, 400, "VAL_INVALID_REQUEST")


async def test_an_integer_query_beyond_the_column_type_is_400(gateway: Gateway, both: tuple[StandIn, StandIn]) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call("GET", "/api/v1/workflow-templates/mine?version=3000000000", tenant.token)
    assert response.status_code == 400, response.text
    _nothing_sent(both)


async def test_control_characters_in_query_strings_are_400(gateway: Gateway, both: tuple[StandIn, StandIn]) -> None:
    tenant = await gateway.tenant()
    response = await gateway.call("GET", "/api/v1/components?name_prefix=a%00b", tenant.token)
    problem = assert_problem(response, 400, "VAL_INVALID_CHARACTER")
    assert problem["errors"][0]["loc"] == ["query", "name_prefix"]
    _nothing_sent(both)


async def test_a_page_token_of_another_list_is_400(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    for index in range(3):
        await gateway.principal_token(tenant, f"p{index}", ["viewer"])
    principals = await gateway.call("GET", "/api/v1/principals?page_size=1", tenant.token)
    tokens = await gateway.call("GET", "/api/v1/tokens?page_size=1", tenant.token)
    principal_token = principals.json()["next_page_token"]
    token_token = tokens.json()["next_page_token"]
    assert principal_token and token_token
    assert_problem(
        await gateway.call("GET", f"/api/v1/tokens?page_token={principal_token}", tenant.token), 400, "VAL_PAGE_TOKEN"
    )
    assert_problem(
        await gateway.call("GET", f"/api/v1/principals?page_token={token_token}", tenant.token), 400, "VAL_PAGE_TOKEN"
    )
    assert (await gateway.call("GET", f"/api/v1/tokens?page_token={token_token}", tenant.token)).status_code == 200
