"""The catalogue of public events: which internal event becomes which public one, with what data.

The catalogue is a table (:data:`CATALOGUE`): one :class:`PublicEventSpec` per public event type, naming the
internal event it is projected from and the function building its data. A context's events share one data
model and one projector, so making another internal event public is one line; the AsyncAPI document, the
webhook filters, the live stream's type filter and the projection all read this table.

Data models carry ids and the fields a subscriber needs, never a secret (a component's credential reference,
a webhook's secret or URL). They may gain fields in a later version of the same type; a subscriber ignores
what it does not know.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from stella.contracts import approval, deployment, evidence, promotion, release
from stella.contracts.envelope import Event
from stella.contracts.public.cloudevents import TYPE_PREFIX, CloudEvent, dataschema_of, source_of, split_type

# --- data ------------------------------------------------------------------------------------------------


class PublicData(BaseModel):
    """Base of the ``data`` of public events: frozen; unknown fields are ignored when read back."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    def resource(self) -> str:
        """The API path of the resource the event is about, without ``/api/v1`` (``promotions/<id>``)."""
        raise NotImplementedError

    def subject_id(self) -> str:
        """The id of the resource the event is about (the event's ``subject``)."""
        raise NotImplementedError

    def related(self) -> tuple[str, ...]:
        """Every resource the event concerns (its own first), as ``<kind>/<id>``: what a resource filter matches."""
        return (self.resource(),)


class ReleaseComponentData(BaseModel):
    """One image of a release, pinned by digest."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    component_id: UUID
    name: str
    image_repository: str
    digest: str = Field(description="sha256:<hex>: what is deployed, whatever the tag says later.")
    tag: str | None = None
    semver: str | None = None


class ReleaseData(PublicData):
    """A release (org.stellaops.release.*)."""

    release_id: UUID
    name: str
    display_name: str
    status: str = Field(description="draft, ready, deployed or deprecated.")
    components: list[ReleaseComponentData]
    created_by: UUID | None
    created_at: datetime
    ready_at: datetime | None
    deprecated_at: datetime | None
    deprecation_reason: str | None

    def resource(self) -> str:
        return f"releases/{self.release_id}"

    def subject_id(self) -> str:
        return str(self.release_id)


class DigestData(BaseModel):
    """An image of the promoted release."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    digest: str


class DecisionSummary(BaseModel):
    """The outcome of a promotion's latest gate decision (the full record: ``GET /promotions/{id}/decision``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    result: str = Field(description="allow, deny or pending.")
    reasons: list[str] = Field(description="Stable reason codes, sorted.")
    inputs_hash: str | None = None
    evaluated_at: datetime | None = None


class PromotionData(PublicData):
    """A promotion (org.stellaops.promotion.*)."""

    promotion_id: UUID
    status: str = Field(description="The promotion's state after the event (reference: promotion lifecycle).")
    release_id: UUID
    release_name: str
    components: list[DigestData]
    target_environment_id: UUID
    target_environment_name: str
    source_environment_id: UUID | None
    requested_by: UUID | None
    requested_at: datetime
    reason: str
    status_message: str | None
    reason_codes: list[str]
    decision: DecisionSummary | None
    workflow_run_id: UUID | None

    def resource(self) -> str:
        return f"promotions/{self.promotion_id}"

    def subject_id(self) -> str:
        return str(self.promotion_id)

    def related(self) -> tuple[str, ...]:
        return (
            self.resource(),
            f"releases/{self.release_id}",
            f"environments/{self.target_environment_id}",
        )


class VoteData(BaseModel):
    """One vote on a promotion."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    approver_id: UUID
    action: str = Field(description="approved or rejected.")
    comment: str
    at: datetime


class ApprovalData(PublicData):
    """A promotion's approval request (org.stellaops.approval.*)."""

    promotion_id: UUID
    environment_id: UUID
    status: str = Field(description="pending, granted, denied, expired or cancelled.")
    required: int = Field(description="Distinct approvals needed.")
    approvals: int = Field(description="Distinct approvals cast so far.")
    require_sod: bool
    requester_id: UUID | None
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    votes: list[VoteData]

    def resource(self) -> str:
        return f"promotions/{self.promotion_id}/approvals"

    def subject_id(self) -> str:
        return str(self.promotion_id)

    def related(self) -> tuple[str, ...]:
        return (self.resource(), f"promotions/{self.promotion_id}", f"environments/{self.environment_id}")


