"""The offline verifier against a real exported bundle: untouched, and tampered every way an attacker could."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from stella.contracts.canonical import canonicalize
from stella.evidence import merkle
from stella.evidence.bundle import build_bundle, envelope_path, read_bundle
from stella.evidence.chain import FindingKind
from stella.evidence.dsse import sign_envelope
from stella.evidence.keys import PublicKeyRing, generate_key
from stella.evidence.statement import PAYLOAD_TYPE
from stella.evidence.verify import VerificationReport, main, verify_bundle

from .conftest import leaf_of

# ---------------------------------------------------------------------------------------------- helpers


def _files(bundle: bytes) -> dict[str, bytes]:
    return dict(read_bundle(bundle).files)


def _refresh_manifest(files: dict[str, bytes]) -> None:
    """Do what a careful forger does: make the (unsigned) manifest agree with the edited files."""
    manifest = json.loads(files["manifest.json"])
    manifest["files"] = [
        {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for path, data in sorted(files.items())
        if path != "manifest.json"
    ]
    envelopes = [p for p in files if p.startswith("envelopes/")]
    manifest["packet_count"] = len(envelopes)
    manifest["key_refs"] = sorted(
        p.removeprefix("keys/").removesuffix(".pem").replace("_", ":", 1) for p in files if p.startswith("keys/")
    )
    files["manifest.json"] = json.dumps(manifest).encode()


def _pack(files: dict[str, bytes], *, refresh_manifest: bool = False) -> bytes:
    files = dict(files)
    if refresh_manifest:
        _refresh_manifest(files)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size = len(files[path])
            tar.addfile(info, io.BytesIO(files[path]))
    return buffer.getvalue()


def _path(chain: Any, sequence: int) -> str:
    packet = chain.signed[sequence - 1].packet
    return envelope_path(packet.sequence, packet.id)


def _edit_envelope(files: dict[str, bytes], path: str, edit: Any) -> None:
    envelope = json.loads(files[path])
    edit(envelope)
    files[path] = (json.dumps(envelope, indent=2, sort_keys=True) + "\n").encode()


def _edit_payload(files: dict[str, bytes], path: str, edit: Any) -> None:
    def apply(envelope: dict[str, Any]) -> None:
        envelope["payload"] = base64.b64encode(edit(base64.b64decode(envelope["payload"]))).decode()

    _edit_envelope(files, path, apply)


def _flip_byte(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


def _by_packet(report: VerificationReport) -> dict[int | None, set[FindingKind]]:
    found: dict[int | None, set[FindingKind]] = {}
    for finding in report.findings:
        found.setdefault(finding.sequence, set()).add(finding.kind)
    return found


def _only(report: VerificationReport, expected: dict[int | None, set[FindingKind]]) -> None:
    assert not report.ok
    assert report.exit_code == 1
    assert _by_packet(report) == expected, report.format_text()


# ---------------------------------------------------------------------------------------------- untouched


def test_untouched_bundle_verifies(chain: Any) -> None:
    report = verify_bundle(chain.bundle(), trust_bundle_keys=True)
    assert report.ok, report.format_text()
    assert report.exit_code == 0
    assert (report.first_sequence, report.last_sequence, report.packet_count) == (1, 6, 6)
    assert report.tenant_id == chain.tenant_id
    assert report.key_source == "bundle"
    assert report.trusted_key_refs == sorted(key.key_ref for key in chain.public_keys)
    assert report.format_text().splitlines()[-1].startswith("OK: 6 packets, sequences 1..6")


def test_untouched_bundle_verifies_with_separately_trusted_keys(chain: Any) -> None:
    report = verify_bundle(chain.bundle(), trusted_keys=PublicKeyRing(chain.public_keys))
    assert report.ok, report.format_text()
    assert report.key_source == "external"


def test_dropping_the_rotated_key_from_the_trusted_set_fails_its_packets(chain: Any) -> None:
    report = verify_bundle(chain.bundle(), trusted_keys=PublicKeyRing([chain.new_key.public_key]))
    _only(report, {1: {FindingKind.UNKNOWN_KEY}, 2: {FindingKind.UNKNOWN_KEY}, 3: {FindingKind.UNKNOWN_KEY}})
    assert any(chain.old_key.key_ref in note for note in report.notes)


# ---------------------------------------------------------------------------------------------- tampering


def test_flipped_payload_byte(chain: Any) -> None:
    files = _files(chain.bundle())
    _edit_payload(files, _path(chain, 3), lambda p: _flip_byte(p, p.index(b'"requester":"alice"') + 17))
    report = verify_bundle(_pack(files), trust_bundle_keys=True)
    _only(
        report,
        {3: {FindingKind.BAD_SIGNATURE, FindingKind.HASH_MISMATCH, FindingKind.FILE_DIGEST_MISMATCH}},
    )
    bad = next(f for f in report.findings if f.kind is FindingKind.BAD_SIGNATURE)
    assert bad.packet_id == chain.signed[2].packet.id
    assert bad.key_ref == chain.old_key.key_ref


def test_flipped_payload_byte_that_breaks_the_json(chain: Any) -> None:
    files = _files(chain.bundle())
    _edit_payload(files, _path(chain, 2), lambda p: _flip_byte(p, 0))  # "{" becomes "z"
    report = verify_bundle(_pack(files, refresh_manifest=True), trust_bundle_keys=True)
    _only(report, {2: {FindingKind.MALFORMED_STATEMENT, FindingKind.BAD_SIGNATURE}})
    assert all(f.packet_id == chain.signed[1].packet.id for f in report.findings)


@pytest.mark.parametrize(("sequence", "which"), [(2, "old_key"), (5, "new_key")], ids=["ed25519", "ecdsa-p256"])
def test_flipped_signature_byte(chain: Any, sequence: int, which: str) -> None:
    files = _files(chain.bundle())

    def flip(envelope: dict[str, Any]) -> None:
        sig = base64.b64decode(envelope["signatures"][0]["sig"])
        envelope["signatures"][0]["sig"] = base64.b64encode(_flip_byte(sig, 20)).decode()

    _edit_envelope(files, _path(chain, sequence), flip)
    report = verify_bundle(_pack(files, refresh_manifest=True), trust_bundle_keys=True)
    _only(report, {sequence: {FindingKind.BAD_SIGNATURE}})
    ref = getattr(chain, which).key_ref
    packet_id = chain.signed[sequence - 1].packet.id
    assert str(report.findings[0]) == (
        f"packet {sequence} (id {packet_id}): signature does not verify with key {ref} [bad_signature]"
    )


def test_flipped_content_hash_byte(chain: Any) -> None:
    files = _files(chain.bundle())
    recorded = chain.signed[3].packet.content_hash
    forged = recorded[:-1] + ("0" if recorded[-1] != "0" else "1")
    _edit_payload(files, _path(chain, 4), lambda p: p.replace(recorded.encode(), forged.encode()))
    report = verify_bundle(_pack(files), trust_bundle_keys=True)
    # Packet 5 still links to packet 4's true hash: the one tampered packet is the only one reported.
    _only(
        report,
        {4: {FindingKind.BAD_SIGNATURE, FindingKind.HASH_MISMATCH, FindingKind.FILE_DIGEST_MISMATCH}},
    )
    mismatch = next(f for f in report.findings if f.kind is FindingKind.HASH_MISMATCH)
    assert forged in mismatch.message and recorded in mismatch.message


def test_deleted_packet(chain: Any) -> None:
    files = _files(chain.bundle())
    del files[_path(chain, 3)]
    report = verify_bundle(_pack(files), trust_bundle_keys=True)
    _only(report, {None: {FindingKind.MANIFEST_MISMATCH}, 3: {FindingKind.FILE_MISSING}, 4: {FindingKind.GAP}})
    gap = next(f for f in report.findings if f.kind is FindingKind.GAP)
    assert gap.packet_id == chain.signed[3].packet.id
    assert gap.message == "packet 3 is missing between packet 2 and it"


def test_deleted_packet_with_a_doctored_manifest_is_still_a_gap(chain: Any) -> None:
    files = _files(chain.bundle())
    del files[_path(chain, 3)]
    report = verify_bundle(_pack(files, refresh_manifest=True), trust_bundle_keys=True)
    _only(report, {4: {FindingKind.GAP}})


def test_deleted_last_packet_disagrees_with_the_manifest_range(chain: Any) -> None:
    files = _files(chain.bundle())
    del files[_path(chain, 6)]
    report = verify_bundle(_pack(files), trust_bundle_keys=True)
    _only(report, {None: {FindingKind.MANIFEST_MISMATCH}, 6: {FindingKind.FILE_MISSING}})


def test_reordered_packets(chain: Any) -> None:
    files = _files(chain.bundle())
    third, fourth = _path(chain, 3), _path(chain, 4)
    files[third], files[fourth] = files[fourth], files[third]
    report = verify_bundle(_pack(files), trust_bundle_keys=True)
    _only(
        report,
        {
            3: {FindingKind.REORDERED, FindingKind.MISPLACED_PACKET, FindingKind.FILE_DIGEST_MISMATCH},
            4: {FindingKind.MISPLACED_PACKET, FindingKind.FILE_DIGEST_MISMATCH},
        },
    )
    reordered = next(f for f in report.findings if f.kind is FindingKind.REORDERED)
    assert reordered.packet_id == chain.signed[2].packet.id
    assert reordered.message == f"appears after packet 4 (id {chain.signed[3].packet.id})"


def test_reordered_packets_with_a_doctored_manifest(chain: Any) -> None:
    files = _files(chain.bundle())
    third, fourth = _path(chain, 3), _path(chain, 4)
    files[third], files[fourth] = files[fourth], files[third]
    report = verify_bundle(_pack(files, refresh_manifest=True), trust_bundle_keys=True)
    _only(report, {3: {FindingKind.REORDERED, FindingKind.MISPLACED_PACKET}, 4: {FindingKind.MISPLACED_PACKET}})


def _forge_with_stranger(chain: Any, files: dict[str, bytes], sequence: int, *, claim: bool) -> Any:
    """Re-sign a packet's statement with a key nobody trusts (optionally claiming it as the signer)."""
    stranger = generate_key()
    path = _path(chain, sequence)
    statement = json.loads(base64.b64decode(json.loads(files[path])["payload"]))
    if claim:
        statement["predicate"]["signer_key_ref"] = stranger.key_ref
    files[path] = (json.dumps(sign_envelope(canonicalize(statement), PAYLOAD_TYPE, stranger), indent=2) + "\n").encode()
    return stranger


