"""The public API's request and response bodies.

They are the gateway's own classes, not the contracts' messages: the HTTP API and the messages between
services can then change at their own pace. Request bodies refuse unknown fields and validate names,
digests, tags and repositories with the patterns every context shares; response bodies ignore fields they
do not know, so a service may add some before the gateway shows them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from stella.contracts.validation import Channel, CredentialRef, Digest, DisplayName, Name, Repository, Semver, Tag
from stella.gateway.permissions import Role


class RequestBody(BaseModel):
    """Base of request bodies: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


# --- principals and tokens ------------------------------------------------------------------------------


class PrincipalKind(StrEnum):
    """A person or a machine."""

    USER = "user"
    SERVICE = "service"


class PrincipalCreate(RequestBody):
    """A new principal of the caller's tenant."""

    name: Name
    kind: PrincipalKind = PrincipalKind.USER
    display_name: DisplayName | None = None
    roles: list[Role] = Field(default_factory=list, max_length=len(Role))

    @field_validator("roles")
    @classmethod
    def _distinct(cls, roles: list[Role]) -> list[Role]:
        if len(set(roles)) != len(roles):
            raise ValueError("a role is listed twice")
        return roles


class PrincipalOut(ResponseBody):
    """A principal."""

    id: UUID
    name: str
    kind: PrincipalKind
    display_name: str | None
    roles: list[str]
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
        default=None, description="Where the registry credential lives (env:NAME or file:PATH), never the secret."
    )


class ComponentUpdate(RequestBody):
    """New values for a component's mutable fields; omitted fields keep their value.

    ``registry_credential_ref: null`` removes the credential reference.
    """

    display_name: DisplayName | None = None
    image_repository: Repository | None = None
    versioning_strategy: dict[str, Any] | None = None
    default_channel: Channel | None = None
    registry_credential_ref: CredentialRef | None = None


class ComponentOut(ResponseBody):
    """A component."""

    id: UUID
    name: str
    display_name: str
    image_repository: str
    versioning_strategy: dict[str, Any]
    default_channel: str
    registry_credential_ref: str | None
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
