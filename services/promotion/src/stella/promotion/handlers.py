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
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar
from uuid import UUID, uuid4, uuid5

import asyncpg

from stella.contracts import approval as a
from stella.contracts import deployment as d
from stella.contracts import promotion as c
from stella.contracts import workflow as w
from stella.contracts.envelope import Command, Message, Page, Reply, utcnow
from stella.contracts.release import GET_RELEASE, GetRelease, ReleaseView
from stella.kit.asking import ask
from stella.kit.broker import CommandProcessor, ServiceClient
from stella.kit.errors import Conflict, ServiceError, Unavailable, error_detail
from stella.kit.faults import is_transient
from stella.kit.outbox import add_events
from stella.kit.timers import DueLoop
from stella.promotion import domain, freeze, repo
from stella.promotion.decision import DecisionRecord, decide
from stella.promotion.gates import PLUGIN_GATE_TYPE, PLUGIN_VERDICTS, GateRegistry, default_registry
from stella.promotion.plugin_gates import PluginGates

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

_NAMESPACE: Final = UUID("0b8f3c52-7d1e-4a9b-9e57-2c4f6a1d8e30")
"""Namespace of this service's name-based message ids (step completions, freeze transitions)."""

DEFAULT_WORKFLOW_TEMPLATE: Final = "standard-promotion"
"""Template of promotions whose environment's policy names none."""

_POLICY_KEYS: Final = frozenset({"workflow_template", "approver_groups"})
_TEMPLATE_NAME: Final = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")
_BUILTIN_WINDOW_GATES: Final = ("freeze-window", "schedule")

_EVENT_SUBJECTS: Final[Mapping[type[domain.PromotionEvent], str]] = {
    domain.PromotionRequested: c.PROMOTION_REQUESTED,
    domain.PromotionApproved: c.PROMOTION_APPROVED,
    domain.PromotionRejected: c.PROMOTION_REJECTED,
    domain.PromotionCancelled: c.PROMOTION_CANCELLED,
    domain.PromotionStarted: c.PROMOTION_STARTED,
    domain.PromotionCompleted: c.PROMOTION_COMPLETED,
    domain.PromotionFailed: c.PROMOTION_FAILED,
    domain.PromotionRolledBack: c.PROMOTION_ROLLED_BACK,
}
"""The published event of each domain event; the others (approval required) are not published: the
workflow's approval step is what asks for approvals."""


# ---------------------------------------------------------------------------------------------------------
# Errors of this layer (the domain's own errors are reported as they are)
# ---------------------------------------------------------------------------------------------------------


class EnvironmentNameTaken(Conflict):
    """Another environment of the tenant has the name."""

    code = "RES_DUPLICATE_NAME"
    title = "Name already in use"


class EnvironmentInUse(Conflict):
    """Promotions reference the environment; it cannot be deleted."""

    code = "ENV_IN_USE"
    title = "Environment is used by promotions"


class FreezeWindowNotFound(ServiceError):
    """No such window on the environment."""

    code = "ENV_FREEZE_WINDOW_NOT_FOUND"
    status = 404
    title = "Freeze window not found"


class NotFrozen(Conflict):
    """A freeze override was given while no window closes the environment."""

    code = "GATE_NOT_FROZEN"
    title = "Nothing to override"


class UnknownWorkflowTemplate(ServiceError):
    """The environment's promotion policy names a workflow template the tenant does not have."""

    code = "ENV_WORKFLOW_TEMPLATE_UNKNOWN"
    status = 422
    title = "Unknown workflow template"


class UnsuitableWorkflowTemplate(ServiceError):
    """The environment's promotion policy names a template that cannot run its promotions."""

    code = "ENV_WORKFLOW_TEMPLATE_UNSUITABLE"
    status = 422
    title = "Workflow template cannot run promotions"


class WorkflowServiceUnavailable(Unavailable):
    """The workflow service did not answer whether an environment's template can run promotions."""

    code = "PROM_WORKFLOW_SERVICE_UNAVAILABLE"
    title = "Workflow service unavailable"


class ReleaseServiceUnavailable(Unavailable):
    """The release service did not answer a promotion request's release query."""

    code = "PROM_RELEASE_SERVICE_UNAVAILABLE"
    title = "Release service unavailable"


# ---------------------------------------------------------------------------------------------------------
# Pure parts: validation, decision inputs, step results
# ---------------------------------------------------------------------------------------------------------


