"""Edges of the offline verifier an auditor tried: an empty bundle, extra signatures, key ids and file names.

(Partial exports, the manifest's ``created_at`` and ``key_refs``, and the documented ``content_hash`` checker
are tested in ``test_verify.py`` and ``test_bundle.py``.)
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from stella.evidence import keylog
from stella.evidence.bundle import TreeProof, build_bundle, read_bundle
from stella.evidence.chain import FindingKind
from stella.evidence.checkpoint import Checkpoint, origin_for, sign_checkpoint
from stella.evidence.dsse import sign_envelope
from stella.evidence.keys import PublicKey, PublicKeyRing, generate_key
from stella.evidence.statement import PAYLOAD_TYPE
from stella.evidence.verify import main, verify_bundle

from .conftest import Chain


def _empty_bundle(chain: Chain) -> bytes:
    """What the service exports for a tenant, or a range, with no packet: a checkpoint of an empty tree."""
    note = sign_checkpoint(
        Checkpoint(origin_for("stella.test/evidence", chain.tenant_id), 0, hashlib.sha256(b"").digest()),
        chain.new_key,
        chain.new_key.public_key,
    )
    tree = TreeProof(checkpoint=note, tree_size=0, first_sequence=None, last_sequence=None)
    return build_bundle(
        [],
        chain.public_keys,
        tenant_id=chain.tenant_id,
        created_at=chain.created_at,
        tree=tree,
        key_log=chain.key_log(),
    )


def test_an_empty_bundle_fails_unless_empty_is_accepted(tmp_path: Path, chain: Chain) -> None:
    bundle = _empty_bundle(chain)
    report = verify_bundle(bundle, trusted_keys=PublicKeyRing(chain.public_keys), trusted_key_log=chain.key_log())
    assert [f.kind for f in report.findings] == [FindingKind.EMPTY_BUNDLE], report.format_text()
    assert report.exit_code == 1
    assert not report.format_text().splitlines()[-1].startswith("OK")

    accepted = verify_bundle(
        bundle, trusted_keys=PublicKeyRing(chain.public_keys), trusted_key_log=chain.key_log(), allow_empty=True
    )
    assert accepted.ok, accepted.format_text()
    assert accepted.format_text().splitlines()[-1].startswith("OK (empty, accepted with --allow-empty): no packets")

    path = tmp_path / "empty.tar.gz"
    path.write_bytes(bundle)
    out = io.StringIO()
    assert main([str(path), "--trust-bundle-keys"], stdout=out, stderr=io.StringIO()) == 1
    assert "the bundle holds no packets, so there is no evidence to verify" in out.getvalue()
    assert main([str(path), "--trust-bundle-keys", "--allow-empty"], stdout=io.StringIO(), stderr=io.StringIO()) == 0


def test_an_extra_signature_by_an_unknown_key_is_not_called_verified(chain: Chain) -> None:
    stranger = generate_key()
    signed = list(chain.signed)
    envelope = dict(signed[1].envelope)
    extra = sign_envelope(base64.b64decode(envelope["payload"]), PAYLOAD_TYPE, stranger)["signatures"][0]
    envelope["signatures"] = [*envelope["signatures"], extra]
    signed[1] = type(signed[1])(packet=signed[1].packet, envelope=envelope)
    bundle = build_bundle(
        signed,
        chain.public_keys,
        tenant_id=chain.tenant_id,
        created_at=chain.created_at,
        tree=chain.tree(),
        key_log=chain.key_log(),
    )
    report = verify_bundle(bundle, trusted_keys=PublicKeyRing(chain.public_keys), trusted_key_log=chain.key_log())
    assert report.ok, report.format_text()  # the trusted signature on it holds
    summary = report.format_text().splitlines()[-1]
    assert "every signature" not in summary
    assert summary.endswith("; 1 further signature(s) by untrusted keys were not checked")
    assert report.to_dict()["unchecked_signatures"] == 1
    assert any(f"({stranger.key_ref}); those were not checked" in note for note in report.notes)


def test_keys_are_identified_by_their_full_sha256_and_a_short_reference_cannot_be_confused(chain: Chain) -> None:
    key = chain.new_key.public_key
    der = base64.b64decode("".join(key.to_pem().decode().splitlines()[1:-1]))
    full = "sha256:" + hashlib.sha256(der).hexdigest()
    # The key log, the API's key list and --trust-fingerprint use the full id; key_ref is its short form.
    assert keylog.key_id(key) == full
    assert key.key_ref == f"{key.algorithm.value}:{full[7:23]}"
    assert {json.loads(base64.b64decode(e["payload"]))["key_id"] for e in chain.key_log()} == {
        keylog.key_id(k) for k in chain.public_keys
    }
    # Two different keys under one short reference are refused rather than confused.
    impostor = PublicKey(key=generate_key().public_key.key, algorithm=key.algorithm, key_ref=key.key_ref)
    ring = PublicKeyRing([key])
    with pytest.raises(ValueError, match="share the reference"):
        ring.add(impostor)
    # A short fingerprint cannot be pinned.
    err = io.StringIO()
    assert main(["x.tar.gz", "--trust-fingerprint", full[:23]], stdout=io.StringIO(), stderr=err) == 2
    assert "is not sha256:<64 lowercase hex>" in err.getvalue()


def test_no_member_name_holds_a_character_windows_cannot_extract(chain: Chain) -> None:
    with tarfile.open(fileobj=io.BytesIO(chain.bundle()), mode="r:gz") as archive:
        names = archive.getnames()
    assert any(name.startswith("keys/") for name in names)
    assert [name for name in names if re.search(r'[:<>"|?*\\]', name)] == []
    assert set(read_bundle(chain.bundle()).files) <= set(names)