class EvidenceData(PublicData):
    """A signed evidence packet was recorded (org.stellaops.evidence.recorded)."""

    packet_id: UUID
    packet_type: str = Field(description="release_decision, deployment, rollback or drift.")
    promotion_id: UUID | None
    sequence: int = Field(description="Its place in the tenant's evidence chain.")
    content_hash: str

    def resource(self) -> str:
        return f"evidence/{self.packet_id}"

    def subject_id(self) -> str:
        return str(self.packet_id)

    def related(self) -> tuple[str, ...]:
        if self.promotion_id is None:
            return (self.resource(),)
        return (self.resource(), f"promotions/{self.promotion_id}")


class _DeploymentTask(BaseModel):
    """One task of a deployment job: which, on which target, doing what."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    task_id: UUID
    target_id: UUID
    target_name: str
    type: str = Field(description="deploy, rollback, health-check, inspect, write-sticker or read-sticker.")


class TaskOutcomeData(_DeploymentTask):
    """How one task of a deployment job ended."""

    status: str = Field(description="succeeded, failed, timed_out or cancelled.")
    components: list[DigestData] = Field(description="The digest each component runs after the task.")
    error_code: str | None = Field(default=None, description="AGT_DIGEST_MISMATCH, AGT_HEALTH_CHECK_FAILED...")


class _DeploymentJobScoped(PublicData):
    """About one deployment job: its resource, and the promotion, release and environment it belongs to."""

    job_id: UUID
    promotion_id: UUID | None
    release_id: UUID
    environment_id: UUID
    strategy: str = Field(description="all-at-once, rolling, canary or blue-green.")

    def resource(self) -> str:
        return f"deployment-jobs/{self.job_id}"

    def subject_id(self) -> str:
        return str(self.job_id)

    def related(self) -> tuple[str, ...]:
        related = [self.resource(), f"releases/{self.release_id}", f"environments/{self.environment_id}"]
        if self.promotion_id is not None:
            related.insert(1, f"promotions/{self.promotion_id}")
        return tuple(related)


class DeploymentJobData(_DeploymentJobScoped):
    """A deployment job (org.stellaops.deployment.*)."""

    rollback_of: UUID | None = Field(description="The job a rollback job rolls back.")
    outcome: str | None = Field(
        default=None, description="When the job ended: succeeded, failed, rolled_back or cancelled."
    )
    reason: str | None = None
    target_count: int | None = Field(default=None, description="Targets the job deploys to (at its start).")
    tasks: list[TaskOutcomeData] = Field(default_factory=list, description="Each task's outcome (at its end).")
    at: datetime = Field(description="When the job started or ended.")


class TaskProgressData(_DeploymentTask):
    """What changed about one task of a deployment job."""

    batch: int = Field(description="The batch (rolling batch, canary step, blue-green phase) the task belongs to.")
    status: str = Field(
        description="The task's state after the change: assigned (leased to an agent), running, succeeded, "
        "failed, timed_out or cancelled."
    )
    attempt: int = Field(description="The lease the change belongs to (1 for the first).")
    log_lines: int = Field(description="Log lines kept for the task so far (the text: GET /deployment-jobs/{id}).")
    log_seq: int | None = Field(description="The highest log chunk sequence number received in this change.")
    error_code: str | None = Field(default=None, description="AGT_DIGEST_MISMATCH, AGT_HEALTH_CHECK_FAILED...")


class DeploymentTasksData(_DeploymentJobScoped):
    """Tasks of a deployment job progressed (org.stellaops.deployment.tasks_progressed).

    One event per agent call and job lists every task that call changed, so a large job's event count follows
    its agents' calls, not its targets. No log text: fetch the job for it.
    """

    job_status: str = Field(description="The job's state when the tasks changed (pending, running, rolling_back...).")
    current_batch: int = Field(description="The strategy's phase: the job's current batch, from 0.")
    batch_count: int = Field(description="Batches the strategy planned (rollback tasks come after them).")
    target_count: int
    tasks: list[TaskProgressData]
    at: datetime


class AgentData(PublicData):
    """An agent's status changed (org.stellaops.agent.status_changed)."""

    agent_id: UUID
    name: str
    status: str = Field(description="online, degraded, offline or revoked.")
    previous_status: str | None = Field(description="None when the agent just registered.")
    at: datetime

    def resource(self) -> str:
        return f"agents/{self.agent_id}"

    def subject_id(self) -> str:
        return str(self.agent_id)


