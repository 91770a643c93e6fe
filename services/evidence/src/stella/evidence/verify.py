"""Offline verification of an evidence export bundle, as a library and as a command.

    python -m stella.evidence.verify BUNDLE [--keys DIR] [--replay] [--jobs N] [--json]

Checks every file against the manifest, every signature, every ``content_hash``, every chain link, that each
envelope's file name matches its packet and that the manifest's metadata matches the packets. Prints one
line per finding and exits ``0`` when everything holds, ``1`` when any check fails, ``2`` when the input
cannot be used (not a bundle, unreadable key directory).

The checks of each envelope on its own (signatures, canonical form, ``content_hash``, subjects) run over every
core for a large bundle (``--jobs``, :mod:`stella.evidence.envelope_check`); the checks across packets (chain
links, checkpoint, key validity, manifest) run afterwards in this process. Findings and exit code do not
depend on the number of processes.

This module and everything it imports (the project's canonical JSON, ``stella.contracts.canonical``, included)
need only the standard library, ``cryptography`` and ``rfc8785``, so an auditor can run it on a machine with
nothing of the service installed. With msgspec installed (``stella-evidence[fast]``) the signed statements are
read with its JSON codec, faster and with the same verdicts (:mod:`stella.evidence.statement`). ``--replay`` is the exception: it decides every recorded decision again with
the project's gate code, which the promotion package provides through the ``stella.evidence.replay`` entry
point (loaded only when asked for, so this module still imports nothing of the promotion service).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import IO, Any
from uuid import UUID

from stella.contracts.canonical import sha256_digest
from stella.evidence import keylog, merkle
from stella.evidence.bundle import (
    CHECKPOINT_PATH,
    ENVELOPES_DIR,
    KEY_LOG_PATH,
    KEYS_DIR,
    MANIFEST_PATH,
    TIMESTAMP_PATH,
    TREE_PATH,
    BundleContents,
    BundleFormatError,
    Manifest,
    ManifestError,
    key_ref_of_path,
    parse_envelope_path,
    parse_manifest,
    parse_tree_proof,
    read_bundle,
)
from stella.evidence.chain import Finding, FindingKind, sort_findings, verify_chain
from stella.evidence.checkpoint import CheckpointError, verify_checkpoint
from stella.evidence.envelope_check import POOL_THRESHOLD, CheckedPacket, check_envelopes
from stella.evidence.keylog import KeyLog
from stella.evidence.keys import (
    KeyFormatError,
    PublicKey,
    PublicKeyRing,
)
from stella.evidence.packet import EvidencePacket, format_timestamp
from stella.evidence.timestamp import TimestampError, verify_token

EXIT_OK = 0
"""Everything verified."""
EXIT_FAILED = 1
"""At least one check failed."""
EXIT_UNUSABLE = 2
"""The input could not be used at all."""

REPLAY_ENTRY_POINTS = "stella.evidence.replay"
"""Entry point group of the function ``--replay`` decides with: ``(inputs, evaluated_at) -> decision record``.

The promotion package registers its gate code there (``stella.promotion.replay:replay_decision``), so this
verifier replays decisions with the project's own gates when that package is installed, without depending
on it otherwise."""

Replayer = Callable[[Mapping[str, Any], str], Mapping[str, Any]]
"""Decides again from a decision's recorded inputs and clock reading; returns the decision record's JSON."""


@dataclass
class VerificationReport:
    """The outcome of verifying a bundle.

    Attributes:
        findings: Every failed check, sorted (bundle and file findings first, then by packet sequence).
        notes: Information that is not a failure (which keys were trusted, from where).
        tenant_id: Tenant of the bundle (from the manifest, else from the first packet).
        first_sequence: Lowest packet sequence found.
        last_sequence: Highest packet sequence found.
        envelope_count: Envelope files examined.
        packet_count: Packets that could be read out of their envelopes.
        key_source: ``"bundle"`` when the bundle's own keys were trusted, ``"external"`` for ``--keys``.
        trusted_key_refs: References of the keys signatures were checked against.
        checkpoint_size: Packets the verified signed checkpoint covers (None without one).
        checkpoint_key_ref: The key that signed the checkpoint.
        unchecked_signatures: Signatures on envelopes by keys that are not trusted, which were not checked
            (a trusted signature on the same envelope was).
        timestamp: The time a trusted TSA vouches the checkpoint existed at (``--tsa-ca``), when verified.
    """

    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tenant_id: UUID | None = None
    first_sequence: int | None = None
    last_sequence: int | None = None
    envelope_count: int = 0
    packet_count: int = 0
    key_source: str = "bundle"
    trusted_key_refs: list[str] = field(default_factory=list)
    checkpoint_size: int | None = None
    checkpoint_key_ref: str | None = None
    unchecked_signatures: int = 0
    timestamp: str | None = None

    @property
    def ok(self) -> bool:
        """Whether every check held."""
        return not self.findings

    @property
    def exit_code(self) -> int:
        """``0`` when every check held, ``1`` otherwise."""
        return EXIT_OK if self.ok else EXIT_FAILED

    def kinds_for(self, sequence: int) -> set[FindingKind]:
        """The kinds of finding reported about the packet with this sequence."""
        return {f.kind for f in self.findings if f.sequence == sequence}

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON."""
        return {
            "ok": self.ok,
            "tenant_id": None if self.tenant_id is None else str(self.tenant_id),
            "range": (
                None
                if self.first_sequence is None
                else {"first_sequence": self.first_sequence, "last_sequence": self.last_sequence}
            ),
            "envelope_count": self.envelope_count,
            "packet_count": self.packet_count,
            "key_source": self.key_source,
            "trusted_key_refs": self.trusted_key_refs,
            "unchecked_signatures": self.unchecked_signatures,
            "timestamp": self.timestamp,
            "checkpoint": (
                None
                if self.checkpoint_size is None
                else {"tree_size": self.checkpoint_size, "key_ref": self.checkpoint_key_ref}
            ),
            "findings": [finding.to_dict() for finding in self.findings],
            "notes": self.notes,
        }

    def format_text(self) -> str:
        """Return the human report: notes, one line per finding, and a summary line."""
        lines = [f"note: {note}" for note in self.notes]
        lines.extend(str(finding) for finding in self.findings)
        span = (
            "no packets"
            if self.first_sequence is None
            else f"{self.packet_count} packets, sequences {self.first_sequence}..{self.last_sequence}"
        )
        tenant = f" of tenant {self.tenant_id}" if self.tenant_id else ""
        if self.ok:
            covered = (
                f"; the signed checkpoint of {self.checkpoint_size} packets recomputes"
                if self.checkpoint_size is not None
                else ""
            ) + (f", timestamped {self.timestamp}" if self.timestamp else "")
            if self.envelope_count == 0:
                lines.append(f"OK (empty, accepted with --allow-empty): {span}{tenant}; every file verified{covered}")
            else:
                unchecked = (
                    f"; {self.unchecked_signatures} further signature(s) by untrusted keys were not checked"
                    if self.unchecked_signatures
                    else ""
                )
                lines.append(
                    f"OK: {span}{tenant}; every file, trusted signature, signing key's validity, content_hash and "
                    f"chain link verified{covered}{unchecked}"
                )
        else:
            count = len(self.findings)
            lines.append(f"FAILED: {count} finding{'s' if count != 1 else ''} in {span}{tenant}")
        return "\n".join(lines)


