"""Verification of a tenant's packet chain, and the findings vocabulary every evidence check reports in.

A chain holds when: every packet's ``content_hash`` recomputes; sequences run 1, 2, 3... without gaps or
duplicates; packet ``n``'s ``previous_hash`` is packet ``n-1``'s ``content_hash`` (``null`` for packet 1); and
packets appear in sequence order. Each broken rule is reported as a :class:`Finding` naming the packet, so
that one tampered packet yields findings about that packet, not a cascade about all the ones after it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from typing import Any
from uuid import UUID

from stella.evidence.packet import EvidencePacket


class FindingKind(StrEnum):
    """What a verification finding is about."""

    HASH_MISMATCH = "hash_mismatch"
    """A packet's recorded ``content_hash`` is not the hash of its fields."""
    BROKEN_LINK = "broken_link"
    """A packet's ``previous_hash`` is not the hash of the packet before it."""
    GAP = "gap"
    """Sequences are missing: packets were deleted or never exported."""
    REORDERED = "reordered"
    """Packets appear out of sequence order, or a packet links to a packet other than its predecessor."""
    DUPLICATE_SEQUENCE = "duplicate_sequence"
    """Two packets claim the same sequence."""
    DUPLICATE_ID = "duplicate_id"
    """Two packets at different sequences claim the same id."""
    TENANT_MISMATCH = "tenant_mismatch"
    """A packet belongs to another tenant than the chain."""
    MALFORMED_ENVELOPE = "malformed_envelope"
    """An envelope file is not a well-formed DSSE envelope of an in-toto statement."""
    UNKNOWN_KEY = "unknown_key"
    """An envelope is signed only by keys that are not trusted."""
    BAD_SIGNATURE = "bad_signature"
    """A signature does not verify with the trusted key it names."""
    MALFORMED_STATEMENT = "malformed_statement"
    """A signed payload is not a canonical in-toto Statement v1 with the evidence predicate."""
    MALFORMED_PACKET = "malformed_packet"
    """A statement predicate is not a well-formed evidence packet."""
    SUBJECT_MISMATCH = "subject_mismatch"
    """A statement's subjects are not the images its packet content names."""
    SIGNER_MISMATCH = "signer_mismatch"
    """A packet's ``signer_key_ref`` is not the key that signed it."""
    MISPLACED_PACKET = "misplaced_packet"
    """An envelope file's name does not match the sequence and id of the packet inside."""
    MANIFEST_INVALID = "manifest_invalid"
    """The bundle manifest is missing or unreadable."""
    MANIFEST_MISMATCH = "manifest_mismatch"
    """The manifest's metadata (tenant, range, packet count) disagrees with the packets."""
    FILE_MISSING = "file_missing"
    """A file listed in the manifest is not in the bundle."""
    FILE_DIGEST_MISMATCH = "file_digest_mismatch"
    """A file's SHA-256 is not the one the manifest lists."""
    FILE_UNLISTED = "file_unlisted"
    """The bundle holds a file the manifest does not list."""
    UNEXPECTED_MEMBER = "unexpected_member"
    """The bundle holds something other than plain files (a link, a device), or one path twice."""
    KEY_INVALID = "key_invalid"
    """A key file is not a supported PEM public key."""
    KEY_REF_MISMATCH = "key_ref_mismatch"
    """A key file's name is not the reference of the key inside."""
    CHECKPOINT_MISSING = "checkpoint_missing"
    """The bundle carries no signed checkpoint: packets missing at its head or tail could not be noticed."""
    CHECKPOINT_INVALID = "checkpoint_invalid"
    """The checkpoint is malformed, of another tenant, or not signed by a trusted key."""
    KEY_LOG_INVALID = "key_log_invalid"
    """A key log entry is malformed, out of order, or not signed by a trusted key or its predecessor."""
    KEY_NOT_VALID = "key_not_valid"
    """A packet (or checkpoint) is signed by a key outside its validity: before it began, or after it was retired."""
    KEY_VALIDITY_UNKNOWN = "key_validity_unknown"
    """No authenticated key log entry says when the signing key was valid."""
    DECISION_INPUTS_MISMATCH = "decision_inputs_mismatch"
    """A decision's ``inputs_hash`` is not the hash of the inputs the packet carries: an input was changed."""
    TIMESTAMP_INVALID = "timestamp_invalid"
    """The checkpoint's RFC 3161 timestamp is missing (``--tsa-ca`` asks for one) or does not verify."""
    EMPTY_BUNDLE = "empty_bundle"
    """The bundle holds no packet, so it proves nothing (accepted only with ``--allow-empty``)."""
    DECISION_REPLAY_MISMATCH = "decision_replay_mismatch"
    """Deciding again from the inputs the packet carries (``--replay``) does not give the recorded decision."""
    TREE_MISMATCH = "tree_mismatch"
    """The packets do not recompute the checkpoint's root: one was deleted, added or changed."""


