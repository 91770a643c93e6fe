"""Reply payloads shaped like the services' views, for the stand-in services."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from stella.contracts import approval as approval_contract
from stella.contracts import evidence as evidence_contract
from stella.contracts import promotion as promotion_contract
from stella.contracts import workflow as workflow_contract

DIGEST = "sha256:" + "a" * 64


def _now() -> str:
    # Pydantic writes UTC as "Z", as the services do.
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def component(name: str = "web", **changes: Any) -> dict[str, Any]:
    """A ``ComponentView`` as JSON."""
    view: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "name": name,
        "display_name": name,
        "image_repository": f"registry.test/{name}",
        "versioning_strategy": {"type": "semver"},
        "default_channel": "stable",
        "registry_credential_ref": None,
        "registry_integration_id": None,
        "created_at": _now(),
        "updated_at": _now(),
    }
    view.update(changes)
    return view


def version(component_id: str, tag: str = "1.0.0", **changes: Any) -> dict[str, Any]:
    """A ``VersionView`` as JSON."""
    view: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "component_id": component_id,
        "tag": tag,
        "digest": DIGEST,
        "semver": tag,
        "channel": "stable",
        "created_at": _now(),
        "updated_at": _now(),
    }
    view.update(changes)
    return view


def release(name: str = "r1", status: str = "draft", **changes: Any) -> dict[str, Any]:
    """A ``ReleaseView`` as JSON."""
    view: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "name": name,
        "display_name": name,
        "status": status,
        "components": [
            {
                "component_id": str(uuid.uuid4()),
                "name": "web",
                "image_repository": "registry.test/web",
                "digest": DIGEST,
                "tag": "1.0.0",
                "semver": "1.0.0",
                "registry_integration_id": None,
            }
        ],
        "source_ref": {},
        "created_by": None,
        "created_at": _now(),
        "updated_at": _now(),
        "ready_at": None,
        "deprecated_at": None,
        "deprecation_reason": None,
    }
    view.update(changes)
    return view


def page(items: list[dict[str, Any]], next_page_token: str | None = None) -> dict[str, Any]:
    """A ``Page`` as JSON."""
    return {"items": items, "next_page_token": next_page_token}


# --- promotion, approval, workflow and evidence services: built from the contracts' views ---------------


def environment(name: str = "prod", **changes: Any) -> dict[str, Any]:
    """An ``EnvironmentView`` as JSON."""
    view = promotion_contract.EnvironmentView(
        id=uuid.uuid4(),
        name=name,
        display_name=name.title(),
        order_index=2,
        required_approvals=2,
        require_sod=True,
        config={"deployment_timeout_s": 600},
        promotion_policy={"workflow_template": "standard-promotion"},
        created_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
    ).model_dump(mode="json")
    view.update(changes)
    return view


def freeze_window(environment_id: str, **changes: Any) -> dict[str, Any]:
    """A recurring ``FreezeWindowView`` as JSON."""
    view = promotion_contract.FreezeWindowView(
        id=uuid.uuid4(),
        environment_id=uuid.UUID(environment_id),
        kind="deny",
        start=None,
        end=None,
        rrule="FREQ=WEEKLY;BYDAY=FR;BYHOUR=16;BYMINUTE=0",
        duration_s=64 * 3600,
        dtstart=datetime(2026, 1, 2, 16, 0),
        timezone="Europe/Berlin",
        reason="weekend freeze",
        created_by=uuid.uuid4(),
        exceptions=[],
        created_at=datetime.now(UTC),
    ).model_dump(mode="json")
    view.update(changes)
    return view


def environment_state(environment_id: str, closed: bool = True) -> dict[str, Any]:
    """An ``EnvironmentStateView`` as JSON."""
    return promotion_contract.EnvironmentStateView(
        environment_id=uuid.UUID(environment_id),
        closed=closed,
        reason="weekend freeze" if closed else None,
        next_open=datetime(2026, 1, 5, 7, 0, tzinfo=UTC) if closed else None,
        next_close=None if closed else datetime(2026, 1, 9, 15, 0, tzinfo=UTC),
        active_window_ids=[uuid.uuid4()] if closed else [],
        evaluated_at=datetime.now(UTC),
    ).model_dump(mode="json")


def board(
    environments: list[tuple[dict[str, Any], bool, list[dict[str, Any]]]], promotions: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """An ``EnvironmentBoardView`` as JSON: (environment, closed, windows) each, and cells of ``promotions``."""
    return {
        "environments": [
            {"environment": env, "state": environment_state(env["id"], closed=closed), "windows": windows}
            for env, closed, windows in environments
        ],
        "cells": [
            {
                "promotion_id": p["id"],
                "release_id": p["release_id"],
                "release_name": p["release_name"],
                "environment_id": p["target_environment_id"],
                "status": p["status"],
                "requested_at": p["requested_at"],
                "updated_at": p["updated_at"],
            }
            for p in promotions
        ],
    }


def scan_result(digest: str = DIGEST, **changes: Any) -> dict[str, Any]:
    """A ``ScanResultView`` as JSON."""
    view = promotion_contract.ScanResultView(
        digest=digest,
        critical=0,
        high=2,
        medium=7,
        low=11,
        max_epss=0.12,
        kev=False,
        scanner="trivy",
        scanned_at=datetime.now(UTC),
        recorded_at=datetime.now(UTC),
    ).model_dump(mode="json")
    view.update(changes)
    return view


def promotion(status: str = "pending_gate", **changes: Any) -> dict[str, Any]:
    """A ``PromotionView`` as JSON."""
    view = promotion_contract.PromotionView(
        id=uuid.uuid4(),
        release_id=uuid.uuid4(),
        release_name="r1",
        release_components=[{"name": "web", "digest": DIGEST, "image_repository": "registry.test/web"}],
        source_environment_id=None,
        target_environment_id=uuid.uuid4(),
        target_environment_name="prod",
        status=promotion_contract.PromotionStatus(status),
        reason="weekly release",
        requested_by=uuid.uuid4(),
        requested_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
        decision_record=None,
        workflow_run_id=uuid.uuid4(),
        next_evaluation_at=None,
        freeze_override=None,
        status_message="waiting for its gates",
        reason_codes=[],
    ).model_dump(mode="json")
    view.update(changes)
    return view


def decision(promotion_id: str) -> dict[str, Any]:
    """A ``DecisionView`` as JSON."""
    return promotion_contract.DecisionView(
        promotion_id=uuid.UUID(promotion_id),
        trigger="gates",
        evaluated_at=datetime.now(UTC),
        inputs={"release": {"digests": [DIGEST]}, "windows": []},
        record={
            "result": "allow",
            "gates": [{"type": "freeze-window", "name": "freeze", "status": "pass"}],
            "reasons": [],
            "approvals": [],
            "inputs_hash": "sha256:" + "b" * 64,
        },
    ).model_dump(mode="json")


def approval_request(promotion_id: str, votes: int = 0, **changes: Any) -> dict[str, Any]:
    """An ``ApprovalRequestView`` as JSON, with ``votes`` approvals."""
    view = approval_contract.ApprovalRequestView(
        promotion_id=uuid.UUID(promotion_id),
        environment_id=uuid.uuid4(),
        requester_id=uuid.uuid4(),
        required=2,
        require_sod=True,
        approver_groups=[],
        status=approval_contract.ApprovalStatus.PENDING,
        requested_at=datetime.now(UTC),
        expires_at=datetime.now(UTC),
        decided_at=None,
        votes=[
            approval_contract.VoteView(
                approver_id=uuid.uuid4(),
                action=approval_contract.VoteAction.APPROVED,
                comment="ok",
                at=datetime.now(UTC),
            )
            for _ in range(votes)
        ],
        step=workflow_contract.StepRef(run_id=uuid.uuid4(), node_id="approval", attempt=1),
    ).model_dump(mode="json")
    view.update(changes)
    return view


def template(name: str = "canary", version: int = 1, **changes: Any) -> dict[str, Any]:
    """A ``TemplateView`` as JSON, written as the workflow service writes it (by alias: edges as from/to)."""
    view = workflow_contract.TemplateView(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        name=name,
        version=version,
        nodes=[
            workflow_contract.NodeSpec(id="gates", type="gate"),
            workflow_contract.NodeSpec(id="soak", type="wait", config={"seconds": 60}, timeout_s=120),
        ],
        edges=[workflow_contract.EdgeSpec(source="gates", target="soak")],
        inputs={"promotion_id": {"required": True}},
        outputs={},
        is_builtin=False,
        created_at=datetime.now(UTC),
    ).model_dump(mode="json", by_alias=True)
    view.update(changes)
    return view


def run(**changes: Any) -> dict[str, Any]:
    """A ``RunView`` with two step runs as JSON."""
    now = datetime.now(UTC)
    step: dict[str, Any] = {
        "inputs": {},
        "outputs": {},
        "error": None,
        "logs": "",
        "started_at": now,
        "completed_at": None,
    }
    view = workflow_contract.RunView(
        id=uuid.uuid4(),
        template_id=uuid.uuid4(),
        template_name="standard-promotion",
        template_version=1,
        subject_id=uuid.uuid4(),
        status=workflow_contract.RunStatus.RUNNING,
        inputs={"approval_required": True},
        outputs={},
        started_at=now,
        completed_at=None,
        steps=[
            workflow_contract.StepRunView(
                id=uuid.uuid4(),
                node_id="gates",
                status=workflow_contract.StepStatus.SUCCEEDED,
                attempt_number=2,
                **{**step, "outputs": {"result": "allow"}, "completed_at": now},
            ),
            workflow_contract.StepRunView(
                id=uuid.uuid4(),
                node_id="approval",
                status=workflow_contract.StepStatus.WAITING,
                attempt_number=1,
                **step,
            ),
        ],
    ).model_dump(mode="json")
    view.update(changes)
    return view


def packet(promotion_id: str | None = None, sequence: int = 1, **changes: Any) -> dict[str, Any]:
    """A ``PacketView`` as JSON."""
    view = evidence_contract.PacketView(
        id=uuid.uuid4(),
        packet_type=evidence_contract.PacketType.RELEASE_DECISION,
        promotion_id=uuid.UUID(promotion_id) if promotion_id else None,
        sequence=sequence,
        previous_hash=None if sequence == 1 else "sha256:" + "c" * 64,
        content_hash="sha256:" + "d" * 64,
        signer_key_ref="ed25519:k1",
        created_at=datetime.now(UTC),
        content={"decision": {"result": "allow"}},
        envelope={"payloadType": "application/vnd.in-toto+json", "payload": "e30=", "signatures": []},
    ).model_dump(mode="json")
    view.update(changes)
    return view


def verification(packet_id: str, valid: bool = True) -> dict[str, Any]:
    """A ``VerificationView`` as JSON."""
    return evidence_contract.VerificationView(
        packet_id=uuid.UUID(packet_id),
        valid=valid,
        checks={"signature": valid, "content_hash": True, "chain": True},
        findings=[] if valid else ["signature does not verify with ed25519:k1"],
    ).model_dump(mode="json")


def key(key_ref: str = "ed25519:k1", active: bool = True) -> dict[str, Any]:
    """A ``KeyView`` as JSON."""
    return evidence_contract.KeyView(
        key_ref=key_ref,
        algorithm="ed25519",
        public_key_pem="-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n",
        active=active,
        created_at=datetime.now(UTC),
        retired_at=None if active else datetime.now(UTC),
    ).model_dump(mode="json")
