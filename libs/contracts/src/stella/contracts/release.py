"""The release context: components, their version map (tag -> digest), and releases (bundles of digests).

Commands go to the release service (``stella.cmd.release.*``), reads are request/reply
(``stella.rpc.release.*``), and the service publishes events (``stella.evt.release.*``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

from pydantic import Field, model_validator

from stella.contracts.envelope import Command, Event, Model, PageRequest, Query
from stella.contracts.validation import (
    Channel,
    CredentialRef,
    Digest,
    DisplayName,
    Name,
    Repository,
    Semver,
    Tag,
)

CONTEXT: Final[str] = "release"
"""Context name in subjects."""

# --- subjects -------------------------------------------------------------------------------------------

CREATE_COMPONENT: Final[str] = "stella.cmd.release.create_component"
"""Command :class:`CreateComponent`; replies with a :class:`ComponentView`."""
UPDATE_COMPONENT: Final[str] = "stella.cmd.release.update_component"
"""Command :class:`UpdateComponent`; replies with a :class:`ComponentView`."""
DELETE_COMPONENT: Final[str] = "stella.cmd.release.delete_component"
"""Command :class:`DeleteComponent`; refused while a release uses the component."""
REGISTER_VERSION: Final[str] = "stella.cmd.release.register_version"
"""Command :class:`RegisterVersion`; replies with a :class:`VersionView`."""
SYNC_VERSIONS: Final[str] = "stella.cmd.release.sync_versions"
"""Command :class:`SyncVersions`: read tags and digests from the component's registry; replies with a :class:`SyncResult`."""
CREATE_RELEASE: Final[str] = "stella.cmd.release.create_release"
"""Command :class:`CreateRelease`; replies with a :class:`ReleaseView`."""
UPDATE_RELEASE: Final[str] = "stella.cmd.release.update_release"
"""Command :class:`UpdateRelease` (drafts only); replies with a :class:`ReleaseView`."""
MARK_RELEASE_READY: Final[str] = "stella.cmd.release.mark_release_ready"
"""Command :class:`MarkReleaseReady`: freezes the release; replies with a :class:`ReleaseView`."""
DEPRECATE_RELEASE: Final[str] = "stella.cmd.release.deprecate_release"
"""Command :class:`DeprecateRelease`; replies with a :class:`ReleaseView`."""

GET_COMPONENT: Final[str] = "stella.rpc.release.get_component"
"""Query :class:`GetComponent` -> :class:`ComponentView`."""
LIST_COMPONENTS: Final[str] = "stella.rpc.release.list_components"
"""Query :class:`ListComponents` -> page of :class:`ComponentView`."""
LIST_VERSIONS: Final[str] = "stella.rpc.release.list_versions"
"""Query :class:`ListVersions` -> page of :class:`VersionView`."""
GET_RELEASE: Final[str] = "stella.rpc.release.get_release"
"""Query :class:`GetRelease` -> :class:`ReleaseView`."""
LIST_RELEASES: Final[str] = "stella.rpc.release.list_releases"
"""Query :class:`ListReleases` -> page of :class:`ReleaseView`."""

COMPONENT_CREATED: Final[str] = "stella.evt.release.component_created"
"""Event :class:`ComponentCreated`."""
COMPONENT_UPDATED: Final[str] = "stella.evt.release.component_updated"
"""Event :class:`ComponentUpdated`."""
COMPONENT_DELETED: Final[str] = "stella.evt.release.component_deleted"
"""Event :class:`ComponentDeleted`."""
VERSION_RESOLVED: Final[str] = "stella.evt.release.version_resolved"
"""Event :class:`VersionResolved`: a tag was seen for the first time."""
VERSION_UPDATED: Final[str] = "stella.evt.release.version_updated"
"""Event :class:`VersionUpdated`: a known tag now points at another digest, or its semver/channel changed."""
RELEASE_CREATED: Final[str] = "stella.evt.release.release_created"
"""Event :class:`ReleaseCreated`."""
RELEASE_READY: Final[str] = "stella.evt.release.release_ready"
"""Event :class:`ReleaseReady`: the release is frozen and may be promoted."""
RELEASE_DEPRECATED: Final[str] = "stella.evt.release.release_deprecated"
"""Event :class:`ReleaseDeprecated`."""


class ReleaseStatus(StrEnum):
    """Lifecycle of a release: only drafts change; ready and later are frozen."""

    DRAFT = "draft"
    READY = "ready"
    DEPLOYED = "deployed"
    DEPRECATED = "deprecated"


# --- views (reply and event payload parts) --------------------------------------------------------------


class ComponentView(Model):
    """A component as clients see it. ``registry_integration_id`` names the ``registry`` integration its tags are
    read through. ``registry_credential_ref`` (deprecated) names a host secret, never holds one: set only on
    components made before registry integrations, read as a fallback, never together with an integration."""

    id: UUID
    name: Name
    display_name: str
    image_repository: Repository
    versioning_strategy: dict[str, Any]
    default_channel: Channel
    registry_credential_ref: CredentialRef | None
    registry_integration_id: UUID | None = None
    created_at: datetime
    updated_at: datetime


class VersionView(Model):
    """One entry of a component's version map."""

    id: UUID
    component_id: UUID
    tag: Tag
    digest: Digest
    semver: Semver | None
    channel: Channel
    created_at: datetime
    updated_at: datetime


