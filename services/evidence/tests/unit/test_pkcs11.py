"""The signing key in a PKCS#11 token (a real SoftHSM token in a temporary directory) behind the Signer interface."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stella.evidence.hsm import Pkcs11KeySource, Pkcs11Signer
from stella.evidence.keys import KeyAlgorithm, PublicKeyRing, generate_key
from stella.evidence.settings import Settings
from stella.evidence.signing import ActiveSigner
from stella.evidence.verify import verify_bundle
from stella.kit.startup import ConfigurationError

from .conftest import make_chain

pkcs11 = pytest.importorskip("pkcs11", reason="python-pkcs11 (stella-evidence[pkcs11]) is not installed")

SOFTHSM_MODULES = (Path("/usr/lib/softhsm/libsofthsm2.so"), Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"))
TOKEN = "stella-evidence"
PIN = "246810"


@dataclass(frozen=True)
class Token:
    module: Path
    pin_file: Path


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    """A SoftHSM token in a temporary directory with an Ed25519 key pair ("ed") and an ECDSA P-256 key pair
    ("p256"). One per module: the library reads its configuration once per process."""
    module = next((m for m in SOFTHSM_MODULES if m.exists()), None)
    if module is None or shutil.which("softhsm2-util") is None:
        pytest.skip("softhsm2 is not installed (`bash .ci/test-deps` installs it as root)")
    tmp_path = tmp_path_factory.mktemp("softhsm")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SOFTHSM2_CONF", str(conf))
        yield from _token(module, tmp_path)


def _token(module: Path, tmp_path: Path) -> Iterator[Token]:
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--so-pin", "13579", "--pin", PIN],
        check=True,
        capture_output=True,
    )
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    lib = pkcs11.lib(str(module))
    with lib.get_token(token_label=TOKEN).open(user_pin=PIN, rw=True) as session:
        for label, curve, key_type in (("ed", "1.3.101.112", KeyType.EC_EDWARDS), ("p256", "secp256r1", KeyType.EC)):
            params = session.create_domain_parameters(
                key_type, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True
            )
            params.generate_keypair(store=True, label=label)
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    yield Token(module, pin_file)


def _configure(monkeypatch: pytest.MonkeyPatch, token: Token, key_label: str) -> Settings:
    monkeypatch.setenv("STELLA_EVIDENCE_PKCS11_MODULE", str(token.module))
    monkeypatch.setenv("STELLA_EVIDENCE_PKCS11_TOKEN_LABEL", TOKEN)
    monkeypatch.setenv("STELLA_EVIDENCE_PKCS11_KEY_LABEL", key_label)
    monkeypatch.setenv("STELLA_EVIDENCE_PKCS11_PIN_FILE", str(token.pin_file))
    return Settings()


def test_packets_signed_in_the_token_verify_offline(token: Token, monkeypatch: pytest.MonkeyPatch) -> None:
    ed = _configure(monkeypatch, token, "ed").key_source().load()
    p256 = _configure(monkeypatch, token, "p256").key_source().load()
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


async def test_the_service_signer_loads_the_token_key(token: Token, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _configure(monkeypatch, token, "ed").key_source()
    assert isinstance(source, Pkcs11KeySource) and PIN not in repr(source) and PIN not in source.describe
    signer = ActiveSigner(source, create=False)
    signer._key = source.load_or_create()  # what start() loads before it registers the key in the database
    assert signer.key.public_key.key_ref == signer.key.key_ref
    with pytest.raises(ConfigurationError, match="new label"):
        source.replace()
    assert isinstance(signer.key, Pkcs11Signer)
    signer.key.close()


def test_a_wrong_pin_or_a_missing_key_stops_the_start_with_one_line(
    token: Token, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _configure(monkeypatch, token, "ed")
    token.pin_file.write_text("000000\n")
    with pytest.raises(ConfigurationError, match="refused the session") as caught:
        settings.key_source().load()
    assert "000000" not in str(caught.value) and "\n" not in str(caught.value)
    token.pin_file.write_text(PIN)
    with pytest.raises(ConfigurationError, match="no usable"):
        _configure(monkeypatch, token, "absent").key_source().load()
    monkeypatch.delenv("STELLA_EVIDENCE_PKCS11_KEY_LABEL")
    with pytest.raises(ConfigurationError, match="STELLA_EVIDENCE_PKCS11_KEY_LABEL"):
        Settings().key_source()
