"""RFC 8785 canonicalization and content hashes."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from types import MappingProxyType
from typing import Any

import msgspec
import pytest
import rfc8785

from stella.contracts import canonical
from stella.contracts.canonical import (
    CanonicalizationError,
    canonicalize,
    content_hash,
    is_content_hash,
    native_canonical,
    sha256_digest,
)


@pytest.fixture(autouse=True, params=["msgspec", "standard library"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: with msgspec writing what it is shown to write as RFC 8785 does, and without it."""
    if request.param == "standard library":
        monkeypatch.setattr(canonical, "NATIVE_ENCODER", None)
    return str(request.param)


def test_object_keys_are_sorted_by_utf16_code_units_at_every_depth() -> None:
    value = {
        "\u20ac": "euro",
        "\r": "cr",
        "\ufb33": "dalet",
        "1": "one",
        "\U0001f600": "emoji",
        "\u0080": "control",
        "\u00f6": "o-umlaut",
        "nested": {"b": 1, "a": 2, "B": 3},
    }
    # U+1F600 is the surrogate pair D83D DE00 in UTF-16, so it sorts before U+FB33 although its code point is larger.
    expected = (
        '{"\\r":"cr","1":"one","nested":{"B":3,"a":2,"b":1},"\u0080":"control","\u00f6":"o-umlaut",'
        '"\u20ac":"euro","\U0001f600":"emoji","\ufb33":"dalet"}'
    )
    assert canonicalize(value) == expected.encode("utf-8")


def test_whitespace_and_insertion_order_do_not_matter() -> None:
    assert canonicalize({"b": [1, 2], "a": {"y": None, "x": True}}) == b'{"a":{"x":true,"y":null},"b":[1,2]}'
    assert canonicalize(OrderedDict([("z", 1), ("a", 2)])) == canonicalize({"a": 2, "z": 1})
    assert canonicalize(MappingProxyType({"k": (1, 2)})) == b'{"k":[1,2]}'


@pytest.mark.parametrize(
    ("number", "spelling"),
    [
        (0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-1.5, "-1.5"),
        (100, "100"),
        (4.50, "4.5"),
        (0.002, "0.002"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1e30, "1e+30"),
        (123456789.125, "123456789.125"),
        (333333333.33333329, "333333333.3333333"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (2**53 - 1, "9007199254740991"),
        (-(2**53 - 1), "-9007199254740991"),
    ],
)
def test_numbers_use_the_ecmascript_shortest_form(number: float, spelling: str) -> None:
    assert canonicalize([number]) == f"[{spelling}]".encode()


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("plain", b'"plain"'),
        ('quote " and backslash \\', b'"quote \\" and backslash \\\\"'),
        ("\b\f\n\r\t", b'"\\b\\f\\n\\r\\t"'),
        ("\x00\x01\x1f", b'"\\u0000\\u0001\\u001f"'),
        ("\x7f", b'"\x7f"'),
        ("/", b'"/"'),
        ("caf\u00e9 \u20ac \U0001f680", '"caf\u00e9 \u20ac \U0001f680"'.encode()),
        ("\u2028", '"\u2028"'.encode()),
    ],
)
def test_strings_escape_only_what_json_requires_and_stay_utf8(text: str, encoded: bytes) -> None:
    assert canonicalize(text) == encoded


def test_literals() -> None:
    assert canonicalize([True, False, None, "", [], {}]) == b'[true,false,null,"",[],{}]'


@pytest.mark.parametrize(
    ("value", "path", "reason"),
    [
        ({"a": [1, {"b": float("nan")}]}, "$.a[1].b", "not a finite number"),
        ({"x": float("inf")}, "$.x", "not a finite number"),
        ([float("-inf")], "$[0]", "not a finite number"),
        ({"big": 2**53}, "$.big", "outside the exact range"),
        ({"small": -(2**53)}, "$.small", "outside the exact range"),
        ({"when": datetime(2025, 1, 1, tzinfo=UTC)}, "$.when", "datetime is not a JSON type"),
        ({"id": uuid.UUID(int=1)}, "$.id", "UUID is not a JSON type"),
        ({"raw": b"bytes"}, "$.raw", "bytes is not a JSON type"),
        ({"set": {1, 2}}, "$.set", "set is not a JSON type"),
        ({"money": Decimal("1.10")}, "$.money", "Decimal is not a JSON type"),
        ({"odd key": {1: "x"}}, "$['odd key']", "object key 1 is a int"),
    ],
)
def test_values_json_cannot_carry_exactly_are_rejected_with_their_path(value: object, path: str, reason: str) -> None:
    with pytest.raises(CanonicalizationError) as caught:
        canonicalize(value)
    assert caught.value.path == path
    assert reason in caught.value.reason


