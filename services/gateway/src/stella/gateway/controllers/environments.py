"""``/api/v1/environments``: environments, their freeze windows and their open/closed state (promotion service).

Reading needs ``environment:read``, creating ``environment:create``, changing an environment or its windows
``environment:update``, deleting ``environment:delete``.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from stella.contracts import promotion as contract
from stella.gateway.auth import require
from stella.gateway.dependencies import ID_SCHEMA, location, parse_id, problems
from stella.gateway.pagination import PageParams
from stella.gateway.permissions import Action, Resource
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import (
    EnvironmentCreate,
    EnvironmentOut,
    EnvironmentPage,
    EnvironmentStateOut,
    EnvironmentUpdate,
    FreezeWindowCreate,
    FreezeWindowOut,
    FreezeWindowPage,
)

BASE = "/api/v1/environments"
_ID = Parameter(description="Environment id", schema_extra=ID_SCHEMA)
_WINDOW_ID = Parameter(description="Freeze window id", schema_extra=ID_SCHEMA)


class EnvironmentController(Controller):
    """Environments of the caller's tenant, in promotion order."""

    path = BASE
    tags = ["environments"]

    @post(
        "/",
        operation_id="createEnvironment",
        summary="Create an environment",
        guards=[require(Resource.ENVIRONMENT, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the new environment", documentation_only=True)
        ],
    )
    async def create_environment(
        self,
        data: JSONBody[EnvironmentCreate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
    ) -> Response[EnvironmentOut]:
        """Create an environment at a position of the promotion order, with its approval rules."""
        command = call.command(contract.CreateEnvironment, **data.model_dump(exclude_none=True))
        environment = parse_data(EnvironmentOut, await relay.command(call, contract.CREATE_ENVIRONMENT, command))
        return Response(
            environment, status_code=201, headers={"Location": location(runtime, f"{BASE}/{environment.id}")}
        )

    @get(
        "/",
        operation_id="listEnvironments",
        summary="List environments",
        guards=[require(Resource.ENVIRONMENT, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_environments(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], page: NamedDependency[PageParams]
    ) -> EnvironmentPage:
        """List the tenant's environments in promotion order."""
        query = call.query(contract.ListEnvironments, page=page.to_contract())
        return parse_data(EnvironmentPage, await relay.query(contract.LIST_ENVIRONMENTS, query))

    @get(
        "/{environment_id:str}",
        operation_id="getEnvironment",
        summary="Read an environment",
        guards=[require(Resource.ENVIRONMENT, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_environment(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], environment_id: str = _ID
    ) -> EnvironmentOut:
        """Read one environment."""
        query = call.query(contract.GetEnvironment, environment_id=parse_id(environment_id, "environment_id"))
        return parse_data(EnvironmentOut, await relay.query(contract.GET_ENVIRONMENT, query))

    @put(
        "/{environment_id:str}",
        operation_id="updateEnvironment",
        summary="Change an environment",
        guards=[require(Resource.ENVIRONMENT, Action.UPDATE)],
        responses=problems(400, 403, 404, 409, 422),
    )
    async def update_environment(
        self,
        data: JSONBody[EnvironmentUpdate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        environment_id: str = _ID,
    ) -> EnvironmentOut:
        """Change an environment; omitted fields keep their value. Promotions in flight keep their rules."""
        fields: dict[str, Any] = data.model_dump(exclude_none=True)
        command = call.command(
            contract.UpdateEnvironment, environment_id=parse_id(environment_id, "environment_id"), **fields
        )
        return parse_data(EnvironmentOut, await relay.command(call, contract.UPDATE_ENVIRONMENT, command))

    @delete(
        "/{environment_id:str}",
        operation_id="deleteEnvironment",
        summary="Delete an environment",
        guards=[require(Resource.ENVIRONMENT, Action.DELETE)],
        responses=problems(400, 403, 404, 409),
    )
    async def delete_environment(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], environment_id: str = _ID
    ) -> None:
        """Delete an environment and its windows; refused (409) while promotions reference it."""
        command = call.command(contract.DeleteEnvironment, environment_id=parse_id(environment_id, "environment_id"))
        await relay.command(call, contract.DELETE_ENVIRONMENT, command)

    @post(
        "/{environment_id:str}/freeze-windows",
        operation_id="addFreezeWindow",
        summary="Add a freeze or deployment window",
        guards=[require(Resource.ENVIRONMENT, Action.UPDATE)],
        status_code=201,
        responses=problems(400, 403, 404, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the environment's windows", documentation_only=True)
        ],
    )
    async def add_freeze_window(
        self,
        data: JSONBody[FreezeWindowCreate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
        environment_id: str = _ID,
    ) -> Response[FreezeWindowOut]:
        """Add a window: deny (freeze) or allow (deployment window), one-off or recurring (RRULE, IANA zone).

        The RRULE, the time zone and the bounds are checked by the promotion service (400 ``ENV_FREEZE_...``).
        """
        eid = parse_id(environment_id, "environment_id")
        command = call.command(
            contract.AddFreezeWindow,
            environment_id=eid,
            window=data.model_dump(mode="json", exclude_none=True),
        )
        window = parse_data(FreezeWindowOut, await relay.command(call, contract.ADD_FREEZE_WINDOW, command))
        return Response(
            window, status_code=201, headers={"Location": location(runtime, f"{BASE}/{eid}/freeze-windows")}
        )

    @get(
        "/{environment_id:str}/freeze-windows",
        operation_id="listFreezeWindows",
        summary="List an environment's windows",
        guards=[require(Resource.ENVIRONMENT, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def list_freeze_windows(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        environment_id: str = _ID,
    ) -> FreezeWindowPage:
        """List an environment's freeze and deployment windows."""
        query = call.query(
            contract.ListFreezeWindows,
            environment_id=parse_id(environment_id, "environment_id"),
            page=page.to_contract(),
        )
        return parse_data(FreezeWindowPage, await relay.query(contract.LIST_FREEZE_WINDOWS, query))

    @delete(
        "/{environment_id:str}/freeze-windows/{window_id:str}",
        operation_id="removeFreezeWindow",
        summary="Remove a window",
        guards=[require(Resource.ENVIRONMENT, Action.UPDATE)],
        responses=problems(400, 403, 404, 409),
    )
    async def remove_freeze_window(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        environment_id: str = _ID,
        window_id: str = _WINDOW_ID,
    ) -> None:
        """Remove a window; an active freeze ends now and held promotions are looked at again."""
        command = call.command(
            contract.RemoveFreezeWindow,
            environment_id=parse_id(environment_id, "environment_id"),
            window_id=parse_id(window_id, "window_id"),
        )
        await relay.command(call, contract.REMOVE_FREEZE_WINDOW, command)

    @get(
        "/{environment_id:str}/state",
        operation_id="getEnvironmentState",
        summary="Is the environment open for promotions now?",
        guards=[require(Resource.ENVIRONMENT, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_environment_state(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], environment_id: str = _ID
    ) -> EnvironmentStateOut:
        """Whether a window closes the environment now (and why), and when it next opens and closes."""
        query = call.query(contract.GetEnvironmentState, environment_id=parse_id(environment_id, "environment_id"))
        return parse_data(EnvironmentStateOut, await relay.query(contract.GET_ENVIRONMENT_STATE, query))
