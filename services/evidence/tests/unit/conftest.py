"""Fixtures for the evidence core: keys, realistic packet content, a signed chain and its export bundle."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stella.contracts.canonical import sha256_digest
from stella.evidence import keylog, merkle
from stella.evidence.bundle import TreeProof, build_bundle
from stella.evidence.checkpoint import Checkpoint, origin_for, sign_checkpoint
from stella.evidence.keys import KeyAlgorithm, Signer, generate_key
from stella.evidence.packet import ChainHead, PacketType, SignedPacket, build_packet, sign_packet

EPOCH = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)


def make_content(index: int = 0, *, components: int = 2, gates: int = 3) -> dict[str, Any]:
    """Return §5 packet content with ``components`` images and ``gates`` gate results."""
    return {
        "release": {
            "id": f"rel-{index}",
            "name": f"shop-2025.{index}",
            "components": [
                {
                    "name": f"svc-{c}",
                    "digest": "sha256:" + f"{index:04x}{c:04x}".ljust(64, "a"),
                    "semver": f"1.{index}.{c}",
                    "tag": f"1.{index}.{c}",
                    "image_repository": f"registry.example.com/shop/svc-{c}",
                }
                for c in range(components)
            ],
        },
        "environment": {"id": "env-prod", "name": "prod", "targets": ["host-a", "host-b"]},
        "actors": {"requester": "alice", "approvers": ["bob", "carol"]},
        "decision": {
            "result": "allow",
            "gates": [
                {
                    "type": "policy",
                    "name": f"rule-{g:02d}",
                    "status": "pass",
                    "message": "ok",
                    "details": {"score": g / 10},
                    "reason_codes": [],
                }
                for g in range(gates)
            ],
            "reasons": [],
            "approvals": [{"approver": "bob", "action": "approve", "at": "2025-03-14T09:00:00Z", "comment": "lgtm"}],
            "policy_digest": "sha256:" + "b" * 64,
            "inputs_hash": "sha256:" + "c" * 64,
            "evaluated_at": "2025-03-14T09:26:53Z",
        },
        "execution": {
            "workflow_run_id": "wf-1",
            "deployment_job_id": f"job-{index}",
            "artifacts": [
                {"type": "compose-lock", "name": "compose.stella.lock.yml", "content_hash": "sha256:" + "d" * 64}
            ],
            "logs_hash": "sha256:" + "e" * 64,
        },
        "previous": {"release_id": f"rel-{index - 1}" if index else None},
    }


@dataclass
class Chain:
    """A tenant's signed chain: packets 1..3 signed by a rotated Ed25519 key, the rest by a current ECDSA key."""

    tenant_id: uuid.UUID
    old_key: Signer
    new_key: Signer
    signed: list[SignedPacket]
    created_at: datetime
    _tree: TreeProof | None = None
    _key_log: list[dict[str, Any]] | None = None

    @property
    def public_keys(self) -> list:
        return [self.old_key.public_key, self.new_key.public_key]

    def tree(self, size: int | None = None) -> TreeProof:
        """The checkpoint of the first ``size`` packets (all by default), signed by the current key (ECDSA
        signatures differ each time: the one of the whole chain is made once and kept)."""
        if size is None:
            if self._tree is None:
                self._tree = self.tree(len(self.signed))
            return self._tree
        root = merkle.root_from_leaves([leaf_of(item) for item in self.signed[:size]])
        note = sign_checkpoint(
            Checkpoint(origin_for("stella.test/evidence", self.tenant_id), size, root),
            self.new_key,
            self.new_key.public_key,
        )
        return TreeProof(
            checkpoint=note, tree_size=size, first_sequence=1 if size else None, last_sequence=size or None
        )

    @property
    def rotated_at(self) -> datetime:
        """When the new key took over: the creation time of its first packet."""
        firsts = [s.packet.created_at for s in self.signed if s.packet.signer_key_ref == self.new_key.key_ref]
        return firsts[0] if firsts else self.created_at

    def key_log(self) -> list[dict[str, Any]]:
        """The signed key log: the old key from the start, the new one from the rotation (handed over); made
        once (ECDSA signatures differ each time)."""
        if self._key_log is not None:
            return self._key_log
        first = keylog.entry_payload(0, self.old_key.public_key, EPOCH - timedelta(days=1), None)
        second = keylog.entry_payload(1, self.new_key.public_key, self.rotated_at, sha256_digest(first))
        self._key_log = [
            keylog.sign_entry(first, [self.old_key]),
            keylog.sign_entry(second, [self.new_key, self.old_key]),
        ]
        return self._key_log

    def bundle(self) -> bytes:
        return build_bundle(
            self.signed,
            self.public_keys,
            tenant_id=self.tenant_id,
            created_at=self.created_at,
            tree=self.tree(),
            key_log=self.key_log(),
        )


def leaf_of(item: SignedPacket) -> bytes:
    """The Merkle leaf hash of a signed packet: over its DSSE payload bytes."""
    return merkle.leaf_hash(base64.b64decode(item.envelope["payload"]))


def make_chain(
    count: int = 6,
    *,
    rotate_after: int = 3,
    old_key: Signer | None = None,
    new_key: Signer | None = None,
    content: Callable[[int], dict[str, Any]] = make_content,
) -> Chain:
    """Build and sign ``count`` packets of one tenant, rotating keys after ``rotate_after`` packets (signed with
    new Ed25519 and ECDSA P-256 key files unless other signers are given); ``content(index)`` makes each
    packet's content."""
    tenant_id = uuid.uuid4()
    old_key = old_key or generate_key(KeyAlgorithm.ED25519)
    new_key = new_key or generate_key(KeyAlgorithm.ECDSA_P256)
    head = ChainHead.empty()
    signed = []
    types = list(PacketType)
    for index in range(count):
        key = old_key if index < rotate_after else new_key
        packet = build_packet(
            packet_id=uuid.uuid4(),
            tenant_id=tenant_id,
            packet_type=types[index % len(types)],
            content=content(index),
            head=head,
            created_at=EPOCH + timedelta(minutes=index),
            signer_key_ref=key.key_ref,
            promotion_id=uuid.uuid4(),
        )
        signed.append(SignedPacket(packet=packet, envelope=sign_packet(packet, key)))
        head = packet.head
    return Chain(
        tenant_id=tenant_id,
        old_key=old_key,
        new_key=new_key,
        signed=signed,
        created_at=EPOCH + timedelta(days=1),
    )


@pytest.fixture
def content() -> dict[str, Any]:
    return make_content()


@pytest.fixture
def content_factory() -> Callable[..., dict[str, Any]]:
    return make_content


@pytest.fixture
def chain() -> Chain:
    return make_chain()


@pytest.fixture
def chain_factory() -> Callable[..., Chain]:
    return make_chain
