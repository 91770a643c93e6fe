"""Evidence service routes: message -> handler call. No logic here."""

from __future__ import annotations

from faststream.nats import NatsRouter

from stella.contracts import deployment as d
from stella.contracts import evidence as c
from stella.contracts import promotion as p
from stella.contracts.workflow import ExecuteStep
from stella.evidence.handlers import Handlers
from stella.evidence.proofs import ProofQueries
from stella.kit.broker import CommandRoutes, EventRoutes, QueryRoutes
from stella.kit.service import ServiceRuntime

"""Command :class:`~stella.contracts.evidence.CollectEvidence`: sign and store a packet given directly."""


def register(runtime: ServiceRuntime, router: NatsRouter, handlers: Handlers, proofs: ProofQueries) -> None:
    """Attach the evidence commands, queries and the decisions and deployment events it records to ``router``."""
    commands = CommandRoutes(c.CONTEXT, runtime.name)
    commands.on(c.COLLECT_EVIDENCE, ExecuteStep, handlers.collect_evidence)
    commands.on(c.COLLECT_PACKET, c.CollectEvidence, handlers.collect)
    commands.attach(router, runtime)

    queries = QueryRoutes(c.CONTEXT, runtime.name)
    queries.on(c.GET_PACKET, c.GetPacket, handlers.get_packet)
    queries.on(c.LIST_PACKETS, c.ListPackets, handlers.list_packets)
    queries.on(c.VERIFY_PACKET, c.VerifyPacket, handlers.verify_packet)
    queries.on(c.LIST_KEYS, c.ListKeys, handlers.list_keys)
    queries.on(c.EXPORT_BUNDLE, c.ExportBundle, handlers.export_bundle)
    queries.on(c.GET_CHECKPOINT, c.GetCheckpoint, proofs.get_checkpoint)
    queries.on(c.GET_INCLUSION_PROOF, c.GetInclusionProof, proofs.get_inclusion_proof)
    queries.on(c.GET_CONSISTENCY_PROOF, c.GetConsistencyProof, proofs.get_consistency_proof)
    queries.attach(router, runtime)

    # A decision's packet is recorded when the decision is announced; the workflow's evidence step, which
    # records it otherwise, remains the guarantee (so the consumer need not read decisions made before it).
    decisions = EventRoutes(
        runtime.name,
        "promotion-decisions",
        f"stella.evt.{p.CONTEXT}.>",
        lambda: runtime.pool,
        per_subject=True,
        from_now=True,
    )
    # Appended with the evidence steps' and other packets' next batch (group commit), inbox row included.
    decided = handlers.on_promotion_decided(decisions.consumer)
    decisions.on_owned(p.PROMOTION_APPROVED, p.PromotionChanged, handlers.decision_of, decided)
    decisions.on_owned(p.PROMOTION_REJECTED, p.PromotionChanged, handlers.decision_of, decided)
    decisions.attach(router, runtime)

    deployments = EventRoutes(
        runtime.name, "deployment-events", f"stella.evt.{d.CONTEXT}.>", lambda: runtime.pool, per_subject=True
    )
    deployments.on_prepared(d.JOB_COMPLETED, d.JobCompleted, handlers.release_of, handlers.on_job_completed)
    deployments.on_prepared(d.DRIFT_DETECTED, d.DriftDetected, handlers.release_of, handlers.on_drift_detected)
    deployments.attach(router, runtime)
