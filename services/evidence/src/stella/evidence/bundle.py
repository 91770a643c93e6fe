"""Export bundles: a deterministic ``tar.gz`` of signed packets, public keys, a manifest and instructions.

Layout::

    VERIFY.md                                      how to verify with standard tools
    envelopes/<sequence>-<packet id>.dsse.json     one DSSE envelope per packet (sequence zero-padded)
    keys/<key_ref>.pem                             public keys, current and rotated
    manifest.json                                  SHA-256 and size of every other file, and bundle metadata

The same packets, keys, tenant and ``created_at`` always give the same bytes: entries are sorted, owners and
permissions fixed, every mtime is ``created_at``, JSON is written with sorted keys and the gzip header carries
no timestamp or file name.

Reading never extracts to disk; members are read into memory with size limits, and anything that is not a
plain file is reported instead of followed.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final
from uuid import UUID

from stella.contracts.canonical import sha256_digest
from stella.evidence.keys import PublicKey
from stella.evidence.merkle import HASH_SIZE, Range
from stella.evidence.packet import SignedPacket, format_timestamp, parse_timestamp
from stella.evidence.statement import PAYLOAD_TYPE, PREDICATE_TYPE

BUNDLE_FORMAT: Final[str] = "stella-evidence-bundle/v1"
"""``format`` of the manifest; bumped if the layout ever changes."""

MANIFEST_PATH: Final[str] = "manifest.json"
"""Path of the manifest inside the bundle."""

VERIFY_PATH: Final[str] = "VERIFY.md"
"""Path of the verification instructions inside the bundle."""

ENVELOPES_DIR: Final[str] = "envelopes/"
"""Directory of the packet envelopes."""

KEYS_DIR: Final[str] = "keys/"
"""Directory of the public keys."""

CHECKPOINT_PATH: Final[str] = "checkpoint.txt"
"""Path of the signed checkpoint (C2SP signed note) of the tenant's tree the packets belong to."""

TIMESTAMP_PATH: Final[str] = "checkpoint.tsr"
"""Path of the RFC 3161 timestamp token (DER TimeStampToken) of ``checkpoint.txt``, when a TSA is configured."""

KEY_LOG_PATH: Final[str] = "key-log.json"
"""Path of the signed key log (a JSON list of DSSE envelopes, see :mod:`stella.evidence.keylog`); the same
file name in a ``--keys`` directory holds the log as the service publishes it."""

TREE_PATH: Final[str] = "tree.json"
"""Path of what recomputes the checkpoint's root from the packets: the range and the subtrees around it."""

SEQUENCE_DIGITS: Final[int] = 10
"""Sequences in envelope file names are zero-padded to this width, so names sort in sequence order."""

MAX_FILE_SIZE: Final[int] = 64 * 1024 * 1024
"""Default largest member a reader accepts (bytes)."""

MAX_TOTAL_SIZE: Final[int] = 4 * 1024 * 1024 * 1024
"""Default largest total of member sizes a reader accepts (bytes)."""

_ENVELOPE_NAME_RE: Final[re.Pattern[str]] = re.compile(
    r"envelopes/(\d+)-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.dsse\.json"
)
_SHA256_HEX_RE: Final[re.Pattern[str]] = re.compile(r"[0-9a-f]{64}")


class BundleFormatError(ValueError):
    """The input is not a readable bundle (not gzip, not tar, too large); nothing in it can be checked."""


class ManifestError(ValueError):
    """``manifest.json`` is missing or not a manifest this reader understands."""


def envelope_path(sequence: int, packet_id: UUID) -> str:
    """Return the bundle path of a packet's envelope."""
    return f"{ENVELOPES_DIR}{sequence:0{SEQUENCE_DIGITS}d}-{packet_id}.dsse.json"


def parse_envelope_path(path: str) -> tuple[int, UUID] | None:
    """Return ``(sequence, packet id)`` named by an envelope path, or ``None`` if the name has another shape."""
    match = _ENVELOPE_NAME_RE.fullmatch(path)
    if match is None:
        return None
    return int(match.group(1)), UUID(match.group(2))


def key_path(key_ref: str) -> str:
    """Return the bundle path of a public key: ``keys/<algorithm>_<hex>.pem`` (no ``:``, which some file
    systems refuse)."""
    return f"{KEYS_DIR}{key_ref.replace(':', '_', 1)}.pem"


def key_ref_of_path(path: str) -> str:
    """The key reference a key file's name states (the inverse of :func:`key_path`)."""
    return path.removeprefix(KEYS_DIR).removesuffix(".pem").replace("_", ":", 1)


def _json_bytes(value: Any) -> bytes:
    # Readable and deterministic; these files are hashed as bytes by the manifest, never re-serialized.
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