def _check_files(contents: BundleContents, manifest: Manifest, findings: list[Finding]) -> None:
    listed = {entry.path: entry for entry in manifest.files}
    for path, entry in listed.items():
        named = parse_envelope_path(path)
        sequence, packet_id = named if named else (None, None)
        data = contents.files.get(path)
        if data is None:
            findings.append(
                Finding(
                    FindingKind.FILE_MISSING,
                    f"{path} is listed in the manifest but not in the bundle",
                    sequence=sequence,
                    packet_id=packet_id,
                    path=path,
                )
            )
            continue
        actual = sha256_digest(data).removeprefix("sha256:")
        if actual != entry.sha256 or len(data) != entry.size:
            findings.append(
                Finding(
                    FindingKind.FILE_DIGEST_MISMATCH,
                    f"{path} has sha256 {actual} ({len(data)} bytes), the manifest lists {entry.sha256} "
                    f"({entry.size} bytes)",
                    sequence=sequence,
                    packet_id=packet_id,
                    path=path,
                )
            )
    for path in sorted(contents.files):
        if path != MANIFEST_PATH and path not in listed:
            named = parse_envelope_path(path)
            findings.append(
                Finding(
                    FindingKind.FILE_UNLISTED,
                    f"{path} is in the bundle but not listed in the manifest",
                    sequence=named[0] if named else None,
                    packet_id=named[1] if named else None,
                    path=path,
                )
            )


def _load_bundle_keys(contents: BundleContents, findings: list[Finding]) -> PublicKeyRing:
    ring = PublicKeyRing()
    for path in sorted(contents.files):
        if not (path.startswith(KEYS_DIR) and path.endswith(".pem")):
            continue
        named_ref = key_ref_of_path(path)
        try:
            key = PublicKey.from_pem(contents.files[path])
        except KeyFormatError as exc:
            findings.append(Finding(FindingKind.KEY_INVALID, str(exc), path=path, key_ref=named_ref))
            continue
        if key.key_ref != named_ref:
            findings.append(
                Finding(
                    FindingKind.KEY_REF_MISMATCH,
                    f"holds key {key.key_ref}, but is named {named_ref}",
                    path=path,
                    key_ref=key.key_ref,
                )
            )
        try:
            ring.add(key)
        except ValueError as exc:
            findings.append(Finding(FindingKind.KEY_INVALID, str(exc), path=path, key_ref=key.key_ref))
    return ring


def _envelope_order(path: str) -> tuple[int, int, str]:
    named = parse_envelope_path(path)
    return (0, named[0], path) if named else (1, 0, path)


def _load_key_log(contents: BundleContents, findings: list[Finding]) -> list[Any] | None:
    data = contents.files.get(KEY_LOG_PATH)
    if data is None:
        return None
    try:
        entries = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        findings.append(Finding(FindingKind.KEY_LOG_INVALID, f"not UTF-8 JSON: {exc}", path=KEY_LOG_PATH))
        return None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        findings.append(Finding(FindingKind.KEY_LOG_INVALID, "not a JSON list of envelopes", path=KEY_LOG_PATH))
        return None
    return entries


