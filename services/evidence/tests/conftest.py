"""Fixtures shared by the evidence unit and integration tests: a SoftHSM token holding signing keys."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SOFTHSM_MODULES = (Path("/usr/lib/softhsm/libsofthsm2.so"), Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"))

KEY_PAIRS = {"ed": "1.3.101.112", "p256": "secp256r1", "service": "1.3.101.112"}
"""The key pairs in the token, by label: their curve (Ed25519's OID, or P-256)."""


@dataclass(frozen=True)
class SoftHsmToken:
    """A SoftHSM token: its PKCS#11 library, label, user PIN and a file holding the PIN."""

    module: Path
    label: str
    pin: str
    pin_file: Path


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsmToken]:
    """A SoftHSM token in a temporary directory (``SOFTHSM2_CONF`` names a ``directories.tokendir`` there) with
    the key pairs of :data:`KEY_PAIRS`. One per test session: the library reads its configuration once per
    process."""
    pkcs11 = pytest.importorskip("pkcs11", reason="python-pkcs11 (stella-evidence[pkcs11]) is not installed")
    module = next((m for m in SOFTHSM_MODULES if m.exists()), None)
    if module is None or shutil.which("softhsm2-util") is None:
        pytest.skip("softhsm2 is not installed (`bash .ci/test-deps` installs it as root)")
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    directory = tmp_path_factory.mktemp("softhsm")
    (directory / "tokens").mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    token = SoftHsmToken(module, "stella-evidence", "246810", directory / "pin")
    token.pin_file.write_text(token.pin + "\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SOFTHSM2_CONF", str(conf))
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                token.label,
                "--so-pin",
                "13579",
                "--pin",
                token.pin,
            ],
            check=True,
            capture_output=True,
        )
        with pkcs11.lib(str(module)).get_token(token_label=token.label).open(user_pin=token.pin, rw=True) as session:
            for label, curve in KEY_PAIRS.items():
                key_type = KeyType.EC if curve == "secp256r1" else KeyType.EC_EDWARDS
                params = session.create_domain_parameters(
                    key_type, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True
                )
                params.generate_keypair(store=True, label=label)
        yield token
