"""Environments, their freeze windows and scan results: commands and queries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from stella.contracts import promotion as c
from stella.contracts import workflow as w
from stella.contracts.envelope import Command, Message, Reply
from stella.kit.errors import ServiceError, error_detail
from stella.kit.outbox import add_events
from stella.promotion import freeze, repo
from stella.promotion.domain.environment import Environment
from stella.promotion.domain.errors import EnvironmentNotFound
from stella.promotion.gates import PLUGIN_GATE_TYPE, GateRegistry, with_plugins
from stella.promotion.handlers.base import HandlerBase
from stella.promotion.handlers.decisions import required_approvals_for, validate_environment, validate_promotion_policy
from stella.promotion.handlers.errors import (
    EnvironmentInUse,
    EnvironmentNameTaken,
    FreezeWindowNotFound,
    UnknownWorkflowTemplate,
    UnsuitableWorkflowTemplate,
    WorkflowServiceUnavailable,
)
from stella.promotion.handlers.messages import DEFAULT_WORKFLOW_TEMPLATE, Origin, page_reply
from stella.promotion.handlers.windows import (
    active_occurrence,
    freeze_event_id,
    next_transition_after,
    occurrence_key,
    window_from_spec,
)


class EnvironmentHandlers(HandlerBase):
    async def _tenant_registry(self, tenant: UUID, gates: Sequence[Mapping[str, Any]]) -> GateRegistry:
        """The gate registry an environment of ``tenant`` is checked with: its ``plugin`` gates may name only
        gate plugins the tenant has enabled, and each gate's config merged over its instance's must fit.

        Raises:
            PluginsUnavailable: the environment has plugin gates and the integration service did not answer.
        """
        wanted = [
            str((g.get("config") or {}).get("plugin"))
            for g in gates
            if isinstance(g, Mapping) and g.get("type") == PLUGIN_GATE_TYPE and isinstance(g.get("config"), Mapping)
        ]
        if self.plugin_gates is None or PLUGIN_GATE_TYPE not in self.registry:
            return self.registry
        enabled = await self.plugin_gates.for_tenant(tenant, wanted)
        return with_plugins(self.registry, enabled.checkers(), enabled.problem)

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
            proposed = Environment.create(
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
            registry = await self._tenant_registry(cmd.tenant_id, proposed.config.gates)
        except ServiceError as exc:
            return Reply.failure(error_detail(exc))

        async def execute(conn: asyncpg.Connection) -> object:
            now = self.clock()
            environment = validate_environment(
                registry,
                Environment.create(
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
        registry = self.registry
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
                if cmd.config is not None:
                    # Unchanged gates are not checked again: a plugin disabled since denies when evaluated.
                    registry = await self._tenant_registry(cmd.tenant_id, proposed.config.gates)
        except ServiceError as exc:
            return Reply.failure(error_detail(exc))

        async def execute(conn: asyncpg.Connection) -> object:
            current = await repo.get_environment(conn, cmd.tenant_id, cmd.environment_id, lock=True)
            if current is None:
                raise EnvironmentNotFound(f"environment {cmd.environment_id} does not exist")
            changes = cmd.model_dump(
                include={"display_name", "order_index", "required_approvals", "require_sod", "config"},
                exclude_none=True,
            )
            environment = validate_environment(registry, repo.environment_of(current, cmd.tenant_id).updated(**changes))
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
                raise EnvironmentNotFound(f"environment {cmd.environment_id} does not exist")
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

    async def add_freeze_window(self, cmd: c.AddFreezeWindow) -> Reply:
        """Add a deny (freeze) or allow (deployment) window; one that is already active starts now."""

        async def execute(conn: asyncpg.Connection) -> object:
            environment = await repo.get_environment(conn, cmd.tenant_id, cmd.environment_id, lock=True)
            if environment is None:
                raise EnvironmentNotFound(f"environment {cmd.environment_id} does not exist")
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
                raise EnvironmentNotFound(f"environment {cmd.environment_id} does not exist")
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

    async def get_environment(self, q: c.GetEnvironment) -> Reply:
        """One environment."""
        async with self._pool().acquire() as conn:
            view = await repo.get_environment(conn, q.tenant_id, q.environment_id)
        if view is None:
            raise EnvironmentNotFound(f"environment {q.environment_id} does not exist")
        return Reply.success(view.model_dump(mode="json"))

    async def list_environments(self, q: c.ListEnvironments) -> Reply:
        """A page of environments in promotion order."""
        async with self._pool().acquire() as conn:
            items, token = await repo.list_environments(conn, q.tenant_id, q.page.page_size, q.page.page_token)
        return page_reply(items, token)

    async def list_freeze_windows(self, q: c.ListFreezeWindows) -> Reply:
        """A page of an environment's windows."""
        async with self._pool().acquire() as conn:
            if await repo.get_environment(conn, q.tenant_id, q.environment_id) is None:
                raise EnvironmentNotFound(f"environment {q.environment_id} does not exist")
            items, token = await repo.list_windows(
                conn, q.tenant_id, q.environment_id, q.page.page_size, q.page.page_token
            )
        return page_reply(items, token)

    async def get_environment_state(self, q: c.GetEnvironmentState) -> Reply:
        """Whether the environment is open for promotions now, and when that changes."""
        async with self._pool().acquire() as conn:
            if await repo.get_environment(conn, q.tenant_id, q.environment_id) is None:
                raise EnvironmentNotFound(f"environment {q.environment_id} does not exist")
            windows = await repo.windows_of_environment(conn, q.tenant_id, q.environment_id)
        view = _state_view(q.environment_id, windows, self.clock())
        return Reply.success(view.model_dump(mode="json"))

    async def get_environment_board(self, q: c.GetEnvironmentBoard) -> Reply:
        """Every environment with its freeze state (and windows), and the cells of the newest releases.

        Three statements whatever the number of environments, read in one snapshot so that the cells and
        the environments agree.
        """
        async with self._pool().acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            environments = await repo.board_environments(conn, q.tenant_id, c.BOARD_MAX_ENVIRONMENTS)
            windows = await repo.windows_of_environments(conn, q.tenant_id, [e.id for e in environments])
            cells = await repo.board_cells(conn, q.tenant_id, q.releases)
        now = self.clock()
        entries = [
            c.EnvironmentBoardEntry(
                environment=environment,
                state=_state_view(environment.id, windows[environment.id], now),
                windows=[w.view for w in windows[environment.id]] if q.include_windows else [],
            )
            for environment in environments
        ]
        board = c.EnvironmentBoardView(environments=entries, cells=cells)
        return Reply.success(board.model_dump(mode="json"))


def _state_view(environment_id: UUID, windows: list[repo.StoredWindow], now: datetime) -> c.EnvironmentStateView:
    """Whether an environment with these windows is open at ``now``, and when that changes."""
    state = freeze.environment_state([s.window for s in windows], now)
    return c.EnvironmentStateView(
        environment_id=environment_id,
        closed=state.closed,
        reason=state.reason,
        next_open=state.next_open,
        next_close=state.next_close,
        active_window_ids=[UUID(i) for i in state.active_window_ids],
        evaluated_at=now,
    )
