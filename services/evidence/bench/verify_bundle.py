"""Offline verification of a whole bundle: with the checkpoint and key log checks, against without them.

    uv run python services/evidence/bench/verify_bundle.py [--packets N] [--rounds R]

Builds one tenant's chain of ``--packets`` realistic packets (Ed25519, 5 images and 30 gate results each),
exports it twice in memory: with its signed checkpoint, tree proof and key log (what the service exports),
and without them (a bundle as exported before checkpoints existed, verified with ``--allow-no-checkpoint``).
Prints packets/second of :func:`verify_bundle` for each, best of ``--rounds``, and their ratio; the
checkpoint's root recomputation and the key validity checks must keep the ratio at 0.8 or more.
"""

from __future__ import annotations

import argparse
import base64
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from stella.evidence import keylog, merkle
from stella.evidence.bundle import TreeProof, build_bundle
from stella.evidence.checkpoint import Checkpoint, origin_for, sign_checkpoint
from stella.evidence.keys import KeyAlgorithm, PublicKeyRing, generate_key
from stella.evidence.packet import ChainHead, PacketType, SignedPacket, build_packet, sign_packet
from stella.evidence.verify import verify_bundle

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def content(index: int) -> dict[str, Any]:
    """A production promotion's content: 5 images, 30 gate results, two approvals."""
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
                for c in range(5)
            ],
        },
        "environment": {"id": "prod", "name": "production", "targets": [f"prod-{t}" for t in range(8)]},
        "actors": {"requester": "alice@example.com", "approvers": ["bob@example.com", "carol@example.com"]},
        "decision": {
            "result": "allow",
            "gates": [
                {
                    "type": "security",
                    "name": f"gate-{g:02d}",
                    "status": "pass",
                    "message": "within thresholds: critical 0/0, high 1/3, medium 7/20, epss max 0.12",
                    "details": {"critical": 0, "high": 1, "medium": 7, "epss_max": 0.12, "kev": False},
                    "reason_codes": [f"GATE_{g:02d}_PASS"],
                }
                for g in range(30)
            ],
            "reasons": [],
            "approvals": [],
            "policy_digest": "sha256:" + "a" * 64,
            "inputs_hash": "sha256:" + "b" * 64,
            "evaluated_at": "2025-01-01T10:05:01Z",
        },
    }


def bundles(count: int) -> tuple[bytes, bytes, PublicKeyRing, list[dict[str, Any]]]:
    """The same chain exported with and without checkpoint, tree proof and key log."""
    key = generate_key(KeyAlgorithm.ED25519)
    tenant = uuid.uuid4()
    head = ChainHead.empty()
    signed: list[SignedPacket] = []
    for index in range(count):
        packet = build_packet(
            packet_id=uuid.uuid4(),
            tenant_id=tenant,
            packet_type=PacketType.RELEASE_DECISION,
            content=content(index),
            head=head,
            created_at=EPOCH + timedelta(seconds=index),
            signer_key_ref=key.key_ref,
            promotion_id=uuid.uuid4(),
        )
        signed.append(SignedPacket(packet=packet, envelope=sign_packet(packet, key)))
        head = packet.head
    leaves = [merkle.leaf_hash(base64.b64decode(s.envelope["payload"])) for s in signed]
    note = sign_checkpoint(
        Checkpoint(origin_for("bench.local/evidence", tenant), count, merkle.root_from_leaves(leaves)),
        key,
        key.public_key,
    )
    payload = keylog.entry_payload(0, key.public_key, EPOCH - timedelta(days=1), None)
    log = [keylog.sign_entry(payload, [key])]
    tree = TreeProof(checkpoint=note, tree_size=count, first_sequence=1, last_sequence=count)
    now = EPOCH + timedelta(days=1)
    full = build_bundle(signed, [key.public_key], tenant_id=tenant, created_at=now, tree=tree, key_log=log)
    bare = build_bundle(signed, [key.public_key], tenant_id=tenant, created_at=now)
    return full, bare, PublicKeyRing([key.public_key]), log


def best_rate(operation: Any, count: int, rounds: int) -> float:
    """Packets per second of the best of ``rounds`` runs."""
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        report = operation()
        elapsed = time.perf_counter() - start
        assert report.ok, report.format_text()
        best = max(best, count / elapsed)
    return best


def main() -> None:
    """Run the benchmark and print the rates and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=2000, help="packets in the bundle (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best is kept (default 3)")
    args = parser.parse_args()
    full, bare, ring, log = bundles(args.packets)
    before = best_rate(
        lambda: verify_bundle(bare, trusted_keys=ring, require_checkpoint=False), args.packets, args.rounds
    )
    after = best_rate(lambda: verify_bundle(full, trusted_keys=ring, trusted_key_log=log), args.packets, args.rounds)
    print(f"{args.packets} packets, best of {args.rounds} rounds")
    print(f"without checkpoint and key log  {before:>10,.0f} packets/s")
    print(f"with checkpoint and key log     {after:>10,.0f} packets/s")
    print(f"ratio with / without            {after / before:>10.2f}  (must stay >= 0.80)")


if __name__ == "__main__":
    main()
