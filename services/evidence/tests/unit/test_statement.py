"""in-toto Statement v1 building and parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stella.contracts.canonical import canonicalize
from stella.evidence.statement import (
    MalformedStatementError,
    build_statement,
    image_subject,
    parse_statement,
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
