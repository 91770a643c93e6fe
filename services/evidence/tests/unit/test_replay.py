"""``--replay``: every decision a bundle carries with its inputs is decided again with the project's gate code.

The attacker here holds the signing key (the test key re-signs every changed packet, so every signature, the
chain and the checkpoint verify) and changes what a decision was made from, recomputing ``inputs_hash`` so
that the hash check passes too: only deciding again from the inputs shows that the decision does not follow.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from stella.contracts.canonical import content_hash
from stella.evidence import merkle
from stella.evidence.bundle import TreeProof, build_bundle
from stella.evidence.chain import FindingKind
from stella.evidence.checkpoint import Checkpoint, origin_for, sign_checkpoint
from stella.evidence.keys import PublicKeyRing
from stella.evidence.packet import PacketType, SignedPacket, build_packet, sign_packet
from stella.evidence.verify import REPLAY_ENTRY_POINTS, load_replayer, main, verify_bundle
from stella.promotion.decision import DecisionRecord
from stella.promotion.decision import decide as decide_with
from stella.promotion.gates import default_registry

from .conftest import Chain, leaf_of, make_content

TUESDAY = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)
SATURDAY = datetime(2025, 3, 29, 12, 0, tzinfo=UTC)
DIGEST = "sha256:" + "a" * 64
RULES = [{"name": "pinned", "expr": 'release.components.all(c, c.tag != "latest")', "message": "pin tags"}]


def decide(inputs: dict[str, Any], at: datetime) -> DecisionRecord:
    """Decide as the promotion service does, with the gate plugin the inputs name installed."""
    return decide_with(inputs, at, registry=default_registry({"servicenow": lambda config: []}))


def _inputs(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "release": {
            "id": "rel-1",
            "name": "shop-2025.04",
            "components": [{"name": "api", "digest": DIGEST, "tag": "1.4"}],
        },
        "environment": {"id": "env-prod", "name": "prod", "required_approvals": 2, "config": {}},
        "freeze_windows": [
            {
                "id": "weekend",
                "kind": "deny",
                "rrule": "FREQ=WEEKLY;BYDAY=FR",
                "dtstart": "2025-01-03T16:00:00",
                "duration": "PT64H",
                "timezone": "Europe/Berlin",
                "reason": "weekend freeze",
            }
        ],
        "gates": [
            {"type": "security", "name": "scan"},
            {"type": "freeze-window", "name": "freeze"},
            {"type": "approval", "name": "approvals"},
            {"type": "policy", "name": "rules", "config": {"rules": RULES}},
            {"type": "plugin", "name": "change-ticket", "config": {"plugin": "servicenow", "config": {}}},
        ],
        "plugin_verdicts": {"change-ticket": {"status": "pass", "message": "CHG0042 approved", "reason_codes": []}},
        "security": {"scans": {DIGEST: {"critical": 0, "high": 0, "medium": 1, "epss_max": 0.01, "kev": 0}}},
        "approvals": {
            "required": 2,
            "granted": 2,
            "rejected": 0,
            "entries": [
                {"approver": "bob", "action": "approved", "at": "2025-03-31T08:00:00Z", "comment": "lgtm"},
                {"approver": "zoe", "action": "approved", "at": "2025-03-31T09:00:00Z", "comment": ""},
            ],
        },
        "overrides": [],
        "manual_confirmations": [],
    }
    document.update(overrides)
    return document


def _decision(inputs: dict[str, Any], at: datetime) -> dict[str, Any]:
    """The decision as the promotion service records it and the evidence packet carries it."""
    return {**decide(inputs, at).to_dict(), "inputs": inputs}


def _bundle(chain: Chain, decisions: list[dict[str, Any]]) -> bytes:
    """The chain with one ``release_decision`` packet per decision appended, signed by the current key."""
    signed = list(chain.signed)
    for index, decision in enumerate(decisions):
        last = signed[-1].packet
        content = make_content(40 + index)
        content["decision"] = decision
        packet = build_packet(
            packet_id=uuid.uuid4(),
            tenant_id=chain.tenant_id,
            packet_type=PacketType.RELEASE_DECISION,
            content=content,
            head=last.head,
            created_at=last.created_at + timedelta(minutes=1),
            signer_key_ref=chain.new_key.key_ref,
            promotion_id=uuid.uuid4(),
        )
        signed.append(SignedPacket(packet=packet, envelope=sign_packet(packet, chain.new_key)))
    root = merkle.root_from_leaves([leaf_of(item) for item in signed])
    note = sign_checkpoint(
        Checkpoint(origin_for("stella.test/evidence", chain.tenant_id), len(signed), root),
        chain.new_key,
        chain.new_key.public_key,
    )
    tree = TreeProof(checkpoint=note, tree_size=len(signed), first_sequence=1, last_sequence=len(signed))
    return build_bundle(
        signed,
        chain.public_keys,
        tenant_id=chain.tenant_id,
        created_at=chain.created_at + timedelta(days=1),
        tree=tree,
        key_log=chain.key_log(),
    )


def _verify(chain: Chain, bundle: bytes, *, replay: bool = True) -> Any:
    return verify_bundle(
        bundle,
        trusted_keys=PublicKeyRing(chain.public_keys),
        trusted_key_log=chain.key_log(),
        replay=load_replayer() if replay else None,
    )


def _forged(inputs: dict[str, Any], record_of: dict[str, Any]) -> dict[str, Any]:
    """A decision whose inputs were replaced after the fact, with ``inputs_hash`` recomputed to match them."""
    forged = {**record_of, "inputs": inputs}
    forged["inputs_hash"] = content_hash({"clock": forged["evaluated_at"], "inputs": inputs})
    return forged


def test_the_promotion_package_provides_the_replay_entry_point() -> None:
    replay = load_replayer()
    assert replay is not None, f"no {REPLAY_ENTRY_POINTS} entry point is installed"
    inputs = _inputs()
    assert replay(inputs, "2025-04-01T10:00:00Z") == decide(inputs, TUESDAY).to_dict()


def test_every_decision_replays_identically(chain: Chain) -> None:
    decisions = [
        _decision(_inputs(), TUESDAY),  # allow
        _decision(_inputs(), SATURDAY),  # deny: the weekend freeze
        _decision(_inputs(approvals={"required": 2, "granted": 1, "rejected": 0, "entries": []}), TUESDAY),  # pending
    ]
    assert [d["result"] for d in decisions] == ["allow", "deny", "pending"]
    report = _verify(chain, _bundle(chain, decisions))
    assert report.ok, report.format_text()
    assert "3 decision(s) replayed from their inputs with the project's gate code" in report.notes
    # Packets without inputs (older exports) are counted, not failed.
    assert "6 decision(s) carry no inputs and could not be replayed" in report.notes


def test_a_changed_input_that_keeps_inputs_hash_consistent_is_flagged_only_by_replay(chain: Chain) -> None:
    honest = _decision(_inputs(), TUESDAY)
    # One approval removed after the decision: the record still says allow and the approval gate passed.
    one_vote = _inputs(
        approvals={"required": 2, "granted": 1, "rejected": 0, "entries": [_inputs()["approvals"]["entries"][0]]}
    )
    bundle = _bundle(chain, [honest, _forged(one_vote, honest)])

    without_replay = _verify(chain, bundle, replay=False)
    assert without_replay.ok, without_replay.format_text()  # signatures, chain, checkpoint and inputs_hash hold

    report = _verify(chain, bundle)
    assert not report.ok
    assert report.kinds_for(7) == set() and report.kinds_for(8) == {FindingKind.DECISION_REPLAY_MISMATCH}
    messages = [f.message for f in report.findings]
    assert "replayed from its inputs, the decision is 'pending', the packet records 'allow'" in messages
    assert "replayed from its inputs, gate approval/approvals is 'pending', the packet records 'pass'" in messages
    assert report.exit_code == 1


def test_a_changed_gate_verdict_alone_is_flagged(chain: Chain) -> None:
    # The scan now shows a critical vulnerability, yet the decision still records the security gate passed.
    recorded = _decision(_inputs(), TUESDAY)
    critical = _inputs(security={"scans": {DIGEST: {"critical": 1, "high": 0, "medium": 0, "epss_max": 0.0, "kev": 0}}})
    report = _verify(chain, _bundle(chain, [_forged(critical, recorded)]))
    assert report.kinds_for(7) == {FindingKind.DECISION_REPLAY_MISMATCH}, report.format_text()
    assert any("gate security/scan is 'fail', the packet records 'pass'" in f.message for f in report.findings)

    # A difference that changes no verdict (a reworded comment on a vote) is still named.
    reworded = _inputs()
    reworded["approvals"]["entries"][0]["comment"] = "fine by me"
    report = _verify(chain, _bundle(chain, [_forged(reworded, recorded)]))
    assert [f.message for f in report.findings] == [
        "replayed from its inputs, the decision record differs in approvals"
    ]


def test_inputs_the_gate_code_refuses_are_flagged(chain: Chain) -> None:
    recorded = _decision(_inputs(), TUESDAY)
    report = _verify(chain, _bundle(chain, [_forged({"gates": "all of them"}, recorded)]))
    assert report.kinds_for(7) == {FindingKind.DECISION_REPLAY_MISMATCH}
    assert "cannot be replayed from its inputs" in report.findings[0].message


def test_cli_replay_exit_codes(tmp_path: Path, chain: Chain) -> None:
    keys = tmp_path / "trusted"
    keys.mkdir()
    for key in chain.public_keys:
        (keys / f"{key.key_ref.replace(':', '_')}.pem").write_bytes(key.to_pem())
    (keys / "key-log.json").write_text(json.dumps(chain.key_log()))
    honest = _decision(_inputs(), TUESDAY)
    good, bad = tmp_path / "good.tar.gz", tmp_path / "bad.tar.gz"
    good.write_bytes(_bundle(chain, [honest]))
    bad.write_bytes(_bundle(chain, [_forged(_inputs(overrides=[], freeze_windows=[]), _decision(_inputs(), SATURDAY))]))

    out = io.StringIO()
    assert main([str(good), "--keys", str(keys), "--replay"], stdout=out, stderr=io.StringIO()) == 0, out.getvalue()
    assert "note: 1 decision(s) replayed from their inputs" in out.getvalue()
    out = io.StringIO()
    assert main([str(bad), "--keys", str(keys), "--replay"], stdout=out, stderr=io.StringIO()) == 1
    assert "gate freeze-window/freeze is 'pass', the packet records 'fail' [decision_replay_mismatch]" in out.getvalue()
    assert main([str(bad), "--keys", str(keys)], stdout=io.StringIO(), stderr=io.StringIO()) == 0

    # Without the gate code installed, --replay says what is missing instead of passing silently.
    program = (
        "import sys, importlib.metadata as m\n"
        "m.entry_points = lambda **kw: []\n"
        "import stella.evidence.verify as v\n"
        "v.entry_points = m.entry_points\n"
        f"sys.exit(v.main([{str(good)!r}, '--keys', {str(keys)!r}, '--replay']))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--replay needs the project's gate code" in result.stderr
