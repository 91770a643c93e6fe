"""DSSE pre-authentication encoding, envelope signing and verification."""

from __future__ import annotations

import base64
import copy
import itertools
import random
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from stella.evidence.dsse import (
    MalformedEnvelopeError,
    pae,
    parse_envelope,
    sign_envelope,
    verify_envelope,
    verify_parsed_envelope,
)
from stella.evidence.keys import (
    BadSignatureError,
    KeyAlgorithm,
    PublicKey,
    PublicKeyRing,
    UnknownKeyError,
    generate_key,
)

HELLO_TYPE = "http://example.com/HelloWorld"


def test_pae_known_answer_from_the_dsse_protocol() -> None:
    assert pae(HELLO_TYPE, b"hello world") == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_pae_lengths_are_byte_lengths_without_padding() -> None:
    assert pae("", b"") == b"DSSEv1 0  0 "
    assert pae("application/vnd.in-toto+json", b"{}") == b"DSSEv1 28 application/vnd.in-toto+json 2 {}"
    # Multi-byte UTF-8 type: the length counts bytes (2 for e-acute), not characters.
    assert pae("\u00e9", b"\x00\xff") == b"DSSEv1 2 \xc3\xa9 2 \x00\xff"
    assert pae("t", b"x" * 1000).startswith(b"DSSEv1 1 t 1000 xxx")


def test_dsse_protocol_ecdsa_vector_verifies() -> None:
    """The DSSE protocol's published P-256 vector: its raw r||s signature, DER-encoded, verifies over our PAE."""
    x = 46950820868899156662930047687818585632848591499744589407958293238635476079160
    y = 5640078356564379163099075877009565129882514886557779369047442380624545832820
    public = PublicKey.from_key(ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key())
    raw = base64.b64decode("A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA==")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, pae(HELLO_TYPE, b"hello world"))
    envelope = {
        "payload": "aGVsbG8gd29ybGQ=",
        "payloadType": HELLO_TYPE,
        "signatures": [{"sig": base64.b64encode(der).decode()}],
    }
    # No keyid in the vector: every trusted key is tried.
    assert verify_envelope(envelope, PublicKeyRing([generate_key().public_key, public])) == b"hello world"
    with pytest.raises(BadSignatureError):
        public.verify(der, pae(HELLO_TYPE, b"hello World"))


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_sign_and_verify_round_trip(algorithm: KeyAlgorithm) -> None:
    key = generate_key(algorithm)
    envelope = sign_envelope(b'{"a":1}', "application/vnd.in-toto+json", key)
    assert set(envelope) == {"payload", "payloadType", "signatures"}
    assert envelope["payload"] == base64.b64encode(b'{"a":1}').decode()
    assert envelope["signatures"][0]["keyid"] == key.key_ref
    assert verify_envelope(envelope, PublicKeyRing([key.public_key])) == b'{"a":1}'
    # The signature is over the PAE, not the bare payload.
    sig = base64.b64decode(envelope["signatures"][0]["sig"])
    key.public_key.verify(sig, pae("application/vnd.in-toto+json", b'{"a":1}'))
    with pytest.raises(BadSignatureError):
        key.public_key.verify(sig, b'{"a":1}')


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_a_rotated_key_still_verifies(algorithm: KeyAlgorithm) -> None:
    rotated = generate_key(algorithm)
    current = generate_key()
    old_envelope = sign_envelope(b"old", "t", rotated)
    ring = PublicKeyRing([current.public_key, rotated.public_key])
    assert verify_envelope(old_envelope, ring) == b"old"
    assert verify_envelope(sign_envelope(b"new", "t", current), ring) == b"new"


def _flip_b64(value: str, index: int) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.fixture
def signed() -> tuple[dict[str, Any], PublicKeyRing, str]:
    key = generate_key()
    return sign_envelope(b"payload bytes", "application/x-test", key), PublicKeyRing([key.public_key]), key.key_ref


def test_changed_payload_is_a_bad_signature(signed: tuple[dict[str, Any], PublicKeyRing, str]) -> None:
    envelope, ring, ref = signed
    envelope["payload"] = _flip_b64(envelope["payload"], 0)
    with pytest.raises(BadSignatureError) as caught:
        verify_envelope(envelope, ring)
    assert caught.value.key_ref == ref
    assert str(caught.value) == f"signature does not verify with key {ref}"


def test_changed_payload_type_is_a_bad_signature(signed: tuple[dict[str, Any], PublicKeyRing, str]) -> None:
    envelope, ring, _ = signed
    envelope["payloadType"] = "application/x-other"
    with pytest.raises(BadSignatureError):
        verify_envelope(envelope, ring)


def test_changed_signature_is_a_bad_signature(signed: tuple[dict[str, Any], PublicKeyRing, str]) -> None:
    envelope, ring, _ = signed
    envelope["signatures"][0]["sig"] = _flip_b64(envelope["signatures"][0]["sig"], 5)
    with pytest.raises(BadSignatureError):
        verify_envelope(envelope, ring)


def test_unknown_key_is_named(signed: tuple[dict[str, Any], PublicKeyRing, str]) -> None:
    envelope, _, ref = signed
    with pytest.raises(UnknownKeyError) as caught:
        verify_envelope(envelope, PublicKeyRing([generate_key().public_key]))
    assert caught.value.key_ref == ref


