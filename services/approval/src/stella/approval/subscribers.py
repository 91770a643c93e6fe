"""Approval service routes: message -> handler call. No logic here."""

from __future__ import annotations

from faststream.nats import NatsRouter

from stella.approval.handlers import Handlers
from stella.contracts import approval as c
from stella.contracts.workflow import ExecuteStep
from stella.kit.broker import CommandRoutes, QueryRoutes
from stella.kit.service import ServiceRuntime


def register(runtime: ServiceRuntime, router: NatsRouter, handlers: Handlers) -> None:
    """Attach the approval commands (the workflow's approval step among them) and queries to ``router``."""
    commands = CommandRoutes(c.CONTEXT, runtime.name)
    commands.on(c.REQUEST_APPROVALS, ExecuteStep, handlers.request_approvals)
    commands.on(c.CAST_VOTE, c.CastVote, handlers.cast_vote)
    commands.on(c.CANCEL_APPROVALS, c.CancelApprovals, handlers.cancel_approvals)
    commands.attach(router, runtime)

    queries = QueryRoutes(c.CONTEXT, runtime.name)
    queries.on(c.GET_APPROVALS, c.GetApprovals, handlers.get_approvals)
    queries.attach(router, runtime)