@dataclass(frozen=True)
class ManifestFile:
    """A file listed in the manifest.

    Attributes:
        path: Path inside the bundle.
        sha256: Lowercase hex SHA-256 of its bytes.
        size: Its size in bytes.
    """

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """The bundle manifest.

    Attributes:
        tenant_id: Tenant whose packets the bundle holds.
        created_at: When the bundle was made.
        first_sequence: Lowest packet sequence exported (``None`` for an empty bundle).
        last_sequence: Highest packet sequence exported (``None`` for an empty bundle).
        packet_count: Number of envelopes.
        key_refs: References of the public keys included.
        files: Every other file of the bundle, sorted by path.
    """

    tenant_id: UUID
    created_at: datetime
    first_sequence: int | None
    last_sequence: int | None
    packet_count: int
    key_refs: tuple[str, ...]
    files: tuple[ManifestFile, ...] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as JSON."""
        return {
            "format": BUNDLE_FORMAT,
            "tenant_id": str(self.tenant_id),
            "created_at": format_timestamp(self.created_at),
            "range": (
                None
                if self.first_sequence is None
                else {"first_sequence": self.first_sequence, "last_sequence": self.last_sequence}
            ),
            "packet_count": self.packet_count,
            "payload_type": PAYLOAD_TYPE,
            "predicate_type": PREDICATE_TYPE,
            "key_refs": list(self.key_refs),
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
        }


@dataclass(frozen=True)
class TreeProof:
    """The checkpoint a bundle carries, and what recomputes its root from the bundle's packets.

    Attributes:
        checkpoint: The signed note of the tenant's tree at ``tree_size`` packets.
        tree_size: Packets the checkpoint covers.
        first_sequence: First sequence the bundle claims to hold (1 for an export from the start), or ``None``.
        last_sequence: Last sequence the bundle claims to hold (``tree_size`` for an export to the end).
        outside: Roots of the subtrees of the RFC 6962 recursion that hold none of the bundle's packets,
            by leaf range ``[start, end)``.
        timestamp: The RFC 3161 token a time-stamping authority signed over the checkpoint, if one was asked.
    """

    checkpoint: str
    tree_size: int
    first_sequence: int | None
    last_sequence: int | None
    outside: dict[Range, bytes] = field(default_factory=dict)
    timestamp: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``tree.json`` form (the checkpoint itself is ``checkpoint.txt``)."""
        return {
            "tree_size": self.tree_size,
            "range": (
                None
                if self.first_sequence is None
                else {"first_sequence": self.first_sequence, "last_sequence": self.last_sequence}
            ),
            "outside": [
                {"start": start, "end": end, "hash": digest.hex()}
                for (start, end), digest in sorted(self.outside.items())
            ],
        }


def parse_tree_proof(checkpoint: bytes, data: bytes) -> TreeProof:
    """Read ``checkpoint.txt`` and ``tree.json``.

    Raises:
        ManifestError: When either is unreadable or a field has the wrong shape.
    """
    try:
        note = checkpoint.decode("utf-8")
        raw = json.loads(data.decode("utf-8"))
        size = raw["tree_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestError("tree.json: tree_size is not a non-negative integer")
        span = raw["range"]
        first = _optional_int(None if span is None else span["first_sequence"], "first_sequence")
        last = _optional_int(None if span is None else span["last_sequence"], "last_sequence")
        outside: dict[Range, bytes] = {}
        for entry in raw["outside"]:
            start, end, digest = entry["start"], entry["end"], bytes.fromhex(entry["hash"])
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= size):
                raise ManifestError(f"tree.json: outside range {start}..{end} is not within the tree")
            if len(digest) != HASH_SIZE:
                raise ManifestError("tree.json: an outside hash is not 32 bytes")
            outside[(start, end)] = digest
    except ManifestError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"checkpoint.txt or tree.json is unreadable: {exc!r}") from exc
    return TreeProof(checkpoint=note, tree_size=size, first_sequence=first, last_sequence=last, outside=outside)


