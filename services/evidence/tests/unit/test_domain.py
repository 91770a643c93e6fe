"""The evidence service's pure rules: release decision content and the verification of stored packets."""

from __future__ import annotations

import base64
import copy
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stella.contracts.approval import ApprovalRequestView, ApprovalStatus, VoteAction, VoteView
from stella.contracts.promotion import PromotionStatus, PromotionView
from stella.evidence import domain
from stella.evidence.domain import StoredPacket, verify_stored_packet
from stella.evidence.dsse import sign_envelope
from stella.evidence.keys import KeyAlgorithm, PublicKeyRing, generate_key
from stella.evidence.packet import (
    ChainHead,
    PacketType,
    build_packet,
    sign_packet,
    validate_content,
)
from stella.evidence.statement import PAYLOAD_TYPE, serialize_statement

from .conftest import EPOCH

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def _promotion(
    status: PromotionStatus = PromotionStatus.APPROVED, *, approvals: list[dict[str, Any]] | None = None
) -> PromotionView:
    pid = uuid.UUID(int=7)
    return PromotionView(
        id=pid,
        release_id=uuid.UUID(int=8),
        release_name="shop-1",
        release_components=[
            {
                "component_id": str(uuid.UUID(int=9)),
                "name": "web",
                "image_repository": "registry.example.com/shop/web",
                "digest": "sha256:" + "b" * 64,
                "tag": "1.0.0",
                "semver": "1.0.0",
            },
            {
                "component_id": str(uuid.UUID(int=10)),
                "name": "api",
                "image_repository": "registry.example.com/shop/api",
                "digest": "sha256:" + "a" * 64,
                "tag": None,
                "semver": None,
            },
        ],
        source_environment_id=uuid.UUID(int=11),
        target_environment_id=uuid.UUID(int=12),
        target_environment_name="prod",
        status=status,
        reason="monthly",
        requested_by=uuid.UUID(int=13),
        requested_by_name="alice",
        requested_by_display_name="Alice Example",
        requested_at=T0,
        updated_at=T0,
        decision_record={
            "result": "allow",
            "gates": [],
            "reasons": [],
            "approvals": approvals or [],
            "policy_digest": None,
            "inputs_hash": "sha256:" + "c" * 64,
            "evaluated_at": "2026-01-05T08:00:00Z",
        },
        workflow_run_id=uuid.UUID(int=14),
        next_evaluation_at=None,
        freeze_override=None,
    )


def _approvals() -> ApprovalRequestView:
    second, first = uuid.UUID(int=21), uuid.UUID(int=22)
    return ApprovalRequestView(
        promotion_id=uuid.UUID(int=7),
        environment_id=uuid.UUID(int=12),
        requester_id=uuid.UUID(int=13),
        required=2,
        require_sod=True,
        approver_groups=["ops", "leads"],
        status=ApprovalStatus.GRANTED,
        requested_at=T0,
        expires_at=T0 + timedelta(days=7),
        decided_at=T0 + timedelta(hours=2),
        votes=[
            VoteView(
                approver_id=second,
                action=VoteAction.APPROVED,
                comment="second",
                at=T0 + timedelta(hours=2),
                approver_name="bob",
                approver_display_name=None,
            ),
            VoteView(
                approver_id=first,
                action=VoteAction.APPROVED,
                comment="first",
                at=T0 + timedelta(hours=1),
                approver_name="carol",
                approver_display_name="Carol Example",
            ),
        ],
    )


def test_release_decision_content_records_digests_actors_decision_and_execution() -> None:
    promotion = _promotion()
    content = domain.release_decision_content(promotion, _approvals())
    assert content["release"] == {
        "id": str(uuid.UUID(int=8)),
        "name": "shop-1",
        "components": [
            {
                "name": "api",
                "digest": "sha256:" + "a" * 64,
                "semver": None,
                "tag": None,
                "image_repository": "registry.example.com/shop/api",
            },
            {
                "name": "web",
                "digest": "sha256:" + "b" * 64,
                "semver": "1.0.0",
                "tag": "1.0.0",
                "image_repository": "registry.example.com/shop/web",
            },
        ],
    }
    # Principals by id, name and display name, as they were when they acted.
    assert content["actors"]["requester"] == {
        "id": str(uuid.UUID(int=13)),
        "name": "alice",
        "display_name": "Alice Example",
        "requested_at": "2026-01-05T08:00:00.000000Z",
        "reason": "monthly",
    }
    # Votes in the order they were cast, each with its time and comment.
    assert [(a["comment"], a["at"]) for a in content["actors"]["approvers"]] == [
        ("first", "2026-01-05T09:00:00.000000Z"),
        ("second", "2026-01-05T10:00:00.000000Z"),
    ]
    assert [(a["id"], a["name"], a["display_name"]) for a in content["actors"]["approvers"]] == [
        (str(uuid.UUID(int=22)), "carol", "Carol Example"),
        (str(uuid.UUID(int=21)), "bob", None),
    ]
    assert content["actors"]["approval"]["approver_groups"] == ["leads", "ops"]
    assert content["decision"] is promotion.decision_record
    assert content["execution"] == {
        "promotion_id": str(uuid.UUID(int=7)),
        "promotion_status": "approved",
        "workflow_run_id": str(uuid.UUID(int=14)),
    }
    assert validate_content(content) == content


