"""Use cases of the approval service: load -> domain -> save + outbox, in one transaction.

A request is opened by the workflow's approval step, voted on by principals through the gateway, closed
when its promotion is cancelled, and expired by a timer. Every decision is announced with the request's
view, which names the waiting workflow step: the promotion service, which consumes the decision, completes
that step after updating the promotion.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID, uuid5

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

from stella.approval import domain, repo
from stella.approval.repo import StoredRequest
from stella.contracts.approval import (
    APPROVAL_DENIED,
    APPROVAL_GRANTED,
    APPROVAL_REQUESTED,
    VOTE_CAST,
    ApprovalChanged,
    CancelApprovals,
    CastVote,
    GetApprovals,
)
from stella.contracts.envelope import Message, Reply, utcnow
from stella.contracts.workflow import COMPLETE_STEP, ExecuteStep, StepRef, StepStatus
from stella.kit.broker import CommandProcessor
from stella.kit.errors import Conflict
from stella.kit.outbox import add_events

CANCELLATION_REASON: Final = "the promotion was cancelled"
"""Why a request closed by :data:`~stella.contracts.approval.CANCEL_APPROVALS` was withdrawn."""

_MESSAGE_IDS: Final = UUID("6d0f3c52-8f3e-4b0e-9d55-0a4f2f1c7e21")
"""Namespace of the name-based ids of messages a retry could otherwise write twice."""

_SUBJECTS: Final[dict[type[domain.ApprovalEvent], str]] = {
    domain.ApprovalRequested: APPROVAL_REQUESTED,
    domain.VoteCast: VOTE_CAST,
    domain.ApprovalGranted: APPROVAL_GRANTED,
    domain.ApprovalDenied: APPROVAL_DENIED,
    # A withdrawn request is a denial to whoever waits on it; the view's status says ``cancelled``.
    domain.ApprovalCancelled: APPROVAL_DENIED,
}


class AlreadyVoted(Conflict):
    """The principal cast this very vote before; nothing changes and the caller is told so."""

    code = "PROM_ALREADY_VOTED"
    title = "Vote already recorded"


# ---------------------------------------------------------------------------------------------------------
# Pure parts: reading the step's inputs, opening a request, naming the events
# ---------------------------------------------------------------------------------------------------------


class StepInputs(BaseModel):
    """What the approval step needs from the run's inputs (the promotion's approval policy).

    The run carries more (``release_id``, ``approval_required``...), which is ignored here.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    promotion_id: UUID
    environment_id: UUID
    requested_by: UUID
    required_approvals: StrictInt = Field(ge=0, le=domain.MAX_REQUIRED_APPROVALS)
    require_sod: StrictBool
    approver_groups: list[str] = Field(default_factory=list, max_length=100)
    approval_timeout_s: StrictInt | None = Field(default=None, ge=1, le=365 * 24 * 3600)
    """The environment's approval timeout; the service's default when absent."""

    @field_validator("approver_groups", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


def _timeout_of(inputs: StepInputs, default: timedelta) -> timedelta:
    """The request's lifetime: the environment's approval timeout when the run carries one."""
    return timedelta(seconds=inputs.approval_timeout_s) if inputs.approval_timeout_s is not None else default


def parse_step_inputs(cmd: ExecuteStep) -> StepInputs:
    """Read the approval policy from an approval step's resolved inputs.

    ``ExecuteStep.inputs`` is the workflow's resolved step context ``{"inputs": run inputs, "steps": {...}}``.

    Raises:
        domain.InvalidApprovalRequest: when the run inputs are missing, malformed, or name another subject.
    """
    run_inputs = cmd.inputs.get("inputs")
    if not isinstance(run_inputs, dict):
        raise domain.InvalidApprovalRequest("the approval step's inputs carry no run inputs ('inputs' object)")
    try:
        parsed = StepInputs.model_validate(run_inputs)
    except ValidationError as exc:
        errors = [{"loc": ["inputs", *e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        fields = ", ".join(".".join(str(p) for p in e["loc"][1:]) for e in errors)
        raise domain.InvalidApprovalRequest(
            f"the approval step's run inputs are invalid: {fields}", errors=errors
        ) from None
    if cmd.subject_id is not None and cmd.subject_id != parsed.promotion_id:
        raise domain.InvalidApprovalRequest(
            f"the run's subject {cmd.subject_id} is not the promotion {parsed.promotion_id} it asks approvals for"
        )
    return parsed


def open_request(
    inputs: StepInputs, tenant_id: UUID, now: datetime, timeout: timedelta, *, cancelled: str | None = None
) -> domain.ApprovalResult:
    """Open a promotion's request from the step inputs.

    A policy that requires no approval is granted at once (the domain only opens requests that need some),
    so whoever waits on the step is answered without a vote. A promotion cancelled before the step started
    (``cancelled`` is the reason) gets a request that is withdrawn at once.

    Raises:
        domain.InvalidApprovalRequest: for an out-of-range policy.
    """
    if inputs.required_approvals == 0:
        granted = domain.ApprovalRequest(
            promotion_id=inputs.promotion_id,
            tenant_id=tenant_id,
            environment_id=inputs.environment_id,
            requester_id=inputs.requested_by,
            required=0,
            require_sod=inputs.require_sod,
            requested_at=now,
            eligible_groups=frozenset(inputs.approver_groups),
            timeout=timeout,
            status=domain.ApprovalStatus.GRANTED,
            decided_at=now,
        )
        result = domain.ApprovalResult(
            request=granted,
            events=(
                domain.ApprovalRequested(
                    promotion_id=granted.promotion_id,
                    tenant_id=tenant_id,
                    environment_id=granted.environment_id,
                    at=now,
                    requester_id=granted.requester_id,
                    required=0,
                    require_sod=granted.require_sod,
                    eligible_groups=tuple(sorted(granted.eligible_groups)),
                    expires_at=granted.expires_at,
                ),
                domain.ApprovalGranted(
                    promotion_id=granted.promotion_id,
                    tenant_id=tenant_id,
                    environment_id=granted.environment_id,
                    at=now,
                    summary=domain.summarize(granted),
                ),
            ),
        )
    else:
        result = domain.request_approval(
            promotion_id=inputs.promotion_id,
            tenant_id=tenant_id,
            environment_id=inputs.environment_id,
            requester_id=inputs.requested_by,
            required=inputs.required_approvals,
            require_sod=inputs.require_sod,
            now=now,
            eligible_groups=inputs.approver_groups,
            timeout=timeout,
        )
    if cancelled is None:
        return result
    withdrawn = domain.cancel(result.request, now, cancelled)
    return domain.ApprovalResult(request=withdrawn.request, events=(*result.events, *withdrawn.events))


def voter(cmd: CastVote) -> domain.Principal:
    """The voting principal: the command's actor with the permissions and groups the gateway resolved.

    Role bindings are tenant-wide, so every permission the gateway passes holds on every environment.

    Raises:
        domain.InvalidVote: when the command names no actor.
    """
    if cmd.actor_id is None:
        raise domain.InvalidVote("a vote must name the principal who casts it (actor_id)")
    return domain.Principal.of(
        cmd.actor_id,
        cmd.tenant_id,
        cmd.permissions,
        groups=cmd.groups,
        name=cmd.actor_name,
        display_name=cmd.actor_display_name,
    )


def subject_of(event: domain.ApprovalEvent) -> str:
    """The subject a domain event is published on."""
    return _SUBJECTS[type(event)]


def _not_newer(step: StepRef, current: StepRef) -> bool:
    """Whether ``step`` is ``current`` or an earlier attempt of the same run's node."""
    return (step.run_id, step.node_id) == (current.run_id, current.node_id) and step.attempt <= current.attempt


def _decision_subject(status: domain.ApprovalStatus) -> str:
    return APPROVAL_GRANTED if status is domain.ApprovalStatus.GRANTED else APPROVAL_DENIED


# ---------------------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------------------


class Handlers:
    """The approval service's command, query and timer handlers."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        commands: CommandProcessor,
        *,
        approval_timeout: timedelta = domain.DEFAULT_APPROVAL_TIMEOUT,
        expiry_batch_size: int = 100,
        clock: Callable[[], datetime] = utcnow,
        on_scheduled: Callable[[], None] = lambda: None,
    ) -> None:
        self._pool = pool
        self.commands = commands
        self.approval_timeout = approval_timeout
        self.expiry_batch_size = expiry_batch_size
        self.clock = clock
        self.on_scheduled = on_scheduled

    async def _emit(
        self, conn: asyncpg.Connection, source: Message, stored: StoredRequest, subjects: Sequence[str]
    ) -> None:
        """Announce the request's current view on each subject, in the caller's transaction."""
        view = repo.request_view(stored)
        await add_events(conn, [(subject, source.caused(ApprovalChanged, request=view)) for subject in subjects])

    # --- opening -------------------------------------------------------------------------------------------

    async def request_approvals(self, cmd: ExecuteStep) -> Reply:
        """Open the approval request of the step's promotion (the workflow's ``approval`` step).

        Idempotent per promotion: opening it again returns the request as it is. A later attempt of the
        step takes over the request (its decision completes that attempt), and an attempt that arrives after
        the decision is told the decision again. Invalid inputs fail the step at once: no request could
        ever complete it.
        """
        step = StepRef(run_id=cmd.run_id, node_id=cmd.node_id, attempt=cmd.attempt)

        async def execute(conn: asyncpg.Connection) -> object:
            now = self.clock()
            try:
                inputs = parse_step_inputs(cmd)
                opened = open_request(inputs, cmd.tenant_id, now, _timeout_of(inputs, self.approval_timeout))
            except domain.InvalidApprovalRequest as exc:
                return await self._fail_step(conn, cmd, exc)
            await repo.lock_promotion(conn, cmd.tenant_id, inputs.promotion_id)
            existing = await repo.get_request(conn, cmd.tenant_id, inputs.promotion_id, lock=True)
            if existing is not None:
                return await self._reopen(conn, cmd, existing, step, now)
            reason = await repo.cancellation_of(conn, cmd.tenant_id, inputs.promotion_id)
            if reason is not None:
                opened = open_request(
                    inputs, cmd.tenant_id, now, _timeout_of(inputs, self.approval_timeout), cancelled=reason
                )
            stored = StoredRequest(request=opened.request, step=step, correlation_id=cmd.correlation_id)
            await repo.insert_request(conn, stored, now)
            await self._emit(conn, cmd, stored, [subject_of(e) for e in opened.events])
            return repo.request_view(stored).model_dump(mode="json")

        reply = await self.commands.run(cmd, execute)
        self.on_scheduled()  # a new pending request may expire before the one the timer waits for
        return reply

    async def _reopen(
        self, conn: asyncpg.Connection, cmd: ExecuteStep, existing: StoredRequest, step: StepRef, now: datetime
    ) -> object:
        if existing.step is not None and _not_newer(step, existing.step):
            # The same attempt again, or an older one delivered late: the request stays with its attempt.
            return repo.request_view(existing).model_dump(mode="json")
        moved = replace(existing, step=step)
        await repo.set_outcomes(conn, [moved], now)
        if existing.request.status.is_terminal:
            # The decision was announced for an earlier attempt; this attempt waits for it too.
            await self._emit(conn, cmd, moved, [_decision_subject(moved.request.status)])
        return repo.request_view(moved).model_dump(mode="json")

    async def _fail_step(
        self, conn: asyncpg.Connection, cmd: ExecuteStep, exc: domain.InvalidApprovalRequest
    ) -> dict[str, Any]:
        """Fail the step attempt whose inputs cannot open a request, so the run does not wait for nothing."""
        complete = cmd.complete(StepStatus.FAILED, outputs={"result": "error", "code": exc.code}, error=exc.detail)
        await add_events(conn, [(COMPLETE_STEP, complete)])
        return {"step": cmd.step.model_dump(mode="json"), "status": StepStatus.FAILED.value, "error": exc.as_problem()}

    # --- voting --------------------------------------------------------------------------------------------

    async def cast_vote(self, cmd: CastVote) -> Reply:
        """Record a principal's approval or rejection and decide the request when it settles it.

        The request row is locked for the transaction, so concurrent votes are applied one after the other
        and each sees the votes before it.
        """

        async def execute(conn: asyncpg.Connection) -> object:
            principal = voter(cmd)
            stored = await repo.get_request(conn, cmd.tenant_id, cmd.promotion_id, lock=True)
            if stored is None:
                raise domain.ApprovalNotFound(f"no approval request for promotion {cmd.promotion_id}")
            now = self.clock()
            result = domain.vote(stored.request, principal, cmd.action.value, cmd.comment, now)
            if not result.changed:
                raise AlreadyVoted(
                    f"principal {principal.id} already {cmd.action.value} promotion {cmd.promotion_id}; "
                    "a principal votes once"
                )
            cast = result.request.vote_of(principal.id)
            assert cast is not None  # a changed result recorded this principal's vote
            await repo.insert_vote(conn, cmd.tenant_id, cmd.promotion_id, cast)
            updated = replace(stored, request=result.request)
            if result.request.status is not stored.request.status:
                await repo.set_outcomes(conn, [updated], now)
            await self._emit(conn, cmd, updated, [subject_of(e) for e in result.events])
            return repo.request_view(updated).model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    # --- cancelling ----------------------------------------------------------------------------------------

    async def cancel_approvals(self, cmd: CancelApprovals) -> Reply:
        """Withdraw a promotion's pending request; it takes no more votes.

        A decided request keeps its outcome. When the request does not exist yet (the cancellation overtook
        the approval step), the cancellation is remembered and the request opens withdrawn; the reply data
        is then null.
        """

        async def execute(conn: asyncpg.Connection) -> object:
            now = self.clock()
            await repo.lock_promotion(conn, cmd.tenant_id, cmd.promotion_id)
            stored = await repo.get_request(conn, cmd.tenant_id, cmd.promotion_id, lock=True)
            if stored is None:
                await repo.record_cancellation(conn, cmd.tenant_id, cmd.promotion_id, CANCELLATION_REASON, now)
                return None
            result = domain.cancel(stored.request, now, CANCELLATION_REASON)
            updated = replace(stored, request=result.request)
            if result.changed:
                await repo.set_outcomes(conn, [updated], now)
                await self._emit(conn, cmd, updated, [subject_of(e) for e in result.events])
            return repo.request_view(updated).model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    # --- queries -------------------------------------------------------------------------------------------

    async def get_approvals(self, q: GetApprovals) -> Reply:
        """A promotion's approval request and its votes."""
        async with self._pool().acquire() as conn:
            stored = await repo.get_request(conn, q.tenant_id, q.promotion_id)
        if stored is None:
            raise domain.ApprovalNotFound(f"no approval request for promotion {q.promotion_id}")
        return Reply.success(repo.request_view(stored).model_dump(mode="json"))

    # --- expiry timer --------------------------------------------------------------------------------------

    async def next_expiry(self) -> datetime | None:
        """When the next pending request expires (the timer sleeps until then)."""
        async with self._pool().acquire() as conn:
            return await repo.next_expiry(conn)

    async def expire_due(self, now: datetime) -> int:
        """Expire every pending request whose time has come, a batch per transaction; returns how many.

        Safe on several replicas at once: due rows are locked with ``SKIP LOCKED``, so each is expired once.
        """
        total = 0
        while True:
            async with self._pool().acquire() as conn, conn.transaction():
                due = await repo.lock_due(conn, now, self.expiry_batch_size)
                expired: list[StoredRequest] = []
                events: list[tuple[str, ApprovalChanged]] = []
                for stored in due:
                    result = domain.expire(stored.request, now)
                    if not result.changed:
                        continue
                    updated = replace(stored, request=result.request)
                    expired.append(updated)
                    view = repo.request_view(updated)
                    tenant, promotion = updated.key
                    events.extend(
                        (
                            subject_of(event),
                            ApprovalChanged(
                                message_id=uuid5(_MESSAGE_IDS, f"{tenant}:{promotion}:{event.name}:expired"),
                                tenant_id=tenant,
                                correlation_id=updated.correlation_id,
                                request=view,
                            ),
                        )
                        for event in result.events
                    )
                await repo.set_outcomes(conn, expired, now)
                await add_events(conn, events)
            total += len(expired)
            if len(due) < self.expiry_batch_size or not expired:
                break
        if total == 0:
            # Due rows exist but another transaction (a vote, another replica's timer) holds them: yield
            # briefly instead of re-reading the same due time in a tight loop until it commits.
            await asyncio.sleep(0.05)
        return total
