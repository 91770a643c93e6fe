"""The offline verifier over several processes reports exactly what it reports in one.

A bundle of more than :data:`POOL_THRESHOLD` packets, so that ``jobs=2`` really checks its envelopes in a
process pool; untouched and tampered in several ways at once (a changed payload, a bad signature, a broken
chain link re-signed by the real key, an unreadable envelope, a decision whose inputs were changed).
"""

from __future__ import annotations

import base64
import dataclasses
import gc
import io
import json
import os
import threading
from typing import Any

import pytest

from stella.contracts.canonical import content_hash
from stella.evidence import envelope_check
from stella.evidence.chain import FindingKind
from stella.evidence.envelope_check import POOL_THRESHOLD, check_envelopes
from stella.evidence.keys import PublicKeyRing
from stella.evidence.packet import compute_packet_hash, sign_packet
from stella.evidence.verify import VerificationReport, main, verify_bundle

from .conftest import Chain, make_chain, make_content
from .test_verify import _edit_envelope, _edit_payload, _files, _flip_byte, _pack, _path

COUNT = POOL_THRESHOLD + 40
"""Packets in the bundle: enough for the pool."""

INPUTS_CHANGED = (COUNT - 10) // 5 * 5 + 1
"""Sequence of the packet whose decision inputs are changed (its index is a multiple of 5: it carries inputs)."""


def _content(index: int) -> dict[str, Any]:
    """Content that takes both paths of the statement check, and decisions that carry their inputs."""
    content = make_content(index)
    if index % 2:
        # No float written as "x.0": the statement's canonical form is settled without canonicalize().
        for gate in content["decision"]["gates"]:
            gate["details"] = {"score": 0.25}
    if index % 5 == 0:
        decision = content["decision"]
        decision["inputs"] = {"release": f"rel-{index}", "risk": index % 7}
        decision["inputs_hash"] = content_hash({"clock": decision["evaluated_at"], "inputs": decision["inputs"]})
    return content