def test_packet_signed_by_an_unknown_key(chain: Any) -> None:
    files = _files(chain.bundle())
    stranger = _forge_with_stranger(chain, files, 4, claim=False)
    report = verify_bundle(_pack(files, refresh_manifest=True), trust_bundle_keys=True)
    _only(report, {4: {FindingKind.UNKNOWN_KEY}})
    finding = report.findings[0]
    assert finding.key_ref == stranger.key_ref
    assert finding.packet_id == chain.signed[3].packet.id
    assert stranger.key_ref in finding.message


def test_forger_who_ships_their_own_key_is_caught_by_trusted_keys(chain: Any) -> None:
    files = _files(chain.bundle())
    stranger = _forge_with_stranger(chain, files, 6, claim=True)
    files[f"keys/{stranger.key_ref.replace(':', '_')}.pem"] = stranger.public_key.to_pem()
    forged = _pack(files, refresh_manifest=True)
    # Trusting the bundle's own keys proves only that the bundle is consistent with itself...
    assert any(stranger.key_ref in note for note in verify_bundle(forged, trust_bundle_keys=True).notes)
    # ...trusting the keys the organization published exposes the forgery.
    report = verify_bundle(forged, trusted_keys=PublicKeyRing(chain.public_keys))
    _only(report, {6: {FindingKind.UNKNOWN_KEY}})
    assert any(f"bundle key {stranger.key_ref} is not among the trusted keys" == note for note in report.notes)


