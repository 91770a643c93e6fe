"""The evidence service's rules: what a release decision packet holds, and how a stored packet is judged.

Pure: no I/O, no clock, no random ids. Handlers fetch the promotion, its approvals and the stored rows, and
pass them in; the evidence core (:mod:`stella.evidence.packet` and friends) does the hashing and signing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from stella.contracts.approval import ApprovalRequestView
from stella.contracts.canonical import content_hash
from stella.contracts.evidence import PacketType, PacketView, VerificationView
from stella.contracts.promotion import PromotionChanged, PromotionStatus, PromotionView
from stella.evidence.dsse import MalformedEnvelopeError, parse_envelope, verify_parsed_envelope
from stella.evidence.keys import BadSignatureError, PublicKeyRing, UnknownKeyError
from stella.evidence.packet import (
    PACKET_FIELDS,
    EvidencePacket,
    MalformedPacketError,
    SubjectMismatchError,
    decision_inputs_hash,
    format_timestamp,
    packet_from_statement,
)
from stella.evidence.statement import PAYLOAD_TYPE, MalformedStatementError, parse_statement
from stella.kit.errors import BadRequest, Conflict, NotFound, TransientFault, Unprocessable

UNDECIDED: Final[frozenset[PromotionStatus]] = frozenset(
    {PromotionStatus.PENDING_GATE, PromotionStatus.PENDING_APPROVAL}
)
"""Promotion states whose decision is not made yet: evidence of them would be stale."""

CHECKS: Final[tuple[str, ...]] = (
    "signature",
    "statement",
    "signer",
    "key_validity",
    "content_hash",
    "matches_envelope",
    "chain_link",
)
"""The checks :func:`verify_stored_packet` reports, in the order it runs them."""


# --- errors reported to callers ------------------------------------------------------------------------------


class PacketNotFound(NotFound):
    """No packet with this id for this tenant."""

    title = "Evidence packet not found"


class InvalidEvidenceContent(Unprocessable):
    """Content given for a packet cannot become evidence (wrong shape, names no image)."""

    code = "VAL_EVIDENCE_CONTENT"
    title = "Invalid evidence content"


class InvalidExportRange(BadRequest):
    """The export range ends before it starts."""

    code = "VAL_EXPORT_RANGE"
    title = "Invalid export range"


class ExportTooLarge(Unprocessable):
    """The export range holds more packets than one bundle may."""

    code = "VAL_EXPORT_TOO_LARGE"
    title = "Export too large"


# --- faults: the message is redelivered ----------------------------------------------------------------------
# These carry no ``code``/``status``: the kit treats them as faults, so the command is retried, not answered.
# A service that does not answer is a transient fault (see stella.kit.faults): retried for as long as it lasts.


class PromotionNotDecided(RuntimeError):
    """The promotion is still waiting on gates or approvals; a packet now would record a stale state."""


class DependencyUnavailable(TransientFault):
    """The promotion or approval service did not answer; nothing is stored until it does."""


class SignerOutOfDate(RuntimeError):
    """The database names an active key other than the one this process holds, and the key file has neither."""


# --- release decision content --------------------------------------------------------------------------------


def promotion_id_of(run_inputs: Mapping[str, Any], subject_id: UUID | None) -> UUID | None:
    """The promotion an evidence step is about: the run input ``promotion_id``, else the run's subject."""
    raw = run_inputs.get("promotion_id")
    if raw is not None:
        try:
            return UUID(str(raw))
        except ValueError:
            return None
    return subject_id


def release_decision_key(promotion: PromotionView) -> str:
    """The source key of a promotion's ``release_decision`` packet: the promotion and its decision.

    Not the workflow step attempt that asks for it: an evidence step executed again (a retry after a
    completion that never reached the workflow) finds the packet the first attempt made instead of signing
    a second one, whatever the promotion's status has become meanwhile. A promotion decided anew (a new
    decision record) gets a packet of its own.
    """
    decision = "none" if promotion.decision_record is None else content_hash(promotion.decision_record)
    return f"release_decision:{promotion.id}:{decision}"


def is_decided(promotion: PromotionView) -> bool:
    """Whether the promotion's gates and approvals have been decided (approved, rejected, or later)."""
    return promotion.status not in UNDECIDED


