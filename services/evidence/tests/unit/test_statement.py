"""in-toto Statement v1 building and parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stella.contracts import canonical
from stella.contracts.canonical import canonicalize
from stella.evidence import statement as statement_module
from stella.evidence.statement import (
    MalformedStatementError,
    build_statement,
    image_subject,
    parse_statement,
    parse_statement_canonical,
    serialize_statement,
    subjects_from_content,
)

A = "a" * 64
B = "b" * 64


def _content(*components: tuple[str, str]) -> dict[str, Any]:
    return {
        "release": {
            "components": [
                {"name": repo.rsplit("/", 1)[-1], "digest": f"sha256:{digest}", "image_repository": repo}
                for repo, digest in components
            ]
        }
    }


def test_subjects_are_one_per_distinct_image_sorted_by_name_then_digest() -> None:
    content = _content(("reg.io/z/web", A), ("reg.io/a/api", B), ("reg.io/a/api", A), ("reg.io/z/web", A))
    assert subjects_from_content(content) == [
        {"name": "reg.io/a/api", "digest": {"sha256": A}},
        {"name": "reg.io/a/api", "digest": {"sha256": B}},
        {"name": "reg.io/z/web", "digest": {"sha256": A}},
    ]


def test_statement_shape_and_deterministic_bytes() -> None:
    subjects = [image_subject("reg.io/b", B), image_subject("reg.io/a", A)]
    statement = build_statement(subjects, {"id": "x"})
    assert statement == {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "reg.io/a", "digest": {"sha256": A}}, {"name": "reg.io/b", "digest": {"sha256": B}}],
        "predicateType": "https://stella-ops.org/evidence/v1",
        "predicate": {"id": "x"},
    }
    assert serialize_statement(statement) == serialize_statement(build_statement(reversed(subjects), {"id": "x"}))
    assert parse_statement(serialize_statement(statement)) == statement


@pytest.mark.parametrize(
    ("repository", "digest"),
    [
        ("", A),
        ("reg.io/a", "sha256:" + A.upper()),
        ("reg.io/a", "sha512:" + A),
        ("reg.io/a", A[:-1]),
        ("reg.io/a", None),
    ],
)
def test_bad_image_references_are_refused(repository: str, digest: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        image_subject(repository, digest)


def test_content_without_images_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        subjects_from_content({"release": {"components": []}})
    with pytest.raises(ValueError, match=r"release must be an object"):
        subjects_from_content({})
    with pytest.raises(ValueError, match=r"components\[0\]"):
        subjects_from_content({"release": {"components": [{"digest": "sha256:" + A}]}})


def _statement(**changes: Any) -> dict[str, Any]:
    statement = build_statement([image_subject("reg.io/a", A)], {"id": "x"})
    statement.update(changes)
    return statement


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"[]", "not a JSON object"),
        (canonicalize(_statement(_type="https://in-toto.io/Statement/v0.1")), "_type"),
        (canonicalize(_statement(predicateType="https://slsa.dev/provenance/v1")), "predicateType"),
        (canonicalize(_statement(subject=[])), "subject"),
        (canonicalize(_statement(subject=[{"name": "x", "digest": {"sha1": "ab"}}])), r"subject\[0\]"),
        (canonicalize(_statement(predicate=[])), "predicate"),
        (canonicalize(_statement(extra=1)), "unexpected"),
        (json.dumps(_statement(), indent=2).encode(), "canonical form"),
        (
            canonicalize(_statement()).replace(b'{"id":"x"}', b'{"id":"x","id":"y"}'),
            "canonical form",
        ),
        (canonicalize(_statement()).replace(b'{"id":"x"}', b'{"n":1e400}'), "not canonicalizable"),
    ],
)
def test_parse_statement_rejects(payload: bytes, message: str) -> None:
    with pytest.raises(MalformedStatementError, match=message):
        parse_statement(payload)


# ------------------------------------------------------------------ canonical check: fast path against the rule


def _by_the_rule(payload: bytes) -> dict[str, Any] | str:
    """The verdict of the plain rule: parse, check the shape, canonicalize, compare (the error message, if any)."""
    try:
        statement = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"payload is not UTF-8 JSON: {exc}"
    try:
        if not isinstance(statement, dict) or set(statement) != {"_type", "subject", "predicateType", "predicate"}:
            return parse_statement(payload)  # the shape errors are the same code on both paths
        canonical = canonicalize(statement)
    except MalformedStatementError as exc:
        return str(exc)
    except ValueError as exc:
        return f"statement is not canonicalizable: {exc}"
    return statement if canonical == payload else "payload is not in RFC 8785 canonical form"


@pytest.fixture(params=["msgspec", "standard library"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of reading a statement: with msgspec (installed here), and as without it."""
    if request.param == "standard library":
        monkeypatch.setattr(statement_module, "NATIVE_DECODER", None)
        monkeypatch.setattr(canonical, "NATIVE_ENCODER", None)
    return str(request.param)


