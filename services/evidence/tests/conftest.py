"""Fixtures shared by the evidence unit and integration tests: a SoftHSM token holding signing keys, and a
local RFC 3161 time-stamping authority."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


@dataclass(frozen=True)
class LocalTsa:
    """A time-stamping authority on 127.0.0.1: ``openssl ts -reply`` behind a tiny HTTP server.

    Attributes:
        url: Where to POST ``application/timestamp-query`` requests.
        ca: PEM of the root certificate the TSA's certificate chains to (what ``--tsa-ca`` trusts).
        other_ca: PEM of an unrelated root (a TSA nobody trusts).
        requests: How many requests it answered.
    """

    url: str
    ca: Path
    other_ca: Path
    requests: list[bytes]


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60)


def _root(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="session")
def local_tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTsa]:
    """A TSA whose certificate, issued by a test root, has the critical extended key usage timeStamping."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    directory = tmp_path_factory.mktemp("tsa")
    _root(directory, "tsa-root")
    _root(directory, "other-root")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "tsa.key",
        "-out", "tsa.csr", "-subj", "/CN=Stella Test TSA", cwd=directory,
    )  # fmt: skip
    (directory / "tsa.ext").write_text(
        "extendedKeyUsage=critical,timeStamping\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    )
    _openssl(
        "x509", "-req", "-in", "tsa.csr", "-CA", "tsa-root.pem", "-CAkey", "tsa-root.key", "-CAcreateserial",
        "-out", "tsa.pem", "-days", "2", "-extfile", "tsa.ext", cwd=directory,
    )  # fmt: skip
    (directory / "serial").write_text("01\n")
    (directory / "ts.cnf").write_text(
        "[ tsa ]\ndefault_tsa = tsa_config\n[ tsa_config ]\n"
        f"serial = {directory / 'serial'}\nsigner_digest = sha256\ndefault_policy = 1.2.3.4.1\n"
        "digests = sha256\naccuracy = secs:1\ness_cert_id_alg = sha256\ntsa_name = yes\n"
    )
    requests: list[bytes] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            query = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock, tempfile.TemporaryDirectory() as work:
                (Path(work) / "q.tsq").write_bytes(query)
                made = subprocess.run(
                    [
                        "openssl", "ts", "-reply", "-config", str(directory / "ts.cnf"), "-queryfile", "q.tsq",
                        "-inkey", str(directory / "tsa.key"), "-signer", str(directory / "tsa.pem"), "-out", "r.tsr",
                    ],
                    cwd=work, capture_output=True, timeout=60, check=False,
                )  # fmt: skip
                reply = (Path(work) / "r.tsr").read_bytes() if made.returncode == 0 else b""
                requests.append(query)
            self.send_response(200 if reply else 400)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="local-tsa", daemon=True)
    thread.start()
    try:
        yield LocalTsa(
            url=f"http://127.0.0.1:{server.server_address[1]}/tsa",
            ca=directory / "tsa-root.pem",
            other_ca=directory / "other-root.pem",
            requests=requests,
        )
    finally:
        server.shutdown()
        server.server_close()
