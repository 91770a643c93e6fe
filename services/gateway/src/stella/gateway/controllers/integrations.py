"""``/api/v1/integration-types``, ``/api/v1/integrations`` and ``/api/v1/secrets``, served by the integration service.

Integrations need ``integration:read`` / ``create`` / ``update`` / ``delete`` (a connection test is an update: it
records the health). Secrets are names to everyone who may read integrations (``integration:read``); storing
and deleting one needs ``credential:update`` (tenant admins). A secret value is accepted by ``POST /secrets``
only and never answered; another tenant's integration or secret is a 404.
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
    ConnectionTestOut,
    IntegrationCreate,
    IntegrationOut,
    IntegrationPage,
    IntegrationTypeList,
    IntegrationUpdate,
    SecretCreate,
    SecretOut,
    SecretPage,
)
from stella.gateway.pagination import PageParams
from stella.gateway.permissions import Action, Resource
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.runtime import Runtime

BASE = "/api/v1/integrations"
_ID = Parameter(description="Integration id", schema_extra=ID_SCHEMA)
_SECRET_NAME = Parameter(description="Secret name", min_length=1, max_length=63)


class IntegrationTypeController(Controller):
    """The integration types."""

    path = "/api/v1/integration-types"
    tags = ["integrations"]

    @get(
        "/",
        operation_id="listIntegrationTypes",
        summary="List integration types",
        guards=[require(Resource.INTEGRATION, Action.READ)],
        responses=problems(403),
    )
    async def list_types(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay]
    ) -> IntegrationTypeList:
        """Every integration type, with the JSON Schemas of its config and its secret."""
        items = await relay.query(contract.LIST_INTEGRATION_TYPES, call.query(contract.ListIntegrationTypes))
        return parse_data(IntegrationTypeList, {"items": items})


class IntegrationController(Controller):
    """Integrations of the caller's tenant."""

    path = BASE
    tags = ["integrations"]

    @post(
        "/",
        operation_id="createIntegration",
        summary="Create an integration",
        guards=[require(Resource.INTEGRATION, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the new integration", documentation_only=True)
        ],
    )
    async def create_integration(
        self,
        data: JSONBody[IntegrationCreate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
    ) -> Response[IntegrationOut]:
        """Create an integration; its config must match its type's schema (422 ``INT_CONFIG_INVALID``)."""
        command = call.command(contract.CreateIntegration, **data.model_dump(exclude_none=True))
        created = parse_data(IntegrationOut, await relay.command(call, contract.CREATE_INTEGRATION, command))
        return Response(created, status_code=201, headers={"Location": location(runtime, f"{BASE}/{created.id}")})

    @get(
        "/",
        operation_id="listIntegrations",
        summary="List integrations",
        guards=[require(Resource.INTEGRATION, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_integrations(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        type_id: Annotated[
            str | None, QueryParameter(min_length=1, max_length=63, description="Only integrations of this type.")
        ] = None,
    ) -> IntegrationPage:
        """List the tenant's integrations by name."""
        query = call.query(contract.ListIntegrations, page=page.to_contract(), type_id=type_id)
        return parse_data(IntegrationPage, await relay.query(contract.LIST_INTEGRATIONS, query))

    @get(
        "/{integration_id:str}",
        operation_id="getIntegration",
        summary="Read an integration",
        guards=[require(Resource.INTEGRATION, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_integration(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], integration_id: str = _ID
    ) -> IntegrationOut:
        """Read one integration and its last known health."""
        query = call.query(contract.GetIntegration, integration_id=parse_id(integration_id, "integration_id"))
        return parse_data(IntegrationOut, await relay.query(contract.GET_INTEGRATION, query))

    @put(
        "/{integration_id:str}",
        operation_id="updateIntegration",
        summary="Change an integration",
        guards=[require(Resource.INTEGRATION, Action.UPDATE)],
        responses=problems(400, 403, 404, 422),
    )
    async def update_integration(
        self,
        data: JSONBody[IntegrationUpdate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        integration_id: str = _ID,
    ) -> IntegrationOut:
        """Change an integration; its health is unknown until the next connection test."""
        fields = {k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None}
        if "credential_ref" in data.model_fields_set and data.credential_ref is None:
            fields["clear_credential_ref"] = True
        command = call.command(
            contract.UpdateIntegration, integration_id=parse_id(integration_id, "integration_id"), **fields
        )
        return parse_data(IntegrationOut, await relay.command(call, contract.UPDATE_INTEGRATION, command))

    @delete(
        "/{integration_id:str}",
        operation_id="deleteIntegration",
        summary="Delete an integration",
        guards=[require(Resource.INTEGRATION, Action.DELETE)],
        responses=problems(400, 403, 404),
    )
    async def delete_integration(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], integration_id: str = _ID
    ) -> None:
        """Delete an integration."""
        command = call.command(contract.DeleteIntegration, integration_id=parse_id(integration_id, "integration_id"))
        await relay.command(call, contract.DELETE_INTEGRATION, command)

    @post(
        "/{integration_id:str}/test",
        operation_id="testIntegration",
        summary="Test an integration's connection",
        guards=[require(Resource.INTEGRATION, Action.UPDATE)],
        status_code=200,
        responses=problems(400, 403, 404),
    )
    async def test_integration(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], integration_id: str = _ID
    ) -> ConnectionTestOut:
        """Run the connection test now; the outcome is recorded as the integration's health."""
        command = call.command(contract.TestIntegration, integration_id=parse_id(integration_id, "integration_id"))
        return parse_data(ConnectionTestOut, await relay.command(call, contract.TEST_INTEGRATION, command))


class SecretController(Controller):
    """The tenant's built-in secret store: write-only values, readable names."""

    path = "/api/v1/secrets"
    tags = ["secrets"]

    @post(
        "/",
        operation_id="createSecret",
        summary="Store a secret",
        guards=[require(Resource.CREDENTIAL, Action.UPDATE)],
        status_code=201,
        responses=problems(400, 403, 409),
    )
    async def create_secret(
        self, data: JSONBody[SecretCreate], call: NamedDependency[CallContext], relay: NamedDependency[Relay]
    ) -> Response[SecretOut]:
        """Store a secret, encrypted at rest; a name already used is a 409 ``INT_SECRET_EXISTS`` and stores nothing.

        The value is never answered; name it in an integration as ``secret:<name>``.
        """
        request = call.query(
            contract.StoreSecret,
            name=data.name,
            value=data.value,
            description=data.description,
            actor_id=call.identity.principal_id,
        )
        if call.claim is not None:
            request = request.model_copy(update={"message_id": call.claim.message_id})
        stored = parse_data(SecretOut, await relay.query(contract.STORE_SECRET, request))
        return Response(stored, status_code=201)

    @get(
        "/",
        operation_id="listSecrets",
        summary="List secrets (names only)",
        guards=[require(Resource.INTEGRATION, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_secrets(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], page: NamedDependency[PageParams]
    ) -> SecretPage:
        """List the tenant's secrets: names and metadata, never values."""
        query = call.query(contract.ListSecrets, page=page.to_contract())
        return parse_data(SecretPage, await relay.query(contract.LIST_SECRETS, query))

    @delete(
        "/{name:str}",
        operation_id="deleteSecret",
        summary="Delete a secret",
        guards=[require(Resource.CREDENTIAL, Action.UPDATE)],
        responses=problems(400, 403, 404, 409),
    )
    async def delete_secret(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], name: str = _SECRET_NAME
    ) -> None:
        """Delete a secret no integration names (409 ``INT_SECRET_IN_USE`` otherwise)."""
        command = call.command(contract.DeleteSecret, name=name)
        await relay.command(call, contract.DELETE_SECRET, command)
