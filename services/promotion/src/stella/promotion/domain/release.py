"""Releases and approvals as the promotion context sees them (read copies of other services' state)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

from stella.promotion.domain.encoding import is_int
from stella.promotion.domain.errors import InvalidApprovalSummary


class ReleaseStatus(StrEnum):
    """Release statuses owned by the release service (the promotion service keeps a read copy)."""

    DRAFT = "draft"
    READY = "ready"
    DEPLOYED = "deployed"
    DEPRECATED = "deprecated"


PROMOTABLE_RELEASE_STATUSES: Final = frozenset({ReleaseStatus.READY, ReleaseStatus.DEPLOYED})


"""A release can be promoted once it is ready; ``deployed`` (already running somewhere) is still ready."""


@dataclass(frozen=True, slots=True)
class ReleaseSnapshot:
    """The promotion context's read copy of a release."""

    id: UUID
    tenant_id: UUID
    name: str
    status: ReleaseStatus


@dataclass(frozen=True, slots=True)
class ReleaseBlock:
    """A release marked as blocked for an environment and every environment after it."""

    release_id: UUID
    environment_id: UUID
    reason: str
    blocked_by: str
    blocked_at: datetime


@dataclass(frozen=True, slots=True)
class ApprovalSummary:
    """Counts the approval service reports for a promotion (distinct, eligible principals)."""

    required: int
    granted: int
    rejected: int

    def __post_init__(self) -> None:
        for name in ("required", "granted", "rejected"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise InvalidApprovalSummary(f"approval summary {name} must be an integer >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ApprovalSummary:
        """Build a summary from ``{required, granted, rejected}``.

        Raises:
            InvalidApprovalSummary: a count is missing, negative or not an integer.
        """
        if not isinstance(raw, Mapping):
            raise InvalidApprovalSummary("approval summary must be an object {required, granted, rejected}")
        return cls(required=raw.get("required", 0), granted=raw.get("granted", 0), rejected=raw.get("rejected", 0))

    def to_dict(self) -> dict[str, int]:
        """Return ``{required, granted, rejected}``."""
        return {"required": self.required, "granted": self.granted, "rejected": self.rejected}
