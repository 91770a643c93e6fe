"""Queries of the tenants' Merkle trees: the signed checkpoint, inclusion and consistency proofs.

A witness (an auditor's job, another organization) keeps the checkpoints it has seen and asks, for each new
one, for the consistency proof from the last one it kept: a history rewritten in between (a packet deleted,
changed or replaced, even by a database superuser who also rebuilt the tree) cannot produce a proof that
verifies, since the old checkpoint's root is signed.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from uuid import UUID

import asyncpg

from stella.contracts.envelope import Reply
from stella.contracts.evidence import (
    CheckpointView,
    ConsistencyProofView,
    GetCheckpoint,
    GetConsistencyProof,
    GetInclusionProof,
    InclusionProofView,
)
from stella.evidence import merkle, repo, tree
from stella.evidence.checkpoint import origin_for
from stella.evidence.domain import PacketNotFound
from stella.evidence.tree import Checkpointer, StoredCheckpoint
from stella.kit.errors import NotFound, Unprocessable


class CheckpointNotFound(NotFound):
    """No checkpoint of that size was signed (or the tenant has no packet yet)."""

    code = "RES_CHECKPOINT_NOT_FOUND"
    title = "Checkpoint not found"


class InvalidProofRequest(Unprocessable):
    """The sizes asked for do not make a proof (a packet beyond the tree, an old size above the new one)."""

    code = "VAL_PROOF_RANGE"
    title = "No such proof"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ProofQueries:
    """The checkpoint and proof queries of the evidence service."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], checkpointer: Checkpointer) -> None:
        self._pool = pool
        self.checkpointer = checkpointer

    def _view(self, tenant_id: UUID, stored: StoredCheckpoint) -> CheckpointView:
        return CheckpointView(
            origin=origin_for(self.checkpointer.origin_prefix, tenant_id),
            tree_size=stored.tree_size,
            root_hash=_b64(stored.root_hash),
            note=stored.note,
            key_ref=stored.key_ref,
            created_at=stored.created_at,
        )

    async def _checkpoint(self, conn: asyncpg.Connection, tenant_id: UUID, size: int | None) -> StoredCheckpoint:
        if size is None:
            current = await self.checkpointer.current(conn, tenant_id)
            if current is None:
                raise CheckpointNotFound("the tenant has no evidence yet, so no checkpoint")
            return current
        stored = await tree.checkpoint_at(conn, tenant_id, size)
        if stored is None:
            raise CheckpointNotFound(f"no checkpoint of tree size {size} was signed")
        return stored

    async def get_checkpoint(self, q: GetCheckpoint) -> Reply:
        """The newest checkpoint (signed now when packets arrived since), or the stored one of ``tree_size``."""
        async with self._pool().acquire() as conn:
            stored = await self._checkpoint(conn, q.tenant_id, q.tree_size)
        return Reply.success(self._view(q.tenant_id, stored).model_dump(mode="json"))

    async def get_inclusion_proof(self, q: GetInclusionProof) -> Reply:
        """The proof that a packet is leaf ``sequence - 1`` of a checkpoint's tree."""
        async with self._pool().acquire() as conn:
            stored = await repo.get_packet(conn, q.tenant_id, q.packet_id)
            if stored is None:
                raise PacketNotFound(f"evidence packet {q.packet_id} does not exist")
            checkpoint = await self._checkpoint(conn, q.tenant_id, q.tree_size)
            sequence = stored.packet.sequence
            if sequence > checkpoint.tree_size:
                raise InvalidProofRequest(
                    f"packet {sequence} is not in the tree of {checkpoint.tree_size} packets; ask for a newer checkpoint"
                )
            hashes = await tree.inclusion_proof(conn, q.tenant_id, sequence - 1, checkpoint.tree_size)
        leaf = merkle.leaf_hash(base64.b64decode(stored.envelope["payload"]))
        view = InclusionProofView(
            packet_id=q.packet_id,
            sequence=sequence,
            leaf_index=sequence - 1,
            leaf_hash=_b64(leaf),
            tree_size=checkpoint.tree_size,
            hashes=[_b64(h) for h in hashes],
            checkpoint=self._view(q.tenant_id, checkpoint),
        )
        return Reply.success(view.model_dump(mode="json"))

    async def get_consistency_proof(self, q: GetConsistencyProof) -> Reply:
        """The proof that the tree at ``old_size`` is a prefix of the tree at ``new_size``."""
        async with self._pool().acquire() as conn:
            new = await self._checkpoint(conn, q.tenant_id, q.new_size)
            if q.old_size > new.tree_size:
                raise InvalidProofRequest(
                    f"old_size {q.old_size} is larger than the tree of {new.tree_size} packets: a tree that shrank "
                    "lost packets"
                )
            hashes = await tree.consistency_proof(conn, q.tenant_id, q.old_size, new.tree_size)
            old = await tree.checkpoint_at(conn, q.tenant_id, q.old_size)
        view = ConsistencyProofView(
            old_size=q.old_size,
            new_size=new.tree_size,
            hashes=[_b64(h) for h in hashes],
            old_checkpoint=None if old is None else self._view(q.tenant_id, old),
            new_checkpoint=self._view(q.tenant_id, new),
        )
        return Reply.success(view.model_dump(mode="json"))
