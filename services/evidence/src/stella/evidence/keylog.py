"""The signed key log: which key was valid when, so a retired key's signature on later evidence is refused.

Each entry introduces one key and is a DSSE envelope (payload type :data:`PAYLOAD_TYPE`) of the RFC 8785
canonical JSON::

    {
      "index":          0, 1, 2...                         position in the log
      "key_id":         "sha256:<64 hex>"                  full SHA-256 of the key's DER SubjectPublicKeyInfo
      "key_ref":        "ed25519:<16 hex>"                 the short form packets name (display only)
      "algorithm":      "ed25519" | "ecdsa-p256"
      "public_key_pem": "-----BEGIN PUBLIC KEY-----..."
      "valid_from":     "YYYY-MM-DDTHH:MM:SS.ffffffZ"      the key signs evidence created from then on
      "previous_entry": "sha256:<hex>" | null              hash of the previous entry's payload
    }

A key is valid from its ``valid_from`` until the ``valid_from`` of the next entry, when it is retired. An entry
is signed by the key it introduces (it holds the private key), by the key it retires when that key was at
hand (a rotation), and by an offline root key when one is configured.

Trust: a verifier starts from keys it trusts on its own (``--keys``, a pinned ``--trust-fingerprint``, a root
key). An entry is *authenticated* when one of its signatures verifies with a trusted key or with the key of an
authenticated entry, and its ``previous_entry`` matches. Only authenticated entries give validity, so a forger
holding a retired private key cannot extend its life: the entry that retired it is signed by keys they lack,
and the log the verifier holds (from the API, or the bundle's when it is longer and consistent) says so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography.hazmat.primitives import serialization

from stella.contracts.canonical import canonicalize, sha256_digest
from stella.evidence.dsse import MalformedEnvelopeError, parse_envelope, sign_envelope
from stella.evidence.keys import BadSignatureError, KeyFormatError, PublicKey, Signer
from stella.evidence.packet import format_timestamp, parse_timestamp

PAYLOAD_TYPE: Final[str] = "application/vnd.stella.evidence-key-log+json"
"""DSSE payload type of a key log entry."""


class KeyLogError(ValueError):
    """A key log entry is malformed or does not follow the entry before it."""


def key_id(key: PublicKey) -> str:
    """The full fingerprint of a key: ``sha256:`` + hex SHA-256 of its DER SubjectPublicKeyInfo.

    ``openssl pkey -pubin -in key.pem -outform DER | sha256sum`` prints the same hex.
    """
    der = key.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class KeyLogEntry:
    """One entry: a key and when it became valid.

    Attributes:
        index: Position in the log.
        key: The key introduced.
        valid_from: From when it signs evidence.
        previous_entry: Hash of the previous entry's payload (``None`` for the first).
        payload_hash: Hash of this entry's payload (what the next entry names).
    """

    index: int
    key: PublicKey
    valid_from: datetime
    previous_entry: str | None
    payload_hash: str

    @property
    def key_id(self) -> str:
        """The key's full fingerprint."""
        return key_id(self.key)


def entry_payload(index: int, key: PublicKey, valid_from: datetime, previous_entry: str | None) -> bytes:
    """The canonical payload of an entry."""
    return canonicalize(
        {
            "index": index,
            "key_id": key_id(key),
            "key_ref": key.key_ref,
            "algorithm": key.algorithm.value,
            "public_key_pem": key.to_pem().decode("ascii"),
            "valid_from": format_timestamp(valid_from),
            "previous_entry": previous_entry,
        }
    )


def sign_entry(payload: bytes, signers: Sequence[Signer]) -> dict[str, Any]:
    """The DSSE envelope of an entry, signed by every one of ``signers`` (in order)."""
    envelope = sign_envelope(payload, PAYLOAD_TYPE, signers[0])
    for signer in signers[1:]:
        envelope["signatures"].append(sign_envelope(payload, PAYLOAD_TYPE, signer)["signatures"][0])
    return envelope


def parse_entry(envelope: Mapping[str, Any]) -> tuple[KeyLogEntry, Any]:
    """Read an entry without judging its signatures; returns it and the parsed envelope.

    Raises:
        KeyLogError: When the envelope or its payload is malformed.
    """
    try:
        parsed = parse_envelope(envelope)
    except MalformedEnvelopeError as exc:
        raise KeyLogError(f"key log entry: {exc}") from None
    if parsed.payload_type != PAYLOAD_TYPE:
        raise KeyLogError(f"key log entry has payloadType {parsed.payload_type!r}")
    try:
        raw = json.loads(parsed.payload)
        key = PublicKey.from_pem(raw["public_key_pem"].encode())
        index = raw["index"]
        previous = raw["previous_entry"]
        valid_from = parse_timestamp(raw["valid_from"])
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise KeyLogError("key log entry index is not a non-negative integer")
        if previous is not None and not isinstance(previous, str):
            raise KeyLogError("key log entry previous_entry is not a string")
        if raw["key_id"] != key_id(key) or raw["key_ref"] != key.key_ref or raw["algorithm"] != key.algorithm.value:
            raise KeyLogError(f"key log entry {index} names a key id, ref or algorithm not of its public key")
        if canonicalize(raw) != parsed.payload:
            raise KeyLogError(f"key log entry {index} is not in canonical form")
    except KeyLogError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, KeyFormatError) as exc:
        raise KeyLogError(f"key log entry is malformed: {exc!r}") from None
    entry = KeyLogEntry(index, key, valid_from, previous, sha256_digest(parsed.payload))
    return entry, parsed


