"""Every error becomes the same problem+json shape, and faults leak nothing."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import nats.errors
import pytest
from litestar import Litestar, get, post
from litestar.exceptions import PermissionDeniedException
from litestar.params import JSONBody
from litestar.testing import TestClient
from pydantic import BaseModel, ConfigDict, Field

from stella.contracts.envelope import ErrorDetail
from stella.gateway.problems import (
    INTERNAL_DETAIL,
    PROBLEM_MEDIA_TYPE,
    ProblemError,
    field_errors,
    problem_response,
    to_problem,
)
from stella.gateway.runtime import NotStartedError
from stella.gateway.tracing import TRACE_HEADER, TraceMiddleware, add_trace_header
from stella.kit.errors import Conflict
from stella.kit.logs import correlation_id

SECRET = "password=hunter2 at db.internal:5432"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z]+$")
    count: int


@get("/boom")
async def boom() -> None:
    raise RuntimeError(SECRET)


@get("/conflict")
async def conflict() -> None:
    raise ProblemError(409, "REL_IMMUTABLE", "The release is ready.", title="Release is immutable")


@get("/service-fault")
async def service_fault() -> None:
    raise ProblemError.from_error_detail(ErrorDetail(code="SYS_COMMAND_FAILED", status=500, title="x", detail=SECRET))


@get("/kit-error")
async def kit_error() -> None:
    raise Conflict("a component named 'web' already exists", code="RES_DUPLICATE_NAME")


@get("/db-down")
async def db_down() -> None:
    raise ConnectionRefusedError(SECRET)


@get("/forbidden")
async def forbidden() -> None:
    raise PermissionDeniedException()


@get("/correlation")
async def correlation() -> dict[str, Any]:
    return {"correlation_id": correlation_id.get()}


@post("/items")
async def items(data: JSONBody[Body]) -> Body:
    return data


@pytest.fixture
def client() -> Iterator[TestClient[Litestar]]:
    app = Litestar(
        [boom, conflict, service_fault, kit_error, db_down, forbidden, correlation, items],
        middleware=[TraceMiddleware],
        exception_handlers={Exception: problem_response},
        before_send=[add_trace_header],
        logging_config=None,
    )
    with TestClient(app) as test_client:
        yield test_client


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body: dict[str, Any] = response.json()
    assert set(body) >= {"type", "title", "status", "detail", "instance", "code", "trace_id"}
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:stella:problem:{code.lower()}"
    assert body["instance"] == response.request.url.path
    assert body["trace_id"] == response.headers[TRACE_HEADER]
    return body


def test_a_fault_is_a_500_that_leaks_nothing_and_is_logged(
    client: TestClient[Litestar], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="stella.gateway.problems"):
        response = client.get("/boom")
    body = _problem(response, 500, "SYS_INTERNAL")
    assert body["detail"] == INTERNAL_DETAIL
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert any(record.exc_info and SECRET in str(record.exc_info[1]) for record in caplog.records)


def test_a_problem_keeps_its_status_code_title_and_detail(client: TestClient[Litestar]) -> None:
    body = _problem(client.get("/conflict"), 409, "REL_IMMUTABLE")
    assert body["title"] == "Release is immutable"
    assert body["detail"] == "The release is ready."
    assert "errors" not in body


def test_a_service_fault_keeps_its_code_but_not_its_detail(client: TestClient[Litestar]) -> None:
    body = _problem(client.get("/service-fault"), 500, "SYS_COMMAND_FAILED")
    assert "hunter2" not in client.get("/service-fault").text
    assert body["detail"] == INTERNAL_DETAIL


def test_a_kit_service_error_maps_to_its_status_and_code(client: TestClient[Litestar]) -> None:
    body = _problem(client.get("/kit-error"), 409, "RES_DUPLICATE_NAME")
    assert "already exists" in body["detail"]


def test_an_unreachable_database_is_a_503(client: TestClient[Litestar]) -> None:
    response = client.get("/db-down")
    _problem(response, 503, "SYS_DATABASE_UNAVAILABLE")
    assert "hunter2" not in response.text
    assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"), "SYS_DATABASE_UNAVAILABLE"),
        (
            asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
            "SYS_DATABASE_UNAVAILABLE",
        ),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), "SYS_DATABASE_UNAVAILABLE"),
        (asyncpg.TooManyConnectionsError("too many clients"), "SYS_DATABASE_UNAVAILABLE"),
        (
            OSError("Multiple exceptions: [Errno 111] Connect call failed ('127.0.0.1', 5432)"),
            "SYS_DATABASE_UNAVAILABLE",
        ),
        (nats.errors.TimeoutError(), "SYS_UNAVAILABLE"),
        (nats.errors.NoRespondersError(), "SYS_UNAVAILABLE"),
        (NotStartedError("the gateway's store is not available"), "SYS_UNAVAILABLE"),
    ],
)
def test_every_unavailable_dependency_is_a_503_with_retry_after(error: Exception, code: str) -> None:
    @get("/down")
    async def down() -> None:
        raise error

    app = Litestar(
        [down],
        middleware=[TraceMiddleware],
        exception_handlers={Exception: problem_response},
        before_send=[add_trace_header],
        logging_config=None,
    )
    with TestClient(app) as client:
        response = client.get("/down")
    _problem(response, 503, code)
    assert response.headers["Retry-After"] == "1"


def test_a_value_the_database_refuses_is_a_400() -> None:
    problem = to_problem(
        asyncpg.exceptions.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00')
    )
    assert (problem.status, problem.code) == (400, "VAL_VALUE_REFUSED")


def test_framework_errors_get_stable_codes(client: TestClient[Litestar]) -> None:
    _problem(client.get("/nowhere"), 404, "RES_NOT_FOUND")
    _problem(client.get("/forbidden"), 403, "PERM_DENIED")
    not_allowed = client.delete("/items")
    _problem(not_allowed, 405, "VAL_METHOD_NOT_ALLOWED")
    assert "POST" in not_allowed.headers.get("allow", "")


def test_body_validation_lists_field_errors(client: TestClient[Litestar]) -> None:
    body = _problem(client.post("/items", json={"name": "A1", "count": "x", "extra": 1}), 400, "VAL_INVALID_REQUEST")
    locs = {tuple(error["loc"]) for error in body["errors"]}
    assert {("body", "name"), ("body", "count"), ("body", "extra")} <= locs
    assert all(error["msg"] for error in body["errors"])


def test_malformed_json_is_a_400(client: TestClient[Litestar]) -> None:
    response = client.post("/items", content=b"{nope", headers={"content-type": "application/json"})
    _problem(response, 400, "VAL_INVALID_REQUEST")


def test_the_trace_id_comes_from_traceparent_or_request_id_and_is_the_log_correlation(
    client: TestClient[Litestar],
) -> None:
    traced = client.get("/conflict", headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    assert traced.json()["trace_id"] == str(uuid.UUID("4bf92f3577b34da6a3ce929d0e0e4736"))
    request_id = str(uuid.uuid4())
    assert client.get("/conflict", headers={"X-Request-Id": request_id}).headers[TRACE_HEADER] == request_id
    first = client.get("/conflict", headers={"X-Request-Id": "retry-42"}).headers[TRACE_HEADER]
    assert first == client.get("/conflict", headers={"X-Request-Id": "retry-42"}).headers[TRACE_HEADER]
    fresh = client.get("/correlation")
    assert fresh.json()["correlation_id"] == fresh.headers[TRACE_HEADER]
    assert fresh.headers[TRACE_HEADER] != client.get("/correlation").headers[TRACE_HEADER]


def test_classification_of_exceptions() -> None:
    assert to_problem(nats.errors.ConnectionClosedError()).code == "SYS_UNAVAILABLE"
    assert to_problem(asyncpg.CannotConnectNowError("starting")).status == 503
    assert to_problem(ValueError("x")).code == "SYS_INTERNAL"
    business = to_problem(
        ProblemError.from_error_detail(
            ErrorDetail(
                code="REL_UNKNOWN_TAG",
                status=422,
                title="Unknown tag",
                detail="no tag 9.9",
                errors=[{"loc": ["tag"], "msg": "unknown"}],
            )
        )
    )
    assert (business.status, business.code, business.detail, business.errors) == (
        422,
        "REL_UNKNOWN_TAG",
        "no tag 9.9",
        [{"loc": ["tag"], "msg": "unknown"}],
    )
    assert ProblemError.from_error_detail(ErrorDetail(code="X", status=200, title="odd")).status == 502


def test_field_errors_from_litestar_extra() -> None:
    assert field_errors(
        [
            {"key": "components.0.tag", "message": "bad tag"},
            {"key": "page_size", "message": "too big", "source": "query"},
        ]
    ) == [
        {"loc": ["body", "components", 0, "tag"], "msg": "bad tag"},
        {"loc": ["query", "page_size"], "msg": "too big"},
    ]
    assert field_errors(None) == []