class DriftDifferenceData(BaseModel):
    """One way a target differs from its version sticker."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: str = Field(description="digest, missing_container, unexpected_container or missing_sticker.")
    component: str | None = None
    expected: str | None = Field(default=None, description="The sticker's digest.")
    actual: str | None = Field(default=None, description="The digest that runs.")


class DriftData(PublicData):
    """A target drifted from its version sticker (org.stellaops.target.drift_detected)."""

    target_id: UUID
    target_name: str
    environment_id: UUID
    release_id: UUID | None = Field(description="The sticker's release (None without a sticker).")
    sticker_found: bool
    differences: list[DriftDifferenceData]
    detected_at: datetime

    def resource(self) -> str:
        return f"targets/{self.target_id}"

    def subject_id(self) -> str:
        return str(self.target_id)

    def related(self) -> tuple[str, ...]:
        return (self.resource(), f"environments/{self.environment_id}")


class WebhookDisabledData(PublicData):
    """A webhook was disabled after its deliveries kept failing (org.stellaops.webhook.disabled)."""

    webhook_id: UUID
    reason: str
    disabled_at: datetime
    failing_since: datetime | None
    consecutive_failures: int
    last_error: str | None

    def resource(self) -> str:
        return f"webhooks/{self.webhook_id}"

    def subject_id(self) -> str:
        return str(self.webhook_id)


# --- projectors ------------------------------------------------------------------------------------------


def _release(event: Event) -> ReleaseData:
    assert isinstance(event, release.ReleaseCreated | release.ReleaseReady | release.ReleaseDeprecated)
    view = event.release
    return ReleaseData(
        release_id=view.id,
        name=view.name,
        display_name=view.display_name,
        status=view.status.value,
        components=[
            ReleaseComponentData(
                component_id=c.component_id,
                name=c.name,
                image_repository=c.image_repository,
                digest=c.digest,
                tag=c.tag,
                semver=c.semver,
            )
            for c in view.components
        ],
        created_by=view.created_by,
        created_at=view.created_at,
        ready_at=view.ready_at,
        deprecated_at=view.deprecated_at,
        deprecation_reason=view.deprecation_reason,
    )


def _decision(record: Mapping[str, Any] | None) -> DecisionSummary | None:
    if not record or not isinstance(record.get("result"), str):
        return None
    reasons = record.get("reasons")
    return DecisionSummary(
        result=record["result"],
        reasons=[str(r) for r in reasons] if isinstance(reasons, list) else [],
        inputs_hash=record.get("inputs_hash") if isinstance(record.get("inputs_hash"), str) else None,
        evaluated_at=record.get("evaluated_at"),
    )


def _promotion(event: Event) -> PromotionData:
    assert isinstance(event, promotion.PromotionChanged)
    view = event.promotion
    return PromotionData(
        promotion_id=view.id,
        status=view.status.value,
        release_id=view.release_id,
        release_name=view.release_name,
        components=[
            DigestData(name=str(c.get("name", "")), digest=str(c.get("digest", "")))
            for c in view.release_components
            if isinstance(c, Mapping)
        ],
        target_environment_id=view.target_environment_id,
        target_environment_name=view.target_environment_name,
        source_environment_id=view.source_environment_id,
        requested_by=view.requested_by,
        requested_at=view.requested_at,
        reason=view.reason,
        status_message=view.status_message,
        reason_codes=list(view.reason_codes),
        decision=_decision(view.decision_record),
        workflow_run_id=view.workflow_run_id,
    )


def _approval(event: Event) -> ApprovalData:
    assert isinstance(event, approval.ApprovalChanged)
    view = event.request
    approvers = {v.approver_id for v in view.votes if v.action == approval.VoteAction.APPROVED}
    return ApprovalData(
        promotion_id=view.promotion_id,
        environment_id=view.environment_id,
        status=view.status.value,
        required=view.required,
        approvals=len(approvers),
        require_sod=view.require_sod,
        requester_id=view.requester_id,
        requested_at=view.requested_at,
        expires_at=view.expires_at,
        decided_at=view.decided_at,
        votes=[
            VoteData(approver_id=v.approver_id, action=v.action.value, comment=v.comment, at=v.at) for v in view.votes
        ],
    )


def _evidence(event: Event) -> EvidenceData:
    assert isinstance(event, evidence.PacketCreated)
    return EvidenceData(
        packet_id=event.packet_id,
        packet_type=event.packet_type.value,
        promotion_id=event.promotion_id,
        sequence=event.sequence,
        content_hash=event.content_hash,
    )


def _job(event: Event) -> DeploymentJobData:
    assert isinstance(event, deployment.JobStarted | deployment.JobCompleted)
    common: dict[str, Any] = {
        "job_id": event.job_id,
        "promotion_id": event.promotion_id,
        "release_id": event.release_id,
        "environment_id": event.environment_id,
        "strategy": event.strategy,
        "rollback_of": event.rollback_of,
    }
    if isinstance(event, deployment.JobStarted):
        return DeploymentJobData(**common, target_count=event.target_count, at=event.started_at)
    tasks = [
        TaskOutcomeData(
            task_id=t.task_id,
            target_id=t.target_id,
            target_name=t.target_name,
            type=str(t.type),
            status=str(t.status),
            components=[DigestData(name=c.name, digest=c.digest) for c in t.components],
            error_code=t.error_code,
        )
        for t in event.tasks
    ]
    return DeploymentJobData(**common, outcome=event.outcome, reason=event.reason, tasks=tasks, at=event.finished_at)


def _tasks(event: Event) -> DeploymentTasksData:
    assert isinstance(event, deployment.TasksProgressed)
    return DeploymentTasksData(
        job_id=event.job_id,
        promotion_id=event.promotion_id,
        release_id=event.release_id,
        environment_id=event.environment_id,
        strategy=event.strategy,
        job_status=str(event.job_status),
        current_batch=event.current_batch,
        batch_count=event.batch_count,
        target_count=event.target_count,
        tasks=[
            TaskProgressData(
                task_id=t.task_id,
                target_id=t.target_id,
                target_name=t.target_name,
                type=str(t.type),
                batch=t.batch,
                status=str(t.status),
                attempt=t.attempt,
                log_lines=t.log_lines,
                log_seq=t.log_seq,
                error_code=t.error_code,
            )
            for t in event.tasks
        ],
        at=event.at,
    )


def _agent(event: Event) -> AgentData:
    assert isinstance(event, deployment.AgentStatusChanged)
    return AgentData(
        agent_id=event.agent_id,
        name=event.name,
        status=str(event.status),
        previous_status=None if event.previous_status is None else str(event.previous_status),
        at=event.at,
    )


def _drift(event: Event) -> DriftData:
    assert isinstance(event, deployment.DriftDetected)
    return DriftData(
        target_id=event.target_id,
        target_name=event.target_name,
        environment_id=event.environment_id,
        release_id=event.release_id,
        sticker_found=event.sticker_found,
        differences=[
            DriftDifferenceData(
                kind=str(d.get("kind", "")),
                component=_text(d.get("component")),
                expected=_text(d.get("expected")),
                actual=_text(d.get("actual")),
            )
            for d in event.differences
            if isinstance(d, Mapping)
        ],
        detected_at=event.detected_at,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:500]


# --- the table -------------------------------------------------------------------------------------------

D = TypeVar("D", bound=PublicData)


@dataclass(frozen=True)
class PublicEventSpec(Generic[D]):
    """One public event type.

    Attributes:
        type: ``org.stellaops.<context>.<event>``.
        data: The model of its ``data`` (the JSON Schema published for it).
        summary: What happened, in one sentence.
        internal: The internal event subject it is projected from; None for events the events service
            produces itself (``webhook.disabled``).
        internal_model: The internal event's model.
        project: Builds the data from the internal event.
        version: Version of the data's schema (in ``dataschema``).
    """

    type: str
    data: builtins.type[D]
    summary: str
    internal: str | None = None
    internal_model: builtins.type[Event] | None = None
    project: Callable[[Event], D] | None = None
    version: int = 1

    @property
    def context(self) -> str:
        """The ``<context>`` part of the type."""
        return split_type(self.type)[0]

    @property
    def event(self) -> str:
        """The ``<event>`` part of the type."""
        return split_type(self.type)[1]

    @property
    def dataschema(self) -> str:
        """The ``dataschema`` URI of this type's data."""
        return dataschema_of(self.type, self.version)


