"""The public API's request and response bodies.

They are the gateway's own classes, not the contracts' messages: the HTTP API and the messages between
services can then change at their own pace. Request bodies refuse unknown fields and validate names,
digests, tags and repositories with the patterns every context shares; response bodies ignore fields they
do not know, so a service may add some before the gateway shows them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from stella.contracts.promotion import PromotionView
from stella.contracts.validation import Channel, CredentialRef, Digest, DisplayName, Name, Repository, Semver, Tag
from stella.gateway.permissions import Role


class RequestBody(BaseModel):
    """Base of request bodies: unknown fields are an error, and no value is coerced into another type.

    Bodies are validated in pydantic's strict JSON mode (see :mod:`stella.gateway.validation`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ResponseBody(BaseModel):
    """Base of response bodies: fields a service adds are ignored until the gateway shows them."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Problem(ResponseBody):
    """An error (RFC 9457 problem details), served as ``application/problem+json``."""

    type: str = Field(description="URI naming the kind of problem: urn:stella:problem:<code>.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status.")
    detail: str = Field(description="What went wrong this time.")
    instance: str = Field(description="The request path.")
    code: str = Field(description="Stable machine-readable code, e.g. RES_NOT_FOUND or VAL_INVALID_REQUEST.")
    trace_id: str = Field(description="The request's trace id; quote it when reporting a problem.")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description='Field errors: [{"loc": ["body", "name"], "msg": "..."}].'
    )


# --- health ---------------------------------------------------------------------------------------------


class Health(ResponseBody):
    """Liveness or readiness of the gateway."""

    status: Literal["ok", "ready"]
    checks: dict[str, str] = Field(default_factory=dict)


# --- tenants (the platform API) -------------------------------------------------------------------------


class TenantCreate(RequestBody):
    """A new tenant and the name of its first tenant admin."""

    name: Name = Field(description="The tenant's name, unique on the installation.")
    admin: Name = Field(default="admin", description="The name of the tenant's first tenant admin (a user).")


class TenantOut(ResponseBody):
    """A tenant."""

    id: UUID
    name: str
    is_platform: bool = Field(description="Whether this is the platform (operator) tenant.")
    created_at: datetime


class TenantCreated(TenantOut):
    """A new tenant with its first tenant admin and that admin's token: store the token now, it is not shown again."""

    admin_principal_id: UUID
    admin_token: str | None = Field(
        description="The tenant admin's bearer token. Shown once: a replay of the request (Idempotency-Key) omits it."
    )


class TenantPage(ResponseBody):
    """A page of tenants, by name."""

    items: list[TenantOut]
    next_page_token: str | None


# --- principals and tokens ------------------------------------------------------------------------------


class PrincipalKind(StrEnum):
    """A person or a machine."""

    USER = "user"
    SERVICE = "service"


MAX_GROUPS: Final[int] = 50
"""Most groups a principal may belong to."""


def _distinct_roles(roles: list[Role] | None) -> list[Role] | None:
    if roles is not None and len(set(roles)) != len(roles):
        raise ValueError("a role is listed twice")
    return roles


def _distinct_groups(groups: list[str] | None) -> list[str] | None:
    if groups is not None and len(set(groups)) != len(groups):
        raise ValueError("a group is listed twice")
    return groups


class PrincipalCreate(RequestBody):
    """A new principal of the caller's tenant."""

    name: Name
    kind: PrincipalKind = PrincipalKind.USER
    display_name: DisplayName | None = None
    roles: list[Role] = Field(default_factory=list, max_length=len(Role))
    groups: list[Name] = Field(
        default_factory=list,
        max_length=MAX_GROUPS,
        description="Groups the principal belongs to (an approval policy may name them), named like principals.",
    )

    _roles_distinct = field_validator("roles")(_distinct_roles)
    _groups_distinct = field_validator("groups")(_distinct_groups)


class PrincipalUpdate(RequestBody):
    """New roles and/or groups of a principal; each list given replaces the current one, an omitted one stays."""

    roles: list[Role] | None = Field(default=None, max_length=len(Role))
    groups: list[Name] | None = Field(default=None, max_length=MAX_GROUPS)

    _roles_distinct = field_validator("roles")(_distinct_roles)
    _groups_distinct = field_validator("groups")(_distinct_groups)

    @model_validator(mode="after")
    def _something(self) -> PrincipalUpdate:
        if self.roles is None and self.groups is None:
            raise ValueError("give roles, groups or both")
        return self