def _optional_int(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManifestError(f"{name} is not a non-negative integer")
    return value


def parse_manifest(data: bytes) -> Manifest:
    """Parse ``manifest.json``.

    Raises:
        ManifestError: When it is not JSON, not of format ``stella-evidence-bundle/v1``, or lacks a field.
    """
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ManifestError(f"manifest.json is not UTF-8 JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError("manifest.json is not a JSON object")
    if raw.get("format") != BUNDLE_FORMAT:
        raise ManifestError(f"manifest format is {raw.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    try:
        tenant_id = UUID(raw["tenant_id"])
        created_at = parse_timestamp(raw["created_at"])
        sequence_range = raw["range"]
        if sequence_range is not None and not isinstance(sequence_range, dict):
            raise ManifestError("range is neither null nor an object")
        first = _optional_int(None if sequence_range is None else sequence_range["first_sequence"], "first_sequence")
        last = _optional_int(None if sequence_range is None else sequence_range["last_sequence"], "last_sequence")
        packet_count = _optional_int(raw["packet_count"], "packet_count")
        key_refs = raw["key_refs"]
        if not isinstance(key_refs, list) or not all(isinstance(ref, str) for ref in key_refs):
            raise ManifestError("key_refs is not a list of strings")
        files = []
        for index, entry in enumerate(raw["files"]):
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("path"), str)
                and isinstance(entry.get("sha256"), str)
                and _SHA256_HEX_RE.fullmatch(entry["sha256"])
                and isinstance(entry.get("size"), int)
            ):
                raise ManifestError(f"files[{index}] is not {{path, sha256: <64 hex>, size}}")
            files.append(ManifestFile(path=entry["path"], sha256=entry["sha256"], size=entry["size"]))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"manifest.json is incomplete or has a field of the wrong type: {exc!r}") from exc
    return Manifest(
        tenant_id=tenant_id,
        created_at=created_at,
        first_sequence=first,
        last_sequence=last,
        packet_count=packet_count or 0,
        key_refs=tuple(key_refs),
        files=tuple(files),
    )


def render_verify_md(manifest: Manifest) -> str:
    """Return the ``VERIFY.md`` of a bundle with this manifest (its ``files`` are not used)."""
    sequence_range = (
        "none (the bundle is empty)"
        if manifest.first_sequence is None
        else f"{manifest.first_sequence} to {manifest.last_sequence}"
    )
    keys = ", ".join(f"`{ref}`" for ref in manifest.key_refs) or "none"
    return (
        _VERIFY_TEMPLATE.replace("@@TENANT@@", str(manifest.tenant_id))
        .replace("@@RANGE@@", sequence_range)
        .replace("@@COUNT@@", str(manifest.packet_count))
        .replace("@@CREATED_AT@@", format_timestamp(manifest.created_at))
        .replace("@@KEYS@@", keys)
        .replace("@@PREDICATE_TYPE@@", PREDICATE_TYPE)
        .replace("@@PAYLOAD_TYPE@@", PAYLOAD_TYPE)
    )


def build_bundle(
    signed_packets: Iterable[SignedPacket],
    public_keys: Iterable[PublicKey],
    *,
    tenant_id: UUID,
    created_at: datetime,
    tree: TreeProof | None = None,
    key_log: Sequence[Mapping[str, Any]] | None = None,
) -> bytes:
    """Build an export bundle.

    The packets are exported as given, in sequence order: a gap or a packet whose signer key is missing from
    ``public_keys`` is not repaired or hidden here, it is what the verifier will report.

    Args:
        signed_packets: The packets and their envelopes, all of ``tenant_id``.
        public_keys: Every public key that may have signed them: the current key and the rotated ones.
        tenant_id: The tenant whose evidence this is.
        created_at: Export time; written to the manifest and used as every entry's mtime.
        tree: The tenant's checkpoint and the proof that ties the packets to it; its range is the one the
            manifest claims (the packets given may fall short of it: that is what the verifier reports).
        key_log: The signed key log entries, in order: when each key was valid.

    Returns:
        The ``tar.gz`` bytes.

    Raises:
        ValueError: When a packet belongs to another tenant or two packets share a sequence.
    """
    packets = sorted(signed_packets, key=lambda item: item.packet.sequence)
    seen: set[int] = set()
    for item in packets:
        if item.packet.tenant_id != tenant_id:
            raise ValueError(f"packet {item.packet.id} belongs to tenant {item.packet.tenant_id}, not {tenant_id}")
        if item.packet.sequence in seen:
            raise ValueError(f"two packets have sequence {item.packet.sequence}")
        seen.add(item.packet.sequence)
    keys = {key.key_ref: key for key in public_keys}

    files: dict[str, bytes] = {}
    for item in packets:
        files[envelope_path(item.packet.sequence, item.packet.id)] = _json_bytes(item.envelope)
    for ref in sorted(keys):
        files[key_path(ref)] = keys[ref].to_pem()
    first_sequence = packets[0].packet.sequence if packets else None
    last_sequence = packets[-1].packet.sequence if packets else None
    if key_log is not None:
        files[KEY_LOG_PATH] = _json_bytes(list(key_log))
    if tree is not None:
        files[CHECKPOINT_PATH] = tree.checkpoint.encode("utf-8")
        files[TREE_PATH] = _json_bytes(tree.to_dict())
        if tree.timestamp is not None:
            files[TIMESTAMP_PATH] = tree.timestamp
        first_sequence, last_sequence = tree.first_sequence, tree.last_sequence
    header = Manifest(
        tenant_id=tenant_id,
        created_at=created_at,
        first_sequence=first_sequence,
        last_sequence=last_sequence,
        packet_count=len(packets),
        key_refs=tuple(sorted(keys)),
        files=(),
    )
    files[VERIFY_PATH] = render_verify_md(header).encode("utf-8")
    listed = tuple(
        ManifestFile(path=path, sha256=sha256_digest(data).removeprefix("sha256:"), size=len(data))
        for path, data in sorted(files.items())
    )
    manifest = Manifest(
        tenant_id=header.tenant_id,
        created_at=header.created_at,
        first_sequence=header.first_sequence,
        last_sequence=header.last_sequence,
        packet_count=header.packet_count,
        key_refs=header.key_refs,
        files=listed,
    )
    files[MANIFEST_PATH] = _json_bytes(manifest.to_dict())
    return _tar_gz(files, mtime=int(created_at.timestamp()))