def _trust(
    report: VerificationReport,
    findings: list[Finding],
    bundle_keys: PublicKeyRing,
    bundle_log: list[Any] | None,
    trusted_keys: PublicKeyRing | None,
    trusted_key_log: Sequence[Mapping[str, Any]] | None,
    fingerprints: Sequence[str],
    trust_bundle_keys: bool,
) -> tuple[PublicKeyRing, KeyLog]:
    """Decide which keys sign evidence, and when each was valid.

    Returns:
        The keys signatures are checked against, and the authenticated key log.
    """
    if trusted_keys is not None:
        anchors = list(trusted_keys)
        report.key_source = "external"
        report.notes.append(f"trusting {len(anchors)} external key(s): {', '.join(trusted_keys.key_refs)}")
    elif fingerprints:
        candidates = [*bundle_keys, *_log_keys(trusted_key_log), *_log_keys(bundle_log)]
        pinned = {key.key_ref: key for key in candidates if keylog.key_id(key) in set(fingerprints)}
        anchors = list(pinned.values())
        report.key_source = "fingerprint"
        report.notes.append(
            f"trusting the pinned key(s) {', '.join(sorted(pinned)) or '(none found)'} and the keys the key log "
            "hands over to from them"
        )
    elif trust_bundle_keys:
        anchors = list(bundle_keys)
        report.key_source = "bundle"
        report.notes.append(
            f"WARNING: trusting the {len(anchors)} public key(s) shipped in the bundle "
            f"({', '.join(bundle_keys.key_refs) or 'none'}): this shows the bundle is consistent, not who signed "
            "it; compare them with the keys your organization publishes, or pass --keys"
        )
    else:
        anchors = []
        report.key_source = "none"
        report.notes.append("no key is trusted: pass --keys or --trust-fingerprint (or --trust-bundle-keys)")

    # The log the verifier was given is authoritative; the bundle's is used when it extends it (a newer export).
    entries: Sequence[Mapping[str, Any]] = bundle_log or []
    source = KEY_LOG_PATH
    if trusted_key_log is not None:
        given = list(trusted_key_log)
        if bundle_log is not None and len(bundle_log) > len(given) and bundle_log[: len(given)] == given:
            entries = bundle_log
        else:
            entries, source = given, "the trusted key log"
            if bundle_log is not None and given[: len(bundle_log)] != bundle_log:
                findings.append(
                    Finding(
                        FindingKind.KEY_LOG_INVALID,
                        "the bundle's key log is not a prefix of the trusted key log: it was forked or edited",
                        path=KEY_LOG_PATH,
                    )
                )
    elif bundle_log is None:
        report.notes.append("no key log: when each key was valid is unknown")
    log = keylog.authenticate(entries, anchors)
    for problem in log.problems:
        findings.append(Finding(FindingKind.KEY_LOG_INVALID, f"{problem} ({source})", path=KEY_LOG_PATH))
    if log.unauthenticated:
        report.notes.append(
            f"key log entries of {', '.join(log.unauthenticated)} are signed by no trusted key; their validity is "
            "not used"
        )

    # Pinned: the log extends trust to the keys it hands over to; otherwise only the given keys sign.
    keyring = PublicKeyRing([*anchors, *log.keys] if report.key_source == "fingerprint" else anchors)
    if report.key_source == "external":
        for ref in bundle_keys.key_refs:
            if ref not in keyring:
                report.notes.append(f"bundle key {ref} is not among the trusted keys")
    report.trusted_key_refs = keyring.key_refs
    return keyring, log


def _log_keys(entries: Sequence[Mapping[str, Any]] | None) -> list[PublicKey]:
    keys: list[PublicKey] = []
    for envelope in entries or ():
        try:
            keys.append(keylog.parse_entry(envelope)[0].key)
        except keylog.KeyLogError:
            continue
    return keys


def _check_validity(
    packets: Sequence[EvidencePacket],
    verified: Mapping[int, tuple[str, ...]],
    log: KeyLog,
    findings: list[Finding],
    *,
    require: bool,
) -> None:
    """Refuse packets signed by a key outside its validity (a retired key's signature on later evidence).

    A bundle exported before the key log existed has none: with ``require`` false (``--allow-no-checkpoint``)
    its keys' validity is not checked.
    """
    if log.length == 0 and not require:
        return
    for packet in packets:
        refs = verified.get(packet.sequence, ())
        if not refs:
            continue  # the signature itself failed: already reported
        valid = [ref for ref in refs if ref in log.validity and log.validity[ref].covers(packet.created_at)]
        if valid:
            continue
        ref = refs[0]
        validity = log.validity.get(ref)
        if validity is None:
            message = f"signed by {ref}, which no authenticated key log entry covers: its validity is unknown"
            kind = FindingKind.KEY_VALIDITY_UNKNOWN
        else:
            until = "" if validity.retired_at is None else f" until {format_timestamp(validity.retired_at)}"
            message = (
                f"created at {format_timestamp(packet.created_at)}, but its key {ref} was valid from "
                f"{format_timestamp(validity.valid_from)}{until}"
            )
            kind = FindingKind.KEY_NOT_VALID
        findings.append(Finding(kind, message, sequence=packet.sequence, packet_id=packet.id, key_ref=ref))