def _verdict(payload: bytes) -> tuple[dict[str, Any] | str, bytes | None]:
    try:
        return parse_statement_canonical(payload)
    except MalformedStatementError as exc:
        return str(exc), None


def _statement_with(content: dict[str, Any], **predicate: Any) -> dict[str, Any]:
    return build_statement([image_subject("registry.example.com/a", A)], {"content": content, **predicate})


GOOD = serialize_statement(_statement_with(_content(("registry.example.com/a", A)), sequence=3, id="x"))


@pytest.mark.parametrize(
    "payload",
    [
        GOOD,
        GOOD.replace(b'"sequence":3', b'"sequence":3.5'),
        GOOD.replace(b'"sequence":3', b'"sequence":3.0'),  # RFC 8785 writes 3
        GOOD.replace(b'"sequence":3', b'"sequence":1e-07'),  # RFC 8785 writes 1e-7
        GOOD.replace(b'"sequence":3', b'"sequence":1e-7'),
        GOOD.replace(b'"sequence":3', b'"sequence":100000000000000000000'),  # RFC 8785 writes 1e+20
        GOOD.replace(b'"sequence":3', b'"sequence":1e+20'),
        GOOD.replace(b'"sequence":3', b'"sequence":9007199254740993'),  # beyond 2**53
        GOOD.replace(b'"sequence":3', b'"sequence":-9007199254740993'),
        GOOD.replace(b'"sequence":3', b'"sequence":[9007199254740993]'),
        GOOD.replace(b'"sequence":3', b'"sequence":[1,90071992547409930,2]'),
        GOOD.replace(b'"sequence":3', b'"sequence":{"a":12345678901234567890}'),
        GOOD.replace(b'"sequence":3', b'"sequence":9007199254740991'),  # the largest exact one: 16 digits
        GOOD.replace(b'"sequence":3', b'"sequence":123456789012345'),
        GOOD.replace(b'"id":"x"', b'"id":"n:9007199254740993,"'),  # looks like an integer, inside a string
        GOOD.replace(b'"id":"x"', b'"id":"sha256:9007199254740993900719925474099390071992547409939007199254"'),
        GOOD.replace(b'"sequence":3', b'"sequence":-0'),
        GOOD.replace(b'"sequence":3', b'"sequence":NaN'),
        GOOD.replace(b'"sequence":3', b'"sequence": 3'),
        GOOD.replace(b'"id":"x"', b'"id":"\\u00e9"'),  # escaped where RFC 8785 writes the character
        GOOD.replace(b'"id":"x"', '"id":"\u00e9"'.encode()),
        GOOD.replace(b'"id":"x"', b'"id":"\\ud800"'),  # a lone surrogate
        GOOD.replace(b'"id":"x"', b'"id":"\\ud83d\\ude00"'),
        GOOD.replace(b'"id":"x"', b'"id":"\\u001f\\n"'),
        GOOD.replace(b'"id":"x"', b'"id":"\\u001F"'),
        GOOD.replace(b'"id":"x"', b'"id":"\\/"'),
        GOOD.replace(b'"id":"x"', b'"id":"x","id":"x"'),  # a duplicate key
        GOOD.replace(b'"id":"x"', b'"a":1,"id":"x"'),  # keys out of order
        GOOD.replace(b'{"content":', b'{"a":1,"content":'),  # a member sorting before content
        GOOD.replace(b'"predicate":{"content":{', b'"predicate":{"contenT":0,"content":{'),
        GOOD.replace(b',"sequence":3', b""),
        GOOD + b" ",
        # 0.000015 is RFC 8785's spelling, not Python's repr; the others are not RFC 8785's, or not numbers.
        *(
            GOOD.replace(b'"sequence":3', b'"sequence":' + number)
            for number in (b"0.000015", b"1.5e-05", b"-0.5", b"-0.0", b"0.10", b"1E5", b"1e21", b"1e+21")
        ),
        *(
            GOOD.replace(b'"sequence":3', b'"sequence":' + number)
            for number in (b"10000000000000000", b"1e16", b"123456.789", b"1e400", b"true")
        ),
        GOOD.replace(b'"id":"x"', '"id":"\u00e9\u2028\u00ff\uffff"'.encode()),  # RFC 8785 writes these raw
        GOOD.replace(b'"id":"x"', '"id":"\u2028"'.encode("ascii", "backslashreplace")),
        GOOD.replace(b'"id":"x"', b'"id":"\x7f"'),
        GOOD.replace(b'"id":"x"', b'"id":"\\u007f"'),
        GOOD.replace(b'"id":"x"', b'"id":"\\u000B\\u001b"'),
        GOOD.replace(b'"id":"x"', b'"id":"\\b\\t\\f\\r"'),
        GOOD.replace(b'"id":"x"', b'"id":"\\u0008"'),  # RFC 8785 writes \b
        GOOD.replace(b'"id":"x"', '"id":"\U0001f600"'.encode()),  # beyond U+FFFF, as a value
        # Keys beyond U+FFFF: RFC 8785 sorts by UTF-16 code units, which puts U+1F600 before U+E000.
        GOOD.replace(b'"id":"x"', '"id":{"\U0001f600":1,"\ue000":2}'.encode()),
        GOOD.replace(b'"id":"x"', '"id":{"\ue000":2,"\U0001f600":1}'.encode()),
        GOOD.replace(b'"id":"x"', '"id":{"b":1,"\u00e9":2}'.encode()),
        GOOD.replace(b'"id":"x"', '"id":{"\u00e9":2,"b":1}'.encode()),
        GOOD.replace(b'"id":"x"', b'"id":"\xed\xa0\x80"'),  # a surrogate in UTF-8: not UTF-8
        GOOD.replace(b'"id":"x"', b'"id":"\xff"'),
        GOOD.replace(b'"id":"x"', b'"id":"a\x00b"'),  # a raw control character
        GOOD.replace(b'"predicate":{', b'"predicate":['),
        b"\xef\xbb\xbf" + GOOD,  # a byte order mark
        b"[]",
        b"",
    ],
)
def test_canonical_check_gives_the_verdict_of_the_rule(payload: bytes, reader: str) -> None:
    verdict, content_bytes = _verdict(payload)
    assert verdict == _by_the_rule(payload)
    if content_bytes is not None:
        assert isinstance(verdict, dict)
        assert content_bytes == canonicalize(verdict["predicate"]["content"])