@dataclass(frozen=True)
class Finding:
    """One verification failure.

    Attributes:
        kind: What is wrong.
        message: Precise human description (what was expected, what was found).
        sequence: Sequence of the packet concerned, when known.
        packet_id: Id of the packet concerned, when known.
        path: Bundle file concerned, when the finding is about a file.
        key_ref: Key concerned, for signature and key findings.
    """

    kind: FindingKind
    message: str
    sequence: int | None = None
    packet_id: UUID | None = None
    path: str | None = None
    key_ref: str | None = None

    @property
    def subject(self) -> str:
        """What the finding is about, as the start of its report line."""
        if self.sequence is not None:
            return f"packet {self.sequence}" + (f" (id {self.packet_id})" if self.packet_id else "")
        if self.path is not None:
            return f"file {self.path}"
        return "bundle"

    def __str__(self) -> str:
        return f"{self.subject}: {self.message} [{self.kind.value}]"

    def to_dict(self) -> dict[str, Any]:
        """Return the finding as JSON."""
        return {
            "kind": self.kind.value,
            "message": self.message,
            "sequence": self.sequence,
            "packet_id": None if self.packet_id is None else str(self.packet_id),
            "path": self.path,
            "key_ref": self.key_ref,
        }


def _finding(kind: FindingKind, packet: EvidencePacket, message: str) -> Finding:
    return Finding(kind=kind, message=message, sequence=packet.sequence, packet_id=packet.id)


def _recompute(packet: EvidencePacket) -> tuple[str | None, str | None]:
    """Return ``(hash, None)`` or ``(None, why it cannot be computed)``."""
    try:
        return packet.compute_hash(), None
    except ValueError as exc:
        return None, str(exc)


