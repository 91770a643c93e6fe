"""Content of the packets made from deployment events: which packets, their keys, and what they record."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import pytest

from stella.contracts.deployment import DriftDetected, JobCompleted, TaskOutcome
from stella.evidence.deployments import drift_content, drift_source_key, job_content, job_source_key, packet_types_of
from stella.evidence.packet import EvidenceContentError, PacketType, validate_content

T0 = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
RELEASE = uuid.UUID(int=7)


def digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def job(outcome: str, tasks: list[TaskOutcome], rollback_of: uuid.UUID | None = None) -> JobCompleted:
    return JobCompleted(
        tenant_id=uuid.UUID(int=1),
        correlation_id=uuid.UUID(int=2),
        job_id=uuid.UUID(int=3),
        promotion_id=None,
        release_id=RELEASE,
        environment_id=uuid.UUID(int=4),
        strategy="all-at-once",
        outcome=outcome,
        rollback_of=rollback_of,
        reason="",
        tasks=tasks,
        finished_at=T0,
    )


def test_a_job_makes_a_deployment_packet_and_a_rolled_back_one_a_rollback_packet_too() -> None:
    assert packet_types_of(job("succeeded", [])) == [PacketType.DEPLOYMENT]
    assert packet_types_of(job("failed", [])) == [PacketType.DEPLOYMENT]
    assert packet_types_of(job("rolled_back", [])) == [PacketType.DEPLOYMENT, PacketType.ROLLBACK]
    assert packet_types_of(job("succeeded", [], rollback_of=uuid.UUID(int=9))) == [PacketType.ROLLBACK]
    assert job_source_key(PacketType.ROLLBACK, job("rolled_back", [])) == f"rollback:{uuid.UUID(int=3)}"


def test_without_the_release_no_image_is_known_and_the_content_is_refused() -> None:
    content = job_content(PacketType.DEPLOYMENT, job("succeeded", []), None)
    assert content["release"]["components"] == []
    with pytest.raises(EvidenceContentError, match="non-empty list"):
        validate_content(content)


def test_a_drift_record_is_keyed_by_target_and_detection_time() -> None:
    drift = DriftDetected(
        tenant_id=uuid.UUID(int=1),
        correlation_id=uuid.UUID(int=2),
        target_id=uuid.UUID(int=5),
        target_name="host-a",
        environment_id=uuid.UUID(int=4),
        release_id=None,
        differences=[{"kind": "digest", "component": "api", "expected": digest("a"), "actual": digest("b"), "x": 1}],
        detected_at=T0,
    )
    assert drift_source_key(drift) == f"drift:{uuid.UUID(int=5)}:2026-04-01T12:00:00.000000Z"
    content = drift_content(drift, None)
    assert content["execution"]["differences"] == [
        {"kind": "digest", "component": "api", "expected": digest("a"), "actual": digest("b")}
    ]