def test_modified_file_disagrees_with_the_manifest(chain: Any) -> None:
    files = _files(chain.bundle())
    files["VERIFY.md"] += b"\nAll bundles are valid, no need to check.\n"
    report = verify_bundle(_pack(files), trust_bundle_keys=True)
    _only(report, {None: {FindingKind.FILE_DIGEST_MISMATCH}})
    assert report.findings[0].path == "VERIFY.md"
    assert str(report.findings[0]).startswith("file VERIFY.md: VERIFY.md has sha256 ")


def test_replaced_key_file(chain: Any) -> None:
    files = _files(chain.bundle())
    path = f"keys/{chain.old_key.key_ref.replace(':', '_')}.pem"
    files[path] = generate_key().public_key.to_pem()
    report = verify_bundle(_pack(files), trust_bundle_keys=True)
    found = _by_packet(report)
    assert found[None] == {
        FindingKind.FILE_DIGEST_MISMATCH,
        FindingKind.KEY_REF_MISMATCH,
        FindingKind.MANIFEST_MISMATCH,  # the key it holds is not the one the manifest lists
    }
    assert all(found[sequence] == {FindingKind.UNKNOWN_KEY} for sequence in (1, 2, 3))
    assert set(found) == {None, 1, 2, 3}


def test_added_file_and_link_are_reported(chain: Any) -> None:
    files = _files(chain.bundle())
    files["notes.txt"] = b"hello"
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(_pack(files)), mode="r:gz") as source,
        tarfile.open(fileobj=out, mode="w:gz") as target,
    ):
        for member in source:
            target.addfile(member, source.extractfile(member))
        link = tarfile.TarInfo("keys/link.pem")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/hostname"
        target.addfile(link)
    report = verify_bundle(out.getvalue(), trust_bundle_keys=True)
    kinds = {(f.kind, f.path) for f in report.findings}
    assert kinds == {(FindingKind.FILE_UNLISTED, "notes.txt"), (FindingKind.UNEXPECTED_MEMBER, "keys/link.pem")}


