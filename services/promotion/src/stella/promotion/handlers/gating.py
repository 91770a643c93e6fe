"""Gate decisions and approvals: the workflow's gate step, freeze overrides, and the approval service's
requests and decisions, each completing the promotion's step in the transaction that moves it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from stella.contracts import approval as a
from stella.contracts import promotion as c
from stella.contracts import workflow as w
from stella.contracts.envelope import Message, Reply
from stella.kit.outbox import add_events
from stella.promotion import freeze, repo
from stella.promotion.decision import DecisionRecord, decide
from stella.promotion.domain.encoding import to_json_value
from stella.promotion.domain.errors import NotFound, PromotionNotPending
from stella.promotion.domain.events import PromotionEvent
from stella.promotion.domain.release import ApprovalSummary
from stella.promotion.domain.status import APPROVED_STATUSES, PromotionStatus
from stella.promotion.gates import PLUGIN_VERDICTS
from stella.promotion.handlers.decisions import (
    PluginVerdicts,
    approvals_document,
    decision_hash,
    decision_inputs,
    effective_gates,
    plugin_gates_of,
)
from stella.promotion.handlers.errors import NotFrozen
from stella.promotion.handlers.messages import Origin, gate_step_result, promotion_id_of
from stella.promotion.handlers.queue import DeployQueue
from stella.promotion.handlers.windows import closing_windows
from stella.promotion.store import PostgresStore

log = logging.getLogger(__name__)


class _PluginsToAsk(Exception):
    """A gate step found plugin gates to ask under the promotion's lock: roll back, ask them, run it again."""


