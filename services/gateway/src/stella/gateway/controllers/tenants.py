"""``/api/v1/tenants``: the platform (operator) API for tenants, separate from every tenant's own admins.

Only principals of the platform tenant bound to ``platform-admin`` hold ``tenant:create`` and ``tenant:read``;
the platform tenant and its first admin are made from the command line (``python -m stella.gateway
bootstrap-platform``, done by ``make run`` on its first start). A tenant admin of an ordinary tenant manages
its own principals and tokens and never sees another tenant, nor can it grant ``platform-admin``.

Creating a tenant creates its first tenant admin and that admin's token, shown once in the answer (a replay
of the request under its ``Idempotency-Key`` omits it, like a new API token).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from litestar import Controller, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from stella.gateway.admin import bootstrap
from stella.gateway.auth import Identity, require
from stella.gateway.dependencies import ID_SCHEMA, location, parse_id, problems
from stella.gateway.idempotency import REDACT_OPT
from stella.gateway.pagination import PageParams, decode_page_token
from stella.gateway.permissions import Action, Resource
from stella.gateway.problems import ProblemError
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import TenantCreate, TenantCreated, TenantOut, TenantPage
from stella.gateway.store import GatewayStore, TenantRow, get_tenant, list_tenants
from stella.kit.pagination import encode_cursor

BASE = "/api/v1/tenants"


def tenant_out(row: TenantRow) -> TenantOut:
    """The response body of a stored tenant."""
    return TenantOut(id=row.id, name=row.name, is_platform=row.is_platform, created_at=row.created_at)


class TenantController(Controller):
    """Every tenant of the installation (platform admins only)."""

    path = BASE
    tags = ["tenants"]

    @post(
        "/",
        operation_id="createTenant",
        summary="Create a tenant with its first tenant admin",
        guards=[require(Resource.TENANT, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the new tenant", documentation_only=True)
        ],
        opt={REDACT_OPT: ("admin_token",)},
    )
    async def create_tenant(
        self,
        data: JSONBody[TenantCreate],
        identity: NamedDependency[Identity],
        store: NamedDependency[GatewayStore],
        runtime: NamedDependency[Runtime],
        now: NamedDependency[datetime],
    ) -> Response[TenantCreated]:
        """Create a tenant, its first tenant admin and that admin's API token (shown in this answer only)."""
        async with store.pool.acquire() as conn:
            issued = await bootstrap(conn, data.name, data.admin, now, created_by=identity.principal_id)
            if issued is None:
                raise ProblemError(409, "RES_ALREADY_EXISTS", f"A tenant named {data.name!r} already exists.")
            row = await get_tenant(conn, issued.tenant_id)
        assert row is not None
        body = TenantCreated(
            **tenant_out(row).model_dump(), admin_principal_id=issued.principal_id, admin_token=issued.token
        )
        return Response(body, status_code=201, headers={"Location": location(runtime, f"{BASE}/{row.id}")})

    @get(
        "/",
        operation_id="listTenants",
        summary="List tenants",
        guards=[require(Resource.TENANT, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_all(self, store: NamedDependency[GatewayStore], page: NamedDependency[PageParams]) -> TenantPage:
        """Every tenant of the installation, by name (the platform tenant included)."""
        after = decode_page_token(page.token, str, kind="tenants")
        async with store.pool.acquire() as conn:
            rows = await list_tenants(conn, after=after[0] if after else None, limit=page.size + 1)
        more = len(rows) > page.size
        rows = rows[: page.size]
        token = encode_cursor(rows[-1].name, kind="tenants") if more else None
        return TenantPage(items=[tenant_out(row) for row in rows], next_page_token=token)

    @get(
        "/{tenant_id:str}",
        operation_id="getTenant",
        summary="Read a tenant",
        guards=[require(Resource.TENANT, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_one(
        self,
        store: NamedDependency[GatewayStore],
        tenant_id: str = Parameter(description="Tenant id", schema_extra=ID_SCHEMA),
    ) -> TenantOut:
        """Read one tenant."""
        tid: UUID = parse_id(tenant_id, "tenant_id")
        async with store.pool.acquire() as conn:
            row = await get_tenant(conn, tid)
        if row is None:
            raise ProblemError(404, "RES_NOT_FOUND", f"Tenant {tid} does not exist.")
        return tenant_out(row)
