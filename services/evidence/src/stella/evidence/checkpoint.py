"""Signed checkpoints of a tenant's Merkle tree, in the C2SP ``tlog-checkpoint`` / ``signed-note`` format.

A checkpoint is the note text::

    <origin>\\n                 e.g. stella.local/evidence/3f1c...-tenant-uuid
    <tree size>\\n              decimal, the number of packets (leaves) the tree holds
    <base64 root hash>\\n       the RFC 6962 root of those leaves (see :mod:`stella.evidence.merkle`)

followed by a blank line and one signature line per signer::

    — <key name> <base64(4-byte key id || signature)>\\n

the format Go's checksum database, Sigstore's Rekor and the transparency-dev witnesses read. The key name is
the origin's prefix (the installation, ``Settings.checkpoint_origin``); the signature is over the note text
(origin line to root line, final newline included):

* Ed25519 (signature type ``0x01``): the RFC 8032 signature; key id = ``SHA-256(name || 0x0A || 0x01 ||
  32-byte public key)[:4]``.
* ECDSA P-256 (signature type ``0x02``): the DER signature over SHA-256 of the text; key id =
  ``SHA-256(DER SubjectPublicKeyInfo)[:4]``.

A checkpoint says how many packets existed when it was signed and what they were: deleting the oldest or the
newest packet, or any between, changes the root a verifier recomputes from the packets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from uuid import UUID

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from stella.evidence.keys import BadSignatureError, KeyAlgorithm, PublicKey, Signer
from stella.evidence.merkle import HASH_SIZE

SIGNATURE_TYPE: Final[dict[KeyAlgorithm, bytes]] = {KeyAlgorithm.ED25519: b"\x01", KeyAlgorithm.ECDSA_P256: b"\x02"}
"""The signed-note signature type byte of each key algorithm."""

_ORIGIN_RE: Final[re.Pattern[str]] = re.compile(r"[\x21-\x7e]+")
_SIGNATURE_LINE_RE: Final[re.Pattern[str]] = re.compile(r"\u2014 ([^\s]+) ([A-Za-z0-9+/=]+)")


class CheckpointError(ValueError):
    """A checkpoint is malformed, or no trusted key's signature on it verifies."""


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint states.

    Attributes:
        origin: The log's name: ``<installation prefix>/<tenant id>``.
        size: Number of leaves (packets) in the tree.
        root: The tree's RFC 6962 root hash.
    """

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not _ORIGIN_RE.fullmatch(self.origin):
            raise CheckpointError(f"origin {self.origin!r} is empty or holds spaces or control characters")
        if self.size < 0:
            raise CheckpointError("tree size is negative")
        if len(self.root) != HASH_SIZE:
            raise CheckpointError(f"root hash is {len(self.root)} bytes, not {HASH_SIZE}")

    @property
    def text(self) -> str:
        """The note text that is signed."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode('ascii')}\n"


def origin_for(prefix: str, tenant_id: UUID) -> str:
    """The origin line of a tenant's tree."""
    return f"{prefix}/{tenant_id}"


def key_name_of(origin: str) -> str:
    """The name of the key that signs checkpoints of ``origin``: the installation prefix (without the tenant)."""
    return origin.rsplit("/", 1)[0] if "/" in origin else origin


def note_key_id(name: str, key: PublicKey) -> bytes:
    """The 4-byte signed-note key id of ``key`` under ``name``."""
    if key.algorithm is KeyAlgorithm.ED25519:
        raw = key.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return hashlib.sha256(name.encode() + b"\n" + SIGNATURE_TYPE[key.algorithm] + raw).digest()[:4]
    der = key.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()[:4]


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer, public_key: PublicKey) -> str:
    """Return the signed note of ``checkpoint``, signed by ``signer`` (whose public key is ``public_key``)."""
    if signer.key_ref != public_key.key_ref:
        raise ValueError(f"signer {signer.key_ref} is not the key {public_key.key_ref}")
    name = key_name_of(checkpoint.origin)
    text = checkpoint.text
    signature = signer.sign(text.encode("utf-8"))
    blob = base64.b64encode(note_key_id(name, public_key) + signature).decode("ascii")
    return f"{text}\n\u2014 {name} {blob}\n"


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint and the trusted key whose signature on it verified.

    Attributes:
        checkpoint: What it states.
        key_ref: The key that signed it.
    """

    checkpoint: Checkpoint
    key_ref: str


def parse_checkpoint(note: str) -> tuple[Checkpoint, list[tuple[str, bytes, bytes]]]:
    """Split a signed checkpoint into what it states and its signatures ``(name, key id, signature)``.

    Raises:
        CheckpointError: When it is not a well-formed signed checkpoint.
    """
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise CheckpointError("the note holds control characters")
    text, sep, signatures = note.partition("\n\n")
    if not sep or not signatures.endswith("\n"):
        raise CheckpointError("the note has no blank line followed by signature lines")
    lines = text.split("\n")
    if len(lines) < 3:
        raise CheckpointError("a checkpoint needs an origin, a tree size and a root hash line")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not re.fullmatch(r"0|[1-9][0-9]{0,18}", size_text):
        raise CheckpointError(f"tree size {size_text!r} is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error as exc:
        raise CheckpointError(f"root hash is not base64: {exc}") from None
    checkpoint = Checkpoint(origin=origin, size=int(size_text), root=root)
    parsed: list[tuple[str, bytes, bytes]] = []
    for line in signatures[:-1].split("\n"):
        match = _SIGNATURE_LINE_RE.fullmatch(line)
        if match is None:
            raise CheckpointError(f"signature line {line!r} is not '\u2014 <name> <base64>'")
        try:
            blob = base64.b64decode(match.group(2), validate=True)
        except binascii.Error as exc:
            raise CheckpointError(f"signature of {match.group(1)} is not base64: {exc}") from None
        if len(blob) < 5:
            raise CheckpointError(f"signature of {match.group(1)} is too short")
        parsed.append((match.group(1), blob[:4], blob[4:]))
    return checkpoint, parsed


def verify_checkpoint(note: str, keys: Iterable[PublicKey]) -> VerifiedCheckpoint:
    """Verify a signed checkpoint with trusted keys (signatures by other keys are ignored, as the spec says).

    Raises:
        CheckpointError: When it is malformed, a trusted key's signature fails, or no trusted key signed it.
    """
    checkpoint, signatures = parse_checkpoint(note)
    text = note.partition("\n\n")[0] + "\n"
    trusted = list(keys)
    for name, key_id, signature in signatures:
        for key in trusted:
            if note_key_id(name, key) != key_id:
                continue
            try:
                key.verify(signature, text.encode("utf-8"))
            except BadSignatureError:
                raise CheckpointError(f"the checkpoint signature of key {key.key_ref} does not verify") from None
            return VerifiedCheckpoint(checkpoint=checkpoint, key_ref=key.key_ref)
    raise CheckpointError("no trusted key signed the checkpoint")


def raw_public_key(key: PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 key (for tools that take them, such as Go's ``note`` verifier keys)."""
    if not isinstance(key.key, ed25519.Ed25519PublicKey):
        raise ValueError("only Ed25519 keys have a raw 32-byte form")
    return key.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