class PrincipalOut(ResponseBody):
    """A principal."""

    id: UUID
    name: str
    kind: PrincipalKind
    display_name: str | None
    roles: list[str]
    groups: list[str]
    created_at: datetime
    created_by: UUID | None


class PrincipalPage(ResponseBody):
    """A page of principals, by name."""

    items: list[PrincipalOut]
    next_page_token: str | None


class TokenCreate(RequestBody):
    """A new API token for a principal of the caller's tenant."""

    principal_id: UUID
    name: str = Field(default="", max_length=100, description="What the token is for.")
    expires_at: AwareDatetime | None = Field(default=None, description="When the token stops working; never if null.")


class TokenOut(ResponseBody):
    """An API token's metadata; the token itself is only ever shown when it is created."""

    id: UUID
    principal_id: UUID
    name: str
    prefix: str = Field(description="The token's first characters, to tell tokens apart.")
    created_at: datetime
    created_by: UUID | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="When the token was last used (updated every few seconds).")


class TokenCreated(TokenOut):
    """A new API token, with its value: store it now, it is not shown again."""

    token: str | None = Field(
        description="The bearer token. Shown once: a replay of the creating request (Idempotency-Key) omits it."
    )


class TokenPage(ResponseBody):
    """A page of tokens, oldest first."""

    items: list[TokenOut]
    next_page_token: str | None


# --- components and versions ----------------------------------------------------------------------------


class ComponentCreate(RequestBody):
    """A new component: a named image repository."""

    name: Name
    display_name: DisplayName | None = None
    image_repository: Repository
    versioning_strategy: dict[str, Any] | None = None
    default_channel: Channel | None = None
    registry_credential_ref: CredentialRef | None = Field(
        default=None,
        description=(
            "Deprecated: a value is refused with 422 REL_REGISTRY_CREDENTIAL_REF_DEPRECATED. Name a registry "
            "integration in registry_integration_id instead (its credential in the secret store, a vault, or an "
            "operator-allowed env:/file: reference)."
        ),
        json_schema_extra={"deprecated": True},
    )
    registry_integration_id: UUID | None = Field(
        default=None,
        description=(
            "The registry integration (GET /api/v1/integrations) whose URL and credential the component's tags are "
            "read with; it must be for the component's registry host. Needs credential:update."
        ),
    )


class ComponentUpdate(RequestBody):
    """New values for a component's mutable fields; omitted fields keep their value.

    ``registry_credential_ref: null`` removes a deprecated credential reference (a value is refused),
    ``registry_integration_id: null`` the registry integration; naming an integration also removes the reference.
    """

    display_name: DisplayName | None = None
    image_repository: Repository | None = None
    versioning_strategy: dict[str, Any] | None = None
    default_channel: Channel | None = None
    registry_credential_ref: CredentialRef | None = Field(
        default=None,
        description="Deprecated: only null (remove the reference) is accepted.",
        json_schema_extra={"deprecated": True},
    )
    registry_integration_id: UUID | None = None


class ComponentOut(ResponseBody):
    """A component."""

    id: UUID
    name: str
    display_name: str
    image_repository: str
    versioning_strategy: dict[str, Any]
    default_channel: str
    registry_credential_ref: str | None = Field(
        description="Deprecated: set only on components made before registry integrations, read as a fallback.",
        json_schema_extra={"deprecated": True},
    )
    registry_integration_id: UUID | None = None
    created_at: datetime
    updated_at: datetime


class ComponentPage(ResponseBody):
    """A page of components, by name."""

    items: list[ComponentOut]
    next_page_token: str | None


class VersionCreate(RequestBody):
    """Record (or move) a tag of a component: tag -> digest."""

    tag: Tag
    digest: Digest
    semver: Semver | None = None
    channel: Channel | None = None


class VersionOut(ResponseBody):
    """One entry of a component's version map."""

    id: UUID
    component_id: UUID
    tag: str
    digest: str
    semver: str | None
    channel: str
    created_at: datetime
    updated_at: datetime


class VersionPage(ResponseBody):
    """A page of a component's versions, newest first."""

    items: list[VersionOut]
    next_page_token: str | None