def test_lone_surrogates_are_rejected() -> None:
    with pytest.raises(CanonicalizationError, match="lone surrogate") as caught:
        canonicalize({"list": ["ok", "\ud800"]})
    assert caught.value.path == "$.list[1]"
    with pytest.raises(CanonicalizationError, match="lone surrogate"):
        canonicalize({"\udfff": 1})


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value mixing the cases where a naive serializer differs from RFC 8785."""
    alphabet = ["a", "Z", "0", " ", '"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u00e9", "\u2028", "\ufb33", "\U0001f600"]
    floats = [0.1, 1.0, -0.0, 1e-7, 1e-6, 1e16, 1e21, 1e22, 123.456, 5e-324, 2.5e-8, 1 / 3, 1e300, -1.5]

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))

    kind = rng.randint(0, 9 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randint(-(2**53) + 1, 2**53 - 1)
    if kind == 3:
        return rng.choice(floats) * rng.choice([1, -1, 10, 0.001])
    if kind in (4, 5):
        return text()
    if kind in (6, 7):
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {text(): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


@pytest.mark.parametrize("seed", range(20))
def test_output_is_byte_identical_to_the_reference_implementation(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        value = _random_value(rng)
        assert canonicalize(value) == rfc8785.dumps(value), value


def test_content_hash_is_sha256_over_the_canonical_bytes() -> None:
    value = {"b": 1, "a": "\u00e9"}
    assert content_hash(value) == "sha256:" + hashlib.sha256('{"a":"\u00e9","b":1}'.encode()).hexdigest()
    assert content_hash({"a": "\u00e9", "b": 1.0}) == content_hash(value)
    assert content_hash(value) != content_hash({"a": "e", "b": 1})


def test_known_answer_for_the_empty_object() -> None:
    assert content_hash({}) == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_hash_shape_helpers() -> None:
    digest = sha256_digest(b"")
    assert digest == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert is_content_hash(digest)
    assert not is_content_hash(digest.upper())
    assert not is_content_hash(digest[:-1])
    assert not is_content_hash("md5:" + "0" * 64)
    assert not is_content_hash(None)


class Colour(StrEnum):
    RED = "red"


class Level(IntEnum):
    HIGH = 3


class Plain(Enum):
    ONE = "one"


class Key(str):
    """A str subclass, as a key and as a value."""


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ({"b": [1, 0.5, "x", None, True], "a": {"\u00e9": -2, "\u2028": "\x1f"}}, True),
        ("text", True),
        (0.000015, False),  # RFC 8785's spelling, not Python's repr: the general path writes it
        (3.0, False),
        (-0.0, False),
        (float("nan"), False),
        (2**53, False),
        (9007199254740991, False),  # 16 digits: left to the general path, which writes it
        ([-(2**53)], False),
        ({"n": -12345678901234567}, False),
        (123456789012345, True),
        ({"\U0001f600": 1, "\ue000": 2}, False),  # RFC 8785 sorts by UTF-16 code units
        (("a", 1), False),
        ({"t": ("a",)}, False),
        ({1: "x"}, False),
        ({"s": {1}}, False),
        (uuid.UUID(int=1), False),
        (datetime(2025, 1, 1, tzinfo=UTC), False),
        (Decimal("1.5"), False),
        (b"x", False),
        (Plain.ONE, False),
        (OrderedDict(a=1), None),
        (MappingProxyType({"a": 1}), False),
        ({"x": "\ud800"}, False),
    ],
)
def test_msgspec_writes_only_what_it_is_shown_to_write_as_rfc_8785_does(
    value: object, shown: bool | None, writer: str
) -> None:
    native = native_canonical(value)
    if writer == "standard library":
        assert native is None
        return
    if shown is not None:
        assert (native is not None) == shown
    if native is not None:
        assert native == rfc8785.dumps(value)  # type: ignore[arg-type]
    assert _outcome(value) == _outcome(value, general=True)


def _outcome(value: object, *, general: bool = False) -> bytes | str:
    """What canonicalize gives (its bytes, or its error), with msgspec where it is trusted or on the general path."""
    with pytest.MonkeyPatch.context() as patch:
        if general:
            patch.setattr(canonical, "NATIVE_ENCODER", None)
        try:
            return canonicalize(value)
        except CanonicalizationError as exc:
            return str(exc)


def test_subclasses_of_json_types_are_written_alike_on_both_paths() -> None:
    value = {Key("k"): [Colour.RED, Level.HIGH, Key("v")], "n": Level.HIGH}
    assert canonicalize(value) == b'{"k":["red",3,"v"],"n":3}'


@pytest.mark.parametrize("seed", range(5))
def test_msgspec_writes_most_random_values_and_exactly_rfc_8785(seed: int, writer: str) -> None:
    rng = random.Random(seed)
    written = 0
    for _ in range(200):
        value = _random_value(rng)
        native = native_canonical(value)
        if native is not None:
            written += 1
            assert native == rfc8785.dumps(value), value
    assert written == 0 if writer == "standard library" else written > 40


def test_msgspec_writes_what_rfc_8785_writes_for_what_it_is_trusted_with() -> None:
    """The native reader's premise: for text without characters beyond U+FFFF, integers within 2**53 and keys
    sorted by code point, msgspec's sorted encoding is RFC 8785's (escapes, raw characters, integers, order)."""
    encode = msgspec.json.Encoder(order="sorted").encode
    bmp = "".join(chr(code) for code in range(0x10000) if not 0xD800 <= code <= 0xDFFF)
    assert encode(bmp) == canonicalize(bmp)
    keys = {chr(code) + "k": code for code in range(0, 0x10000, 7) if not 0xD800 <= code <= 0xDFFF}
    assert encode(keys) == canonicalize(keys)
    integers = [0, -1, 1, 2**31, -(2**31) - 1, 2**53 - 1, -(2**53 - 1), 10**15]
    assert encode(integers) == canonicalize(integers)
    floats = [0.5, -0.25, 0.12, 123456.789, 1e-4, 0.3333333333333333, 9999999999999998.0 / 3]
    assert [text for text in (float.__repr__(value) for value in floats) if "e" not in text] == [
        encode(value).decode() for value in floats if "e" not in float.__repr__(value)
    ]
    assert encode([True, False, None, [], {}]) == canonicalize([True, False, None, [], {}])
