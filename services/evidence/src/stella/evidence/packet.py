"""Evidence packets: what they hold, what their hash covers, how they are built and signed.

A packet records one decision or execution (reference §5): ``release_decision`` (a promotion approved or
rejected), ``deployment`` (a job finished), ``rollback`` (a rollback finished) and ``drift`` (drift detected or
remediated). Packets of a tenant form a hash chain: packet ``n`` carries the ``content_hash`` of packet ``n-1``.

What ``content_hash`` covers
----------------------------
``content_hash`` is ``"sha256:" + hex(SHA-256(JCS(H)))`` where JCS is RFC 8785 and ``H`` is this object::

    {
      "content":       <the content object>,
      "created_at":    "YYYY-MM-DDTHH:MM:SS.ffffffZ",   # UTC, always 6 fraction digits
      "id":            "<packet uuid, lowercase hyphenated>",
      "packet_type":   "release_decision" | "deployment" | "rollback" | "drift",
      "previous_hash": "sha256:<hex>" | null,           # null only for sequence 1
      "promotion_id":  "<uuid>" | null,
      "sequence":      <integer >= 1>,
      "tenant_id":     "<tenant uuid>"
    }

so the hash pins the content *and* the packet's place in its tenant's chain: moving, renumbering or
re-parenting a packet changes its hash, and so breaks the link from the packet after it. ``signer_key_ref``
is deliberately left out: it says who signed, which the DSSE signature itself proves, and is not part of
what happened.

The signed form of a packet is a DSSE envelope of an in-toto Statement v1 whose predicate is
:meth:`EvidencePacket.to_dict` (every field above plus ``content_hash`` and ``signer_key_ref``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

from stella.contracts.canonical import canonicalize, content_hash, is_content_hash, sha256_digest
from stella.evidence.dsse import parse_envelope, sign_envelope, verify_parsed_envelope
from stella.evidence.keys import PublicKeyRing, SignatureVerificationError, Signer
from stella.evidence.statement import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    build_statement,
    parse_statement_canonical,
    serialize_statement,
    sort_subjects,
    subjects_from_content,
)

CONTENT_FIELDS: Final[tuple[str, ...]] = ("release", "environment", "actors", "decision", "execution", "previous")
"""Top-level fields a packet's content may have (reference §5); ``release`` is required."""

PACKET_FIELDS: Final[tuple[str, ...]] = (
    "id",
    "tenant_id",
    "packet_type",
    "promotion_id",
    "sequence",
    "previous_hash",
    "content",
    "content_hash",
    "created_at",
    "signer_key_ref",
)
"""Fields of a packet's dict form, the statement predicate."""

_MAX_SAFE_INTEGER: Final[int] = 2**53 - 1
"""Largest integer an IEEE 754 double holds exactly; RFC 8785 numbers are doubles."""

TIMESTAMP_FORMAT: Final[str] = "%Y-%m-%dT%H:%M:%S.%fZ"
"""The one spelling of ``created_at``: UTC, microseconds, ``Z``."""

_TIMESTAMP_RE: Final[re.Pattern[str]] = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")

SECRET_KEY_MARKERS: Final[tuple[str, ...]] = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "authorization",
    "privatekey",
    "apikey",
    "cookie",
)
"""Substrings that make an object key look like it holds a secret.

Keys are compared lowercased with everything but letters and digits removed, so ``DB_Password``,
``privateKey`` and ``x-api-key`` all match. A key ending in ``ref``/``refs`` (``credential_ref``) names a
secret kept elsewhere rather than holding it, and is allowed.
"""

_PEM_PRIVATE_KEY_RE: Final[re.Pattern[str]] = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_URL_USERINFO_RE: Final[re.Pattern[str]] = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@]+@")
_NON_ALNUM_RE: Final[re.Pattern[str]] = re.compile(r"[^a-z0-9]")


class PacketType(StrEnum):
    """Kinds of evidence packet (reference §5)."""

    RELEASE_DECISION = "release_decision"
    """A promotion was approved or rejected."""
    DEPLOYMENT = "deployment"
    """A deployment job finished."""
    ROLLBACK = "rollback"
    """A rollback finished."""
    DRIFT = "drift"
    """Drift was detected or remediated."""


