"""Trusted time for checkpoints: RFC 3161 timestamp requests, replies and their verification.

A time-stamping authority (TSA) signs ``(SHA-256 of the data, its own clock)``; a token proves the data existed
at that time, independently of the evidence service's clock and keys. The service asks the TSA configured in
``STELLA_EVIDENCE_TSA_URL`` for a token over each checkpoint's signed note (the bytes of ``checkpoint.txt``),
keeps it beside the checkpoint and puts it in the bundle as ``checkpoint.tsr`` (a DER ``TimeStampToken``, the
form ``openssl ts -verify -token_in`` reads).

Building a request and reading a reply need a few DER structures only, written here by hand; verifying a
token (the CMS signature, the TSA certificate's chain and its critical ``timeStamping`` extended key usage,
the message imprint) is left to OpenSSL (``openssl ts -verify``), the tool an auditor uses too. This module
uses the standard library only, so the offline verifier can import it.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Final

QUERY_MEDIA_TYPE: Final = "application/timestamp-query"
"""Content type of a request (RFC 3161 §3.4)."""
REPLY_MEDIA_TYPE: Final = "application/timestamp-reply"
"""Content type of a reply."""

_SHA256: Final = bytes.fromhex("300d06096086480165030402010500")
"""DER AlgorithmIdentifier of SHA-256 (OID 2.16.840.1.101.3.4.2.1, NULL parameters)."""
_GRANTED: Final = (0, 1)
"""PKIStatus values that carry a token: granted, grantedWithMods."""


class TimestampError(Exception):
    """A timestamp reply carries no usable token, or a token does not verify."""


def _der(tag: int, body: bytes) -> bytes:
    length = len(body)
    if length < 0x80:
        return bytes([tag, length]) + body
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(encoded)]) + encoded + body


def _integer(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def timestamp_request(data: bytes, nonce: int) -> bytes:
    """The DER ``TimeStampReq`` for ``data``: version 1, its SHA-256 imprint, ``nonce``, and the TSA's
    certificate asked for (``certReq``), so the token names who signed it."""
    imprint = _der(0x30, _SHA256 + _der(0x04, hashlib.sha256(data).digest()))
    return _der(0x30, _integer(1) + imprint + _integer(nonce) + _der(0x01, b"\xff"))


def _element(buffer: bytes, position: int) -> tuple[int, int, int]:
    """Read one DER element at ``position``: its tag, where its value starts, where it ends."""
    if position + 2 > len(buffer):
        raise TimestampError("truncated DER")
    tag, first = buffer[position], buffer[position + 1]
    start = position + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > len(buffer):
            raise TimestampError("unsupported DER length")
        length = int.from_bytes(buffer[start : start + count], "big")
        start += count
    end = start + length
    if end > len(buffer):
        raise TimestampError("truncated DER")
    return tag, start, end


def token_from_reply(reply: bytes) -> bytes:
    """The ``TimeStampToken`` (DER ``ContentInfo``) of a ``TimeStampResp``.

    Raises:
        TimestampError: The reply is not DER, or its status is not granted.
    """
    tag, start, end = _element(reply, 0)
    if tag != 0x30 or end != len(reply):
        raise TimestampError("the reply is not a DER TimeStampResp")
    status_tag, status_start, status_end = _element(reply, start)
    integer_tag, value_start, value_end = _element(reply, status_start)
    if status_tag != 0x30 or integer_tag != 0x02:
        raise TimestampError("the reply has no PKIStatusInfo")
    status = int.from_bytes(reply[value_start:value_end], "big", signed=True)
    if status not in _GRANTED:
        raise TimestampError(f"the TSA refused the request (PKIStatus {status})")
    if status_end >= end:
        raise TimestampError("the reply is granted but carries no token")
    token_tag, _, token_end = _element(reply, status_end)
    if token_tag != 0x30:
        raise TimestampError("the reply's token is not a DER ContentInfo")
    return reply[status_end:token_end]


@dataclass(frozen=True)
class TokenInfo:
    """What a token says (its ``TSTInfo``), read without checking its signature.

    Attributes:
        imprint: The SHA-256 the TSA signed (of the checkpoint note).
        gen_time: The TSA's time, as the GeneralizedTime text it holds (``YYYYMMDDhhmmss[.f]Z``).
        nonce: The request's nonce, when the TSA echoed it.
    """

    imprint: bytes
    gen_time: str
    nonce: int | None


def _children(buffer: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    children = []
    position = start
    while position < end:
        tag, value_start, value_end = _element(buffer, position)
        children.append((tag, value_start, value_end))
        position = value_end
    return children


def token_info(token: bytes) -> TokenInfo:
    """Read the ``TSTInfo`` of a token: ContentInfo -> SignedData -> encapContentInfo -> eContent.

    Raises:
        TimestampError: The token does not have that shape.
    """
    try:
        _, start, end = _element(token, 0)
        content_type, signed_wrapper = _children(token, start, end)[:2]
        _, data_start, data_end = _element(token, signed_wrapper[1])  # [0] EXPLICIT SignedData
        encapsulated = next(c for c in _children(token, data_start, data_end) if c[0] == 0x30)
        _, wrapper_start, _ = _children(token, encapsulated[1], encapsulated[2])[1]  # [0] EXPLICIT eContent
        _, info_start, _ = _element(token, wrapper_start)  # OCTET STRING holding the TSTInfo
        _, fields_start, fields_end = _element(token, info_start)
        fields = _children(token, fields_start, fields_end)
        imprint_fields = _children(token, fields[2][1], fields[2][2])
        imprint = token[imprint_fields[1][1] : imprint_fields[1][2]]
        gen_time = token[fields[4][1] : fields[4][2]].decode("ascii")
        nonce = next((int.from_bytes(token[c[1] : c[2]], "big", signed=True) for c in fields[5:] if c[0] == 0x02), None)
    except (IndexError, StopIteration, ValueError, UnicodeDecodeError) as exc:
        raise TimestampError(f"the token is not a TimeStampToken: {exc!r}") from exc
    if content_type[0] != 0x06 or len(imprint) != hashlib.sha256().digest_size:
        raise TimestampError("the token is not a SHA-256 TimeStampToken")
    return TokenInfo(imprint=imprint, gen_time=gen_time, nonce=nonce)


def check_token(token: bytes, data: bytes, nonce: int) -> TokenInfo:
    """Check that a fresh token is over ``data`` and answers the request with ``nonce`` (not its signature,
    which the verifier checks against the TSA roots an auditor trusts).

    Raises:
        TimestampError: The token is over other data, or answers another request.
    """
    info = token_info(token)
    if info.imprint != hashlib.sha256(data).digest():
        raise TimestampError("the TSA timestamped other data than the checkpoint sent")
    if info.nonce != nonce:
        raise TimestampError("the TSA's token answers another request (nonce)")
    return info


@dataclass(frozen=True)
class VerifiedTimestamp:
    """A token that verified: the time the TSA vouches for, and the TSA that signed it."""

    time: str
    tsa: str


def verify_token(token: bytes, data: bytes, ca_file: str, *, openssl: str = "openssl") -> VerifiedTimestamp:
    """Check with ``openssl ts -verify`` that ``token`` is a TSA's signature over ``data``'s SHA-256, by a
    certificate that chains to ``ca_file`` and may time-stamp (critical extended key usage timeStamping).

    Raises:
        TimestampError: The token does not verify, or OpenSSL cannot be run.
    """
    with tempfile.TemporaryDirectory(prefix="stella-tsr-") as directory:
        token_path = os.path.join(directory, "checkpoint.tsr")
        data_path = os.path.join(directory, "checkpoint.txt")
        with open(token_path, "wb") as handle:
            handle.write(token)
        with open(data_path, "wb") as handle:
            handle.write(data)
        try:
            verified = subprocess.run(
                [openssl, "ts", "-verify", "-token_in", "-in", token_path, "-data", data_path, "-CAfile", ca_file],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            shown = subprocess.run(
                [openssl, "ts", "-reply", "-token_in", "-in", token_path, "-text"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise TimestampError(f"cannot run {openssl} ts: {exc}") from exc
    if verified.returncode != 0 or "Verification: OK" not in verified.stdout:
        problem = " ".join((verified.stdout + verified.stderr).split())
        raise TimestampError(f"openssl ts -verify refuses it: {problem[:400]}")
    time = re.search(r"^Time stamp: (.+)$", shown.stdout, re.M)
    tsa = re.search(r"^TSA: (.+)$", shown.stdout, re.M)
    return VerifiedTimestamp(
        time=time.group(1).strip() if time else "(unknown)", tsa=tsa.group(1).strip() if tsa else "(unnamed)"
    )
