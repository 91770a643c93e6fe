"""Whom the offline verifier trusts: key validity from the signed key log, pinned fingerprints, bundle keys.

The attacker here holds a copy of a rotated-out private key (or a key of their own) and everything else a
bundle is made of; they do not hold the current key.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from stella.contracts.canonical import content_hash
from stella.evidence import keylog, merkle
from stella.evidence.bundle import TreeProof, build_bundle
from stella.evidence.chain import FindingKind
from stella.evidence.checkpoint import Checkpoint, origin_for, sign_checkpoint
from stella.evidence.keys import PublicKeyRing, Signer, generate_key
from stella.evidence.packet import PacketType, SignedPacket, build_packet, sign_packet
from stella.evidence.verify import verify_bundle

from .conftest import Chain, leaf_of, make_content


def _append(chain: Chain, key: Signer, *, after: timedelta) -> list[SignedPacket]:
    """The chain's packets and one more, signed by ``key``, created ``after`` the last one."""
    last = chain.signed[-1].packet
    packet = build_packet(
        packet_id=uuid.uuid4(),
        tenant_id=chain.tenant_id,
        packet_type=PacketType.DEPLOYMENT,
        content=make_content(99),
        head=last.head,
        created_at=last.created_at + after,
        signer_key_ref=key.key_ref,
        promotion_id=None,
    )
    return [*chain.signed, SignedPacket(packet=packet, envelope=sign_packet(packet, key))]


def _bundle(chain: Chain, signed: list[SignedPacket], checkpoint_key: Signer, key_log: list[Any]) -> bytes:
    root = merkle.root_from_leaves([leaf_of(item) for item in signed])
    note = sign_checkpoint(
        Checkpoint(origin_for("stella.test/evidence", chain.tenant_id), len(signed), root),
        checkpoint_key,
        checkpoint_key.public_key,
    )
    tree = TreeProof(checkpoint=note, tree_size=len(signed), first_sequence=1, last_sequence=len(signed))
    return build_bundle(
        signed, chain.public_keys, tenant_id=chain.tenant_id, created_at=chain.created_at, tree=tree, key_log=key_log
    )


def test_a_packet_signed_by_a_retired_key_after_its_retirement_is_refused(chain: Chain) -> None:
    # The attacker appends a packet signed with the old key and re-signs the checkpoint with it too.
    forged = _append(chain, chain.old_key, after=timedelta(minutes=5))
    bundle = _bundle(chain, forged, chain.old_key, chain.key_log())
    report = verify_bundle(bundle, trusted_keys=PublicKeyRing(chain.public_keys), trusted_key_log=chain.key_log())
    kinds = {f.kind for f in report.findings if f.sequence == 7}
    assert kinds == {FindingKind.KEY_NOT_VALID}, report.format_text()
    line = next(str(f) for f in report.findings if f.sequence == 7)
    assert f"its key {chain.old_key.key_ref} was valid from" in line and "until" in line
    # The checkpoint too: the old key was retired before the newest packet it claims to cover.
    assert any(f.kind is FindingKind.KEY_NOT_VALID and f.sequence is None for f in report.findings)

    # Dropping the retiring entry from the bundle's key log does not help: the trusted log has it.
    stale = verify_bundle(
        _bundle(chain, forged, chain.old_key, chain.key_log()[:1]),
        trusted_keys=PublicKeyRing(chain.public_keys),
        trusted_key_log=chain.key_log(),
    )
    assert FindingKind.KEY_NOT_VALID in stale.kinds_for(7), stale.format_text()

    # The same packet signed by the current key is fine.
    honest = _append(chain, chain.new_key, after=timedelta(minutes=5))
    ok = verify_bundle(
        _bundle(chain, honest, chain.new_key, chain.key_log()),
        trusted_keys=PublicKeyRing(chain.public_keys),
        trusted_key_log=chain.key_log(),
    )
    assert ok.ok, ok.format_text()


def test_a_packet_signed_before_its_key_became_valid_is_refused(chain: Chain) -> None:
    early = dataclasses.replace(chain, signed=list(chain.signed))
    # Re-sign packet 3 (created before the rotation) with the new key: outside the new key's validity.
    packet = chain.signed[2].packet
    packet = dataclasses.replace(packet, signer_key_ref=chain.new_key.key_ref)
    early.signed[2] = SignedPacket(packet=packet, envelope=sign_packet(packet, chain.new_key))
    report = verify_bundle(
        _bundle(early, early.signed, chain.new_key, chain.key_log()),
        trusted_keys=PublicKeyRing(chain.public_keys),
        trusted_key_log=chain.key_log(),
    )
    assert FindingKind.KEY_NOT_VALID in report.kinds_for(3), report.format_text()


def test_a_key_without_a_trusted_log_entry_has_no_validity(chain: Chain) -> None:
    stranger = generate_key()
    unsigned = keylog.sign_entry(
        keylog.entry_payload(0, chain.old_key.public_key, chain.created_at - timedelta(days=9), None), [stranger]
    )
    report = verify_bundle(
        _bundle(chain, chain.signed, chain.new_key, [unsigned]), trusted_keys=PublicKeyRing(chain.public_keys)
    )
    assert all(FindingKind.KEY_VALIDITY_UNKNOWN in report.kinds_for(s) for s in range(1, 7)), report.format_text()


