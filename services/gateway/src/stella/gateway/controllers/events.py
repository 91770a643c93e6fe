"""``/api/v1/events``: the tenant's public events, live (Server-Sent Events) or as a list, and their catalogue.

The live stream is read by the gateway from the public JetStream stream (see :mod:`stella.gateway.streams`);
the list from the events service, which records every public event. Both need ``promotion:read`` (every role
has it) and show only the caller's tenant. ``GET /api/v1/asyncapi.json`` describes every event type.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter
from litestar.response import Stream

from stella.contracts import events as contract
from stella.contracts.public import CATALOGUE, check_resource_filter
from stella.gateway.auth import Identity, require
from stella.gateway.controllers.webhooks import checked_types
from stella.gateway.dependencies import problems
from stella.gateway.pagination import PageParams
from stella.gateway.permissions import Action, Resource
from stella.gateway.problems import ProblemError
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import CloudEventPage, EventTypeList, EventTypeOut
from stella.gateway.streams import MEDIA_TYPE, StreamFilter, parse_last_event_id

BASE = "/api/v1/events"

TypeFilter = Annotated[
    list[str] | None,
    QueryParameter(
        name="type",
        description="Only these types (repeat the parameter), each a type of GET /events/types or "
        "org.stellaops.<context>.*.",
        max_items=100,
    ),
]
ResourceFilter = Annotated[
    str | None,
    QueryParameter(
        description="Only events about this resource: <kind>/<id>, kind one of releases, promotions, environments, "
        "evidence, webhooks (e.g. promotions/7c9e6679-7425-40de-944b-e07fc1f90ae7).",
        max_length=200,
    ),
]


def checked_resource(value: str | None) -> str | None:
    """A resource filter ``<kind>/<uuid>``; 400 ``VAL_INVALID_RESOURCE_FILTER`` otherwise."""
    if value is None:
        return None
    try:
        return check_resource_filter(value)
    except ValueError as exc:
        raise ProblemError(
            400, "VAL_INVALID_RESOURCE_FILTER", str(exc), errors=[{"loc": ["query", "resource"], "msg": str(exc)}]
        ) from None


class EventController(Controller):
    """Public events of the caller's tenant."""

    path = BASE
    tags = ["events"]

    @get(
        "/types",
        operation_id="listEventTypes",
        summary="List the public event types",
        guards=[require(Resource.PROMOTION, Action.READ)],
        responses=problems(403),
    )
    async def list_types(self, identity: NamedDependency[Identity]) -> EventTypeList:
        """Every public event type, with its data schema's URI and its NATS subject. The AsyncAPI document
        (``GET /api/v1/asyncapi.json``) has each type's JSON Schema."""
        return EventTypeList(
            items=[
                EventTypeOut(
                    type=spec.type,
                    summary=spec.summary,
                    dataschema=spec.dataschema,
                    nats_subject=f"stella.public.<tenant>.{spec.context}.{spec.event}",
                )
                for spec in CATALOGUE
            ]
        )

    @get(
        "/",
        operation_id="listEvents",
        summary="List public events",
        guards=[require(Resource.PROMOTION, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_events(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        event_type: TypeFilter = None,
        resource: ResourceFilter = None,
    ) -> CloudEventPage:
        """The tenant's public events as recorded (kept 30 days), oldest first, as CloudEvents."""
        query = call.query(
            contract.ListEvents,
            types=checked_types(event_type, "query") or [],
            resource=checked_resource(resource),
            page=page.to_contract(),
        )
        return parse_data(CloudEventPage, await relay.query(contract.LIST_EVENTS, query))

    @get(
        "/stream",
        operation_id="streamEvents",
        summary="Follow public events live (Server-Sent Events)",
        guards=[require(Resource.PROMOTION, Action.READ)],
        media_type=MEDIA_TYPE,
        responses={
            200: ResponseSpec(
                data_container=str,
                generate_examples=False,
                media_type=MEDIA_TYPE,
                description="An endless stream of 'id: <n>', 'event: <type>', 'data: <CloudEvent JSON>' blocks",
            ),
            **problems(400, 403, 410),
        },
    )
    async def stream(
        self,
        request: Request[Any, Any, Any],
        identity: NamedDependency[Identity],
        runtime: NamedDependency[Runtime],
        event_type: TypeFilter = None,
        resource: ResourceFilter = None,
        last_event_id: Annotated[
            str | None,
            QueryParameter(
                description="Resume after this event (for clients that cannot send the Last-Event-ID header).",
                max_length=40,
            ),
        ] = None,
    ) -> Stream:
        """The tenant's public events as they happen. Reconnect with ``Last-Event-ID`` (the ``id`` of the last
        event received) to get every later event exactly once; ``0`` replays all events kept (7 days). An id
        the stream never sent is a 400 ``VAL_INVALID_LAST_EVENT_ID``; one whose successors are no longer kept
        a 410 ``RES_EVENTS_EXPIRED``."""
        header = request.headers.get("last-event-id")
        resume = parse_last_event_id(header if header is not None else last_event_id)
        flt = StreamFilter(types=tuple(checked_types(event_type, "query") or ()), resource=checked_resource(resource))
        events = await runtime.get_event_streams().open(identity.tenant_id, flt, resume)
        return Stream(
            events,
            media_type=MEDIA_TYPE,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
