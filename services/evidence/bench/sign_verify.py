"""Signing and verification throughput of evidence packets, Ed25519 against ECDSA P-256.

    uv run python services/evidence/bench/sign_verify.py [--packets N] [--rounds R]

Packets are realistic: 5 components, 30 gate results in the decision record, approvals, artifacts. Measured,
per algorithm, in one process so the ratios compare like with like:

* ``build``  - :func:`build_packet` (validation, secret scan, canonical hash); the same for both algorithms
* ``sign``   - :func:`sign_packet` (statement, RFC 8785, PAE, signature)
* ``verify`` - :func:`verify_packet_envelope` (base64, signature, statement parse and canonical check,
  subjects, hash recomputation), the per-packet work of the offline verifier
* ``raw sign`` / ``raw verify`` - the signature primitive alone over the same PAE bytes, to show how much of
  the cost is cryptography and how much is JSON

Each figure is the best of ``--rounds`` rounds over ``--packets`` packets.
"""

from __future__ import annotations

import argparse
import platform
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import cryptography

from stella.evidence.dsse import parse_envelope
from stella.evidence.keys import KeyAlgorithm, PublicKeyRing, SigningKey, generate_key
from stella.evidence.packet import (
    ChainHead,
    EvidencePacket,
    PacketType,
    build_packet,
    sign_packet,
    verify_packet_envelope,
)

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def realistic_content(index: int, *, components: int = 5, gates: int = 30) -> dict[str, Any]:
    """Return §5 content of a production promotion: 5 images, 30 gate results, two approvals."""
    gate_types = ("freeze-window", "schedule", "dependency", "policy", "security", "approval", "manual")
    return {
        "release": {
            "id": str(uuid.UUID(int=index)),
            "name": f"shop-2025.{index}",
            "components": [
                {
                    "name": f"service-{c}",
                    "digest": "sha256:" + f"{index:08x}{c:08x}".ljust(64, "0"),
                    "semver": f"2.{index % 50}.{c}",
                    "tag": f"2.{index % 50}.{c}",
                    "image_repository": f"registry.example.com/shop/service-{c}",
                }
                for c in range(components)
            ],
        },
        "environment": {
            "id": str(uuid.UUID(int=10_000 + index % 3)),
            "name": "production",
            "targets": [f"prod-host-{t:02d}" for t in range(8)],
        },
        "actors": {"requester": "alice@example.com", "approvers": ["bob@example.com", "carol@example.com"]},
        "decision": {
            "result": "allow",
            "gates": [
                {
                    "type": gate_types[g % len(gate_types)],
                    "name": f"{gate_types[g % len(gate_types)]}-{g:02d}",
                    "status": "pass",
                    "message": "within thresholds: critical 0/0, high 1/3, medium 7/20, epss max 0.12",
                    "details": {"critical": 0, "high": 1, "medium": 7, "epss_max": 0.12, "kev": False},
                    "reason_codes": [f"GATE_{g:02d}_PASS"],
                }
                for g in range(gates)
            ],
            "reasons": ["ALL_GATES_PASSED"],
            "approvals": [
                {"approver": "bob@example.com", "action": "approve", "at": "2025-01-01T10:00:00Z", "comment": "ok"},
                {"approver": "carol@example.com", "action": "approve", "at": "2025-01-01T10:05:00Z", "comment": ""},
            ],
            "policy_digest": "sha256:" + "a" * 64,
            "inputs_hash": "sha256:" + "b" * 64,
            "evaluated_at": "2025-01-01T10:05:01Z",
        },
        "execution": {
            "workflow_run_id": str(uuid.UUID(int=20_000 + index)),
            "deployment_job_id": str(uuid.UUID(int=30_000 + index)),
            "artifacts": [
                {"type": "compose-lock", "name": f"compose.stella.lock.yml#{t}", "content_hash": "sha256:" + "c" * 64}
                for t in range(8)
            ],
            "logs_hash": "sha256:" + "d" * 64,
        },
        "previous": {"release_id": str(uuid.UUID(int=index - 1 if index else 0)), "release_name": "shop-2024.99"},
    }


