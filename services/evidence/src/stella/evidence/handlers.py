"""Use cases of the evidence service: gather -> build, sign, chain, store + outbox, in one transaction.

Reads from other services (the promotion, its approvals) happen before the transaction opens, so no
connection is held while another service answers. Inside the transaction the tenant's chain is locked, its
head read, the packet built on it, signed with the active key and appended; the packet, ``packet_created``
and the workflow's ``CompleteStep`` commit together or not at all. Commands that append a packet are appended
together with the others waiting, in one transaction (group commit, :mod:`stella.evidence.appender`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID, uuid4, uuid5

import asyncpg

from stella.contracts.approval import GET_APPROVALS, ApprovalRequestView, GetApprovals
from stella.contracts.deployment import DriftDetected, JobCompleted
from stella.contracts.envelope import Command, Message, Page, Reply, utcnow
from stella.contracts.evidence import (
    PACKET_CREATED,
    CollectEvidence,
    ExportBundle,
    ExportBundleView,
    GetPacket,
    ListKeys,
    ListPackets,
    PacketCreated,
    VerifyPacket,
)
from stella.contracts.evidence import PacketType as ContractPacketType
from stella.contracts.promotion import (
    GET_DECISION,
    GET_PROMOTION,
    DecisionView,
    GetDecision,
    GetPromotion,
    PromotionChanged,
    PromotionView,
)
from stella.contracts.release import GET_RELEASE, GetRelease, ReleaseView
from stella.contracts.workflow import COMPLETE_STEP, ExecuteStep, StepStatus
from stella.evidence import deployments, domain, repo, tree
from stella.evidence.appender import ChainAppender, Effects, PacketRequest
from stella.evidence.bundle import TreeProof, build_bundle
from stella.evidence.domain import StoredPacket
from stella.evidence.exports import ExportStore
from stella.evidence.keys import PublicKey, PublicKeyRing
from stella.evidence.packet import (
    CheckedContent,
    EvidenceContentError,
    PacketType,
    SecretInEvidenceError,
    SignedPacket,
    build_packet,
    check_content,
    reject_secrets,
    sign_packet,
)
from stella.evidence.signing import ActiveSigner
from stella.evidence.tree import Checkpointer, StoredCheckpoint
from stella.kit.asking import Refused, ask
from stella.kit.broker import CommandProcessor, PoisonMessage, ServiceClient, claim_inbox
from stella.kit.errors import error_detail
from stella.kit.outbox import add_events
from stella.kit.pagination import decode_cursor, encode_cursor, int64

MESSAGE_IDS: Final[UUID] = UUID("0b5f3c52-4a4e-4a8e-9d1e-6a8f2c7e51d3")
"""Namespace of the deterministic ids of messages this service writes (uuid5 of what caused them)."""

log = logging.getLogger(__name__)


def _check_event_content(packet_type: PacketType, content: Mapping[str, Any] | CheckedContent) -> CheckedContent:
    """Refuse the content of a packet an event makes as a poison message: it is built from the event and
    stored facts, so every delivery would fail alike. Content checked already is returned as it is."""
    if isinstance(content, CheckedContent):
        return content
    try:
        return check_content(content)
    except EvidenceContentError as exc:
        raise PoisonMessage(f"{packet_type} evidence cannot be recorded: {exc}") from None


class Handlers:
    """The evidence service's command and query handlers."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        commands: CommandProcessor,
        client: Callable[[], ServiceClient],
        signer: ActiveSigner,
        exports: ExportStore,
        checkpointer: Checkpointer,
        *,
        append_batch_size: int = 256,
        dependency_timeout_s: float = 5.0,
        export_max_packets: int = 100_000,
        export_max_age_s: float = 3600.0,
        max_reply_bytes: int = 768 * 1024,
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], UUID] = uuid4,
    ) -> None:
        self._pool = pool
        self._client = client
        self.commands = commands
        self.signer = signer
        self.exports = exports
        self.checkpointer = checkpointer
        self.dependency_timeout_s = dependency_timeout_s
        self.export_max_packets = export_max_packets
        self.export_max_age_s = export_max_age_s
        self.max_reply_bytes = max_reply_bytes
        self.clock = clock
        self.new_id = new_id
        self.appender = ChainAppender(
            pool, signer, commands.consumer, clock, lambda: self.new_id(), max_batch=append_batch_size
        )

    # --- commands ---------------------------------------------------------------------------------------

    async def collect_evidence(self, cmd: ExecuteStep) -> Reply:
        """Execute a workflow ``evidence`` step: the promotion's ``release_decision`` packet.

        The packet is usually recorded already, when the decision was announced (:meth:`on_promotion_decided`):
        the step then completes with it, without reading the decision's inputs or approvals. Otherwise the
        step records it. A promotion not decided yet, or a promotion or approval service that does not
        answer, is a fault: the step is redelivered later, and no packet with partial data is ever stored.
        Content that can never become evidence (it holds a secret, it names no image) fails the step at once.
        The packet's source key is the promotion's decision, not the attempt: an attempt after one that
        already stored the packet completes with that packet.
        """
        if (stored := await self.commands.seen(cmd, only_reads_before_run=True)) is not None:
            return stored
        # The workflow nests the run's inputs under "inputs" (beside "steps"); a flat mapping is read as is.
        raw_inputs = cmd.inputs.get("inputs", cmd.inputs)
        run_inputs: Mapping[str, Any] = raw_inputs if isinstance(raw_inputs, Mapping) else {}
        promotion_id = domain.promotion_id_of(run_inputs, cmd.subject_id)
        if promotion_id is None:
            raise PoisonMessage(f"evidence step {cmd.idempotency_key} names no promotion_id")
        promotion = await self._promotion(cmd, promotion_id)
        if not domain.is_decided(promotion):
            raise domain.PromotionNotDecided(
                f"promotion {promotion_id} is {promotion.status}; its evidence waits for the decision"
            )
        key = domain.release_decision_key(promotion)

        def effects(stored: StoredPacket, created: bool) -> tuple[list[tuple[str, Message]], object]:
            packet = stored.packet
            outputs = {"packet_id": str(packet.id), "content_hash": packet.content_hash}
            messages: list[tuple[str, Message]]
            if created:
                logs = f"release_decision packet {packet.sequence} signed by {packet.signer_key_ref}"
                messages = [(PACKET_CREATED, self._created(cmd, stored))]
            else:
                # Recorded when the decision was announced, or by an earlier attempt of the step.
                logs = f"release_decision packet {packet.sequence} already records this decision"
                messages = []
            # Every attempt completes, with the one packet of the decision.
            complete = cmd.complete(StepStatus.SUCCEEDED, outputs=outputs, logs=logs)
            return [*messages, (COMPLETE_STEP, complete)], {**outputs, "sequence": packet.sequence}

        async with self._pool().acquire() as conn:
            recorded = await repo.packet_by_source(conn, cmd.tenant_id, key)
        if recorded is not None:

            async def complete(conn: asyncpg.Connection) -> object:
                messages, data = effects(recorded, False)
                await add_events(conn, messages)
                return data

            return await self.commands.run(cmd, complete)

        try:
            content = await self._decision_content(cmd, promotion)
        except EvidenceContentError as exc:
            # Built from stored facts: every delivery would fail the same way. Fail the step now, so the run
            # reports it at once instead of waiting for the step's timeout; nothing is stored.
            return await self._fail_step(cmd, f"evidence of promotion {promotion_id} cannot be recorded: {exc}")
        request = PacketRequest(PacketType.RELEASE_DECISION, promotion_id, content, key)
        return await self._append_command(cmd, request, effects)

    async def _decision_content(self, cause: Message, promotion: PromotionView) -> CheckedContent:
        """The checked content of a decided promotion's ``release_decision`` packet (reads its inputs and votes).

        Raises:
            EvidenceContentError: the content can never become evidence.
        """
        inputs = await self._decision_inputs(cause, promotion)
        approvals = await self._approvals(cause, promotion.id) if domain.needs_approvals(promotion, inputs) else None
        return check_content(domain.release_decision_content(promotion, approvals, inputs=inputs))

    async def _fail_step(self, cmd: ExecuteStep, error: str) -> Reply:
        """Report an evidence step that can never succeed as failed (through the outbox, exactly once)."""
        log.error("evidence step failed", extra={"step": cmd.idempotency_key, "error": error})

        async def execute(conn: asyncpg.Connection) -> object:
            await add_events(conn, [(COMPLETE_STEP, cmd.complete(StepStatus.FAILED, error=error))])
            return {"status": StepStatus.FAILED.value, "error": error}

        return await self.commands.run(cmd, execute)

    async def collect(self, cmd: CollectEvidence) -> Reply:
        """Sign and store a packet whose content the caller gives (deployment, rollback, drift evidence).

        One packet per ``source_key`` (what the packet records): a command repeated with the same key, by a
        retried task say, returns the packet made first. Without a key, one packet per command. A command
        handled before is answered with its stored reply (its inbox row is claimed with its batch), so no
        round trip of its own asks first.
        """
        try:
            content = check_content(cmd.content)
        except SecretInEvidenceError as exc:
            raise PoisonMessage(str(exc)) from None
        except EvidenceContentError as exc:
            return Reply.failure(error_detail(domain.InvalidEvidenceContent(str(exc))))

        request = PacketRequest(
            PacketType(str(cmd.packet_type)),
            cmd.promotion_id,
            content,
            f"{cmd.packet_type}:{cmd.source_key}" if cmd.source_key else f"command:{cmd.message_id}",
        )

        def effects(stored: StoredPacket, created: bool) -> tuple[list[tuple[str, Message]], object]:
            messages: list[tuple[str, Message]] = [(PACKET_CREATED, self._created(cmd, stored))] if created else []
            return messages, stored.view().model_dump(mode="json")

        return await self._append_command(cmd, request, effects)

    async def _append_command(self, cmd: Command, request: PacketRequest, effects: Effects) -> Reply:
        """Append ``request``'s packet for ``cmd`` with the next batch of the appender (group commit).

        Handled alone (the command's own transaction through :class:`~stella.kit.broker.CommandProcessor`)
        when the batch fails, the command was handled before, or batches hold one command.
        """

        async def execute(conn: asyncpg.Connection) -> object:
            stored, created = await self._append(
                conn, cmd, request.packet_type, request.promotion_id, request.content, request.source_key
            )
            messages, data = effects(stored, created)
            await add_events(conn, messages)
            return data

        async def alone() -> Reply:
            return await self.commands.run(cmd, execute)

        return await self.appender.append(cmd, request, effects, alone)

    async def _append(
        self,
        conn: asyncpg.Connection,
        cmd: Message,
        packet_type: PacketType,
        promotion_id: UUID | None,
        content: CheckedContent,
        source_key: str,
    ) -> tuple[StoredPacket, bool]:
        """Append a packet to the tenant's chain unless ``source_key`` already made one.

        Returns:
            The packet, and whether this call created it.
        """
        await repo.lock_chain(conn, cmd.tenant_id)
        existing = await repo.packet_by_source(conn, cmd.tenant_id, source_key)
        if existing is not None:
            return existing, False
        signer = await self.signer.current(conn)
        head, last_created_at = await repo.chain_head(conn, cmd.tenant_id)
        now = self.clock()
        # Creation times never go backwards along a chain (even across replicas whose clocks differ), so a
        # time range always selects a contiguous run of sequences and an export has no holes.
        created_at = max(now, last_created_at) if last_created_at is not None else now
        # Nor before the signing key became valid (a replica whose clock lags the one that rotated the key).
        created_at = max(created_at, self.signer.valid_from)
        packet = build_packet(
            packet_id=self.new_id(),
            tenant_id=cmd.tenant_id,
            packet_type=packet_type,
            content=content,
            head=head,
            created_at=created_at,
            signer_key_ref=signer.key_ref,
            promotion_id=promotion_id,
        )
        stored = await repo.insert_packet(conn, packet, sign_packet(packet, signer), source_key)
        return stored, True

    @staticmethod
    def _created(cmd: Message, stored: StoredPacket) -> PacketCreated:
        packet = stored.packet
        return cmd.caused(
            PacketCreated,
            message_id=uuid5(MESSAGE_IDS, f"packet_created:{packet.id}"),
            packet_id=packet.id,
            packet_type=ContractPacketType(str(packet.packet_type)),
            promotion_id=packet.promotion_id,
            sequence=packet.sequence,
            content_hash=packet.content_hash,
        )

    # --- deployment events ------------------------------------------------------------------------------

    async def release_of(self, event: JobCompleted | DriftDetected) -> ReleaseView | None:
        """Read the event's release (its image repositories) before the handler's transaction opens."""
        if event.release_id is None:
            return None
        try:
            return await ask(
                self._client(),
                GET_RELEASE,
                event.caused(GetRelease, release_id=event.release_id),
                ReleaseView,
                timeout=self.dependency_timeout_s,
                unavailable=lambda error: domain.DependencyUnavailable(
                    f"release service: {error.code}: {error.detail}"
                ),
            )
        except Refused as exc:
            if exc.status == 404:
                return None
            raise PoisonMessage(f"release {event.release_id}: {exc.code}: {exc.detail}") from None

    async def on_job_completed(
        self, event: JobCompleted, conn: asyncpg.Connection, release: ReleaseView | None
    ) -> None:
        """A deployment job ended: its ``deployment`` packet, and a ``rollback`` packet when it rolled back.

        One packet per job and type (its source key), so a redelivered or repeated event signs nothing twice.
        """
        for packet_type in deployments.packet_types_of(event):
            content = deployments.job_content(packet_type, event, release)
            await self._append_event(
                conn, event, packet_type, event.promotion_id, content, deployments.job_source_key(packet_type, event)
            )

    async def on_drift_detected(
        self, event: DriftDetected, conn: asyncpg.Connection, release: ReleaseView | None
    ) -> None:
        """An inspection found drift: a ``drift`` packet with the expected and actual digests (one per record)."""
        content = deployments.drift_content(event, release)
        if not content["release"]["components"]:
            # Without the sticker's release no image is known, and evidence is always about images.
            log.warning(
                "drift without a known release: no drift packet",
                extra={"target_id": str(event.target_id), "sticker_found": event.sticker_found},
            )
            return
        await self._append_event(conn, event, PacketType.DRIFT, None, content, deployments.drift_source_key(event))

    # --- promotion decisions ------------------------------------------------------------------------------

    async def decision_of(self, event: PromotionChanged) -> CheckedContent | None:
        """Read what a decided promotion's packet needs (its inputs and votes) before the transaction opens.

        None for a promotion without a decision record (a run that failed before its gates decided): its
        workflow's evidence step, if it runs, records it as before.
        """
        promotion = event.promotion
        if promotion.decision_record is None or not domain.is_decided(promotion):
            return None
        try:
            return await self._decision_content(event, promotion)
        except EvidenceContentError as exc:
            # Built from the event and stored facts: every delivery would fail alike.
            raise PoisonMessage(f"evidence of promotion {promotion.id} cannot be recorded: {exc}") from None

    def on_promotion_decided(
        self, consumer: str
    ) -> Callable[[PromotionChanged, CheckedContent | None], Awaitable[None]]:
        """The handler of inbox consumer ``consumer`` for approved and rejected promotions: their
        ``release_decision`` packet, recorded now, with the appender's next batch (group commit).

        The same decision has the same source key whichever records it first, this or the workflow's
        evidence step (which then completes with this packet), so a decision is recorded once. The event's
        inbox row is claimed in the transaction that appends the packet, so a redelivered event appends
        nothing; the handler returns (and the event is acknowledged) once that transaction committed.
        """

        async def decided(event: PromotionChanged, content: CheckedContent | None) -> None:
            if content is None:
                return
            promotion = event.promotion
            request = PacketRequest(
                PacketType.RELEASE_DECISION, promotion.id, content, domain.release_decision_key(promotion)
            )

            def effects(stored: StoredPacket, created: bool) -> tuple[list[tuple[str, Message]], Any]:
                return ([(PACKET_CREATED, self._created(event, stored))] if created else []), None

            async def alone() -> Reply:
                async with self._pool().acquire() as conn, conn.transaction():
                    if await claim_inbox(conn, consumer, event.message_id):
                        await self._append_event(
                            conn, event, request.packet_type, promotion.id, content, request.source_key
                        )
                return Reply.success(None)

            await self.appender.append_event(event, consumer, request, effects, alone)

        return decided

    async def _append_event(
        self,
        conn: asyncpg.Connection,
        event: Message,
        packet_type: PacketType,
        promotion_id: UUID | None,
        content: Mapping[str, Any] | CheckedContent,
        source_key: str,
    ) -> None:
        checked = _check_event_content(packet_type, content)
        stored, created = await self._append(conn, event, packet_type, promotion_id, checked, source_key)
        if created:
            await add_events(conn, [(PACKET_CREATED, self._created(event, stored))])

    async def _promotion(self, cmd: Message, promotion_id: UUID) -> PromotionView:
        try:
            return await ask(
                self._client(),
                GET_PROMOTION,
                cmd.caused(GetPromotion, promotion_id=promotion_id),
                PromotionView,
                timeout=self.dependency_timeout_s,
                unavailable=lambda error: domain.DependencyUnavailable(
                    f"promotion service: {error.code}: {error.detail}"
                ),
            )
        except Refused as exc:
            raise PoisonMessage(f"promotion {promotion_id}: {exc.code}: {exc.detail}") from None

    async def _decision_inputs(self, cmd: Message, promotion: PromotionView) -> dict[str, Any] | None:
        """What the promotion's gates saw: carried by the event announcing the decision, else asked for.

        ``None`` (the packet then carries the record without its inputs) when the promotion service has no
        decision view for it, holds a later one, or the inputs hold something that looks like a secret.
        """
        inputs = domain.carried_decision_inputs(cmd, promotion)
        if inputs is None:
            inputs = await self._asked_decision_inputs(cmd, promotion)
        if inputs is None:
            return None
        try:
            reject_secrets(inputs, "$.decision.inputs")
        except SecretInEvidenceError as exc:
            log.warning(
                "decision inputs left out of the evidence", extra={"promotion_id": str(promotion.id), "error": str(exc)}
            )
            return None
        return inputs

    async def _asked_decision_inputs(self, cmd: Message, promotion: PromotionView) -> dict[str, Any] | None:
        """The inputs of the promotion service's latest decision, when that is this very decision."""
        try:
            view = await ask(
                self._client(),
                GET_DECISION,
                cmd.caused(GetDecision, promotion_id=promotion.id),
                DecisionView,
                timeout=self.dependency_timeout_s,
                unavailable=lambda error: domain.DependencyUnavailable(
                    f"promotion service: {error.code}: {error.detail}"
                ),
            )
        except Refused as exc:
            if exc.status == 404:
                return None
            raise PoisonMessage(f"decision of promotion {promotion.id}: {exc.code}: {exc.detail}") from None
        recorded = (promotion.decision_record or {}).get("inputs_hash")
        if recorded is None or view.record.get("inputs_hash") != recorded:
            return None
        return view.inputs

    async def _approvals(self, cmd: Message, promotion_id: UUID) -> ApprovalRequestView | None:
        try:
            return await ask(
                self._client(),
                GET_APPROVALS,
                cmd.caused(GetApprovals, promotion_id=promotion_id),
                ApprovalRequestView,
                timeout=self.dependency_timeout_s,
                unavailable=lambda error: domain.DependencyUnavailable(
                    f"approval service: {error.code}: {error.detail}"
                ),
            )
        except Refused as exc:
            if exc.status == 404:
                return None  # no approval request was ever opened (the gates denied first)
            raise PoisonMessage(f"approvals of promotion {promotion_id}: {exc.code}: {exc.detail}") from None

    # --- queries ----------------------------------------------------------------------------------------

    async def get_packet(self, q: GetPacket) -> Reply:
        """One packet: its fields, decoded content and envelope."""
        async with self._pool().acquire() as conn:
            stored = await repo.get_packet(conn, q.tenant_id, q.packet_id)
        if stored is None:
            raise domain.PacketNotFound(f"evidence packet {q.packet_id} does not exist")
        return Reply.success(stored.view().model_dump(mode="json"))

    async def list_packets(self, q: ListPackets) -> Reply:
        """A page of packets in chain order; a page also ends before its JSON outgrows one NATS message."""
        cursor = decode_cursor(q.page.page_token, int64, kind="packets")
        size = q.page.page_size
        async with self._pool().acquire() as conn:
            rows = await repo.list_packets(
                conn,
                q.tenant_id,
                q.promotion_id,
                q.packet_type.value if q.packet_type else None,
                cursor[0] if cursor else None,
                size + 1,
            )
        items: list[dict[str, Any]] = []
        used = 0
        for stored in rows[:size]:
            item = stored.view().model_dump(mode="json")
            cost = len(json.dumps(item, separators=(",", ":")))
            if items and used + cost > self.max_reply_bytes:
                break
            items.append(item)
            used += cost
        token = encode_cursor(items[-1]["sequence"], kind="packets") if items and len(items) < len(rows) else None
        return Reply.success(Page(items=items, next_page_token=token).model_dump())

    async def verify_packet(self, q: VerifyPacket) -> Reply:
        """Verify a stored packet: signature with the stored keys, recomputed hash, link to its predecessor."""
        async with self._pool().acquire() as conn:
            stored = await repo.get_packet(conn, q.tenant_id, q.packet_id)
            if stored is None:
                raise domain.PacketNotFound(f"evidence packet {q.packet_id} does not exist")
            sequence = stored.packet.sequence
            previous = await repo.get_packet_at(conn, q.tenant_id, sequence - 1) if sequence > 1 else None
            keys = await repo.list_keys(conn)
        keyring = PublicKeyRing(PublicKey.from_pem(k.public_key_pem.encode()) for k in keys)
        validity = {k.key_ref: (k.created_at, k.retired_at) for k in keys}
        view = domain.verify_stored_packet(stored, previous, keyring, validity)
        return Reply.success(view.model_dump(mode="json"))

    async def list_keys(self, q: ListKeys) -> Reply:
        """Every public key that ever signed evidence, the active one and the retired ones, in one page.

        Keys are few (one per rotation), so the list is never cut into pages; it has a list's usual shape.
        """
        async with self._pool().acquire() as conn:
            keys = await repo.published_keys(conn)
        return Reply.success(Page(items=[k.model_dump(mode="json") for k in keys]).model_dump())

    async def _tree_proof(
        self, conn: asyncpg.Connection, q: ExportBundle, rows: list[StoredPacket], checkpoint: StoredCheckpoint | None
    ) -> TreeProof | None:
        """What lets a verifier recompute the checkpoint's root from the exported packets.

        The range the bundle claims comes from the request and the checkpoint, never from the rows found: an
        export from the start claims sequence 1 and one to the end claims the checkpoint's size, so a packet
        missing from the table at either end (or between) leaves a leaf the verifier cannot find.
        """
        if checkpoint is None:
            return None
        size = checkpoint.tree_size
        if rows:
            first = 1 if q.created_from is None else rows[0].packet.sequence
            last = size if q.created_to is None else min(rows[-1].packet.sequence, size)
        elif q.created_from is None and q.created_to is None:
            first, last = 1, size  # the tree has packets, the table none: every one of them is missing
        else:
            return TreeProof(
                checkpoint=checkpoint.note,
                tree_size=size,
                first_sequence=None,
                last_sequence=None,
                timestamp=checkpoint.timestamp,
            )
        outside = await tree.outside_roots(conn, q.tenant_id, size, first - 1, last)
        return TreeProof(
            checkpoint=checkpoint.note,
            tree_size=size,
            first_sequence=first,
            last_sequence=last,
            outside=outside,
            timestamp=checkpoint.timestamp,
        )

    async def export_bundle(self, q: ExportBundle) -> Reply:
        """Build the bundle of the tenant's packets created in ``[created_from, created_to)``.

        The bundle goes to the export object store; the reply (an
        :class:`~stella.contracts.evidence.ExportBundleView`) names it and describes what it holds.
        """
        if q.created_from is not None and q.created_to is not None and q.created_to <= q.created_from:
            raise domain.InvalidExportRange("created_to must be after created_from")
        async with self._pool().acquire() as conn:
            # The newest checkpoint first: every packet it covers is in the rows read after it.
            checkpoint = await self.checkpointer.current(conn, q.tenant_id)
            rows = await repo.export_packets(
                conn, q.tenant_id, q.created_from, q.created_to, self.export_max_packets + 1
            )
            if len(rows) > self.export_max_packets:
                raise domain.ExportTooLarge(
                    f"the range holds more than {self.export_max_packets} packets; export a shorter range"
                )
            if checkpoint is not None:
                # Packets appended since the checkpoint are left for the next export, which covers them.
                rows = [r for r in rows if r.packet.sequence <= checkpoint.tree_size]
            proof = await self._tree_proof(conn, q, rows, checkpoint)
            # Keys after packets: a key is never removed, so every signer of these packets is among them.
            keys = await repo.list_keys(conn)
            key_log = [envelope for _, envelope in await repo.key_log(conn)]
        domain.check_stored_matches_envelope(rows)
        now = self.clock()
        signed = [SignedPacket(packet=s.packet, envelope=s.envelope) for s in rows]
        public_keys = [PublicKey.from_pem(k.public_key_pem.encode()) for k in keys]
        # Building compresses everything: off the event loop, so other messages keep flowing meanwhile.
        data = await asyncio.to_thread(
            build_bundle, signed, public_keys, tenant_id=q.tenant_id, created_at=now, tree=proof, key_log=key_log
        )
        created_at = now.astimezone(UTC)
        stamp = created_at.strftime("%Y%m%dT%H%M%SZ")
        name = f"{q.tenant_id}/{self.new_id()}.tar.gz"
        await self.exports.put(name, data)
        view = ExportBundleView(
            bucket=self.exports.bucket,
            object=name,
            filename=f"evidence-{q.tenant_id}-{stamp}.tar.gz",
            packets=len(rows),
            first_sequence=rows[0].packet.sequence if rows else None,
            last_sequence=rows[-1].packet.sequence if rows else None,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            created_at=created_at,
            expires_at=created_at + timedelta(seconds=self.export_max_age_s),
        )
        return Reply.success(view.model_dump(mode="json"))
