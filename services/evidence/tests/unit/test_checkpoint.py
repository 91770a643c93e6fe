"""Signed checkpoints: the C2SP signed-note format, checked by hand from the specification."""

from __future__ import annotations

import base64
import hashlib
import uuid

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stella.evidence.checkpoint import (
    Checkpoint,
    CheckpointError,
    origin_for,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
)
from stella.evidence.keys import KeyAlgorithm, generate_key

ROOT = hashlib.sha256(b"root").digest()


def test_an_ed25519_checkpoint_is_a_signed_note_any_implementation_reads() -> None:
    key = generate_key(KeyAlgorithm.ED25519)
    tenant = uuid.uuid4()
    note = sign_checkpoint(Checkpoint(origin_for("stella.test/evidence", tenant), 42, ROOT), key, key.public_key)

    # By hand, from c2sp.org/signed-note and c2sp.org/tlog-checkpoint.
    text, blank, signatures = note.partition("\n\n")
    assert blank == "\n\n"
    assert text.split("\n") == [f"stella.test/evidence/{tenant}", "42", base64.b64encode(ROOT).decode()]
    (line,) = signatures.rstrip("\n").split("\n")
    dash, name, blob = line.split(" ")
    assert (dash, name) == ("\u2014", "stella.test/evidence")
    raw = base64.b64decode(blob)
    public = key.public_key.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw[:4] == hashlib.sha256(b"stella.test/evidence\n\x01" + public).digest()[:4]
    key.public_key.key.verify(raw[4:], (text + "\n").encode())  # type: ignore[call-arg]

    verified = verify_checkpoint(note, [key.public_key])
    assert verified.checkpoint.size == 42 and verified.checkpoint.root == ROOT
    assert verified.key_ref == key.key_ref


def test_an_ecdsa_checkpoint_uses_signature_type_2() -> None:
    key = generate_key(KeyAlgorithm.ECDSA_P256)
    note = sign_checkpoint(Checkpoint("stella.test/evidence/t", 1, ROOT), key, key.public_key)
    text = note.partition("\n\n")[0] + "\n"
    raw = base64.b64decode(note.rstrip("\n").rsplit(" ", 1)[1])
    der = key.public_key.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert raw[:4] == hashlib.sha256(der).digest()[:4]
    assert isinstance(key.public_key.key, ec.EllipticCurvePublicKey)
    key.public_key.key.verify(raw[4:], text.encode(), ec.ECDSA(hashes.SHA256()))
    assert verify_checkpoint(note, [key.public_key]).checkpoint.size == 1


def test_a_checkpoint_is_refused_when_edited_or_signed_by_another_key() -> None:
    key, other = generate_key(), generate_key()
    note = sign_checkpoint(Checkpoint("stella.test/evidence/t", 7, ROOT), key, key.public_key)
    with pytest.raises(CheckpointError, match="no trusted key"):
        verify_checkpoint(note, [other.public_key])
    grown = note.replace("\n7\n", "\n8\n", 1)
    with pytest.raises(CheckpointError, match="does not verify"):
        verify_checkpoint(grown, [key.public_key])
    for broken in ("", "origin\n7\n", note.replace("\u2014", "-"), note.replace("\n7\n", "\nseven\n")):
        with pytest.raises(CheckpointError):
            parse_checkpoint(broken)