def verify_bundle(
    source: bytes | str | os.PathLike[str] | IO[bytes],
    *,
    trusted_keys: PublicKeyRing | None = None,
    trusted_key_log: Sequence[Mapping[str, Any]] | None = None,
    trusted_fingerprints: Sequence[str] = (),
    trust_bundle_keys: bool = False,
    require_checkpoint: bool = True,
    replay: Replayer | None = None,
    allow_empty: bool = False,
    tsa_ca: str | None = None,
    jobs: int | None = 1,
) -> VerificationReport:
    """Verify an export bundle.

    Args:
        source: The bundle bytes, a path to it, or a binary file object.
        trusted_keys: The keys to trust, obtained separately from the bundle.
        trusted_key_log: The key log obtained with them (``key-log.json`` as the service publishes it): when
            each key was valid. Without it the bundle's own log is used, authenticated by the trusted keys.
        trusted_fingerprints: Full key fingerprints (``sha256:<hex>``) to pin instead of ``trusted_keys``: the
            pinned keys and the keys the key log hands over to from them are trusted.
        trust_bundle_keys: Without ``trusted_keys``, trust the public keys inside the bundle: that proves the
            bundle is internally consistent, not who made it (anyone can re-sign a bundle with a key of their
            own). Without either, no key is trusted and every signature fails.
        require_checkpoint: Report a bundle without a signed checkpoint or key log (bundles exported before
            they existed have neither; pass False to check such a bundle for everything else).
        replay: Decide every decision that carries its inputs again with this function (the project's gate
            code, see :data:`REPLAY_ENTRY_POINTS`) and report any difference from the recorded decision.
        allow_empty: Accept a bundle without any packet (an export of a range in which nothing happened);
            otherwise it is a finding, since it proves nothing.
        tsa_ca: PEM file of the time-stamping authorities' root certificates to trust: the checkpoint must
            carry an RFC 3161 timestamp (``checkpoint.tsr``) that verifies against them (``openssl ts``).
        jobs: Processes the per-envelope checks run in: ``1`` (default) this process, ``None`` or ``0`` one
            per core. A bundle of fewer than :data:`stella.evidence.envelope_check.POOL_THRESHOLD` envelopes is
            checked in this process whatever it says. The report is the same for every value.

    Returns:
        The report; ``report.ok`` is true only when every check held.

    Raises:
        BundleFormatError: When the input is not a readable bundle.
        OSError: When ``source`` is a path that cannot be read.
    """
    contents = read_bundle(source)
    findings: list[Finding] = []
    report = VerificationReport()

    for path in contents.irregular:
        findings.append(Finding(FindingKind.UNEXPECTED_MEMBER, f"{path} is not a regular file", path=path))
    for path in contents.duplicates:
        findings.append(Finding(FindingKind.UNEXPECTED_MEMBER, f"{path} is in the archive more than once", path=path))

    manifest: Manifest | None = None
    if MANIFEST_PATH not in contents.files:
        findings.append(Finding(FindingKind.MANIFEST_INVALID, "manifest.json is missing", path=MANIFEST_PATH))
    else:
        try:
            manifest = parse_manifest(contents.files[MANIFEST_PATH])
        except ManifestError as exc:
            findings.append(Finding(FindingKind.MANIFEST_INVALID, str(exc), path=MANIFEST_PATH))
    if manifest is not None:
        _check_files(contents, manifest, findings)

    bundle_keys = _load_bundle_keys(contents, findings)
    bundle_log = _load_key_log(contents, findings)
    keyring, key_log = _trust(
        report,
        findings,
        bundle_keys,
        bundle_log,
        trusted_keys,
        trusted_key_log,
        trusted_fingerprints,
        trust_bundle_keys,
    )
    report.trusted_key_refs = keyring.key_refs

    envelope_paths = sorted(
        (p for p in contents.files if p.startswith(ENVELOPES_DIR) and p.endswith(".dsse.json")), key=_envelope_order
    )
    packets: list[CheckedPacket] = []
    leaves: dict[int, bytes] = {}
    verified: dict[int, tuple[str, ...]] = {}
    untrusted: dict[int, list[str]] = {}
    unreadable: list[int] = []
    # Each envelope is checked on its own, over every core for a large bundle; what the checks found is taken
    # in file order here, so the report is the same whatever ``jobs`` is.
    outcomes = check_envelopes(
        [(path, contents.files[path]) for path in envelope_paths], keyring, jobs=jobs, keep_content=replay is not None
    )
    for path, outcome in zip(envelope_paths, outcomes, strict=True):
        findings.extend(outcome.findings)
        packet = outcome.packet
        if packet is not None and outcome.leaf is not None:
            packets.append(packet)
            leaves.setdefault(packet.sequence, outcome.leaf)
            verified.setdefault(packet.sequence, outcome.verified_refs)
            if outcome.others:
                untrusted[packet.sequence] = outcome.others
        else:
            named = parse_envelope_path(path)
            if named is not None:
                unreadable.append(named[0])
    report.envelope_count = len(envelope_paths)
    report.packet_count = len(packets)
    if not envelope_paths:
        if allow_empty:
            report.notes.append("the bundle holds no packets (accepted: --allow-empty); it proves no evidence")
        else:
            findings.append(
                Finding(
                    FindingKind.EMPTY_BUNDLE,
                    "the bundle holds no packets, so there is no evidence to verify (pass --allow-empty to accept "
                    "an export of a range in which nothing happened)",
                )
            )

    report.tenant_id = manifest.tenant_id if manifest else (packets[0].tenant_id if packets else None)
    if packets:
        report.first_sequence = min(p.sequence for p in packets)
        report.last_sequence = max(p.sequence for p in packets)
    findings.extend(
        verify_chain(
            packets,
            tenant_id=report.tenant_id,
            first_sequence=manifest.first_sequence if manifest else None,
            unreadable=unreadable,
        )
    )
    if manifest is not None:
        _check_manifest_metadata(manifest, report, findings, packets, bundle_keys)
    _check_validity(packets, verified, key_log, findings, require=require_checkpoint)
    replayed = _check_decision_inputs(packets, findings)
    if replayed:
        report.notes.append(f"{replayed} decision(s) carry their inputs; their inputs_hash was recomputed")
    if replay is not None:
        _replay_decisions(packets, replay, report, findings)
    if report.first_sequence is not None and report.first_sequence > 1:
        report.notes.append(
            f"the bundle starts at packet {report.first_sequence}: its link to packet {report.first_sequence - 1}, "
            "which is not in the bundle, was not checked"
        )
    report.unchecked_signatures = sum(len(refs) for refs in untrusted.values())
    if untrusted:
        report.notes.append(
            f"{len(untrusted)} packet(s) also carry signatures by keys that are not trusted "
            f"({', '.join(sorted({ref for refs in untrusted.values() for ref in refs}))}); those were not checked"
        )
    _check_tree(contents, manifest, report, keyring, leaves, findings, require=require_checkpoint)
    _check_timestamp(contents, report, findings, tsa_ca)
    _check_checkpoint_signer(report, packets, key_log, findings)

    report.findings = sort_findings(findings)
    return report


