"""``/api/v1/webhooks``: outside systems' subscriptions to the tenant's public events, and their delivery logs.

Served by the events service, which checks each URL (HTTPS, and only public addresses unless the operator
allows a network), makes the signing secret and delivers. Permissions: ``integration:read`` to see webhooks
and deliveries, ``integration:create`` / ``update`` / ``delete`` to change them (redelivering is an update).
Event type filters are checked here against the catalogue (400 ``VAL_UNKNOWN_EVENT_TYPE``).
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter, QueryParameter

from stella.contracts import events as contract
from stella.contracts.public import check_type_filter
from stella.gateway.auth import require
from stella.gateway.dependencies import ID_SCHEMA, location, parse_id, problems
from stella.gateway.idempotency import REDACT_OPT
from stella.gateway.pagination import PageParams
from stella.gateway.permissions import Action, Resource
from stella.gateway.problems import ProblemError
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import (
    DeliveryOut,
    DeliveryPage,
    DeliveryStatus,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookPage,
    WebhookUpdate,
)

BASE = "/api/v1/webhooks"
_ID = Parameter(description="Webhook id", schema_extra=ID_SCHEMA)
_DELIVERY_ID = Parameter(description="Delivery id", schema_extra=ID_SCHEMA)


def checked_types(values: list[str] | None, where: str = "body") -> list[str] | None:
    """Event type filters, each an exact type of the catalogue or ``org.stellaops.<context>.*``.

    Raises:
        ProblemError: 400 ``VAL_UNKNOWN_EVENT_TYPE`` naming every unknown filter.
    """
    if values is None:
        return None
    errors = []
    for index, value in enumerate(values):
        try:
            check_type_filter(value)
        except ValueError as exc:
            loc: list[str | int] = [where, "event_types", index] if where == "body" else [where, "type"]
            errors.append({"loc": loc, "msg": str(exc)})
    if errors:
        raise ProblemError(
            400,
            "VAL_UNKNOWN_EVENT_TYPE",
            "Unknown event type: use the types of GET /api/v1/events/types, or org.stellaops.<context>.*.",
            errors=errors,
        )
    return values


class WebhookController(Controller):
    """Webhooks of the caller's tenant."""

    path = BASE
    tags = ["webhooks"]

    @post(
        "/",
        operation_id="createWebhook",
        summary="Create a webhook",
        guards=[require(Resource.INTEGRATION, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the new webhook", documentation_only=True)
        ],
        opt={REDACT_OPT: ("secret",)},
    )
    async def create_webhook(
        self,
        data: JSONBody[WebhookCreate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
    ) -> Response[WebhookCreated]:
        """Subscribe a URL to the tenant's public events. The answer holds the signing secret, shown only here.

        Each event is POSTed as a CloudEvent (``application/cloudevents+json``) with the Standard Webhooks
        headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``; any 2xx accepts it, anything
        else is retried with back-off for 24 hours. A URL that is not HTTPS (422 ``VAL_WEBHOOK_URL_NOT_HTTPS``)
        or resolves to a loopback, link-local, private or reserved address (422 ``VAL_WEBHOOK_URL_FORBIDDEN``)
        is refused unless the operator allows it.
        """
        checked_types(data.event_types)
        command = call.command(contract.CreateWebhook, **data.model_dump())
        created = parse_data(WebhookCreated, await relay.command(call, contract.CREATE_WEBHOOK, command))
        return Response(created, status_code=201, headers={"Location": location(runtime, f"{BASE}/{created.id}")})

    @get(
        "/",
        operation_id="listWebhooks",
        summary="List webhooks",
        guards=[require(Resource.INTEGRATION, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_webhooks(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], page: NamedDependency[PageParams]
    ) -> WebhookPage:
        """The tenant's webhooks, oldest first."""
        query = call.query(contract.ListWebhooks, page=page.to_contract())
        return parse_data(WebhookPage, await relay.query(contract.LIST_WEBHOOKS, query))

    @get(
        "/{webhook_id:str}",
        operation_id="getWebhook",
        summary="Read a webhook",
        guards=[require(Resource.INTEGRATION, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_webhook(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], webhook_id: str = _ID
    ) -> WebhookOut:
        """Read a webhook: its URL, filters, whether it is enabled and how its deliveries fare."""
        query = call.query(contract.GetWebhook, webhook_id=parse_id(webhook_id, "webhook_id"))
        return parse_data(WebhookOut, await relay.query(contract.GET_WEBHOOK, query))

    @put(
        "/{webhook_id:str}",
        operation_id="updateWebhook",
        summary="Change a webhook",
        guards=[require(Resource.INTEGRATION, Action.UPDATE)],
        responses=problems(400, 403, 404, 422),
    )
    async def update_webhook(
        self,
        data: JSONBody[WebhookUpdate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        webhook_id: str = _ID,
    ) -> WebhookOut:
        """Change a webhook's URL, filters, description or state. ``enabled: true`` on a disabled webhook resumes
        its waiting deliveries; a new URL is checked as on creation."""
        checked_types(data.event_types)
        command = call.command(
            contract.UpdateWebhook,
            webhook_id=parse_id(webhook_id, "webhook_id"),
            **data.model_dump(exclude_none=True),
        )
        return parse_data(WebhookOut, await relay.command(call, contract.UPDATE_WEBHOOK, command))

    @delete(
        "/{webhook_id:str}",
        operation_id="deleteWebhook",
        summary="Delete a webhook",
        guards=[require(Resource.INTEGRATION, Action.DELETE)],
        responses=problems(400, 403, 404),
    )
    async def delete_webhook(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], webhook_id: str = _ID
    ) -> None:
        """Delete a webhook and its delivery log; nothing more is sent to it."""
        command = call.command(contract.DeleteWebhook, webhook_id=parse_id(webhook_id, "webhook_id"))
        await relay.command(call, contract.DELETE_WEBHOOK, command)

    @get(
        "/{webhook_id:str}/deliveries",
        operation_id="listWebhookDeliveries",
        summary="A webhook's delivery log",
        guards=[require(Resource.INTEGRATION, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def list_deliveries(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        webhook_id: str = _ID,
        status: Annotated[DeliveryStatus | None, QueryParameter(description="Only deliveries in this state.")] = None,
    ) -> DeliveryPage:
        """Every event sent (or waiting to be sent) to the webhook, newest first, with each attempt's status,
        duration, error and the start of the receiver's answer."""
        query = call.query(
            contract.ListDeliveries,
            webhook_id=parse_id(webhook_id, "webhook_id"),
            status=status.value if status is not None else None,
            page=page.to_contract(),
        )
        return parse_data(DeliveryPage, await relay.query(contract.LIST_DELIVERIES, query))

    @post(
        "/{webhook_id:str}/deliveries/{delivery_id:str}/redeliver",
        operation_id="redeliverWebhookDelivery",
        summary="Send a delivery's event again",
        guards=[require(Resource.INTEGRATION, Action.UPDATE)],
        status_code=202,
        responses=problems(400, 403, 404, 409),
    )
    async def redeliver(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        webhook_id: str = _ID,
        delivery_id: str = _DELIVERY_ID,
    ) -> DeliveryOut:
        """Queue the delivery's event for the webhook again, as a new delivery with its own retries (same
        ``webhook-id``, so a receiver that got it already can tell). 409 ``INT_WEBHOOK_DISABLED`` while the
        webhook is disabled."""
        command = call.command(
            contract.Redeliver,
            webhook_id=parse_id(webhook_id, "webhook_id"),
            delivery_id=parse_id(delivery_id, "delivery_id"),
        )
        return parse_data(DeliveryOut, await relay.command(call, contract.REDELIVER, command))
