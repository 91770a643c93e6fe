"""RFC 8785 JSON Canonicalization Scheme (JCS) and the ``sha256:`` content hash built on it.

Every hash in evidence is taken over canonical bytes, so two parties holding the same JSON value compute the
same digest whatever key order, whitespace or number spelling their JSON library produced.

The one canonical JSON of the project: evidence content hashes, promotion decision ``inputs_hash`` and
policy digests all go through :func:`canonicalize`. It needs only the standard library and ``rfc8785``, so
the offline evidence verifier can import it on a machine without the services.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

import rfc8785

HASH_PREFIX: Final[str] = "sha256:"
"""Prefix of every content hash: the algorithm name, as in OCI digests."""

_HASH_RE: Final[re.Pattern[str]] = re.compile(r"sha256:[0-9a-f]{64}")

_MAX_SAFE_INTEGER: Final[int] = 2**53 - 1
"""Largest integer an IEEE 754 double holds exactly; RFC 8785 numbers are doubles."""


class CanonicalizationError(ValueError):
    """The value cannot be put in canonical JSON form.

    Attributes:
        path: JSON-path-like location of the offending value (``$`` is the root).
        reason: What is wrong with it.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot canonicalize {path}: {reason}")
        self.path = path
        self.reason = reason


class _Invalid(Exception):
    """Raised deep in the walk; each level on the way out records its key, so a valid value pays nothing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.keys: list[str | int] = []


def _format_path(keys: list[str | int]) -> str:
    path = "$"
    for key in reversed(keys):
        if isinstance(key, int):
            path += f"[{key}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            path += f".{key}"
        else:
            path += f"[{key!r}]"
    return path


_FOREIGN: Final[int] = 1
"""Flag: the value holds a mapping that is not a ``dict`` and must be converted before serializing."""

_SLOW: Final[int] = 2
"""Flag: the fast serializer would not produce the RFC 8785 form; use the reference one."""

_FAST_ENCODER: Final[json.JSONEncoder] = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)
"""The standard library's C encoder, configured so that its output is RFC 8785 whenever :func:`_check` allows.

With these settings it escapes exactly what RFC 8785 escapes (quote, backslash, control characters, with
the same short forms and lowercase ``\\u00xx``), writes integers the same way and sorts keys by code point,
which equals RFC 8785's UTF-16 order unless a key holds a character beyond U+FFFF. Floats are the only other
difference (``1.0`` against ``1``, ``1e-07`` against ``1e-7``), so a value takes this path only when every
float's ``repr`` is already its RFC 8785 spelling; the result is byte-identical and several times faster.
"""


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid("string holds a lone surrogate (not valid UTF-8)") from None


def _check_float(value: float) -> int:
    if not math.isfinite(value):
        raise _Invalid(f"{value!r} is not a finite number")
    # Both spellings use the shortest round-trip digits; they differ only where Python writes an exponent
    # (|x| < 1e-4 or >= 1e16) or a trailing ".0" (integral values, zero).
    spelling = float.__repr__(value)
    return _SLOW if "e" in spelling or spelling.endswith(".0") else 0


def _check_item(item: Any) -> int:
    """Check a member of a container, settling the common scalar types without a recursive call."""
    kind = type(item)
    if kind is str:
        if not item.isascii():
            _check_text(item)
        return 0
    if kind is int:
        if not -_MAX_SAFE_INTEGER <= item <= _MAX_SAFE_INTEGER:
            raise _Invalid(f"integer {item} is outside the exact range of a JSON number")
        return 0
    if item is None or kind is bool:
        return 0
    if kind is float:
        return _check_float(item)
    return _check(item)


def _check(value: Any) -> int:
    """Walk ``value`` and raise on anything RFC 8785 cannot represent faithfully.

    ``rfc8785`` already refuses most of these, but without saying where; evidence content is built by several
    services, so the error names the exact path. Exact built-in types are dispatched on ``type()`` first
    because this walk runs over every hashed value; subclasses take the ``isinstance`` route (``bool`` before
    ``int``, as it is a subclass of it).

    Returns:
        The :data:`_FOREIGN` and :data:`_SLOW` flags that apply to ``value``.
    """
    kind = type(value)
    if kind is str:
        _check_text(value)
        return 0
    if kind is dict or (kind is not list and kind is not tuple and isinstance(value, Mapping)):
        flags = 0 if kind is dict else _FOREIGN
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise _Invalid(f"object key {key!r} is a {type(key).__name__}, not a string")
            try:
                if not key.isascii():
                    _check_text(key)
                    if any(char > "\uffff" for char in key):
                        flags |= _SLOW
                flags |= _check_item(item)
            except _Invalid as exc:
                exc.keys.append(key)
                raise
        return flags
    if kind is list or kind is tuple or isinstance(value, list | tuple):
        flags = 0
        for index, item in enumerate(value):
            try:
                flags |= _check_item(item)
            except _Invalid as exc:
                exc.keys.append(index)
                raise
        return flags
    if value is None or isinstance(value, bool):
        return 0
    if isinstance(value, int):
        if not -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
            raise _Invalid(f"integer {value} is outside the exact range of a JSON number")
        return 0
    if isinstance(value, float):
        return _check_float(value)
    if isinstance(value, str):
        _check_text(value)
        return 0
    raise _Invalid(f"{type(value).__name__} is not a JSON type")


def canonicalize(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON value.

    Args:
        value: ``None``, ``bool``, ``int``, ``float``, ``str``, or lists/tuples and string-keyed mappings of
            those. Anything else (datetimes, UUIDs, bytes, sets, enums that are not ``str``) must be
            converted by the caller: the canonical form must not depend on an implicit conversion.

    Returns:
        The canonical serialization.

    Raises:
        CanonicalizationError: For non-finite floats, integers beyond +-(2**53-1), non-string keys, lone
            surrogates or non-JSON types; the error names the path of the offending value.
    """
    try:
        flags = _check(value)
    except _Invalid as exc:
        raise CanonicalizationError(_format_path(exc.keys), exc.reason) from None
    if flags & _FOREIGN:
        value = _plain(value)
    if not flags & _SLOW:
        return _FAST_ENCODER.encode(value).encode("utf-8")
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalizationError("$", str(exc)) from exc


def _plain(value: Any) -> Any:
    """Turn non-dict mappings into dicts; ``rfc8785`` only knows ``dict``, ``list`` and ``tuple``."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def sha256_digest(data: bytes) -> str:
    """Return ``"sha256:<hex>"`` for raw bytes."""
    return HASH_PREFIX + hashlib.sha256(data).hexdigest()


def content_hash(value: Any) -> str:
    """Return ``"sha256:<hex>"`` of the SHA-256 over the RFC 8785 canonical bytes of ``value``.

    Raises:
        CanonicalizationError: When ``value`` is not canonicalizable (see :func:`canonicalize`).
    """
    return sha256_digest(canonicalize(value))


def is_content_hash(value: object) -> bool:
    """Tell whether ``value`` is a well-formed ``sha256:`` followed by 64 lowercase hex digits."""
    return isinstance(value, str) and _HASH_RE.fullmatch(value) is not None
