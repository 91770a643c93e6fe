"""Bearer-token authentication and per-route permission guards.

Tokens are ``stl_`` followed by 32 random bytes (URL-safe base64). Only their SHA-256 is stored. A request's
token is looked up with one indexed query (token, principal, roles and groups together); the result is cached
in memory for ``token_cache_ttl_s`` seconds (5 by default), bounded in size. Consequences:

* revoking a token, deleting its principal, or changing the principal's roles or groups takes effect at once
  on the gateway that handled the change (it drops its cached entries) and within ``token_cache_ttl_s`` on
  every other replica;
* expiry is checked against the clock on every request, so an expired token is refused at once;
* a token that does not exist is cached as unknown too, so guessing costs no database round trip per try.

``last_used_at`` is not written per request: uses are collected in memory and written in one batched
statement every ``token_touch_interval_s`` seconds (and at shutdown), so it is exact to that interval.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp

from stella.gateway.permissions import Action, Resource, permission, permissions_for
from stella.gateway.problems import ProblemError
from stella.gateway.store import GatewayStore, TokenAuth
from stella.kit import logs

TOKEN_PREFIX: Final[str] = "stl_"
"""Every API token starts with this, so secret scanners can recognise it."""

TOKEN_BYTES: Final[int] = 32
"""Random bytes in a token."""

SESSION_PREFIX: Final[str] = "sts_"
"""Every dashboard session secret starts with this."""

DISPLAY_PREFIX_LENGTH: Final[int] = 12
"""Characters of a token kept in clear (``stl_`` and 8 more) so people can tell tokens apart."""

_MAX_TOKEN_LENGTH = 256
_CHALLENGE: Final[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="stella"'}

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class IssuedToken:
    """A freshly made token: the secret shown once, and what is stored."""

    secret: str
    token_hash: bytes
    prefix: str


def hash_token(secret: str) -> bytes:
    """Return the SHA-256 of a token, the only form in which it is stored."""
    return hashlib.sha256(secret.encode()).digest()


def new_session_secret() -> str:
    """A new random dashboard session secret (kept in the session cookie; only its SHA-256 is stored)."""
    return SESSION_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def new_token() -> IssuedToken:
    """Make a new random token."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    return IssuedToken(secret=secret, token_hash=hash_token(secret), prefix=secret[:DISPLAY_PREFIX_LENGTH])


@dataclass(frozen=True)
class Identity:
    """Who is calling: the token's principal, its tenant, its permissions and the groups it belongs to.

    The tenant of every request comes from here, never from the request itself.
    """

    tenant_id: UUID
    principal_id: UUID
    principal_name: str
    kind: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    permissions: frozenset[str]
    token_id: UUID
    expires_at: datetime | None
    platform: bool = False
    """Whether the principal belongs to the platform (operator) tenant."""
    display_name: str | None = None
    """The principal's display name, when it has one."""

    def can(self, resource: Resource, action: Action) -> bool:
        """Whether the principal has ``{resource}:{action}``."""
        return permission(resource, action) in self.permissions


def _unauthenticated(code: str, detail: str) -> ProblemError:
    return ProblemError(401, code, detail, title="Unauthorized", headers=dict(_CHALLENGE))