class SyncResultOut(ResponseBody):
    """What a registry sync found."""

    component_id: UUID
    tags_seen: int
    resolved: int
    updated: int
    unchanged: int


# --- releases -------------------------------------------------------------------------------------------


class ReleaseStatus(StrEnum):
    """Lifecycle of a release."""

    DRAFT = "draft"
    READY = "ready"
    DEPLOYED = "deployed"
    DEPRECATED = "deprecated"


class ReleaseComponentIn(RequestBody):
    """A component of a release: by name or id, pinned by a tag (resolved to a digest now) or a digest."""

    component: str = Field(min_length=1, max_length=100, description="Component name or id.")
    tag: Tag | None = None
    digest: Digest | None = None

    @model_validator(mode="after")
    def _one_reference(self) -> ReleaseComponentIn:
        if (self.tag is None) == (self.digest is None):
            raise ValueError("give exactly one of tag or digest")
        return self


def _distinct_components(components: list[ReleaseComponentIn] | None) -> list[ReleaseComponentIn] | None:
    if components is not None:
        names = [c.component for c in components]
        if len(set(names)) != len(names):
            raise ValueError("a component appears twice in the release")
    return components


class ReleaseCreate(RequestBody):
    """A new draft release."""

    name: Name
    display_name: DisplayName | None = None
    components: list[ReleaseComponentIn] = Field(min_length=1, max_length=200)
    source_ref: dict[str, Any] = Field(default_factory=dict, description="Where the release was built from.")

    _distinct = field_validator("components")(_distinct_components)


class ReleaseUpdate(RequestBody):
    """New values for a draft release; omitted fields keep their value."""

    display_name: DisplayName | None = None
    components: list[ReleaseComponentIn] | None = Field(default=None, min_length=1, max_length=200)
    source_ref: dict[str, Any] | None = None

    _distinct = field_validator("components")(_distinct_components)


class ReleaseDeprecate(RequestBody):
    """Why a release is deprecated."""

    reason: str | None = Field(default=None, max_length=1000)


class ReleaseComponentOut(ResponseBody):
    """One image of a release, pinned by digest."""

    component_id: UUID
    name: str
    image_repository: str
    digest: str
    tag: str | None = None
    semver: str | None = None
    registry_integration_id: UUID | None = Field(
        default=None,
        description="The component's registry integration when the release was made: agents pull with its credential.",
    )


class ReleaseOut(ResponseBody):
    """A release."""

    id: UUID
    name: str
    display_name: str
    status: ReleaseStatus
    components: list[ReleaseComponentOut]
    source_ref: dict[str, Any]
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime
    ready_at: datetime | None
    deprecated_at: datetime | None
    deprecation_reason: str | None


class ReleasePage(ResponseBody):
    """A page of releases, newest first."""

    items: list[ReleaseOut]
    next_page_token: str | None


# --- environments and freeze windows --------------------------------------------------------------------


class EnvironmentCreate(RequestBody):
    """A new environment in the tenant's promotion order."""

    name: Name
    display_name: DisplayName | None = None
    order_index: int = Field(ge=0, le=10_000, description="Position in the promotion order; lower comes first.")
    required_approvals: int = Field(default=0, ge=0, le=50, description="Distinct approvals a promotion needs.")
    require_sod: bool = Field(default=False, description="Whether the requester of a promotion may not approve it.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="Deployment timeout, health-check defaults, variables, gates."
    )
    promotion_policy: dict[str, Any] = Field(
        default_factory=dict,
        description="How promotions into it run: workflow_template (default standard-promotion), approver_groups.",
    )


class EnvironmentUpdate(RequestBody):
    """New values for an environment; omitted fields keep their value."""

    display_name: DisplayName | None = None
    order_index: int | None = Field(default=None, ge=0, le=10_000)
    required_approvals: int | None = Field(default=None, ge=0, le=50)
    require_sod: bool | None = None
    config: dict[str, Any] | None = None
    promotion_policy: dict[str, Any] | None = None


class EnvironmentOut(ResponseBody):
    """An environment."""

    id: UUID
    name: str
    display_name: str
    order_index: int
    required_approvals: int
    require_sod: bool
    config: dict[str, Any]
    promotion_policy: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class EnvironmentPage(ResponseBody):
    """A page of environments, in promotion order."""

    items: list[EnvironmentOut]
    next_page_token: str | None