def write_bundle(
    path: str | os.PathLike[str],
    signed_packets: Iterable[SignedPacket],
    public_keys: Iterable[PublicKey],
    *,
    tenant_id: UUID,
    created_at: datetime,
    tree: TreeProof | None = None,
    key_log: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Build a bundle (see :func:`build_bundle`) and write it to ``path``."""
    Path(path).write_bytes(
        build_bundle(
            signed_packets, public_keys, tenant_id=tenant_id, created_at=created_at, tree=tree, key_log=key_log
        )
    )


def _tar_gz(files: dict[str, bytes], *, mtime: int) -> bytes:
    directories = sorted({path.rsplit("/", 1)[0] + "/" for path in files if "/" in path})
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted([*directories, *files]):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                data = files[name]
                info.mode = 0o644
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    gz_buffer = io.BytesIO()
    # mtime=0 and no file name: the gzip header would otherwise differ between two exports of the same data.
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz_buffer, compresslevel=9, mtime=0) as gz:
        gz.write(tar_buffer.getvalue())
    return gz_buffer.getvalue()


@dataclass(frozen=True)
class BundleContents:
    """The members of a bundle, read into memory.

    Attributes:
        files: Regular files by path (a path present twice keeps its first copy).
        irregular: Members that are not regular files or directories (links, devices, FIFOs), by path.
        duplicates: Paths that appear more than once.
    """

    files: dict[str, bytes]
    irregular: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()


def read_bundle(
    source: bytes | str | os.PathLike[str] | IO[bytes],
    *,
    max_file_size: int = MAX_FILE_SIZE,
    max_total_size: int = MAX_TOTAL_SIZE,
) -> BundleContents:
    """Read every member of a bundle without extracting anything to disk.

    Args:
        source: The ``tar.gz`` bytes, a path to it, or a binary file object.
        max_file_size: Largest member accepted, in bytes.
        max_total_size: Largest total of member sizes accepted, in bytes.

    Raises:
        BundleFormatError: When the input is not a gzip-compressed tar, is truncated, or exceeds the limits.
        OSError: When a path is given and cannot be read.
    """
    if isinstance(source, bytes):
        handle: IO[bytes] = io.BytesIO(source)
    elif isinstance(source, str | os.PathLike):
        handle = open(source, "rb")  # noqa: SIM115 - closed in the finally below
    else:
        handle = source
    files: dict[str, bytes] = {}
    irregular: list[str] = []
    duplicates: list[str] = []
    total = 0
    try:
        with tarfile.open(fileobj=handle, mode="r:gz") as tar:
            for member in tar:
                # "./x" and "x" are the same file once extracted; re-packed archives often use the former.
                name = member.name.removeprefix("./")
                if member.isdir():
                    continue
                if not member.isfile():
                    irregular.append(name)
                    continue
                if member.size > max_file_size:
                    raise BundleFormatError(f"{name} is {member.size} bytes, more than the {max_file_size} allowed")
                total += member.size
                if total > max_total_size:
                    raise BundleFormatError(f"bundle members exceed {max_total_size} bytes in total")
                extracted = tar.extractfile(member)
                data = extracted.read() if extracted is not None else b""
                if name in files:
                    duplicates.append(name)
                    continue
                files[name] = data
            # The last member ends before the archive does: read the rest, so that a stream cut in its end
            # blocks or with a wrong checksum is noticed (tarfile alone stops quietly at a missing end block).
            rest = tar.fileobj
            while rest is not None and rest.read(1 << 16):
                pass
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise BundleFormatError(f"not a readable tar.gz bundle: {exc}") from exc
    finally:
        if handle is not source:
            handle.close()
    if not files:
        raise BundleFormatError("the archive holds no files")
    return BundleContents(files=files, irregular=tuple(irregular), duplicates=tuple(sorted(set(duplicates))))


_VERIFY_TEMPLATE: Final[str] = r"""# Verifying this evidence bundle

This bundle holds the signed evidence packets of tenant `@@TENANT@@`: sequences @@RANGE@@
(@@COUNT@@ packets), exported at @@CREATED_AT@@, signed with the keys @@KEYS@@.
Everything below works offline.

## What is inside

| path | content |
|---|---|
| `envelopes/<sequence>-<packet id>.dsse.json` | one DSSE envelope per packet; the sequence is zero-padded to 10 digits so names sort in chain order |
| `keys/<algorithm>_<hex>.pem` | the public keys that signed the packets, current and rotated (PEM SubjectPublicKeyInfo); the name is the `key_ref` with `_` for `:` |
| `key-log.json` | the signed key log: when each key became valid, and so when the one before it was retired |
| `checkpoint.txt` | the signed checkpoint of the tenant's Merkle tree: how many packets existed, and their root hash |
| `checkpoint.tsr` | only when the service has a time-stamping authority: its RFC 3161 timestamp token (DER) over `checkpoint.txt` |
| `tree.json` | the range this bundle proves and the subtree hashes around it that recompute the checkpoint's root |
| `manifest.json` | the SHA-256 and size of every other file, and the bundle metadata: tenant, sequence range, packet count, creation time |
| `VERIFY.md` | this file |

An envelope is JSON:
`{"payload": <base64 statement>, "payloadType": "@@PAYLOAD_TYPE@@", "signatures": [{"keyid": <key_ref>, "sig": <base64 signature>}]}`.
The payload is an in-toto Statement v1 in RFC 8785 canonical JSON. Its `subject` lists the images the
packet is about (repository and sha256 digest); its `predicate` (type `@@PREDICATE_TYPE@@`)
is the evidence packet: `id`, `tenant_id`, `packet_type`, `promotion_id`, `sequence`, `previous_hash`,
`content`, `content_hash`, `created_at`, `signer_key_ref`.

Six things must hold: the files are the ones listed in the manifest (1), every signature verifies (2),
every `content_hash` recomputes (3), the packets form an unbroken chain (4), they are exactly the packets the
signed checkpoint commits to (5), and every key signed only while it was valid (6). The commands below check
each with standard tools (bash, GNU coreutils, jq 1.6 or later, OpenSSL 3.0 or later; step 3 needs python3
with the `rfc8785` package, step 5 python3 alone). Section 8 checks everything at once.

## 1. Every file matches the manifest

Extract the bundle and enter it:

```sh
mkdir bundle && tar -xzf <bundle>.tar.gz -C bundle && cd bundle
```

Check every file the manifest lists; each line must end in `OK`:

```sh
jq -r '.files[] | "\(.sha256)  \(.path)"' manifest.json | sha256sum -c -
```

Without jq, the same list comes from
`python3 -c 'import json; [print(f["sha256"] + "  " + f["path"]) for f in json.load(open("manifest.json"))["files"]]'`.

No file may be there that the manifest does not list; this prints nothing when all is well:

```sh
comm -13 <(jq -r '.files[].path' manifest.json | sort) <(find . -type f ! -path ./manifest.json | sed 's|^\./||' | sort)
```

The manifest itself is not signed. It detects damaged or edited files and lets you check them with common
tools; that the packets are authentic rests on the signatures (2) and the chain (4).

## 2. Every signature verifies

A DSSE signature is not over the payload alone but over its pre-authentication encoding (PAE):

    PAE = "DSSEv1" SP LEN(payloadType) SP payloadType SP LEN(payload) SP payload

where SP is one space (0x20), LEN is a byte length in ASCII decimal without leading zeros, and payload is the
base64-decoded bytes. For example, payload type `http://example.com/HelloWorld` and payload `hello world`
give the PAE `DSSEv1 29 http://example.com/HelloWorld 11 hello world`.

An Ed25519 signature is the raw 64-byte signature (RFC 8032) of the PAE. An ECDSA P-256 signature is the
DER-encoded signature of the SHA-256 of the PAE. A signature's `keyid` is the `key_ref` of its key, which
names the file `keys/<key_ref with _ for :>.pem`, and the packet's `signer_key_ref` must be that same key.

This loop rebuilds the PAE of every envelope and verifies it with OpenSSL; it prints one line per envelope
(OpenSSL prints `Signature Verified Successfully` for Ed25519 and `Verified OK` for ECDSA) and `FAILED` for
any that does not verify:

```sh
work=$(mktemp -d)
for env in envelopes/*.dsse.json; do
  keyid=$(jq -r '.signatures[0].keyid' "$env")
  type=$(jq -r '.payloadType' "$env")
  jq -r '.payload' "$env" | base64 -d > "$work/payload"
  jq -r '.signatures[0].sig' "$env" | base64 -d > "$work/sig"
  printf 'DSSEv1 %d %s %d ' "${#type}" "$type" "$(wc -c < "$work/payload" | tr -d ' ')" > "$work/pae"
  cat "$work/payload" >> "$work/pae"
  case "$keyid" in
    ed25519:*)    openssl pkeyutl -verify -pubin -inkey "keys/${keyid/:/_}.pem" -rawin -in "$work/pae" -sigfile "$work/sig" ;;
    ecdsa-p256:*) openssl dgst -sha256 -verify "keys/${keyid/:/_}.pem" -signature "$work/sig" "$work/pae" ;;
    *)            false ;;
  esac && [ "$(jq -r '.predicate.signer_key_ref' "$work/payload")" = "$keyid" ] \
    && echo "signature ok: $env ($keyid)" || echo "FAILED: $env ($keyid)"
done
rm -r "$work"
```

(`${#type}` counts characters; the payload type is ASCII, so that is its byte length.)

## 3. Every content_hash recomputes

`content_hash` is not a hash of `content` alone: it is `"sha256:"` followed by the hex SHA-256 of the
RFC 8785 (JSON Canonicalization Scheme) form of this object, built from eight of the packet's own fields:

    {"content", "created_at", "id", "packet_type", "previous_hash", "promotion_id", "sequence", "tenant_id"}

It covers the content and the packet's place in the chain; `signer_key_ref` is not part of it. There is no
common command-line tool for RFC 8785, so this uses Python with the `rfc8785` package
(`pip install rfc8785`); any conforming implementation gives the same bytes. Save it as `check_hashes.py`
and run `python3 check_hashes.py envelopes/*.dsse.json`; every line must say `OK`:

```python
import base64, hashlib, json, sys

import rfc8785

FIELDS = ("content", "created_at", "id", "packet_type", "previous_hash", "promotion_id", "sequence", "tenant_id")
for path in sys.argv[1:]:
    with open(path) as handle:
        packet = json.loads(base64.b64decode(json.load(handle)["payload"]))["predicate"]
    computed = "sha256:" + hashlib.sha256(rfc8785.dumps({k: packet[k] for k in FIELDS})).hexdigest()
    print(packet["sequence"], "OK" if computed == packet["content_hash"] else "MISMATCH", path)
```

A `release_decision` packet also carries what the gates saw, `content.decision.inputs` (release digests,
environment settings, freeze windows, scan verdicts, votes). Its `inputs_hash` is `"sha256:"` and the hex
SHA-256 of the RFC 8785 form of `{"clock": <decision.evaluated_at>, "inputs": <decision.inputs>}`, so a
changed input shows without the service; the verifier of section 8 recomputes it for every such packet.

## 4. The packets form an unbroken chain

Each packet carries the `content_hash` of the packet before it in `previous_hash`; the first packet of the
tenant (sequence 1) has `previous_hash` null. This lists sequence, previous_hash and content_hash of every
packet in order, and prints `BROKEN` where a sequence is skipped (a deleted packet), out of order (a
reordered packet), or where a link does not match:

```sh
for env in envelopes/*.dsse.json; do
  jq -r '.payload' "$env" | base64 -d | jq -r '.predicate | "\(.sequence) \(.previous_hash) \(.content_hash)"'
done | awk '
  NR == 1 && $1 == 1 && $2 != "null" { print "BROKEN at " $1 ": the first packet must have previous_hash null" }
  NR > 1 && $1 != seq + 1            { print "BROKEN at " $1 ": follows sequence " seq }
  NR > 1 && $2 != prev               { print "BROKEN at " $1 ": previous_hash does not match the packet before" }
  { seq = $1; prev = $3; print }'
```

When the bundle's range does not start at 1, the first packet's `previous_hash` points at a packet outside
the bundle: that link is not checked here (section 5 still proves the packet is where the checkpoint says).

## 5. The packets are exactly the ones the signed checkpoint commits to

The evidence service keeps a Merkle tree (RFC 6962, SHA-256) over each tenant's packets: leaf `i` is packet
sequence `i + 1`, and its hash is `SHA-256(0x00 || payload)` where `payload` is the envelope's base64-decoded
payload, the exact bytes that were signed. `checkpoint.txt` is a C2SP `tlog-checkpoint` signed note, the
format of Go's checksum database and Sigstore's Rekor:

    <origin: the service's name / tenant id>
    <tree size: how many packets the tenant had>
    <base64 root hash of the tree>

    — <key name> <base64(4-byte key id || signature over the three lines above, final newline included)>

Deleting, adding or changing any packet, the first and the last included, changes the root. First check the
checkpoint's signature (the key id of an Ed25519 key is `SHA-256(name || 0x0A || 0x01 || 32-byte key)[:4]`,
of an ECDSA key `SHA-256(DER SubjectPublicKeyInfo)[:4]`; the signature follows it):