class EvidenceContentError(ValueError):
    """Content cannot become evidence (wrong shape, not canonical JSON, names no image)."""


class SecretInEvidenceError(EvidenceContentError):
    """Content holds something that looks like a secret; evidence is kept forever, secrets must never enter it.

    Attributes:
        path: Where it was found (``$`` is the content root).
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"refusing evidence content: {reason} at {path}")
        self.path = path


class ChainError(ValueError):
    """A packet cannot follow the given chain head (wrong tenant, wrong sequence, missing previous hash)."""


class MalformedPacketError(ValueError):
    """A predicate is not a well-formed evidence packet."""


class PacketHashMismatchError(SignatureVerificationError):
    """A packet's recorded ``content_hash`` is not the hash of what it holds.

    Attributes:
        recorded: The hash the packet carries.
        computed: The hash recomputed from its fields.
    """

    def __init__(self, recorded: str, computed: str) -> None:
        super().__init__(f"content_hash {recorded} does not match the recomputed {computed}")
        self.recorded = recorded
        self.computed = computed


class SubjectMismatchError(SignatureVerificationError):
    """The statement's subjects are not the images named by the packet content."""


class SignerMismatchError(SignatureVerificationError):
    """The packet names a signer other than the key whose signature verified."""


def format_timestamp(moment: datetime) -> str:
    """Return the canonical ``created_at`` spelling of an aware datetime, converted to UTC.

    Raises:
        ValueError: For a naive datetime (its instant is unknown).
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("created_at must be timezone-aware")
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(value: str) -> datetime:
    """Parse the canonical ``created_at`` spelling back into an aware UTC datetime.

    Raises:
        ValueError: When ``value`` is not exactly ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.
    """
    if not isinstance(value, str) or not _TIMESTAMP_RE.fullmatch(value):
        raise ValueError(f"timestamp {value!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    return datetime.strptime(value, TIMESTAMP_FORMAT).replace(tzinfo=UTC)


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    # Cached: content repeats the same few dozen keys thousands of times.
    normalized = _NON_ALNUM_RE.sub("", key.lower())
    if normalized.endswith(("ref", "refs")):
        return False
    return any(marker in normalized for marker in SECRET_KEY_MARKERS)


class _SecretFound(Exception):
    """Raised deep in the scan; each level on the way out records its key, so clean content pays nothing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.keys: list[str | int] = []


def _scan(value: Any) -> None:
    kind = type(value)
    if kind is dict or (kind is not list and kind is not str and isinstance(value, Mapping)):
        for key, item in value.items():
            if isinstance(key, str) and _is_secret_key(key):
                exc = _SecretFound(f"key {key!r} looks like a secret")
                exc.keys.append(key)
                raise exc
            try:
                _scan(item)
            except _SecretFound as exc:
                exc.keys.append(key)
                raise
    elif kind is list or kind is tuple or (kind is not str and isinstance(value, list | tuple)):
        for index, item in enumerate(value):
            try:
                _scan(item)
            except _SecretFound as exc:
                exc.keys.append(index)
                raise
    elif isinstance(value, str):
        # Substring tests first: they are cheap and almost always false.
        if "-----BEGIN" in value and _PEM_PRIVATE_KEY_RE.search(value):
            raise _SecretFound("value holds a PEM private key")
        if "@" in value and _URL_USERINFO_RE.search(value):
            raise _SecretFound("value holds a URL with a password in it")


def reject_secrets(value: Any, path: str = "$") -> None:
    """Raise when a JSON value holds something that looks like a secret; never drop it silently.

    Checked, at every depth (objects inside lists included): object keys that contain a
    :data:`SECRET_KEY_MARKERS` marker, string values holding a PEM private key block, and URLs with a
    password in them (``https://user:pass@host``).

    Args:
        value: The value to scan.
        path: Path of ``value`` itself, the prefix of the path reported.

    Raises:
        SecretInEvidenceError: On the first match, naming its path.
    """
    try:
        _scan(value)
    except _SecretFound as exc:
        where = path
        for key in reversed(exc.keys):
            where += f"[{key}]" if isinstance(key, int) else f".{key}"
        raise SecretInEvidenceError(where, exc.reason) from None


