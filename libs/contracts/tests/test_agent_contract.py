"""The agent wire models: what an agent may be sent and may answer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from stella.contracts.agent import AgentTask, ComponentSpec, RegisterAgent, TaskResult, TaskStatus

DIGEST = "sha256:" + "a" * 64


def _component(**fields: object) -> ComponentSpec:
    return ComponentSpec.model_validate(
        {"component_id": uuid.uuid4(), "name": "api", "image_repository": "127.0.0.1:5000/shop/api", "digest": DIGEST}
        | fields
    )


def test_an_image_is_named_by_digest_only() -> None:
    assert _component().image_ref == f"127.0.0.1:5000/shop/api@{DIGEST}"


@pytest.mark.parametrize("digest", ["latest", "sha256:abc", "sha512:" + "a" * 128])
def test_a_component_refuses_anything_but_a_sha256_digest(digest: str) -> None:
    with pytest.raises(ValidationError):
        _component(digest=digest)


def test_a_task_round_trips_through_json() -> None:
    task = AgentTask.model_validate(
        {
            "task_id": uuid.uuid4(),
            "idempotency_key": "job-1:target-1",
            "type": "deploy",
            "target": {"target_id": uuid.uuid4(), "name": "web-1", "target_type": "docker_host"},
            "components": [_component().model_dump(mode="json")],
            "health_check": {"type": "http", "port": 8080, "path": "/healthz"},
        }
    )
    assert AgentTask.model_validate_json(task.model_dump_json()) == task


def test_a_credential_password_is_not_in_the_repr() -> None:
    task = AgentTask.model_validate(
        {
            "task_id": uuid.uuid4(),
            "idempotency_key": "k",
            "type": "deploy",
            "target": {"target_id": uuid.uuid4(), "name": "web-1", "target_type": "docker_host"},
            "credentials": [{"registry": "127.0.0.1:5000", "username": "u", "password": "hunter2"}],
        }
    )
    assert "hunter2" not in repr(task)


def test_a_result_needs_a_stable_error_code_shape() -> None:
    now = datetime.now(UTC)
    base = {"task_id": uuid.uuid4(), "idempotency_key": "k", "status": "failed", "started_at": now, "finished_at": now}
    assert TaskResult.model_validate(base | {"error_code": "AGT_DIGEST_MISMATCH"}).error_code == "AGT_DIGEST_MISMATCH"
    with pytest.raises(ValidationError):
        TaskResult.model_validate(base | {"error_code": "digest mismatch"})


def test_registration_needs_a_capability() -> None:
    with pytest.raises(ValidationError):
        RegisterAgent(registration_token="x" * 32, name="host-1", version="1.0.0", capabilities=[])


def test_terminal_task_states() -> None:
    assert {s for s in TaskStatus if s.is_terminal} == {"succeeded", "failed", "timed_out", "cancelled"}
