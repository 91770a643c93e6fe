"""in-toto Statement v1 around an evidence packet.

The statement binds the packet (its predicate) to the images it is about (its subjects): one subject per
distinct image, ``{"name": <image repository>, "digest": {"sha256": <hex>}}``, sorted by name then digest so
the same packet always gives the same statement bytes. The statement is serialized with RFC 8785 before it
is signed, so its bytes are reproducible too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from stella.contracts.canonical import (
    NATIVE_DECODER,
    NATIVE_ENCODER,
    NotShownCanonical,
    canonicalize,
    may_hold_inexact_integer,
    may_sort_differently,
)

STATEMENT_TYPE: Final[str] = "https://in-toto.io/Statement/v1"
"""``_type`` of every in-toto Statement v1."""

PREDICATE_TYPE: Final[str] = "https://stella-ops.org/evidence/v1"
"""``predicateType`` of Stella evidence packets: the predicate is the packet (see :mod:`stella.evidence.packet`)."""

PAYLOAD_TYPE: Final[str] = "application/vnd.in-toto+json"
"""DSSE ``payloadType`` of an in-toto statement."""

_SHA256_HEX_RE: Final[re.Pattern[str]] = re.compile(r"[0-9a-f]{64}")

_FAST_ENCODER: Final[json.JSONEncoder] = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)
"""The encoder :func:`stella.contracts.canonical.canonicalize` uses for values it has found to need no RFC 8785
special case (same settings, so the same bytes)."""


class MalformedStatementError(ValueError):
    """A payload is not an in-toto Statement v1 carrying a Stella evidence predicate."""


def image_subject(image_repository: str, digest: str) -> dict[str, Any]:
    """Return the subject entry of one image.

    Args:
        image_repository: Repository of the image, e.g. ``registry.example.com/shop/api``.
        digest: ``sha256:<64 hex>`` (the prefix is optional).

    Raises:
        ValueError: When the repository is empty or the digest is not a lowercase SHA-256.
    """
    if not isinstance(image_repository, str) or not image_repository:
        raise ValueError("image_repository must be a non-empty string")
    if not isinstance(digest, str):
        raise ValueError(f"digest of {image_repository} must be a string")
    hex_digest = digest.removeprefix("sha256:")
    if not _SHA256_HEX_RE.fullmatch(hex_digest):
        raise ValueError(f"digest {digest!r} of {image_repository} is not sha256:<64 lowercase hex>")
    return {"name": image_repository, "digest": {"sha256": hex_digest}}


def sort_subjects(subjects: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Drop duplicate subjects and sort the rest by name, then digest."""
    unique = {(s["name"], s["digest"]["sha256"]) for s in subjects}
    return [{"name": name, "digest": {"sha256": hexd}} for name, hexd in sorted(unique)]


