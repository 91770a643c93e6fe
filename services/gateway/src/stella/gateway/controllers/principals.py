"""``/api/v1/principals``: the people and machines of a tenant, their roles and groups (tenant admins only).

Roles and groups are read with the token on each request and cached with it: a change made here applies at
once on this gateway and within ``token_cache_ttl_s`` on every other replica, as a revocation does.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from litestar import Controller, Response, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from stella.gateway.auth import Identity, require
from stella.gateway.dependencies import ID_SCHEMA, location, parse_id, problems
from stella.gateway.pagination import PageParams, decode_page_token
from stella.gateway.permissions import Action, Resource
from stella.gateway.problems import ProblemError
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import PrincipalCreate, PrincipalOut, PrincipalPage, PrincipalUpdate
from stella.gateway.store import DeletePrincipalOutcome, GatewayStore, PrincipalRow, UpdatePrincipalOutcome
from stella.kit.pagination import encode_cursor

BASE = "/api/v1/principals"


def principal_out(row: PrincipalRow) -> PrincipalOut:
    """The response body of a stored principal."""
    return PrincipalOut(
        id=row.id,
        name=row.name,
        kind=row.kind,
        display_name=row.display_name,
        roles=list(row.roles),
        groups=list(row.groups),
        created_at=row.created_at,
        created_by=row.created_by,
    )


def _not_found(principal_id: UUID) -> ProblemError:
    return ProblemError(404, "RES_NOT_FOUND", f"Principal {principal_id} does not exist.")


def _last_admin(doing: str) -> ProblemError:
    return ProblemError(
        409,
        "RES_LAST_TENANT_ADMIN",
        f"This is the tenant's last tenant admin; bind another principal to tenant-admin before {doing}.",
    )


class PrincipalController(Controller):
    """Principals of the caller's tenant."""

    path = BASE
    tags = ["principals"]

    @post(
        "/",
        operation_id="createPrincipal",
        summary="Create a principal",
        guards=[require(Resource.PRINCIPAL, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the new principal", documentation_only=True)
        ],
    )
    async def create_principal(
        self,
        data: JSONBody[PrincipalCreate],
        identity: NamedDependency[Identity],
        store: NamedDependency[GatewayStore],
        runtime: NamedDependency[Runtime],
        now: NamedDependency[datetime],
    ) -> Response[PrincipalOut]:
        """Create a user or service principal bound to the given roles and member of the given groups."""
        row = await store.create_principal(
            identity.tenant_id,
            name=data.name,
            kind=data.kind.value,
            display_name=data.display_name,
            roles=[role.value for role in data.roles],
            groups=data.groups,
            now=now,
            created_by=identity.principal_id,
        )
        if row is None:
            raise ProblemError(409, "RES_ALREADY_EXISTS", f"A principal named {data.name!r} already exists.")
        return Response(
            principal_out(row), status_code=201, headers={"Location": location(runtime, f"{BASE}/{row.id}")}
        )

    @get(
        "/",
        operation_id="listPrincipals",
        summary="List principals",
        guards=[require(Resource.PRINCIPAL, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_principals(
        self,
        identity: NamedDependency[Identity],
        store: NamedDependency[GatewayStore],
        page: NamedDependency[PageParams],
    ) -> PrincipalPage:
        """List the tenant's principals by name."""
        after = decode_page_token(page.token, str, UUID)
        rows = await store.list_principals(
            identity.tenant_id, after=(after[0], after[1]) if after else None, limit=page.size + 1
        )
        more = len(rows) > page.size
        rows = rows[: page.size]
        token = encode_cursor(rows[-1].name, rows[-1].id) if more else None
        return PrincipalPage(items=[principal_out(row) for row in rows], next_page_token=token)

    @get(
        "/{principal_id:str}",
        operation_id="getPrincipal",
        summary="Read a principal",
        guards=[require(Resource.PRINCIPAL, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_principal(
        self,
        identity: NamedDependency[Identity],
        store: NamedDependency[GatewayStore],
        principal_id: str = Parameter(description="Principal id", schema_extra=ID_SCHEMA),
    ) -> PrincipalOut:
        """Read one principal with its roles and groups."""
        pid = parse_id(principal_id, "principal_id")
        row = await store.get_principal(identity.tenant_id, pid)
        if row is None:
            raise _not_found(pid)
        return principal_out(row)

    @put(
        "/{principal_id:str}",
        operation_id="updatePrincipal",
        summary="Change a principal's roles and groups",
        guards=[require(Resource.PRINCIPAL, Action.UPDATE)],
        responses=problems(400, 403, 404, 409),
    )
    async def update_principal(
        self,
        data: JSONBody[PrincipalUpdate],
        identity: NamedDependency[Identity],
        store: NamedDependency[GatewayStore],
        runtime: NamedDependency[Runtime],
        now: NamedDependency[datetime],
        principal_id: str = Parameter(description="Principal id", schema_extra=ID_SCHEMA),
    ) -> PrincipalOut:
        """Replace a principal's roles, groups or both; a list left out keeps its current value.

        The change applies to the principal's existing tokens: at once on this gateway, within the token
        cache's lifetime on the others. Taking tenant-admin from the tenant's last tenant admin is refused (409).
        """
        pid = parse_id(principal_id, "principal_id")
        outcome = await store.update_principal(
            identity.tenant_id,
            pid,
            roles=[role.value for role in data.roles] if data.roles is not None else None,
            groups=data.groups,
            now=now,
        )
        if not isinstance(outcome, PrincipalRow):
            if outcome == UpdatePrincipalOutcome.LAST_ADMIN:
                raise _last_admin("taking the role away")
            raise _not_found(pid)
        runtime.get_authenticator().forget_principal(pid)
        return principal_out(outcome)

    @delete(
        "/{principal_id:str}",
        operation_id="deletePrincipal",
        summary="Delete a principal",
        guards=[require(Resource.PRINCIPAL, Action.DELETE)],
        responses=problems(400, 403, 404, 409),
    )
    async def delete_principal(
        self,
        identity: NamedDependency[Identity],
        store: NamedDependency[GatewayStore],
        runtime: NamedDependency[Runtime],
        now: NamedDependency[datetime],
        principal_id: str = Parameter(description="Principal id", schema_extra=ID_SCHEMA),
    ) -> None:
        """Delete a principal and revoke all its tokens; the tenant's last tenant admin cannot be deleted."""
        pid = parse_id(principal_id, "principal_id")
        outcome = await store.delete_principal(identity.tenant_id, pid, now)
        if outcome == DeletePrincipalOutcome.NOT_FOUND:
            raise _not_found(pid)
        if outcome == DeletePrincipalOutcome.LAST_ADMIN:
            raise _last_admin("deleting it")
        runtime.get_authenticator().forget_principal(pid)
