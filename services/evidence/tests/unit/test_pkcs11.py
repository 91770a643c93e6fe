"""The signing key in a PKCS#11 token (a real SoftHSM token in a temporary directory) behind the Signer interface."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stella.evidence.hsm import Pkcs11KeySource, Pkcs11Signer
from stella.evidence.keys import KeyAlgorithm, PublicKeyRing, generate_key
from stella.evidence.settings import Settings
from stella.evidence.signing import ActiveSigner
from stella.evidence.verify import verify_bundle
from stella.kit.startup import ConfigurationError

from ..conftest import SoftHsmToken
from .conftest import make_chain


def _configure(monkeypatch: pytest.MonkeyPatch, token: SoftHsmToken, key_label: str) -> Settings:
    monkeypatch.setenv("STELLA_EVIDENCE_PKCS11_MODULE", str(token.module))
    monkeypatch.setenv("STELLA_EVIDENCE_PKCS11_TOKEN_LABEL", token.label)
    monkeypatch.setenv("STELLA_EVIDENCE_PKCS11_KEY_LABEL", key_label)
    monkeypatch.setenv("STELLA_EVIDENCE_PKCS11_PIN_FILE", str(token.pin_file))
    return Settings()


def test_packets_signed_in_the_token_verify_offline(
    softhsm_token: SoftHsmToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    ed = _configure(monkeypatch, softhsm_token, "ed").key_source().load()
    p256 = _configure(monkeypatch, softhsm_token, "p256").key_source().load()
    assert isinstance(ed, Pkcs11Signer) and isinstance(p256, Pkcs11Signer)
    assert ed.algorithm is KeyAlgorithm.ED25519 and p256.algorithm is KeyAlgorithm.ECDSA_P256
    assert ed.key_ref.startswith("ed25519:") and p256.key_ref.startswith("ecdsa-p256:")

    # Packets, checkpoint and key log signed by the token through the service's signing code.
    chain = make_chain(6, rotate_after=3, old_key=ed, new_key=p256)
    report = verify_bundle(chain.bundle(), trusted_keys=PublicKeyRing([ed.public_key, p256.public_key]))
    assert report.ok, report.findings
    assert report.packet_count == 6 and set(report.trusted_key_refs) == {ed.key_ref, p256.key_ref}

    # Only the token's keys verify them: a bundle trusted with other keys fails.
    stranger = PublicKeyRing([generate_key().public_key])
    assert not verify_bundle(chain.bundle(), trusted_keys=stranger).ok
    ed.close()
    p256.close()


async def test_the_service_signer_loads_the_token_key(
    softhsm_token: SoftHsmToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _configure(monkeypatch, softhsm_token, "ed").key_source()
    assert (
        isinstance(source, Pkcs11KeySource)
        and softhsm_token.pin not in repr(source)
        and softhsm_token.pin not in source.describe
    )
    signer = ActiveSigner(source, create=False)
    signer._key = source.load_or_create()  # what start() loads before it registers the key in the database
    assert signer.key.public_key.key_ref == signer.key.key_ref
    with pytest.raises(ConfigurationError, match="new label"):
        source.replace()
    assert isinstance(signer.key, Pkcs11Signer)
    signer.key.close()


def test_a_wrong_pin_or_a_missing_key_stops_the_start_with_one_line(
    softhsm_token: SoftHsmToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(monkeypatch, softhsm_token, "ed")
    monkeypatch.delenv("STELLA_EVIDENCE_PKCS11_PIN_FILE")
    monkeypatch.setenv("STELLA_EVIDENCE_PKCS11_PIN", "000000")
    with pytest.raises(ConfigurationError, match="refused the session") as caught:
        Settings().key_source().load()
    assert "000000" not in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="no usable"):
        _configure(monkeypatch, softhsm_token, "absent").key_source().load()
    monkeypatch.delenv("STELLA_EVIDENCE_PKCS11_KEY_LABEL")
    with pytest.raises(ConfigurationError, match="STELLA_EVIDENCE_PKCS11_KEY_LABEL"):
        Settings().key_source()


def test_init_key_names_the_token_key_and_writes_no_file(
    softhsm_token: SoftHsmToken, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "STELLA_EVIDENCE_PKCS11_MODULE": str(softhsm_token.module),
        "STELLA_EVIDENCE_PKCS11_TOKEN_LABEL": softhsm_token.label,
        "STELLA_EVIDENCE_PKCS11_KEY_LABEL": "ed",
        "STELLA_EVIDENCE_PKCS11_PIN_FILE": str(softhsm_token.pin_file),
        "STELLA_EVIDENCE_KEY_DIR": str(tmp_path / "keys"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "stella.evidence", "init-key"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    ed = _configure(monkeypatch, softhsm_token, "ed").key_source().load()
    assert f"evidence signing key {ed.key_ref} exists at pkcs11:token={softhsm_token.label};object=ed" in done.stdout
    assert isinstance(ed, Pkcs11Signer)
    ed.close()
    assert not (tmp_path / "keys").exists()
