"""RFC 8785 JSON Canonicalization Scheme (JCS) and the ``sha256:`` content hash built on it.

Every hash in evidence is taken over canonical bytes, so two parties holding the same JSON value compute the
same digest whatever key order, whitespace or number spelling their JSON library produced.

The one canonical JSON of the project: evidence content hashes, promotion decision ``inputs_hash`` and
policy digests all go through :func:`canonicalize`. It needs only the standard library and ``rfc8785``, so
the offline evidence verifier can import it on a machine without the services; with msgspec installed (a
dependency of the services) most values are written by msgspec's encoder, shown equal to RFC 8785's output
(:func:`native_canonical`), and anything else by the same path as without it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

import rfc8785

try:
    import msgspec
except ImportError:  # pragma: no cover - the offline verifier runs with the standard library alone
    msgspec = None  # type: ignore[assignment]

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


class NotShownCanonical(Exception):
    """Raised out of a native parse: the JSON may need RFC 8785's own verdict (see :func:`exact_float`)."""


def exact_float(text: str) -> float:
    """The float a JSON text spells, when that spelling is RFC 8785's (raises :class:`NotShownCanonical` else).

    Between 1e-4 and 1e16 Python's ``repr`` of a float is fixed-point with the shortest digits that read back
    to it, which is how RFC 8785 (ECMAScript's ``Number.prototype.toString``) writes it, except that RFC 8785
    writes an integral value without ``.0``. Any other spelling (an exponent, ``3.0``, ``-0.0``, a trailing
    zero) is left to the general path.
    """
    value = float(text)
    if "e" in text or "E" in text or text.endswith(".0") or float.__repr__(value) != text:
        raise NotShownCanonical
    return value


NATIVE_DECODER: Final[Any] = msgspec.json.Decoder(float_hook=exact_float) if msgspec is not None else None
"""msgspec's JSON decoder, reading floats through :func:`exact_float` (``None`` without msgspec)."""

NATIVE_ENCODER: Final[Any] = msgspec.json.Encoder(order="sorted") if msgspec is not None else None
"""msgspec's JSON encoder with keys sorted by code point (``None`` without msgspec). For the values
:func:`native_canonical` lets through its output is RFC 8785's: it escapes exactly what RFC 8785 escapes
(quote, backslash and control characters, with the same short forms and lowercase ``\\u00xx``), writes
integers in digits, and the floats it writes are compared with their RFC 8785 spelling."""

_SUPPLEMENTARY_UTF8: Final[re.Pattern[bytes]] = re.compile(rb"[\xf0-\xf4]")
"""The first byte of a character beyond U+FFFF in UTF-8."""

_INTEGER_CANDIDATES: Final[bytes] = bytes.maketrans(b"123456789,[-", b"000000000:::")
"""Every digit to ``0``; ``,``, ``[`` and ``-`` to ``:``: what may precede an integer's digits becomes ``:``."""

_LONG_INTEGER: Final[re.Pattern[bytes]] = re.compile(rb":0{16,}[:\]}]")
"""After :data:`_INTEGER_CANDIDATES`: 16 digits or more after what may precede a number and before what may
follow one (``,`` ``]`` ``}``, the first now ``:``)."""


def may_hold_inexact_integer(data: bytes) -> bool:
    """Whether compact JSON may write an integer beyond +-(2**53-1), which RFC 8785 cannot represent exactly.

    Such an integer has 16 digits or more. In compact JSON an integer is a run of digits after ``:``, ``,`` or
    ``[`` (and an optional ``-``) and before ``,``, ``}`` or ``]``, or the whole text; one pass of a regular
    expression over the bytes with their digits masked finds every such run of 16 digits or more. A run inside a string that
    happens to sit between the same characters is taken for one too (rare; it only sends the value to the
    general path); digit runs inside digests end at a letter or a quote and are passed over.
    """
    # Framed, so that a number that is the whole JSON text sits between the same characters.
    return _LONG_INTEGER.search(b"".join((b":", data, b",")).translate(_INTEGER_CANDIDATES)) is not None


def may_sort_differently(data: bytes) -> bool:
    """Whether UTF-8 JSON holds a character beyond U+FFFF, the only keys RFC 8785 (UTF-16 code units) and a
    sort by code point put in different orders."""
    return not data.isascii() and _SUPPLEMENTARY_UTF8.search(data) is not None


def native_canonical(value: Any) -> bytes | None:
    """The RFC 8785 bytes of ``value`` written by msgspec, or ``None`` when they are not shown to be those.

    msgspec writes ``value`` with sorted keys; the bytes are read back (floats through :func:`exact_float`)
    and must equal ``value``. Equal, the value is made of JSON types (a datetime, UUID, set, tuple, bytes,
    non-string key, NaN or an object of any other type reads back as something else), every float is spelled
    as RFC 8785 spells it, and when no integer has 16 digits or more and no key can sort differently, the
    bytes are RFC 8785's. ``None`` (also without msgspec) sends the caller to the general path, which gives
    the bytes or the error.
    """
    if NATIVE_ENCODER is None:
        return None
    try:
        data: bytes = NATIVE_ENCODER.encode(value)
    except (TypeError, ValueError, OverflowError):  # not a JSON type msgspec knows, a lone surrogate, ...
        return None
    if may_sort_differently(data) or may_hold_inexact_integer(data):
        return None
    try:
        again = NATIVE_DECODER.decode(data)
    except (NotShownCanonical, ValueError):
        return None
    return data if again == value else None


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
    native = native_canonical(value)
    if native is not None:
        return native
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
