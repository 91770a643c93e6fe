"""Encoding and decoding one typical envelope: the kit's path against orjson and msgspec, measured in the same run.

Baseline: what the kit does on the hot path today, pydantic-core straight from and to bytes
(``model_dump_json`` when a message is published or written to the outbox, ``Message.parse`` with
``model_validate_json`` when it is consumed). Measured against it: the same model through orjson and through
msgspec (``model_dump`` to JSON types, encode, decode, ``model_validate``), and whether their bytes are the
same. Also FastStream's decode of every consumed body (``json.loads`` unless orjson is installed) against
orjson and msgspec. The evidence's canonical JSON (RFC 8785, :mod:`stella.contracts.canonical`) is hashed and
signed and is not measured here: it is not the envelope's codec. No server needed; orjson and msgspec are
measured when installed.

    uv run python tests/bench/envelope_codec.py [N]

Prints figures only (no goal).
"""

from __future__ import annotations

import importlib
import json
import sys
import timeit
import uuid
from collections.abc import Callable
from typing import Any

from stella.contracts import promotion


def _best_us(fn: Callable[[], object], n: int) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def _roundtrip(
    model: type[promotion.RequestPromotion],
    message: promotion.RequestPromotion,
    encode: Callable[[Any], bytes],
    decode: Callable[[bytes], Any],
) -> Callable[[], object]:
    def run() -> object:
        return model.model_validate(decode(encode(message.model_dump(mode="json"))))

    return run


def _decoding(decode: Callable[[bytes], Any], wire: bytes) -> Callable[[], object]:
    def run() -> object:
        return decode(wire)

    return run


def main(n: int) -> int:
    """Print µs per encode + decode of one envelope on each path and their ratio to the kit's path."""
    model = promotion.RequestPromotion
    message = model(
        tenant_id=uuid.uuid4(),
        correlation_id=uuid.uuid4(),
        causation_id=uuid.uuid4(),
        release_id=uuid.uuid4(),
        target_environment_id=uuid.uuid4(),
        reason="promote the nightly build",
    )
    wire = message.model_dump_json().encode()
    print(f"envelope: {model.__name__}, {len(wire)} bytes")

    def kit() -> object:
        return model.parse(message.model_dump_json().encode())

    paths: dict[str, Callable[[], object]] = {"kit (pydantic-core)": kit}
    loads: dict[str, Callable[[], object]] = {"json.loads": lambda: json.loads(wire)}
    codecs: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {}
    for name in ("orjson", "msgspec"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            print(f"{name}: not installed, skipped")
            continue
        codec = (module.dumps, module.loads) if name == "orjson" else (module.json.encode, module.json.decode)
        codecs[name] = codec
        same = codec[0](message.model_dump(mode="json")) == wire
        print(f"{name}: bytes identical to model_dump_json: {same}")

    for name, (encode, decode) in codecs.items():
        paths[name] = _roundtrip(model, message, encode, decode)
        loads[f"{name} decode"] = _decoding(decode, wire)

    base = _best_us(kit, n)
    print("encode + decode of the envelope:")
    for name, fn in paths.items():
        us = base if fn is kit else _best_us(fn, n)
        print(f"  {name:22s} {us:7.2f} µs  ({us / base:4.2f}x the kit's path)")
    raw = _best_us(loads["json.loads"], n)
    print("FastStream's decode of a consumed body:")
    for name, fn in loads.items():
        us = raw if name == "json.loads" else _best_us(fn, n)
        print(f"  {name:22s} {us:7.2f} µs  ({us / raw:4.2f}x json.loads)")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