def _t(name: str) -> str:
    return TYPE_PREFIX + name


CATALOGUE: Final[tuple[PublicEventSpec[Any], ...]] = (
    # release
    PublicEventSpec(_t("release.created"), ReleaseData, "A draft release was created.", release.RELEASE_CREATED, release.ReleaseCreated, _release),
    PublicEventSpec(_t("release.ready"), ReleaseData, "A release was frozen and may be promoted.", release.RELEASE_READY, release.ReleaseReady, _release),
    PublicEventSpec(_t("release.deprecated"), ReleaseData, "A release was deprecated.", release.RELEASE_DEPRECATED, release.ReleaseDeprecated, _release),
    # promotion
    PublicEventSpec(_t("promotion.requested"), PromotionData, "A promotion was requested.", promotion.PROMOTION_REQUESTED, promotion.PromotionChanged, _promotion),
    PublicEventSpec(_t("promotion.approved"), PromotionData, "A promotion passed its gates and approvals.", promotion.PROMOTION_APPROVED, promotion.PromotionChanged, _promotion),
    PublicEventSpec(_t("promotion.rejected"), PromotionData, "A promotion was rejected by a gate or an approver.", promotion.PROMOTION_REJECTED, promotion.PromotionChanged, _promotion),
    PublicEventSpec(_t("promotion.cancelled"), PromotionData, "A promotion was cancelled.", promotion.PROMOTION_CANCELLED, promotion.PromotionChanged, _promotion),
    PublicEventSpec(_t("promotion.started"), PromotionData, "A promotion's deployment started.", promotion.PROMOTION_STARTED, promotion.PromotionChanged, _promotion),
    PublicEventSpec(_t("promotion.completed"), PromotionData, "A promotion was deployed.", promotion.PROMOTION_COMPLETED, promotion.PromotionChanged, _promotion),
    PublicEventSpec(_t("promotion.failed"), PromotionData, "A promotion's deployment failed.", promotion.PROMOTION_FAILED, promotion.PromotionChanged, _promotion),
    PublicEventSpec(_t("promotion.rolled_back"), PromotionData, "A failed promotion was rolled back.", promotion.PROMOTION_ROLLED_BACK, promotion.PromotionChanged, _promotion),
    # approval
    PublicEventSpec(_t("approval.requested"), ApprovalData, "A promotion waits for approvals.", approval.APPROVAL_REQUESTED, approval.ApprovalChanged, _approval),
    PublicEventSpec(_t("approval.granted"), ApprovalData, "A promotion received the approvals it needs.", approval.APPROVAL_GRANTED, approval.ApprovalChanged, _approval),
    PublicEventSpec(_t("approval.denied"), ApprovalData, "A promotion's approval was refused, expired or withdrawn.", approval.APPROVAL_DENIED, approval.ApprovalChanged, _approval),
    # deployment
    PublicEventSpec(_t("deployment.job_started"), DeploymentJobData, "A deployment job started (its tasks are planned).", deployment.JOB_STARTED, deployment.JobStarted, _job),
    PublicEventSpec(_t("deployment.tasks_progressed"), DeploymentTasksData, "Tasks of a deployment job were leased, started, logged or ended (one event per agent call, listing each task it changed).", deployment.TASKS_PROGRESSED, deployment.TasksProgressed, _tasks),
    PublicEventSpec(_t("deployment.job_completed"), DeploymentJobData, "A deployment job ended: succeeded, failed, rolled back or cancelled.", deployment.JOB_COMPLETED, deployment.JobCompleted, _job),
    PublicEventSpec(_t("agent.status_changed"), AgentData, "An agent registered, or went online, degraded, offline or revoked.", deployment.AGENT_STATUS_CHANGED, deployment.AgentStatusChanged, _agent),
    PublicEventSpec(_t("target.drift_detected"), DriftData, "A target runs something other than its version sticker says.", deployment.DRIFT_DETECTED, deployment.DriftDetected, _drift),
    # evidence
    PublicEventSpec(_t("evidence.recorded"), EvidenceData, "A signed evidence packet was recorded.", evidence.PACKET_CREATED, evidence.PacketCreated, _evidence),
    # webhooks (produced by the events service itself)
    PublicEventSpec(_t("webhook.disabled"), WebhookDisabledData, "A webhook was disabled because its deliveries kept failing."),
)  # fmt: skip
"""Every public event type, in the order the AsyncAPI document lists them."""