def decision_inputs_hash(evaluated_at: Any, inputs: Any) -> str:
    """A decision's ``inputs_hash``: ``sha256:`` + hex SHA-256 of the RFC 8785 form of ``{"clock": evaluated_at,
    "inputs": inputs}`` (the promotion service's definition), ``evaluated_at`` as the record spells it.

    Raises:
        ValueError: the inputs have no canonical form.
    """
    return content_hash({"clock": evaluated_at, "inputs": inputs})


def validate_content(content: Mapping[str, Any]) -> dict[str, Any]:
    """Check packet content and return a normalized deep copy of it.

    The content must be a JSON object with the §5 fields (:data:`CONTENT_FIELDS`, ``release`` required), whose
    ``release.components`` name at least one image (``image_repository`` and ``digest``), that RFC 8785 can
    canonicalize, and that holds no secret.

    Returns:
        The content as plain JSON (the value JCS hashes: ``1.0`` becomes ``1``, tuples become lists).

    Raises:
        SecretInEvidenceError: When it holds something that looks like a secret.
        EvidenceContentError: For any other problem.
    """
    return check_content(content).value


@dataclass(frozen=True, slots=True)
class CheckedContent:
    """Packet content that :func:`check_content` accepted: a packet built from it (:func:`build_packet`) is not
    checked again, and its hash and signed statement reuse ``canonical`` instead of encoding the content again
    (checking, the secret scan and RFC 8785, costs more than hashing and signing the packet)."""

    value: dict[str, Any]
    """The content as plain JSON (see :func:`validate_content`)."""
    canonical: bytes
    """The RFC 8785 bytes of ``value``."""
    subjects: bytes
    """The RFC 8785 bytes of the statement's ``subject`` list (:func:`subjects_from_content` of ``value``)."""


def _exact_int(text: str) -> int:
    value = int(text)
    if not -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
        # A float such as 1e20 that RFC 8785 writes as an integer: read back, it could not be hashed again.
        raise EvidenceContentError(f"number {text} is outside the exact range of a JSON number")
    return value


def check_content(content: Mapping[str, Any]) -> CheckedContent:
    """Check packet content (see :func:`validate_content`) and keep its canonical bytes with its plain form.

    The plain form is read back from the canonical bytes, so the bytes are the RFC 8785 form of that value too.

    Raises:
        SecretInEvidenceError: When it holds something that looks like a secret.
        EvidenceContentError: For any other problem.
    """
    if not isinstance(content, Mapping):
        raise EvidenceContentError("content must be a JSON object")
    unknown = [key for key in content if key not in CONTENT_FIELDS]
    if unknown:
        raise EvidenceContentError(f"content has fields outside {list(CONTENT_FIELDS)}: {sorted(map(str, unknown))}")
    reject_secrets(content)
    try:
        canonical = canonicalize(content)
    except ValueError as exc:
        raise EvidenceContentError(str(exc)) from exc
    normalized: dict[str, Any] = json.loads(canonical, parse_int=_exact_int)
    try:
        subjects = subjects_from_content(normalized)
    except ValueError as exc:
        raise EvidenceContentError(str(exc)) from exc
    return CheckedContent(normalized, canonical, canonicalize(subjects))


def packet_hash_input(
    *,
    packet_id: UUID,
    tenant_id: UUID,
    packet_type: PacketType | str,
    promotion_id: UUID | None,
    sequence: int,
    previous_hash: str | None,
    content: Mapping[str, Any],
    created_at: datetime,
) -> dict[str, Any]:
    """Return the object whose canonical form ``content_hash`` is taken over (see the module docstring)."""
    return {
        "content": content,
        "created_at": format_timestamp(created_at),
        "id": str(packet_id),
        "packet_type": str(PacketType(packet_type)),
        "previous_hash": previous_hash,
        "promotion_id": None if promotion_id is None else str(promotion_id),
        "sequence": sequence,
        "tenant_id": str(tenant_id),
    }


