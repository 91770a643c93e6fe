"""Chain verification: every way a tenant's packet sequence can be broken is named precisely."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from stella.evidence.chain import Finding, FindingKind, verify_chain
from stella.evidence.packet import EvidencePacket


@pytest.fixture
def packets(chain_factory: Callable[..., Any]) -> list[EvidencePacket]:
    return [item.packet for item in chain_factory(6).signed]


def _rehash(packet: EvidencePacket, **changes: Any) -> EvidencePacket:
    changed = dataclasses.replace(packet, **changes)
    return dataclasses.replace(changed, content_hash=changed.compute_hash())


def _kinds(findings: list[Finding]) -> list[tuple[FindingKind, int | None]]:
    return [(f.kind, f.sequence) for f in findings]


def test_intact_chain_has_no_findings(packets: list[EvidencePacket]) -> None:
    assert verify_chain(packets) == []
    assert verify_chain([]) == []


def test_changed_content_is_a_hash_mismatch_of_that_packet_only(packets: list[EvidencePacket]) -> None:
    packets[2] = dataclasses.replace(packets[2], content={**packets[2].content, "actors": {"requester": "mallory"}})
    findings = verify_chain(packets)
    assert _kinds(findings) == [(FindingKind.HASH_MISMATCH, 3)]
    assert findings[0].packet_id == packets[2].id
    assert packets[2].content_hash in findings[0].message


def test_changed_recorded_hash_is_a_hash_mismatch_of_that_packet_only(packets: list[EvidencePacket]) -> None:
    packets[1] = dataclasses.replace(packets[1], content_hash="sha256:" + "0" * 64)
    assert _kinds(verify_chain(packets)) == [(FindingKind.HASH_MISMATCH, 2)]


def test_rehashed_content_change_breaks_the_next_link(packets: list[EvidencePacket]) -> None:
    packets[2] = _rehash(packets[2], content={**packets[2].content, "actors": {"requester": "mallory"}})
    findings = verify_chain(packets)
    assert _kinds(findings) == [(FindingKind.BROKEN_LINK, 4)]
    assert "does not match content_hash" in findings[0].message


def test_deleted_packet_is_a_gap_before_the_next_one(packets: list[EvidencePacket]) -> None:
    deleted = packets.pop(3)
    findings = verify_chain(packets)
    assert _kinds(findings) == [(FindingKind.GAP, 5)]
    assert findings[0].message == "packet 4 is missing between packet 3 and it"
    assert deleted.sequence == 4


def test_several_deleted_packets_and_a_missing_start(packets: list[EvidencePacket]) -> None:
    kept = [packets[1], packets[4]]
    findings = verify_chain(kept)
    assert _kinds(findings) == [(FindingKind.GAP, 2), (FindingKind.GAP, 5)]
    assert findings[0].message == "packet 1 is missing before it"
    assert findings[1].message == "packets 3..4 are missing between packet 2 and it"


def test_deleted_and_renumbered_packets_break_the_link(packets: list[EvidencePacket]) -> None:
    # An insider deletes packet 3 and renumbers the rest (re-hashing them) to hide the gap.
    renumbered = packets[:2] + [_rehash(p, sequence=p.sequence - 1) for p in packets[3:]]
    findings = verify_chain(renumbered)
    assert (FindingKind.BROKEN_LINK, 3) in _kinds(findings)
    assert all(f.kind is not FindingKind.GAP for f in findings)


def test_packets_presented_out_of_order_are_reordered(packets: list[EvidencePacket]) -> None:
    packets[2], packets[3] = packets[3], packets[2]
    findings = verify_chain(packets)
    assert _kinds(findings) == [(FindingKind.REORDERED, 3)]
    assert findings[0].message == f"appears after packet 4 (id {packets[2].id})"


def test_swapped_sequence_numbers_are_reordered_links(packets: list[EvidencePacket]) -> None:
    # Packets 3 and 4 trade sequence numbers, keeping their recorded hashes and links.
    third, fourth = packets[2], packets[3]
    packets[2] = dataclasses.replace(fourth, sequence=3)
    packets[3] = dataclasses.replace(third, sequence=4)
    kinds = _kinds(verify_chain(packets))
    assert (FindingKind.HASH_MISMATCH, 3) in kinds
    assert (FindingKind.HASH_MISMATCH, 4) in kinds
    assert (FindingKind.REORDERED, 3) in kinds
    assert (FindingKind.REORDERED, 4) in kinds
    assert (FindingKind.REORDERED, 5) in kinds


def test_duplicate_sequence(packets: list[EvidencePacket]) -> None:
    twin = _rehash(packets[2], id=uuid.uuid4(), content={**packets[2].content, "previous": {"x": 1}})
    packets.insert(3, twin)
    findings = verify_chain(packets)
    assert _kinds(findings) == [(FindingKind.DUPLICATE_SEQUENCE, 3)]
    assert findings[0].packet_id == twin.id
    assert str(packets[2].id) in findings[0].message


def test_duplicate_id_at_another_sequence(packets: list[EvidencePacket]) -> None:
    packets[4] = _rehash(packets[4], id=packets[1].id, previous_hash=packets[3].content_hash)
    packets[5] = _rehash(packets[5], previous_hash=packets[4].content_hash)
    assert _kinds(verify_chain(packets)) == [(FindingKind.DUPLICATE_ID, 5)]


def test_packet_of_another_tenant(packets: list[EvidencePacket]) -> None:
    packets[3] = _rehash(packets[3], tenant_id=uuid.uuid4())
    findings = verify_chain(packets, tenant_id=packets[0].tenant_id)
    assert (FindingKind.TENANT_MISMATCH, 4) in _kinds(findings)


def test_first_packet_must_not_link_anywhere(packets: list[EvidencePacket]) -> None:
    packets[0] = _rehash(packets[0], previous_hash="sha256:" + "9" * 64)
    packets[1] = _rehash(packets[1], previous_hash=packets[0].content_hash)
    for index in range(2, len(packets)):
        packets[index] = _rehash(packets[index], previous_hash=packets[index - 1].content_hash)
    assert _kinds(verify_chain(packets)) == [(FindingKind.BROKEN_LINK, 1)]


def test_null_link_after_the_first_packet(packets: list[EvidencePacket]) -> None:
    packets[2] = _rehash(packets[2], previous_hash=None)
    kinds = _kinds(verify_chain(packets))
    assert (FindingKind.BROKEN_LINK, 3) in kinds


def test_a_range_can_start_later_and_be_anchored(packets: list[EvidencePacket]) -> None:
    tail = packets[3:]
    assert _kinds(verify_chain(tail)) == [(FindingKind.GAP, 4)]
    assert verify_chain(tail, first_sequence=4) == []
    assert verify_chain(tail, first_sequence=None, anchor_hash=packets[2].content_hash) == []
    findings = verify_chain(tail, first_sequence=None, anchor_hash="sha256:" + "0" * 64)
    assert _kinds(findings) == [(FindingKind.BROKEN_LINK, 4)]


def test_finding_text_names_the_packet() -> None:
    packet_id = uuid.UUID("00000000-0000-4000-8000-000000000007")
    finding = Finding(FindingKind.BAD_SIGNATURE, "signature does not verify with key ed25519:ab12", 7, packet_id)
    assert str(finding) == (
        "packet 7 (id 00000000-0000-4000-8000-000000000007): signature does not verify with key ed25519:ab12"
        " [bad_signature]"
    )
    assert Finding(FindingKind.FILE_UNLISTED, "x", path="extra.txt").subject == "file extra.txt"
    assert finding.to_dict()["kind"] == "bad_signature"


def test_unreadable_packets_are_not_gaps_and_their_links_are_not_checked(packets: list[EvidencePacket]) -> None:
    readable = packets[:2] + packets[3:]
    assert verify_chain(readable, unreadable=[3]) == []
    findings = verify_chain(packets[3:], unreadable=[1, 2])
    assert _kinds(findings) == [(FindingKind.GAP, 4)]
    assert findings[0].message == "packet 3 is missing between packet 2 and it"
    start_missing = verify_chain(packets[2:], unreadable=[2])
    assert _kinds(start_missing) == [(FindingKind.GAP, 2)]
    assert start_missing[0].packet_id is None
