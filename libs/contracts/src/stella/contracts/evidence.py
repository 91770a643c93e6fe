"""The evidence context: signed, chained, append-only evidence packets."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

from pydantic import AwareDatetime, Field

from stella.contracts.envelope import Command, Event, Model, PageRequest, Query

CONTEXT: Final[str] = "evidence"
"""Context name in subjects."""

COLLECT_EVIDENCE: Final[str] = "stella.cmd.evidence.collect_evidence"
"""Workflow step command (``ExecuteStep`` of type ``evidence``): build, sign and store a packet."""

COLLECT_PACKET: Final[str] = "stella.cmd.evidence.collect_packet"
"""Command :class:`CollectEvidence`: build, sign and store a packet given directly -> :class:`PacketView`."""

GET_PACKET: Final[str] = "stella.rpc.evidence.get_packet"
"""Query :class:`GetPacket` -> :class:`PacketView`."""
LIST_PACKETS: Final[str] = "stella.rpc.evidence.list_packets"
"""Query :class:`ListPackets` -> page of :class:`PacketView`."""
VERIFY_PACKET: Final[str] = "stella.rpc.evidence.verify_packet"
"""Query :class:`VerifyPacket` -> :class:`VerificationView`."""
LIST_KEYS: Final[str] = "stella.rpc.evidence.list_keys"
"""Query :class:`ListKeys` -> page of :class:`KeyView`: every key in one page (``next_page_token`` is null)."""
EXPORT_BUNDLE: Final[str] = "stella.rpc.evidence.export_bundle"
"""Query :class:`ExportBundle` -> :class:`ExportBundleView`: the bundle itself is stored in a JetStream object
store bucket (bundles can exceed a NATS message), from which the caller streams it."""

GET_CHECKPOINT: Final[str] = "stella.rpc.evidence.get_checkpoint"
"""Query :class:`GetCheckpoint` -> :class:`CheckpointView`: the signed checkpoint of the tenant's Merkle tree."""
GET_INCLUSION_PROOF: Final[str] = "stella.rpc.evidence.get_inclusion_proof"
"""Query :class:`GetInclusionProof` -> :class:`InclusionProofView`: a packet's place in a checkpoint's tree."""
GET_CONSISTENCY_PROOF: Final[str] = "stella.rpc.evidence.get_consistency_proof"
"""Query :class:`GetConsistencyProof` -> :class:`ConsistencyProofView`: that an older checkpoint's tree is a
prefix of a newer one's (no packet was removed or changed in between)."""

PACKET_CREATED: Final[str] = "stella.evt.evidence.packet_created"
"""Event :class:`PacketCreated`."""


class PacketType(StrEnum):
    """Kinds of evidence (reference §5)."""

    RELEASE_DECISION = "release_decision"
    DEPLOYMENT = "deployment"
    ROLLBACK = "rollback"
    DRIFT = "drift"


class PacketView(Model):
    """A stored packet: its envelope and decoded content."""

    id: UUID
    packet_type: PacketType
    promotion_id: UUID | None
    sequence: int
    previous_hash: str | None
    content_hash: str
    signer_key_ref: str
    created_at: datetime
    content: dict[str, Any]
    envelope: dict[str, Any]


class VerificationView(Model):
    """The outcome of verifying one packet."""

    packet_id: UUID
    valid: bool
    checks: dict[str, bool]
    findings: list[str]


class KeyView(Model):
    """A published public key."""

    key_ref: str
    algorithm: str
    public_key_pem: str
    active: bool
    created_at: datetime
    retired_at: datetime | None
    key_id: str | None = None
    """Full fingerprint: ``sha256:`` + hex SHA-256 of the DER SubjectPublicKeyInfo (``key_ref`` is its short form)."""
    log_entry: dict[str, Any] | None = None
    """The key's signed key log entry (a DSSE envelope): when it became valid, signed by itself and the key
    it replaced. Keep the entries with the keys (``key-log.json``) to verify bundles against them."""


class ExportBundleView(Model):
    """Where an export bundle is stored and what it holds.

    Attributes:
        bucket: The JetStream object store bucket (named in the installation's namespace).
        object: The object's name in the bucket.
        filename: The file name to offer a person downloading the bundle.
        packets: How many packets the bundle holds.
        first_sequence: Chain sequence of its first packet; None when it holds none.
        last_sequence: Chain sequence of its last packet; None when it holds none.
        sha256: Hex SHA-256 of the bundle's bytes.
        size: The bundle's size in bytes.
        created_at: When the bundle was built.
        expires_at: When the object store drops it.
    """

    bucket: str = Field(pattern=r"^[A-Za-z0-9_-]{1,255}$")
    object: str = Field(min_length=1, max_length=1024)
    filename: str = Field(pattern=r"^[A-Za-z0-9._-]{1,200}$")
    packets: int = Field(ge=0)
    first_sequence: int | None = Field(ge=1)
    last_sequence: int | None = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    created_at: AwareDatetime
    expires_at: AwareDatetime


