"""``/api/v1/releases``: immutable bundles of image digests, served by the release service."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Response, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter, QueryParameter

from stella.contracts import release as contract
from stella.gateway.auth import require
from stella.gateway.dependencies import ID_SCHEMA, location, parse_id, problems
from stella.gateway.pagination import PageParams
from stella.gateway.permissions import Action, Resource
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import (
    ReleaseCreate,
    ReleaseDeprecate,
    ReleaseOut,
    ReleasePage,
    ReleaseStatus,
    ReleaseUpdate,
)

BASE = "/api/v1/releases"
_ID = Parameter(description="Release id", schema_extra=ID_SCHEMA)


class ReleaseController(Controller):
    """Releases of the caller's tenant."""

    path = BASE
    tags = ["releases"]

    @post(
        "/",
        operation_id="createRelease",
        summary="Create a draft release",
        guards=[require(Resource.RELEASE, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403, 409, 422, 502),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the new release", documentation_only=True)
        ],
    )
    async def create_release(
        self,
        data: JSONBody[ReleaseCreate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
    ) -> Response[ReleaseOut]:
        """Create a draft release; tags are resolved to digests now and only digests are kept."""
        command = call.command(contract.CreateRelease, **data.model_dump(exclude_none=True))
        release = parse_data(ReleaseOut, await relay.command(call, contract.CREATE_RELEASE, command))
        return Response(release, status_code=201, headers={"Location": location(runtime, f"{BASE}/{release.id}")})

    @get(
        "/",
        operation_id="listReleases",
        summary="List releases",
        guards=[require(Resource.RELEASE, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_releases(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        status: Annotated[ReleaseStatus | None, QueryParameter(description="Only this status.")] = None,
        name_prefix: Annotated[
            str | None, QueryParameter(min_length=1, max_length=63, description="Only names starting so.")
        ] = None,
        component_id: Annotated[
            UUID | None, QueryParameter(description="Only releases holding this component.")
        ] = None,
    ) -> ReleasePage:
        """List the tenant's releases, newest first."""
        query = call.query(
            contract.ListReleases,
            status=status.value if status is not None else None,
            name_prefix=name_prefix,
            component_id=component_id,
            page=page.to_contract(),
        )
        return parse_data(ReleasePage, await relay.query(contract.LIST_RELEASES, query))

    @get(
        "/{release_id:str}",
        operation_id="getRelease",
        summary="Read a release",
        guards=[require(Resource.RELEASE, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_release(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], release_id: str = _ID
    ) -> ReleaseOut:
        """Read one release."""
        query = call.query(contract.GetRelease, release_id=parse_id(release_id, "release_id"))
        return parse_data(ReleaseOut, await relay.query(contract.GET_RELEASE, query))

    @put(
        "/{release_id:str}",
        operation_id="updateRelease",
        summary="Change a draft release",
        guards=[require(Resource.RELEASE, Action.UPDATE)],
        responses=problems(400, 403, 404, 409, 422, 502),
    )
    async def update_release(
        self,
        data: JSONBody[ReleaseUpdate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        release_id: str = _ID,
    ) -> ReleaseOut:
        """Change a draft release; omitted fields keep their value. A ready release is immutable (409)."""
        fields: dict[str, Any] = data.model_dump(exclude_none=True)
        command = call.command(contract.UpdateRelease, release_id=parse_id(release_id, "release_id"), **fields)
        return parse_data(ReleaseOut, await relay.command(call, contract.UPDATE_RELEASE, command))

    @post(
        "/{release_id:str}/ready",
        operation_id="markReleaseReady",
        summary="Freeze a draft release",
        guards=[require(Resource.RELEASE, Action.UPDATE)],
        status_code=200,
        responses=problems(400, 403, 404, 409, 422),
    )
    async def mark_ready(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], release_id: str = _ID
    ) -> ReleaseOut:
        """Freeze a draft release so it can be promoted."""
        command = call.command(contract.MarkReleaseReady, release_id=parse_id(release_id, "release_id"))
        return parse_data(ReleaseOut, await relay.command(call, contract.MARK_RELEASE_READY, command))

    @post(
        "/{release_id:str}/deprecate",
        operation_id="deprecateRelease",
        summary="Deprecate a release",
        guards=[require(Resource.RELEASE, Action.UPDATE)],
        status_code=200,
        responses=problems(400, 403, 404, 409, 422),
    )
    async def deprecate(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        data: JSONBody[ReleaseDeprecate | None] = None,
        release_id: str = _ID,
    ) -> ReleaseOut:
        """Deprecate a release: it can no longer be promoted. The body (a reason) is optional."""
        command = call.command(
            contract.DeprecateRelease,
            release_id=parse_id(release_id, "release_id"),
            reason=data.reason if data is not None else None,
        )
        return parse_data(ReleaseOut, await relay.command(call, contract.DEPRECATE_RELEASE, command))