@dataclass(frozen=True)
class Validity:
    """When a key may sign evidence.

    Attributes:
        key: The key.
        valid_from: Start (inclusive).
        retired_at: End (exclusive), or ``None`` while it is the current key.
    """

    key: PublicKey
    valid_from: datetime
    retired_at: datetime | None

    def covers(self, moment: datetime) -> bool:
        """Whether a packet created at ``moment`` may carry this key's signature."""
        return self.valid_from <= moment and (self.retired_at is None or moment < self.retired_at)


@dataclass
class KeyLog:
    """The outcome of authenticating a key log.

    Attributes:
        validity: The authenticated keys' validity, by ``key_ref``.
        problems: Why the log is broken (a malformed entry, one out of order): the entries from there on are
            not read.
        unauthenticated: Keys whose entry no trusted key signed (their validity is not used).
        length: Entries read.
    """

    validity: dict[str, Validity]
    problems: list[str]
    unauthenticated: list[str]
    length: int

    @property
    def keys(self) -> list[PublicKey]:
        """The authenticated keys."""
        return [v.key for v in self.validity.values()]


def authenticate(entries: Iterable[Mapping[str, Any]], anchors: Iterable[PublicKey]) -> KeyLog:
    """Follow a key log from keys trusted on their own.

    An entry is accepted when it follows the entry before it (index, ``previous_entry``) and one of its
    signatures verifies with an anchor or with the key of an accepted entry. Entries after a malformed or
    out-of-order one are not accepted (the log is a chain).

    Args:
        entries: The DSSE envelopes of the entries, in log order.
        anchors: Keys trusted without the log (``--keys``, a pinned fingerprint, a root key).
    """
    trusted: dict[str, PublicKey] = {key.key_ref: key for key in anchors}
    parsed: list[tuple[KeyLogEntry, Any]] = []
    problems: list[str] = []
    previous_hash: str | None = None
    for position, envelope in enumerate(entries):
        try:
            entry, dsse = parse_entry(envelope)
        except KeyLogError as exc:
            problems.append(f"key log entry {position}: {exc}")
            break
        if entry.index != position or entry.previous_entry != previous_hash:
            problems.append(f"key log entry {position} does not follow the entry before it")
            break
        if parsed and entry.valid_from < parsed[-1][0].valid_from:
            problems.append(f"key log entry {position} starts before the entry before it")
            break
        parsed.append((entry, dsse))
        previous_hash = entry.payload_hash
    accepted: set[int] = set()

    def signers_of(position: int) -> dict[str, PublicKey]:
        # An anchor; the key of the entry just before (it handed over); or the key of an accepted later entry
        # (which vouches for history: entries written for keys that predate the log).
        allowed = dict(trusted)
        if position - 1 in accepted:
            before = parsed[position - 1][0].key
            allowed.setdefault(before.key_ref, before)
        for later, _ in parsed[position + 1 :]:
            if later.index in accepted:
                allowed.setdefault(later.key.key_ref, later.key)
        return allowed

    changed = True
    while changed:  # a fixpoint: accepting an entry may vouch for its neighbours
        changed = False
        for position, (entry, dsse) in enumerate(parsed):
            if entry.index in accepted:
                continue
            allowed = signers_of(position)
            for signature in dsse.signatures:
                signer = allowed.get(signature.keyid or "")
                if signer is None:
                    continue
                try:
                    signer.verify(signature.sig, dsse.pae)
                except BadSignatureError:
                    continue
                accepted.add(entry.index)
                changed = True
                break
    validity: dict[str, Validity] = {}
    unauthenticated: list[str] = []
    for position, (entry, _) in enumerate(parsed):
        if entry.index not in accepted:
            unauthenticated.append(entry.key.key_ref)
            continue
        retired = parsed[position + 1][0].valid_from if position + 1 < len(parsed) else None
        validity[entry.key.key_ref] = Validity(entry.key, entry.valid_from, retired)
    return KeyLog(validity=validity, problems=problems, unauthenticated=unauthenticated, length=len(parsed))