def _check_timestamp(
    contents: BundleContents, report: VerificationReport, findings: list[Finding], tsa_ca: str | None
) -> None:
    """Check the RFC 3161 timestamp of the checkpoint against the trusted TSA roots (``--tsa-ca``)."""
    token = contents.files.get(TIMESTAMP_PATH)
    note = contents.files.get(CHECKPOINT_PATH)
    if tsa_ca is None:
        if token is not None:
            report.notes.append(
                f"the checkpoint carries an RFC 3161 timestamp ({TIMESTAMP_PATH}); pass --tsa-ca to check it"
            )
        return
    if token is None or note is None:
        findings.append(
            Finding(
                FindingKind.TIMESTAMP_INVALID,
                "--tsa-ca asks for trusted time, but the bundle carries no timestamp of its checkpoint",
                path=TIMESTAMP_PATH,
            )
        )
        return
    try:
        verified = verify_token(token, note, tsa_ca)
    except TimestampError as exc:
        findings.append(Finding(FindingKind.TIMESTAMP_INVALID, str(exc), path=TIMESTAMP_PATH))
        return
    report.timestamp = f"{verified.time} by {verified.tsa}"
    report.notes.append(f"the TSA {verified.tsa} vouches that the checkpoint existed at {verified.time}")


def _check_tree(
    contents: BundleContents,
    manifest: Manifest | None,
    report: VerificationReport,
    keyring: PublicKeyRing,
    leaves: dict[int, bytes],
    findings: list[Finding],
    *,
    require: bool,
) -> None:
    """Check the checkpoint's signature and that the packets recompute its root."""
    if CHECKPOINT_PATH not in contents.files:
        if require:
            findings.append(
                Finding(
                    FindingKind.CHECKPOINT_MISSING,
                    "the bundle carries no signed checkpoint, so packets missing at its start or end would go unseen",
                    path=CHECKPOINT_PATH,
                )
            )
        else:
            report.notes.append("no checkpoint in the bundle: deleted first or last packets cannot be detected")
        return
    try:
        proof = parse_tree_proof(contents.files[CHECKPOINT_PATH], contents.files.get(TREE_PATH, b""))
    except ManifestError as exc:
        findings.append(Finding(FindingKind.CHECKPOINT_INVALID, str(exc), path=TREE_PATH))
        return
    try:
        verified = verify_checkpoint(proof.checkpoint, keyring)
    except CheckpointError as exc:
        findings.append(Finding(FindingKind.CHECKPOINT_INVALID, str(exc), path=CHECKPOINT_PATH))
        return
    checkpoint = verified.checkpoint
    tenant = report.tenant_id
    if tenant is None or checkpoint.origin.rsplit("/", 1)[-1] != str(tenant):
        findings.append(
            Finding(
                FindingKind.CHECKPOINT_INVALID,
                f"the checkpoint is of the log {checkpoint.origin}, not of tenant {tenant}",
                path=CHECKPOINT_PATH,
            )
        )
        return
    if checkpoint.size != proof.tree_size:
        findings.append(
            Finding(
                FindingKind.CHECKPOINT_INVALID,
                f"tree.json says {proof.tree_size} packets, the signed checkpoint {checkpoint.size}",
                path=TREE_PATH,
            )
        )
        return
    report.checkpoint_size = checkpoint.size
    report.checkpoint_key_ref = verified.key_ref
    if manifest is not None and (manifest.first_sequence, manifest.last_sequence) != (
        proof.first_sequence,
        proof.last_sequence,
    ):
        findings.append(
            Finding(
                FindingKind.MANIFEST_MISMATCH,
                f"manifest range {manifest.first_sequence}..{manifest.last_sequence} differs from the range "
                f"{proof.first_sequence}..{proof.last_sequence} tree.json proves",
                path=MANIFEST_PATH,
            )
        )
    if proof.first_sequence is None or proof.last_sequence is None:
        if leaves:
            findings.append(
                Finding(FindingKind.TREE_MISMATCH, "packets are present but tree.json claims none", path=TREE_PATH)
            )
        return
    first, last = proof.first_sequence, proof.last_sequence
    if not 1 <= first <= last <= checkpoint.size:
        findings.append(
            Finding(
                FindingKind.TREE_MISMATCH,
                f"range {first}..{last} is not within the checkpoint's {checkpoint.size} packets",
                path=TREE_PATH,
            )
        )
        return
    # A packet already reported (a gap, a bad signature, an unreadable file) is not reported again here: one
    # tampered packet gives findings about that packet, and the tree speaks for what nothing else noticed.
    # Missing packets between two present ones are gaps the chain check reports; those before the first or
    # after the last (a deleted head or tail) only the checkpoint reveals.
    reported = {f.sequence for f in findings if f.sequence is not None}
    present = sorted(set(leaves) | reported)
    missing = [sequence for sequence in range(first, last + 1) if sequence not in leaves]
    unseen = [s for s in missing if s not in reported and not (present and present[0] < s < present[-1])]
    for sequence in unseen[:50]:
        findings.append(
            Finding(
                FindingKind.TREE_MISMATCH,
                f"the checkpoint of {checkpoint.size} packets includes packet {sequence}, which is not in the "
                "bundle (deleted, or unreadable)",
                sequence=sequence,
            )
        )
    if len(unseen) > 50:
        findings.append(
            Finding(FindingKind.TREE_MISMATCH, f"{len(unseen) - 50} more packets of the checkpoint are missing")
        )
    extra = sorted(s for s in leaves if not first <= s <= last)
    if extra:
        findings.append(
            Finding(
                FindingKind.TREE_MISMATCH,
                f"packets {extra[:10]} lie outside the range {first}..{last} the checkpoint proves",
                sequence=extra[0],
            )
        )
    if missing:
        return
    try:
        root = merkle.range_root(checkpoint.size, first - 1, [leaves[s] for s in range(first, last + 1)], proof.outside)
    except merkle.ProofError as exc:
        findings.append(Finding(FindingKind.TREE_MISMATCH, str(exc), path=TREE_PATH))
        return
    if root != checkpoint.root and not reported.intersection(range(first, last + 1)):
        findings.append(
            Finding(
                FindingKind.TREE_MISMATCH,
                f"packets {first}..{last} do not recompute the root of the signed checkpoint of {checkpoint.size} "
                "packets: a packet was changed, added or removed",
                path=CHECKPOINT_PATH,
            )
        )