def subjects_from_content(content: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Derive the statement subjects from packet content: every ``release.components[*]`` image.

    Args:
        content: Packet content holding ``release.components``, each with ``image_repository`` and ``digest``.

    Returns:
        The subjects, one per distinct (repository, digest), sorted.

    Raises:
        ValueError: When the content names no image, or a component lacks a valid repository or digest.
    """
    release = content.get("release")
    if not isinstance(release, Mapping):
        raise ValueError("content.release must be an object")
    components = release.get("components")
    if not isinstance(components, list) or not components:
        raise ValueError("content.release.components must be a non-empty list: evidence is about images")
    subjects = []
    for index, component in enumerate(components):
        if not isinstance(component, Mapping):
            raise ValueError(f"content.release.components[{index}] must be an object")
        try:
            subjects.append(image_subject(component.get("image_repository"), component.get("digest")))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"content.release.components[{index}]: {exc}") from exc
    return sort_subjects(subjects)


def build_statement(subjects: Iterable[Mapping[str, Any]], predicate: Mapping[str, Any]) -> dict[str, Any]:
    """Return an in-toto Statement v1 with the Stella evidence predicate type.

    Args:
        subjects: Subject entries (see :func:`image_subject`); duplicates are dropped and the rest sorted.
        predicate: The packet, as :meth:`stella.evidence.packet.EvidencePacket.to_dict` returns it.
    """
    return {
        "_type": STATEMENT_TYPE,
        "subject": sort_subjects(subjects),
        "predicateType": PREDICATE_TYPE,
        "predicate": dict(predicate),
    }


def serialize_statement(statement: Mapping[str, Any]) -> bytes:
    """Return the bytes that get signed: the RFC 8785 canonical form of the statement."""
    return canonicalize(statement)


def parse_statement(payload: bytes) -> dict[str, Any]:
    """Parse and check the shape of a statement payload.

    Returns:
        The statement as a dict, with ``subject`` a list of well-formed image subjects and ``predicate`` an
        object (the predicate itself is checked by :func:`stella.evidence.packet.packet_from_dict`).

    Raises:
        MalformedStatementError: When the payload is not UTF-8 JSON in RFC 8785 canonical form, not a
            Statement v1, or not Stella evidence.
    """
    return parse_statement_canonical(payload)[0]


def parse_statement_canonical(payload: bytes) -> tuple[dict[str, Any], bytes | None]:
    """Parse and check a statement payload like :func:`parse_statement`, and return the canonical bytes of its
    predicate's ``content`` when they were read off the payload.

    The content's canonical bytes are what a packet's ``content_hash`` is taken over (with a few small fields
    around them), so a verifier that has them need not canonicalize the content a second time.

    Returns:
        The statement, and the RFC 8785 bytes of ``statement["predicate"]["content"]`` (``None`` when the
        statement took the general path, e.g. a payload with numbers RFC 8785 spells differently from Python;
        callers then canonicalize the content themselves).

    Raises:
        MalformedStatementError: As :func:`parse_statement`.
    """
    if NATIVE_DECODER is not None:
        read = _read_canonical_native(payload)
        if read is not None:
            return read
    slow: list[bool] = []

    def number_float(text: str) -> float:
        value = float(text)
        spelling = float.__repr__(value)
        if "e" in spelling or spelling.endswith(".0") or not math.isfinite(value):
            slow.append(True)
        return value

    try:
        # The hook builds the same floats json.loads builds by default; it only notes the ones whose RFC 8785
        # spelling the fast encoder below would not produce. Integers are left to the C parser (a hook per
        # integer costs as much as the rest of the parse) and screened on the bytes instead.
        statement = json.loads(payload.decode("utf-8"), parse_float=number_float)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedStatementError(f"payload is not UTF-8 JSON: {exc}") from exc
    _check_statement_shape(statement)
    # Statements are signed in canonical form. Insisting on it rules out duplicate keys (which JSON parsers
    # resolve differently) and numbers that do not survive a round trip, so every verifier reads the same thing.
    if not slow and payload.isascii() and not may_hold_inexact_integer(payload):
        content_bytes = _canonical_content_if_matches(statement, payload, _encode_standard)
        if content_bytes is not None:
            return statement, content_bytes
    try:
        canonical = canonicalize(statement)
    except (ValueError, RecursionError) as exc:
        raise MalformedStatementError(f"statement is not canonicalizable: {exc}") from exc
    if canonical != payload:
        raise MalformedStatementError("payload is not in RFC 8785 canonical form")
    return statement, None


def _read_canonical_native(payload: bytes) -> tuple[dict[str, Any], bytes] | None:
    """The statement and its content's canonical bytes, read with msgspec when the payload is shown canonical.

    The payload is parsed (floats through :func:`stella.contracts.canonical.exact_float`), its shape checked,
    and the statement is rebuilt with msgspec's sorted encoder and compared with the payload. Equal bytes make
    the payload RFC 8785 canonical when msgspec writes the value as RFC 8785 does, which holds unless: a float
    is spelled otherwise (refused while parsing), an integer lies beyond +-(2**53-1)
    (:func:`~stella.contracts.canonical.may_hold_inexact_integer`), or a key holds a character beyond U+FFFF
    (:func:`~stella.contracts.canonical.may_sort_differently`). A lone surrogate cannot be decoded by msgspec;
    any failure, mismatch or shape error returns ``None``, and the caller's general path gives the verdict and
    its message.
    """
    if may_sort_differently(payload):
        return None
    try:
        statement = NATIVE_DECODER.decode(payload)
        _check_statement_shape(statement)
    except (NotShownCanonical, UnicodeDecodeError, MalformedStatementError, ValueError, RecursionError):
        return None
    if may_hold_inexact_integer(payload):
        return None
    content_bytes = _canonical_content_if_matches(statement, payload, NATIVE_ENCODER.encode)
    return None if content_bytes is None else (statement, content_bytes)


def _encode_standard(value: Any) -> bytes:
    return _FAST_ENCODER.encode(value).encode("utf-8")


def _canonical_content_if_matches(
    statement: dict[str, Any], payload: bytes, encode: Callable[[Any], bytes]
) -> bytes | None:
    """Return the canonical bytes of the predicate's content when the payload is the canonical statement.

    Only called for a payload without numbers that need RFC 8785's own spelling (floats noted while parsing,
    integers by :func:`~stella.contracts.canonical.may_hold_inexact_integer`) and, with the standard library's encoder, an ASCII one (a
    ``\\u`` escape of anything else would be written back unescaped and not match): then every integer is
    exact and every float's spelling is its RFC 8785 form, so :func:`canonicalize` would write what ``encode``
    writes, a concatenation of the members' outputs in key order. The statement is rebuilt from the content's
    bytes and its few other members and compared with the payload; ``None`` means "not shown to be canonical
    here" and sends the caller to :func:`canonicalize` for the verdict and its message.
    """
    predicate = statement["predicate"]
    if "content" not in predicate:
        return None
    rest = {key: value for key, value in predicate.items() if key != "content"}
    if not all(key > "content" for key in rest):
        return None  # "content" is not the predicate's first member: not the shape this builds
    try:
        content = encode(predicate["content"])
        rebuilt = b"".join(
            (
                b'{"_type":',
                encode(statement["_type"]),
                b',"predicate":{"content":',
                content,
                b"," + encode(rest)[1:] if rest else b"}",
                b',"predicateType":',
                encode(statement["predicateType"]),
                b',"subject":',
                encode(statement["subject"]),
                b"}",
            )
        )
    except (ValueError, TypeError, UnicodeEncodeError):
        return None
    return content if rebuilt == payload else None


def _check_statement_shape(statement: object) -> None:
    if not isinstance(statement, dict):
        raise MalformedStatementError("statement is not a JSON object")
    if statement.get("_type") != STATEMENT_TYPE:
        raise MalformedStatementError(f"_type is {statement.get('_type')!r}, expected {STATEMENT_TYPE!r}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise MalformedStatementError(
            f"predicateType is {statement.get('predicateType')!r}, expected {PREDICATE_TYPE!r}"
        )
    extra = set(statement) - {"_type", "subject", "predicateType", "predicate"}
    if extra:
        raise MalformedStatementError(f"statement has unexpected fields {sorted(extra)}")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise MalformedStatementError("subject is missing or empty")
    for index, subject in enumerate(subjects):
        digest = subject.get("digest") if isinstance(subject, dict) else None
        if (
            not isinstance(subject, dict)
            or set(subject) != {"name", "digest"}
            or not isinstance(subject.get("name"), str)
            or not isinstance(digest, dict)
            or set(digest) != {"sha256"}
            or not isinstance(digest["sha256"], str)
            or not _SHA256_HEX_RE.fullmatch(digest["sha256"])
        ):
            raise MalformedStatementError(f"subject[{index}] is not {{name, digest: {{sha256: <hex>}}}}")
    if not isinstance(statement.get("predicate"), dict):
        raise MalformedStatementError("predicate is missing or not an object")