```sh
work=$(mktemp -d)
sed '/^$/q' checkpoint.txt | sed '$d' > "$work/text"
grep '^— ' checkpoint.txt | awk '{print $3}' | head -n 1 | base64 -d | tail -c +5 > "$work/sig"
for pem in keys/*.pem; do
  if openssl pkey -pubin -in "$pem" -text_pub -noout | grep -q ED25519; then
    openssl pkeyutl -verify -pubin -inkey "$pem" -rawin -in "$work/text" -sigfile "$work/sig" >/dev/null 2>&1
  else
    openssl dgst -sha256 -verify "$pem" -signature "$work/sig" "$work/text" >/dev/null 2>&1
  fi && echo "checkpoint signed by $pem: $(sed -n 2p "$work/text") packets"
done
rm -r "$work"
```

Then recompute the root from the envelopes with RFC 6962's definition, using `tree.json` for the subtrees
outside the bundle's range (none when the bundle holds every packet). Save this as `check_tree.py` and run
`python3 check_tree.py`; it must print `OK`:

```python
import base64, glob, hashlib, json

def h(data): return hashlib.sha256(data).digest()
tree = json.load(open("tree.json"))
size, span = tree["tree_size"], tree["range"]
lines = open("checkpoint.txt").read().split("\n")
root = base64.b64decode(lines[2])
assert int(lines[1]) == size, "tree.json and the checkpoint disagree on the size"
first, last = (span["first_sequence"] - 1, span["last_sequence"]) if span else (0, 0)
leaves = {}
for path in sorted(glob.glob("envelopes/*.dsse.json")):
    payload = base64.b64decode(json.load(open(path))["payload"])
    leaves[json.loads(payload)["predicate"]["sequence"] - 1] = h(b"\x00" + payload)
outside = {(o["start"], o["end"]): bytes.fromhex(o["hash"]) for o in tree["outside"]}

def mth(start, end):  # RFC 6962 2.1: MTH(D[start:end])
    if end <= first or start >= last:
        return outside[(start, end)]
    if end - start == 1:
        return leaves[start]
    k = 1
    while 2 * k < end - start:
        k *= 2
    return h(b"\x01" + mth(start, start + k) + mth(start + k, end))

assert sorted(leaves) == list(range(first, last)), "packets of the range are missing or extra"
print("OK" if size and mth(0, size) == root else "MISMATCH: the packets are not the ones the checkpoint commits to")
```