def _check_decision_inputs(packets: Sequence[CheckedPacket], findings: list[Finding]) -> int:
    """Report every decision whose recomputed ``inputs_hash`` differs; returns how many were checked.

    ``inputs_hash`` is ``sha256:`` + hex SHA-256 of the RFC 8785 form of ``{"clock": evaluated_at, "inputs":
    inputs}`` (the promotion service's definition), so a changed input, or a decision that does not follow
    from the inputs it names, shows without the service. The hash was recomputed with the envelope's other
    checks (:attr:`CheckedPacket.inputs_check`).
    """
    checked = 0
    for packet in packets:
        if packet.inputs_check is None:
            continue
        checked += 1
        recorded, computed = packet.inputs_check
        if computed != recorded:
            findings.append(
                Finding(
                    FindingKind.DECISION_INPUTS_MISMATCH,
                    f"decision.inputs_hash {recorded} is not {computed}, the hash of the inputs "
                    "the packet carries at its evaluated_at",
                    sequence=packet.sequence,
                    packet_id=packet.id,
                )
            )
    return checked


def _replay_decisions(
    packets: Sequence[EvidencePacket], replay: Replayer, report: VerificationReport, findings: list[Finding]
) -> None:
    """Decide every decision that carries its inputs again and report where the result differs from the record.

    The decision result and each gate's verdict are compared one by one; any other difference (reasons,
    approvals, a gate's message or details, ``policy_digest``, ``inputs_hash``) is reported by field name.
    """
    replayed = 0
    without_inputs = 0
    for packet in packets:
        decision = packet.content.get("decision")
        if not isinstance(decision, Mapping):
            continue
        if "inputs" not in decision:
            without_inputs += 1
            continue
        replayed += 1
        recorded = {key: value for key, value in decision.items() if key != "inputs"}
        inputs = decision["inputs"]
        try:
            # Through JSON, so the replayed record compares like the recorded one read from the bundle.
            again = json.loads(json.dumps(replay(inputs, str(decision.get("evaluated_at")))))
        except Exception as exc:
            findings.append(
                Finding(
                    FindingKind.DECISION_REPLAY_MISMATCH,
                    f"the decision cannot be replayed from its inputs: {type(exc).__name__}: {exc}",
                    sequence=packet.sequence,
                    packet_id=packet.id,
                )
            )
            continue
        for difference in _decision_differences(recorded, again):
            findings.append(
                Finding(
                    FindingKind.DECISION_REPLAY_MISMATCH,
                    f"replayed from its inputs, {difference}",
                    sequence=packet.sequence,
                    packet_id=packet.id,
                )
            )
    report.notes.append(f"{replayed} decision(s) replayed from their inputs with the project's gate code")
    if without_inputs:
        report.notes.append(f"{without_inputs} decision(s) carry no inputs and could not be replayed")


