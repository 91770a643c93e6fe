"""The release domain: a release's lifecycle and the rules of the version map. No I/O, no clock."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from stella.contracts.release import ReleaseStatus
from stella.kit.errors import Conflict, NotFound, Unprocessable


class ReleaseImmutable(Conflict):
    """A ready, deployed or deprecated release cannot change."""

    code = "REL_IMMUTABLE"
    title = "Release is immutable"


class InvalidReleaseTransition(Conflict):
    """The release's status does not allow this transition."""

    code = "REL_INVALID_TRANSITION"
    title = "Release status does not allow this"


class DuplicateName(Conflict):
    """The name is already taken in this tenant."""

    code = "RES_DUPLICATE_NAME"
    title = "Name already in use"


class RegistryIntegrationsUnavailable(Unprocessable):
    """A component names a registry integration but this release service has no way to ask for one."""

    code = "REL_REGISTRY_INTEGRATION_UNUSABLE"
    title = "Registry integration cannot be used"


class RegistryCredentialRefDeprecated(Unprocessable):
    """A new ``registry_credential_ref`` is refused: registry credentials are named through a registry integration."""

    code = "REL_REGISTRY_CREDENTIAL_REF_DEPRECATED"
    title = "registry_credential_ref is deprecated"


class ComponentInUse(Conflict):
    """A component referenced by a release cannot be deleted."""

    code = "REL_COMPONENT_IN_USE"
    title = "Component is used by a release"


class ComponentNotFound(NotFound):
    """No such component in this tenant."""

    code = "REL_COMPONENT_NOT_FOUND"
    title = "Component not found"


class ReleaseNotFound(NotFound):
    """No such release in this tenant."""

    code = "REL_RELEASE_NOT_FOUND"
    title = "Release not found"


class UnknownComponent(Unprocessable):
    """A release names a component that does not exist."""

    code = "REL_UNKNOWN_COMPONENT"
    title = "Unknown component"


class UnknownTag(Unprocessable):
    """A tag that neither the registry nor the version map knows."""

    code = "REL_UNKNOWN_TAG"
    title = "Unknown tag"


_FROZEN = {ReleaseStatus.READY, ReleaseStatus.DEPLOYED, ReleaseStatus.DEPRECATED}
_TRANSITIONS: dict[ReleaseStatus, set[ReleaseStatus]] = {
    ReleaseStatus.DRAFT: {ReleaseStatus.READY, ReleaseStatus.DEPRECATED},
    ReleaseStatus.READY: {ReleaseStatus.DEPLOYED, ReleaseStatus.DEPRECATED},
    ReleaseStatus.DEPLOYED: {ReleaseStatus.DEPRECATED},
    ReleaseStatus.DEPRECATED: set(),
}


def is_frozen(status: ReleaseStatus) -> bool:
    """Whether a release in ``status`` is immutable."""
    return status in _FROZEN


def ensure_editable(name: str, status: ReleaseStatus) -> None:
    """Refuse a change to a release that is no longer a draft."""
    if is_frozen(status):
        raise ReleaseImmutable(f"release {name!r} is {status.value}; a ready release cannot change, create a new one")


def transition(name: str, current: ReleaseStatus, target: ReleaseStatus) -> ReleaseStatus:
    """Check a status change and return the new status.

    Raises:
        InvalidReleaseTransition: when ``current`` cannot become ``target``.
    """
    if target not in _TRANSITIONS[current]:
        raise InvalidReleaseTransition(f"release {name!r} is {current.value} and cannot become {target.value}")
    return target


class VersionChange(Enum):
    """How registering a tag changes the version map."""

    RESOLVED = "resolved"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class KnownVersion:
    """What the version map holds for a tag."""

    digest: str
    semver: str | None
    channel: str


def classify_version(known: KnownVersion | None, digest: str, semver: str | None, channel: str) -> VersionChange:
    """Decide whether a tag is new, moved (or re-labelled), or unchanged."""
    if known is None:
        return VersionChange.RESOLVED
    if (known.digest, known.semver, known.channel) == (digest, semver, channel):
        return VersionChange.UNCHANGED
    return VersionChange.UPDATED


def resolves_from_registry(versioning_strategy: dict[str, object]) -> bool:
    """Whether tags of a component are resolved against its registry (default) or only its version map.

    Air-gapped components whose registry is unreachable set ``{"resolve": "version-map"}`` and register
    their tags explicitly.
    """
    return versioning_strategy.get("resolve", "registry") != "version-map"
