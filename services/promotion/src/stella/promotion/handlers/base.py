"""The promotion handlers' shared state and helpers: the dependencies every use case reads, and how a
promotion is locked, its events collected and its gate step completed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from stella.contracts import promotion as c
from stella.contracts import workflow as w
from stella.contracts.envelope import Message
from stella.kit.broker import CommandProcessor, ServiceClient
from stella.kit.timers import DueLoop
from stella.promotion import repo
from stella.promotion.domain.encoding import to_json_value
from stella.promotion.domain.errors import NotFound
from stella.promotion.domain.events import PromotionEvent
from stella.promotion.gates import GateRegistry
from stella.promotion.handlers.messages import EVENT_SUBJECTS, Origin
from stella.promotion.plugin_gates import PluginGates
from stella.promotion.store import PromotionStore, PromotionUnitOfWork

_DECISION_SUBJECTS = frozenset({c.PROMOTION_APPROVED, c.PROMOTION_REJECTED})
"""The events that announce a decision, and carry its inputs."""


def inputs_to_carry(inputs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``inputs`` as the decision hashed them (plain JSON values), or None when they are too large to carry."""
    if inputs is None:
        return None
    plain: dict[str, Any] = to_json_value(inputs)
    size = len(json.dumps(plain, separators=(",", ":"), ensure_ascii=False).encode())
    return plain if size <= c.MAX_EVENT_DECISION_INPUTS_BYTES else None


class HandlerBase:
    """What every use case of the promotion service reads; :class:`~stella.promotion.handlers.Handlers` sets it."""

    _pool: Callable[[], asyncpg.Pool]
    commands: CommandProcessor
    uow: PromotionUnitOfWork
    _client: Callable[[], ServiceClient]
    run_start_timeout: timedelta
    run_start_attempts: int
    registry: GateRegistry
    plugin_gates: PluginGates | None
    release_query_timeout_s: float
    default_workflow_template: str
    timer_batch_size: int
    timer_retry: timedelta
    clock: Callable[[], datetime]
    new_id: Callable[[], UUID]
    holds: DueLoop
    freezes: DueLoop
    runs: DueLoop

    async def _locked(self, store: PromotionStore, tenant: UUID, promotion_id: UUID) -> repo.StoredPromotion:
        stored = await store.get_promotion(tenant, promotion_id, lock=True)
        if stored is None:
            raise NotFound(f"promotion {promotion_id} does not exist")
        return stored

    def _changed(
        self,
        origin: Origin,
        view: c.PromotionView,
        events: Iterable[PromotionEvent],
        *,
        decision_inputs: Mapping[str, Any] | None = None,
    ) -> list[tuple[str, Message]]:
        """The published events of a transition, each carrying the promotion as it is now.

        ``decision_inputs`` are the inputs of the decision stored in this transaction (the one ``view``
        holds): an approval or rejection carries them, so its evidence is recorded without asking for them.
        """
        subjects = [subject for event in events if (subject := EVENT_SUBJECTS.get(type(event))) is not None]
        # Converted and measured only when a decision is announced (a hold or a withdrawal carries nothing).
        carried = inputs_to_carry(decision_inputs) if _DECISION_SUBJECTS.intersection(subjects) else None
        return [
            (
                subject,
                origin.make(
                    c.PromotionChanged,
                    promotion=view,
                    decision_inputs=carried if subject in _DECISION_SUBJECTS else None,
                ),
            )
            for subject in subjects
        ]

    @staticmethod
    def _completion(
        origin: Origin, step: w.StepRef, status: w.StepStatus, outputs: dict[str, Any], error: str | None
    ) -> tuple[str, Message]:
        return w.COMPLETE_STEP, step.completion(
            tenant_id=origin.tenant_id,
            correlation_id=origin.correlation_id,
            causation_id=origin.causation_id,
            status=status,
            outputs=outputs,
            error=error,
        )