def _gate_verdicts(record: Mapping[str, Any]) -> dict[tuple[str, str], Any]:
    gates = record.get("gates")
    return {
        (str(gate.get("type")), str(gate.get("name"))): gate.get("status")
        for gate in (gates if isinstance(gates, list) else [])
        if isinstance(gate, Mapping)
    }


def _decision_differences(recorded: Mapping[str, Any], replayed: Mapping[str, Any]) -> list[str]:
    """Say in words how a replayed decision record differs from the recorded one (empty when identical)."""
    if recorded == replayed:
        return []
    differences: list[str] = []
    if recorded.get("result") != replayed.get("result"):
        differences.append(f"the decision is {replayed.get('result')!r}, the packet records {recorded.get('result')!r}")
    before, after = _gate_verdicts(recorded), _gate_verdicts(replayed)
    for gate_type, name in sorted(set(before) | set(after)):
        was, now = before.get((gate_type, name), "(absent)"), after.get((gate_type, name), "(absent)")
        if was != now:
            differences.append(f"gate {gate_type}/{name} is {now!r}, the packet records {was!r}")
    if not differences:  # same result and verdicts: name the fields that differ (reasons, a gate's details...)
        fields = sorted(key for key in set(recorded) | set(replayed) if recorded.get(key) != replayed.get(key))
        differences.append(f"the decision record differs in {', '.join(fields)}")
    return differences


def load_replayer() -> Replayer | None:
    """The installed decision function of :data:`REPLAY_ENTRY_POINTS` (None when no package provides one)."""
    found = sorted(entry_points(group=REPLAY_ENTRY_POINTS), key=lambda ep: ep.name)
    if not found:
        return None
    replayer: Replayer = found[0].load()
    return replayer


def _check_checkpoint_signer(
    report: VerificationReport, packets: Sequence[EvidencePacket], log: KeyLog, findings: list[Finding]
) -> None:
    """A checkpoint covers packets that existed when it was signed: its key cannot have been retired before
    the newest of them was created (a retired key cannot vouch for evidence made after it)."""
    if report.checkpoint_key_ref is None or not packets:
        return
    validity = log.validity.get(report.checkpoint_key_ref)
    newest = max(p.created_at for p in packets)
    if validity is None:
        findings.append(
            Finding(
                FindingKind.KEY_VALIDITY_UNKNOWN,
                f"the checkpoint is signed by {report.checkpoint_key_ref}, which no authenticated key log entry covers",
                path=CHECKPOINT_PATH,
                key_ref=report.checkpoint_key_ref,
            )
        )
    elif validity.retired_at is not None and validity.retired_at <= newest:
        findings.append(
            Finding(
                FindingKind.KEY_NOT_VALID,
                f"the checkpoint is signed by {report.checkpoint_key_ref}, retired at "
                f"{format_timestamp(validity.retired_at)}, before the newest packet it covers was created",
                path=CHECKPOINT_PATH,
                key_ref=report.checkpoint_key_ref,
            )
        )