def test_missing_manifest_still_checks_every_packet(chain: Any) -> None:
    files = _files(chain.bundle())
    del files["manifest.json"]
    _edit_envelope(
        files, _path(chain, 2), lambda e: e["signatures"][0].update(sig=base64.b64encode(b"x" * 64).decode())
    )
    report = verify_bundle(_pack(files), trust_bundle_keys=True)
    _only(report, {None: {FindingKind.MANIFEST_INVALID}, 2: {FindingKind.BAD_SIGNATURE}})


def test_manifest_metadata_must_match_the_packets(chain: Any) -> None:
    files = _files(chain.bundle())
    manifest = json.loads(files["manifest.json"])
    manifest["range"]["last_sequence"] = 9
    files["manifest.json"] = json.dumps(manifest).encode()
    report = verify_bundle(_pack(files), trust_bundle_keys=True)
    _only(report, {None: {FindingKind.MANIFEST_MISMATCH}})
    assert "sequences 1..9" in report.findings[0].message


@pytest.mark.parametrize("data", [b'{"payload": 1}', b"[" * 100_000 + b"]" * 100_000], ids=["shape", "nested"])
def test_malformed_envelope_file(chain: Any, data: bytes) -> None:
    """An envelope file of the wrong shape, or nested too deeply to be read, is a finding, not a crash."""
    files = _files(chain.bundle())
    files[_path(chain, 5)] = data
    report = verify_bundle(_pack(files, refresh_manifest=True), trust_bundle_keys=True)
    _only(report, {5: {FindingKind.MALFORMED_ENVELOPE}})


def test_a_key_log_nested_too_deeply_is_a_finding(chain: Any) -> None:
    files = _files(chain.bundle())
    files["key-log.json"] = b"[" * 100_000 + b"]" * 100_000
    report = verify_bundle(_pack(files, refresh_manifest=True), trust_bundle_keys=True)
    assert FindingKind.KEY_LOG_INVALID in {finding.kind for finding in report.findings}


