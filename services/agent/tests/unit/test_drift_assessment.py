"""The drift verdict from a sticker and the containers found, without an engine."""

from __future__ import annotations

import uuid
from typing import Any

from stella.agent.drivers.drift import assess_drift
from stella.agent.drivers.engine import RunningContainer
from stella.contracts.agent import ComponentSpec

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
REPO = "registry.example/shop/api"


def sticker(**components: str) -> dict[str, Any]:
    return {"release": {"components": [{"name": name, "digest": digest} for name, digest in components.items()]}}


def running(name: str, component: str | None, digest: str | None, status: str = "running") -> RunningContainer:
    image = {"RepoDigests": [f"{REPO}@{digest}"]} if digest else {"RepoDigests": []}
    return RunningContainer(
        id=uuid.uuid4().hex,
        name=name,
        component=component,
        status=status,
        health=None,
        image_id="sha256:" + "f" * 64,
        image=f"{REPO}@{digest}" if digest else "local/image:latest",
        image_inspect=image,
    )


def test_matching_digests_are_no_drift() -> None:
    report, states = assess_drift(
        sticker=sticker(api=A), sticker_problem=None, fallback=[], containers=[running("c-api", "api", A)]
    )
    assert (report.drifted, report.sticker_found, report.differences) == (False, True, [])
    assert [(s.name, s.expected_digest, s.running_digest, s.container) for s in states] == [("api", A, A, "c-api")]


def test_each_kind_of_difference() -> None:
    report, states = assess_drift(
        sticker=sticker(api=A, web=A, job=A, tool=A),
        sticker_problem=None,
        fallback=[],
        containers=[
            running("c-api", "api", B),
            running("c-job", "job", A, status="exited"),
            running("c-tool", "tool", None),
            running("c-extra", "worker", B),
            running("c-api-previous", "api", A, status="exited"),
        ],
        preferred_names={"api": "c-api"},
    )
    kinds = sorted((d["kind"], d["component"], d["expected"], d["actual"]) for d in report.differences)
    assert kinds == [
        ("digest", "api", A, B),
        ("digest", "tool", A, None),
        ("missing_container", "web", A, None),
        ("stopped_container", "job", A, A),
        ("unexpected_container", "api", None, A),
        ("unexpected_container", "worker", None, B),
    ]
    assert report.drifted
    assert {s.name: s.running_digest for s in states}["job"] is None


def test_without_a_sticker_what_runs_is_compared_with_the_task() -> None:
    component = ComponentSpec(component_id=uuid.uuid4(), name="api", image_repository=REPO, digest=A)
    report, states = assess_drift(
        sticker=None, sticker_problem=None, fallback=[component], containers=[running("c", "api", A)]
    )
    assert [d["kind"] for d in report.differences] == ["missing_sticker"]
    assert report.sticker_found is False
    assert states[0].running_digest == A
    report, _ = assess_drift(sticker=None, sticker_problem="broken", fallback=[], containers=[])
    assert report.sticker_found is True
    assert report.differences[0]["detail"] == "broken"


def test_the_expected_digest_counts_under_any_repository() -> None:
    container = running("c", "api", None)
    container.image_inspect = {"RepoDigests": [f"mirror.example/api@{B}", f"other.example/api@{A}"]}
    report, _ = assess_drift(sticker=sticker(api=A), sticker_problem=None, fallback=[], containers=[container])
    assert not report.drifted