def validate_promotion_policy(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate an environment's ``promotion_policy`` and return its normalised form.

    Keys: ``workflow_template`` (the template its promotions run; default standard-promotion) and
    ``approver_groups`` (groups whose members may approve; empty: anyone with the permission).

    Raises:
        domain.InvalidEnvironment: listing every invalid field.
    """
    problems: list[dict[str, Any]] = []
    for key in sorted(set(raw) - _POLICY_KEYS):
        problems.append({"loc": ["promotion_policy", key], "msg": "unknown field"})
    policy: dict[str, Any] = {}
    template = raw.get("workflow_template")
    if template is not None:
        if not isinstance(template, str) or not _TEMPLATE_NAME.match(template):
            problems.append({"loc": ["promotion_policy", "workflow_template"], "msg": "must be a template name"})
        else:
            policy["workflow_template"] = template
    groups = raw.get("approver_groups", [])
    if (
        not isinstance(groups, list)
        or len(groups) > 100
        or not all(isinstance(g, str) and 0 < len(g) <= 200 for g in groups)
    ):
        problems.append(
            {"loc": ["promotion_policy", "approver_groups"], "msg": "must be a list of at most 100 group names"}
        )
    else:
        policy["approver_groups"] = sorted(set(groups))
    if problems:
        raise domain.InvalidEnvironment(
            "; ".join(".".join(map(str, p["loc"])) + ": " + p["msg"] for p in problems), errors=problems
        )
    return policy


def validate_environment(registry: GateRegistry, environment: domain.Environment) -> domain.Environment:
    """Validate the environment's gates through the gate registry and return it with their defaults filled in.

    Raises:
        gates.UnknownGateType, gates.InvalidGateConfig, policy.PolicySyntaxError: a gate is invalid.
    """
    gates = tuple(g.to_dict() for g in registry.validate(environment.config.gates))
    # Only the gates change: every other field (the deployment strategy too) is kept as validated.
    return environment.updated(config=dataclasses.replace(environment.config, gates=gates))


def window_from_spec(
    spec: c.FreezeWindowSpec, window_id: UUID, created_by: UUID | None, now: datetime | None = None
) -> freeze.FreezeWindow:
    """Validate a client's window with the freeze module.

    A recurring window anchors its occurrences at ``dtstart``; ``start`` stands in for it when only
    ``start`` is given, since the reference describes windows as ``start`` with ``end`` or with ``rrule``.
    With neither, ``dtstart`` is :func:`freeze.default_dtstart`: local midnight of the creation day, moved
    back by whole periods so that an occurrence already running when the window is created belongs to it
    (a rule with ``COUNT`` needs an explicit ``dtstart``). Given ``now``, a window with no occurrence ending
    after it (``UNTIL`` or ``end`` in the past) is refused: it would never apply.

    Raises:
        freeze.InvalidFreezeWindow: or a subclass (bad RRULE, unknown time zone, bounds, duration, schedule,
            a window that never applies).
    """
    raw: dict[str, Any] = {
        "id": str(window_id),
        "kind": spec.kind,
        "timezone": spec.timezone,
        "reason": spec.reason,
        "created_by": str(created_by) if created_by else "",
        "exceptions": [str(p) for p in spec.exceptions],
    }
    start: Any = spec.start
    dtstart: Any = spec.dtstart
    if spec.rrule is not None and dtstart is None and start is not None:
        start, dtstart = None, start
    if spec.rrule is not None and dtstart is None and now is not None and spec.duration_s is not None:
        duration = timedelta(seconds=min(spec.duration_s, freeze.MAX_DURATION.total_seconds()))
        dtstart = freeze.default_dtstart(spec.rrule, spec.timezone, duration, now).isoformat()
    optional = {
        "start": start,
        "end": spec.end,
        "rrule": spec.rrule,
        "dtstart": dtstart,
        "duration": _duration(spec.duration_s),
    }
    raw.update({k: v for k, v in optional.items() if v is not None})
    window = freeze.parse_window(raw)
    if now is not None and not window.applies_after(now):
        raise freeze.WindowNeverApplies(
            f"window {window.id!r} has no occurrence that ends after now ({domain.format_utc(now)}): "
            "its end or UNTIL is in the past, or its COUNT is used up"
        )
    return window


def _duration(seconds: float | None) -> int | timedelta | None:
    if seconds is None:
        return None
    # Whole seconds go in as an integer; anything else is left for the freeze module to refuse clearly.
    return int(seconds) if float(seconds).is_integer() else timedelta(seconds=seconds)


def active_occurrence(window: freeze.FreezeWindow, now: datetime) -> tuple[datetime, datetime] | None:
    """The occurrence of ``window`` that covers ``now``, if any."""
    covering = [(s, e) for s, e in window.occurrences(now, now + timedelta(microseconds=1)) if s <= now < e]
    return covering[0] if covering else None


def next_transition_after(window: freeze.FreezeWindow, after: datetime) -> datetime | None:
    """When the freeze timer must look at ``window`` next; None once it can never open or close again.

    Past the search horizon the window is looked at again at the horizon, so a sparse rule (or a one-off
    window more than 400 days ahead) is not forgotten.
    """
    found = freeze.next_transition([window], after)
    if found is not None:
        return found
    if window.is_recurring or (window.end is not None and window.end > after):
        return after + freeze.SEARCH_HORIZON
    return None


def occurrence_key(window: freeze.FreezeWindow, start: datetime) -> str:
    """The freeze module's key of one occurrence of a window."""
    return f"{window.id}@{domain.format_utc(start)}"


def required_approvals_for(environment: domain.Environment) -> int:
    """Approvals a promotion into ``environment`` needs: the environment's count or an approval gate's, if larger."""
    gate_counts = [
        g.get("config", {}).get("required", 0) for g in environment.config.gates if g.get("type") == "approval"
    ]
    return max([environment.required_approvals, *(n for n in gate_counts if isinstance(n, int))])


def effective_gates(
    registry: GateRegistry,
    configured: Iterable[Mapping[str, Any]],
    required_approvals: int,
    *,
    has_allow_windows: bool,
) -> list[dict[str, Any]]:
    """The gates a promotion is decided by: the environment's, plus the built-in ones it does not configure.

    The freeze-window gate always applies, the schedule gate when the environment has deployment (allow)
    windows, the approval gate when approvals are required (so the record shows them). An environment may
    configure any of them itself to change its settings.
    """
    gates = [dict(g) for g in configured]
    present = {g["type"] for g in gates}
    builtin = [t for t in ("freeze-window", "schedule") if t not in present]
    if not has_allow_windows:
        builtin = [t for t in builtin if t != "schedule"]
    if required_approvals > 0 and domain.APPROVAL_GATE_TYPE not in present:
        builtin.append(domain.APPROVAL_GATE_TYPE)
    return [g.to_dict() for g in registry.validate({"type": t, "name": t} for t in builtin)] + gates


def approvals_document(required: int, votes: Sequence[a.VoteView] = ()) -> dict[str, Any]:
    """The ``approvals`` input of a decision: counts of distinct principals and every vote."""
    granted = {v.approver_id for v in votes if v.action is a.VoteAction.APPROVED}
    rejected = {v.approver_id for v in votes if v.action is a.VoteAction.REJECTED}
    return {
        "required": required,
        "granted": len(granted),
        "rejected": len(rejected),
        "entries": [
            {"approver": str(v.approver_id), "action": v.action.value, "at": v.at, "comment": v.comment} for v in votes
        ],
    }


def scan_document(scan: c.ScanResultView) -> dict[str, Any]:
    """A stored scan verdict in the shape the security gate reads."""
    return {
        "critical": scan.critical,
        "high": scan.high,
        "medium": scan.medium,
        "low": scan.low,
        "epss_max": scan.max_epss,
        "kev": 1 if scan.kev else 0,
        "scanner": scan.scanner,
        "scanned_at": scan.scanned_at,
    }


def overrides_document(override: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The ``overrides`` input: a freeze override lifts the freeze-window and the schedule gate."""
    if override is None:
        return []
    return [{"gate": gate, **override} for gate in _BUILTIN_WINDOW_GATES]


def decision_inputs(
    stored: repo.StoredPromotion,
    environment: domain.Environment,
    windows: Sequence[freeze.FreezeWindow],
    scans: Mapping[str, c.ScanResultView],
    approvals: Mapping[str, Any],
    gates: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Every input of a promotion's decision, as plain JSON (what is stored and replayed).

    The environment's approval settings are the promotion's (copied when it was requested), so an edit of
    the environment cannot ask a promotion in flight for more approvals than its approval step collects.
    """
    p = stored.promotion
    digests = sorted({component["digest"] for component in stored.release_components})
    document = {
        "promotion": {
            "id": p.id,
            "release_id": p.release_id,
            "source_environment_id": p.source_environment_id,
            "target_environment_id": p.target_environment_id,
            "requested_by": p.requested_by,
            "requested_at": p.requested_at,
            "reason": stored.reason,
        },
        "release": {"id": p.release_id, "name": stored.release_name, "components": stored.release_components},
        "environment": {
            **environment.to_dict(),
            "required_approvals": p.required_approvals,
            "require_sod": p.require_sod,
        },
        "freeze_windows": [window.to_dict() for window in sorted(windows, key=lambda x: x.id)],
        "gates": list(gates),
        "security": {"scans": {d: scan_document(scans[d]) for d in digests if d in scans}},
        "approvals": dict(approvals),
        "overrides": overrides_document(stored.freeze_override),
        "manual_confirmations": [],
    }
    return domain.to_json_value(document)


@dataclass(frozen=True)
class PluginVerdicts:
    """Verdicts of gate plugins asked before a transaction, and the plugin gates they were asked for."""

    gates: list[dict[str, Any]]
    verdicts: dict[str, Any]


def plugin_gates_of(gates: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ``plugin`` gates among a promotion's effective gates (the ones whose verdicts are asked)."""
    return [dict(g) for g in gates if g.get("type") == PLUGIN_GATE_TYPE]


def decision_hash(record: Mapping[str, Any]) -> str:
    """``sha256:`` of the canonical JSON of a decision record."""
    return domain.sha256_digest(record)


def gate_step_result(promotion: domain.Promotion) -> tuple[w.StepStatus, dict[str, Any], str | None] | None:
    """What the gate step reports for the promotion's state; None while the gates have not decided."""
    status = promotion.status
    if status is domain.PromotionStatus.PENDING_GATE:
        return None
    if status is domain.PromotionStatus.REJECTED:
        return (
            w.StepStatus.FAILED,
            {"result": "deny", "reasons": list(promotion.reason_codes)},
            promotion.status_message or "denied by gates",
        )
    if status is domain.PromotionStatus.CANCELLED:
        return w.StepStatus.FAILED, {"result": "cancelled"}, f"promotion {promotion.id} was cancelled"
    outputs: dict[str, Any] = {"result": "allow"}
    if promotion.decision is not None:
        outputs["decision_hash"] = decision_hash(promotion.decision)
    return w.StepStatus.SUCCEEDED, outputs, None


def promotion_id_of(cmd: w.ExecuteStep) -> UUID | None:
    """The promotion a gate step is about: the run's subject, or the run input ``promotion_id``."""
    if cmd.subject_id is not None:
        return cmd.subject_id
    run_inputs = cmd.inputs.get("inputs")
    raw = run_inputs.get("promotion_id") if isinstance(run_inputs, Mapping) else None
    try:
        return UUID(str(raw)) if raw is not None else None
    except ValueError:
        return None


def start_run(origin: Origin, stored: repo.StoredPromotion, *, actor_id: UUID | None = None) -> w.StartRun:
    """The command that starts the promotion's workflow run; its run id makes sending it again harmless."""
    promotion = stored.promotion
    return origin.make(
        w.StartRun,
        actor_id=actor_id,
        template_name=stored.workflow_template,
        run_id=stored.workflow_run_id,
        subject_id=promotion.id,
        inputs={
            "promotion_id": str(promotion.id),
            "release_id": str(promotion.release_id),
            "environment_id": str(promotion.target_environment_id),
            "requested_by": promotion.requested_by,
            "approval_required": promotion.required_approvals > 0,
            "required_approvals": promotion.required_approvals,
            "require_sod": promotion.require_sod,
            "approver_groups": stored.approver_groups,
            "approval_timeout_s": promotion.approval_timeout_s,
        },
    )


def run_check_delay(timeout: timedelta, checks: int) -> timedelta:
    """How long the run watch waits after the ``checks``-th time it sent a run's start again (doubling)."""
    return timeout * 2 ** min(checks, 20)


def freeze_event_id(tenant: UUID, key: str) -> UUID:
    """The message id of a freeze transition: a replayed or repeated transition is the same message."""
    return uuid5(_NAMESPACE, f"freeze:{tenant}:{key}")


@dataclass(frozen=True)
class Origin:
    """Where outgoing messages come from: the handled message, or (for a timer) the promotion's request."""

    tenant_id: UUID
    correlation_id: UUID
    causation_id: UUID | None = None

    @classmethod
    def of(cls, message: Message) -> Origin:
        """Messages caused by ``message``."""
        return cls(message.tenant_id, message.correlation_id, message.message_id)

    def make(self, model: type[M], **fields: Any) -> M:
        """Build a message of type ``model`` with this origin's tenant and correlation."""
        return model(
            tenant_id=self.tenant_id, correlation_id=self.correlation_id, causation_id=self.causation_id, **fields
        )


class Handlers:
    """The promotion service's command, query and event handlers, and its two timers."""

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
    ) -> None:
        self._pool = pool
        self.commands = commands
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

    # --- environments -----------------------------------------------------------------------------------

    async def _check_workflow_template(self, cmd: Command, policy: Mapping[str, Any], needs_approval: bool) -> None:
        """Refuse an environment whose promotions could not run the workflow template its policy names.

        The built-in default runs every promotion. Any other template is read from the workflow service
        (before a transaction opens) and must declare the inputs a promotion's run starts with, have a gate
        step, and an approval step after it when the environment needs approvals.

        Raises:
            UnknownWorkflowTemplate: the tenant has no template of that name (422).
            UnsuitableWorkflowTemplate: listing why the template cannot run the promotions (422).
            WorkflowServiceUnavailable: the workflow service did not answer (503, nothing stored).
        """
        name = policy.get("workflow_template") or self.default_workflow_template
        if name == DEFAULT_WORKFLOW_TEMPLATE:
            return
        reply = await self._client().query(
            w.GET_TEMPLATE, cmd.caused(w.GetTemplate, name=name), timeout=self.release_query_timeout_s
        )
        if not reply.ok:
            error = reply.error
            if error is not None and error.status == 404:
                raise UnknownWorkflowTemplate(
                    f"there is no workflow template {name!r} to run this environment's promotions"
                )
            raise WorkflowServiceUnavailable(
                f"the workflow service could not be asked about template {name!r}; nothing was stored, try again"
            )
        template = w.TemplateView.model_validate(reply.data)
        problems = w.promotion_template_problems(
            template.inputs, template.nodes, template.edges, needs_approval=needs_approval
        )
        if problems:
            raise UnsuitableWorkflowTemplate(
                f"workflow template {name!r} (version {template.version}) cannot run this environment's "
                "promotions: " + "; ".join(problems),
                errors=[{"loc": ["promotion_policy", "workflow_template"], "msg": problem} for problem in problems],
            )

    async def create_environment(self, cmd: c.CreateEnvironment) -> Reply:
        """Create an environment in the promotion order (its workflow template must be able to run promotions)."""
        if (seen := await self.commands.seen(cmd)) is not None:
            return seen
        try:
            proposed = domain.Environment.create(
                id=cmd.message_id,
                tenant_id=cmd.tenant_id,
                name=cmd.name,
                order_index=cmd.order_index,
                created_at=self.clock(),
                display_name=cmd.display_name,
                required_approvals=cmd.required_approvals,
                require_sod=cmd.require_sod,
                config=cmd.config,
            )
            policy = validate_promotion_policy(cmd.promotion_policy)
            await self._check_workflow_template(cmd, policy, required_approvals_for(proposed) > 0)
        except ServiceError as exc:
            return Reply.failure(error_detail(exc))

        async def execute(conn: asyncpg.Connection) -> object:
            now = self.clock()
            environment = validate_environment(
                self.registry,
                domain.Environment.create(
                    id=self.new_id(),
                    tenant_id=cmd.tenant_id,
                    name=cmd.name,
                    order_index=cmd.order_index,
                    created_at=now,
                    display_name=cmd.display_name,
                    required_approvals=cmd.required_approvals,
                    require_sod=cmd.require_sod,
                    config=cmd.config,
                ),
            )
            policy = validate_promotion_policy(cmd.promotion_policy)
            view = await repo.insert_environment(conn, cmd.tenant_id, environment, policy, now)
            if view is None:
                raise EnvironmentNameTaken(f"an environment named {cmd.name!r} already exists")
            await add_events(conn, [(c.ENVIRONMENT_CREATED, cmd.caused(c.EnvironmentChanged, environment=view))])
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def update_environment(self, cmd: c.UpdateEnvironment) -> Reply:
        """Change an environment; promotions in flight keep the approval settings they were requested with.

        The workflow template the environment ends up with must be able to run its promotions.
        """
        if (seen := await self.commands.seen(cmd)) is not None:
            return seen
        try:
            async with self._pool().acquire() as conn:
                before = await repo.get_environment(conn, cmd.tenant_id, cmd.environment_id)
            if before is not None:
                changes = cmd.model_dump(
                    include={"display_name", "order_index", "required_approvals", "require_sod", "config"},
                    exclude_none=True,
                )
                proposed = repo.environment_of(before, cmd.tenant_id).updated(**changes)
                policy = (
                    validate_promotion_policy(cmd.promotion_policy)
                    if cmd.promotion_policy is not None
                    else before.promotion_policy
                )
                await self._check_workflow_template(cmd, policy, required_approvals_for(proposed) > 0)
        except ServiceError as exc:
            return Reply.failure(error_detail(exc))

        async def execute(conn: asyncpg.Connection) -> object:
            current = await repo.get_environment(conn, cmd.tenant_id, cmd.environment_id, lock=True)
            if current is None:
                raise domain.EnvironmentNotFound(f"environment {cmd.environment_id} does not exist")
            changes = cmd.model_dump(
                include={"display_name", "order_index", "required_approvals", "require_sod", "config"},
                exclude_none=True,
            )
            environment = validate_environment(
                self.registry, repo.environment_of(current, cmd.tenant_id).updated(**changes)
            )
            policy = (
                validate_promotion_policy(cmd.promotion_policy)
                if cmd.promotion_policy is not None
                else current.promotion_policy
            )
            now = self.clock()
            proposed = current.model_copy(
                update={
                    "display_name": environment.display_name,
                    "order_index": environment.order_index,
                    "required_approvals": environment.required_approvals,
                    "require_sod": environment.require_sod,
                    "config": environment.config.to_dict(),
                    "promotion_policy": policy,
                }
            )
            if proposed == current:
                return current.model_dump(mode="json")
            view = await repo.update_environment(conn, cmd.tenant_id, environment, policy, now)
            # Changed gates may open the environment for a held promotion before its recorded next opening.
            await repo.reevaluate_held(conn, cmd.tenant_id, view.id, now)
            await add_events(conn, [(c.ENVIRONMENT_UPDATED, cmd.caused(c.EnvironmentChanged, environment=view))])
            return view.model_dump(mode="json")

        reply = await self.commands.run(cmd, execute)
        self.holds.wake()
        return reply

    async def delete_environment(self, cmd: c.DeleteEnvironment) -> Reply:
        """Delete an environment no promotion references (its windows go with it)."""

        async def execute(conn: asyncpg.Connection) -> object:
            current = await repo.get_environment(conn, cmd.tenant_id, cmd.environment_id, lock=True)
            if current is None:
                raise domain.EnvironmentNotFound(f"environment {cmd.environment_id} does not exist")
            if await repo.environment_in_use(conn, cmd.tenant_id, current.id):
                raise EnvironmentInUse(
                    f"environment {current.name!r} is referenced by promotions and cannot be deleted"
                )
            now = self.clock()
            windows = await repo.windows_of_environment(conn, cmd.tenant_id, current.id)
            ended = [self._freeze_ended_now(cmd, current.id, stored.window, now) for stored in windows]
            await repo.delete_environment(conn, cmd.tenant_id, current.id)
            await add_events(
                conn,
                [
                    *(event for event in ended if event is not None),
                    (c.ENVIRONMENT_DELETED, cmd.caused(c.EnvironmentChanged, environment=current)),
                ],
            )
            return {"id": str(current.id), "deleted": True}

        return await self.commands.run(cmd, execute)

    # --- freeze windows ---------------------------------------------------------------------------------

    async def add_freeze_window(self, cmd: c.AddFreezeWindow) -> Reply:
        """Add a deny (freeze) or allow (deployment) window; one that is already active starts now."""

        async def execute(conn: asyncpg.Connection) -> object:
            environment = await repo.get_environment(conn, cmd.tenant_id, cmd.environment_id, lock=True)
            if environment is None:
                raise domain.EnvironmentNotFound(f"environment {cmd.environment_id} does not exist")
            window = window_from_spec(cmd.window, self.new_id(), cmd.actor_id, self.clock())
            now = self.clock()
            stored = await repo.insert_window(
                conn, cmd.tenant_id, environment.id, window, cmd.actor_id, now, next_transition_after(window, now)
            )
            # Transitions are watched from now on; an occurrence already running opened for this
            # environment now, so it is announced now (its end comes from the timer).
            active = active_occurrence(window, now)
            if active is not None:
                key = f"{occurrence_key(window, active[0])}/started"
                event = self._freeze_event(Origin.of(cmd), environment.id, window, "started", key, now)
                await add_events(conn, [event])
            return stored.view.model_dump(mode="json")

        reply = await self.commands.run(cmd, execute)
        self.freezes.wake()
        return reply

    async def remove_freeze_window(self, cmd: c.RemoveFreezeWindow) -> Reply:
        """Remove a window; an active one ends now and held promotions of the environment are looked at again."""

        async def execute(conn: asyncpg.Connection) -> object:
            environment = await repo.get_environment(conn, cmd.tenant_id, cmd.environment_id, lock=True)
            if environment is None:
                raise domain.EnvironmentNotFound(f"environment {cmd.environment_id} does not exist")
            stored = await repo.get_window(conn, cmd.tenant_id, environment.id, cmd.window_id)
            if stored is None:
                raise FreezeWindowNotFound(f"environment {environment.name!r} has no freeze window {cmd.window_id}")
            now = self.clock()
            await repo.delete_window(conn, cmd.tenant_id, environment.id, cmd.window_id)
            ended = self._freeze_ended_now(cmd, environment.id, stored.window, now)
            if ended is not None:
                await add_events(conn, [ended])
            await repo.reevaluate_held(conn, cmd.tenant_id, environment.id, now)
            return {"id": str(cmd.window_id), "deleted": True}

        reply = await self.commands.run(cmd, execute)
        self.holds.wake()
        self.freezes.wake()
        return reply

    def _freeze_ended_now(
        self, cause: Message, environment_id: UUID, window: freeze.FreezeWindow, now: datetime
    ) -> tuple[str, Message] | None:
        """The ``freeze_ended`` of a window that stops applying now while one of its occurrences runs."""
        active = active_occurrence(window, now)
        if active is None:
            return None
        key = f"{occurrence_key(window, active[0])}/ended"
        return self._freeze_event(Origin.of(cause), environment_id, window, "ended", key, now)

    @staticmethod
    def _freeze_event(
        origin: Origin,
        environment_id: UUID,
        window: freeze.FreezeWindow,
        transition: str,
        dedup_key: str,
        at: datetime,
    ) -> tuple[str, Message]:
        subject = c.FREEZE_STARTED if transition == "started" else c.FREEZE_ENDED
        event = c.FreezeChanged(
            message_id=freeze_event_id(origin.tenant_id, dedup_key),
            tenant_id=origin.tenant_id,
            correlation_id=origin.correlation_id,
            causation_id=origin.causation_id,
            environment_id=environment_id,
            window_id=UUID(window.id),
            occurrence=dedup_key.rsplit("/", 1)[0],
            kind=window.kind.value,
            reason=window.reason,
            at=at,
        )
        return subject, event

    # --- scan results -----------------------------------------------------------------------------------

    async def record_scan_result(self, cmd: c.RecordScanResult) -> Reply:
        """Store the latest scan verdict of a digest (an older scan than the stored one changes nothing)."""

        async def execute(conn: asyncpg.Connection) -> object:
            now = self.clock()
            scan = c.ScanResultView(
                digest=cmd.digest,
                critical=cmd.critical,
                high=cmd.high,
                medium=cmd.medium,
                low=cmd.low,
                max_epss=cmd.max_epss,
                kev=cmd.kev,
                scanner=cmd.scanner,
                scanned_at=cmd.scanned_at or now,
                recorded_at=now,
            )
            stored = await repo.upsert_scan(conn, cmd.tenant_id, scan)
            if stored is None:
                stored = await repo.get_scan(conn, cmd.tenant_id, cmd.digest)
            return stored.model_dump(mode="json") if stored else None

        return await self.commands.run(cmd, execute)

    # --- promotions -------------------------------------------------------------------------------------

    async def _fetch_release(self, cmd: c.RequestPromotion) -> ReleaseView:
        """Ask the release service for the release (before any transaction opens)."""
        return await ask(
            self._client(),
            GET_RELEASE,
            cmd.caused(GetRelease, release_id=cmd.release_id),
            ReleaseView,
            timeout=self.release_query_timeout_s,
            unavailable=lambda error: ReleaseServiceUnavailable(
                f"the release service could not be asked for release {cmd.release_id} ({error.detail}); "
                "nothing was stored, try again"
            ),
        )

    async def request_promotion(self, cmd: c.RequestPromotion) -> Reply:
        """Request a promotion of a ready release into an environment and start its workflow run."""
        if (seen := await self.commands.seen(cmd)) is not None:
            return seen
        try:
            release = await self._fetch_release(cmd)
        except ServiceError as exc:
            return Reply.failure(error_detail(exc))

        async def execute(conn: asyncpg.Connection) -> object:
            now = self.clock()
            await repo.lock_release(conn, cmd.tenant_id, release.id)
            views = await repo.all_environments(conn, cmd.tenant_id)
            environments = {v.id: repo.environment_of(v, cmd.tenant_id) for v in views}
            target = environments.get(cmd.target_environment_id)
            if target is None:
                raise domain.EnvironmentNotFound(f"environment {cmd.target_environment_id} does not exist")
            history = await repo.promotions_of_release(conn, cmd.tenant_id, release.id)
            promotion, events = domain.request_promotion(
                promotion_id=self.new_id(),
                release=domain.ReleaseSnapshot(
                    id=release.id,
                    tenant_id=cmd.tenant_id,
                    name=release.name,
                    status=domain.ReleaseStatus(release.status.value),
                ),
                target_environment=target,
                environments=list(environments.values()),
                release_promotions=[s.promotion for s in history],
                requested_by=str(cmd.actor_id) if cmd.actor_id is not None else "",
                now=now,
                source_environment_id=cmd.source_environment_id,
            )
            # An approval gate may ask for more approvals than the environment; the run's approval step must
            # collect that many, so the promotion knows the count from the start.
            promotion.required_approvals = required_approvals_for(target)
            policy = next(v.promotion_policy for v in views if v.id == target.id)
            stored = repo.StoredPromotion(
                promotion=promotion,
                release_name=release.name,
                release_components=[component.model_dump(mode="json") for component in release.components],
                target_environment_name=target.name,
                reason=cmd.reason,
                approver_groups=list(policy.get("approver_groups", [])),
                workflow_template=policy.get("workflow_template") or self.default_workflow_template,
                workflow_run_id=self.new_id(),
                gate_step=None,
                freeze_override=None,
                correlation_id=cmd.correlation_id,
            )
            stored.run_check_at = now + self.run_start_timeout
            if promotion.status_message is None:
                promotion.status_message = (
                    f"waiting for workflow run {stored.workflow_run_id} ({stored.workflow_template}) "
                    "to evaluate the gates"
                )
            await repo.insert_promotion(conn, stored)
            view = repo.promotion_view(stored)
            origin = Origin.of(cmd)
            start = start_run(origin, stored, actor_id=cmd.actor_id)
            await add_events(conn, [*self._changed(origin, view, events), (w.START_RUN, start)])
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def cancel_promotion(self, cmd: c.CancelPromotion) -> Reply:
        """Cancel a promotion that has not started deploying; its run and approval request close with it.

        The rule is the domain's (:meth:`domain.Promotion.cancel`): any non-terminal status before
        ``deploying`` (pending_gate, pending_approval, approved) may be cancelled. A recorded approval stays
        recorded (decision and evidence); the cancel is a later decision of its own.
        """

        async def execute(conn: asyncpg.Connection) -> object:
            stored = await self._locked(conn, cmd.tenant_id, cmd.promotion_id)
            promotion = stored.promotion
            now = self.clock()
            held_slot = promotion.holds_deploy_slot
            events = promotion.cancel(
                cancelled_by=str(cmd.actor_id) if cmd.actor_id is not None else "system",
                reason=cmd.reason or "cancelled",
                now=now,
            )
            stored.deploy_step = None
            await repo.update_promotion(conn, stored)
            view = repo.promotion_view(stored)
            origin = Origin.of(cmd)
            released = await self._release_next(conn, promotion, origin) if held_slot else []
            await add_events(
                conn,
                [
                    *self._changed(origin, view, events),
                    *released,
                    (
                        w.CANCEL_RUN,
                        origin.make(
                            w.CancelRun, actor_id=cmd.actor_id, run_id=stored.workflow_run_id, reason=cmd.reason
                        ),
                    ),
                    (
                        a.CANCEL_APPROVALS,
                        origin.make(a.CancelApprovals, actor_id=cmd.actor_id, promotion_id=promotion.id),
                    ),
                ],
            )
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def override_freeze(self, cmd: c.OverrideFreeze) -> Reply:
        """Let a promotion through the windows that close its environment now; a held one is decided at once."""

        async def execute(conn: asyncpg.Connection) -> object:
            stored = await self._locked(conn, cmd.tenant_id, cmd.promotion_id)
            promotion = stored.promotion
            if promotion.status is not domain.PromotionStatus.PENDING_GATE:
                raise domain.PromotionNotPending(
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
        asked = (
            None
            if await self.commands.seen(cmd)
            else await self._ask_plugins_first(cmd.tenant_id, promotion_id_of(cmd))
        )

        async def execute(conn: asyncpg.Connection) -> object:
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
            if stored.promotion.status is domain.PromotionStatus.PENDING_GATE:
                stored.gate_step = step
                await self._evaluate(conn, stored, self.clock(), "gates", origin, asked=asked)
            else:
                result = gate_step_result(stored.promotion)
                assert result is not None
                if stored.promotion.status is domain.PromotionStatus.APPROVED:
                    await add_events(conn, await self._let_deploy(conn, stored, step, result[1], origin))
                    await repo.update_promotion(conn, stored)
                else:
                    await add_events(conn, [self._completion(origin, step, *result)])
            return {"promotion_id": str(stored.promotion.id), "status": stored.promotion.status.value}

        reply = await self.commands.run(cmd, execute)
        # A held promotion's next evaluation may be the earliest now; the timer reads it after the commit.
        self.holds.wake()
        return reply

    async def _locked(self, conn: asyncpg.Connection, tenant: UUID, promotion_id: UUID) -> repo.StoredPromotion:
        stored = await repo.get_promotion(conn, tenant, promotion_id, lock=True)
        if stored is None:
            raise domain.NotFound(f"promotion {promotion_id} does not exist")
        return stored

    async def _gate_inputs(
        self,
        conn: asyncpg.Connection,
        stored: repo.StoredPromotion,
        approvals: Mapping[str, Any],
        *,
        asked: PluginVerdicts | None = None,
        ask_plugins: bool = True,
    ) -> dict[str, Any]:
        """Gather every input of the promotion's decision (current windows, gates, scans, plugin verdicts).

        Args:
            conn: The connection.
            stored: The promotion.
            approvals: The approvals document.
            asked: Plugin verdicts asked before the transaction opened; used when they were asked for exactly
                the plugin gates the promotion has now (else the plugins are asked again).
            ask_plugins: False leaves the plugin verdicts out (to learn which plugin gates to ask).
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
            else:
                verdicts = await self.plugin_gates.verdicts(gates, inputs) if self.plugin_gates is not None else {}
            inputs[PLUGIN_VERDICTS] = domain.to_json_value(verdicts)
        return inputs

    async def _ask_plugins_first(self, tenant: UUID, promotion_id: UUID | None) -> PluginVerdicts | None:
        """Ask a pending promotion's gate plugins before its row is locked, so no lock waits on a plugin.

        Returns None when there is nothing to ask (no such promotion, not pending, no plugin gate).
        """
        if promotion_id is None or self.plugin_gates is None:
            return None
        async with self._pool().acquire() as conn:
            stored = await repo.get_promotion(conn, tenant, promotion_id)
            if stored is None or stored.promotion.status is not domain.PromotionStatus.PENDING_GATE:
                return None
            approvals = approvals_document(stored.promotion.required_approvals)
            inputs = await self._gate_inputs(conn, stored, approvals, ask_plugins=False)
        plugin_gates = plugin_gates_of(inputs["gates"])
        if not plugin_gates:
            return None
        return PluginVerdicts(plugin_gates, await self.plugin_gates.verdicts(inputs["gates"], inputs))

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
        await repo.insert_decision(conn, p.tenant_id, decision_id, p.id, trigger, inputs, clock, record, self.clock())
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
    ) -> None:
        """Decide a pending promotion's gates now, move it, and complete its gate step when they decided."""
        p = stored.promotion
        inputs = await self._gate_inputs(conn, stored, approvals_document(p.required_approvals), asked=asked)
        record = await self._store_decision(conn, stored, trigger, inputs, now)
        outcome = record.outcome()
        if p.awaits_approvals(outcome, now=now):
            # The gates allow, but votes can only be cast once the approval service has opened the request
            # (the workflow's next step). The promotion shows pending_approval from that moment on, so a
            # client never sees pending_approval while a vote would still be refused.
            p.decision = record.to_dict()
            p.status_message = "gates passed; opening the approval request"
            await repo.update_promotion(conn, stored)
            if stored.gate_step is not None:
                outputs = {"result": "allow", "decision_hash": decision_hash(p.decision)}
                await add_events(
                    conn, [self._completion(origin, stored.gate_step, w.StepStatus.SUCCEEDED, outputs, None)]
                )
            return
        events = p.apply_gate_decision(outcome, now=now)
        result = gate_step_result(p)
        completions: list[tuple[str, Message]] = []
        if p.status is domain.PromotionStatus.APPROVED and result is not None:
            # No approvals needed: the gate step is the last one before the deploy step.
            completions = await self._let_deploy(conn, stored, stored.gate_step, result[1], origin)
        elif result is not None and stored.gate_step is not None:
            completions = [self._completion(origin, stored.gate_step, *result)]
        await repo.update_promotion(conn, stored)
        await add_events(conn, [*self._changed(origin, repo.promotion_view(stored), events), *completions])

    async def _open_approvals(self, conn: asyncpg.Connection, stored: repo.StoredPromotion, origin: Origin) -> None:
        """The approval request is open: apply the stored gate decision, moving the promotion to pending_approval."""
        p = stored.promotion
        latest = await repo.get_decision(conn, p.tenant_id, stored.decision_id) if stored.decision_id else None
        if p.status is not domain.PromotionStatus.PENDING_GATE or latest is None:
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

    def _changed(
        self, origin: Origin, view: c.PromotionView, events: Iterable[domain.PromotionEvent]
    ) -> list[tuple[str, Message]]:
        """The published events of a transition, each carrying the promotion as it is now."""
        return [
            (subject, origin.make(c.PromotionChanged, promotion=view))
            for event in events
            if (subject := _EVENT_SUBJECTS.get(type(event))) is not None
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

    # --- approval decisions (events) --------------------------------------------------------------------

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
        elif stored.promotion.status is domain.PromotionStatus.PENDING_APPROVAL:
            await self._apply_approvals(conn, stored, request, origin)
        if request.step is None:
            return
        outputs = {
            "result": request.status.value,
            "approvals": approvals_document(request.required, request.votes)["granted"],
        }
        if stored is not None and stored.promotion.status is domain.PromotionStatus.APPROVED:
            # The approval step is the last one before the deploy step: it completes when the slot is free.
            held = await self._let_deploy(conn, stored, request.step, outputs, origin)
            await repo.update_promotion(conn, stored)
            await add_events(conn, held)
            return
        if stored is not None and stored.promotion.status in domain.APPROVED_STATUSES:
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
            inputs, clock = await self._gate_inputs(conn, stored, approvals), now
        record = await self._store_decision(conn, stored, "approvals", domain.to_json_value(inputs), clock)
        p.decision = record.to_dict()
        events: list[domain.PromotionEvent]
        if request.status is a.ApprovalStatus.GRANTED:
            summary = domain.ApprovalSummary(required=request.required, granted=approvals["granted"], rejected=0)
            events = p.record_approvals(summary, now=now)
            if not events:
                log.warning(
                    "the approval service granted a promotion that still lacks approvals",
                    extra={"promotion_id": str(p.id), "granted": approvals["granted"]},
                )
        elif request.status is a.ApprovalStatus.DENIED:
            summary = domain.ApprovalSummary(
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
        await add_events(conn, self._changed(origin, repo.promotion_view(stored), events))

    # --- workflow runs (events) -------------------------------------------------------------------------

    async def on_run_ended(self, event: w.RunCompleted | w.RunFailed, conn: asyncpg.Connection) -> None:
        """A promotion's workflow run ended, or could not start: a promotion still waiting on it fails.

        Every step that decides a promotion (the gate step, the approval step) moves it in the transaction
        that completes the step, so a run that ends while its promotion still waits will never decide it: a
        template without an approval step, a run refused at its start (an input it does not declare), a step
        that timed out. The promotion fails with the run's reason instead of waiting for ever.
        """
        if event.subject_id is None:
            return
        stored = await repo.get_promotion(conn, event.tenant_id, event.subject_id, lock=True)
        if stored is None or stored.workflow_run_id != event.run_id:
            return
        template = event.template_name or stored.workflow_template
        if isinstance(event, w.RunFailed):
            outcome = "was cancelled" if event.status is w.RunStatus.CANCELLED else "failed"
            reason = f"workflow run {event.run_id} ({template}) {outcome} before deciding the promotion"
            if event.error:
                reason += f": {event.error}"
        else:
            reason = (
                f"workflow run {event.run_id} ({template}) finished without deciding the promotion; "
                "its template lacks a step the promotion waits on"
            )
        promotion = stored.promotion
        if promotion.status is domain.PromotionStatus.APPROVED:
            outcome = "failed" if isinstance(event, w.RunFailed) else "ended"
            ended = f"its workflow run {event.run_id} ({template}) {outcome} without a deployment job"
            if isinstance(event, w.RunFailed) and event.error:
                ended += f": {event.error}"
            await self._leave_queue(conn, stored, ended, Origin.of(event))
            return
        waited_on_approvals = promotion.status is domain.PromotionStatus.PENDING_APPROVAL
        events = promotion.fail_workflow(reason=reason[:2000], now=self.clock())
        if not events:
            return
        await repo.update_promotion(conn, stored)
        origin = Origin.of(event)
        messages = self._changed(origin, repo.promotion_view(stored), events)
        if waited_on_approvals:
            messages.append(
                (a.CANCEL_APPROVALS, origin.make(a.CancelApprovals, actor_id=None, promotion_id=promotion.id))
            )
        await add_events(conn, messages)

    async def _leave_queue(
        self, conn: asyncpg.Connection, stored: repo.StoredPromotion, reason: str, origin: Origin
    ) -> None:
        """An approved promotion's run ended without a deployment job: it stops holding or waiting for the slot.

        A run of a template without a deploy step (version 1 of standard-promotion) ends this way after its
        evidence; so does a run whose deploy step failed before any job started. The promotion keeps its
        approval (and may be cancelled); the next promotion of the environment may deploy.
        """
        promotion = stored.promotion
        if not promotion.holds_deploy_slot and stored.deploy_step is None:
            return
        held_slot = promotion.holds_deploy_slot
        promotion.release_slot(reason=f"approved; no deployment: {reason}"[:2000], now=self.clock())
        stored.deploy_step = None
        await repo.update_promotion(conn, stored)
        if held_slot:
            await add_events(conn, await self._release_next(conn, promotion, origin))

    # --- deployment slot and jobs -----------------------------------------------------------------------

    async def _let_deploy(
        self,
        conn: asyncpg.Connection,
        stored: repo.StoredPromotion,
        step: w.StepRef | None,
        outputs: dict[str, Any],
        origin: Origin,
    ) -> list[tuple[str, Message]]:
        """The promotion is approved: complete the step before its deploy step once the environment is free.

        With the environment's deployment slot taken (another promotion deploys, or one approved earlier
        waits), the completion is held on the promotion and sent by :meth:`_release_next` when its turn
        comes; the workflow run waits meanwhile. The caller saves the promotion.
        """
        p = stored.promotion
        await repo.lock_deploy_queue(conn, p.tenant_id, p.target_environment_id)
        queue = [q.promotion for q in await repo.deploy_queue(conn, p.tenant_id, p.target_environment_id)]
        now = self.clock()
        if step is not None:
            stored.deploy_step = {**step.model_dump(mode="json"), "outputs": outputs}
        others = [q for q in queue if q.id != p.id]
        head = domain.next_to_deploy([*others, p], p.target_environment_id)
        if p.cleared_at is None and head is not None and head.id == p.id:
            # The deploy-start re-check of the time windows: a closed window holds the deployment.
            closed = await self._closed_by_window(conn, stored, now)
            if closed is not None:
                p.wait_for_window(reason=closed.reason, next_open=closed.next_open, now=now)
                return []
        if p.clear_to_deploy(environment_promotions=others, now=now):
            stored.deploy_step = None
            return [] if step is None else [self._completion(origin, step, w.StepStatus.SUCCEEDED, outputs, None)]
        return []

    async def _closed_by_window(
        self, conn: asyncpg.Connection, stored: repo.StoredPromotion, now: datetime
    ) -> freeze.EnvironmentState | None:
        """The environment's window state when a freeze or the schedule closes it now and no override applies."""
        if stored.freeze_override is not None:
            return None
        p = stored.promotion
        windows = [s.window for s in await repo.windows_of_environment(conn, p.tenant_id, p.target_environment_id)]
        state = freeze.environment_state(windows, now)
        return state if state.closed else None

    @staticmethod
    def _held_step(stored: repo.StoredPromotion) -> tuple[w.StepRef | None, dict[str, Any]]:
        """The step completion a queued promotion holds, and its outputs."""
        held = stored.deploy_step
        if held is None:
            return None, {}
        step = w.StepRef(run_id=held["run_id"], node_id=held["node_id"], attempt=held["attempt"])
        return step, held.get("outputs") or {}

    async def _release_next(
        self, conn: asyncpg.Connection, freed: domain.Promotion, origin: Origin
    ) -> list[tuple[str, Message]]:
        """``freed`` (saved already) gave its environment's slot back: clear the next queued promotion.

        Returns the held step completion of the promotion cleared now (nothing when none waits).
        """
        tenant, environment_id = freed.tenant_id, freed.target_environment_id
        await repo.lock_deploy_queue(conn, tenant, environment_id)
        queue = await repo.deploy_queue(conn, tenant, environment_id)
        head = domain.next_to_deploy([q.promotion for q in queue], environment_id)
        if head is None:
            return []
        stored = await repo.get_promotion(conn, tenant, head.id, lock=True)
        if stored is None or stored.promotion.status is not domain.PromotionStatus.APPROVED:
            return []
        log.info(
            "a queued promotion is next to deploy",
            extra={"promotion_id": str(head.id), "after": str(freed.id), "environment_id": str(environment_id)},
        )
        return await self._resume_queued(conn, stored, Origin(tenant, stored.correlation_id, origin.causation_id))

    async def _resume_queued(
        self, conn: asyncpg.Connection, stored: repo.StoredPromotion, origin: Origin
    ) -> list[tuple[str, Message]]:
        """Try a queued promotion's deployment again (its turn came, or its window opened) and save it."""
        step, outputs = self._held_step(stored)
        messages = await self._let_deploy(conn, stored, step, outputs, origin)
        await repo.update_promotion(conn, stored)
        return messages

    async def _job_promotion(
        self, conn: asyncpg.Connection, event: d.JobStarted | d.JobCompleted
    ) -> repo.StoredPromotion | None:
        """The promotion a job event is about, locked after its environment's queue (always in that order)."""
        if event.promotion_id is None or event.kind not in (d.JobKind.DEPLOY, d.JobKind.ROLLBACK):
            return None  # a remediation, a check, or another job that moves no promotion
        await repo.lock_deploy_queue(conn, event.tenant_id, event.environment_id)
        stored = await repo.get_promotion(conn, event.tenant_id, event.promotion_id, lock=True)
        if stored is None or stored.promotion.target_environment_id != event.environment_id:
            log.warning(
                "a deployment job names a promotion of another environment or none of this tenant",
                extra={"job_id": str(event.job_id), "promotion_id": str(event.promotion_id)},
            )
            return None
        return stored

    async def on_job_started(self, event: d.JobStarted, conn: asyncpg.Connection) -> None:
        """The promotion's deployment job started: ``approved`` -> ``deploying`` (a rollback job is noted)."""
        stored = await self._job_promotion(conn, event)
        if stored is None:
            return
        p = stored.promotion
        try:
            if event.rollback_of is not None:
                events = p.begin_rollback(rollback_job_id=event.job_id, rollback_of=event.rollback_of, now=self.clock())
            else:
                events = p.begin_deployment(deployment_job_id=event.job_id, now=self.clock())
        except domain.DomainError as exc:
            # A job for a promotion that is no longer approved (cancelled meanwhile) changes nothing here.
            log.warning("a deployment job started for a promotion that cannot deploy", extra={"error": exc.detail})
            return
        stored.deploy_step = None
        await repo.update_promotion(conn, stored)
        await add_events(conn, self._changed(Origin.of(event), repo.promotion_view(stored), events))

    async def on_job_completed(self, event: d.JobCompleted, conn: asyncpg.Connection) -> None:
        """The promotion's deployment job ended: ``deployed``, ``failed`` or ``rolled_back``; the next one may go.

        Only now does the release count as reached in the environment (the ordering rule).
        """
        stored = await self._job_promotion(conn, event)
        if stored is None:
            return
        p = stored.promotion
        now = self.clock()
        reason = event.reason[:2000]
        held_slot = p.holds_deploy_slot
        try:
            if event.rollback_of is not None:
                events = p.finish_rollback(
                    rollback_job_id=event.job_id,
                    rollback_of=event.rollback_of,
                    succeeded=event.outcome == "succeeded",
                    reason=reason,
                    now=now,
                )
            else:
                events = p.finish_job(deployment_job_id=event.job_id, outcome=event.outcome, reason=reason, now=now)
        except domain.DomainError as exc:
            log.warning("a deployment job ended for a promotion that cannot take it", extra={"error": exc.detail})
            return
        stored.deploy_step = None
        await repo.update_promotion(conn, stored)
        origin = Origin.of(event)
        messages = self._changed(origin, repo.promotion_view(stored), events)
        if held_slot and not p.holds_deploy_slot:
            messages += await self._release_next(conn, p, origin)
        await add_events(conn, messages)

    # --- queries ----------------------------------------------------------------------------------------

    async def get_environment(self, q: c.GetEnvironment) -> Reply:
        """One environment."""
        async with self._pool().acquire() as conn:
            view = await repo.get_environment(conn, q.tenant_id, q.environment_id)
        if view is None:
            raise domain.EnvironmentNotFound(f"environment {q.environment_id} does not exist")
        return Reply.success(view.model_dump(mode="json"))

    async def list_environments(self, q: c.ListEnvironments) -> Reply:
        """A page of environments in promotion order."""
        async with self._pool().acquire() as conn:
            items, token = await repo.list_environments(conn, q.tenant_id, q.page.page_size, q.page.page_token)
        return _page(items, token)

    async def list_freeze_windows(self, q: c.ListFreezeWindows) -> Reply:
        """A page of an environment's windows."""
        async with self._pool().acquire() as conn:
            if await repo.get_environment(conn, q.tenant_id, q.environment_id) is None:
                raise domain.EnvironmentNotFound(f"environment {q.environment_id} does not exist")
            items, token = await repo.list_windows(
                conn, q.tenant_id, q.environment_id, q.page.page_size, q.page.page_token
            )
        return _page(items, token)

    async def get_environment_state(self, q: c.GetEnvironmentState) -> Reply:
        """Whether the environment is open for promotions now, and when that changes."""
        async with self._pool().acquire() as conn:
            if await repo.get_environment(conn, q.tenant_id, q.environment_id) is None:
                raise domain.EnvironmentNotFound(f"environment {q.environment_id} does not exist")
            windows = await repo.windows_of_environment(conn, q.tenant_id, q.environment_id)
        now = self.clock()
        state = freeze.environment_state([s.window for s in windows], now)
        view = c.EnvironmentStateView(
            environment_id=q.environment_id,
            closed=state.closed,
            reason=state.reason,
            next_open=state.next_open,
            next_close=state.next_close,
            active_window_ids=[UUID(i) for i in state.active_window_ids],
            evaluated_at=now,
        )
        return Reply.success(view.model_dump(mode="json"))

    async def get_promotion(self, q: c.GetPromotion) -> Reply:
        """One promotion with its latest decision record."""
        async with self._pool().acquire() as conn:
            stored = await repo.get_promotion(conn, q.tenant_id, q.promotion_id)
        if stored is None:
            raise domain.NotFound(f"promotion {q.promotion_id} does not exist")
        return Reply.success(repo.promotion_view(stored).model_dump(mode="json"))

    async def list_promotions(self, q: c.ListPromotions) -> Reply:
        """A page of promotions, newest first."""
        async with self._pool().acquire() as conn:
            items, token = await repo.list_promotions(
                conn,
                q.tenant_id,
                q.status.value if q.status else None,
                q.release_id,
                q.environment_id,
                q.page.page_size,
                q.page.page_token,
            )
        return _page(items, token)

    async def get_decision(self, q: c.GetDecision) -> Reply:
        """A promotion's latest decision with the inputs it was computed from."""
        async with self._pool().acquire() as conn:
            stored = await repo.get_promotion(conn, q.tenant_id, q.promotion_id)
            if stored is None:
                raise domain.NotFound(f"promotion {q.promotion_id} does not exist")
            latest = await repo.get_decision(conn, q.tenant_id, stored.decision_id) if stored.decision_id else None
        if latest is None:
            raise domain.NotFound(f"promotion {q.promotion_id} has no decision yet; its gates have not been evaluated")
        view = c.DecisionView(
            promotion_id=q.promotion_id,
            trigger=latest.trigger,
            evaluated_at=latest.clock,
            inputs=latest.inputs,
            record=latest.record,
        )
        return Reply.success(view.model_dump(mode="json"))

    # --- hold timer -------------------------------------------------------------------------------------

    async def next_hold(self) -> datetime | None:
        """When the next held promotion is due for re-evaluation."""
        async with self._pool().acquire() as conn:
            return await repo.next_hold(conn)

    async def run_holds(self, now: datetime) -> None:
        """Re-evaluate the held promotions whose window opened, each in its own transaction."""
        async with self._pool().acquire() as conn:
            due = await repo.due_holds(conn, now, self.timer_batch_size)
        for tenant, promotion_id in due:
            try:
                async with self._pool().acquire() as conn, conn.transaction():
                    stored = await repo.lock_due_hold(conn, tenant, promotion_id, now)
                    if stored is None:
                        continue
                    if stored.promotion.status is domain.PromotionStatus.APPROVED and stored.deploy_step is not None:
                        # Its deployment waited for a time window: look again now that it is due.
                        origin = Origin(stored.promotion.tenant_id, stored.correlation_id)
                        await add_events(conn, await self._resume_queued(conn, stored, origin))
                        continue
                    if stored.promotion.status is not domain.PromotionStatus.PENDING_GATE:
                        stored.promotion.next_open = None
                        await repo.update_promotion(conn, stored)
                        continue
                    await self._evaluate(
                        conn, stored, now, "hold", Origin(stored.promotion.tenant_id, stored.correlation_id)
                    )
            except Exception as exc:
                if is_transient(exc):
                    raise  # the database is away: the timer looks again shortly, at every due promotion
                # One promotion that cannot be evaluated must not stop the others; it is tried again later.
                log.exception("re-evaluating a held promotion failed", extra={"promotion_id": str(promotion_id)})
                async with self._pool().acquire() as conn:
                    await repo.postpone_hold(conn, tenant, promotion_id, self.timer_retry, now)

    # --- run watch --------------------------------------------------------------------------------------

    async def next_run_check(self) -> datetime | None:
        """When the run watch must next look at a promotion."""
        async with self._pool().acquire() as conn:
            return await repo.next_run_check(conn)

    async def run_run_checks(self, now: datetime) -> None:
        """Look at each promotion whose run has not brought its gate step in time, in its own transaction.

        The run's start is sent again (a lost or dead-lettered ``StartRun``); the workflow starts the run
        once whatever the number of copies. After ``run_start_attempts`` resends, each after twice the wait
        of the one before, the promotion is rejected with ``PROM_RUN_NOT_STARTED``.
        """
        async with self._pool().acquire() as conn:
            due = await repo.due_run_checks(conn, now, self.timer_batch_size)
        for tenant, promotion_id in due:
            try:
                async with self._pool().acquire() as conn, conn.transaction():
                    stored = await repo.lock_due_run_check(conn, tenant, promotion_id, now)
                    if stored is not None:
                        await self._check_run(conn, stored, now)
            except Exception as exc:
                if is_transient(exc):
                    raise  # the database is away: the timer tries again shortly, for every promotion
                log.exception("checking a promotion's run failed", extra={"promotion_id": str(promotion_id)})
                async with self._pool().acquire() as conn:
                    await repo.postpone_run_check(conn, tenant, promotion_id, now + self.timer_retry)

    async def _check_run(self, conn: asyncpg.Connection, stored: repo.StoredPromotion, now: datetime) -> None:
        p = stored.promotion
        origin = Origin(p.tenant_id, stored.correlation_id)
        if not stored.awaits_run:
            await repo.update_promotion(conn, stored)  # clears the watch
            return
        if stored.run_checks < self.run_start_attempts:
            stored.run_checks += 1
            stored.run_check_at = now + run_check_delay(self.run_start_timeout, stored.run_checks)
            p.status_message = (
                f"waiting for workflow run {stored.workflow_run_id} to start; its start was sent again "
                f"({stored.run_checks} of {self.run_start_attempts})"
            )
            await repo.update_promotion(conn, stored)
            log.warning(
                "a promotion's workflow run has not started; sending its start again",
                extra={"promotion_id": str(p.id), "run_id": str(stored.workflow_run_id), "checks": stored.run_checks},
            )
            await add_events(conn, [(w.START_RUN, start_run(origin, stored))])
            return
        waited = now - p.requested_at
        events = p.abandon_unstarted_run(waited=timedelta(seconds=int(waited.total_seconds())), now=now)
        stored.run_check_at = None
        await repo.update_promotion(conn, stored)
        log.error(
            "a promotion's workflow run never started; rejecting it",
            extra={"promotion_id": str(p.id), "run_id": str(stored.workflow_run_id)},
        )
        cancel = origin.make(w.CancelRun, run_id=stored.workflow_run_id, reason=p.status_message)
        await add_events(conn, [*self._changed(origin, repo.promotion_view(stored), events), (w.CANCEL_RUN, cancel)])

    # --- freeze timer -----------------------------------------------------------------------------------

    async def next_freeze_transition(self) -> datetime | None:
        """When the next window of any environment opens or closes."""
        async with self._pool().acquire() as conn:
            return await repo.next_window_transition(conn)

    async def run_freeze_transitions(self, now: datetime) -> None:
        """Emit the transitions of every due window since its watermark, and move the watermark to ``now``."""
        async with self._pool().acquire() as conn, conn.transaction():
            due = await repo.due_windows(conn, now, self.timer_batch_size)
            messages: list[tuple[str, Message]] = []
            advanced: list[tuple[UUID, UUID, datetime | None]] = []
            for stored in due:
                since = max(stored.transitions_seen_until, now - freeze.SEARCH_HORIZON)
                if since < now:
                    origin = Origin(stored.tenant_id, stored.view.id)
                    for transition in freeze.window_transitions([stored.window], since, now):
                        messages.append(
                            self._freeze_event(
                                origin,
                                stored.view.environment_id,
                                stored.window,
                                transition.transition,
                                transition.dedup_key,
                                transition.at,
                            )
                        )
                advanced.append((stored.tenant_id, stored.view.id, next_transition_after(stored.window, now)))
            await repo.advance_windows(conn, now, advanced)
            await add_events(conn, messages)


def closing_windows(
    windows: Sequence[freeze.FreezeWindow], state: freeze.EnvironmentState
) -> list[freeze.FreezeWindow]:
    """The windows that keep an environment closed: active deny windows, or every allow window outside them."""
    active = set(state.active_window_ids)
    deny = [x for x in windows if x.kind is freeze.WindowKind.DENY and x.id in active]
    allow = [x for x in windows if x.kind is freeze.WindowKind.ALLOW]
    outside_schedule = bool(allow) and not any(x.id in active for x in allow)
    return deny + (allow if outside_schedule else [])


def _page(items: Sequence[Any], token: str | None) -> Reply:
    return Reply.success(Page(items=[i.model_dump(mode="json") for i in items], next_page_token=token).model_dump())