def carried_decision_inputs(message: object, promotion: PromotionView) -> dict[str, Any] | None:
    """The decision's inputs the event announcing it carries, when they are the inputs its record hashed.

    None when ``message`` is not such an event, carries no inputs, or carries inputs whose hash at the
    record's ``evaluated_at`` is not the record's ``inputs_hash`` (they are then asked for, as before events
    carried them).
    """
    inputs = message.decision_inputs if isinstance(message, PromotionChanged) else None
    record = promotion.decision_record or {}
    recorded = record.get("inputs_hash")
    if inputs is None or recorded is None:
        return None
    try:
        computed = decision_inputs_hash(record.get("evaluated_at"), inputs)
    except ValueError:
        return None
    return inputs if computed == recorded else None


def needs_approvals(promotion: PromotionView, inputs: Mapping[str, Any] | None) -> bool:
    """Whether the approval request must be read: votes were recorded, or the environment required approvals.

    ``inputs`` are the decision's inputs (their ``approvals.required`` is what the environment asked for);
    only when they say no approval was required is the request not read. Without them, or without that
    number, it is read anyway (a promotion that never opened one answers 404).
    """
    if (promotion.decision_record or {}).get("approvals"):
        return True
    summary = (inputs or {}).get("approvals")
    required = summary.get("required") if isinstance(summary, Mapping) else None
    if isinstance(required, int) and not isinstance(required, bool):
        return required > 0
    return True


def decided_status(promotion: PromotionView) -> str:
    """The promotion's status when it was decided: ``approved`` or ``rejected`` by its decision record.

    Whatever it became since (deploying, deployed, failed after its deployment): a ``release_decision`` packet
    records the decision, and the same decision gives the same packet whenever it is recorded. A promotion
    without a final record (cancelled while it waited, say) keeps its status.
    """
    result = (promotion.decision_record or {}).get("result")
    if result == "allow":
        return str(PromotionStatus.APPROVED)
    if result == "deny":
        return str(PromotionStatus.REJECTED)
    return str(promotion.status)


def _timestamp(moment: datetime | None) -> str | None:
    return None if moment is None else format_timestamp(moment)


def _approvers(promotion: PromotionView, approvals: ApprovalRequestView | None) -> list[dict[str, Any]]:
    if approvals is not None:
        votes = sorted(approvals.votes, key=lambda v: (v.at, str(v.approver_id)))
        return [
            {
                "id": str(v.approver_id),
                "name": v.approver_name,
                "display_name": v.approver_display_name,
                "action": str(v.action),
                "at": format_timestamp(v.at),
                "comment": v.comment,
            }
            for v in votes
        ]
    # No approval request (it was never opened): the decision record's approvals are all there is.
    entries = (promotion.decision_record or {}).get("approvals") or []
    return [
        {
            "id": e.get("approver"),
            "name": None,
            "display_name": None,
            "action": e.get("action"),
            "at": e.get("at"),
            "comment": e.get("comment", ""),
        }
        for e in entries
        if isinstance(e, Mapping)
    ]


