"""Workflow service routes: message -> handler call. No logic here."""

from __future__ import annotations

from faststream.nats import NatsRouter

from stella.contracts import workflow as c
from stella.kit.broker import CommandRoutes, QueryRoutes
from stella.kit.service import ServiceRuntime
from stella.workflow.handlers import Handlers


def register(runtime: ServiceRuntime, router: NatsRouter, handlers: Handlers) -> None:
    """Attach the workflow commands and queries to ``router``."""
    commands = CommandRoutes(c.CONTEXT, runtime.name)
    commands.on(c.SAVE_TEMPLATE, c.SaveTemplate, handlers.save_template)
    commands.on(c.START_RUN, c.StartRun, handlers.start_run)
    commands.on(c.COMPLETE_STEP, c.CompleteStep, handlers.complete_step)
    commands.on(c.CANCEL_RUN, c.CancelRun, handlers.cancel_run)
    commands.attach(router, runtime)

    queries = QueryRoutes(c.CONTEXT, runtime.name)
    queries.on(c.GET_TEMPLATE, c.GetTemplate, handlers.get_template)
    queries.on(c.LIST_TEMPLATES, c.ListTemplates, handlers.list_templates)
    queries.on(c.GET_RUN, c.GetRun, handlers.get_run)
    queries.attach(router, runtime)
