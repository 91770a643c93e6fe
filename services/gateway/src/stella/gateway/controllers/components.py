"""``/api/v1/components``: components (image repositories) and their version maps, served by the release service.

Components are part of the release resource: reading needs ``release:read``, creating ``release:create``,
changing a component or its versions ``release:update``, deleting ``release:delete``. Naming a component's
``registry_integration_id`` (whose credential reads the registry) or touching its deprecated
``registry_credential_ref`` also needs ``credential:update`` (tenant admins). The release service refuses a new
``registry_credential_ref`` (422 ``REL_REGISTRY_CREDENTIAL_REF_DEPRECATED``); ``null`` removes one.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Response, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter, QueryParameter

from stella.contracts import release as contract
from stella.gateway.auth import Identity, require
from stella.gateway.dependencies import ID_SCHEMA, location, parse_id, problems
from stella.gateway.pagination import PageParams
from stella.gateway.permissions import Action, Resource, permission
from stella.gateway.problems import ProblemError
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import (
    ComponentCreate,
    ComponentOut,
    ComponentPage,
    ComponentUpdate,
    SyncResultOut,
    VersionCreate,
    VersionOut,
    VersionPage,
)

BASE = "/api/v1/components"
_ID = Parameter(description="Component id", schema_extra=ID_SCHEMA)

CREDENTIAL_PERMISSION = permission(Resource.CREDENTIAL, Action.UPDATE)
"""Needed to set or remove a component's registry credential reference."""


def require_credential_permission(identity: Identity, fields_set: set[str]) -> None:
    """Refuse a body naming ``registry_credential_ref`` or ``registry_integration_id`` from a caller without
    ``credential:update``.

    Raises:
        ProblemError: 403 ``PERM_DENIED``.
    """
    named = sorted(fields_set & {"registry_credential_ref", "registry_integration_id"})
    if named and CREDENTIAL_PERMISSION not in identity.permissions:
        raise ProblemError(
            403,
            "PERM_DENIED",
            f"Setting {' and '.join(named)} needs the permission {CREDENTIAL_PERMISSION!r}, which the roles "
            f"{list(identity.roles)} do not grant.",
            title="Forbidden",
            extensions={"required_permission": CREDENTIAL_PERMISSION},
        )


class ComponentController(Controller):
    """Components of the caller's tenant."""

    path = BASE
    tags = ["components"]

    @post(
        "/",
        operation_id="createComponent",
        summary="Create a component",
        guards=[require(Resource.RELEASE, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the new component", documentation_only=True)
        ],
    )
    async def create_component(
        self,
        data: JSONBody[ComponentCreate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
    ) -> Response[ComponentOut]:
        """Create a component: a named image repository whose tags can be pinned in releases."""
        require_credential_permission(call.identity, data.model_fields_set)
        command = call.command(contract.CreateComponent, **data.model_dump(exclude_none=True))
        component = parse_data(ComponentOut, await relay.command(call, contract.CREATE_COMPONENT, command))
        return Response(component, status_code=201, headers={"Location": location(runtime, f"{BASE}/{component.id}")})

    @get(
        "/",
        operation_id="listComponents",
        summary="List components",
        guards=[require(Resource.RELEASE, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_components(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        name_prefix: Annotated[
            str | None, QueryParameter(min_length=1, max_length=63, description="Only names starting so.")
        ] = None,
    ) -> ComponentPage:
        """List the tenant's components by name."""
        query = call.query(contract.ListComponents, page=page.to_contract(), name_prefix=name_prefix)
        return parse_data(ComponentPage, await relay.query(contract.LIST_COMPONENTS, query))

    @get(
        "/{component_id:str}",
        operation_id="getComponent",
        summary="Read a component",
        guards=[require(Resource.RELEASE, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_component(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], component_id: str = _ID
    ) -> ComponentOut:
        """Read one component."""
        query = call.query(contract.GetComponent, component_id=parse_id(component_id, "component_id"))
        return parse_data(ComponentOut, await relay.query(contract.GET_COMPONENT, query))

    @put(
        "/{component_id:str}",
        operation_id="updateComponent",
        summary="Change a component",
        guards=[require(Resource.RELEASE, Action.UPDATE)],
        responses=problems(400, 403, 404, 409, 422),
    )
    async def update_component(
        self,
        data: JSONBody[ComponentUpdate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        component_id: str = _ID,
    ) -> ComponentOut:
        """Change a component's mutable fields; omitted fields keep their value."""
        require_credential_permission(call.identity, data.model_fields_set)
        fields: dict[str, Any] = {k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None}
        if "registry_credential_ref" in data.model_fields_set and data.registry_credential_ref is None:
            fields["clear_registry_credential_ref"] = True
        if "registry_integration_id" in data.model_fields_set and data.registry_integration_id is None:
            fields["clear_registry_integration_id"] = True
        command = call.command(contract.UpdateComponent, component_id=parse_id(component_id, "component_id"), **fields)
        return parse_data(ComponentOut, await relay.command(call, contract.UPDATE_COMPONENT, command))

    @delete(
        "/{component_id:str}",
        operation_id="deleteComponent",
        summary="Delete a component",
        guards=[require(Resource.RELEASE, Action.DELETE)],
        responses=problems(400, 403, 404, 409, 422),
    )
    async def delete_component(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], component_id: str = _ID
    ) -> None:
        """Delete a component that no release uses."""
        command = call.command(contract.DeleteComponent, component_id=parse_id(component_id, "component_id"))
        await relay.command(call, contract.DELETE_COMPONENT, command)

    @post(
        "/{component_id:str}/versions",
        operation_id="registerVersion",
        summary="Record a tag of a component",
        guards=[require(Resource.RELEASE, Action.UPDATE)],
        status_code=201,
        responses=problems(400, 403, 404, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the component's versions", documentation_only=True)
        ],
    )
    async def register_version(
        self,
        data: JSONBody[VersionCreate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
        component_id: str = _ID,
    ) -> Response[VersionOut]:
        """Record a tag -> digest entry (or move an existing tag) in the component's version map."""
        cid = parse_id(component_id, "component_id")
        command = call.command(contract.RegisterVersion, component_id=cid, **data.model_dump(exclude_none=True))
        version = parse_data(VersionOut, await relay.command(call, contract.REGISTER_VERSION, command))
        return Response(version, status_code=201, headers={"Location": location(runtime, f"{BASE}/{cid}/versions")})

    @get(
        "/{component_id:str}/versions",
        operation_id="listVersions",
        summary="List a component's versions",
        guards=[require(Resource.RELEASE, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def list_versions(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        component_id: str = _ID,
        channel: Annotated[
            str | None, QueryParameter(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$", description="Only this channel.")
        ] = None,
    ) -> VersionPage:
        """List a component's version map, newest first."""
        query = call.query(
            contract.ListVersions,
            component_id=parse_id(component_id, "component_id"),
            channel=channel,
            page=page.to_contract(),
        )
        return parse_data(VersionPage, await relay.query(contract.LIST_VERSIONS, query))

    @post(
        "/{component_id:str}/sync-versions",
        operation_id="syncVersions",
        summary="Read a component's tags from its registry",
        guards=[require(Resource.RELEASE, Action.UPDATE)],
        status_code=200,
        responses=problems(400, 403, 404, 409, 422, 502),
    )
    async def sync_versions(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], component_id: str = _ID
    ) -> SyncResultOut:
        """Read every tag of the component's repository and its digest from the OCI registry."""
        command = call.command(contract.SyncVersions, component_id=parse_id(component_id, "component_id"))
        return parse_data(SyncResultOut, await relay.command(call, contract.SYNC_VERSIONS, command))