def verify_chain(
    packets: Iterable[EvidencePacket],
    *,
    tenant_id: UUID | None = None,
    first_sequence: int | None = 1,
    anchor_hash: str | None = None,
    unreadable: Iterable[int] = (),
) -> list[Finding]:
    """Check a tenant's packets and return every way they fail to form an intact chain.

    Args:
        packets: The packets in the order they were stored or exported (order matters: a packet appearing
            after one with a higher sequence is reported as reordered).
        tenant_id: The chain's tenant; defaults to the tenant of the first packet.
        first_sequence: The sequence the packets must start at: ``1`` (default) for a whole chain, the first
            sequence of an exported range, or ``None`` to accept any start.
        anchor_hash: ``content_hash`` of the packet just before the first one, when the packets are a range
            that does not start at 1 and that hash is known from elsewhere; checks the first link too.
        unreadable: Sequences of packets known to exist (their file is there) but that could not be read,
            already reported by the caller: they are not gaps, and links to and from them cannot be checked.

    Returns:
        The findings, sorted by sequence; empty when the chain holds.
    """
    items = list(packets)
    if not items:
        return []
    findings: list[Finding] = []
    tenant = tenant_id if tenant_id is not None else items[0].tenant_id
    computed: dict[int, str | None] = {}

    for packet in items:
        if packet.tenant_id != tenant:
            findings.append(
                _finding(FindingKind.TENANT_MISMATCH, packet, f"belongs to tenant {packet.tenant_id}, not {tenant}")
            )
        digest, why = _recompute(packet)
        computed[id(packet)] = digest
        if digest is None:
            findings.append(_finding(FindingKind.HASH_MISMATCH, packet, f"content_hash cannot be recomputed: {why}"))
        elif digest != packet.content_hash:
            findings.append(
                _finding(
                    FindingKind.HASH_MISMATCH,
                    packet,
                    f"content_hash {packet.content_hash} does not match the recomputed {digest}",
                )
            )

    # Presented order: each packet must come after every packet with a lower sequence.
    highest: EvidencePacket | None = None
    for packet in items:
        if highest is not None and packet.sequence < highest.sequence:
            findings.append(
                _finding(
                    FindingKind.REORDERED,
                    packet,
                    f"appears after packet {highest.sequence} (id {highest.id})",
                )
            )
        if highest is None or packet.sequence > highest.sequence:
            highest = packet

    by_sequence: dict[int, list[EvidencePacket]] = defaultdict(list)
    for packet in items:
        by_sequence[packet.sequence].append(packet)
    for sequence, group in by_sequence.items():
        for extra in group[1:]:
            findings.append(
                _finding(
                    FindingKind.DUPLICATE_SEQUENCE,
                    extra,
                    f"sequence {sequence} is also claimed by packet id {group[0].id}",
                )
            )
    first_at: dict[UUID, EvidencePacket] = {}
    for packet in items:
        seen = first_at.setdefault(packet.id, packet)
        if seen is not packet and seen.sequence != packet.sequence:
            findings.append(
                _finding(FindingKind.DUPLICATE_ID, packet, f"id {packet.id} is also used by packet {seen.sequence}")
            )

    sequences = sorted(by_sequence)
    unreadable_set = set(unreadable) - set(sequences)
    present = sorted(set(sequences) | unreadable_set)

    def gap(sequence: int, message: str) -> Finding:
        group = by_sequence.get(sequence)
        if group:
            return _finding(FindingKind.GAP, group[0], message)
        return Finding(kind=FindingKind.GAP, message=message, sequence=sequence)

    if first_sequence is not None and present[0] > first_sequence:
        findings.append(gap(present[0], f"{_range(first_sequence, present[0] - 1)} missing before it"))
    for before, after in pairwise(present):
        if after > before + 1:
            findings.append(gap(after, f"{_range(before + 1, after - 1)} missing between packet {before} and it"))

    # A link is good when it names the predecessor's recorded hash or its true (recomputed) one: if the two
    # differ, the predecessor already has a hash_mismatch finding, and one tampered packet gives one finding.
    hash_owner: dict[str, EvidencePacket] = {}
    for packet in items:
        hash_owner.setdefault(packet.content_hash, packet)
        digest = computed[id(packet)]
        if digest is not None:
            hash_owner.setdefault(digest, packet)
    for sequence in sequences:
        packet = by_sequence[sequence][0]
        if sequence == 1:
            if packet.previous_hash is not None:
                findings.append(
                    _finding(
                        FindingKind.BROKEN_LINK,
                        packet,
                        f"the first packet must have previous_hash null, has {packet.previous_hash}",
                    )
                )
            continue
        if packet.previous_hash is None:
            findings.append(
                _finding(FindingKind.BROKEN_LINK, packet, f"previous_hash is null, but sequence {sequence} > 1")
            )
            continue
        if sequence - 1 in unreadable_set:
            continue  # nothing to compare with; the unreadable packet is already reported
        predecessor_group = by_sequence.get(sequence - 1)
        if predecessor_group is None:
            if sequence == sequences[0] and anchor_hash is not None and packet.previous_hash != anchor_hash:
                findings.append(
                    _finding(
                        FindingKind.BROKEN_LINK,
                        packet,
                        f"previous_hash {packet.previous_hash} does not match the anchor hash {anchor_hash}",
                    )
                )
            continue  # the missing predecessor is already reported as a gap
        predecessor = predecessor_group[0]
        accepted = {predecessor.content_hash, computed[id(predecessor)]}
        if packet.previous_hash in accepted:
            continue
        owner = hash_owner.get(packet.previous_hash)
        if owner is not None and owner is not predecessor:
            findings.append(
                _finding(
                    FindingKind.REORDERED,
                    packet,
                    f"previous_hash links to packet {owner.sequence} (id {owner.id}), not to packet {sequence - 1}",
                )
            )
        else:
            findings.append(
                _finding(
                    FindingKind.BROKEN_LINK,
                    packet,
                    f"previous_hash {packet.previous_hash} does not match content_hash "
                    f"{predecessor.content_hash} of packet {sequence - 1} (id {predecessor.id})",
                )
            )
    return sort_findings(findings)


def _range(first: int, last: int) -> str:
    return f"packet {first} is" if first == last else f"packets {first}..{last} are"


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Order findings for reporting: bundle and file findings first, then by packet sequence (stable)."""
    return sorted(findings, key=lambda f: (f.sequence is not None, f.sequence or 0, f.path or ""))
