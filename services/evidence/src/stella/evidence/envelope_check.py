"""The per-envelope checks of the offline verifier, in this process or spread over a pool of processes.

Everything about one envelope file that needs no other packet is decided here: the DSSE envelope's shape and
base64, every trusted signature, the statement (its canonical form included), the packet's fields, its
``content_hash`` recomputed, its subjects, signer and file name, the Merkle leaf hash of its payload and the
recomputed ``inputs_hash`` of a decision that carries its inputs. The checks that need the packets together
(chain links, gaps, the checkpoint's root, key validity, the manifest) stay with the caller, which receives
one :class:`EnvelopeOutcome` per file in the order it passed the files in, so the report does not depend on
how many processes did the work.

Like :mod:`stella.evidence.verify`, this module needs only the standard library, ``cryptography`` and
``rfc8785`` (and uses msgspec to read statements when it is installed).
"""

from __future__ import annotations

import contextlib
import gc
import json
import multiprocessing
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import Any, Final

from stella.evidence import merkle
from stella.evidence.bundle import envelope_path, parse_envelope_path
from stella.evidence.chain import Finding, FindingKind
from stella.evidence.dsse import MalformedEnvelopeError, parse_envelope, verify_parsed_envelope
from stella.evidence.keys import BadSignatureError, PublicKey, PublicKeyRing, UnknownKeyError
from stella.evidence.packet import (
    EvidencePacket,
    MalformedPacketError,
    compute_packet_hash_from_content_bytes,
    decision_inputs_hash,
    packet_from_dict,
)
from stella.evidence.statement import (
    PAYLOAD_TYPE,
    MalformedStatementError,
    parse_statement_canonical,
    sort_subjects,
    subjects_from_content,
)

POOL_THRESHOLD: Final[int] = 512
"""Fewest envelopes worth a process pool: below it, starting the workers costs more than they save."""

CHUNKS_PER_WORKER: Final[int] = 4
"""Chunks each worker gets on average: large enough to amortize a chunk's transfer, several so that a worker
slowed by other load on the machine does not hold up the end."""


@dataclass(frozen=True)
class CheckedPacket(EvidencePacket):
    """A packet read out of an envelope, with what the per-envelope checks computed about it.

    Attributes:
        recomputed: ``(content_hash, None)`` as recomputed from the packet's fields, or ``(None, why it cannot
            be computed)``; :meth:`compute_hash` answers from it, so the chain check does not recompute.
        inputs_check: For a decision that carries its inputs: ``(the inputs_hash it records, the one its
            inputs give)``; the computed one reads ``(cannot be computed: ...)`` when they cannot be hashed.
    """

    recomputed: tuple[str | None, str | None] = field(default=(None, None), repr=False, compare=False)
    inputs_check: tuple[Any, str] | None = field(default=None, repr=False, compare=False)

    def compute_hash(self) -> str:
        """The recomputed ``content_hash`` (raises ``ValueError`` with the reason when it cannot be computed)."""
        digest, why = self.recomputed
        if digest is None:
            raise ValueError(why)
        return digest


@dataclass
class EnvelopeOutcome:
    """What the checks of one envelope file found.

    Attributes:
        findings: Failed checks about this file, in the order they were made.
        packet: The packet, when one could be read out of the envelope.
        leaf: RFC 6962 leaf hash of the payload (with ``packet``).
        verified_refs: Trusted keys whose signatures verified, sorted.
        others: Key references of the signatures that were not checked, because no trusted key of that name
            signed (only filled when a trusted signature verified).
    """

    findings: list[Finding] = field(default_factory=list)
    packet: CheckedPacket | None = None
    leaf: bytes | None = None
    verified_refs: tuple[str, ...] = ()
    others: list[str] = field(default_factory=list)


def _recompute(packet: EvidencePacket, content_bytes: bytes | None) -> tuple[str | None, str | None]:
    try:
        if content_bytes is not None:
            return compute_packet_hash_from_content_bytes(packet, content_bytes), None
        return packet.compute_hash(), None
    except ValueError as exc:
        return None, str(exc)


def _inputs_check(packet: EvidencePacket) -> tuple[Any, str] | None:
    """The ``inputs_hash`` a decision records and the one its inputs give (:func:`decision_inputs_hash`)."""
    decision = packet.content.get("decision")
    if not isinstance(decision, Mapping) or "inputs" not in decision:
        return None
    try:
        computed = decision_inputs_hash(decision.get("evaluated_at"), decision["inputs"])
    except ValueError as exc:
        computed = f"(cannot be computed: {exc})"
    return decision.get("inputs_hash"), computed