class WindowKind(StrEnum):
    """A freeze window closes the environment; a deployment window is the only time it is open."""

    DENY = "deny"
    ALLOW = "allow"


class FreezeWindowCreate(RequestBody):
    """A window: one-off (``start``, ``end``) or recurring (``rrule`` and ``duration_s`` from ``dtstart``)."""

    kind: WindowKind = WindowKind.DENY
    start: AwareDatetime | None = Field(default=None, description="Start of a one-off window.")
    end: AwareDatetime | None = Field(default=None, description="End of a one-off window.")
    rrule: str | None = Field(
        default=None, min_length=1, max_length=500, description="RFC 5545 recurrence rule, e.g. FREQ=WEEKLY;BYDAY=FR."
    )
    duration_s: float | None = Field(
        default=None, gt=0, le=366 * 24 * 3600, description="Length of each occurrence of a recurring window."
    )
    dtstart: datetime | None = Field(
        default=None, description="First occurrence of a recurring window, as a wall time of its time zone."
    )
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description="IANA time zone, e.g. Europe/Berlin.")
    reason: str = Field(min_length=1, max_length=1000)
    exceptions: list[UUID] = Field(
        default_factory=list, max_length=100, description="Principals who may override the window."
    )


class FreezeWindowOut(ResponseBody):
    """A freeze (deny) or deployment (allow) window of an environment."""

    id: UUID
    environment_id: UUID
    kind: WindowKind
    start: datetime | None
    end: datetime | None
    rrule: str | None
    duration_s: float | None
    dtstart: datetime | None = None
    timezone: str
    reason: str
    created_by: UUID | None
    exceptions: list[UUID]
    created_at: datetime


class FreezeWindowPage(ResponseBody):
    """A page of an environment's windows."""

    items: list[FreezeWindowOut]
    next_page_token: str | None


class EnvironmentStateOut(ResponseBody):
    """Whether promotions into an environment are open now, and when that changes."""

    environment_id: UUID
    closed: bool
    reason: str | None
    next_open: datetime | None
    next_close: datetime | None
    active_window_ids: list[UUID]
    evaluated_at: datetime


class PromotionCellOut(ResponseBody):
    """The latest promotion of a release into an environment (a cell of the environments x releases board)."""

    promotion_id: UUID
    release_id: UUID
    release_name: str
    environment_id: UUID
    status: str
    requested_at: datetime
    updated_at: datetime


class EnvironmentBoardEntryOut(ResponseBody):
    """An environment with its freeze state now, and its windows when they were asked for."""

    environment: EnvironmentOut
    state: EnvironmentStateOut
    windows: list[FreezeWindowOut]


class EnvironmentBoardOut(ResponseBody):
    """Environments in promotion order with their freeze state, and the cells of the newest releases."""

    environments: list[EnvironmentBoardEntryOut]
    cells: list[PromotionCellOut]


# --- scan results ---------------------------------------------------------------------------------------


class ScanResultCreate(RequestBody):
    """A vulnerability scan verdict for one image digest (the security gate's input)."""

    digest: Digest
    critical: int = Field(ge=0, le=1_000_000)
    high: int = Field(ge=0, le=1_000_000)
    medium: int = Field(ge=0, le=1_000_000)
    low: int = Field(default=0, ge=0, le=1_000_000)
    max_epss: float = Field(default=0.0, ge=0, le=1, description="Highest EPSS score among the findings.")
    kev: bool = Field(default=False, description="Whether a finding is in CISA's Known Exploited Vulnerabilities.")
    scanner: str = Field(default="unknown", min_length=1, max_length=100)
    scanned_at: AwareDatetime | None = Field(default=None, description="When the scan ran; now when omitted.")


class ScanResultOut(ResponseBody):
    """The latest scan verdict recorded for a digest."""

    digest: str
    critical: int
    high: int
    medium: int
    low: int
    max_epss: float
    kev: bool
    scanner: str
    scanned_at: datetime
    recorded_at: datetime


# --- promotions and approvals ---------------------------------------------------------------------------


class PromotionCreate(RequestBody):
    """A request to promote a ready release into an environment."""

    release_id: UUID
    target_environment_id: UUID
    source_environment_id: UUID | None = Field(
        default=None, description="The environment the release comes from, when it matters."
    )
    reason: str = Field(default="", max_length=2000)