def test_without_an_approval_request_the_decision_records_approvals_name_the_approvers() -> None:
    recorded = [{"approver": "u-1", "action": "approved", "at": "2026-01-05T09:00:00Z", "comment": "fine"}]
    content = domain.release_decision_content(_promotion(approvals=recorded), None)
    assert content["actors"]["approvers"] == [
        {
            "id": "u-1",
            "name": None,
            "display_name": None,
            "action": "approved",
            "at": "2026-01-05T09:00:00Z",
            "comment": "fine",
        }
    ]
    assert "approval" not in content["actors"]
    assert content["execution"]["workflow_run_id"] == str(uuid.UUID(int=14))  # the promotion's run


@pytest.mark.parametrize(
    ("status", "decided"),
    [
        (PromotionStatus.PENDING_GATE, False),
        (PromotionStatus.PENDING_APPROVAL, False),
        (PromotionStatus.APPROVED, True),
        (PromotionStatus.REJECTED, True),
        (PromotionStatus.DEPLOYED, True),
    ],
)
def test_only_decided_promotions_get_evidence(status: PromotionStatus, decided: bool) -> None:
    assert domain.is_decided(_promotion(status)) is decided


def test_approvals_are_read_unless_the_decision_says_none_were_required() -> None:
    plain = _promotion()
    assert not domain.needs_approvals(plain, {"approvals": {"required": 0, "granted": 0}})
    assert domain.needs_approvals(plain, {"approvals": {"required": 2, "granted": 0}})
    # Not known: read (a promotion that never opened a request answers 404).
    assert domain.needs_approvals(plain, None)
    assert domain.needs_approvals(plain, {})
    assert domain.needs_approvals(plain, {"approvals": {"required": True}})
    voted = _promotion(approvals=[{"approver": "u", "action": "approved", "at": "2026-01-05T09:00:00Z"}])
    assert domain.needs_approvals(voted, {"approvals": {"required": 0}})


@pytest.mark.parametrize(
    ("status", "result", "recorded"),
    [
        (PromotionStatus.APPROVED, "allow", "approved"),
        (PromotionStatus.DEPLOYING, "allow", "approved"),
        (PromotionStatus.DEPLOYED, "allow", "approved"),
        (PromotionStatus.FAILED, "allow", "approved"),  # its deployment failed after the decision
        (PromotionStatus.REJECTED, "deny", "rejected"),
        (PromotionStatus.REJECTED, "pending", "rejected"),  # approvals timed out: no final record
        (PromotionStatus.CANCELLED, "pending", "cancelled"),
    ],
)
def test_a_decision_packet_records_the_status_the_decision_gave_whenever_it_is_made(
    status: PromotionStatus, result: str, recorded: str
) -> None:
    promotion = _promotion(status)
    promotion = promotion.model_copy(
        update={"decision_record": {**(promotion.decision_record or {}), "result": result}}
    )
    content = domain.release_decision_content(promotion, None)
    assert content["execution"]["promotion_status"] == recorded
    # The same decision, recorded at its announcement or by the workflow's last step, is the same packet.
    later = promotion.model_copy(update={"status": PromotionStatus.DEPLOYED, "updated_at": T0 + timedelta(hours=1)})
    if result != "pending":
        assert domain.release_decision_content(later, None) == content
        assert domain.release_decision_key(later) == domain.release_decision_key(promotion)


def test_the_promotion_comes_from_the_run_inputs_else_the_runs_subject() -> None:
    pid, subject = uuid.uuid4(), uuid.uuid4()
    assert domain.promotion_id_of({"promotion_id": str(pid)}, subject) == pid
    assert domain.promotion_id_of({}, subject) == subject
    assert domain.promotion_id_of({"promotion_id": "not-a-uuid"}, subject) is None
    assert domain.promotion_id_of({}, None) is None


# --- verification of stored packets ---------------------------------------------------------------------------


def _chain(content_factory, count: int = 3):
    key = generate_key(KeyAlgorithm.ED25519)
    tenant = uuid.uuid4()
    head = ChainHead.empty()
    stored = []
    for index in range(count):
        packet = build_packet(
            packet_id=uuid.uuid4(),
            tenant_id=tenant,
            packet_type=PacketType.RELEASE_DECISION,
            content=content_factory(index),
            head=head,
            created_at=T0 + timedelta(minutes=index),
            signer_key_ref=key.key_ref,
            promotion_id=uuid.uuid4(),
        )
        stored.append(StoredPacket(packet=packet, envelope=sign_packet(packet, key)))
        head = packet.head
    return key, PublicKeyRing([key.public_key]), stored


def _failing(result) -> set[str]:
    return {name for name, ok in result.checks.items() if not ok}