class CheckpointView(Model):
    """A signed checkpoint (C2SP ``tlog-checkpoint`` signed note) of a tenant's Merkle tree.

    Attributes:
        origin: The log's name, ``<installation origin>/<tenant id>``.
        tree_size: Packets the tree holds (sequences 1..tree_size).
        root_hash: Base64 of the RFC 6962 root hash.
        note: The signed note, verbatim: what a witness keeps.
        key_ref: The key that signed it.
        created_at: When it was signed.
    """

    origin: str
    tree_size: int = Field(ge=1)
    root_hash: str
    note: str
    key_ref: str
    created_at: AwareDatetime


class InclusionProofView(Model):
    """An RFC 6962 inclusion proof of a packet in the tree of a checkpoint.

    Attributes:
        packet_id: The packet.
        sequence: Its sequence; its leaf index is ``sequence - 1``.
        leaf_index: ``sequence - 1``.
        leaf_hash: Base64 of SHA-256(0x00 || the envelope's decoded payload).
        tree_size: Size of the tree the proof is for.
        hashes: Base64 of the proof's hashes, from the leaf up.
        checkpoint: The signed checkpoint of that tree.
    """

    packet_id: UUID
    sequence: int = Field(ge=1)
    leaf_index: int = Field(ge=0)
    leaf_hash: str
    tree_size: int = Field(ge=1)
    hashes: list[str]
    checkpoint: CheckpointView


class ConsistencyProofView(Model):
    """An RFC 6962 consistency proof between two checkpoints of a tenant's tree.

    Attributes:
        old_size: The older tree's size.
        new_size: The newer tree's size.
        hashes: Base64 of the proof's hashes.
        old_checkpoint: The stored checkpoint of the older size, when one was signed.
        new_checkpoint: The signed checkpoint of the newer size.
    """

    old_size: int = Field(ge=1)
    new_size: int = Field(ge=1)
    hashes: list[str]
    old_checkpoint: CheckpointView | None
    new_checkpoint: CheckpointView


class GetCheckpoint(Query):
    """Read the newest signed checkpoint (or the one of ``tree_size``)."""

    tree_size: int | None = Field(default=None, ge=1, le=2**62)


class GetInclusionProof(Query):
    """Prove a packet is in the tree of the newest checkpoint (or of ``tree_size``)."""

    packet_id: UUID
    tree_size: int | None = Field(default=None, ge=1, le=2**62)


class GetConsistencyProof(Query):
    """Prove the tree at ``old_size`` is a prefix of the tree at ``new_size`` (the newest when omitted)."""

    old_size: int = Field(ge=1, le=2**62)
    new_size: int | None = Field(default=None, ge=1, le=2**62)


class GetPacket(Query):
    """Read a packet."""

    packet_id: UUID


class ListPackets(Query):
    """List packets in chain order."""

    promotion_id: UUID | None = None
    packet_type: PacketType | None = None
    page: PageRequest = Field(default_factory=PageRequest)


class VerifyPacket(Query):
    """Verify a packet's signature, hash and chain link."""

    packet_id: UUID


class ListKeys(Query):
    """List the public keys (current and rotated)."""


class ExportBundle(Query):
    """Export the tenant's packets created in [from, to) as a verifiable bundle."""

    created_from: AwareDatetime | None = None
    created_to: AwareDatetime | None = None


class PacketCreated(Event):
    """A packet was signed and stored."""

    packet_id: UUID
    packet_type: PacketType
    promotion_id: UUID | None
    sequence: int
    content_hash: str


class CollectEvidence(Command):
    """Build a packet outside a workflow (deployment, rollback and drift packets arrive through this).

    Attributes:
        source_key: What the packet records, e.g. ``<deployment job id>:<outcome>``: one packet per key and
            packet type, so a command repeated with the same key (a retried task, a new attempt) returns the
            packet made first. Name the fact, never the attempt. Without a key, one packet per command.
    """

    packet_type: PacketType
    promotion_id: UUID | None = None
    content: dict[str, Any]
    source_key: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")
