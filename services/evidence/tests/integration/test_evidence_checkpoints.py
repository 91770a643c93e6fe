"""Signed checkpoints against an attacker with database superuser rights: no packet vanishes unseen.

The checkpoint and the proofs are checked here with code written from RFC 6962 and the C2SP signed-note
specification alone (``_root_from_path``, ``_mth`` and ``_verify_note`` below), not with the project's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from nats.aio.client import Client

from stella.contracts.evidence import (
    EXPORT_BUNDLE,
    GET_CHECKPOINT,
    GET_CONSISTENCY_PROOF,
    GET_INCLUSION_PROOF,
    LIST_KEYS,
    ExportBundle,
    GetCheckpoint,
    GetConsistencyProof,
    GetInclusionProof,
    ListKeys,
)
from stella.evidence import keylog, merkle
from stella.evidence.app import EvidenceApp, create_app
from stella.evidence.keys import SigningKey
from stella.evidence.packet import ChainHead, PacketType, build_packet, sign_packet
from stella.evidence.settings import Settings
from stella.evidence.signing import KeyFile, rotate_key
from stella.testing.services import service_client

from ..conftest import LocalTsa
from .conftest import Auditor, Caller, packet_content, run_verifier


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH over leaf hashes."""
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _sha(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:]))


def _root_from_path(m: int, n: int, leaf: bytes, path: list[bytes]) -> bytes:
    """The root PATH(m, D[n]) of RFC 6962 2.1.1 leads to: the last hash is the top sibling."""
    if n == 1:
        assert not path, "a proof longer than the tree is deep"
        return leaf
    k = _split(n)
    if m < k:
        return _sha(b"\x01" + _root_from_path(m, k, leaf, path[:-1]) + path[-1])
    return _sha(b"\x01" + path[-1] + _root_from_path(m - k, n - k, leaf, path[:-1]))


def _verify_note(note: str, public_pem: str) -> tuple[str, int, bytes]:
    """Verify a C2SP checkpoint signed with Ed25519 (signature type 0x01); return origin, size and root."""
    text, _, signatures = note.partition("\n\n")
    origin, size, root = text.split("\n")
    key = serialization.load_pem_public_key(public_pem.encode())
    assert isinstance(key, ed25519.Ed25519PublicKey)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for line in signatures.splitlines():
        _, name, blob = line.split(" ")
        signature = base64.b64decode(blob)
        if signature[:4] == _sha(name.encode() + b"\n\x01" + raw)[:4]:
            key.verify(signature[4:], (text + "\n").encode())
            return origin, int(size), base64.b64decode(root)
    raise AssertionError("no signature of the published key")


async def _active_key_pem(caller: Caller) -> str:
    reply = await caller.query(LIST_KEYS, ListKeys)
    assert reply.ok, reply.error
    return next(k["public_key_pem"] for k in reply.data["items"] if k["active"])


async def _checkpoint(caller: Caller, **query: Any) -> dict[str, Any]:
    reply = await caller.query(GET_CHECKPOINT, GetCheckpoint, **query)
    assert reply.ok, reply.error
    return reply.data


async def test_checkpoint_and_inclusion_proofs_verify_with_an_independent_implementation(
    caller: Caller, auditor: Auditor
) -> None:
    packets = [await auditor.collect(i) for i in range(11)]
    checkpoint = await _checkpoint(caller)
    origin, size, root = _verify_note(checkpoint["note"], await _active_key_pem(caller))
    assert (origin.rsplit("/", 1)[1], size) == (str(caller.tenant_id), 11)
    assert base64.b64decode(checkpoint["root_hash"]) == root

    # The leaves are SHA-256(0x00 || signed payload) of the packets, in chain order.
    leaves = [_sha(b"\x00" + base64.b64decode(p["envelope"]["payload"])) for p in packets]
    assert _mth(leaves) == root
    for packet, leaf in zip(packets, leaves, strict=True):
        reply = await caller.query(GET_INCLUSION_PROOF, GetInclusionProof, packet_id=packet["id"])
        assert reply.ok, reply.error
        proof = reply.data
        assert base64.b64decode(proof["leaf_hash"]) == leaf
        hashes = [base64.b64decode(h) for h in proof["hashes"]]
        assert _root_from_path(packet["sequence"] - 1, size, leaf, hashes) == root
        assert proof["checkpoint"]["note"] == checkpoint["note"]

    # An older checkpoint is kept: its proofs still verify against it.
    await auditor.collect(11)
    newer = await _checkpoint(caller)
    assert newer["tree_size"] == 12 and (await _checkpoint(caller, tree_size=11))["note"] == checkpoint["note"]
    reply = await caller.query(GET_INCLUSION_PROOF, GetInclusionProof, packet_id=packets[3]["id"], tree_size=11)
    assert reply.ok and reply.data["tree_size"] == 11
    beyond = await caller.query(GET_INCLUSION_PROOF, GetInclusionProof, packet_id=packets[3]["id"], tree_size=99)
    assert (beyond.error.status, beyond.error.code) == (404, "RES_CHECKPOINT_NOT_FOUND")