def compute_packet_hash(
    *,
    packet_id: UUID,
    tenant_id: UUID,
    packet_type: PacketType | str,
    promotion_id: UUID | None,
    sequence: int,
    previous_hash: str | None,
    content: Mapping[str, Any],
    created_at: datetime,
) -> str:
    """Return the ``content_hash`` of a packet with these fields."""
    return content_hash(
        packet_hash_input(
            packet_id=packet_id,
            tenant_id=tenant_id,
            packet_type=packet_type,
            promotion_id=promotion_id,
            sequence=sequence,
            previous_hash=previous_hash,
            content=content,
            created_at=created_at,
        )
    )


_HASH_INPUT_ENCODER: Final[json.JSONEncoder] = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)
"""The fast encoder of :func:`stella.contracts.canonical.canonicalize` (same settings, so the same bytes)."""


def _is_plain_scalar(value: object) -> bool:
    """Whether the fast encoder writes ``value`` exactly as RFC 8785 does (ASCII text, exact integers, null)."""
    if value is None:
        return True
    if type(value) is str:
        return value.isascii()
    return type(value) is int and -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER


def compute_packet_hash_from_content_bytes(packet: EvidencePacket, content_bytes: bytes) -> str:
    """Return the ``content_hash`` of a packet whose content's RFC 8785 bytes are already known.

    The same digest as :meth:`EvidencePacket.compute_hash`, without canonicalizing the content again. A verifier
    has the content's bytes from the signed statement (see
    :func:`stella.evidence.statement.parse_statement_canonical`).

    Args:
        packet: The packet; every field but ``content`` is read from it.
        content_bytes: The RFC 8785 bytes of ``packet.content``.
    """
    return _hash_with_content_bytes(packet.hash_input(), content_bytes)


def _hash_with_content_bytes(hash_input: dict[str, Any], content_bytes: bytes) -> str:
    """The ``content_hash`` of ``hash_input`` (:func:`packet_hash_input`), its content's bytes being known.

    The canonical form of an object is its members' canonical forms in key order, ``content`` sorts first among
    the hashed fields, and the other fields are short strings, an integer and nulls.
    """
    rest = {key: value for key, value in hash_input.items() if key != "content"}
    if not all(_is_plain_scalar(value) for value in rest.values()):
        return content_hash(hash_input)  # a field RFC 8785 may spell or refuse differently: the general path decides
    tail = _HASH_INPUT_ENCODER.encode(rest)
    return sha256_digest(b'{"content":' + content_bytes + b"," + tail[1:].encode("utf-8"))


@dataclass(frozen=True)
class ChainHead:
    """The last packet of a tenant's chain, as far as the next packet needs to know.

    Attributes:
        sequence: Sequence of the last packet; ``0`` when the tenant has none yet.
        content_hash: Its ``content_hash``; ``None`` when the tenant has none yet.
    """

    sequence: int = 0
    content_hash: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sequence, bool) or not isinstance(self.sequence, int) or self.sequence < 0:
            raise ChainError(f"chain head sequence must be an integer >= 0, got {self.sequence!r}")
        if self.sequence == 0 and self.content_hash is not None:
            raise ChainError("an empty chain (sequence 0) has no content_hash")
        if self.sequence > 0 and not is_content_hash(self.content_hash):
            raise ChainError(f"chain head {self.sequence} needs a sha256:<hex> content_hash")

    @classmethod
    def empty(cls) -> ChainHead:
        """The head of a tenant without packets: the next packet is sequence 1 with ``previous_hash`` null."""
        return cls()

    @property
    def next_sequence(self) -> int:
        """Sequence of the packet that follows this head."""
        return self.sequence + 1