class Authenticator:
    """Turns an ``Authorization`` header into an :class:`Identity`, with a short-lived cache.

    Args:
        store: The gateway's store.
        clock: Current UTC time (expiry checks, usage times).
        ttl_s: Seconds a looked-up token stays cached; 0 disables the cache.
        max_entries: Upper bound on cached tokens (least recently used go first).
        monotonic: Seconds of a clock that never goes back, to age cache entries.
    """

    def __init__(
        self,
        store: GatewayStore,
        clock: Clock,
        *,
        ttl_s: float,
        max_entries: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.clock = clock
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.monotonic = monotonic
        self._cache: OrderedDict[bytes, tuple[float, TokenAuth | None]] = OrderedDict()
        self._uses: dict[UUID, tuple[UUID, datetime]] = {}

    async def authenticate(self, authorization: str | None) -> Identity:
        """Authenticate a request from its ``Authorization`` header.

        Raises:
            ProblemError: 401 ``AUTH_TOKEN_MISSING``, ``AUTH_TOKEN_INVALID``, ``AUTH_TOKEN_REVOKED`` or
                ``AUTH_TOKEN_EXPIRED``.
        """
        if not authorization:
            raise _unauthenticated("AUTH_TOKEN_MISSING", "Send an API token: 'Authorization: Bearer <token>'.")
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise _unauthenticated("AUTH_TOKEN_INVALID", "The Authorization header must be 'Bearer <token>'.")
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > _MAX_TOKEN_LENGTH:
            raise _unauthenticated("AUTH_TOKEN_INVALID", "The token is not valid.")
        return self._identity(await self._lookup(hash_token(secret)))

    async def authenticate_session(self, secret: str) -> Identity:
        """Authenticate a dashboard session from its cookie's secret, as the API token it was opened with.

        Sessions are not cached: a session ended by signing out is refused at once on every replica.

        Raises:
            ProblemError: 401 ``AUTH_SESSION_INVALID`` for an unknown, ended or expired session, or the
                token's own refusal (revoked, expired, principal deleted).
        """
        if not secret.startswith(SESSION_PREFIX) or len(secret) > _MAX_TOKEN_LENGTH:
            raise _unauthenticated("AUTH_SESSION_INVALID", "The session is not valid: sign in again.")
        record = await self.store.find_session(hash_token(secret), self.clock())
        if record is None:
            raise _unauthenticated("AUTH_SESSION_INVALID", "The session is not valid: sign in again.")
        return self._identity(record)

    def _identity(self, record: TokenAuth | None) -> Identity:
        if record is None or record.principal_deleted_at is not None:
            raise _unauthenticated("AUTH_TOKEN_INVALID", "The token is not valid.")
        if record.revoked_at is not None:
            raise _unauthenticated("AUTH_TOKEN_REVOKED", "The token was revoked.")
        now = self.clock()
        if record.expires_at is not None and record.expires_at <= now:
            raise _unauthenticated("AUTH_TOKEN_EXPIRED", "The token has expired.")
        self._uses[record.token_id] = (record.tenant_id, now)
        return Identity(
            tenant_id=record.tenant_id,
            principal_id=record.principal_id,
            principal_name=record.principal_name,
            kind=record.principal_kind,
            roles=record.roles,
            groups=record.groups,
            permissions=permissions_for(record.roles, platform=record.tenant_is_platform),
            token_id=record.token_id,
            expires_at=record.expires_at,
            platform=record.tenant_is_platform,
            display_name=record.principal_display_name,
        )

    async def _lookup(self, token_hash: bytes) -> TokenAuth | None:
        if self.ttl_s > 0:
            cached = self._cache.get(token_hash)
            if cached is not None and self.monotonic() - cached[0] < self.ttl_s:
                self._cache.move_to_end(token_hash)
                return cached[1]
        record = await self.store.find_token(token_hash)
        if self.ttl_s > 0:
            self._cache[token_hash] = (self.monotonic(), record)
            self._cache.move_to_end(token_hash)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return record

    def forget_token(self, token_id: UUID) -> None:
        """Drop a token from the cache (after revoking it here)."""
        self._forget(lambda record: record.token_id == token_id)

    def forget_principal(self, principal_id: UUID) -> None:
        """Drop every token of a principal from the cache (after deleting it, or changing its roles or groups, here)."""
        self._forget(lambda record: record.principal_id == principal_id)

    def _forget(self, matches: Callable[[TokenAuth], bool]) -> None:
        stale = [key for key, (_, record) in self._cache.items() if record is not None and matches(record)]
        for key in stale:
            del self._cache[key]

    async def flush_usage(self) -> int:
        """Write the collected token uses in one statement; returns how many tokens were touched.

        Uses that fail to be written are kept for the next flush.
        """
        if not self._uses:
            return 0
        pending, self._uses = self._uses, {}
        batch = [(tenant, token, at) for token, (tenant, at) in pending.items()]
        try:
            await self.store.touch_tokens(batch)
        except BaseException:
            for token, (tenant, at) in pending.items():
                newer = self._uses.get(token)
                if newer is None or newer[1] < at:
                    self._uses[token] = (tenant, at)
            raise
        return len(batch)


class TokenAuthMiddleware(AbstractAuthenticationMiddleware):
    """Authenticates every request except those of routes marked ``exclude_from_auth`` (health, docs).

    Args:
        app: The next ASGI application.
        authenticator: Returns the running :class:`Authenticator` (it is built at start-up).
        exclude: Path patterns that need no token.
    """

    def __init__(
        self, app: ASGIApp, authenticator: Callable[[], Authenticator], exclude: list[str] | None = None
    ) -> None:
        super().__init__(app, exclude=exclude)
        self._authenticator = authenticator

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        """Authenticate the bearer token of ``connection``."""
        identity = await self._authenticator().authenticate(connection.headers.get("authorization"))
        logs.tenant_id.set(str(identity.tenant_id))
        return AuthenticationResult(user=identity, auth=identity.token_id)


def require(
    resource: Resource, action: Action
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Coroutine[Any, Any, None]]:
    """A route guard that lets through only principals with ``{resource}:{action}``.

    A coroutine function: Litestar would run a plain function on a worker thread for every request.

    Args:
        resource: The resource the route acts on.
        action: What the route does to it.
    """
    needed = permission(resource, action)

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        identity = connection.scope.get("user")
        if not isinstance(identity, Identity):
            raise _unauthenticated("AUTH_TOKEN_MISSING", "Send an API token: 'Authorization: Bearer <token>'.")
        if needed not in identity.permissions:
            raise ProblemError(
                403,
                "PERM_DENIED",
                f"This needs the permission {needed!r}, which the roles {list(identity.roles)} do not grant.",
                title="Forbidden",
                extensions={"required_permission": needed},
            )

    guard.__name__ = f"require_{resource.value}_{action.value}"
    return guard
