"""The Compose lock file: digest-pinned, deterministic, and carrying its own verifiable hash."""

from __future__ import annotations

import hashlib
import uuid

import yaml

from stella.agent.drivers.compose_host import lock_file_hash, project_name, render_lock_file, verify_lock_file
from stella.contracts.agent import (
    AgentTask,
    ComponentSpec,
    DeploymentRef,
    PortMapping,
    TargetSpec,
    TargetType,
    TaskType,
)

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def task(**target: object) -> AgentTask:
    return AgentTask(
        task_id=uuid.uuid4(),
        idempotency_key="k",
        type=TaskType.DEPLOY,
        target=TargetSpec(
            target_id=uuid.UUID(int=7), name="edge-1", target_type=TargetType.COMPOSE_HOST, connection=dict(target)
        ),
        components=[
            ComponentSpec(
                component_id=uuid.UUID(int=1),
                name="api",
                image_repository="registry.example:5000/shop/api",
                digest=DIGEST_A,
                env={"QUOTE": 'it\'s: "quoted"\nnewline', "EMPTY": ""},
                command=["serve", "--port", "8080"],
                ports=[
                    PortMapping(container_port=8080, host_port=18080, host_ip="127.0.0.1"),
                    PortMapping(container_port=9090),
                    PortMapping(container_port=53, host_port=5353, protocol="udp", host_ip="::1"),
                ],
                labels={"team": "shop"},
            ),
            ComponentSpec(component_id=uuid.UUID(int=2), name="web", image_repository="shop/web", digest=DIGEST_B),
        ],
        deployment=DeploymentRef(
            job_id=uuid.UUID(int=3),
            promotion_id=uuid.UUID(int=4),
            release_id=uuid.UUID(int=5),
            release_name="shop 2025.1: winter",
            environment_id=uuid.UUID(int=6),
            environment_name="dev",
            strategy="rolling",
        ),
    )


def test_every_image_is_pinned_and_labelled() -> None:
    data = render_lock_file(task(), "proj")
    document = yaml.safe_load(data)
    api, web = document["services"]["api"], document["services"]["web"]
    assert api["image"] == f"registry.example:5000/shop/api@{DIGEST_A}"
    assert web["image"] == f"shop/web@{DIGEST_B}"
    assert api["labels"] == {
        "team": "shop",
        "stella.target.id": str(uuid.UUID(int=7)),
        "stella.component.id": str(uuid.UUID(int=1)),
        "stella.component.name": "api",
        "stella.release.id": str(uuid.UUID(int=5)),
        "stella.digest": DIGEST_A,
    }
    assert api["environment"] == {"EMPTY": "", "QUOTE": 'it\'s: "quoted"\nnewline'}
    assert api["command"] == ["serve", "--port", "8080"]
    assert api["ports"] == ["127.0.0.1:18080:8080/tcp", "9090/tcp", "[::1]:5353:53/udp"]
    assert api["restart"] == "unless-stopped"
    block = document["x-stella"]
    assert block["release_id"] == str(uuid.UUID(int=5))
    assert block["release_name"] == "shop 2025.1: winter"
    assert block["environment_id"] == str(uuid.UUID(int=6))
    assert block["deployment_id"] == str(uuid.UUID(int=3))
    assert block["promotion_id"] == str(uuid.UUID(int=4))
    assert block["project"] == "proj"
    assert list(document) == ["services", "x-stella"]


def test_the_content_hash_is_the_sha256_of_the_file_with_the_value_blank() -> None:
    data = render_lock_file(task(), "proj")
    stated = yaml.safe_load(data)["x-stella"]["content_hash"]
    assert lock_file_hash(data) == stated
    assert data.endswith(f"  content_hash: '{stated}'\n".encode())
    blank = data[: data.rindex(b"  content_hash: ")] + b"  content_hash: ''\n"
    assert stated == "sha256:" + hashlib.sha256(blank).hexdigest()
    assert verify_lock_file(data)


def test_any_edit_breaks_the_hash() -> None:
    data = render_lock_file(task(), "proj")
    assert not verify_lock_file(data.replace(DIGEST_A.encode(), DIGEST_B.encode()))
    assert not verify_lock_file(data.replace(b"unless-stopped", b"always"))
    assert not verify_lock_file(data + b"# trailing\n")
    assert not verify_lock_file(b"services: {}\n")


def test_the_same_task_renders_the_same_bytes() -> None:
    assert render_lock_file(task(), "proj") == render_lock_file(task(), "proj")
    assert render_lock_file(task(), "proj") != render_lock_file(task(), "other")


def test_project_names() -> None:
    assert project_name(task().target) == f"stella-{uuid.UUID(int=7).hex}"
    assert project_name(task(project="shop-edge").target) == "shop-edge"