class PromotionCancel(RequestBody):
    """Why a promotion is cancelled."""

    reason: str | None = Field(default=None, max_length=2000)


class FreezeOverride(RequestBody):
    """Why a promotion may pass the freeze windows that close its environment now."""

    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class VoteBody(RequestBody):
    """A comment on an approval or a rejection."""

    comment: str = Field(default="", max_length=2000)


class PromotionPage(ResponseBody):
    """A page of promotions, newest first."""

    items: list[PromotionView]
    next_page_token: str | None


class DecisionOut(ResponseBody):
    """A promotion's latest decision record and every input it was computed from.

    Deciding again on ``inputs`` at ``evaluated_at`` gives ``record`` again; ``record.inputs_hash`` is the
    SHA-256 of those inputs.
    """

    promotion_id: UUID
    trigger: str = Field(description="What caused the evaluation: gates, hold, override or approvals.")
    evaluated_at: datetime
    inputs: dict[str, Any]
    record: dict[str, Any]


class VoteAction(StrEnum):
    """A vote."""

    APPROVED = "approved"
    REJECTED = "rejected"


class ApprovalStatus(StrEnum):
    """Approval request states."""

    PENDING = "pending"
    GRANTED = "granted"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class VoteOut(ResponseBody):
    """One approver's vote."""

    approver_id: UUID
    action: VoteAction
    comment: str
    at: datetime
    approver_name: str | None = Field(default=None, description="The approver's name when the vote was cast.")
    approver_display_name: str | None = Field(
        default=None, description="The approver's display name when the vote was cast, if it had one."
    )


class ApprovalRequestOut(ResponseBody):
    """A promotion's approval request and its votes."""

    promotion_id: UUID
    environment_id: UUID
    requester_id: UUID | None
    required: int = Field(description="Distinct approvals needed.")
    require_sod: bool
    approver_groups: list[str]
    status: ApprovalStatus
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    votes: list[VoteOut]


# --- workflows ------------------------------------------------------------------------------------------


class RunOn(StrEnum):
    """When a step runs, given how the steps before it ended."""

    SUCCESS = "success"
    ALWAYS = "always"
    FAILURE = "failure"


class RetryIn(RequestBody):
    """How often and how patiently a step is retried."""

    max_attempts: int = Field(default=1, ge=1, le=100)
    backoff_s: float = Field(default=0, ge=0, le=86400)


class NodeIn(RequestBody):
    """One step of a template."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    type: str = Field(min_length=1, max_length=64, description="Step type: gate, approval, evidence, wait...")
    config: dict[str, Any] = Field(default_factory=dict)
    retry: RetryIn = Field(default_factory=RetryIn)
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    when: str | None = Field(default=None, max_length=1000, description="Run only when this condition holds.")
    run_on: RunOn = RunOn.SUCCESS


class EdgeIn(RequestBody):
    """``from`` finishes before ``to`` starts."""

    source: str = Field(alias="from", min_length=1, max_length=63)
    target: str = Field(alias="to", min_length=1, max_length=63)


class TemplateCreate(RequestBody):
    """The next version of a tenant workflow template (a DAG of steps)."""

    name: Name
    nodes: list[NodeIn] = Field(min_length=1, max_length=100)
    edges: list[EdgeIn] = Field(default_factory=list, max_length=500)
    inputs: dict[str, Any] = Field(
        default_factory=dict, description="Declared inputs by name: {name: {required, default, description}}."
    )
    outputs: dict[str, Any] = Field(default_factory=dict)


class RetryOut(ResponseBody):
    """A step's retry policy."""

    max_attempts: int
    backoff_s: float


class NodeOut(ResponseBody):
    """One step of a template."""

    id: str
    type: str
    config: dict[str, Any]
    retry: RetryOut
    timeout_s: float | None
    when: str | None
    run_on: RunOn


class EdgeOut(ResponseBody):
    """``from`` finishes before ``to`` starts (the workflow service answers edges in this shape too)."""

    source: str = Field(alias="from")
    target: str = Field(alias="to")


class TemplateOut(ResponseBody):
    """A version of a workflow template; built-in templates have no tenant."""

    id: UUID
    tenant_id: UUID | None
    name: str
    version: int
    nodes: list[NodeOut]
    edges: list[EdgeOut]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    is_builtin: bool
    created_at: datetime


