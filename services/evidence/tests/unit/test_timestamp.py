"""Trusted time: RFC 3161 timestamps of checkpoints, asked of a local TSA (``openssl ts -reply`` behind HTTP)
and checked by the offline verifier with ``--tsa-ca`` (``openssl ts -verify``)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import urllib.request
from pathlib import Path

import pytest

from stella.evidence.bundle import TIMESTAMP_PATH, build_bundle, read_bundle
from stella.evidence.chain import FindingKind
from stella.evidence.keys import PublicKeyRing
from stella.evidence.timestamp import (
    QUERY_MEDIA_TYPE,
    TimestampError,
    check_token,
    timestamp_request,
    token_from_reply,
    verify_token,
)
from stella.evidence.verify import VerificationReport, main, verify_bundle

from ..conftest import LocalTsa
from .conftest import Chain


def _token(tsa: LocalTsa, data: bytes) -> bytes:
    request = urllib.request.Request(  # noqa: S310 - the test's own TSA on 127.0.0.1
        tsa.url, data=timestamp_request(data, 42), headers={"Content-Type": QUERY_MEDIA_TYPE}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - the test's own TSA
        return token_from_reply(response.read())


def _bundle(chain: Chain, timestamp: bytes | None) -> bytes:
    return build_bundle(
        chain.signed,
        chain.public_keys,
        tenant_id=chain.tenant_id,
        created_at=chain.created_at,
        tree=dataclasses.replace(chain.tree(), timestamp=timestamp),
        key_log=chain.key_log(),
    )


def _verify(chain: Chain, bundle: bytes, tsa_ca: Path | None) -> VerificationReport:
    return verify_bundle(
        bundle,
        trusted_keys=PublicKeyRing(chain.public_keys),
        trusted_key_log=chain.key_log(),
        tsa_ca=None if tsa_ca is None else str(tsa_ca),
    )


def test_a_token_from_the_tsa_verifies_for_its_data_only(local_tsa: LocalTsa) -> None:
    token = _token(local_tsa, b"the checkpoint\n")
    verified = verify_token(token, b"the checkpoint\n", str(local_tsa.ca))
    assert "Stella Test TSA" in verified.tsa and verified.time.endswith("GMT")
    with pytest.raises(TimestampError, match="message imprint mismatch"):
        verify_token(token, b"another checkpoint\n", str(local_tsa.ca))
    with pytest.raises(TimestampError, match="refuses"):
        verify_token(token, b"the checkpoint\n", str(local_tsa.other_ca))
    # What the service checks before it keeps a token: over the data it sent, answering its own request.
    info = check_token(token, b"the checkpoint\n", 42)
    assert info.imprint == hashlib.sha256(b"the checkpoint\n").digest() and info.nonce == 42
    assert re.fullmatch(r"\d{14}(\.\d+)?Z", info.gen_time)
    with pytest.raises(TimestampError, match="other data"):
        check_token(token, b"another checkpoint\n", 42)
    with pytest.raises(TimestampError, match="nonce"):
        check_token(token, b"the checkpoint\n", 43)


def test_a_refused_or_malformed_reply_gives_no_token() -> None:
    with pytest.raises(TimestampError, match="PKIStatus 2"):
        token_from_reply(bytes.fromhex("30053003020102"))
    with pytest.raises(TimestampError, match="no token"):
        token_from_reply(bytes.fromhex("30053003020100"))
    with pytest.raises(TimestampError):
        token_from_reply(b"<html>bad gateway</html>")
    with pytest.raises(TimestampError, match="not a TimeStampToken"):
        check_token(bytes.fromhex("3003020100"), b"data", 1)


def test_the_verifier_checks_the_checkpoint_timestamp_against_the_trusted_tsa(
    chain: Chain, local_tsa: LocalTsa, tmp_path: Path
) -> None:
    note = chain.tree().checkpoint.encode()
    bundle = _bundle(chain, _token(local_tsa, note))
    assert TIMESTAMP_PATH in read_bundle(bundle).files

    report = _verify(chain, bundle, local_tsa.ca)
    assert report.ok, report.format_text()
    assert report.timestamp is not None and "Stella Test TSA" in report.timestamp
    assert ", timestamped " in report.format_text().splitlines()[-1]

    # Without --tsa-ca the token is not judged, and the report says so.
    unchecked = _verify(chain, bundle, None)
    assert unchecked.ok and unchecked.timestamp is None
    assert any("pass --tsa-ca to check it" in note for note in unchecked.notes)

    # A TSA nobody trusts, a token over other data, or no token at all fail when trusted time is asked for.
    untrusted = _verify(chain, bundle, local_tsa.other_ca)
    assert [f.kind for f in untrusted.findings] == [FindingKind.TIMESTAMP_INVALID], untrusted.format_text()
    other_data = _verify(chain, _bundle(chain, _token(local_tsa, b"a checkpoint of another log\n")), local_tsa.ca)
    assert [f.kind for f in other_data.findings] == [FindingKind.TIMESTAMP_INVALID]
    assert "message imprint mismatch" in other_data.findings[0].message
    missing = _verify(chain, _bundle(chain, None), local_tsa.ca)
    assert [f.message for f in missing.findings] == [
        "--tsa-ca asks for trusted time, but the bundle carries no timestamp of its checkpoint"
    ]

    path = tmp_path / "evidence.tar.gz"
    path.write_bytes(bundle)
    out = io.StringIO()
    assert (
        main([str(path), "--trust-bundle-keys", "--tsa-ca", str(local_tsa.ca)], stdout=out, stderr=io.StringIO()) == 0
    )
    assert (
        main(
            [str(path), "--trust-bundle-keys", "--tsa-ca", str(local_tsa.other_ca)],
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )
        == 1
    )
    err = io.StringIO()
    assert (
        main(
            [str(path), "--trust-bundle-keys", "--tsa-ca", str(tmp_path / "absent.pem")],
            stdout=io.StringIO(),
            stderr=err,
        )
        == 2
    )
    assert "is not a file of PEM certificates" in err.getvalue()
