"""Use cases of the promotion service: load -> domain -> save + outbox, in one transaction.

Environments and their freeze windows are validated by the pure modules (``domain``, ``freeze``, ``gates``)
before anything is written. A promotion request asks the release service for the release first (outside any
transaction, so no connection waits on another service), then checks the order rule and creates the
promotion together with its ``promotion_requested`` event and the workflow ``StartRun`` command.

The workflow executes the promotion: its gate step arrives as :data:`EVALUATE_GATES`, which builds every
input of the decision, runs :func:`stella.promotion.decision.decide`, stores the record with those inputs,
moves the promotion and writes ``CompleteStep`` for the step, all in one transaction. The approval
service's decisions arrive as events and complete the approval step the same way, so the promotion's state
is always written before the workflow moves on.

Two timers sleep until their next due time instead of polling: the hold timer re-evaluates promotions held
by a closed window when it opens, and the freeze timer emits ``freeze_started`` / ``freeze_ended`` for each
window occurrence that opens or closes.

One module a use case: :mod:`.environments` (environments, freeze windows, scan results), :mod:`.promotions`
(request, cancel, read), :mod:`.gating` (gate decisions, overrides, approvals), :mod:`.queue` (the deploy
queue, workflow runs and deployment jobs) and :mod:`.timers`; the pure parts are in :mod:`.decisions`
(decision inputs), :mod:`.windows` (freeze windows) and :mod:`.messages` (origins, subjects, step results).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID, uuid4

import asyncpg

from stella.contracts.envelope import utcnow
from stella.kit.broker import CommandProcessor, ServiceClient
from stella.kit.timers import DueLoop
from stella.promotion.gates import GateRegistry, default_registry
from stella.promotion.handlers.messages import DEFAULT_WORKFLOW_TEMPLATE
from stella.promotion.handlers.promotions import PromotionHandlers
from stella.promotion.handlers.timers import TimerHandlers
from stella.promotion.plugin_gates import PluginGates
from stella.promotion.store import PostgresUnitOfWork, PromotionUnitOfWork


class Handlers(PromotionHandlers, TimerHandlers):
    """The promotion service's command, query and event handlers, and its three timers."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        commands: CommandProcessor,
        client: Callable[[], ServiceClient],
        *,
        registry: GateRegistry | None = None,
        plugin_gates: PluginGates | None = None,
        release_query_timeout_s: float = 5.0,
        default_workflow_template: str = DEFAULT_WORKFLOW_TEMPLATE,
        timer_batch_size: int = 100,
        timer_retry_s: float = 30.0,
        timer_max_sleep_s: float = 60.0,
        run_start_timeout_s: float = 60.0,
        run_start_attempts: int = 5,
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], UUID] = uuid4,
        uow: PromotionUnitOfWork | None = None,
    ) -> None:
        self._pool = pool
        self.commands = commands
        self.uow = uow or PostgresUnitOfWork(pool, commands)
        """Storage of the ``promotions`` use case (request, cancel, read); the others use the pool directly."""
        self._client = client
        self.run_start_timeout = timedelta(seconds=run_start_timeout_s)
        self.run_start_attempts = run_start_attempts
        self.registry = registry or default_registry()
        self.plugin_gates = plugin_gates
        self.release_query_timeout_s = release_query_timeout_s
        self.default_workflow_template = default_workflow_template
        self.timer_batch_size = timer_batch_size
        self.timer_retry = timedelta(seconds=timer_retry_s)
        self.clock = clock
        self.new_id = new_id
        self.holds = DueLoop(
            "promotion-holds", self.next_hold, self.run_holds, clock=clock, max_sleep_s=timer_max_sleep_s
        )
        self.freezes = DueLoop(
            "promotion-freezes",
            self.next_freeze_transition,
            self.run_freeze_transitions,
            clock=clock,
            max_sleep_s=timer_max_sleep_s,
        )
        self.runs = DueLoop(
            "promotion-runs", self.next_run_check, self.run_run_checks, clock=clock, max_sleep_s=timer_max_sleep_s
        )
        """The run watch: a promotion whose run never brought its gate step does not wait silently."""
