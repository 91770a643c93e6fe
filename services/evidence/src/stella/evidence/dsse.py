"""DSSE (Dead Simple Signing Envelope) v1: pre-authentication encoding, signing and verification.

The signature never covers the bare payload: it covers ``PAE(payloadType, payload)``::

    "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

where ``SP`` is one ASCII space, ``type`` is the UTF-8 payload type, ``body`` the payload bytes and ``LEN`` the
ASCII decimal byte length without leading zeros. Binding the type into the signed bytes means a signature made
for one kind of document cannot be replayed as another.

The JSON envelope is ``{"payload": base64(body), "payloadType": type, "signatures": [{"keyid", "sig"}]}``.
Envelopes are written with standard base64; standard and URL-safe base64 are both accepted on reading, as
the DSSE protocol requires.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from stella.evidence.keys import (
    BadSignatureError,
    PublicKeyRing,
    SignatureVerificationError,
    Signer,
    UnknownKeyError,
)

PAE_PREFIX: Final[bytes] = b"DSSEv1"
"""First field of the pre-authentication encoding."""

_B64_STD_RE: Final[re.Pattern[str]] = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_B64_URL_RE: Final[re.Pattern[str]] = re.compile(r"[A-Za-z0-9_-]*={0,2}")

_B64_STD_ALPHABET: Final[str] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

_LAST_BEFORE_PADDING: Final[dict[int, frozenset[str]]] = {
    2: frozenset(_B64_STD_ALPHABET[::16]),  # "xy==": y carries 2 bits of data, its 4 low bits unused
    1: frozenset(_B64_STD_ALPHABET[::4]),  # "xyz=": z carries 4 bits of data, its 2 low bits unused
}
"""Per count of ``=``: the characters the last one before the padding may be in canonical base64 (those whose
unused low bits are zero)."""


class MalformedEnvelopeError(SignatureVerificationError):
    """The envelope is not a well-formed DSSE JSON envelope (missing field, wrong type, invalid base64...)."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """Return the DSSE v1 pre-authentication encoding of a payload and its type.

    Args:
        payload_type: The payload type; encoded as UTF-8.
        payload: The serialized body.

    Returns:
        ``b"DSSEv1 " + len(type) + b" " + type + b" " + len(body) + b" " + body``.
    """
    type_bytes = payload_type.encode("utf-8")
    return b"%s %d %s %d %s" % (PAE_PREFIX, len(type_bytes), type_bytes, len(payload), payload)


def _b64decode(value: object, what: str) -> bytes:
    """Decode standard or URL-safe base64 (padding optional) and refuse non-canonical spellings.

    Base64 leaves a few low bits of the last character unused; two spellings could decode to the same bytes.
    Requiring the canonical one means an envelope file cannot change while its meaning stays the same.
    """
    if not isinstance(value, str):
        raise MalformedEnvelopeError(f"{what} is not a string")
    # Fast path for what every signer writes: padded standard base64 in canonical form. The C decoder in
    # strict mode refuses any character outside the standard alphabet; whole quanta with at most the padding
    # the last one needs leave one other way to spell the same bytes, the unused low bits of the last
    # character before the padding, which is checked here without encoding the bytes again. What this
    # accepts the checks below accept too, with the same bytes; anything else takes them for their exact
    # error (tested against the rule on every spelling of up to 4 characters).
    try:
        raw = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    else:
        padding = len(value) - len(value.rstrip("=")) if value.endswith("=") else 0
        if len(value) % 4 == 0 and (
            padding == 0 or (padding <= 2 and value[-padding - 1] in _LAST_BEFORE_PADDING[padding])
        ):
            return raw
    text = value.rstrip("=")
    urlsafe = "-" in text or "_" in text
    pattern = _B64_URL_RE if urlsafe else _B64_STD_RE
    if not pattern.fullmatch(value) or len(text) % 4 == 1:
        raise MalformedEnvelopeError(f"{what} is not valid base64")
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded) if urlsafe else base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedEnvelopeError(f"{what} is not valid base64: {exc}") from exc
    again = (base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)).decode("ascii").rstrip("=")
    if again != text:
        raise MalformedEnvelopeError(f"{what} is not canonically encoded base64")
    return raw


@dataclass(frozen=True)
class EnvelopeSignature:
    """One signature of an envelope.

    Attributes:
        keyid: The key reference it claims (``None`` when the envelope names no key).
        sig: The raw signature bytes.
    """

    keyid: str | None
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    """A decoded DSSE envelope; nothing about it is verified yet.

    Attributes:
        payload: The decoded payload bytes.
        payload_type: The payload type.
        signatures: The signatures, in envelope order.
    """

    payload: bytes
    payload_type: str
    signatures: tuple[EnvelopeSignature, ...]

    @property
    def pae(self) -> bytes:
        """The bytes every signature is over."""
        return pae(self.payload_type, self.payload)


@dataclass(frozen=True)
class VerifiedEnvelope:
    """An envelope with at least one signature that verified.

    Attributes:
        payload: The payload bytes.
        payload_type: The payload type.
        key_refs: References of the trusted keys whose signatures verified, sorted.
    """

    payload: bytes
    payload_type: str
    key_refs: tuple[str, ...]


def sign_envelope(payload: bytes, payload_type: str, signer: Signer) -> dict[str, Any]:
    """Sign a payload and return its DSSE JSON envelope.

    Args:
        payload: The serialized body to sign.
        payload_type: Its payload type (for evidence, ``application/vnd.in-toto+json``).
        signer: The key to sign with; its ``key_ref`` becomes the signature's ``keyid``.

    Returns:
        ``{"payload": <base64>, "payloadType": ..., "signatures": [{"keyid": ..., "sig": <base64>}]}``.
    """
    signature = signer.sign(pae(payload_type, payload))
    return {
        "payload": base64.b64encode(payload).decode("ascii"),
        "payloadType": payload_type,
        "signatures": [{"keyid": signer.key_ref, "sig": base64.b64encode(signature).decode("ascii")}],
    }


def parse_envelope(envelope: object) -> Envelope:
    """Decode a DSSE JSON envelope without verifying it.

    Args:
        envelope: The envelope as parsed JSON.

    Raises:
        MalformedEnvelopeError: When a field is missing, of the wrong type, or not valid base64, when there is
            no signature, or when the envelope has fields DSSE does not define.
    """
    if not isinstance(envelope, Mapping):
        raise MalformedEnvelopeError("envelope is not a JSON object")
    unknown = set(envelope) - {"payload", "payloadType", "signatures"}
    if unknown:
        raise MalformedEnvelopeError(f"envelope has unexpected fields {sorted(unknown)}")
    payload_type = envelope.get("payloadType")
    if not isinstance(payload_type, str) or not payload_type:
        raise MalformedEnvelopeError("payloadType is missing or not a non-empty string")
    if "payload" not in envelope:
        raise MalformedEnvelopeError("payload is missing")
    payload = _b64decode(envelope["payload"], "payload")
    raw_signatures = envelope.get("signatures")
    if not isinstance(raw_signatures, list) or not raw_signatures:
        raise MalformedEnvelopeError("signatures is missing or empty")
    signatures: list[EnvelopeSignature] = []
    for index, item in enumerate(raw_signatures):
        if not isinstance(item, Mapping):
            raise MalformedEnvelopeError(f"signatures[{index}] is not a JSON object")
        extra = set(item) - {"keyid", "sig"}
        if extra:
            raise MalformedEnvelopeError(f"signatures[{index}] has unexpected fields {sorted(extra)}")
        keyid = item.get("keyid")
        if keyid is not None and not isinstance(keyid, str):
            raise MalformedEnvelopeError(f"signatures[{index}].keyid is not a string")
        if "sig" not in item:
            raise MalformedEnvelopeError(f"signatures[{index}].sig is missing")
        sig = _b64decode(item["sig"], f"signatures[{index}].sig")
        if not sig:
            raise MalformedEnvelopeError(f"signatures[{index}].sig is empty")
        signatures.append(EnvelopeSignature(keyid=keyid or None, sig=sig))
    return Envelope(payload=payload, payload_type=payload_type, signatures=tuple(signatures))


def verify_parsed_envelope(
    envelope: Envelope, keyring: PublicKeyRing, *, payload_type: str | None = None
) -> VerifiedEnvelope:
    """Verify a decoded envelope against trusted keys (see :func:`verify_envelope`)."""
    if payload_type is not None and envelope.payload_type != payload_type:
        raise MalformedEnvelopeError(f"payloadType is {envelope.payload_type!r}, expected {payload_type!r}")
    message = envelope.pae
    verified: set[str] = set()
    failed: list[str] = []
    unknown: list[str | None] = []
    for signature in envelope.signatures:
        if signature.keyid is None:
            # DSSE makes keyid optional; without it, try every trusted key.
            for key in keyring:
                try:
                    key.verify(signature.sig, message)
                except BadSignatureError:
                    continue
                verified.add(key.key_ref)
                break
            else:
                unknown.append(None)
            continue
        if signature.keyid not in keyring:
            unknown.append(signature.keyid)
            continue
        try:
            keyring.verify(signature.keyid, signature.sig, message)
        except BadSignatureError:
            failed.append(signature.keyid)
        else:
            verified.add(signature.keyid)
    if verified:
        return VerifiedEnvelope(
            payload=envelope.payload, payload_type=envelope.payload_type, key_refs=tuple(sorted(verified))
        )
    if failed:
        raise BadSignatureError(failed[0], f"signature does not verify with key {', '.join(failed)}")
    named = [ref for ref in unknown if ref is not None]
    if named:
        raise UnknownKeyError(named[0], f"signed by unknown key {', '.join(named)}")
    raise UnknownKeyError(None, "no signature verifies with any trusted key, and none names its key")


def verify_envelope(envelope: object, keyring: PublicKeyRing, *, payload_type: str | None = None) -> bytes:
    """Verify a DSSE JSON envelope and return its payload.

    The envelope is accepted when at least one of its signatures verifies with a trusted key (a threshold of
    one, as in the DSSE protocol). A signature without ``keyid`` is tried against every trusted key.

    Args:
        envelope: The envelope as parsed JSON.
        keyring: The trusted public keys.
        payload_type: When given, the payload type the envelope must carry.

    Returns:
        The verified payload bytes.

    Raises:
        MalformedEnvelopeError: When the envelope is not well formed or carries another payload type.
        BadSignatureError: When a signature names a trusted key but does not verify with it (and no other
            signature verified); ``key_ref`` names the key.
        UnknownKeyError: When every signature names a key the ring does not hold; ``key_ref`` names it.
    """
    return verify_parsed_envelope(parse_envelope(envelope), keyring, payload_type=payload_type).payload