def test_canonical_check_returns_the_content_bytes_of_an_ordinary_statement(reader: str) -> None:
    statement, content_bytes = parse_statement_canonical(GOOD)
    assert content_bytes == canonicalize(statement["predicate"]["content"])
    assert content_bytes is not None and content_bytes in GOOD


@pytest.mark.parametrize(
    ("payload", "shown"),
    [
        (GOOD, True),
        (GOOD.replace(b'"sequence":3', b'"sequence":-0.5'), True),
        (GOOD.replace(b'"id":"x"', '"id":"\u00e9\u2028"'.encode()), True),
        (GOOD.replace(b'"id":"x"', '"id":{"b":1,"\u00e9":2}'.encode()), True),
        (GOOD.replace(b'"sequence":3', b'"sequence":3.0'), False),
        (GOOD.replace(b'"sequence":3', b'"sequence":9007199254740993'), False),
        (GOOD.replace(b'"id":"x"', '"id":"\U0001f600"'.encode()), False),
        (GOOD.replace(b'"id":"x"', b'"a":1,"id":"x"'), False),
    ],
)
def test_the_native_reader_shows_ordinary_statements_canonical_and_leaves_the_rest(payload: bytes, shown: bool) -> None:
    read = statement_module._read_canonical_native(payload)
    assert (read is not None) == shown
    if read is not None:
        assert canonicalize(read[0]) == payload
        assert read[1] == canonicalize(read[0]["predicate"]["content"])


@pytest.mark.parametrize("depth", [900, 2000, 100_000])
def test_a_payload_nested_too_deeply_is_malformed_not_a_crash(depth: int, reader: str) -> None:
    """Where a reader's depth limit lies depends on the reader and the stack: either way, no crash."""
    payload = GOOD.replace(b'"id":"x"', b'"id":' + b"[" * depth + b"]" * depth)
    verdict, _ = _verdict(payload)
    if depth == 100_000:
        assert isinstance(verdict, str) and "recursion" in verdict
    else:
        assert isinstance(verdict, dict) or "recursion" in verdict
