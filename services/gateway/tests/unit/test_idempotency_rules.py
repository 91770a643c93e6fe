"""The pure rules of idempotency keys: fingerprints, command ids, what is stored."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from stella.gateway.idempotency import fingerprint, is_final, message_id_for, redact

FIRST_USE = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_fingerprint_ignores_key_order_and_spacing_but_not_values() -> None:
    assert fingerprint(b'{"a": 1, "b": [1, 2]}') == fingerprint(b'{"b":[1,2],"a":1}')
    assert fingerprint(b'{"a": 1}') != fingerprint(b'{"a": 2}')
    assert fingerprint(b"") == fingerprint(b"")
    assert fingerprint(b"not json") != fingerprint(b"not json!")


def test_the_command_id_is_stable_per_key_and_differs_otherwise() -> None:
    tenant = uuid.uuid4()
    base = message_id_for(tenant, "POST", "/api/v1/components", "k1", FIRST_USE)
    assert base == message_id_for(tenant, "POST", "/api/v1/components", "k1", FIRST_USE)
    assert base.version == 5
    others = {
        message_id_for(uuid.uuid4(), "POST", "/api/v1/components", "k1", FIRST_USE),
        message_id_for(tenant, "POST", "/api/v1/releases", "k1", FIRST_USE),
        message_id_for(tenant, "POST", "/api/v1/components", "k2", FIRST_USE),
        message_id_for(tenant, "POST", "/api/v1/components", "k1", FIRST_USE + timedelta(days=2)),
    }
    assert base not in others
    assert len(others) == 4


def test_only_final_answers_are_stored() -> None:
    assert all(is_final(status) for status in (200, 201, 204, 400, 404, 409, 422))
    assert not any(is_final(status) for status in (401, 403, 408, 429, 500, 502, 503, 504))


def test_redaction_drops_secret_fields_from_json_objects_only() -> None:
    body = json.dumps({"id": "x", "token": "stl_secret"}).encode()
    assert json.loads(redact(body, ("token",))) == {"id": "x"}
    assert redact(body, ()) == body
    assert redact(b"[1, 2]", ("token",)) == b"[1, 2]"
    assert redact(b"", ("token",)) == b""