def build_chain(count: int, key: SigningKey) -> list[EvidencePacket]:
    """Build ``count`` chained packets of one tenant named as signed by ``key``."""
    tenant = uuid.uuid4()
    head = ChainHead.empty()
    packets = []
    for index in range(count):
        packet = build_packet(
            packet_id=uuid.uuid4(),
            tenant_id=tenant,
            packet_type=PacketType.RELEASE_DECISION,
            content=realistic_content(index),
            head=head,
            created_at=EPOCH + timedelta(seconds=index),
            signer_key_ref=key.key_ref,
            promotion_id=uuid.uuid4(),
        )
        packets.append(packet)
        head = packet.head
    return packets


def best_rate(operation: Callable[[], int], rounds: int) -> float:
    """Run ``operation`` (which returns how many items it processed) ``rounds`` times; return the best items/s."""
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        done = operation()
        elapsed = time.perf_counter() - start
        best = max(best, done / elapsed)
    return best


def measure(algorithm: KeyAlgorithm, count: int, rounds: int) -> dict[str, float]:
    """Return packets/second for each stage with one algorithm."""
    key = generate_key(algorithm)
    ring = PublicKeyRing([key.public_key])
    packets = build_chain(count, key)
    envelopes = [sign_packet(packet, key) for packet in packets]
    paes = [parse_envelope(envelope).pae for envelope in envelopes]
    signatures = [key.sign(data) for data in paes]

    def build() -> int:
        build_chain(count, key)
        return count

    def sign() -> int:
        for packet in packets:
            sign_packet(packet, key)
        return count

    def verify() -> int:
        for envelope in envelopes:
            verify_packet_envelope(envelope, ring)
        return count

    def raw_sign() -> int:
        for data in paes:
            key.sign(data)
        return count

    def raw_verify() -> int:
        for data, signature in zip(paes, signatures, strict=True):
            key.public_key.verify(signature, data)
        return count

    return {
        "build": best_rate(build, rounds),
        "sign": best_rate(sign, rounds),
        "verify": best_rate(verify, rounds),
        "raw sign": best_rate(raw_sign, rounds),
        "raw verify": best_rate(raw_verify, rounds),
        "payload bytes": sum(len(p) for p in paes) / count,
    }


def main() -> None:
    """Run the benchmark and print rates and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=500, help="packets per round (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best is kept (default 3)")
    args = parser.parse_args()

    print(
        f"python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"{platform.machine()}; {args.packets} packets x {args.rounds} rounds (best kept)"
    )
    results = {algorithm: measure(algorithm, args.packets, args.rounds) for algorithm in KeyAlgorithm}
    ed, ec = results[KeyAlgorithm.ED25519], results[KeyAlgorithm.ECDSA_P256]
    print(f"signed payload: {ed['payload bytes']:.0f} bytes per packet (5 components, 30 gates)\n")
    stages = ("build", "sign", "verify", "raw sign", "raw verify")
    print(f"{'stage':<12}{'ed25519 pkt/s':>16}{'ecdsa-p256 pkt/s':>19}{'ecdsa / ed25519':>18}")
    for stage in stages:
        print(f"{stage:<12}{ed[stage]:>16,.0f}{ec[stage]:>19,.0f}{ec[stage] / ed[stage]:>17.2f}x")
    print()
    for name, rates in (("ed25519", ed), ("ecdsa-p256", ec)):
        print(
            f"{name:<11} verify / sign = {rates['verify'] / rates['sign']:.2f}x   "
            f"crypto share of sign = {rates['sign'] / rates['raw sign']:.0%}   "
            f"crypto share of verify = {rates['verify'] / rates['raw verify']:.0%}"
        )


if __name__ == "__main__":
    main()
