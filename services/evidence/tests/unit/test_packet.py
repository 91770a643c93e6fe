"""Evidence packets: building, hashing, secret refusal, signing and single-packet verification."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from stella.contracts.canonical import canonicalize, content_hash
from stella.evidence import packet as packet_module
from stella.evidence.dsse import MalformedEnvelopeError, sign_envelope
from stella.evidence.keys import BadSignatureError, KeyAlgorithm, PublicKeyRing, UnknownKeyError, generate_key
from stella.evidence.packet import (
    ChainError,
    ChainHead,
    CheckedContent,
    EvidenceContentError,
    EvidencePacket,
    MalformedPacketError,
    PacketHashMismatchError,
    PacketType,
    SecretInEvidenceError,
    SignerMismatchError,
    SubjectMismatchError,
    build_packet,
    check_content,
    compute_packet_hash_from_content_bytes,
    format_timestamp,
    packet_from_dict,
    packet_hash_input,
    parse_timestamp,
    reject_secrets,
    sign_packet,
    verify_packet_envelope,
)
from stella.evidence.statement import PAYLOAD_TYPE, MalformedStatementError, serialize_statement

NOW = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
TENANT = uuid.UUID("00000000-0000-4000-8000-000000000001")


def _build(content: dict[str, Any] | CheckedContent, head: ChainHead | None = None, **overrides: Any) -> EvidencePacket:
    arguments: dict[str, Any] = {
        "packet_id": uuid.UUID("00000000-0000-4000-8000-0000000000aa"),
        "tenant_id": TENANT,
        "packet_type": PacketType.DEPLOYMENT,
        "content": content,
        "head": head or ChainHead.empty(),
        "created_at": NOW,
        "signer_key_ref": "ed25519:0000000000000000",
        "promotion_id": uuid.UUID("00000000-0000-4000-8000-0000000000bb"),
    }
    arguments.update(overrides)
    return build_packet(**arguments)


def test_first_packet_starts_the_chain(content: dict[str, Any]) -> None:
    packet = _build(content)
    assert packet.sequence == 1
    assert packet.previous_hash is None
    assert packet.content_hash == packet.compute_hash()
    assert packet.head == ChainHead(sequence=1, content_hash=packet.content_hash)


def test_next_packet_links_to_the_head(content: dict[str, Any]) -> None:
    first = _build(content)
    second = _build(content, head=first.head, packet_id=uuid.uuid4())
    assert second.sequence == 2
    assert second.previous_hash == first.content_hash
    assert second.content_hash != first.content_hash


def test_content_hash_is_exactly_the_documented_object(content: dict[str, Any]) -> None:
    packet = _build(content)
    documented = {
        "content": packet.content,
        "created_at": "2025-06-01T12:00:00.123456Z",
        "id": "00000000-0000-4000-8000-0000000000aa",
        "packet_type": "deployment",
        "previous_hash": None,
        "promotion_id": "00000000-0000-4000-8000-0000000000bb",
        "sequence": 1,
        "tenant_id": str(TENANT),
    }
    assert packet.content_hash == content_hash(documented)
    assert (
        packet_hash_input(
            packet_id=packet.id,
            tenant_id=packet.tenant_id,
            packet_type=packet.packet_type,
            promotion_id=packet.promotion_id,
            sequence=packet.sequence,
            previous_hash=packet.previous_hash,
            content=packet.content,
            created_at=packet.created_at,
        )
        == documented
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", uuid.UUID("00000000-0000-4000-8000-0000000000cc")),
        ("tenant_id", uuid.UUID("00000000-0000-4000-8000-000000000002")),
        ("packet_type", PacketType.ROLLBACK),
        ("promotion_id", None),
        ("sequence", 2),
        ("previous_hash", "sha256:" + "1" * 64),
        ("created_at", NOW + timedelta(microseconds=1)),
        ("content", {"release": {"components": []}}),
    ],
)
def test_every_hashed_field_changes_the_hash(content: dict[str, Any], field: str, value: Any) -> None:
    packet = _build(content)
    assert dataclasses.replace(packet, **{field: value}).compute_hash() != packet.content_hash


def test_signer_key_ref_is_not_hashed(content: dict[str, Any]) -> None:
    packet = _build(content)
    assert (
        dataclasses.replace(packet, signer_key_ref="ecdsa-p256:1111111111111111").compute_hash() == packet.content_hash
    )


def test_created_at_is_stored_in_utc_and_naive_times_are_refused(content: dict[str, Any]) -> None:
    paris = timezone(timedelta(hours=2))
    packet = _build(content, created_at=datetime(2025, 6, 1, 14, 0, tzinfo=paris))
    assert packet.created_at == datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert packet.created_at.tzinfo is UTC
    assert packet.to_dict()["created_at"] == "2025-06-01T12:00:00.000000Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        _build(content, created_at=datetime(2025, 6, 1, 12, 0))


def test_timestamp_round_trip_and_strict_parsing() -> None:
    assert parse_timestamp(format_timestamp(NOW)) == NOW
    for bad in ("2025-06-01T12:00:00Z", "2025-06-01 12:00:00.000000Z", "2025-06-01T12:00:00.000000+00:00"):
        with pytest.raises(ValueError, match="YYYY"):
            parse_timestamp(bad)


def test_content_is_normalized_to_what_is_hashed(content: dict[str, Any]) -> None:
    content["environment"]["targets"] = ("host-a", "host-b")
    content["decision"]["gates"][0]["details"]["score"] = 1.0
    packet = _build(content)
    assert packet.content["environment"]["targets"] == ["host-a", "host-b"]
    assert packet.content["decision"]["gates"][0]["details"]["score"] == 1
    content["actors"]["requester"] = "mallory"  # the caller's dict is not shared with the packet
    assert packet.content["actors"]["requester"] == "alice"


def test_content_checked_once_builds_the_same_packet_without_a_second_check(
    content: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    content["decision"]["gates"][0]["details"]["score"] = 1.0
    checked = check_content(content)
    assert checked.value["decision"]["gates"][0]["details"]["score"] == 1
    checks: list[object] = []
    real = packet_module.check_content

    def counted(value: Any) -> CheckedContent:
        checks.append(value)
        return real(value)

    monkeypatch.setattr(packet_module, "check_content", counted)
    assert _build(checked) == _build(content)
    assert len(checks) == 1  # the plain content's, not the checked one's
    content["execution"]["deep"] = {"password": "hunter2"}
    with pytest.raises(SecretInEvidenceError):
        check_content(content)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"numbers": {"one": 1.0, "small": 1e-7, "large": 1e21, "zero": -0.0, "half": 0.5, "edge": 2**53 - 1}},
        {"text": {"ключ": "значение", "\U0001f600": "beyond the BMP", "\ue000": "private use", "a\u2028": "sep"}},
        {"escapes": ['"quoted"', "back\\slash", "line\nbreak", "\u0001\u001f", "\u00e9"]},
        {"shapes": [[[]], {}, None, True, False, [{"b": 1, "a": 2}]]},
    ],
)
@pytest.mark.parametrize("promotion_id", [None, uuid.UUID("00000000-0000-4000-8000-0000000000bb")])
def test_a_packet_of_checked_content_signs_and_hashes_the_bytes_of_its_full_encoding(
    content: dict[str, Any], extra: dict[str, Any], promotion_id: uuid.UUID | None
) -> None:
    content["execution"]["extra"] = extra
    packet = _build(check_content(content), promotion_id=promotion_id)
    assert packet.content_bytes is not None
    read_back = dataclasses.replace(packet, checked=None)  # as a packet read from the store
    assert packet_module.statement_bytes(packet) == serialize_statement(read_back.statement())
    assert packet.content_hash == read_back.compute_hash()
    key = generate_key()
    signed = _build(check_content(content), promotion_id=promotion_id, signer_key_ref=key.key_ref)
    assert verify_packet_envelope(sign_packet(signed, key), PublicKeyRing([key.public_key])) == signed
    # A copy with other content has no bytes of its own: it is signed as it reads, not as the original did.
    other = {**signed.content, "actors": {"requester": "mallory"}}
    edited = dataclasses.replace(signed, content=other)
    assert edited.content_bytes is None
    assert packet_module.statement_bytes(edited) == serialize_statement(edited.statement())


def test_a_number_rfc_8785_writes_as_an_integer_beyond_the_exact_range_is_refused_when_checked(
    content: dict[str, Any],
) -> None:
    content["execution"]["count"] = 1e20  # written 100000000000000000000: read back, it could not be hashed
    with pytest.raises(EvidenceContentError, match="outside the exact range"):
        check_content(content)
    content["execution"]["count"] = 1e15  # within the range: read back as the integer it equals
    assert check_content(content).value["execution"]["count"] == 10**15


def test_chain_head_invariants() -> None:
    assert ChainHead.empty().next_sequence == 1
    with pytest.raises(ChainError):
        ChainHead(sequence=0, content_hash="sha256:" + "0" * 64)
    with pytest.raises(ChainError):
        ChainHead(sequence=3, content_hash=None)
    with pytest.raises(ChainError):
        ChainHead(sequence=-1)
    with pytest.raises(ChainError):
        ChainHead(sequence=2, content_hash="sha256:short")


@pytest.mark.parametrize(
    ("location", "key"),
    [
        ("environment", "password"),
        ("environment", "DB_Password"),
        ("actors", "apiToken"),
        ("execution", "client_secret"),
        ("execution", "x-api-key"),
        ("decision", "Authorization"),
        ("decision", "privateKey"),
        ("environment", "registry_credentials"),
        ("environment", "session_cookie"),
    ],
)
def test_secret_looking_keys_are_refused_at_any_depth(content: dict[str, Any], location: str, key: str) -> None:
    nested = copy.deepcopy(content)
    nested[location]["deep"] = [{"ok": 1}, {"inner": {key: "hunter2"}}]
    with pytest.raises(SecretInEvidenceError) as caught:
        _build(nested)
    assert caught.value.path == f"$.{location}.deep[1].inner.{key}"


def test_references_to_secrets_are_allowed(content: dict[str, Any]) -> None:
    content["execution"]["registry"] = {"credential_ref": "vault://kv/registry", "secretRefs": ["a"]}
    assert _build(content).content["execution"]["registry"]["credential_ref"] == "vault://kv/registry"


@pytest.mark.parametrize(
    "value",
    [
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----",
        "see -----BEGIN EC PRIVATE KEY----- here",
        "https://deploy:s3cr3t@registry.example.com/v2/",
    ],
)
def test_secret_values_are_refused(content: dict[str, Any], value: str) -> None:
    content["execution"]["note"] = value
    with pytest.raises(SecretInEvidenceError, match=r"\$\.execution\.note"):
        _build(content)


def test_reject_secrets_accepts_ordinary_content(content: dict[str, Any]) -> None:
    content["execution"]["url"] = "https://registry.example.com/v2/"
    reject_secrets(content)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(drift={"x": 1}), "fields outside"),
        (lambda c: c.pop("release"), "release must be an object"),
        (lambda c: c["release"].update(components=[]), "non-empty"),
        (lambda c: c["release"]["components"][0].pop("image_repository"), "image_repository"),
        (lambda c: c["release"]["components"][0].update(digest="latest"), "not sha256"),
        (lambda c: c["decision"].update(score=float("nan")), "not a finite number"),
        (lambda c: c["decision"].update(at=NOW), "datetime is not a JSON type"),
    ],
)
def test_invalid_content_is_refused(
    content: dict[str, Any], mutate: Callable[[dict[str, Any]], Any], message: str
) -> None:
    mutate(content)
    with pytest.raises(EvidenceContentError, match=message):
        _build(content)


def test_unknown_packet_type_is_refused(content: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="audit"):
        _build(content, packet_type="audit")


def test_dict_round_trip(content: dict[str, Any]) -> None:
    packet = _build(content)
    data = json.loads(json.dumps(packet.to_dict()))
    assert packet_from_dict(data) == packet
    assert set(data) == {
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
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("id", "not-a-uuid", "not a UUID"),
        ("id", "00000000-0000-4000-8000-0000000000AA", "lowercase hyphenated"),
        ("tenant_id", 5, "not a string"),
        ("packet_type", "audit", "packet_type"),
        ("sequence", 0, "sequence"),
        ("sequence", True, "sequence"),
        ("sequence", "1", "sequence"),
        ("previous_hash", 3, "previous_hash"),
        ("content_hash", None, "content_hash"),
        ("content", [], "content"),
        ("created_at", "2025-06-01", "created_at"),
        ("signer_key_ref", "", "signer_key_ref"),
    ],
)
def test_packet_from_dict_rejects(content: dict[str, Any], field: str, value: Any, message: str) -> None:
    data = _build(content).to_dict()
    data[field] = value
    with pytest.raises(MalformedPacketError, match=message):
        packet_from_dict(data)


def test_packet_from_dict_rejects_missing_and_extra_fields(content: dict[str, Any]) -> None:
    data = _build(content).to_dict()
    with pytest.raises(MalformedPacketError, match="lacks"):
        packet_from_dict({k: v for k, v in data.items() if k != "sequence"})
    with pytest.raises(MalformedPacketError, match="unexpected"):
        packet_from_dict({**data, "signature": "x"})


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_signed_packet_verifies(content: dict[str, Any], algorithm: KeyAlgorithm) -> None:
    key = generate_key(algorithm)
    packet = _build(content, signer_key_ref=key.key_ref)
    envelope = sign_packet(packet, key)
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert verify_packet_envelope(envelope, PublicKeyRing([key.public_key])) == packet
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicate"] == packet.to_dict()
    assert [s["name"] for s in statement["subject"]] == [
        "registry.example.com/shop/svc-0",
        "registry.example.com/shop/svc-1",
    ]


def test_signing_with_another_key_than_the_packet_names_is_refused(content: dict[str, Any]) -> None:
    packet = _build(content, signer_key_ref="ed25519:0000000000000000")
    with pytest.raises(ValueError, match="names signer"):
        sign_packet(packet, generate_key())


def _resign(packet: EvidencePacket, key: Any, *, statement: dict[str, Any] | None = None) -> dict[str, Any]:
    return sign_envelope(serialize_statement(statement or packet.statement()), PAYLOAD_TYPE, key)


def test_verify_packet_envelope_errors(content: dict[str, Any]) -> None:
    key = generate_key()
    ring = PublicKeyRing([key.public_key])
    packet = _build(content, signer_key_ref=key.key_ref)

    tampered = dataclasses.replace(packet, content={**packet.content, "actors": {"requester": "mallory"}})
    with pytest.raises(PacketHashMismatchError) as mismatch:
        verify_packet_envelope(_resign(tampered, key), ring)
    assert mismatch.value.recorded == packet.content_hash

    other_signer = dataclasses.replace(packet, signer_key_ref="ed25519:ffffffffffffffff")
    with pytest.raises(SignerMismatchError):
        verify_packet_envelope(_resign(other_signer, key), ring)

    statement = packet.statement()
    statement["subject"] = statement["subject"][:1]
    with pytest.raises(SubjectMismatchError):
        verify_packet_envelope(_resign(packet, key, statement=statement), ring)

    with pytest.raises(MalformedStatementError):
        verify_packet_envelope(sign_envelope(b"{}", PAYLOAD_TYPE, key), ring)

    with pytest.raises(MalformedEnvelopeError):
        verify_packet_envelope(sign_envelope(serialize_statement(statement), "application/json", key), ring)

    envelope = sign_packet(packet, key)
    with pytest.raises(UnknownKeyError):
        verify_packet_envelope(envelope, PublicKeyRing([generate_key().public_key]))
    envelope["payload"] = base64.b64encode(base64.b64decode(envelope["payload"]).replace(b"alice", b"alicf")).decode()
    with pytest.raises(BadSignatureError):
        verify_packet_envelope(envelope, ring)


@pytest.mark.parametrize(
    "previous_hash", ["sha256:" + "a" * 64, "not a hash but ascii \u001f", "caf\u00e9", "\ud800", None]
)
def test_hash_from_the_content_bytes_is_the_packet_hash(content: dict[str, Any], previous_hash: str | None) -> None:
    packet = dataclasses.replace(
        build_packet(
            packet_id=uuid.uuid4(),
            tenant_id=uuid.uuid4(),
            packet_type=PacketType.DEPLOYMENT,
            content=content,
            head=ChainHead.empty(),
            created_at=datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
            signer_key_ref="ed25519:" + "0" * 16,
            promotion_id=None,
        ),
        previous_hash=previous_hash,
    )

    def outcome(compute: Callable[[], str]) -> str:
        try:
            return compute()
        except ValueError as exc:
            return f"refused: {exc}"

    expected = outcome(packet.compute_hash)
    assert outcome(lambda: compute_packet_hash_from_content_bytes(packet, canonicalize(content))) == expected
    assert expected.startswith("refused: ") == (previous_hash == "\ud800")