async def test_the_checkpointer_signs_every_tree_that_grew(
    caller: Caller, evidence_app: EvidenceApp, auditor: Auditor
) -> None:
    await auditor.collect(0)
    other = caller.other_tenant()
    await Auditor(other, auditor.directory).collect(1)
    await evidence_app.checkpointer.sign_grown()
    async with evidence_app.runtime.pool.acquire() as conn:
        sizes = {
            row["tenant_id"]: row["tree_size"]
            for row in await conn.fetch("SELECT tenant_id, max(tree_size) AS tree_size FROM checkpoints GROUP BY 1")
        }
    assert sizes[caller.tenant_id] == 1 and sizes[other.tenant_id] == 1
    assert await evidence_app.checkpointer.sign_grown() == 0


@pytest.mark.parametrize("victim", ["first", "middle", "last"])
async def test_a_packet_deleted_by_a_superuser_fails_the_next_export_offline(
    victim: str, auditor: Auditor, superuser: asyncpg.Connection
) -> None:
    packets = [await auditor.collect(i) for i in range(6)]
    before = await auditor.export("before.tar.gz")
    code, out = await auditor.verify_offline(before)
    assert code == 0, out
    assert "the signed checkpoint of 6 packets recomputes" in out

    sequence = {"first": 1, "middle": 3, "last": 6}[victim]
    await superuser.execute("SET session_replication_role = replica")  # every trigger off
    await superuser.execute(
        "DELETE FROM packets WHERE tenant_id = $1 AND sequence = $2", auditor.caller.tenant_id, sequence
    )
    await superuser.execute("SET session_replication_role = DEFAULT")

    after = await auditor.export("after.tar.gz")
    code, out = await auditor.verify_offline(after)
    assert code == 1, out
    assert f"packet {sequence}" in out
    assert "[tree_mismatch]" in out or "[gap]" in out
    assert packets[sequence - 1]["id"] not in out or victim == "middle"


async def test_a_consistency_proof_fails_after_history_is_rewritten(
    caller: Caller, auditor: Auditor, superuser: asyncpg.Connection
) -> None:
    for i in range(5):
        await auditor.collect(i)
        if i == 2:
            three = await _checkpoint(caller)  # what a witness kept, at 3 packets and at 5
    witnessed = await _checkpoint(caller)
    _, old_size, old_root = _verify_note(witnessed["note"], await _active_key_pem(caller))
    assert old_size == 5

    # A superuser removes packets 4 and 5 and everything that recorded them, tree and checkpoints included.
    tenant = caller.tenant_id
    await superuser.execute("SET session_replication_role = replica")
    await superuser.execute("DELETE FROM packets WHERE tenant_id = $1 AND sequence > 3", tenant)
    await superuser.execute(
        "DELETE FROM merkle_nodes WHERE tenant_id = $1 AND (idx + 1) * (1::bigint << level) > 3", tenant
    )
    await superuser.execute("DELETE FROM checkpoints WHERE tenant_id = $1 AND tree_size > 3", tenant)
    await superuser.execute("UPDATE trees SET size = 3 WHERE tenant_id = $1", tenant)
    await superuser.execute("SET session_replication_role = DEFAULT")
    for i in range(10, 13):
        await auditor.collect(i)  # the chain grows again from packet 3: 4, 5, 6 are new

    current = await _checkpoint(caller)
    _, new_size, new_root = _verify_note(current["note"], await _active_key_pem(caller))
    assert new_size == 6
    reply = await caller.query(GET_CONSISTENCY_PROOF, GetConsistencyProof, old_size=5)
    assert reply.ok, reply.error
    assert reply.data["old_checkpoint"] is None  # the attacker deleted it; the witness kept it
    proof = [base64.b64decode(h) for h in reply.data["hashes"]]
    with pytest.raises(merkle.ProofError, match="older root"):
        merkle.verify_consistency(old_size, new_size, old_root, new_root, proof)

    # Without a rewrite the same check passes.
    honest = await caller.query(GET_CONSISTENCY_PROOF, GetConsistencyProof, old_size=3)
    assert honest.ok
    merkle.verify_consistency(
        3,
        6,
        base64.b64decode(three["root_hash"]),
        new_root,
        [base64.b64decode(h) for h in honest.data["hashes"]],
    )