def check_envelope(path: str, data: bytes, keyring: PublicKeyRing) -> EnvelopeOutcome:
    """Check one envelope file on its own (see the module docstring).

    Args:
        path: The file's path in the bundle (its name must name the packet inside).
        data: The file's bytes.
        keyring: The trusted keys.
    """
    outcome = EnvelopeOutcome()
    named = parse_envelope_path(path)
    name_sequence, name_id = named if named else (None, None)

    def report(
        kind: FindingKind, message: str, packet: EvidencePacket | None = None, key_ref: str | None = None
    ) -> None:
        outcome.findings.append(
            Finding(
                kind,
                message,
                sequence=packet.sequence if packet else name_sequence,
                packet_id=packet.id if packet else name_id,
                path=path,
                key_ref=key_ref,
            )
        )

    try:
        envelope = parse_envelope(json.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        report(FindingKind.MALFORMED_ENVELOPE, f"{path} is not UTF-8 JSON: {exc}")
        return outcome
    except MalformedEnvelopeError as exc:
        report(FindingKind.MALFORMED_ENVELOPE, f"{path}: {exc}")
        return outcome
    if envelope.payload_type != PAYLOAD_TYPE:
        report(FindingKind.MALFORMED_ENVELOPE, f"payloadType is {envelope.payload_type!r}, expected {PAYLOAD_TYPE!r}")
        return outcome

    # Read the packet before judging the signature, so every finding can name the packet it is about.
    packet: EvidencePacket | None = None
    statement: dict[str, Any] | None = None
    content_bytes: bytes | None = None
    try:
        statement, content_bytes = parse_statement_canonical(envelope.payload)
        packet = packet_from_dict(statement["predicate"])
    except MalformedStatementError as exc:
        report(FindingKind.MALFORMED_STATEMENT, str(exc))
    except MalformedPacketError as exc:
        report(FindingKind.MALFORMED_PACKET, str(exc))

    verified_refs: tuple[str, ...] = ()
    try:
        verified_refs = verify_parsed_envelope(envelope, keyring).key_refs
    except UnknownKeyError as exc:
        claimed = ", ".join(s.keyid or "(no keyid)" for s in envelope.signatures)
        report(
            FindingKind.UNKNOWN_KEY,
            f"signed by {claimed}, which is not among the trusted keys",
            packet,
            key_ref=exc.key_ref,
        )
    except BadSignatureError as exc:
        report(FindingKind.BAD_SIGNATURE, str(exc), packet, key_ref=exc.key_ref)

    if packet is None or statement is None:
        return outcome
    outcome.packet = CheckedPacket(
        **{name: getattr(packet, name) for name in EvidencePacket.__dataclass_fields__},
        recomputed=_recompute(packet, content_bytes),
        inputs_check=_inputs_check(packet),
    )
    outcome.leaf = merkle.leaf_hash(envelope.payload)
    outcome.verified_refs = verified_refs
    others = [s.keyid or "(no keyid)" for s in envelope.signatures if s.keyid not in verified_refs]
    if verified_refs and others:
        outcome.others = others
    if verified_refs and packet.signer_key_ref not in verified_refs:
        report(
            FindingKind.SIGNER_MISMATCH,
            f"names signer {packet.signer_key_ref}, but was signed by {', '.join(verified_refs)}",
            packet,
            key_ref=packet.signer_key_ref,
        )
    try:
        expected_subjects = subjects_from_content(packet.content)
    except ValueError as exc:
        report(FindingKind.SUBJECT_MISMATCH, f"content names no valid image: {exc}", packet)
    else:
        if sort_subjects(statement["subject"]) != expected_subjects or len(statement["subject"]) != len(
            expected_subjects
        ):
            report(
                FindingKind.SUBJECT_MISMATCH,
                "statement subjects are not the images of content.release.components",
                packet,
            )
    if named is None:
        report(
            FindingKind.MISPLACED_PACKET,
            f"file name {path} does not have the form {envelope_path(packet.sequence, packet.id)}",
            packet,
        )
    elif named != (packet.sequence, packet.id):
        report(
            FindingKind.MISPLACED_PACKET,
            f"is stored as {path}, which names packet {name_sequence} (id {name_id})",
            packet,
        )
    return outcome


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Keep Python's cyclic garbage collector off while envelopes are checked (as it was before, after).

    Each envelope's checks allocate about a thousand containers (the statement's objects), and the packets
    they read are kept until the report, so the collector would walk the growing heap again and again; it
    found no cycle to free in a 2,000-packet bundle and took a sixth of the verifier's time. The checks make
    no cycle that outlives an envelope except the tracebacks of the exceptions they catch, which are freed
    when the collector runs again after the checks.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# In a worker process: the trusted keys, built once from their PEM form when the worker starts.