@dataclass(frozen=True)
class EvidencePacket:
    """An immutable evidence packet.

    Attributes:
        id: Packet id.
        tenant_id: Owning tenant; the chain is per tenant.
        packet_type: What the packet records.
        promotion_id: The promotion it is about, when there is one (drift packets may have none).
        sequence: Position in the tenant's chain, from 1, without gaps.
        previous_hash: ``content_hash`` of packet ``sequence - 1``; ``None`` for sequence 1.
        content: The §5 content object (plain JSON).
        content_hash: ``sha256:`` hash described in the module docstring.
        created_at: When the packet was made, UTC.
        signer_key_ref: Reference of the key that signs it.
    """

    id: UUID
    tenant_id: UUID
    packet_type: PacketType
    promotion_id: UUID | None
    sequence: int
    previous_hash: str | None
    content: dict[str, Any] = field(repr=False)
    content_hash: str
    created_at: datetime
    signer_key_ref: str
    checked: CheckedContent | None = field(default=None, repr=False, compare=False)
    """The checked content the packet was built from (:func:`build_packet`), whose canonical bytes signing and
    storing reuse; None for a packet read back."""

    @property
    def content_bytes(self) -> bytes | None:
        """The RFC 8785 bytes of ``content`` when known: those of :attr:`checked` while ``content`` is still its
        value (a copy made with other content, by :func:`dataclasses.replace` say, has none)."""
        checked = self.checked
        return checked.canonical if checked is not None and checked.value is self.content else None

    @property
    def head(self) -> ChainHead:
        """The chain head this packet makes: what the next packet of the tenant links to."""
        return ChainHead(sequence=self.sequence, content_hash=self.content_hash)

    def hash_input(self) -> dict[str, Any]:
        """The object ``content_hash`` is taken over (:func:`packet_hash_input` of the packet's fields)."""
        return packet_hash_input(
            packet_id=self.id,
            tenant_id=self.tenant_id,
            packet_type=self.packet_type,
            promotion_id=self.promotion_id,
            sequence=self.sequence,
            previous_hash=self.previous_hash,
            content=self.content,
            created_at=self.created_at,
        )

    def compute_hash(self) -> str:
        """Recompute ``content_hash`` from the packet's fields (equal to ``content_hash`` unless tampered)."""
        return content_hash(self.hash_input())

    def to_dict(self) -> dict[str, Any]:
        """Return the packet as JSON: the statement predicate, and the form stored and exported."""
        return {
            "id": str(self.id),
            "tenant_id": str(self.tenant_id),
            "packet_type": str(self.packet_type),
            "promotion_id": None if self.promotion_id is None else str(self.promotion_id),
            "sequence": self.sequence,
            "previous_hash": self.previous_hash,
            "content": self.content,
            "content_hash": self.content_hash,
            "created_at": format_timestamp(self.created_at),
            "signer_key_ref": self.signer_key_ref,
        }

    def statement(self) -> dict[str, Any]:
        """Return the in-toto Statement v1 whose predicate is this packet."""
        return build_statement(subjects_from_content(self.content), self.to_dict())


@dataclass(frozen=True)
class SignedPacket:
    """A packet with its DSSE envelope, as stored and exported.

    Attributes:
        packet: The packet.
        envelope: Its DSSE JSON envelope (the statement, signed).
    """

    packet: EvidencePacket
    envelope: dict[str, Any]


def build_packet(
    *,
    packet_id: UUID,
    tenant_id: UUID,
    packet_type: PacketType | str,
    content: Mapping[str, Any] | CheckedContent,
    head: ChainHead,
    created_at: datetime,
    signer_key_ref: str,
    promotion_id: UUID | None = None,
) -> EvidencePacket:
    """Build the next packet of a tenant's chain.

    The id, clock reading and chain head are arguments so that building is pure: the caller reads the head
    and inserts the packet in one transaction (a unique ``(tenant_id, sequence)`` makes a concurrent writer
    fail instead of forking the chain).

    Args:
        packet_id: Id of the new packet.
        tenant_id: Its tenant.
        packet_type: What it records.
        content: The §5 content (see :func:`validate_content`), checked here unless it is
            :class:`CheckedContent` already.
        head: The tenant's current chain head (:meth:`ChainHead.empty` for the first packet).
        created_at: Timezone-aware creation time; stored in UTC.
        signer_key_ref: Reference of the key that will sign it.
        promotion_id: The promotion it is about, if any.

    Returns:
        The packet, ``sequence = head.sequence + 1``, ``previous_hash = head.content_hash``.

    Raises:
        SecretInEvidenceError: When the content holds something that looks like a secret.
        EvidenceContentError: When the content is not valid packet content.
        ValueError: For a naive ``created_at`` or an unknown packet type.
    """
    packet_type = PacketType(packet_type)
    checked = content if isinstance(content, CheckedContent) else check_content(content)
    created_at = _utc(created_at)
    sequence = head.next_sequence
    previous_hash = head.content_hash
    hash_input = packet_hash_input(
        packet_id=packet_id,
        tenant_id=tenant_id,
        packet_type=packet_type,
        promotion_id=promotion_id,
        sequence=sequence,
        previous_hash=previous_hash,
        content=checked.value,
        created_at=created_at,
    )
    digest = _hash_with_content_bytes(hash_input, checked.canonical)
    return EvidencePacket(
        id=packet_id,
        tenant_id=tenant_id,
        packet_type=packet_type,
        promotion_id=promotion_id,
        sequence=sequence,
        previous_hash=previous_hash,
        content=checked.value,
        content_hash=digest,
        created_at=created_at,
        signer_key_ref=signer_key_ref,
        checked=checked,
    )


