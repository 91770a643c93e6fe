"""How a request's trace id is chosen."""

from __future__ import annotations

import uuid

from stella.gateway.tracing import derive_trace_id

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_traceparent_wins_and_keeps_its_128_bit_trace_id() -> None:
    assert derive_trace_id(TRACEPARENT, "other") == uuid.UUID("4bf92f35-77b3-4da6-a3ce-929d0e0e4736")


def test_an_invalid_or_zero_traceparent_is_ignored() -> None:
    request_id = str(uuid.uuid4())
    assert derive_trace_id("garbage", request_id) == uuid.UUID(request_id)
    assert derive_trace_id("00-" + "0" * 32 + "-00f067aa0ba902b7-01", request_id) == uuid.UUID(request_id)


def test_a_request_id_that_is_not_a_uuid_maps_to_a_stable_one() -> None:
    assert derive_trace_id(None, "req-1") == derive_trace_id(None, "req-1")
    assert derive_trace_id(None, "req-1") != derive_trace_id(None, "req-2")


def test_without_headers_every_request_gets_a_new_id() -> None:
    assert derive_trace_id(None, None) != derive_trace_id(None, None)
    assert derive_trace_id(None, "x" * 500) != derive_trace_id(None, "x" * 500)