def test_a_bundle_resigned_with_an_attacker_key_fails_unless_its_keys_are_trusted(tmp_path: Path, chain: Chain) -> None:
    attacker = generate_key()
    resigned = [
        SignedPacket(packet=dataclasses.replace(s.packet, signer_key_ref=attacker.key_ref), envelope={})
        for s in chain.signed
    ]
    resigned = [SignedPacket(packet=s.packet, envelope=sign_packet(s.packet, attacker)) for s in resigned]
    log = [
        keylog.sign_entry(
            keylog.entry_payload(0, attacker.public_key, chain.created_at - timedelta(days=9), None), [attacker]
        )
    ]
    forged = dataclasses.replace(chain, old_key=attacker, new_key=attacker, signed=resigned, _tree=None, _key_log=log)
    bundle = tmp_path / "forged.tar.gz"
    bundle.write_bytes(_bundle(forged, resigned, attacker, log))
    keys = tmp_path / "published"
    keys.mkdir()
    for key in chain.public_keys:
        (keys / f"{key.key_ref.replace(':', '_')}.pem").write_bytes(key.to_pem())
    (keys / "key-log.json").write_text(json.dumps(chain.key_log()))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stella.evidence.verify", str(bundle), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    nothing = run()
    assert nothing.returncode == 2 and "no trusted keys" in nothing.stderr
    published = run("--keys", str(keys))
    assert published.returncode == 1
    assert "[unknown_key]" in published.stdout and "[checkpoint_invalid]" in published.stdout
    assert "[key_log_invalid]" in published.stdout  # the bundle's log is not the published one
    pinned = run("--trust-fingerprint", keylog.key_id(chain.old_key.public_key))
    assert pinned.returncode == 1, pinned.stdout
    trusting = run("--trust-bundle-keys")
    assert trusting.returncode == 0, trusting.stdout
    assert "warning: trusting the keys inside the bundle" in trusting.stderr
    assert "WARNING: trusting the 1 public key(s) shipped in the bundle" in trusting.stdout


def test_a_pinned_first_key_trusts_the_keys_it_handed_over_to(chain: Chain) -> None:
    pin = keylog.key_id(chain.old_key.public_key)
    report = verify_bundle(chain.bundle(), trusted_fingerprints=[pin])
    assert report.ok, report.format_text()
    assert report.key_source == "fingerprint"
    assert report.trusted_key_refs == sorted(k.key_ref for k in chain.public_keys)
    # A key log whose second entry the old key did not sign hands over to nobody.
    first, second = chain.key_log()
    orphan = dict(second, signatures=[s for s in second["signatures"] if s["keyid"] == chain.new_key.key_ref])
    report = verify_bundle(_bundle(chain, chain.signed, chain.new_key, [first, orphan]), trusted_fingerprints=[pin])
    assert {FindingKind.UNKNOWN_KEY} == report.kinds_for(4), report.format_text()


def test_a_decision_carrying_its_inputs_is_recomputed_and_a_changed_input_flagged(chain: Chain) -> None:
    inputs = {"gates": [{"type": "freeze-window", "name": "freeze"}], "freeze_windows": [], "votes": ["bob"]}
    evaluated_at = "2025-03-14T09:30:00Z"

    def decided(changed: dict[str, Any]) -> list[SignedPacket]:
        content = make_content(50)
        content["decision"] = {
            **content["decision"],
            "evaluated_at": evaluated_at,
            "inputs_hash": content_hash({"clock": evaluated_at, "inputs": inputs}),
            "inputs": changed,
        }
        last = chain.signed[-1].packet
        packet = build_packet(
            packet_id=uuid.uuid4(),
            tenant_id=chain.tenant_id,
            packet_type=PacketType.RELEASE_DECISION,
            content=content,
            head=last.head,
            created_at=last.created_at + timedelta(minutes=1),
            signer_key_ref=chain.new_key.key_ref,
            promotion_id=uuid.uuid4(),
        )
        return [*chain.signed, SignedPacket(packet=packet, envelope=sign_packet(packet, chain.new_key))]

    honest = verify_bundle(
        _bundle(chain, decided(inputs), chain.new_key, chain.key_log()), trusted_keys=PublicKeyRing(chain.public_keys)
    )
    assert honest.ok, honest.format_text()
    assert any("1 decision(s) carry their inputs" in note for note in honest.notes)
    # An input changed after the decision (a vote removed), even re-signed with the current key, shows.
    changed = verify_bundle(
        _bundle(chain, decided({**inputs, "votes": []}), chain.new_key, chain.key_log()),
        trusted_keys=PublicKeyRing(chain.public_keys),
    )
    assert changed.kinds_for(7) == {FindingKind.DECISION_INPUTS_MISMATCH}, changed.format_text()