BY_TYPE: Final[Mapping[str, PublicEventSpec[Any]]] = {spec.type: spec for spec in CATALOGUE}
"""The catalogue by event type."""

BY_INTERNAL: Final[Mapping[str, PublicEventSpec[Any]]] = {
    spec.internal: spec for spec in CATALOGUE if spec.internal is not None
}
"""The catalogue by the internal event subject each type is projected from."""

WEBHOOK_DISABLED: Final[PublicEventSpec[WebhookDisabledData]] = BY_TYPE[_t("webhook.disabled")]
"""The event the events service publishes when it disables a webhook."""

CONTEXTS: Final[frozenset[str]] = frozenset(spec.context for spec in CATALOGUE)
"""The contexts that publish public events."""

RESOURCE_KINDS: Final[frozenset[str]] = frozenset(
    {"releases", "promotions", "environments", "evidence", "webhooks", "deployment-jobs", "agents", "targets"}
)
"""Resource kinds a resource filter (``<kind>/<id>``) may name."""

MAX_TYPE_FILTERS: Final[int] = 100
"""Most event type filters a webhook or a stream may name."""


def check_type_filter(value: str) -> str:
    """Validate an event type filter: an exact type of the catalogue, or ``org.stellaops.<context>.*``.

    Raises:
        ValueError: for anything else (the message names what is accepted).
    """
    if value.endswith(".*"):
        context = value[len(TYPE_PREFIX) : -2] if value.startswith(TYPE_PREFIX) else None
        if context in CONTEXTS:
            return value
    elif value in BY_TYPE:
        return value
    raise ValueError(
        f"unknown event type {value[:200]!r}: use a type of the catalogue (GET /api/v1/events/types) "
        "or org.stellaops.<context>.*"
    )