def _utc(moment: datetime) -> datetime:
    # Round-trip through the canonical spelling so the stored value is exactly what gets hashed.
    return parse_timestamp(format_timestamp(moment))


def sign_packet(packet: EvidencePacket, signer: Signer) -> dict[str, Any]:
    """Return the DSSE envelope of a packet: its in-toto statement, canonicalized and signed.

    Raises:
        ValueError: When ``signer`` is not the key the packet names in ``signer_key_ref``.
    """
    if signer.key_ref != packet.signer_key_ref:
        raise ValueError(f"packet names signer {packet.signer_key_ref}, but the key is {signer.key_ref}")
    return sign_envelope(statement_bytes(packet), PAYLOAD_TYPE, signer)


def statement_bytes(packet: EvidencePacket) -> bytes:
    """The signed bytes of a packet: the RFC 8785 form of :meth:`EvidencePacket.statement`.

    A packet built from :class:`CheckedContent` has its content's and its subjects' canonical bytes spliced in
    instead of encoding them again. RFC 8785 writes an object's members in key order, each as its own canonical
    form: the statement's members sort ``_type``, ``predicate``, ``predicateType``, ``subject``, and
    ``content`` sorts first in the predicate, so the statement is the canonical forms of its other parts
    around those bytes.
    """
    checked = packet.checked
    if checked is None or packet.content_bytes is None:
        return serialize_statement(packet.statement())
    predicate = packet.to_dict()
    del predicate["content"]
    return b"".join(
        (
            _STATEMENT_HEAD,
            checked.canonical,
            b",",
            canonicalize(predicate)[1:],
            _STATEMENT_SUBJECT,
            checked.subjects,
            b"}",
        )
    )


_STATEMENT_HEAD: Final[bytes] = canonicalize({"_type": STATEMENT_TYPE})[:-1] + b',"predicate":{"content":'
"""The canonical statement up to its content (see :func:`statement_bytes`)."""

_STATEMENT_SUBJECT: Final[bytes] = b',"predicateType":' + canonicalize(PREDICATE_TYPE) + b',"subject":'
"""The canonical statement between its predicate and its subject list."""


def _uuid(value: object, name: str) -> UUID:
    if not isinstance(value, str):
        raise MalformedPacketError(f"{name} is not a string")
    try:
        parsed = UUID(value)
    except ValueError:
        raise MalformedPacketError(f"{name} {value!r} is not a UUID") from None
    if str(parsed) != value:
        # One spelling only: the hash is over the string.
        raise MalformedPacketError(f"{name} {value!r} is not a lowercase hyphenated UUID")
    return parsed


