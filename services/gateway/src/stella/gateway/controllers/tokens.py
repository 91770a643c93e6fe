"""``/api/v1/tokens``: API tokens of a tenant's principals (tenant admins only)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from litestar import Controller, Response, delete, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter, QueryParameter

from stella.gateway.auth import Identity, new_token, require
from stella.gateway.dependencies import ID_SCHEMA, location, parse_id, problems
from stella.gateway.idempotency import REDACT_OPT
from stella.gateway.pagination import PageParams, decode_page_token
from stella.gateway.permissions import Action, Resource
from stella.gateway.problems import ProblemError
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import TokenCreate, TokenCreated, TokenOut, TokenPage
from stella.gateway.store import GatewayStore, TokenRow
from stella.kit.pagination import aware_datetime, encode_cursor

BASE = "/api/v1/tokens"


def token_out(row: TokenRow) -> TokenOut:
    """The response body of a stored token."""
    return TokenOut(
        id=row.id,
        principal_id=row.principal_id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def _not_found(token_id: UUID) -> ProblemError:
    return ProblemError(404, "RES_NOT_FOUND", f"Token {token_id} does not exist.")


class TokenController(Controller):
    """API tokens of the caller's tenant."""

    path = BASE
    tags = ["tokens"]

    @post(
        "/",
        operation_id="createToken",
        summary="Create an API token",
        guards=[require(Resource.TOKEN, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403, 404, 409, 422),
        response_headers=[ResponseHeader(name="Location", description="URL of the new token", documentation_only=True)],
        opt={REDACT_OPT: ("token",)},
    )
    async def create_token(
        self,
        data: JSONBody[TokenCreate],
        identity: NamedDependency[Identity],
        store: NamedDependency[GatewayStore],
        runtime: NamedDependency[Runtime],
        now: NamedDependency[datetime],
    ) -> Response[TokenCreated]:
        """Create a token for a principal. The token is in this response only; it is never shown again."""
        expires_at = data.expires_at.astimezone(UTC) if data.expires_at is not None else None
        if expires_at is not None and expires_at <= now:
            raise ProblemError(
                400,
                "VAL_INVALID_REQUEST",
                "expires_at must be in the future.",
                errors=[{"loc": ["body", "expires_at"], "msg": "must be in the future"}],
            )
        issued = new_token()
        row = await store.create_token(
            identity.tenant_id,
            data.principal_id,
            name=data.name,
            token_hash=issued.token_hash,
            prefix=issued.prefix,
            now=now,
            created_by=identity.principal_id,
            expires_at=expires_at,
        )
        if row is None:
            raise ProblemError(404, "RES_NOT_FOUND", f"Principal {data.principal_id} does not exist.")
        body = TokenCreated(**token_out(row).model_dump(), token=issued.secret)
        return Response(body, status_code=201, headers={"Location": location(runtime, f"{BASE}/{row.id}")})

    @get(
        "/",
        operation_id="listTokens",
        summary="List API tokens",
        guards=[require(Resource.TOKEN, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_tokens(
        self,
        identity: NamedDependency[Identity],
        store: NamedDependency[GatewayStore],
        page: NamedDependency[PageParams],
        principal_id: Annotated[UUID | None, QueryParameter(description="Only this principal's tokens.")] = None,
    ) -> TokenPage:
        """List the tenant's tokens, oldest first, revoked and expired ones included."""
        after = decode_page_token(page.token, aware_datetime, UUID, kind="tokens")
        rows = await store.list_tokens(
            identity.tenant_id,
            principal_id=principal_id,
            after=(after[0], after[1]) if after else None,
            limit=page.size + 1,
        )
        more = len(rows) > page.size
        rows = rows[: page.size]
        token = encode_cursor(rows[-1].created_at.isoformat(), rows[-1].id, kind="tokens") if more else None
        return TokenPage(items=[token_out(row) for row in rows], next_page_token=token)

    @get(
        "/{token_id:str}",
        operation_id="getToken",
        summary="Read an API token's metadata",
        guards=[require(Resource.TOKEN, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_token(
        self,
        identity: NamedDependency[Identity],
        store: NamedDependency[GatewayStore],
        token_id: str = Parameter(description="Token id", schema_extra=ID_SCHEMA),
    ) -> TokenOut:
        """Read one token's metadata (never its value)."""
        tid = parse_id(token_id, "token_id")
        row = await store.get_token(identity.tenant_id, tid)
        if row is None:
            raise _not_found(tid)
        return token_out(row)

    @delete(
        "/{token_id:str}",
        operation_id="revokeToken",
        summary="Revoke an API token",
        guards=[require(Resource.TOKEN, Action.DELETE)],
        responses=problems(400, 403, 404),
    )
    async def revoke_token(
        self,
        identity: NamedDependency[Identity],
        store: NamedDependency[GatewayStore],
        runtime: NamedDependency[Runtime],
        now: NamedDependency[datetime],
        token_id: str = Parameter(description="Token id", schema_extra=ID_SCHEMA),
    ) -> None:
        """Revoke a token: refused at once by this gateway, within seconds by every other replica."""
        tid = parse_id(token_id, "token_id")
        if not await store.revoke_token(identity.tenant_id, tid, now):
            raise _not_found(tid)
        runtime.get_authenticator().forget_token(tid)
