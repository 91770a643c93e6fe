"""Promotion service routes: message -> handler call. No logic here."""

from __future__ import annotations

from faststream.nats import NatsRouter

from stella.contracts import approval as a
from stella.contracts import deployment as d
from stella.contracts import promotion as c
from stella.contracts import workflow as w
from stella.contracts.workflow import ExecuteStep
from stella.kit.broker import CommandRoutes, EventRoutes, QueryRoutes
from stella.kit.service import ServiceRuntime
from stella.promotion.handlers import Handlers

QUERY_WORKERS = 16
"""Queries taken at once (``STELLA_PROMOTION_QUERY_WORKERS`` overrides it): each waits on Postgres, and the
pool (``db_pool_size``, 10) bounds how many read at once, its connections taken in turn with the commands and
events (each consumer handles up to ``max_in_flight`` at once). Fewer workers than connections left the
evidence service's decision reads and the deploy steps' environment reads queued behind the dashboard's and
each other: at 64 promotions in flight, decision packets followed their decision by p50 0.9-1.3 s (max
10-16 s) with four, 0.3 s (max 2-3 s) with eight or sixteen (docs/performance.md)."""


def register(runtime: ServiceRuntime, router: NatsRouter, handlers: Handlers) -> None:
    """Attach the promotion commands, queries, and the approval decisions, run ends and job ends it consumes."""
    commands = CommandRoutes(c.CONTEXT, runtime.name)
    commands.on(c.CREATE_ENVIRONMENT, c.CreateEnvironment, handlers.create_environment)
    commands.on(c.UPDATE_ENVIRONMENT, c.UpdateEnvironment, handlers.update_environment)
    commands.on(c.DELETE_ENVIRONMENT, c.DeleteEnvironment, handlers.delete_environment)
    commands.on(c.ADD_FREEZE_WINDOW, c.AddFreezeWindow, handlers.add_freeze_window)
    commands.on(c.REMOVE_FREEZE_WINDOW, c.RemoveFreezeWindow, handlers.remove_freeze_window)
    commands.on(c.RECORD_SCAN_RESULT, c.RecordScanResult, handlers.record_scan_result)
    commands.on(c.REQUEST_PROMOTION, c.RequestPromotion, handlers.request_promotion)
    commands.on(c.CANCEL_PROMOTION, c.CancelPromotion, handlers.cancel_promotion)
    commands.on(c.OVERRIDE_FREEZE, c.OverrideFreeze, handlers.override_freeze)
    commands.on(c.EVALUATE_GATES, ExecuteStep, handlers.evaluate_gates)
    commands.attach(router, runtime)

    queries = QueryRoutes(c.CONTEXT, runtime.name, workers=QUERY_WORKERS)
    queries.on(c.GET_ENVIRONMENT, c.GetEnvironment, handlers.get_environment)
    queries.on(c.LIST_ENVIRONMENTS, c.ListEnvironments, handlers.list_environments)
    queries.on(c.LIST_FREEZE_WINDOWS, c.ListFreezeWindows, handlers.list_freeze_windows)
    queries.on(c.GET_ENVIRONMENT_STATE, c.GetEnvironmentState, handlers.get_environment_state)
    queries.on(c.GET_ENVIRONMENT_BOARD, c.GetEnvironmentBoard, handlers.get_environment_board)
    queries.on(c.GET_PROMOTION, c.GetPromotion, handlers.get_promotion)
    queries.on(c.LIST_PROMOTIONS, c.ListPromotions, handlers.list_promotions)
    queries.on(c.GET_DECISION, c.GetDecision, handlers.get_decision)
    queries.attach(router, runtime)

    approvals = EventRoutes(runtime.name, "approvals", f"stella.evt.{a.CONTEXT}.>", lambda: runtime.pool)
    approvals.on(a.APPROVAL_REQUESTED, a.ApprovalChanged, handlers.on_approval_requested)
    approvals.on(a.APPROVAL_GRANTED, a.ApprovalChanged, handlers.on_approval_decided)
    approvals.on(a.APPROVAL_DENIED, a.ApprovalChanged, handlers.on_approval_decided)
    approvals.attach(router, runtime)

    runs = EventRoutes(
        runtime.name, "workflow-runs", f"stella.evt.{w.CONTEXT}.>", lambda: runtime.pool, per_subject=True
    )
    runs.on(w.RUN_COMPLETED, w.RunCompleted, handlers.on_run_ended)
    runs.on(w.RUN_FAILED, w.RunFailed, handlers.on_run_ended)
    runs.attach(router, runtime)

    jobs = EventRoutes(
        runtime.name, "deployment-jobs", f"stella.evt.{d.CONTEXT}.>", lambda: runtime.pool, per_subject=True
    )
    jobs.on(d.JOB_STARTED, d.JobStarted, handlers.on_job_started)
    jobs.on(d.JOB_COMPLETED, d.JobCompleted, handlers.on_job_completed)
    jobs.attach(router, runtime)