def test_an_untouched_packet_passes_every_check(content_factory) -> None:
    _, ring, stored = _chain(content_factory)
    for sequence, item in enumerate(stored, start=1):
        result = verify_stored_packet(item, stored[sequence - 2] if sequence > 1 else None, ring)
        assert result.valid and result.findings == []
        assert set(result.checks) == set(domain.CHECKS)


def test_an_edited_row_fails_its_hash_and_no_longer_matches_its_envelope(content_factory) -> None:
    _, ring, stored = _chain(content_factory)
    content = copy.deepcopy(stored[1].packet.content)
    content["environment"]["name"] = "staging"
    edited = dataclasses.replace(stored[1], packet=dataclasses.replace(stored[1].packet, content=content))
    result = verify_stored_packet(edited, stored[0], ring)
    assert _failing(result) == {"content_hash", "matches_envelope"}
    assert any("recomputed from the stored row [hash_mismatch]" in f for f in result.findings)
    assert any("stored content differ from the signed packet [record_mismatch]" in f for f in result.findings)


def test_a_flipped_signature_byte_and_an_unknown_key_fail_the_signature(content_factory) -> None:
    _, ring, stored = _chain(content_factory)
    envelope = copy.deepcopy(stored[0].envelope)
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 0x80
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    flipped = verify_stored_packet(dataclasses.replace(stored[0], envelope=envelope), None, ring)
    assert _failing(flipped) == {"signature", "signer"}
    assert any("[bad_signature]" in f for f in flipped.findings)

    stranger = generate_key(KeyAlgorithm.ECDSA_P256)
    foreign = verify_stored_packet(stored[0], None, PublicKeyRing([stranger.public_key]))
    assert _failing(foreign) == {"signature", "signer"}
    assert foreign.findings == [
        f"packet 1 (id {stored[0].packet.id}): signed by {stored[0].packet.signer_key_ref}, "
        "a key this service never published [unknown_key]"
    ]


def test_a_signed_statement_about_other_images_or_by_another_signer_is_reported(content_factory) -> None:
    key, _, stored = _chain(content_factory, 1)
    packet = stored[0].packet
    statement = packet.statement()
    statement["subject"] = [{"name": "registry.example.com/evil", "digest": {"sha256": "f" * 64}}]
    other_images = sign_envelope(serialize_statement(statement), PAYLOAD_TYPE, key)
    result = verify_stored_packet(
        dataclasses.replace(stored[0], envelope=other_images), None, PublicKeyRing([key.public_key])
    )
    assert "statement" in _failing(result)
    assert any("[subject_mismatch]" in f for f in result.findings)

    impostor = generate_key(KeyAlgorithm.ED25519)
    signed_by_impostor = sign_envelope(serialize_statement(packet.statement()), PAYLOAD_TYPE, impostor)
    ring = PublicKeyRing([key.public_key, impostor.public_key])
    result = verify_stored_packet(dataclasses.replace(stored[0], envelope=signed_by_impostor), None, ring)
    assert _failing(result) == {"signer"}
    assert any(f"but was signed by {impostor.key_ref} [signer_mismatch]" in f for f in result.findings)

    garbage = verify_stored_packet(dataclasses.replace(stored[0], envelope={"payload": 1}), None, ring)
    assert _failing(garbage) == {"signature", "statement", "signer", "matches_envelope"}
    assert any("[malformed_envelope]" in f for f in garbage.findings)


def test_chain_links_report_a_missing_or_mismatched_predecessor(content_factory) -> None:
    _, ring, stored = _chain(content_factory)
    gap = verify_stored_packet(stored[2], None, ring)
    assert _failing(gap) == {"chain_link"}
    assert gap.findings == [
        f"packet 3 (id {stored[2].packet.id}): packet 2 is missing: the chain is broken before this packet [gap]"
    ]
    wrong = verify_stored_packet(stored[2], stored[0], ring)
    assert _failing(wrong) == {"chain_link"}
    assert any("[broken_link]" in f and f"of packet 1 (id {stored[0].packet.id})" in f for f in wrong.findings)


def test_the_api_verification_refuses_a_signature_outside_the_keys_validity(chain: Any) -> None:
    stored = [StoredPacket(packet=s.packet, envelope=s.envelope) for s in chain.signed]
    ring = PublicKeyRing(chain.public_keys)
    rotation = chain.rotated_at
    validity = {chain.old_key.key_ref: (EPOCH, rotation), chain.new_key.key_ref: (rotation, None)}
    assert verify_stored_packet(stored[4], stored[3], ring, validity).valid
    # The old key was retired before packet 3 was created: its signature on packet 3 no longer counts.
    early = {**validity, chain.old_key.key_ref: (EPOCH, stored[2].packet.created_at)}
    result = verify_stored_packet(stored[2], stored[1], ring, early)
    assert not result.valid and {k for k, ok in result.checks.items() if not ok} == {"key_validity"}
    assert "[key_not_valid]" in result.findings[0]
