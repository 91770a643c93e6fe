"""Signing keys, key references, PEM files and the public key ring."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from stella.evidence.keys import (
    BadSignatureError,
    KeyAlgorithm,
    KeyFormatError,
    PublicKey,
    PublicKeyRing,
    SigningKey,
    UnknownKeyError,
    compute_key_ref,
    generate_key,
    is_key_ref,
    load_private_key,
    load_public_key,
    save_private_key,
)


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_key_ref_is_algorithm_and_16_hex_of_the_spki_sha256(algorithm: KeyAlgorithm) -> None:
    key = generate_key(algorithm)
    der = key.public_key.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.key_ref == f"{algorithm.value}:{hashlib.sha256(der).hexdigest()[:16]}"
    assert is_key_ref(key.key_ref)
    assert key.algorithm is algorithm
    # Stable: the same public key, loaded back from PEM, has the same reference.
    assert PublicKey.from_pem(key.public_key.to_pem()).key_ref == key.key_ref


def test_default_algorithm_is_ed25519() -> None:
    assert generate_key().algorithm is KeyAlgorithm.ED25519


def test_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="rsa"):
        generate_key("rsa")


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_signatures_verify_and_detect_a_changed_message(algorithm: KeyAlgorithm) -> None:
    key = generate_key(algorithm)
    signature = key.sign(b"evidence")
    key.public_key.verify(signature, b"evidence")
    with pytest.raises(BadSignatureError) as caught:
        key.public_key.verify(signature, b"evidencE")
    assert caught.value.key_ref == key.key_ref


def test_signature_formats_are_the_standard_ones() -> None:
    ed = generate_key(KeyAlgorithm.ED25519)
    assert len(ed.sign(b"x")) == 64  # raw RFC 8032 signature
    p256 = generate_key(KeyAlgorithm.ECDSA_P256)
    der = p256.sign(b"x")
    assert der[0] == 0x30  # DER SEQUENCE of (r, s)
    # cryptography's own ECDSA-SHA256 verification accepts it: it is exactly what openssl dgst -sha256 checks.
    assert isinstance(p256.public_key.key, ec.EllipticCurvePublicKey)
    p256.public_key.key.verify(der, b"x", ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_private_key_file_is_0600_and_round_trips(tmp_path: Path, algorithm: KeyAlgorithm) -> None:
    key = generate_key(algorithm)
    path = tmp_path / "signing.pem"
    save_private_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_private_key(path)
    assert loaded.key_ref == key.key_ref
    loaded.public_key.verify(loaded.sign(b"m"), b"m")
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


def test_saving_refuses_to_overwrite_a_key_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    first, second = generate_key(), generate_key()
    save_private_key(first, path)
    with pytest.raises(FileExistsError):
        save_private_key(second, path)
    assert load_private_key(path).key_ref == first.key_ref
    path.chmod(0o644)
    save_private_key(second, path, overwrite=True)
    assert load_private_key(path).key_ref == second.key_ref
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_password_protected_key(tmp_path: Path) -> None:
    key = generate_key(KeyAlgorithm.ECDSA_P256)
    path = tmp_path / "signing.pem"
    save_private_key(key, path, password=b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert load_private_key(path, password=b"correct horse").key_ref == key.key_ref
    with pytest.raises(KeyFormatError):
        load_private_key(path, password=b"wrong")
    with pytest.raises(KeyFormatError):
        load_private_key(path)


def test_unsupported_keys_are_refused() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFormatError, match="not supported"):
        SigningKey.from_pem(rsa_pem)
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(KeyFormatError, match="P-256"):
        SigningKey.from_key(p384)
    with pytest.raises(KeyFormatError, match="P-256"):
        compute_key_ref(p384.public_key())
    with pytest.raises(KeyFormatError):
        PublicKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


def test_repr_never_shows_private_material() -> None:
    key = generate_key()
    text = repr(key)
    assert key.key_ref in text
    assert "PRIVATE" not in text and "key=" not in text


def test_ring_verifies_with_current_and_rotated_keys(tmp_path: Path) -> None:
    rotated, current = generate_key(KeyAlgorithm.ED25519), generate_key(KeyAlgorithm.ECDSA_P256)
    for key in (rotated, current):
        (tmp_path / f"{key.key_ref}.pem").write_bytes(key.public_key.to_pem())
    (tmp_path / "README.txt").write_text("not a key")
    ring = PublicKeyRing.from_directory(tmp_path)
    assert ring.key_refs == sorted([rotated.key_ref, current.key_ref])
    assert len(ring) == 2 and rotated.key_ref in ring
    ring.verify(rotated.key_ref, rotated.sign(b"old"), b"old")
    ring.verify(current.key_ref, current.sign(b"new"), b"new")
    with pytest.raises(BadSignatureError):
        ring.verify(current.key_ref, rotated.sign(b"new"), b"new")
    stranger = generate_key()
    with pytest.raises(UnknownKeyError) as caught:
        ring.verify(stranger.key_ref, stranger.sign(b"x"), b"x")
    assert caught.value.key_ref == stranger.key_ref


def test_ring_adding_the_same_key_twice_is_a_no_op() -> None:
    key = generate_key()
    ring = PublicKeyRing([key.public_key, PublicKey.from_pem(key.public_key.to_pem())])
    assert len(ring) == 1
    assert list(ring) == [key.public_key]


def test_ring_directory_with_a_broken_pem_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.pem").write_text("garbage")
    with pytest.raises(KeyFormatError, match=r"broken\.pem"):
        PublicKeyRing.from_directory(tmp_path)


def test_load_public_key(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "k.pem"
    path.write_bytes(key.public_key.to_pem())
    assert load_public_key(path) == key.public_key