class TemplatePage(ResponseBody):
    """A page of templates: the latest version of each, built-in ones and the tenant's."""

    items: list[TemplateOut]
    next_page_token: str | None


# --- evidence -------------------------------------------------------------------------------------------


class PacketType(StrEnum):
    """Kinds of evidence (reference §5)."""

    RELEASE_DECISION = "release_decision"
    DEPLOYMENT = "deployment"
    ROLLBACK = "rollback"
    DRIFT = "drift"


class PacketOut(ResponseBody):
    """A signed evidence packet: its DSSE envelope and decoded content."""

    id: UUID
    packet_type: PacketType
    promotion_id: UUID | None
    sequence: int = Field(description="Position in the tenant's hash chain.")
    previous_hash: str | None = Field(description="content_hash of the packet before it in the chain.")
    content_hash: str = Field(description="sha256:<hex> of the content's canonical JSON (RFC 8785).")
    signer_key_ref: str
    created_at: datetime
    content: dict[str, Any]
    envelope: dict[str, Any] = Field(description="DSSE envelope of the in-toto Statement.")


class PacketPage(ResponseBody):
    """A page of packets, in chain order."""

    items: list[PacketOut]
    next_page_token: str | None


class VerificationOut(ResponseBody):
    """The outcome of verifying one packet: signature, content hash and chain link."""

    packet_id: UUID
    valid: bool
    checks: dict[str, bool]
    findings: list[str]


class KeyOut(ResponseBody):
    """A public key that signs (``active``) or signed evidence."""

    key_ref: str
    algorithm: str
    public_key_pem: str
    active: bool
    created_at: datetime
    retired_at: datetime | None
    key_id: str | None = Field(default=None, description="sha256:<hex> of the key's DER SubjectPublicKeyInfo.")
    log_entry: dict[str, Any] | None = Field(
        default=None, description="The key's signed key log entry (DSSE envelope): when it became valid."
    )


class KeyList(ResponseBody):
    """Every key that ever signed the evidence, the active one and the retired ones."""

    items: list[KeyOut]


class CheckpointOut(ResponseBody):
    """A signed checkpoint (C2SP tlog-checkpoint signed note) of the tenant's Merkle tree of packets."""

    origin: str = Field(description="The log's name: <installation origin>/<tenant id>.")
    tree_size: int = Field(description="Packets the tree holds (sequences 1..tree_size).")
    root_hash: str = Field(description="Base64 RFC 6962 root hash.")
    note: str = Field(description="The signed note, verbatim: what a witness keeps.")
    key_ref: str
    created_at: datetime


class InclusionProofOut(ResponseBody):
    """An RFC 6962 inclusion proof of a packet in a checkpoint's tree."""

    packet_id: UUID
    sequence: int
    leaf_index: int = Field(description="sequence - 1.")
    leaf_hash: str = Field(description="Base64 SHA-256(0x00 || the envelope's decoded payload).")
    tree_size: int
    hashes: list[str] = Field(description="Base64 hashes of the proof, from the leaf up.")
    checkpoint: CheckpointOut


class ConsistencyProofOut(ResponseBody):
    """An RFC 6962 consistency proof: the tree at old_size is a prefix of the tree at new_size."""

    old_size: int
    new_size: int
    hashes: list[str] = Field(description="Base64 hashes of the proof.")
    old_checkpoint: CheckpointOut | None = Field(description="The stored checkpoint of old_size, if one was signed.")
    new_checkpoint: CheckpointOut


class DeadLetterOut(ResponseBody):
    """A message a service gave up on, with why; replaying it publishes it again with its original id."""

    id: int = Field(description="The dead letter's id (its sequence in the dead-letter stream).")
    consumer: str = Field(description="The durable consumer that gave up, <service>-<purpose>.")
    subject: str = Field(description="The subject the message was published on.")
    message_id: UUID | None = Field(description="The message's own id, which the services de-duplicate on.")
    error: str = Field(description="Why the consumer gave up.")
    deliveries: int = Field(description="How often the message had been delivered.")
    dead_lettered_at: datetime | None
    payload: Any = Field(description="The message as it was published (JSON, or its text).")


class DeadLetterPage(ResponseBody):
    """A page of dead letters, oldest first."""

    items: list[DeadLetterOut]
    next_page_token: str | None