def release_decision_content(
    promotion: PromotionView,
    approvals: ApprovalRequestView | None,
    *,
    inputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the reference §5 content of a ``release_decision`` packet.

    The content depends on the decision alone, not on who records it or when: the packet made when the
    decision is announced and the one the workflow's evidence step would make are the same.

    Args:
        promotion: The decided promotion (with its release snapshot and decision record).
        approvals: Its approval request, when one was opened.
        inputs: What the gates saw (the promotion service's decision inputs), stored as ``decision.inputs``
            so that ``decision.inputs_hash`` can be recomputed from the packet alone.

    Returns:
        ``{release, environment, actors, decision, execution}``: the release with its digests, the target
        environment, the requester and every approver (id, name and display name as they were when they
        acted; null for records made before names were kept) with time and comment, the full decision record, and
        references to the execution that produced it (the promotion, its status when decided, its workflow run).
    """
    components = [
        {
            "name": c.get("name"),
            "digest": c.get("digest"),
            "semver": c.get("semver"),
            "tag": c.get("tag"),
            "image_repository": c.get("image_repository"),
        }
        for c in sorted(promotion.release_components, key=lambda c: (str(c.get("name")), str(c.get("digest"))))
    ]
    actors: dict[str, Any] = {
        "requester": {
            "id": None if promotion.requested_by is None else str(promotion.requested_by),
            "name": promotion.requested_by_name,
            "display_name": promotion.requested_by_display_name,
            "requested_at": format_timestamp(promotion.requested_at),
            "reason": promotion.reason,
        },
        "approvers": _approvers(promotion, approvals),
    }
    if approvals is not None:
        actors["approval"] = {
            "status": str(approvals.status),
            "required": approvals.required,
            "require_sod": approvals.require_sod,
            "approver_groups": sorted(approvals.approver_groups),
            "requested_at": format_timestamp(approvals.requested_at),
            "expires_at": format_timestamp(approvals.expires_at),
            "decided_at": _timestamp(approvals.decided_at),
        }
    run_id = promotion.workflow_run_id
    execution: dict[str, Any] = {
        "promotion_id": str(promotion.id),
        "promotion_status": decided_status(promotion),
        "workflow_run_id": None if run_id is None else str(run_id),
    }
    if promotion.freeze_override is not None:
        execution["freeze_override"] = promotion.freeze_override
    return {
        "release": {"id": str(promotion.release_id), "name": promotion.release_name, "components": components},
        "environment": {
            "id": str(promotion.target_environment_id),
            "name": promotion.target_environment_name,
            "source_environment_id": (
                None if promotion.source_environment_id is None else str(promotion.source_environment_id)
            ),
        },
        "actors": actors,
        "decision": (
            {**promotion.decision_record, "inputs": dict(inputs)}
            if promotion.decision_record is not None and inputs is not None
            else promotion.decision_record
        ),
        "execution": execution,
    }


# --- stored packets ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredPacket:
    """A packet row: the packet's fields as stored, and its envelope.

    Attributes:
        packet: The packet built from the row's columns (not from the envelope).
        envelope: The stored DSSE envelope.
    """

    packet: EvidencePacket
    envelope: dict[str, Any]

    def view(self) -> PacketView:
        """The packet as queries return it."""
        p = self.packet
        return PacketView(
            id=p.id,
            packet_type=PacketType(str(p.packet_type)),
            promotion_id=p.promotion_id,
            sequence=p.sequence,
            previous_hash=p.previous_hash,
            content_hash=p.content_hash,
            signer_key_ref=p.signer_key_ref,
            created_at=p.created_at,
            content=p.content,
            envelope=self.envelope,
        )


def _line(packet: EvidencePacket, kind: str, message: str) -> str:
    # Same shape as the offline verifier's findings, so both read alike.
    return f"packet {packet.sequence} (id {packet.id}): {message} [{kind}]"


def _recompute(packet: EvidencePacket) -> tuple[str | None, str | None]:
    try:
        return packet.compute_hash(), None
    except ValueError as exc:
        return None, str(exc)


def verify_stored_packet(
    stored: StoredPacket,
    previous: StoredPacket | None,
    keyring: PublicKeyRing,
    validity: Mapping[str, tuple[datetime, datetime | None]] | None = None,
) -> VerificationView:
    """Verify one stored packet: signature, statement, signer, hash, row against envelope, chain link.

    Args:
        stored: The packet to verify.
        previous: The tenant's packet at ``sequence - 1`` (``None`` when it does not exist or for sequence 1).
        keyring: Every public key the service ever signed with.
        validity: When each key was valid, by ``key_ref``: ``(valid from, retired at)``. Without it the key's
            validity is taken as checked.

    Returns:
        The verification: ``checks`` holds one boolean per name in :data:`CHECKS`; ``findings`` one precise
        line per failure; ``valid`` is true only when every check holds.
    """
    packet = stored.packet
    checks = dict.fromkeys(CHECKS, False)
    checks["key_validity"] = True  # false only for a verified signature made outside its key's validity
    findings: list[str] = []

    envelope = None
    verified_refs: tuple[str, ...] = ()
    try:
        envelope = parse_envelope(stored.envelope)
        verified_refs = verify_parsed_envelope(envelope, keyring, payload_type=PAYLOAD_TYPE).key_refs
        checks["signature"] = True
    except MalformedEnvelopeError as exc:
        findings.append(_line(packet, "malformed_envelope", str(exc)))
    except UnknownKeyError as exc:
        findings.append(_line(packet, "unknown_key", f"signed by {exc.key_ref}, a key this service never published"))
    except BadSignatureError as exc:
        findings.append(_line(packet, "bad_signature", str(exc)))

    signed: EvidencePacket | None = None
    if envelope is not None:
        try:
            signed = packet_from_statement(parse_statement(envelope.payload))
            checks["statement"] = True
        except MalformedStatementError as exc:
            findings.append(_line(packet, "malformed_statement", str(exc)))
        except MalformedPacketError as exc:
            findings.append(_line(packet, "malformed_packet", str(exc)))
        except SubjectMismatchError as exc:
            findings.append(_line(packet, "subject_mismatch", str(exc)))

    if signed is not None and verified_refs:
        if signed.signer_key_ref not in verified_refs:
            findings.append(
                _line(
                    packet,
                    "signer_mismatch",
                    f"names signer {signed.signer_key_ref}, but was signed by {', '.join(verified_refs)}",
                )
            )
        else:
            checks["signer"] = True
            window = None if validity is None else validity.get(signed.signer_key_ref)
            if validity is not None and window is None:
                checks["key_validity"] = False
                findings.append(
                    _line(packet, "key_validity_unknown", f"no validity is known for {signed.signer_key_ref}")
                )
            elif window is not None and not (
                window[0] <= signed.created_at and (window[1] is None or signed.created_at < window[1])
            ):
                checks["key_validity"] = False
                findings.append(
                    _line(
                        packet,
                        "key_not_valid",
                        f"created at {format_timestamp(signed.created_at)}, outside the validity of its key "
                        f"{signed.signer_key_ref} ({format_timestamp(window[0])} to "
                        f"{'now' if window[1] is None else format_timestamp(window[1])})",
                    )
                )

    digest, why = _recompute(packet)
    hash_ok = digest == packet.content_hash
    if digest is None:
        findings.append(_line(packet, "hash_mismatch", f"content_hash cannot be recomputed from the stored row: {why}"))
    elif not hash_ok:
        findings.append(
            _line(
                packet,
                "hash_mismatch",
                f"stored content_hash {packet.content_hash} does not match {digest} recomputed from the stored row",
            )
        )
    if signed is not None:
        signed_digest, why = _recompute(signed)
        if signed_digest != signed.content_hash:
            hash_ok = False
            findings.append(
                _line(
                    packet,
                    "hash_mismatch",
                    f"signed content_hash {signed.content_hash} does not match the recomputed {signed_digest or why}",
                )
            )
    checks["content_hash"] = hash_ok

    if signed is not None:
        stored_fields, signed_fields = packet.to_dict(), signed.to_dict()
        differing = [name for name in PACKET_FIELDS if stored_fields[name] != signed_fields[name]]
        if differing:
            findings.append(
                _line(packet, "record_mismatch", f"stored {', '.join(differing)} differ from the signed packet")
            )
        else:
            checks["matches_envelope"] = True

    if packet.sequence == 1:
        if packet.previous_hash is None:
            checks["chain_link"] = True
        else:
            findings.append(
                _line(
                    packet, "broken_link", f"the first packet must have previous_hash null, has {packet.previous_hash}"
                )
            )
    elif previous is None:
        findings.append(
            _line(packet, "gap", f"packet {packet.sequence - 1} is missing: the chain is broken before this packet")
        )
    elif packet.previous_hash != previous.packet.content_hash:
        findings.append(
            _line(
                packet,
                "broken_link",
                f"previous_hash {packet.previous_hash} does not match content_hash "
                f"{previous.packet.content_hash} of packet {previous.packet.sequence} (id {previous.packet.id})",
            )
        )
    else:
        checks["chain_link"] = True

    return VerificationView(packet_id=packet.id, valid=all(checks.values()), checks=checks, findings=findings)


class StoredEvidenceTampered(Conflict):
    """Stored packet rows differ from the envelopes that were signed: the table was changed behind the
    append-only guard. An export would ship the untouched envelopes and hide it, so it is refused."""

    code = "SYS_EVIDENCE_TAMPERED"
    title = "Stored evidence differs from its signed envelopes"


def check_stored_matches_envelope(rows: Iterable[StoredPacket]) -> None:
    """Check that every row's columns are the packet its envelope signed.

    Raises:
        StoredEvidenceTampered: Naming the packets whose stored fields differ (or whose envelope is unreadable).
    """
    differing: list[str] = []
    for stored in rows:
        packet = stored.packet
        try:
            signed = packet_from_statement(parse_statement(parse_envelope(stored.envelope).payload)).to_dict()
        except (MalformedEnvelopeError, MalformedStatementError, MalformedPacketError, SubjectMismatchError):
            differing.append(f"{packet.sequence} (envelope unreadable)")
            continue
        fields = packet.to_dict()
        names = [name for name in PACKET_FIELDS if fields[name] != signed[name]]
        if names:
            differing.append(f"{packet.sequence} ({', '.join(names)})")
    if differing:
        raise StoredEvidenceTampered(
            f"stored packets differ from their signed envelopes: {'; '.join(differing[:20])}"
            + (f" and {len(differing) - 20} more" if len(differing) > 20 else "")
        )