def test_expected_payload_type_is_enforced(signed: tuple[dict[str, Any], PublicKeyRing, str]) -> None:
    envelope, ring, _ = signed
    with pytest.raises(MalformedEnvelopeError, match="payloadType"):
        verify_envelope(envelope, ring, payload_type="application/vnd.in-toto+json")


def test_one_good_signature_among_several_is_enough() -> None:
    good, stranger = generate_key(), generate_key(KeyAlgorithm.ECDSA_P256)
    envelope = sign_envelope(b"p", "t", good)
    envelope["signatures"].insert(0, sign_envelope(b"p", "t", stranger)["signatures"][0])
    verified = verify_parsed_envelope(parse_envelope(envelope), PublicKeyRing([good.public_key]))
    assert verified.key_refs == (good.key_ref,)


def test_url_safe_base64_is_accepted() -> None:
    key = generate_key()
    payload = bytes(range(250, 256)) * 3  # encodes with '+' and '/' in standard base64
    envelope = sign_envelope(payload, "t", key)
    assert any(c in envelope["payload"] for c in "+/")
    envelope["payload"] = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    envelope["signatures"][0]["sig"] = base64.urlsafe_b64encode(
        base64.b64decode(envelope["signatures"][0]["sig"])
    ).decode()
    assert verify_envelope(envelope, PublicKeyRing([key.public_key])) == payload


def _mutations() -> list[tuple[str, Any]]:
    def set_(path: list[Any], value: Any) -> Any:
        def apply(envelope: dict[str, Any]) -> Any:
            target = envelope
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value
            return envelope

        return apply

    def drop(path: list[Any]) -> Any:
        def apply(envelope: dict[str, Any]) -> Any:
            target = envelope
            for part in path[:-1]:
                target = target[part]
            del target[path[-1]]
            return envelope

        return apply

    return [
        ("not an object", lambda e: [e]),
        ("payload missing", drop(["payload"])),
        ("payload not a string", set_(["payload"], 12)),
        ("payload not base64", set_(["payload"], "not*base64")),
        ("payload non-canonical base64", set_(["payload"], "aGVsbG9=")),
        ("payloadType missing", drop(["payloadType"])),
        ("payloadType empty", set_(["payloadType"], "")),
        ("signatures missing", drop(["signatures"])),
        ("signatures empty", set_(["signatures"], [])),
        ("signature not an object", set_(["signatures", 0], "sig")),
        ("sig missing", drop(["signatures", 0, "sig"])),
        ("sig empty", set_(["signatures", 0, "sig"], "")),
        ("keyid not a string", set_(["signatures", 0, "keyid"], 7)),
        ("extra envelope field", set_(["extra"], 1)),
        ("extra signature field", set_(["signatures", 0, "cert"], "x")),
    ]


@pytest.mark.parametrize(("case", "mutate"), _mutations(), ids=[name for name, _ in _mutations()])
def test_malformed_envelopes_are_rejected(
    signed: tuple[dict[str, Any], PublicKeyRing, str], case: str, mutate: Any
) -> None:
    envelope, ring, _ = signed
    with pytest.raises(MalformedEnvelopeError):
        verify_envelope(mutate(copy.deepcopy(envelope)), ring)


def _decode_by_the_rule(value: str) -> bytes | None:
    """Standard or URL-safe base64, padding optional, canonical spelling only (None when refused)."""
    text = value.rstrip("=")
    urlsafe = "-" in text or "_" in text
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789" + ("-_" if urlsafe else "+/")
    if any(char not in alphabet for char in text) or len(value) - len(text) > 2 or len(text) % 4 == 1:
        return None
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded) if urlsafe else base64.b64decode(padded, validate=True)
    except ValueError:
        return None
    again = (base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)).decode().rstrip("=")
    return raw if again == text else None


@pytest.mark.parametrize(
    "value",
    [
        *("", "QQ==", "QR==", "QQ", "QQ=", "Q", "QUJD", "QUJDRA==", "QUJDRA", "+/+/", "-_-_", "+_-/", "QQ==QQ=="),
        *("=QUJD", "QU JD", "QUJD\n", "QUJD===", "QUI=", "QUJ=", "w6k=", "é", "QQ==\n"),
    ],
)
def test_payload_base64_is_decoded_by_the_rule(value: str) -> None:
    envelope = {"payload": value, "payloadType": HELLO_TYPE, "signatures": [{"keyid": "k", "sig": "QUJD"}]}
    expected = _decode_by_the_rule(value)
    if expected is None:
        with pytest.raises(MalformedEnvelopeError):
            parse_envelope(envelope)
    else:
        assert parse_envelope(envelope).payload == expected


def _decoded(value: str) -> bytes | None:
    envelope = {"payload": value, "payloadType": HELLO_TYPE, "signatures": [{"keyid": "k", "sig": "QUJD"}]}
    try:
        return parse_envelope(envelope).payload
    except MalformedEnvelopeError:
        return None


def test_every_short_spelling_is_decoded_by_the_rule() -> None:
    """Every string of up to 4 characters over characters that differ in their low bits (A 0, B 1, E 4, Q 16,
    R 17), both alphabets' last two, padding and a stranger, then longer ones built from them."""
    chars = "ABEQR+/-_=."
    for length in range(5):
        for spelled in itertools.product(chars, repeat=length):
            value = "".join(spelled)
            assert _decoded(value) == _decode_by_the_rule(value), value
    rng = random.Random(7)
    for _ in range(3000):
        value = "".join(rng.choice(chars) for _ in range(rng.randint(5, 12)))
        assert _decoded(value) == _decode_by_the_rule(value), value