class ReleaseComponent(Model):
    """One image of a release, pinned by digest; ``tag`` records what it was resolved from, if anything."""

    component_id: UUID
    name: Name
    image_repository: Repository
    digest: Digest
    tag: Tag | None = None
    semver: Semver | None = None
    registry_integration_id: UUID | None = None
    """The component's ``registry`` integration when the release was made: an agent pulls the image with its
    credential (never stored with the release: the deployment service asks for it when it hands a task over)."""


class ReleaseView(Model):
    """A release as clients see it."""

    id: UUID
    name: Name
    display_name: str
    status: ReleaseStatus
    components: list[ReleaseComponent]
    source_ref: dict[str, Any]
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime
    ready_at: datetime | None
    deprecated_at: datetime | None
    deprecation_reason: str | None


class SyncResult(Model):
    """What a registry sync found: tags seen, new and moved tags, and the component's version count."""

    component_id: UUID
    tags_seen: int
    resolved: int
    updated: int
    unchanged: int


# --- commands -------------------------------------------------------------------------------------------


class CreateComponent(Command):
    """Create a component (an image repository) under a unique name."""

    name: Name
    display_name: DisplayName | None = None
    image_repository: Repository
    versioning_strategy: dict[str, Any] = Field(default_factory=lambda: {"type": "semver"})
    default_channel: Channel = "stable"
    registry_credential_ref: CredentialRef | None = None
    """Deprecated: any value is refused with ``REL_REGISTRY_CREDENTIAL_REF_DEPRECATED``; name an integration."""
    registry_integration_id: UUID | None = None
    """The ``registry`` integration (integration service) whose URL and credential the tags are read with."""


class UpdateComponent(Command):
    """Change a component's mutable fields; omitted fields keep their value."""

    component_id: UUID
    display_name: DisplayName | None = None
    image_repository: Repository | None = None
    versioning_strategy: dict[str, Any] | None = None
    default_channel: Channel | None = None
    registry_credential_ref: CredentialRef | None = None
    """Deprecated: any value is refused with ``REL_REGISTRY_CREDENTIAL_REF_DEPRECATED``."""
    clear_registry_credential_ref: bool = False
    registry_integration_id: UUID | None = None
    """Naming an integration also removes a deprecated ``registry_credential_ref``."""
    clear_registry_integration_id: bool = False


class DeleteComponent(Command):
    """Delete a component that no release uses."""

    component_id: UUID


class RegisterVersion(Command):
    """Record (or move) a tag of a component: tag -> digest, with an optional semver and channel."""

    component_id: UUID
    tag: Tag
    digest: Digest
    semver: Semver | None = None
    channel: Channel | None = None


class SyncVersions(Command):
    """Read every tag of the component's repository and its manifest digest from the OCI registry."""

    component_id: UUID


class ReleaseComponentSpec(Model):
    """A component of a new release: by name or id, and by tag (resolved now) or digest."""

    component: str = Field(min_length=1, max_length=100)
    tag: Tag | None = None
    digest: Digest | None = None

    @model_validator(mode="after")
    def _one_reference(self) -> ReleaseComponentSpec:
        if (self.tag is None) == (self.digest is None):
            raise ValueError("give exactly one of tag or digest")
        return self


class CreateRelease(Command):
    """Create a draft release; tags are resolved to digests now and only digests are stored."""

    name: Name
    display_name: DisplayName | None = None
    components: list[ReleaseComponentSpec] = Field(min_length=1, max_length=200)
    source_ref: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct_components(self) -> CreateRelease:
        names = [c.component for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError("a component appears twice in the release")
        return self


class UpdateRelease(Command):
    """Change a draft release; a ready or later release is immutable."""

    release_id: UUID
    display_name: DisplayName | None = None
    components: list[ReleaseComponentSpec] | None = Field(default=None, min_length=1, max_length=200)
    source_ref: dict[str, Any] | None = None


class MarkReleaseReady(Command):
    """Freeze a draft release so it can be promoted."""

    release_id: UUID


class DeprecateRelease(Command):
    """Mark a release deprecated (it can no longer be promoted)."""

    release_id: UUID
    reason: str | None = Field(default=None, max_length=1000)


# --- queries --------------------------------------------------------------------------------------------


class GetComponent(Query):
    """Read one component."""

    component_id: UUID


class ListComponents(Query):
    """List components by name."""

    page: PageRequest = Field(default_factory=PageRequest)
    name_prefix: str | None = Field(default=None, max_length=63)


class ListVersions(Query):
    """List a component's versions, newest first."""

    component_id: UUID
    channel: Channel | None = None
    page: PageRequest = Field(default_factory=PageRequest)


class GetRelease(Query):
    """Read one release."""

    release_id: UUID


class ListReleases(Query):
    """List releases, newest first, optionally filtered."""

    status: ReleaseStatus | None = None
    name_prefix: str | None = Field(default=None, max_length=63)
    component_id: UUID | None = None
    page: PageRequest = Field(default_factory=PageRequest)


# --- events ---------------------------------------------------------------------------------------------


class ComponentCreated(Event):
    """A component was created."""

    component: ComponentView


class ComponentUpdated(Event):
    """A component changed."""

    component: ComponentView


class ComponentDeleted(Event):
    """A component was deleted."""

    component_id: UUID
    name: Name


class VersionResolved(Event):
    """A tag of a component was seen for the first time."""

    version: VersionView


class VersionUpdated(Event):
    """A known tag changed: another digest, semver or channel."""

    version: VersionView
    previous_digest: Digest


class ReleaseCreated(Event):
    """A draft release was created."""

    release: ReleaseView


class ReleaseReady(Event):
    """A release was frozen and may be promoted."""

    release: ReleaseView


class ReleaseDeprecated(Event):
    """A release was deprecated."""

    release: ReleaseView
