"""Events service routes: message -> handler call. No logic here."""

from __future__ import annotations

from faststream.nats import NatsRouter

from stella.contracts import events as c
from stella.contracts.public import CATALOGUE
from stella.contracts.streams import EVENT_PREFIX
from stella.events.handlers import Handlers
from stella.kit.broker import CommandRoutes, EventRoutes, QueryRoutes
from stella.kit.service import ServiceRuntime


def register(runtime: ServiceRuntime, router: NatsRouter, handlers: Handlers, *, projection_batch_size: int) -> None:
    """Attach the projection of every internal event the catalogue names, the webhook commands and the queries."""
    projection = EventRoutes(
        runtime.name, "projection", f"{EVENT_PREFIX}.>", lambda: runtime.pool, batch_size=projection_batch_size
    )
    for spec in CATALOGUE:
        if spec.internal is not None and spec.internal_model is not None:
            projection.on(spec.internal, spec.internal_model, handlers.projector(spec))
    projection.attach(router, runtime)

    commands = CommandRoutes(c.CONTEXT, runtime.name)
    commands.on(c.CREATE_WEBHOOK, c.CreateWebhook, handlers.create_webhook)
    commands.on(c.UPDATE_WEBHOOK, c.UpdateWebhook, handlers.update_webhook)
    commands.on(c.DELETE_WEBHOOK, c.DeleteWebhook, handlers.delete_webhook)
    commands.on(c.REDELIVER, c.Redeliver, handlers.redeliver)
    commands.attach(router, runtime)

    queries = QueryRoutes(c.CONTEXT, runtime.name)
    queries.on(c.GET_WEBHOOK, c.GetWebhook, handlers.get_webhook)
    queries.on(c.LIST_WEBHOOKS, c.ListWebhooks, handlers.list_webhooks)
    queries.on(c.LIST_DELIVERIES, c.ListDeliveries, handlers.list_deliveries)
    queries.on(c.LIST_EVENTS, c.ListEvents, handlers.list_events)
    queries.attach(router, runtime)