def packet_from_dict(data: object) -> EvidencePacket:
    """Parse a packet from its dict form (a statement predicate, or a stored row turned to JSON).

    Only the structure is checked here; whether ``content_hash`` and ``previous_hash`` are right is for
    :meth:`EvidencePacket.compute_hash` and :func:`stella.evidence.chain.verify_chain` to say, so that a tampered
    hash is reported as such rather than as a parse error.

    Raises:
        MalformedPacketError: When a field is missing, unexpected or of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise MalformedPacketError("packet is not a JSON object")
    missing = [name for name in PACKET_FIELDS if name not in data]
    if missing:
        raise MalformedPacketError(f"packet lacks {missing}")
    extra = sorted(set(data) - set(PACKET_FIELDS))
    if extra:
        raise MalformedPacketError(f"packet has unexpected fields {extra}")
    try:
        packet_type = PacketType(data["packet_type"])
    except ValueError:
        raise MalformedPacketError(f"packet_type {data['packet_type']!r} is not one of {list(PacketType)}") from None
    sequence = data["sequence"]
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 1:
        raise MalformedPacketError(f"sequence {sequence!r} is not an integer >= 1")
    previous_hash = data["previous_hash"]
    if previous_hash is not None and not isinstance(previous_hash, str):
        raise MalformedPacketError("previous_hash is neither null nor a string")
    if not isinstance(data["content_hash"], str):
        raise MalformedPacketError("content_hash is not a string")
    if not isinstance(data["content"], dict):
        raise MalformedPacketError("content is not a JSON object")
    if not isinstance(data["signer_key_ref"], str) or not data["signer_key_ref"]:
        raise MalformedPacketError("signer_key_ref is not a non-empty string")
    try:
        created_at = parse_timestamp(data["created_at"])
    except ValueError as exc:
        raise MalformedPacketError(f"created_at: {exc}") from None
    return EvidencePacket(
        id=_uuid(data["id"], "id"),
        tenant_id=_uuid(data["tenant_id"], "tenant_id"),
        packet_type=packet_type,
        promotion_id=None if data["promotion_id"] is None else _uuid(data["promotion_id"], "promotion_id"),
        sequence=sequence,
        previous_hash=previous_hash,
        content=data["content"],
        content_hash=data["content_hash"],
        created_at=created_at,
        signer_key_ref=data["signer_key_ref"],
    )


def packet_from_statement(statement: Mapping[str, Any]) -> EvidencePacket:
    """Parse the packet out of a parsed statement and check that its subjects match the content's images.

    Raises:
        MalformedPacketError: When the predicate is not a well-formed packet.
        SubjectMismatchError: When the statement's subjects are not the content's images.
    """
    packet = packet_from_dict(statement["predicate"])
    try:
        expected = subjects_from_content(packet.content)
    except ValueError as exc:
        raise SubjectMismatchError(f"content names no valid images: {exc}") from exc
    if sort_subjects(statement["subject"]) != expected or len(statement["subject"]) != len(expected):
        raise SubjectMismatchError("statement subjects are not the images of content.release.components")
    return packet


def verify_packet_envelope(envelope: object, keyring: PublicKeyRing) -> EvidencePacket:
    """Verify one stored or exported packet envelope completely and return its packet.

    Checks, in order: the envelope is well formed and of type ``application/vnd.in-toto+json``; a signature
    verifies with a trusted key; the payload is a Statement v1 with the Stella predicate; the subjects are the
    content's images; the packet names the key that signed it; its ``content_hash`` recomputes. Chain links
    need the neighbouring packets: see :func:`stella.evidence.chain.verify_chain`.

    Raises:
        stella.evidence.dsse.MalformedEnvelopeError: Envelope not well formed or of another payload type.
        stella.evidence.keys.UnknownKeyError: Signed only by keys the ring does not hold.
        stella.evidence.keys.BadSignatureError: A signature does not verify.
        stella.evidence.statement.MalformedStatementError: Payload is not a Stella evidence statement.
        MalformedPacketError: Predicate is not a well-formed packet.
        SubjectMismatchError: Subjects differ from the content's images.
        SignerMismatchError: ``signer_key_ref`` is not a key whose signature verified.
        PacketHashMismatchError: ``content_hash`` does not recompute.
    """
    verified = verify_parsed_envelope(parse_envelope(envelope), keyring, payload_type=PAYLOAD_TYPE)
    statement, content_bytes = parse_statement_canonical(verified.payload)
    packet = packet_from_statement(statement)
    if packet.signer_key_ref not in verified.key_refs:
        raise SignerMismatchError(
            f"packet names signer {packet.signer_key_ref}, but it verified with {', '.join(verified.key_refs)}"
        )
    computed = (
        packet.compute_hash()
        if content_bytes is None
        else compute_packet_hash_from_content_bytes(packet, content_bytes)
    )
    if computed != packet.content_hash:
        raise PacketHashMismatchError(packet.content_hash, computed)
    return packet