Keep the checkpoints you see (`GET /api/v1/evidence/checkpoint` returns the newest): that is being a
witness. For two checkpoints of sizes `m < n`, `GET /api/v1/evidence/consistency?old_size=m&new_size=n`
returns the RFC 6962 consistency proof, and `GET /api/v1/evidence/<packet id>/proof` a packet's inclusion
proof; any RFC 6962 / RFC 9162 verifier checks them (Go's `golang.org/x/mod/sumdb/tlog`, transparency-dev's
`merkle` package). A history rewritten after you kept a checkpoint (packets deleted, changed or re-appended,
even by someone with full control of the database who rebuilt the tree) cannot give a consistency proof that
verifies against your checkpoint, so it shows.

## 6. Every key signed only while it was valid

`key-log.json` lists the signing keys in the order they became active, each entry a DSSE envelope (payload
type `application/vnd.stella.evidence-key-log+json`) of `{index, key_id, key_ref, algorithm, public_key_pem,
valid_from, previous_entry}`. A key is valid from its `valid_from` until the next entry's `valid_from`, when
it was retired. An entry is signed by the key it introduces and by the key it retired (so a forger holding a
retired key cannot undo its retirement), and `previous_entry` is the `sha256:` hash of the entry before it.
This prints, per packet, whether its signer was the valid key when the packet was created:

```sh
jq -r '.[].payload | @base64d | fromjson | "\(.valid_from) \(.key_ref)"' key-log.json > validity.txt
for env in envelopes/*.dsse.json; do
  jq -r '.payload | @base64d | fromjson | .predicate | "\(.created_at) \(.signer_key_ref) \(.sequence)"' "$env"
done | awk 'NR == FNR { from[NR] = $1; key[NR] = $2; n = NR; next }
  { k = ""; for (i = 1; i <= n; i++) if (from[i] <= $1) k = key[i]
    print ($2 == k ? "key valid:" : "KEY NOT VALID:"), "packet", $3, $2 }' validity.txt -
rm validity.txt
```

The entries' signatures are checked like the packets' (section 2, with their own payload type); the
verifier in section 8 does it.

## 7. Trust the keys you know, not the keys in the bundle

The keys in `keys/` only show that the packets were signed by those keys: anyone who rebuilds a bundle can
put a key of their own there, and a key log and checkpoint to match. Compare the keys with the ones your
organization publishes for its evidence service (`GET /api/v1/evidence/keys`, which also returns each key's
log entry: keep them as `key-log.json` beside the keys). A key's full id is `sha256:` and the SHA-256 of its
DER SubjectPublicKeyInfo; its `key_ref` is the algorithm, a colon and the first 16 hex digits of it (for
display, and to name the key in envelopes, packets and file names). Compare full ids, never a `key_ref`
alone: 64 bits are not enough to tell keys apart against someone who makes keys until one matches. The
verifier checks every signature with the whole key, pins keys only by their full id (`--trust-fingerprint`)
and refuses two different keys under one `key_ref`. Recompute the full ids with:

```sh
for pem in keys/*.pem; do
  echo "$pem sha256:$(openssl pkey -pubin -in "$pem" -outform DER | sha256sum | cut -d' ' -f1)"
done
```

## 8. All at once

The evidence service ships an offline verifier that needs only Python 3.11+ with the `cryptography` and
`rfc8785` packages. It reads the archive without extracting it and checks everything above, plus that each
envelope's file name matches its packet and that the manifest's tenant, range, count, keys and time match
the packets:

    python -m stella.evidence.verify <bundle>.tar.gz --keys DIR [--jobs N] [--json]
    python -m stella.evidence.verify <bundle>.tar.gz --trust-fingerprint sha256:<hex>
    python -m stella.evidence.verify <bundle>.tar.gz --trust-bundle-keys

(also installed as `stella-evidence-verify`). It prints one line per finding and exits 0 when everything
holds, 1 when any check fails, 2 when the input cannot be read. It trusts no key unless told: `--keys DIR`
trusts the PEM public keys in `DIR` (and takes the validity of keys from `DIR/key-log.json` when it is there,
else from the bundle's key log authenticated by those keys); `--trust-fingerprint` pins a key by its full id
and trusts the keys the key log hands over to from it; `--trust-bundle-keys` trusts the keys inside the
bundle, which only shows the bundle is consistent, and says so.

The checks of each envelope on its own (its signatures and content hash, sections 2 and 3) run on every
core for a bundle of 512 packets or more; `--jobs N` sets the number of processes (`--jobs 1`: this process
only). The checks across packets (links, checkpoint, key validity) run after them in one process, and the
findings, their order and the exit status are the same for every `N`.

`--tsa-ca PEM` asks for trusted time: the bundle must carry `checkpoint.tsr`, the RFC 3161 timestamp a
time-stamping authority (TSA) signed over the bytes of `checkpoint.txt`, and it must verify against the TSA
root certificates in `PEM` (the chain, the TSA certificate's critical extended key usage `timeStamping`, and
the SHA-256 message imprint); the summary line then names the TSA's time. That time rests on the TSA's clock
and key, not the evidence service's: packets the checkpoint covers existed by then. The verifier runs
OpenSSL for this; by hand, with the TSA's root certificate in `tsa-root.pem`:

    openssl ts -verify -token_in -in checkpoint.tsr -data checkpoint.txt -CAfile tsa-root.pem
    openssl ts -reply -token_in -in checkpoint.tsr -text    # the time (Time stamp:) and the TSA

The first must print `Verification: OK`. Without `--tsa-ca` a carried token is not judged (a note says so).

What the summary line does not claim: a bundle with no packet fails (it proves nothing) unless
`--allow-empty` says an empty export is expected; a bundle whose range starts after sequence 1 says in a
note that the first packet's link to the one before it was not checked; a signature on an envelope by a
key that is not trusted is not checked, and the summary line counts such signatures instead of calling
every signature verified.

`--replay` also decides every decision that carries its inputs again, with the project's own gate code, at
the clock reading it records (`decision.evaluated_at`), and reports each difference from the recorded
decision: the result (`allow`, `deny`, `pending`), each gate's verdict, and any other field of the record
(reasons, approvals, a gate's message or details). The gate code is the promotion package
(`stella-promotion`), which registers it under the Python entry point group `stella.evidence.replay`;
without that package `--replay` exits 2 and says so. A gate plugin's verdict is one of the recorded inputs
(`plugin_verdicts`): replaying reads it and does not call the plugin again. Where `inputs_hash` (section 3)
shows that the inputs are the ones decided on, `--replay` shows that the decision follows from them, even
when someone holding the signing key changed an input, recomputed `inputs_hash` and signed again.

## Limits

The checkpoint proves the bundle's range holds every packet the tenant had there when it was signed. A
bundle of a time range (`from`/`to`) proves its packets are in the tree, not the content of the packets
outside it. A database administrator who deletes packets and rebuilds the tree and the checkpoints before
your export is caught by a checkpoint you kept earlier (section 5), not by the bundle alone. A pinned key
(`--trust-fingerprint`) that is later stolen can sign a fork of the key log; pin the newest key, or keep the
published key log, rather than pin only the first key.
"""