@pytest.fixture(scope="module")
def big_chain() -> Chain:
    return make_chain(COUNT, rotate_after=COUNT // 2, content=_content)


@pytest.fixture(autouse=True)
def pools(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the worker count of every process pool the verifier starts (the pools are real)."""
    started: list[int] = []
    real = envelope_check.ProcessPoolExecutor

    def record(*args: Any, **kwargs: Any) -> Any:
        started.append(kwargs["max_workers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(envelope_check, "ProcessPoolExecutor", record)
    return started


def _both(bundle: bytes, pools: list[int], **options: Any) -> tuple[VerificationReport, VerificationReport]:
    """Verify with jobs=1 and jobs=2, check the second used a pool of 2 and the reports are identical."""
    before = len(pools)
    one = verify_bundle(bundle, jobs=1, **options)
    assert len(pools) == before
    many = verify_bundle(bundle, jobs=2, **options)
    assert pools[before:] == [2]
    assert many.to_dict() == one.to_dict()
    assert many.format_text() == one.format_text()
    assert many.exit_code == one.exit_code
    return one, many


def test_untouched_large_bundle_verifies_the_same_with_a_pool(big_chain: Chain, pools: list[int]) -> None:
    bundle = big_chain.bundle()
    one, _ = _both(
        bundle, pools, trusted_keys=PublicKeyRing(big_chain.public_keys), trusted_key_log=big_chain.key_log()
    )
    assert one.ok, one.format_text()
    assert (one.packet_count, one.checkpoint_size) == (COUNT, COUNT)
    assert f"{COUNT // 5 + 1} decision(s) carry their inputs; their inputs_hash was recomputed" in one.notes


def _tampered(chain: Chain) -> dict[str, bytes]:
    files = _files(chain.bundle())
    # A changed payload byte (fast statement path: odd sequence index 10 -> packet 11).
    _edit_payload(files, _path(chain, 11), lambda p: _flip_byte(p, p.index(b'"requester":"alice"') + 17))

    # A bad signature, Ed25519 and ECDSA.
    def flip(envelope: dict[str, Any]) -> None:
        sig = base64.b64decode(envelope["signatures"][0]["sig"])
        envelope["signatures"][0]["sig"] = base64.b64encode(_flip_byte(sig, 20)).decode()

    _edit_envelope(files, _path(chain, 40), flip)
    _edit_envelope(files, _path(chain, COUNT - 3), flip)

    # A broken link, signed by the real key: the packet's previous_hash names another packet's hash.
    victim = chain.signed[99].packet
    wrong = chain.signed[50].packet.content_hash
    fields = {f.name: getattr(victim, f.name) for f in dataclasses.fields(victim)}
    fields["previous_hash"] = wrong
    fields["content_hash"] = compute_packet_hash(
        packet_id=victim.id,
        tenant_id=victim.tenant_id,
        packet_type=victim.packet_type,
        promotion_id=victim.promotion_id,
        sequence=victim.sequence,
        previous_hash=wrong,
        content=victim.content,
        created_at=victim.created_at,
    )
    relinked = type(victim)(**fields)
    files[_path(chain, 100)] = json.dumps(sign_packet(relinked, chain.old_key)).encode()

    # An envelope that is not JSON, and a decision whose inputs were changed after it was made (re-signed).
    files[_path(chain, 200)] = b"{not json"
    changed = chain.signed[INPUTS_CHANGED - 1].packet
    content = json.loads(json.dumps(changed.content))
    content["decision"]["inputs"]["risk"] = 99
    fields = {f.name: getattr(changed, f.name) for f in dataclasses.fields(changed)}
    fields["content"] = content
    fields["content_hash"] = compute_packet_hash(
        packet_id=changed.id,
        tenant_id=changed.tenant_id,
        packet_type=changed.packet_type,
        promotion_id=changed.promotion_id,
        sequence=changed.sequence,
        previous_hash=changed.previous_hash,
        content=content,
        created_at=changed.created_at,
    )
    files[_path(chain, INPUTS_CHANGED)] = json.dumps(sign_packet(type(changed)(**fields), chain.new_key)).encode()
    return files


@pytest.mark.parametrize("refresh_manifest", [False, True], ids=["manifest-as-exported", "manifest-doctored"])
def test_tampered_large_bundle_gives_the_same_findings_with_a_pool(
    big_chain: Chain, refresh_manifest: bool, pools: list[int]
) -> None:
    bundle = _pack(_tampered(big_chain), refresh_manifest=refresh_manifest)
    one, _ = _both(
        bundle, pools, trusted_keys=PublicKeyRing(big_chain.public_keys), trusted_key_log=big_chain.key_log()
    )
    assert one.exit_code == 1
    kinds = {(f.sequence, f.kind) for f in one.findings}
    assert (11, FindingKind.BAD_SIGNATURE) in kinds
    assert (11, FindingKind.HASH_MISMATCH) in kinds
    assert (40, FindingKind.BAD_SIGNATURE) in kinds
    assert (COUNT - 3, FindingKind.BAD_SIGNATURE) in kinds
    assert (100, FindingKind.REORDERED) in kinds or (100, FindingKind.BROKEN_LINK) in kinds
    assert (200, FindingKind.MALFORMED_ENVELOPE) in kinds
    assert (INPUTS_CHANGED, FindingKind.DECISION_INPUTS_MISMATCH) in kinds


def test_cli_output_and_exit_code_do_not_depend_on_jobs(big_chain: Chain, tmp_path: Any, pools: list[int]) -> None:
    path = tmp_path / "tampered.tar.gz"
    path.write_bytes(_pack(_tampered(big_chain)))
    runs = {}
    for jobs in ("1", "2", "0"):
        for extra in ((), ("--json",)):
            out, err = io.StringIO(), io.StringIO()
            code = main([str(path), "--trust-bundle-keys", "--jobs", jobs, *extra], stdout=out, stderr=err)
            runs[(jobs, extra)] = (code, out.getvalue(), err.getvalue())
    every = os.cpu_count() or 1
    assert pools == [2, 2] + ([every, every] if every > 1 else [])
    for extra in ((), ("--json",)):
        assert runs[("2", extra)] == runs[("1", extra)] == runs[("0", extra)]
        assert runs[("1", extra)][0] == 1
    assert "FAILED:" in runs[("1", ())][1]


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_cli_refuses_a_bad_jobs_value(value: str, tmp_path: Any) -> None:
    err = io.StringIO()
    assert main([str(tmp_path / "any.tar.gz"), "--trust-bundle-keys", "--jobs", value], stderr=err) == 2


def test_a_small_bundle_is_checked_without_starting_a_pool(chain: Chain, pools: list[int]) -> None:
    report = verify_bundle(chain.bundle(), trust_bundle_keys=True, jobs=2)
    assert report.ok, report.format_text()
    assert pools == []


def test_jobs_1_never_starts_a_pool(big_chain: Chain, pools: list[int]) -> None:
    items = [(path, data) for path, data in _files(big_chain.bundle()).items() if path.startswith("envelopes/")]
    assert len(check_envelopes(items, PublicKeyRing(big_chain.public_keys), jobs=1)) == len(items)
    assert pools == []


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_paused_during_the_checks_and_left_as_it_was(chain: Chain, enabled: bool) -> None:
    items = [(path, data) for path, data in _files(chain.bundle()).items() if path.startswith("envelopes/")]
    items.append(("envelopes/0000000099-x.dsse.json", b"not json"))  # a check that raises and is caught
    seen: list[bool] = []
    check = envelope_check.check_envelope

    def noting(path: str, data: bytes, keyring: PublicKeyRing) -> envelope_check.EnvelopeOutcome:
        seen.append(gc.isenabled())
        return check(path, data, keyring)

    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(envelope_check, "check_envelope", noting)
            outcomes = check_envelopes(items, PublicKeyRing(chain.public_keys), jobs=1)
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
    assert seen == [False] * len(items)
    assert [bool(outcome.findings) for outcome in outcomes] == [False] * (len(items) - 1) + [True]


def test_pool_keeps_the_content_only_when_asked(big_chain: Chain) -> None:
    items = sorted((p, d) for p, d in _files(big_chain.bundle()).items() if p.startswith("envelopes/"))[:8]
    ring = PublicKeyRing(big_chain.public_keys)
    kept = check_envelopes(items, ring, jobs=2, threshold=1, keep_content=True)
    dropped = check_envelopes(items, ring, jobs=2, threshold=1, keep_content=False)
    here = check_envelopes(items, ring, jobs=1)
    for a, b, c in zip(kept, dropped, here, strict=True):
        assert a.packet is not None and b.packet is not None and c.packet is not None
        assert a.packet.content == c.packet.content != {}
        assert b.packet.content == {}
        assert a.packet.recomputed == b.packet.recomputed == c.packet.recomputed
        assert a.packet.recomputed[0] == a.packet.content_hash
        assert (a.leaf, a.verified_refs, a.findings) == (c.leaf, c.verified_refs, c.findings)


def test_untrusted_keys_are_reported_the_same(big_chain: Chain, pools: list[int]) -> None:
    """Which keys verified each packet travels back from the pool to the parent's validity check."""
    one, _ = _both(
        big_chain.bundle(), pools, trusted_keys=PublicKeyRing([big_chain.old_key.public_key]), trusted_key_log=[]
    )
    assert one.exit_code == 1
    assert {f.kind for f in one.findings if f.sequence == COUNT} == {FindingKind.UNKNOWN_KEY}
    assert not [f for f in one.findings if f.sequence == 1]  # the old key, valid by the bundle's key log


def test_a_process_running_threads_spawns_its_workers_and_gets_the_same_outcomes(big_chain: Chain) -> None:
    """Forking a process that runs other threads is unsafe; then the workers are spawned and sent the files."""
    items = sorted((p, d) for p, d in _files(big_chain.bundle()).items() if p.startswith("envelopes/"))[:6]
    ring = PublicKeyRing(big_chain.public_keys)
    here = check_envelopes(items, ring, jobs=1)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert envelope_check._context().get_start_method() == "spawn"
        spawned = check_envelopes(items, ring, jobs=2, threshold=1)
    finally:
        stop.set()
        other.join()
    for a, b in zip(spawned, here, strict=True):
        assert a.packet is not None and b.packet is not None
        assert (a.packet.content, a.packet.recomputed, a.leaf, a.findings) == (
            b.packet.content,
            b.packet.recomputed,
            b.leaf,
            b.findings,
        )


def _die(*args: Any) -> None:
    os._exit(3)


def test_a_dead_worker_leaves_the_checks_to_this_process(
    big_chain: Chain, monkeypatch: pytest.MonkeyPatch, pools: list[int]
) -> None:
    """A worker that dies (here: as it starts) breaks the pool; the verdict still covers every packet."""
    bundle = _pack(_tampered(big_chain))
    expected = verify_bundle(bundle, trust_bundle_keys=True, jobs=1)
    monkeypatch.setattr(envelope_check, "_start_worker", _die)
    report = verify_bundle(bundle, trust_bundle_keys=True, jobs=2)
    assert pools == [2]
    assert report.to_dict() == expected.to_dict()
    assert report.packet_count == COUNT - 1  # every readable packet, the unreadable one reported
