"""Use cases of the workflow service: lock the run -> domain -> save + outbox, in one transaction.

Every change of a run happens with its row locked (``SELECT ... FOR UPDATE``), so two replicas, or two
results of parallel steps arriving at once, never advance a run from the same stale state. The
``ExecuteStep`` of a started attempt is written to the outbox in the transaction that records the attempt as
started, with the attempt's deterministic id as ``message_id``: a crash before the commit loses both, a
crash after it loses neither, and a resend is dropped by the stream's duplicate window and the receiver's
inbox.

Retries, timeouts and timers need no message: each run stores ``next_wakeup_at`` and the run timer
(:attr:`Handlers.due`) sleeps until the earliest one.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID, uuid4, uuid5

import asyncpg

from stella.contracts import workflow as c
from stella.contracts.deployment import STEP_OUTPUT_JOB_ID
from stella.contracts.envelope import Message, Page, Reply, utcnow
from stella.kit.broker import CommandProcessor
from stella.kit.errors import ServiceError, error_detail
from stella.kit.faults import is_transient
from stella.kit.outbox import add_events
from stella.kit.timers import DueLoop
from stella.plugins import PluginRunner
from stella.workflow import engine, repo
from stella.workflow.domain.errors import InvalidTemplate, TemplateNotFound
from stella.workflow.domain.events import (
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepSkipped,
    StepStarted,
    WorkflowEvent,
)
from stella.workflow.domain.run import new_run, step_attempt_id
from stella.workflow.domain.scheduler import StartStep
from stella.workflow.domain.template import WorkflowTemplate
from stella.workflow.domain.validation import parse_template, validate_template
from stella.workflow.executors import StepExecutors
from stella.workflow.templates import BUILTIN_STEP_TYPES, BUILTIN_TEMPLATES, BuiltinStepType, builtin_template_id

log = logging.getLogger(__name__)

_SUBJECT_RUN_NAMESPACE: Final = UUID("5d7f3a8e-0c41-4f7e-8f4b-3b2f5e9a7c61")
_BUILTIN_NAMES: Final = frozenset(template.name for template in BUILTIN_TEMPLATES)
_LOCKED_PAUSE_S: Final = 0.05
_RECORD_ATTEMPTS: Final = 8


@dataclass(frozen=True)
class Execution:
    """An attempt this service executes itself, started once the transaction that started it committed."""

    tenant_id: UUID
    run_id: UUID
    correlation_id: UUID
    start: StartStep


def deployment_jobs(template: WorkflowTemplate, progress: engine.Progress) -> list[UUID]:
    """The job ids the run's ``deploy`` steps reported (``STEP_OUTPUT_JOB_ID`` of their latest outputs), in
    template order."""
    jobs: list[UUID] = []
    for node in template.nodes:
        step = progress.steps.get(node.id)
        job_id = (
            step.outputs.get(STEP_OUTPUT_JOB_ID) if step is not None and node.type == BuiltinStepType.DEPLOY else None
        )
        if isinstance(job_id, str):
            try:
                jobs.append(UUID(job_id))
            except ValueError:
                continue  # not a job id: the step's executor says nothing about a job
    return jobs


def subject_run_id(subject_id: UUID, template_name: str) -> UUID:
    """The run id of a ``StartRun`` that names a subject but no run id: one run per subject and template."""
    return uuid5(_SUBJECT_RUN_NAMESPACE, f"{subject_id}/{template_name}")


def template_definition(cmd: c.SaveTemplate) -> dict[str, Any]:
    """The domain's JSON form of the template a ``SaveTemplate`` carries (its version is assigned on save).

    ``inputs`` arrive keyed by name (``{name: {required, default, description}}``); the domain lists them.

    Raises:
        InvalidTemplate: when an input's declaration is not an object.
    """
    inputs: list[dict[str, Any]] = []
    for name, spec in cmd.inputs.items():
        if not isinstance(spec, Mapping):
            raise InvalidTemplate(f"input {name!r} must be an object {{required, default, description}}")
        inputs.append({"name": name, **spec})
    return {
        "name": cmd.name,
        "version": 1,
        "nodes": [node.model_dump(mode="json") for node in cmd.nodes],
        "edges": [edge.model_dump(mode="json", by_alias=True) for edge in cmd.edges],
        "inputs": inputs,
        "outputs": dict(cmd.outputs),
    }


class Handlers:
    """The workflow service's command and query handlers, and its run timer."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        commands: CommandProcessor,
        *,
        timer_batch_size: int = 100,
        timer_retry_s: float = 30.0,
        timer_max_sleep_s: float = 60.0,
        template_cache_size: int = 1024,
        executors: StepExecutors | None = None,
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], UUID] = uuid4,
    ) -> None:
        self._pool = pool
        self.commands = commands
        self.timer_batch_size = timer_batch_size
        self.timer_retry_s = timer_retry_s
        self.template_cache_size = template_cache_size
        self.clock = clock
        self.new_id = new_id
        self._templates: dict[UUID, WorkflowTemplate] = {}
        self.executors = executors or StepExecutors((), PluginRunner())
        self._executions: set[asyncio.Task[None]] = set()
        self.due = DueLoop("workflow-runs", self.next_due, self.run_due, clock=clock, max_sleep_s=timer_max_sleep_s)
        """The run timer: advances runs whose ``next_wakeup_at`` has come (start it with the service)."""

    # --- templates --------------------------------------------------------------------------------------

    async def install_builtin_templates(self) -> None:
        """Store the built-in template versions this code ships that the database does not have yet."""
        rows = [
            {
                "id": str(builtin_template_id(template.name, template.version)),
                "name": template.name,
                "version": template.version,
                "description": template.description,
                "definition": validate_template(template, BUILTIN_STEP_TYPES).to_dict(),
            }
            for template in BUILTIN_TEMPLATES
        ]
        async with self._pool().acquire() as conn:
            await repo.insert_builtin_templates(conn, rows, self.clock())

    async def save_template(self, cmd: c.SaveTemplate) -> Reply:
        """Validate a template and store it as the next version of the tenant's template of that name.

        Its ``script`` steps may name only step plugins the tenant has enabled (asked of the integration
        service before the transaction opens).
        """
        if (seen := await self.commands.seen(cmd)) is not None:
            return seen
        wanted = [str(n.config.get("plugin")) for n in cmd.nodes if n.type == BuiltinStepType.SCRIPT.value]
        try:
            enabled = await self.executors.step_plugins(cmd.tenant_id, wanted)
        except ServiceError as exc:
            return Reply.failure(error_detail(exc))

        async def execute(conn: asyncpg.Connection) -> object:
            if cmd.name in _BUILTIN_NAMES:
                raise engine.TemplateNameReserved(f"{cmd.name!r} is a built-in template; save under another name")
            engine.check_promotion_template(cmd)
            parsed = parse_template(template_definition(cmd), tenant_id=cmd.tenant_id)
            template = validate_template(parsed, BUILTIN_STEP_TYPES)
            engine.check_step_configs(
                template,
                step_plugins=enabled.checkers(),
                plugin_problem=enabled.problem,
                http_allowed_hosts=self.executors.http_allowed_hosts,
            )
            version = await repo.next_template_version(conn, cmd.tenant_id, cmd.name)
            template = replace(template, version=version)
            record = await repo.insert_template(
                conn,
                cmd.tenant_id,
                self.new_id(),
                template.name,
                version,
                template.description,
                template.to_dict(),
                self.clock(),
            )
            return repo.template_view(record).model_dump(mode="json", by_alias=True)

        return await self.commands.run(cmd, execute)

    def _template(self, record: repo.TemplateRecord) -> WorkflowTemplate:
        """The parsed template of a stored version (cached: a stored version never changes)."""
        cached = self._templates.get(record.id)
        if cached is None:
            cached = parse_template(record.definition, tenant_id=record.tenant_id)
            if len(self._templates) >= self.template_cache_size:
                self._templates.clear()
            self._templates[record.id] = cached
        return cached

    async def _run_template(self, conn: asyncpg.Connection, record: repo.RunRecord) -> WorkflowTemplate:
        """The template version a run pinned."""
        run = record.run
        cached = self._templates.get(run.template_id)
        if cached is not None:
            return cached
        stored = await repo.get_template_by_id(conn, run.tenant_id, run.template_id)
        if stored is None:
            # The foreign key makes this impossible short of manual deletion: a fault, not a caller's error.
            raise RuntimeError(f"run {run.id} pins template {run.template_id}, which is missing")
        return self._template(stored)

    # --- runs -------------------------------------------------------------------------------------------

    async def start_run(self, cmd: c.StartRun) -> Reply:
        """Start a run of a template version; the same run id starts one run however often it is sent."""
        run_id = cmd.run_id or (
            subject_run_id(cmd.subject_id, cmd.template_name) if cmd.subject_id is not None else self.new_id()
        )

        launch: list[Execution] = []
        wakeups: list[datetime | None] = []  # the saved run's next wake-up (none saved: no timer read)

        async def execute(conn: asyncpg.Connection) -> object:
            launch.clear()
            wakeups.clear()
            existing = await self._existing_run(conn, cmd, run_id)
            if existing is not None:
                return existing.model_dump(mode="json")
            stored = await repo.get_template(conn, cmd.tenant_id, cmd.template_name, cmd.template_version)
            if stored is None:
                raise TemplateNotFound(f"no workflow template {_describe(cmd.template_name, cmd.template_version)}")
            template = self._template(stored)
            now = self.clock()
            created = new_run(
                run_id=run_id,
                tenant_id=cmd.tenant_id,
                template=template,
                template_id=stored.id,
                inputs=cmd.inputs,
                now=now,
                context={"subject_id": _str(cmd.subject_id), "started_by": _str(cmd.actor_id)},
            )
            progress = engine.begin(template, created.run, created.steps, now=now)
            record = repo.RunRecord(run=progress.run, subject_id=cmd.subject_id, correlation_id=cmd.correlation_id)
            if not await repo.insert_run(conn, record, now):
                # Started at the same moment by a concurrent delivery of another message with this run id.
                existing = await self._existing_run(conn, cmd, run_id)
                if existing is None:
                    raise engine.RunConflict(f"run id {run_id} is already in use")
                return existing.model_dump(mode="json")
            progress.changed = set(progress.steps)
            view = await self._save(conn, template, record, progress, {}, cmd, now, new=True, launch=launch)
            wakeups.append(progress.run.next_wakeup_at)
            return view.model_dump(mode="json")

        reply = await self.commands.run(cmd, execute)
        if reply.ok:
            self._launch(launch)
        if not reply.ok and reply.error is not None and reply.error.status < 500:
            await self._announce_refused_start(cmd, run_id, reply.error.detail or reply.error.title)
        self._wake_for(wakeups)
        return reply

    def _wake_for(self, wakeups: list[datetime | None]) -> None:
        """Tell the run timer of the next wake-up a committed command set (if it may come before its next read)."""
        for at in wakeups:
            self.due.wake_for(at)

    async def _announce_refused_start(self, cmd: c.StartRun, run_id: UUID, error: str) -> None:
        """Publish ``run_failed`` for a run that could not start, so whoever started it is not left waiting.

        The start is usually sent without waiting for its reply (a promotion starts its run through its
        outbox), so the refusal must travel as an event. Its id is derived from the run id: a redelivered
        command announces the same event, which the stream and the consumers' inboxes drop.
        """
        event = c.RunFailed(
            message_id=uuid5(_SUBJECT_RUN_NAMESPACE, f"{run_id}/start-refused"),
            tenant_id=cmd.tenant_id,
            correlation_id=cmd.correlation_id,
            causation_id=cmd.message_id,
            run_id=run_id,
            subject_id=cmd.subject_id,
            status=c.RunStatus.FAILED,
            error=f"the run could not start: {error}",
            template_name=cmd.template_name,
        )
        async with self._pool().acquire() as conn, conn.transaction():
            if not await repo.outbox_holds(conn, event.message_id):
                await add_events(conn, [(c.RUN_FAILED, event)])

    async def _existing_run(self, conn: asyncpg.Connection, cmd: c.StartRun, run_id: UUID) -> c.RunView | None:
        record = await repo.get_run(conn, cmd.tenant_id, run_id)
        if record is None:
            return None
        if record.run.template_name != cmd.template_name:
            raise engine.RunConflict(
                f"run {run_id} already runs template {record.run.template_name!r}, not {cmd.template_name!r}"
            )
        stored = await repo.get_steps(conn, cmd.tenant_id, run_id)
        return repo.run_view(record, stored.steps, stored.logs)

    async def complete_step(self, cmd: c.CompleteStep) -> Reply:
        """Record a step attempt's result and advance the run; a duplicate or late result changes nothing."""

        launch: list[Execution] = []
        wakeups: list[datetime | None] = []  # the saved run's next wake-up (none saved: no timer read)

        async def execute(conn: asyncpg.Connection) -> object:
            launch.clear()
            wakeups.clear()
            record = await repo.get_run(conn, cmd.tenant_id, cmd.run_id, lock=True)
            if record is None:
                raise engine.RunNotFound(f"workflow run {cmd.run_id} does not exist")
            template = await self._run_template(conn, record)
            stored = await repo.get_steps(conn, cmd.tenant_id, cmd.run_id)
            now = self.clock()
            progress, applied = engine.record_result(
                template,
                record.run,
                stored.steps,
                node_id=cmd.node_id,
                attempt=cmd.attempt,
                outcome=cmd.status.value,
                now=now,
                outputs=cmd.outputs,
                error=cmd.error,
            )
            if applied:
                logs = dict(stored.logs)
                logs[cmd.node_id] = engine.append_logs(logs.get(cmd.node_id, ""), cmd.attempt, cmd.logs)
                await self._save(conn, template, record, progress, logs, cmd, now, launch=launch)
                wakeups.append(progress.run.next_wakeup_at)
            return {
                "run_id": str(cmd.run_id),
                "node_id": cmd.node_id,
                "attempt": cmd.attempt,
                "applied": applied,
                "run_status": progress.run.status.value,
            }

        reply = await self.commands.run(cmd, execute)
        if reply.ok:
            self._launch(launch)
        self._wake_for(wakeups)
        return reply

    async def cancel_run(self, cmd: c.CancelRun) -> Reply:
        """Cancel a run and its unsettled steps (cancelling a cancelled run again changes nothing)."""

        async def execute(conn: asyncpg.Connection) -> object:
            record = await repo.get_run(conn, cmd.tenant_id, cmd.run_id, lock=True)
            if record is None:
                raise engine.RunNotFound(f"workflow run {cmd.run_id} does not exist")
            template = await self._run_template(conn, record)
            stored = await repo.get_steps(conn, cmd.tenant_id, cmd.run_id)
            now = self.clock()
            progress = engine.cancel(template, record.run, stored.steps, now=now, reason=cmd.reason or "cancelled")
            view = await self._save(conn, template, record, progress, stored.logs, cmd, now)
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def _save(
        self,
        conn: asyncpg.Connection,
        template: WorkflowTemplate,
        record: repo.RunRecord,
        progress: engine.Progress,
        logs: Mapping[str, str],
        cause: Message | None,
        now: datetime,
        *,
        new: bool = False,
        launch: list[Execution] | None = None,
    ) -> c.RunView:
        """Write what changed and its messages (events and ``ExecuteStep`` commands) in the open transaction,
        with the statement that commits it when its owner defers the last writes (nothing reads them after).

        The attempts this service executes itself are added to ``launch``: the caller starts them once the
        transaction committed (an attempt is never executed for a start that was rolled back).
        """
        if launch is not None:
            launch.extend(
                Execution(progress.run.tenant_id, progress.run.id, record.correlation_id, start)
                for start in progress.executions
            )
        saved = replace(record, run=progress.run)
        if progress.run_changed and not new:
            await repo.update_run_at_commit(conn, progress.run, now)
        changed = [step for node_id, step in progress.steps.items() if node_id in progress.changed]
        await repo.upsert_steps_at_commit(conn, progress.run, changed, logs, template.topological_order, now)
        view = repo.run_view(saved, progress.steps.values(), logs)
        await add_events(conn, self._messages(template, saved, progress, view, cause, now))
        return view

    def _messages(
        self,
        template: WorkflowTemplate,
        record: repo.RunRecord,
        progress: engine.Progress,
        view: c.RunView,
        cause: Message | None,
        now: datetime,
    ) -> list[tuple[str, Message]]:
        """The outgoing messages of a transition, in the order its events happened.

        Each started attempt of another context's step type is followed by its ``ExecuteStep``.
        """
        envelope: dict[str, Any] = {
            "tenant_id": record.run.tenant_id,
            "correlation_id": cause.correlation_id if cause is not None else record.correlation_id,
            "causation_id": cause.message_id if cause is not None else None,
            "occurred_at": now,
        }
        dispatches = {(d.start.node_id, d.start.attempt): d for d in progress.dispatches}
        out: list[tuple[str, Message]] = []
        for event in progress.events:
            message = self._event_message(
                template, record, progress, view, event, {**envelope, "message_id": self.new_id()}
            )
            if message is not None:
                out.append(message)
            if isinstance(event, StepStarted) and (dispatch := dispatches.get((event.node_id, event.attempt))):
                out.append((dispatch.subject, self._execute_step(record, dispatch.start, envelope)))
        return out

    @staticmethod
    def _event_message(
        template: WorkflowTemplate,
        record: repo.RunRecord,
        progress: engine.Progress,
        view: c.RunView,
        event: WorkflowEvent,
        envelope: dict[str, Any],
    ) -> tuple[str, Message] | None:
        """The public event of a domain event (``StepWaiting`` has none: the attempt is still in progress)."""
        run_id = record.run.id
        if isinstance(event, RunStarted):
            return c.RUN_STARTED, c.RunStarted(run=view, **envelope)
        if isinstance(event, StepStarted):
            return c.STEP_STARTED, c.StepStarted(
                run_id=run_id, node_id=event.node_id, attempt=event.attempt, step_type=event.node_type, **envelope
            )
        if isinstance(event, StepCompleted):
            return c.STEP_COMPLETED, c.StepCompleted(
                run_id=run_id,
                node_id=event.node_id,
                attempt=event.attempt,
                status=c.StepStatus.SUCCEEDED,
                outputs=dict(event.outputs),
                **envelope,
            )
        if isinstance(event, StepSkipped):
            return c.STEP_COMPLETED, c.StepCompleted(
                run_id=run_id,
                node_id=event.node_id,
                attempt=progress.steps[event.node_id].attempt_number,
                status=c.StepStatus.SKIPPED,
                outputs={},
                **envelope,
            )
        if isinstance(event, StepFailed):
            return c.STEP_FAILED, c.StepFailed(
                run_id=run_id,
                node_id=event.node_id,
                attempt=event.attempt,
                error=event.error,
                will_retry=event.will_retry,
                **envelope,
            )
        if isinstance(event, RunCompleted):
            return c.RUN_COMPLETED, c.RunCompleted(
                run_id=run_id,
                subject_id=record.subject_id,
                outputs=dict(event.outputs),
                template_name=view.template_name,
                deployment_jobs=deployment_jobs(template, progress),
                **envelope,
            )
        if isinstance(event, RunFailed):
            return c.RUN_FAILED, c.RunFailed(
                run_id=run_id,
                subject_id=record.subject_id,
                status=c.RunStatus.FAILED,
                error=event.error,
                template_name=view.template_name,
                deployment_jobs=deployment_jobs(template, progress),
                **envelope,
            )
        if isinstance(event, RunCancelled):
            return c.RUN_FAILED, c.RunFailed(
                run_id=run_id,
                subject_id=record.subject_id,
                status=c.RunStatus.CANCELLED,
                error=event.reason,
                template_name=view.template_name,
                deployment_jobs=deployment_jobs(template, progress),
                **envelope,
            )
        return None

    def _execute_step(self, record: repo.RunRecord, start: StartStep, envelope: dict[str, Any]) -> c.ExecuteStep:
        """The command that asks another context to execute one attempt; its id is the attempt's id."""
        run = record.run
        return c.ExecuteStep(
            message_id=step_attempt_id(run.id, start.node_id, start.attempt),
            run_id=run.id,
            node_id=start.node_id,
            attempt=start.attempt,
            step_type=start.node_type,
            config=copy.deepcopy(dict(start.config)),
            inputs=copy.deepcopy(dict(start.inputs)),
            subject_id=record.subject_id,
            **envelope,
        )

    # --- run timer --------------------------------------------------------------------------------------

    async def next_due(self) -> datetime | None:
        """The earliest ``next_wakeup_at`` of any run."""
        async with self._pool().acquire() as conn:
            return await repo.next_wakeup(conn)

    async def run_due(self, now: datetime) -> None:
        """Advance every run due at ``now``, each in a transaction of its own.

        A run whose advance fails unexpectedly is logged and looked at again ``timer_retry_s`` later, so
        it cannot keep the timer from the others.
        """
        async with self._pool().acquire() as conn:
            due = await repo.due_runs(conn, now, self.timer_batch_size)
        handled = 0
        for tenant, run_id in due:
            try:
                if await self._wake_run(tenant, run_id):
                    handled += 1
            except Exception as exc:
                if is_transient(exc):
                    raise  # the database is away: the timer looks again shortly, at every due run
                log.exception("advancing a due run failed; retrying later", extra={"run_id": str(run_id)})
                async with self._pool().acquire() as conn:
                    await repo.postpone_run(conn, tenant, run_id, self.clock() + timedelta(seconds=self.timer_retry_s))
        if due and not handled:
            # Every due run is being advanced by another transaction right now; give it time to commit
            # instead of asking again at once.
            await asyncio.sleep(_LOCKED_PAUSE_S)

    async def _wake_run(self, tenant: UUID, run_id: UUID) -> bool:
        launch: list[Execution] = []
        woken = await self._advance_due_run(tenant, run_id, launch)
        self._launch(launch)
        return woken

    async def _advance_due_run(self, tenant: UUID, run_id: UUID, launch: list[Execution]) -> bool:
        async with self._pool().acquire() as conn, conn.transaction():
            now = self.clock()
            record = await repo.lock_due_run(conn, tenant, run_id, now)
            if record is None:
                return False
            template = await self._run_template(conn, record)
            stored = await repo.get_steps(conn, tenant, run_id)
            progress = engine.wake(template, record.run, stored.steps, now=now)
            await self._save(conn, template, record, progress, stored.logs, None, now, launch=launch)
            return True

    # --- steps executed here ----------------------------------------------------------------------------

    def _launch(self, executions: list[Execution]) -> None:
        """Start executing committed attempts of ``http``, ``script`` and ``notify`` steps, each in a task of its own."""
        for execution in executions:
            task = asyncio.create_task(self._execute(execution), name=f"step-{execution.start.node_id}")
            self._executions.add(task)
            task.add_done_callback(self._executions.discard)

    async def _execute(self, execution: Execution) -> None:
        """Execute one attempt and record its result as any executor's ``CompleteStep`` is recorded.

        The result's id is derived from the attempt, so recording it twice has one effect. Should this service
        stop before the result is recorded, the attempt stays running until its ``timeout_s`` fails it and its
        retry policy starts the next one.
        """
        start = execution.start
        result = await self.executors.execute(
            start, idempotency_key=start.idempotency_key, tenant_id=execution.tenant_id
        )
        ref = c.StepRef(run_id=execution.run_id, node_id=start.node_id, attempt=start.attempt)
        completion = ref.completion(
            tenant_id=execution.tenant_id,
            correlation_id=execution.correlation_id,
            causation_id=step_attempt_id(execution.run_id, start.node_id, start.attempt),
            status=result.status,
            outputs=result.outputs,
            error=result.error,
            logs=result.logs,
        )
        for attempt in range(1, _RECORD_ATTEMPTS + 1):
            try:
                reply = await self.complete_step(completion)
            except Exception as exc:
                if not is_transient(exc) or attempt == _RECORD_ATTEMPTS:
                    log.exception("could not record a step's result", extra={"node_id": start.node_id})
                    return
                await asyncio.sleep(min(2.0**attempt, 30.0))
                continue
            if not reply.ok:
                log.warning(
                    "a step's result was refused",
                    extra={"node_id": start.node_id, "error": reply.error.detail if reply.error else None},
                )
            return

    async def stop_executions(self) -> None:
        """Stop the attempts in flight (they end by their timeout and are retried by whichever replica runs)."""
        for task in list(self._executions):
            task.cancel()
        await asyncio.gather(*self._executions, return_exceptions=True)

    # --- queries ----------------------------------------------------------------------------------------

    async def get_template(self, q: c.GetTemplate) -> Reply:
        """A template version (the latest unless one is given)."""
        async with self._pool().acquire() as conn:
            record = await repo.get_template(conn, q.tenant_id, q.name, q.version)
        if record is None:
            raise TemplateNotFound(f"no workflow template {_describe(q.name, q.version)}")
        return Reply.success(repo.template_view(record).model_dump(mode="json", by_alias=True))

    async def list_templates(self, q: c.ListTemplates) -> Reply:
        """A page of templates: the built-in ones and the latest version of each of the tenant's."""
        async with self._pool().acquire() as conn:
            records, token = await repo.list_templates(conn, q.tenant_id, q.page.page_size, q.page.page_token)
        items = [repo.template_view(r).model_dump(mode="json", by_alias=True) for r in records]
        return Reply.success(Page(items=items, next_page_token=token).model_dump())

    async def get_run(self, q: c.GetRun) -> Reply:
        """A run and its steps."""
        async with self._pool().acquire() as conn:
            record = await repo.get_run(conn, q.tenant_id, q.run_id)
            if record is None:
                raise engine.RunNotFound(f"workflow run {q.run_id} does not exist")
            stored = await repo.get_steps(conn, q.tenant_id, q.run_id)
        return Reply.success(repo.run_view(record, stored.steps, stored.logs).model_dump(mode="json"))


def _str(value: UUID | None) -> str | None:
    return str(value) if value is not None else None


def _describe(name: str, version: int | None) -> str:
    return repr(name) if version is None else f"{name!r} version {version}"
