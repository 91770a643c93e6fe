"""Export bundle writing and reading, and the VERIFY.md instructions run as written."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stella.evidence.bundle import (
    BundleFormatError,
    ManifestError,
    build_bundle,
    envelope_path,
    parse_envelope_path,
    parse_manifest,
    read_bundle,
    write_bundle,
)


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getmembers()


def test_same_packets_give_the_same_bytes(chain: Any) -> None:
    tree = chain.tree()
    first = build_bundle(
        chain.signed, chain.public_keys, tenant_id=chain.tenant_id, created_at=chain.created_at, tree=tree
    )
    again = build_bundle(
        list(reversed(chain.signed)),
        list(reversed(chain.public_keys)),
        tenant_id=chain.tenant_id,
        created_at=chain.created_at,
        tree=tree,
    )
    assert first == again
    assert first[4:8] == b"\x00\x00\x00\x00", "gzip header carries no timestamp"


def test_layout_names_modes_and_times(chain: Any) -> None:
    members = _members(chain.bundle())
    names = [m.name for m in members]
    assert names == sorted(names)
    expected_envelopes = [envelope_path(s.packet.sequence, s.packet.id) for s in chain.signed]
    assert expected_envelopes[0] == f"envelopes/0000000001-{chain.signed[0].packet.id}.dsse.json"
    assert set(names) == {
        "VERIFY.md",
        "checkpoint.txt",
        "envelopes",
        "key-log.json",
        "keys",
        "manifest.json",
        "tree.json",
        *expected_envelopes,
        *(f"keys/{key.key_ref.replace(':', '_')}.pem" for key in chain.public_keys),
    }
    mtime = int(chain.created_at.timestamp())
    for member in members:
        assert member.mtime == mtime
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mode == (0o755 if member.isdir() else 0o644)


def test_manifest_lists_every_other_file_with_its_digest(chain: Any) -> None:
    contents = read_bundle(chain.bundle())
    manifest = json.loads(contents.files["manifest.json"])
    assert manifest["format"] == "stella-evidence-bundle/v1"
    assert manifest["tenant_id"] == str(chain.tenant_id)
    assert manifest["created_at"] == "2025-03-15T09:26:53.589793Z"
    assert manifest["range"] == {"first_sequence": 1, "last_sequence": 6}
    assert manifest["packet_count"] == 6
    assert manifest["key_refs"] == sorted(key.key_ref for key in chain.public_keys)
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert set(listed) == set(contents.files) - {"manifest.json"}
    for path, data in contents.files.items():
        if path != "manifest.json":
            assert listed[path]["sha256"] == hashlib.sha256(data).hexdigest()
            assert listed[path]["size"] == len(data)
    assert parse_manifest(contents.files["manifest.json"]).packet_count == 6


def test_envelope_files_hold_the_stored_envelopes(chain: Any) -> None:
    contents = read_bundle(chain.bundle())
    for item in chain.signed:
        stored = json.loads(contents.files[envelope_path(item.packet.sequence, item.packet.id)])
        assert stored == item.envelope


def test_empty_export(chain: Any) -> None:
    data = build_bundle([], chain.public_keys, tenant_id=chain.tenant_id, created_at=chain.created_at)
    manifest = parse_manifest(read_bundle(data).files["manifest.json"])
    assert (manifest.first_sequence, manifest.last_sequence, manifest.packet_count) == (None, None, 0)


def test_export_refuses_foreign_and_duplicate_packets(chain: Any, chain_factory: Callable[..., Any]) -> None:
    other = chain_factory(1)
    with pytest.raises(ValueError, match="belongs to tenant"):
        build_bundle(
            chain.signed + other.signed, chain.public_keys, tenant_id=chain.tenant_id, created_at=chain.created_at
        )
    with pytest.raises(ValueError, match="sequence 2"):
        build_bundle(
            [*chain.signed, chain.signed[1]], chain.public_keys, tenant_id=chain.tenant_id, created_at=chain.created_at
        )


def test_write_bundle_to_a_file(tmp_path: Path, chain: Any) -> None:
    path = tmp_path / "export.tar.gz"
    write_bundle(
        path,
        chain.signed,
        chain.public_keys,
        tenant_id=chain.tenant_id,
        created_at=chain.created_at,
        tree=chain.tree(),
        key_log=chain.key_log(),
    )
    assert path.read_bytes() == chain.bundle()
    assert read_bundle(path).files.keys() == read_bundle(chain.bundle()).files.keys()
    with path.open("rb") as handle:
        assert "manifest.json" in read_bundle(handle).files


def test_envelope_path_parsing() -> None:
    packet_id = "6f1c3a8e-2b7d-4c59-9e0a-1d2f3b4c5d6e"
    assert parse_envelope_path(f"envelopes/0000000042-{packet_id}.dsse.json") == (42, uuid.UUID(packet_id))
    assert parse_envelope_path("envelopes/42.dsse.json") is None
    assert parse_envelope_path(f"keys/0000000042-{packet_id}.dsse.json") is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a gzip stream", "not a readable"),
        (gzip.compress(b"not a tar archive" * 40), "not a readable"),
        (b"", "not a readable"),
    ],
)
def test_unreadable_input_is_a_format_error(data: bytes, message: str) -> None:
    with pytest.raises(BundleFormatError, match=message):
        read_bundle(data)


def _tar_gz(entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    return buffer.getvalue()


def test_truncated_archive_is_a_format_error(chain: Any) -> None:
    data = chain.bundle()
    with pytest.raises(BundleFormatError):
        read_bundle(data[: len(data) // 2])


def test_empty_archive_is_a_format_error() -> None:
    with pytest.raises(BundleFormatError, match="no files"):
        read_bundle(_tar_gz([]))


def test_size_limits() -> None:
    data = _tar_gz([("a", b"x" * 100), ("b", b"y" * 100)])
    with pytest.raises(BundleFormatError, match="more than the 50 allowed"):
        read_bundle(data, max_file_size=50)
    with pytest.raises(BundleFormatError, match="in total"):
        read_bundle(data, max_total_size=150)


def test_links_and_duplicates_are_reported_not_followed() -> None:
    link = tarfile.TarInfo("keys/evil.pem")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    contents = read_bundle(_tar_gz([("./manifest.json", b"{}"), link, ("a.txt", b"1"), ("a.txt", b"2")]))
    assert contents.files == {"manifest.json": b"{}", "a.txt": b"1"}
    assert contents.irregular == ("keys/evil.pem",)
    assert contents.duplicates == ("a.txt",)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (b"{", "not UTF-8 JSON"),
        (b"[]", "not a JSON object"),
        (b'{"format": "zip/v9"}', "format"),
        (b'{"format": "stella-evidence-bundle/v1"}', "incomplete"),
    ],
)
def test_bad_manifests(manifest: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(manifest)


def test_verify_md_names_the_bundle(chain: Any) -> None:
    text = read_bundle(chain.bundle()).files["VERIFY.md"].decode()
    assert str(chain.tenant_id) in text
    assert "sequences 1 to 6" in text
    assert "DSSEv1 29 http://example.com/HelloWorld 11 hello world" in text
    assert "openssl pkeyutl -verify -pubin" in text and "-rawin" in text
    for key in chain.public_keys:
        assert key.key_ref in text


# The instructions are only worth something if they work: run the documented commands as written.

_TOOLS = ("bash", "jq", "openssl", "sha256sum", "base64", "awk", "comm")
needs_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in _TOOLS), reason=f"needs {', '.join(_TOOLS)}"
)


def _documented_blocks(bundle: bytes) -> tuple[list[str], list[str]]:
    text = read_bundle(bundle).files["VERIFY.md"].decode()
    blocks = re.findall(r"```(sh|python)\n(.*?)```", text, re.S)
    shell = [code for lang, code in blocks if lang == "sh"]
    python = [code for lang, code in blocks if lang == "python"]
    assert len(shell) == 8 and len(python) == 2
    return shell, python


def _run_documented(tmp_path: Path, bundle: bytes) -> subprocess.CompletedProcess[str]:
    archive = tmp_path / "evidence.tar.gz"
    archive.write_bytes(bundle)
    shell, (hashes, tree) = _documented_blocks(bundle)
    (tmp_path / "check_hashes.py").write_text(hashes)
    (tmp_path / "check_tree.py").write_text(tree)
    script = "\n".join(shell).replace("<bundle>.tar.gz", str(archive))
    script += f'\n"{sys.executable}" ../check_hashes.py envelopes/*.dsse.json\n'
    script += f'\n"{sys.executable}" ../check_tree.py\n'
    return subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )


@needs_tools
def test_documented_commands_verify_an_untouched_bundle(tmp_path: Path, chain: Any) -> None:
    result = _run_documented(tmp_path, chain.bundle())
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count(": OK") == len(read_bundle(chain.bundle()).files) - 1
    assert "FAILED" not in out and "BROKEN" not in out and "MISMATCH" not in out
    assert out.count("Signature Verified Successfully") == 3  # Ed25519 packets 1..3
    assert out.count("Verified OK") == 3  # ECDSA P-256 packets 4..6
    assert out.count("signature ok:") == 6
    for sequence in range(1, 7):
        assert re.search(rf"^{sequence} OK envelopes/", out, re.M)
    for key in chain.public_keys:
        name = key.key_ref.replace(":", "_")
        assert re.search(rf"^keys/{name}.pem sha256:{key.key_ref.split(':')[1]}[0-9a-f]{{48}}$", out, re.M)
    assert f"checkpoint signed by keys/{chain.new_key.key_ref.replace(':', '_')}.pem: 6 packets" in out
    assert re.search(r"^OK$", out, re.M) and "MISMATCH" not in out
    assert out.count("key valid: packet") == 6 and "KEY NOT VALID" not in out


@needs_tools
def test_documented_commands_catch_tampering(tmp_path: Path, chain: Any) -> None:
    contents = read_bundle(chain.bundle())
    third = chain.signed[2]
    path = envelope_path(third.packet.sequence, third.packet.id)
    envelope = json.loads(contents.files[path])
    payload = base64.b64decode(envelope["payload"]).replace(b'"requester":"alice"', b'"requester":"alicf"')
    envelope["payload"] = base64.b64encode(payload).decode()
    files = dict(contents.files)
    files[path] = json.dumps(envelope).encode()
    files.pop(envelope_path(chain.signed[4].packet.sequence, chain.signed[4].packet.id))
    result = _run_documented(tmp_path, _tar_gz(list(files.items())))
    out = result.stdout
    assert f"{path}: FAILED" in out
    assert f"FAILED: {path}" in out
    assert "BROKEN at 6: follows sequence 4" in out
    assert re.search(rf"^3 MISMATCH {re.escape(path)}", out, re.M)


@pytest.mark.parametrize("cut", [1, 8, 20, 40, 200])
def test_a_bundle_cut_short_is_refused_wherever_the_cut_falls(chain: Any, cut: int) -> None:
    """A cut that only takes the archive's end blocks or the gzip checksum still makes it unreadable."""
    data = chain.bundle()
    with pytest.raises(BundleFormatError, match="not a readable tar"):
        read_bundle(data[:-cut])


def test_a_bundle_with_a_wrong_gzip_checksum_is_refused(chain: Any) -> None:
    data = bytearray(chain.bundle())
    data[-8] ^= 0xFF  # the CRC-32 of the uncompressed archive
    with pytest.raises(BundleFormatError, match="not a readable tar"):
        read_bundle(bytes(data))