# ---------------------------------------------------------------------------------------------- command


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stella.evidence.verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_untouched_bundle_exits_0(tmp_path: Path, chain: Any) -> None:
    bundle = tmp_path / "evidence.tar.gz"
    bundle.write_bytes(chain.bundle())
    result = _run(str(bundle), "--trust-bundle-keys")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("OK: 6 packets, sequences 1..6")
    assert "warning: trusting the keys inside the bundle" in result.stderr
    keys = tmp_path / "trusted"
    keys.mkdir()
    for key in chain.public_keys:
        (keys / f"{key.key_ref}.pem").write_bytes(key.to_pem())
    assert _run(str(bundle), "--keys", str(keys)).returncode == 0


def test_cli_tampered_bundle_exits_1_with_one_line_per_finding(tmp_path: Path, chain: Any) -> None:
    files = _files(chain.bundle())

    def flip(envelope: dict[str, Any]) -> None:
        sig = base64.b64decode(envelope["signatures"][0]["sig"])
        envelope["signatures"][0]["sig"] = base64.b64encode(_flip_byte(sig, 3)).decode()

    _edit_envelope(files, _path(chain, 2), flip)
    bundle = tmp_path / "tampered.tar.gz"
    bundle.write_bytes(_pack(files))
    result = _run(str(bundle), "--trust-bundle-keys")
    assert result.returncode == 1
    packet_id = chain.signed[1].packet.id
    assert (
        f"packet 2 (id {packet_id}): signature does not verify with key {chain.old_key.key_ref} [bad_signature]"
        in result.stdout.splitlines()
    )
    assert result.stdout.splitlines()[-1].startswith("FAILED: 2 findings in 6 packets")

    as_json = _run(str(bundle), "--json", "--trust-bundle-keys")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert {(f["kind"], f["sequence"]) for f in report["findings"]} == {
        ("bad_signature", 2),
        ("file_digest_mismatch", 2),
    }


def test_cli_unknown_trusted_key_exits_1(tmp_path: Path, chain: Any) -> None:
    bundle = tmp_path / "evidence.tar.gz"
    bundle.write_bytes(chain.bundle())
    keys = tmp_path / "trusted"
    keys.mkdir()
    (keys / "other.pem").write_bytes(generate_key().public_key.to_pem())
    result = _run(str(bundle), "--keys", str(keys))
    assert result.returncode == 1
    assert len(re.findall(r"\[unknown_key\]$", result.stdout, re.M)) == 6


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (d / "b.tar.gz").write_bytes(b"garbage"), "cannot read bundle"),
        (lambda d: None, "cannot read bundle"),
    ],
    ids=["not-a-bundle", "missing-file"],
)
def test_cli_unusable_input_exits_2(tmp_path: Path, setup: Any, message: str) -> None:
    setup(tmp_path)
    result = _run(str(tmp_path / "b.tar.gz"), "--trust-bundle-keys")
    assert result.returncode == 2
    assert message in result.stderr


def test_cli_unusable_keys_exit_2(tmp_path: Path, chain: Any) -> None:
    bundle = tmp_path / "evidence.tar.gz"
    bundle.write_bytes(chain.bundle())
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "k.pem").write_text("not a key")
    for keys in (tmp_path / "absent", empty, broken):
        result = _run(str(bundle), "--keys", str(keys))
        assert result.returncode == 2, keys
        assert "trusted keys" in result.stderr or "no *.pem" in result.stderr
    assert _run().returncode == 2  # no bundle argument


def test_main_in_process(tmp_path: Path, chain: Any) -> None:
    bundle = tmp_path / "evidence.tar.gz"
    bundle.write_bytes(chain.bundle())
    out, err = io.StringIO(), io.StringIO()
    assert main([str(bundle), "--json", "--trust-bundle-keys"], stdout=out, stderr=err) == 0
    assert json.loads(out.getvalue())["range"] == {"first_sequence": 1, "last_sequence": 6}