def type_filter_matches(filters: Sequence[str], event_type: str) -> bool:
    """Whether ``event_type`` passes ``filters`` (no filters: every type passes)."""
    if not filters:
        return True
    context_wildcard = f"{TYPE_PREFIX}{split_type(event_type)[0]}.*"
    return event_type in filters or context_wildcard in filters


def check_resource_filter(value: str) -> str:
    """Validate a resource filter ``<kind>/<uuid>`` (e.g. ``promotions/7c9e...``) and return it normalised.

    Raises:
        ValueError: when the kind is unknown or the id is not a UUID.
    """
    kind, _, ident = value.partition("/")
    if kind not in RESOURCE_KINDS:
        raise ValueError(f"a resource filter is <kind>/<id> with kind one of {sorted(RESOURCE_KINDS)}")
    try:
        return f"{kind}/{UUID(ident)}"
    except ValueError:
        raise ValueError("the id of a resource filter must be a UUID") from None


def related_resources(event_type: str, data: Mapping[str, Any]) -> tuple[str, ...]:
    """The resources an event of ``event_type`` with ``data`` concerns (see :meth:`PublicData.related`).

    Raises:
        KeyError: for a type outside the catalogue.
        pydantic.ValidationError: when ``data`` does not fit the type's model.
    """
    model: type[PublicData] = BY_TYPE[event_type].data
    return model.model_validate(data).related()


def to_cloudevent(
    spec: PublicEventSpec[D],
    data: D,
    *,
    tenant_id: UUID,
    event_id: UUID,
    time: datetime,
    traceparent: str | None = None,
) -> CloudEvent:
    """Wrap ``data`` of an event of ``spec``'s type in its CloudEvent.

    Args:
        spec: The event's type.
        data: Its data (a model of ``spec.data``).
        tenant_id: The tenant it belongs to.
        event_id: Its id, the same however often it is built.
        time: When it happened.
        traceparent: The W3C trace context of the work that caused it, if any.
    """
    return CloudEvent(
        id=str(event_id),
        source=source_of(tenant_id, data.resource()),
        type=spec.type,
        subject=data.subject_id(),
        time=time,
        dataschema=spec.dataschema,
        tenantid=str(tenant_id),
        traceparent=traceparent,
        data=data.model_dump(mode="json"),
    )