class GateHandlers(DeployQueue):
    async def override_freeze(self, cmd: c.OverrideFreeze) -> Reply:
        """Let a promotion through the windows that close its environment now; a held one is decided at once."""

        async def execute(conn: asyncpg.Connection) -> object:
            stored = await self._locked(PostgresStore(conn), cmd.tenant_id, cmd.promotion_id)
            promotion = stored.promotion
            if promotion.status is not PromotionStatus.PENDING_GATE:
                raise PromotionNotPending(
                    f"promotion {promotion.id} is {promotion.status.value}; a freeze override applies to a "
                    "promotion waiting on its gates"
                )
            now = self.clock()
            windows = [
                s.window
                for s in await repo.windows_of_environment(conn, cmd.tenant_id, promotion.target_environment_id)
            ]
            state = freeze.environment_state(windows, now)
            if not state.closed:
                raise NotFrozen(
                    f"no freeze window closes environment {stored.target_environment_name!r} now; nothing to override"
                )
            override = freeze.FreezeOverride(
                principal=str(cmd.actor_id) if cmd.actor_id is not None else "",
                reason=cmd.reason,
                has_override_permission=cmd.may_override,
                at=now,
            )
            freeze.check_override(override, closing_windows(windows, state))
            stored.freeze_override = override.to_dict()
            if stored.gate_step is not None:
                await self._evaluate(conn, stored, now, "override", Origin.of(cmd))
            else:
                # The gate step has not arrived yet; its evaluation will include the override.
                promotion.updated_at = now
                promotion.version += 1
                await repo.update_promotion(conn, stored)
            return repo.promotion_view(stored).model_dump(mode="json")

        reply = await self.commands.run(cmd, execute)
        self.holds.wake()
        return reply

    async def evaluate_gates(self, cmd: w.ExecuteStep) -> Reply:
        """The workflow's gate step: decide the promotion's gates and complete the step when they decided.

        A promotion held by a closed window keeps the step open; the hold timer completes it when the
        window opens. An attempt arriving after the gates decided is answered from the stored decision.
        """
        step = w.StepRef(run_id=cmd.run_id, node_id=cmd.node_id, attempt=cmd.attempt)
        # The first attempt reads the inputs once, under the promotion's lock. Only when they name plugin gates
        # is it rolled back: the plugins are asked with no lock held, and the step runs again with their verdicts.
        asked: PluginVerdicts | None = None
        plugins_outside = True
        holds: list[datetime | None] = []  # when the promotion is re-evaluated next (held by a window)

        async def execute(conn: asyncpg.Connection) -> object:
            holds.clear()
            origin = Origin.of(cmd)
            promotion_id = promotion_id_of(cmd)
            stored = (
                await repo.get_promotion(conn, cmd.tenant_id, promotion_id, lock=True)
                if promotion_id is not None
                else None
            )
            if stored is None:
                error = f"gate step of run {cmd.run_id} names no promotion of this tenant ({promotion_id})"
                await add_events(
                    conn,
                    [self._completion(origin, step, w.StepStatus.FAILED, {"result": "deny"}, error)],
                )
                return {"step": step.model_dump(mode="json"), "status": "failed", "error": error}
            if stored.promotion.status is PromotionStatus.PENDING_GATE:
                stored.gate_step = step
                await self._evaluate(
                    conn, stored, self.clock(), "gates", origin, asked=asked, plugins_outside=plugins_outside
                )
            else:
                result = gate_step_result(stored.promotion)
                assert result is not None
                if stored.promotion.status is PromotionStatus.APPROVED:
                    await add_events(conn, await self._let_deploy(PostgresStore(conn), stored, step, result[1], origin))
                    await repo.update_promotion_at_commit(conn, stored)
                else:
                    await add_events(conn, [self._completion(origin, step, *result)])
            holds.append(stored.promotion.next_open)
            return {"promotion_id": str(stored.promotion.id), "status": stored.promotion.status.value}

        try:
            reply = await self.commands.run(cmd, execute)
        except _PluginsToAsk:
            asked = await self._ask_plugins_first(cmd.tenant_id, promotion_id_of(cmd))
            plugins_outside = False
            reply = await self.commands.run(cmd, execute)
        # A held promotion's next evaluation may be the earliest now; the timer reads it after the commit (only
        # when it may come before the timer's own next read).
        for at in holds:
            self.holds.wake_for(at)
        return reply

    async def _gate_inputs(
        self,
        conn: asyncpg.Connection,
        stored: repo.StoredPromotion,
        approvals: Mapping[str, Any],
        *,
        asked: PluginVerdicts | None = None,
        ask_plugins: bool = True,
        plugins_outside: bool = False,
    ) -> tuple[dict[str, Any], list[freeze.FreezeWindow]]:
        """Gather every input of the promotion's decision (current windows, gates, scans, plugin verdicts), and
        the environment's windows they were read from.

        Args:
            conn: The connection.
            stored: The promotion.
            approvals: The approvals document.
            asked: Plugin verdicts asked before the transaction opened; used when they were asked for exactly
                the plugin gates the promotion has now (else the plugins are asked again).
            ask_plugins: False leaves the plugin verdicts out (to learn which plugin gates to ask).
            plugins_outside: Plugin gates not in ``asked`` raise :class:`_PluginsToAsk` instead of being asked
                here, so the caller rolls back and asks them with no lock held.
        """
        p = stored.promotion
        view = await repo.get_environment(conn, p.tenant_id, p.target_environment_id)
        assert view is not None  # an environment with promotions cannot be deleted
        environment = repo.environment_of(view, p.tenant_id)
        windows = [s.window for s in await repo.windows_of_environment(conn, p.tenant_id, view.id)]
        digests = sorted({component["digest"] for component in stored.release_components})
        scans = await repo.scans_by_digest(conn, p.tenant_id, digests)
        gates = effective_gates(
            self.registry,
            environment.config.gates,
            p.required_approvals,
            has_allow_windows=any(x.kind is freeze.WindowKind.ALLOW for x in windows),
        )
        inputs = decision_inputs(stored, environment, windows, scans, approvals, gates)
        plugin_gates = plugin_gates_of(gates)
        if plugin_gates and ask_plugins:
            # Stored with the inputs: the decision replays from them without calling the plugins again.
            if asked is not None and asked.gates == plugin_gates:
                verdicts = asked.verdicts
            elif plugins_outside and self.plugin_gates is not None:
                raise _PluginsToAsk(p.id)
            else:
                verdicts = (
                    await self.plugin_gates.verdicts(p.tenant_id, gates, inputs)
                    if self.plugin_gates is not None
                    else {}
                )
            inputs[PLUGIN_VERDICTS] = to_json_value(verdicts)
        return inputs, windows

    async def _ask_plugins_first(self, tenant: UUID, promotion_id: UUID | None) -> PluginVerdicts | None:
        """Ask a pending promotion's gate plugins before its row is locked, so no lock waits on a plugin.

        Returns None when there is nothing to ask (no such promotion, not pending, no plugin gate).
        """
        if promotion_id is None or self.plugin_gates is None:
            return None
        async with self._pool().acquire() as conn:
            stored = await repo.get_promotion(conn, tenant, promotion_id)
            if stored is None or stored.promotion.status is not PromotionStatus.PENDING_GATE:
                return None
            approvals = approvals_document(stored.promotion.required_approvals)
            inputs, _ = await self._gate_inputs(conn, stored, approvals, ask_plugins=False)
        plugin_gates = plugin_gates_of(inputs["gates"])
        if not plugin_gates:
            return None
        return PluginVerdicts(plugin_gates, await self.plugin_gates.verdicts(tenant, inputs["gates"], inputs))

    async def _store_decision(
        self,
        conn: asyncpg.Connection,
        stored: repo.StoredPromotion,
        trigger: str,
        inputs: dict[str, Any],
        clock: datetime,
    ) -> DecisionRecord:
        record = decide(inputs, clock, registry=self.registry)
        decision_id = self.new_id()
        p = stored.promotion
        await repo.insert_decision_at_commit(
            conn, p.tenant_id, decision_id, p.id, trigger, inputs, clock, record, self.clock()
        )
        stored.decision_id = decision_id
        return record

    async def _evaluate(
        self,
        conn: asyncpg.Connection,
        stored: repo.StoredPromotion,
        now: datetime,
        trigger: str,
        origin: Origin,
        *,
        asked: PluginVerdicts | None = None,
        plugins_outside: bool = False,
    ) -> None:
        """Decide a pending promotion's gates now, move it, and complete its gate step when they decided."""
        p = stored.promotion
        inputs, windows = await self._gate_inputs(
            conn, stored, approvals_document(p.required_approvals), asked=asked, plugins_outside=plugins_outside
        )
        record = await self._store_decision(conn, stored, trigger, inputs, now)
        outcome = record.outcome()
        if p.awaits_approvals(outcome, now=now):
            # The gates allow, but votes can only be cast once the approval service has opened the request
            # (the workflow's next step). The promotion shows pending_approval from that moment on, so a
            # client never sees pending_approval while a vote would still be refused.
            p.decision = record.to_dict()
            p.status_message = "gates passed; opening the approval request"
            await repo.update_promotion_at_commit(conn, stored)
            if stored.gate_step is not None:
                outputs = {"result": "allow", "decision_hash": decision_hash(p.decision)}
                await add_events(
                    conn, [self._completion(origin, stored.gate_step, w.StepStatus.SUCCEEDED, outputs, None)]
                )
            return
        events = p.apply_gate_decision(outcome, now=now)
        result = gate_step_result(p)
        completions: list[tuple[str, Message]] = []
        if p.status is PromotionStatus.APPROVED and result is not None:
            # No approvals needed: the gate step is the last one before the deploy step. The deploy-start
            # check of the time windows reads the windows this decision was made from.
            completions = await self._let_deploy(
                PostgresStore(conn), stored, stored.gate_step, result[1], origin, windows=windows
            )
        elif result is not None and stored.gate_step is not None:
            completions = [self._completion(origin, stored.gate_step, *result)]
        # The last write of the promotion goes with the commit: the environment's deployment line, locked by
        # ``_let_deploy``, is held one round trip less.
        await repo.update_promotion_at_commit(conn, stored)
        changed = self._changed(origin, repo.promotion_view(stored), events, decision_inputs=inputs)
        await add_events(conn, [*changed, *completions])

    async def _open_approvals(self, conn: asyncpg.Connection, stored: repo.StoredPromotion, origin: Origin) -> None:
        """The approval request is open: apply the stored gate decision, moving the promotion to pending_approval."""
        p = stored.promotion
        latest = await repo.get_decision(conn, p.tenant_id, stored.decision_id) if stored.decision_id else None
        if p.status is not PromotionStatus.PENDING_GATE or latest is None:
            return
        outcome = DecisionRecord.from_dict(latest.record).outcome()
        if not p.awaits_approvals(outcome, now=latest.clock):
            return  # held by a window, or waiting on another gate: not the approvals' turn yet
        events = p.apply_gate_decision(outcome, now=self.clock())
        await repo.update_promotion(conn, stored)
        await add_events(conn, self._changed(origin, repo.promotion_view(stored), events))

    async def on_approval_requested(self, event: a.ApprovalChanged, conn: asyncpg.Connection) -> None:
        """The approval service opened the promotion's request: votes can be cast from now on."""
        stored = await repo.get_promotion(conn, event.tenant_id, event.request.promotion_id, lock=True)
        if stored is not None:
            await self._open_approvals(conn, stored, Origin.of(event))

    async def on_approval_decided(self, event: a.ApprovalChanged, conn: asyncpg.Connection) -> None:
        """The approval service decided: record the approvals, move the promotion, complete the approval step.

        Granted -> ``approved``; denied or expired -> ``rejected``. The decision record is recomputed from the
        gate decision's stored inputs with the approvals added, at that decision's clock reading: the time
        windows keep the answer they gave then (they are checked again when the deployment starts).
        """
        request = event.request
        origin = Origin.of(event)
        stored = await repo.get_promotion(conn, event.tenant_id, request.promotion_id, lock=True)
        if stored is not None:
            # The decision may be handled before the request's opening (events are handled concurrently).
            await self._open_approvals(conn, stored, origin)
        if stored is None:
            log.warning("approval decision for an unknown promotion", extra={"promotion_id": str(request.promotion_id)})
        elif stored.promotion.status is PromotionStatus.PENDING_APPROVAL:
            await self._apply_approvals(conn, stored, request, origin)
        if request.step is None:
            return
        outputs = {
            "result": request.status.value,
            "approvals": approvals_document(request.required, request.votes)["granted"],
        }
        if stored is not None and stored.promotion.status is PromotionStatus.APPROVED:
            # The approval step is the last one before the deploy step: it completes when the slot is free.
            held = await self._let_deploy(PostgresStore(conn), stored, request.step, outputs, origin)
            await repo.update_promotion(conn, stored)
            await add_events(conn, held)
            return
        if stored is not None and stored.promotion.status in APPROVED_STATUSES:
            completion = self._completion(origin, request.step, w.StepStatus.SUCCEEDED, outputs, None)
        else:
            state = stored.promotion.status.value if stored is not None else "unknown"
            completion = self._completion(
                origin,
                request.step,
                w.StepStatus.FAILED,
                outputs,
                f"approval {request.status.value}; promotion {request.promotion_id} is {state}",
            )
        await add_events(conn, [completion])

    async def _apply_approvals(
        self, conn: asyncpg.Connection, stored: repo.StoredPromotion, request: a.ApprovalRequestView, origin: Origin
    ) -> None:
        p = stored.promotion
        now = self.clock()
        approvals = approvals_document(max(request.required, p.required_approvals), request.votes)
        latest = await repo.get_decision(conn, p.tenant_id, stored.decision_id) if stored.decision_id else None
        if latest is not None:
            inputs, clock = {**latest.inputs, "approvals": approvals}, latest.clock
        else:
            inputs, _ = await self._gate_inputs(conn, stored, approvals)
            clock = now
        inputs = to_json_value(inputs)
        record = await self._store_decision(conn, stored, "approvals", inputs, clock)
        p.decision = record.to_dict()
        events: list[PromotionEvent]
        if request.status is a.ApprovalStatus.GRANTED:
            summary = ApprovalSummary(required=request.required, granted=approvals["granted"], rejected=0)
            events = p.record_approvals(summary, now=now)
            if not events:
                log.warning(
                    "the approval service granted a promotion that still lacks approvals",
                    extra={"promotion_id": str(p.id), "granted": approvals["granted"]},
                )
        elif request.status is a.ApprovalStatus.DENIED:
            summary = ApprovalSummary(
                required=request.required, granted=approvals["granted"], rejected=max(1, approvals["rejected"])
            )
            events = p.record_approvals(summary, now=now)
        elif request.status is a.ApprovalStatus.EXPIRED:
            # The approval service enforces the timeout; its deadline is the one that passed.
            if p.approval_deadline is None or request.expires_at < p.approval_deadline:
                p.approval_deadline = request.expires_at
            events = p.expire_approvals(now=max(now, p.approval_deadline))
        else:
            # Withdrawn: only this service withdraws a request, when it cancels the promotion.
            events = []
        await repo.update_promotion(conn, stored)
        await add_events(conn, self._changed(origin, repo.promotion_view(stored), events, decision_inputs=inputs))

    async def get_decision(self, q: c.GetDecision) -> Reply:
        """A promotion's latest decision with the inputs it was computed from."""
        async with self._pool().acquire() as conn:
            stored = await repo.get_promotion(conn, q.tenant_id, q.promotion_id)
            if stored is None:
                raise NotFound(f"promotion {q.promotion_id} does not exist")
            latest = await repo.get_decision(conn, q.tenant_id, stored.decision_id) if stored.decision_id else None
        if latest is None:
            raise NotFound(f"promotion {q.promotion_id} has no decision yet; its gates have not been evaluated")
        view = c.DecisionView(
            promotion_id=q.promotion_id,
            trigger=latest.trigger,
            evaluated_at=latest.clock,
            inputs=latest.inputs,
            record=latest.record,
        )
        return Reply.success(view.model_dump(mode="json"))