class ReplayOut(ResponseBody):
    """What a replay published."""

    id: int = Field(description="The dead letter replayed; it is removed and cannot be replayed again.")
    subject: str = Field(description="The subject the message was published on again.")
    message_id: UUID | None = Field(
        description="Its original id: a service that handled it already answers from its inbox."
    )


# --- webhooks and public events -------------------------------------------------------------------------

WebhookUrl = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
"""A webhook URL (checked by the events service: scheme, host, and the addresses the host resolves to)."""

EventTypeFilter = Annotated[str, StringConstraints(min_length=1, max_length=200)]
"""An event type of ``GET /events/types`` or ``org.stellaops.<context>.*``."""

WebhookDescription = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")]
"""A webhook's description: text without control characters (tab and line breaks allowed)."""


class WebhookCreate(RequestBody):
    """A new webhook: where to send the tenant's public events, and which ones."""

    url: WebhookUrl = Field(
        description="https:// URL receiving a POST per event; it must resolve to public addresses only "
        "(unless the operator allows a private network)."
    )
    description: WebhookDescription = Field(default="", description="What the webhook is for (no control characters).")
    event_types: list[EventTypeFilter] = Field(
        default_factory=list,
        max_length=100,
        description="Event types (or org.stellaops.<context>.*) to receive; empty: every type.",
    )
    enabled: bool = True


class WebhookUpdate(RequestBody):
    """Changes to a webhook; fields left out keep their value. ``enabled: true`` resumes a disabled webhook."""

    url: WebhookUrl | None = None
    description: WebhookDescription | None = None
    event_types: list[EventTypeFilter] | None = Field(default=None, max_length=100)
    enabled: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> WebhookUpdate:
        if self.url is None and self.description is None and self.event_types is None and self.enabled is None:
            raise ValueError("give at least one of url, description, event_types, enabled")
        return self


class WebhookOut(ResponseBody):
    """A webhook; its secret is shown only when it is created."""

    id: UUID
    url: str
    description: str
    event_types: list[str] = Field(description="Types received; empty: every type.")
    enabled: bool
    disabled_reason: str | None = Field(description="Why the service disabled it (null when a person did).")
    disabled_at: datetime | None
    failing_since: datetime | None = Field(description="Start of the current run of failed attempts.")
    consecutive_failures: int
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    """A new webhook with its signing secret: store it now, it is not shown again."""

    secret: str | None = Field(
        description="whsec_... secret verifying the webhook-signature header (Standard Webhooks). Shown once: "
        "a replay of the creating request (Idempotency-Key) omits it."
    )


class WebhookPage(ResponseBody):
    """A page of webhooks, oldest first."""

    items: list[WebhookOut]
    next_page_token: str | None


class DeliveryStatus(StrEnum):
    """Where a delivery stands."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class AttemptOut(ResponseBody):
    """One attempt of a delivery."""

    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None = Field(description="The receiver's HTTP status; null when none came.")
    error: str | None
    response_excerpt: str | None = Field(description="The first bytes of the receiver's answer.")


class DeliveryOut(ResponseBody):
    """One event sent (or to be sent) to a webhook, with its attempts."""

    id: UUID
    webhook_id: UUID
    event_id: str = Field(description="The CloudEvent's id, also the webhook-id header.")
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    completed_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    redelivery_of: UUID | None
    attempt_log: list[AttemptOut]


class DeliveryPage(ResponseBody):
    """A page of a webhook's deliveries, newest first."""

    items: list[DeliveryOut]
    next_page_token: str | None


class CloudEventOut(ResponseBody):
    """A public event: a CloudEvent 1.0 in the JSON event format (data per the AsyncAPI document)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: str
    id: str
    source: str
    type: str
    subject: str | None = None
    time: datetime
    datacontenttype: str
    dataschema: str
    tenantid: str
    traceparent: str | None = None
    data: dict[str, Any]


class CloudEventPage(ResponseBody):
    """A page of public events, oldest first."""

    items: list[CloudEventOut]
    next_page_token: str | None


class EventTypeOut(ResponseBody):
    """A public event type."""

    type: str
    summary: str
    dataschema: str
    nats_subject: str = Field(description="Its NATS subject; <tenant> is the tenant's id.")


class EventTypeList(ResponseBody):
    """Every public event type."""

    items: list[EventTypeOut]