def _check_manifest_metadata(
    manifest: Manifest,
    report: VerificationReport,
    findings: list[Finding],
    packets: Sequence[EvidencePacket],
    bundle_keys: PublicKeyRing,
) -> None:
    if sorted(manifest.key_refs) != bundle_keys.key_refs:
        findings.append(
            Finding(
                FindingKind.MANIFEST_MISMATCH,
                f"manifest lists the keys {', '.join(sorted(manifest.key_refs)) or 'none'}, the bundle holds "
                f"{', '.join(bundle_keys.key_refs) or 'none'}",
                path=MANIFEST_PATH,
            )
        )
    newest = max((p.created_at for p in packets), default=None)
    if newest is not None and manifest.created_at < newest:
        findings.append(
            Finding(
                FindingKind.MANIFEST_MISMATCH,
                f"manifest says the bundle was made at {format_timestamp(manifest.created_at)}, before its newest "
                f"packet ({format_timestamp(newest)})",
                path=MANIFEST_PATH,
            )
        )
    if manifest.packet_count != report.envelope_count:
        findings.append(
            Finding(
                FindingKind.MANIFEST_MISMATCH,
                f"manifest says {manifest.packet_count} packets, the bundle holds {report.envelope_count} envelopes",
                path=MANIFEST_PATH,
            )
        )
    if (manifest.first_sequence, manifest.last_sequence) != (report.first_sequence, report.last_sequence):
        findings.append(
            Finding(
                FindingKind.MANIFEST_MISMATCH,
                f"manifest says sequences {manifest.first_sequence}..{manifest.last_sequence}, "
                f"the packets span {report.first_sequence}..{report.last_sequence}",
                path=MANIFEST_PATH,
            )
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stella-evidence-verify",
        description="Verify a Stella evidence export bundle offline: file digests, signatures, content hashes "
        "and the packet chain. Exit status: 0 all checks hold, 1 a check failed, 2 unusable input.",
    )
    parser.add_argument("bundle", help="path of the .tar.gz bundle")
    parser.add_argument(
        "--keys",
        metavar="DIR",
        help="directory of trusted PEM public keys (*.pem) and the key log (key-log.json) obtained separately "
        "(GET /api/v1/evidence/keys)",
    )
    parser.add_argument(
        "--trust-fingerprint",
        metavar="SHA256",
        action="append",
        help="pin a key by its full fingerprint (sha256:<hex> of its DER SubjectPublicKeyInfo, repeatable): it "
        "and the keys the key log hands over to from it are trusted",
    )
    parser.add_argument(
        "--trust-bundle-keys",
        action="store_true",
        help="trust the public keys inside the bundle (shows the bundle is consistent, not who signed it)",
    )
    parser.add_argument(
        "--allow-no-checkpoint",
        action="store_true",
        help="accept a bundle without a signed checkpoint (exported before checkpoints existed)",
    )
    parser.add_argument(
        "--tsa-ca",
        metavar="PEM",
        help="root certificate(s) of the time-stamping authorities you trust: the checkpoint's RFC 3161 timestamp "
        "(checkpoint.tsr) must verify against them (needs the openssl command)",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="accept a bundle without any packet (otherwise it fails: it proves nothing)",
    )
    parser.add_argument(
        "--replay",
        action="store_true",
        help="decide every decision that carries its inputs again with the project's gate code (installed with "
        "the promotion package) and report any difference in the decision or a gate's verdict",
    )
    parser.add_argument(
        "--jobs",
        metavar="N",
        type=_jobs,
        default=0,
        help="processes to check the envelopes with: 0 (default) one per core, 1 this process only; bundles of "
        f"fewer than {POOL_THRESHOLD} packets are checked in this process. The report is the same for every N",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _jobs(value: str) -> int:
    try:
        jobs = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if jobs < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative (0 means one process per core)")
    return jobs


def main(argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Run the verifier command.

    Args:
        argv: Arguments without the program name (defaults to ``sys.argv[1:]``).
        stdout: Where the report goes (defaults to ``sys.stdout``).
        stderr: Where usage errors go (defaults to ``sys.stderr``).

    Returns:
        ``0`` when everything verified, ``1`` when a check failed, ``2`` for unusable input.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, which is our "unusable input" too
        return int(exc.code or 0)

    trusted: PublicKeyRing | None = None
    trusted_log: list[Any] | None = None
    if args.keys is not None:
        try:
            if not os.path.isdir(args.keys):
                raise OSError(f"{args.keys} is not a directory")
            trusted = PublicKeyRing.from_directory(args.keys)
            log_path = os.path.join(args.keys, KEY_LOG_PATH)
            if os.path.exists(log_path):
                with open(log_path, encoding="utf-8") as handle:
                    trusted_log = json.load(handle)
                if not isinstance(trusted_log, list):
                    raise ValueError(f"{log_path} is not a JSON list of key log entries")
        except (OSError, KeyFormatError, ValueError) as exc:
            print(f"error: cannot load trusted keys: {exc}", file=err)
            return EXIT_UNUSABLE
        if len(trusted) == 0:
            print(f"error: no *.pem public keys in {args.keys}", file=err)
            return EXIT_UNUSABLE
    if args.tsa_ca is not None and not os.path.isfile(args.tsa_ca):
        print(f"error: --tsa-ca {args.tsa_ca} is not a file of PEM certificates", file=err)
        return EXIT_UNUSABLE
    fingerprints = list(args.trust_fingerprint or [])
    for fingerprint in fingerprints:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", fingerprint):
            print(f"error: --trust-fingerprint {fingerprint!r} is not sha256:<64 lowercase hex>", file=err)
            return EXIT_UNUSABLE
    chosen = sum([trusted is not None, bool(fingerprints), bool(args.trust_bundle_keys)])
    if chosen == 0:
        print(
            "error: no trusted keys: pass --keys DIR (the keys your organization publishes, with key-log.json), "
            "--trust-fingerprint sha256:<hex> (a pinned key), or --trust-bundle-keys to trust the keys inside "
            "the bundle",
            file=err,
        )
        return EXIT_UNUSABLE
    if chosen > 1:
        print("error: --keys, --trust-fingerprint and --trust-bundle-keys exclude each other", file=err)
        return EXIT_UNUSABLE
    replay: Replayer | None = None
    if args.replay:
        replay = load_replayer()
        if replay is None:
            print(
                f"error: --replay needs the project's gate code: install the promotion package (stella-promotion), "
                f"which provides the {REPLAY_ENTRY_POINTS!r} entry point",
                file=err,
            )
            return EXIT_UNUSABLE
    if args.trust_bundle_keys:
        print(
            "warning: trusting the keys inside the bundle; anyone can re-sign a bundle with a key of their own",
            file=err,
        )
    try:
        report = verify_bundle(
            args.bundle,
            trusted_keys=trusted,
            trusted_key_log=trusted_log,
            trusted_fingerprints=fingerprints,
            trust_bundle_keys=args.trust_bundle_keys,
            require_checkpoint=not args.allow_no_checkpoint,
            replay=replay,
            allow_empty=args.allow_empty,
            tsa_ca=args.tsa_ca,
            jobs=args.jobs,
        )
    except (OSError, BundleFormatError) as exc:
        print(f"error: cannot read bundle {args.bundle}: {exc}", file=err)
        return EXIT_UNUSABLE

    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True), file=out)
    else:
        print(report.format_text(), file=out)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
