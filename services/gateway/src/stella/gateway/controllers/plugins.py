"""``/api/v1/plugins`` and ``/api/v1/plugin-instances``, served by the integration service.

Installing a plugin on the server is the operator's action (``plugin-catalogue:create``, held by platform
admins): the request names a directory or wheel *relative to* the server's plugin path, never a path of its
own. Every tenant reads the installed plugins (``plugin:read``) and enables those it uses as plugin instances
(``plugin:create`` / ``update`` / ``delete``); a plugin gate or step is usable only through an enabled instance
of the tenant, and another tenant's instance is a 404.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter, QueryParameter

from stella.contracts import integration as contract
from stella.gateway.auth import require
from stella.gateway.dependencies import ID_SCHEMA, location, parse_id, problems
from stella.gateway.integration_schemas import (
    PluginInstall,
    PluginInstanceCreate,
    PluginInstanceOut,
    PluginInstancePage,
    PluginInstanceUpdate,
    PluginOut,
    PluginPage,
)
from stella.gateway.pagination import PageParams
from stella.gateway.permissions import Action, Resource
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.runtime import Runtime

BASE = "/api/v1/plugins"
INSTANCES = "/api/v1/plugin-instances"
_PLUGIN_ID = Parameter(description="Plugin id", min_length=2, max_length=63, pattern=contract.PLUGIN_ID_PATTERN)
_INSTANCE_ID = Parameter(description="Plugin instance id", schema_extra=ID_SCHEMA)


class PluginController(Controller):
    """The plugins installed on the server."""

    path = BASE
    tags = ["plugins"]

    @post(
        "/",
        operation_id="installPlugin",
        summary="Install a plugin from the server's plugin path",
        guards=[require(Resource.PLUGIN_CATALOGUE, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403, 404, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the installed plugin", documentation_only=True)
        ],
    )
    async def install_plugin(
        self,
        data: JSONBody[PluginInstall],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
    ) -> Response[PluginOut]:
        """Install the plugin directory or wheel ``source`` names on the server's plugin path.

        Refused, with nothing stored: a source leaving the plugin path (400 ``PLUGIN_SOURCE_REFUSED``), none of
        that name (404 ``PLUGIN_SOURCE_NOT_FOUND``), an unknown capability or a missing entrypoint (422
        ``PLUGIN_UNKNOWN_CAPABILITY``, ``PLUGIN_MISSING_ENTRYPOINT``, ``PLUGIN_MANIFEST_INVALID``), a permission the
        operator does not grant plugins (422 ``PLUGIN_PERMISSION_NOT_ALLOWED``), an id installed already (409).
        """
        command = call.command(contract.InstallPlugin, source=data.source)
        installed = parse_data(PluginOut, await relay.command(call, contract.INSTALL_PLUGIN, command))
        return Response(
            installed, status_code=201, headers={"Location": location(runtime, f"{BASE}/{installed.plugin_id}")}
        )

    @get(
        "/",
        operation_id="listPlugins",
        summary="List installed plugins",
        guards=[require(Resource.PLUGIN, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_plugins(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        capability: Annotated[
            str | None,
            QueryParameter(
                pattern="^(gate|step|agent-driver|connector)$", description="Only plugins offering this capability."
            ),
        ] = None,
    ) -> PluginPage:
        """List the plugins installed on the server, by id."""
        query = call.query(contract.ListPlugins, page=page.to_contract(), capability=capability)
        return parse_data(PluginPage, await relay.query(contract.LIST_PLUGINS, query))

    @get(
        "/{plugin_id:str}",
        operation_id="getPlugin",
        summary="Read an installed plugin",
        guards=[require(Resource.PLUGIN, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_plugin(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], plugin_id: str = _PLUGIN_ID
    ) -> PluginOut:
        """Read one installed plugin: its manifest, capabilities, permissions and config schema."""
        query = call.query(contract.GetPlugin, plugin_id=plugin_id)
        return parse_data(PluginOut, await relay.query(contract.GET_PLUGIN, query))


class PluginInstanceController(Controller):
    """The plugins the caller's tenant has enabled, with its config for each."""

    path = INSTANCES
    tags = ["plugins"]

    @post(
        "/",
        operation_id="createPluginInstance",
        summary="Enable a plugin for the tenant",
        guards=[require(Resource.PLUGIN, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403, 404, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the new plugin instance", documentation_only=True)
        ],
    )
    async def create_instance(
        self,
        data: JSONBody[PluginInstanceCreate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
    ) -> Response[PluginInstanceOut]:
        """Enable an installed plugin (404 ``PLUGIN_NOT_FOUND``) for the tenant, one instance per plugin (409
        ``PLUGIN_INSTANCE_EXISTS``); its config must fit the plugin's schema (422 ``PLUGIN_CONFIG_INVALID``)."""
        command = call.command(contract.CreatePluginInstance, **data.model_dump())
        created = parse_data(PluginInstanceOut, await relay.command(call, contract.CREATE_PLUGIN_INSTANCE, command))
        return Response(created, status_code=201, headers={"Location": location(runtime, f"{INSTANCES}/{created.id}")})

    @get(
        "/",
        operation_id="listPluginInstances",
        summary="List the tenant's plugin instances",
        guards=[require(Resource.PLUGIN, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_instances(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], page: NamedDependency[PageParams]
    ) -> PluginInstancePage:
        """List the tenant's plugin instances by plugin id."""
        query = call.query(contract.ListPluginInstances, page=page.to_contract())
        return parse_data(PluginInstancePage, await relay.query(contract.LIST_PLUGIN_INSTANCES, query))

    @get(
        "/{instance_id:str}",
        operation_id="getPluginInstance",
        summary="Read a plugin instance",
        guards=[require(Resource.PLUGIN, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_instance(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], instance_id: str = _INSTANCE_ID
    ) -> PluginInstanceOut:
        """Read one plugin instance of the tenant."""
        query = call.query(contract.GetPluginInstance, instance_id=parse_id(instance_id, "instance_id"))
        return parse_data(PluginInstanceOut, await relay.query(contract.GET_PLUGIN_INSTANCE, query))

    @put(
        "/{instance_id:str}",
        operation_id="updatePluginInstance",
        summary="Change, enable or disable a plugin instance",
        guards=[require(Resource.PLUGIN, Action.UPDATE)],
        responses=problems(400, 403, 404, 422),
    )
    async def update_instance(
        self,
        data: JSONBody[PluginInstanceUpdate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        instance_id: str = _INSTANCE_ID,
    ) -> PluginInstanceOut:
        """Change an instance's config or its ``enabled`` flag; a disabled plugin's gates deny and its steps fail."""
        fields = data.model_dump(exclude_none=True)
        command = call.command(
            contract.UpdatePluginInstance, instance_id=parse_id(instance_id, "instance_id"), **fields
        )
        return parse_data(PluginInstanceOut, await relay.command(call, contract.UPDATE_PLUGIN_INSTANCE, command))

    @delete(
        "/{instance_id:str}",
        operation_id="deletePluginInstance",
        summary="Remove a plugin instance",
        guards=[require(Resource.PLUGIN, Action.DELETE)],
        responses=problems(400, 403, 404),
    )
    async def delete_instance(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], instance_id: str = _INSTANCE_ID
    ) -> None:
        """Remove a plugin instance: the tenant can no longer use the plugin."""
        command = call.command(contract.DeletePluginInstance, instance_id=parse_id(instance_id, "instance_id"))
        await relay.command(call, contract.DELETE_PLUGIN_INSTANCE, command)
