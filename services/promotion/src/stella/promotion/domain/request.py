"""Requesting a promotion: the release must be promotable and unblocked, environments are promoted to in
their order, and a release has one active promotion per environment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from uuid import UUID

from stella.promotion.domain.encoding import require_aware
from stella.promotion.domain.environment import Environment
from stella.promotion.domain.errors import (
    EnvironmentNotFound,
    InvalidPromotionRequest,
    PromotionAlreadyActive,
    PromotionOrderViolation,
    ReleaseBlocked,
    ReleaseNotReady,
    SourceEnvironmentMismatch,
)
from stella.promotion.domain.events import PromotionEvent, PromotionRequested
from stella.promotion.domain.promotion import Promotion
from stella.promotion.domain.release import PROMOTABLE_RELEASE_STATUSES, ReleaseBlock, ReleaseSnapshot
from stella.promotion.domain.status import PROGRESSION_STATUSES, PromotionStatus


def request_promotion(
    *,
    promotion_id: UUID,
    release: ReleaseSnapshot,
    target_environment: Environment,
    environments: Sequence[Environment],
    release_promotions: Iterable[Promotion],
    requested_by: str,
    now: datetime,
    source_environment_id: UUID | None = None,
    blocks: Iterable[ReleaseBlock] = (),
) -> tuple[Promotion, list[PromotionEvent]]:
    """Validate a promotion request and create the promotion in ``pending_gate``.

    Rules, in order: the release is ready; the target belongs to the tenant's environments; the release
    is not blocked for the target or an environment before it; the target is the first environment by
    ``order_index`` or comes right after an environment where the release was ``deployed``; a named source environment is that previous environment; the release
    has no unfinished promotion to the target already. Several environments may share an
    ``order_index`` (parallel stages); reaching any of them opens the next stage.

    Args:
        promotion_id: Id of the new promotion.
        release: The release to promote.
        target_environment: Where to promote it.
        environments: Every environment of the tenant (the order is taken from ``order_index``).
        release_promotions: The release's existing promotions, in any environment.
        requested_by: Principal asking for the promotion.
        now: Current instant (becomes ``requested_at``).
        source_environment_id: Environment the release is promoted from, when the caller names one.
        blocks: Blocks recorded for this release.

    Returns:
        The new promotion and its ``promotion.requested`` event.

    Raises:
        InvalidPromotionRequest: empty requester, or release and environment of different tenants.
        ReleaseNotReady: the release is a draft or deprecated.
        EnvironmentNotFound: the target or source environment is not one of the tenant's.
        ReleaseBlocked: a block covers the target environment.
        PromotionOrderViolation: the previous environment has not been reached.
        SourceEnvironmentMismatch: the named source is not the previous environment.
        PromotionAlreadyActive: an unfinished promotion of the release to the target exists.
    """
    now = require_aware(now, "now")
    if not isinstance(requested_by, str) or not requested_by.strip():
        raise InvalidPromotionRequest("requested_by must name the principal who requests the promotion")
    tenant_id = target_environment.tenant_id
    if release.tenant_id != tenant_id:
        raise InvalidPromotionRequest(f"release {release.id} does not belong to the environment's tenant")
    if release.status not in PROMOTABLE_RELEASE_STATUSES:
        raise ReleaseNotReady(
            f"release {release.name!r} is {release.status.value}; only ready releases can be promoted"
        )
    by_id = {env.id: env for env in environments if env.tenant_id == tenant_id}
    target = by_id.get(target_environment.id)
    if target is None:
        raise EnvironmentNotFound(f"environment {target_environment.id} not found")

    for block in blocks:
        if block.release_id != release.id:
            continue
        blocked_env = by_id.get(block.environment_id)
        if blocked_env is not None and blocked_env.order_index <= target.order_index:
            scope = "" if blocked_env.id == target.id else f" (blocked from {blocked_env.name!r} onward)"
            raise ReleaseBlocked(f"release {release.name!r} is blocked for {target.name!r}{scope}: {block.reason}")

    previous_index = max((e.order_index for e in by_id.values() if e.order_index < target.order_index), default=None)
    history = [p for p in release_promotions if p.release_id == release.id and p.tenant_id == tenant_id]
    if previous_index is None:
        if source_environment_id is not None:
            raise SourceEnvironmentMismatch(
                f"{target.name!r} is the first environment; a promotion to it has no source environment"
            )
    else:
        previous = sorted((e for e in by_id.values() if e.order_index == previous_index), key=lambda e: e.name)
        previous_names = " or ".join(repr(e.name) for e in previous)
        reached = {p.target_environment_id for p in history if p.status in PROGRESSION_STATUSES}
        if source_environment_id is not None:
            source = by_id.get(source_environment_id)
            if source is None:
                raise EnvironmentNotFound(f"source environment {source_environment_id} not found")
            if source.order_index != previous_index:
                raise SourceEnvironmentMismatch(
                    f"{source.name!r} is not the environment before {target.name!r}; promote from {previous_names}"
                )
            if source.id not in reached:
                raise PromotionOrderViolation(
                    f"release {release.name!r} has not been deployed in {source.name!r}; "
                    f"promote it to {source.name!r} before {target.name!r}"
                )
        elif not any(env.id in reached for env in previous):
            raise PromotionOrderViolation(
                f"release {release.name!r} must be deployed in {previous_names} "
                f"before it can be promoted to {target.name!r}"
            )

    active = [p for p in history if p.target_environment_id == target.id and p.status.is_active]
    if active:
        raise PromotionAlreadyActive(
            f"release {release.name!r} already has promotion {active[0].id} to {target.name!r} "
            f"({active[0].status.value})"
        )

    promotion = Promotion(
        id=promotion_id,
        tenant_id=tenant_id,
        release_id=release.id,
        target_environment_id=target.id,
        source_environment_id=source_environment_id,
        requested_by=requested_by,
        requested_at=now,
        status=PromotionStatus.PENDING_GATE,
        updated_at=now,
        required_approvals=target.required_approvals,
        require_sod=target.require_sod,
        freeze_behavior=target.config.freeze_behavior,
        approval_timeout_s=target.config.approval_timeout_s,
    )
    event = PromotionRequested(
        promotion_id=promotion_id,
        tenant_id=tenant_id,
        release_id=release.id,
        environment_id=target.id,
        occurred_at=now,
        source_environment_id=source_environment_id,
        requested_by=requested_by,
    )
    return promotion, [event]