def test_console_script_is_installed(tmp_path: Path, chain: Any) -> None:
    script = Path(sys.executable).parent / "stella-evidence-verify"
    if not script.exists():
        pytest.skip("console scripts are not installed in this environment")
    bundle = tmp_path / "evidence.tar.gz"
    bundle.write_bytes(chain.bundle())
    result = subprocess.run(
        [str(script), str(bundle), "--trust-bundle-keys"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_verifier_runs_without_any_service_dependency(tmp_path: Path, chain: Any) -> None:
    """The auditor's machine has cryptography and rfc8785, nothing of the service: block everything else.

    The one exception is the project's canonical JSON (``stella.contracts.canonical``), which needs only the
    standard library and rfc8785; the rest of the contracts (and pydantic) stays blocked. msgspec, which reads
    statements faster when it is installed, is blocked too: the verifier does the same work without it.
    """
    bundle = tmp_path / "evidence.tar.gz"
    bundle.write_bytes(chain.bundle())
    program = textwrap.dedent(
        f"""
        import sys

        BLOCKED = (
            "pydantic", "stella.kit", "stella.contracts", "faststream", "asyncpg", "nats", "litestar", "msgspec"
        )

        ALLOWED = ("stella.contracts", "stella.contracts.canonical")

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.startswith(BLOCKED) and name not in ALLOWED:
                    raise ImportError(f"{{name}} is not available on the auditor's machine")
                return None

        sys.meta_path.insert(0, Block())
        from stella.evidence.verify import main

        code = main([{str(bundle)!r}, "--trust-bundle-keys"])
        loaded = sorted(m for m in sys.modules if m.startswith(BLOCKED) and m not in ALLOWED)
        assert not loaded, loaded
        sys.exit(code)
        """
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 6 packets" in result.stdout


def test_manifest_time_and_keys_are_checked_and_extra_signatures_noted(chain: Any) -> None:
    files = _files(chain.bundle())
    manifest = json.loads(files["manifest.json"])
    manifest["created_at"] = "2020-01-01T00:00:00.000000Z"  # before the packets it holds
    manifest["key_refs"] = [chain.new_key.key_ref]
    files["manifest.json"] = json.dumps(manifest).encode()
    report = verify_bundle(_pack(files), trust_bundle_keys=True)
    messages = [f.message for f in report.findings if f.kind is FindingKind.MANIFEST_MISMATCH]
    assert len(messages) == 2 and any("before its newest packet" in m for m in messages), report.format_text()

    files = _files(chain.bundle())
    stranger = generate_key()

    def cosign(envelope: dict[str, Any]) -> None:
        envelope["signatures"].append(sign_envelope(b"x", PAYLOAD_TYPE, stranger)["signatures"][0])

    _edit_envelope(files, _path(chain, 2), cosign)
    report = verify_bundle(_pack(files, refresh_manifest=True), trust_bundle_keys=True)
    assert report.ok, report.format_text()
    assert any(f"signatures by keys that are not trusted ({stranger.key_ref})" in n for n in report.notes)
    assert "trusted signature" in report.format_text().splitlines()[-1]


def test_a_partial_bundle_says_which_link_it_did_not_check(chain: Any) -> None:
    tree = chain.tree()
    partial = dataclasses.replace(tree, first_sequence=3)
    leaves = [leaf_of(item) for item in chain.signed]
    partial.outside[(0, 2)] = merkle.root_from_leaves(leaves[:2])
    bundle = build_bundle(
        chain.signed[2:],
        chain.public_keys,
        tenant_id=chain.tenant_id,
        created_at=chain.created_at,
        tree=partial,
        key_log=chain.key_log(),
    )
    report = verify_bundle(bundle, trust_bundle_keys=True)
    assert report.ok, report.format_text()
    assert any("its link to packet 2, which is not in the bundle, was not checked" in n for n in report.notes)