_worker_keyring: PublicKeyRing | None = None
_worker_keep_content: bool = True


def _start_worker(key_pems: Sequence[bytes], keep_content: bool) -> None:
    global _worker_keyring, _worker_keep_content
    _worker_keyring = PublicKeyRing(PublicKey.from_pem(pem) for pem in key_pems)
    _worker_keep_content = keep_content


# In the parent, while a forked pool runs: the files, which forked workers inherit instead of receiving them
# through a pipe (only the bounds of each chunk are sent).
_inherited_items: Sequence[tuple[str, bytes]] = ()


def _check_inherited(bounds: tuple[int, int]) -> list[EnvelopeOutcome]:
    start, end = bounds
    return _check_chunk(_inherited_items[start:end])


def _check_chunk(items: Sequence[tuple[str, bytes]]) -> list[EnvelopeOutcome]:
    keyring = _worker_keyring
    if keyring is None:  # pragma: no cover - the pool's initializer always runs first
        raise RuntimeError("worker started without its keys")
    with collector_paused():
        outcomes = [check_envelope(path, data, keyring) for path, data in items]
    if not _worker_keep_content:
        # The caller needs no content once the hashes are computed; not sending it back saves most of the
        # transfer.
        for outcome in outcomes:
            if outcome.packet is not None:
                outcome.packet = replace(outcome.packet, content={})
    return outcomes


def resolve_jobs(jobs: int | None) -> int:
    """The number of processes ``jobs`` asks for: ``None`` or ``0`` means one per core."""
    if jobs is None or jobs == 0:
        return os.cpu_count() or 1
    if jobs < 0:
        raise ValueError(f"jobs must be >= 0, got {jobs}")
    return jobs


def _context() -> multiprocessing.context.BaseContext:
    # fork starts a worker in milliseconds with this module already imported, but is unsafe in a process
    # that runs other threads (a lock held by one of them stays held in the child); spawn is always safe.
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def check_envelopes(
    items: Sequence[tuple[str, bytes]],
    keyring: PublicKeyRing,
    *,
    jobs: int | None = None,
    keep_content: bool = True,
    threshold: int = POOL_THRESHOLD,
) -> list[EnvelopeOutcome]:
    """Check envelope files, in this process or in a pool of processes; outcomes come back in input order.

    Args:
        items: ``(path, bytes)`` of every envelope file, in the order the caller reports them.
        keyring: The trusted keys.
        jobs: Processes to use: ``None`` or ``0`` one per core, ``1`` this process only.
        keep_content: Return each packet's content (needed to replay decisions); otherwise the packets
            coming back from worker processes carry an empty content (their hashes are already computed).
        threshold: Fewest files for which a pool is started.
    """
    workers = min(resolve_jobs(jobs), len(items))
    if workers <= 1 or len(items) < threshold:
        with collector_paused():
            return [check_envelope(path, data, keyring) for path, data in items]
    global _inherited_items
    size = max(1, -(-len(items) // (workers * CHUNKS_PER_WORKER)))
    bounds = [(start, min(start + size, len(items))) for start in range(0, len(items), size)]
    pems = [key.to_pem() for key in keyring]
    context = _context()
    forked = context.get_start_method() == "fork"
    if forked:
        _inherited_items = items
        # Keep the collector of each forked worker off the objects it inherits: walking them would copy every
        # page they are on into the worker (copy-on-write), the largest cost of a forked pool.
        gc.freeze()
    try:
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(pems, keep_content)
        ) as pool:
            results = (
                pool.map(_check_inherited, bounds)
                if forked
                else pool.map(_check_chunk, [items[start:end] for start, end in bounds])
            )
            return [outcome for chunk in results for outcome in chunk]
    except (BrokenProcessPool, OSError):
        # A worker died (killed, out of memory) or none could be started: the checks do not depend on where
        # they run, so this process does them all rather than report a verdict on part of the bundle.
        with collector_paused():
            return [check_envelope(path, data, keyring) for path, data in items]
    finally:
        if forked:
            gc.unfreeze()
        _inherited_items = ()