async def test_an_export_is_refused_when_a_stored_row_differs_from_its_signed_envelope(
    caller: Caller, auditor: Auditor, superuser: asyncpg.Connection
) -> None:
    packets = [await auditor.collect(i) for i in range(3)]
    edited = dict(packets[1]["content"], environment={"id": "dev", "name": "dev", "targets": []})
    await superuser.execute("SET session_replication_role = replica")
    await superuser.execute(
        "UPDATE packets SET content = $1::json WHERE tenant_id = $2 AND sequence = 2",
        json.dumps(edited),
        caller.tenant_id,
    )
    await superuser.execute("SET session_replication_role = DEFAULT")
    reply = await caller.query(EXPORT_BUNDLE, ExportBundle)
    assert not reply.ok
    assert (reply.error.status, reply.error.code) == (409, "SYS_EVIDENCE_TAMPERED")
    assert "2 (content)" in reply.error.detail


async def test_a_packet_a_stolen_retired_key_signs_after_the_rotation_is_refused_offline(
    caller: Caller, auditor: Auditor, evidence_app: EvidenceApp, superuser: asyncpg.Connection
) -> None:
    first = await auditor.collect(0)
    key_file = evidence_app.signer.key_file
    assert isinstance(key_file, KeyFile)
    stolen = SigningKey.from_pem(key_file.path.read_bytes())  # the attacker's copy of the key
    async with evidence_app.runtime.pool.acquire() as conn:
        retired, new = await rotate_key(conn, key_file, datetime.now(UTC))
    assert retired == first["signer_key_ref"] == stolen.key_ref
    second = await auditor.collect(1)
    assert second["signer_key_ref"] == new.key_ref

    # The published keys carry full fingerprints and the signed key log; the new key's entry is handed over.
    reply = await caller.query(LIST_KEYS, ListKeys)
    published = {k["key_ref"]: k for k in reply.data["items"]}
    assert published[new.key_ref]["key_id"] == keylog.key_id(new.public_key)
    handover = published[new.key_ref]["log_entry"]
    assert {s["keyid"] for s in handover["signatures"]} == {new.key_ref, stolen.key_ref}

    # With the stolen key, the attacker appends a packet after the rotation, straight into the table.
    packet = build_packet(
        packet_id=uuid.uuid4(),
        tenant_id=caller.tenant_id,
        packet_type=PacketType.DEPLOYMENT,
        content=packet_content(7),
        head=ChainHead(sequence=second["sequence"], content_hash=second["content_hash"]),
        created_at=datetime.now(UTC) + timedelta(seconds=1),
        signer_key_ref=stolen.key_ref,
        promotion_id=None,
    )
    envelope = sign_packet(packet, stolen)
    await superuser.execute(
        """INSERT INTO packets (id, tenant_id, sequence, packet_type, previous_hash, content_hash, content, envelope,
                                signer_key_ref, created_at, source_key)
           VALUES ($1, $2, $3, 'deployment', $4, $5, $6::json, $7::json, $8, $9, 'forged')""",
        packet.id,
        packet.tenant_id,
        packet.sequence,
        packet.previous_hash,
        packet.content_hash,
        json.dumps(packet.content),
        json.dumps(envelope),
        packet.signer_key_ref,
        packet.created_at,
    )
    bundle = await auditor.export()
    code, out = await auditor.verify_offline(bundle)
    assert code == 1, out
    assert f"packet 3 (id {packet.id}): created at" in out and "[key_not_valid]" in out
    assert "packet 1 " not in out and "packet 2 " not in out  # the honest packets are fine


async def test_with_a_tsa_configured_every_checkpoint_is_timestamped_and_the_export_verifies_with_tsa_ca(
    evidence_settings: Settings, nats: Client, local_tsa: LocalTsa, tmp_path: Path
) -> None:
    settings = evidence_settings.model_copy(update={"tsa_url": local_tsa.url})
    app = create_app(settings)
    await app.start()
    try:
        async with service_client(nats, app.runtime.names) as client:
            auditor = Auditor(Caller(client, query_timeout=30), tmp_path)
            for index in range(3):
                await auditor.collect(index)
            asked = len(local_tsa.requests)
            bundle = await auditor.export()
            assert len(local_tsa.requests) > asked  # the export's checkpoint was sent to the TSA
            keys = await auditor.published_keys()
            code, out = await run_verifier(bundle, "--keys", str(keys), "--tsa-ca", str(local_tsa.ca))
            assert code == 0, out
            assert "timestamped" in out.splitlines()[-1] and "Stella Test TSA" in out
            code, out = await run_verifier(bundle, "--keys", str(keys), "--tsa-ca", str(local_tsa.other_ca))
            assert code == 1 and "[timestamp_invalid]" in out, out
            async with app.runtime.pool.acquire() as conn:
                stored = await conn.fetch("SELECT tree_size, tsa_url FROM checkpoint_timestamps")
            assert {row["tsa_url"] for row in stored} == {local_tsa.url} and len(stored) >= 1
    finally:
        await app.stop()
