"""``Idempotency-Key`` on every POST: one effect per key, the first answer replayed for repeats.

Authorization comes first: the route's guards run before the key is looked up, so a caller who may not
make the request gets its 403 whether or not the key was used before. A key is scoped to the tenant, the
calling principal, the method and the path (as Stripe scopes keys to the account): the principal that first
used it owns it, and another principal of the tenant presenting the same key on the same route gets 422
``VAL_IDEMPOTENCY_KEY_OTHER_PRINCIPAL`` and nothing runs. The first request with a key claims it and runs; its final
response (status, ``Content-Type``, ``Location`` and body) is stored and replayed, with
``Idempotent-Replayed: true``, for every repeat within ``idempotency_ttl_s`` (24 h). A repeat with another
body answers 422 ``VAL_IDEMPOTENCY_KEY_REUSED``; a repeat while the first request still runs answers 409
``RES_IDEMPOTENCY_IN_FLIGHT``.

Answers that are not final are not stored: a 5xx (notably 503 ``SYS_PENDING``, a command still queued),
401, 403, 408 and 429. The next retry runs the request again with the same command ``message_id``, a UUID
derived from (tenant, method, path, key and the time the key was first used), so the service handles the
command once and answers a re-sent one from its inbox (see :class:`~stella.kit.broker.ServiceClient` for
how a retry gets past the stream's duplicate window). A reply that arrives after a request answered
``SYS_PENDING`` is kept with the key and answers the retry without sending anything.

A request that holds a key for longer than ``idempotency_lock_s`` is taken to have died; a retry may then
take the key over.

Fields a route names in ``opt["idempotency_redact"]`` are removed from the stored body (a new token's
value is shown once, never stored).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from stella.gateway.auth import Identity
from stella.gateway.problems import ProblemError
from stella.gateway.relay import Claim
from stella.gateway.store import GatewayStore
from stella.kit.faults import is_transient

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER: Final[str] = "Idempotency-Key"
"""Request header naming a POST's idempotency key."""

REPLAYED_HEADER: Final[str] = "Idempotent-Replayed"
"""Response header set to ``true`` on a replayed response."""

REDACT_OPT: Final[str] = "idempotency_redact"
"""Route ``opt`` key: body fields never stored for replay."""

STATE_KEY: Final[str] = "stella.idempotency"
"""Scope state key holding the request's :class:`~stella.gateway.relay.Claim`."""

MESSAGE_NAMESPACE: Final = uuid.UUID("0b6f4a52-93c1-5d7e-8e2a-6c1d9f3b7a15")
"""UUID namespace of command ids derived from idempotency keys."""

_KEY: Final = re.compile(r"^[\x20-\x7e]{1,255}$")
_STORED_HEADERS: Final = (b"content-type", b"location")
# Answers that say nothing final about the request: it may well succeed when retried.
_NOT_FINAL: Final = frozenset({401, 403, 408, 429})


def message_id_for(tenant_id: uuid.UUID, method: str, path: str, key: str, first_used: datetime) -> uuid.UUID:
    """The command id every retry under one idempotency key uses.

    ``first_used`` makes a key reused after it expired a new command, which the service would otherwise
    answer from its inbox with the old result.
    """
    return uuid.uuid5(MESSAGE_NAMESPACE, f"{tenant_id}\n{method}\n{path}\n{key}\n{first_used.isoformat()}")


def fingerprint(body: bytes) -> bytes:
    """SHA-256 of a request body; JSON is canonicalised so key order and spacing do not count."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError):
        canonical = body
    return hashlib.sha256(canonical).digest()


def is_final(status: int) -> bool:
    """Whether a response with ``status`` is stored and replayed for repeats of its key."""
    return status < 500 and status not in _NOT_FINAL


def redact(body: bytes, fields: tuple[str, ...]) -> bytes:
    """Remove top-level ``fields`` from a JSON object body (other bodies are returned unchanged)."""
    if not fields or not body:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict):
        return body
    for name in fields:
        data.pop(name, None)
    return json.dumps(data, separators=(",", ":")).encode()


@dataclass(frozen=True)
class IdempotencyPolicy:
    """The gateway objects and limits the middleware needs."""

    store: GatewayStore
    clock: Callable[[], datetime]
    ttl: timedelta
    lock: timedelta


class IdempotencyMiddleware:
    """Applies idempotency keys to authenticated POST requests (see the module's description).

    Args:
        app: The next ASGI application.
        policy: Returns the running :class:`IdempotencyPolicy` (built at start-up).
    """

    def __init__(self, app: ASGIApp, policy: Callable[[], IdempotencyPolicy]) -> None:
        self.app = app
        self._policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Claim, replay or refuse the request's key, then store the outcome."""
        if scope["type"] != ScopeType.HTTP or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        identity = scope.get("user")
        request: Request[Any, Any, Any] = Request(scope, receive)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None or not isinstance(identity, Identity):
            await self.app(scope, receive, send)
            return
        if not _KEY.match(key):
            raise ProblemError(
                400,
                "VAL_IDEMPOTENCY_KEY_INVALID",
                "Idempotency-Key must be 1 to 255 printable ASCII characters.",
                errors=[{"loc": ["header", IDEMPOTENCY_HEADER], "msg": "1 to 255 printable ASCII characters"}],
            )
        handler = scope.get("route_handler")
        if isinstance(handler, BaseRouteHandler):
            # Authorization before the lookup: a stored answer is never served to someone the route refuses.
            await handler.authorize_connection(ASGIConnection(scope, receive))
        policy = self._policy()
        request_hash = fingerprint(await request.body())
        scope_key = (identity.tenant_id, "POST", scope["path"], key)
        outcome = await self._claim(policy, scope_key, identity.principal_id, request_hash)
        if isinstance(outcome, _Replay):
            await _replay(outcome, send)
            return
        scope.setdefault("state", {})[STATE_KEY] = outcome
        await self._run(policy, scope_key, scope, receive, send)

    async def _claim(
        self,
        policy: IdempotencyPolicy,
        scope_key: tuple[uuid.UUID, str, str, str],
        principal_id: uuid.UUID,
        request_hash: bytes,
    ) -> Claim | _Replay:
        tenant_id, method, path, key = scope_key
        now = policy.clock()
        store = policy.store
        async with store.pool.acquire() as conn, conn.transaction():
            row = await store.lock_key(conn, *scope_key)
            message_id = message_id_for(tenant_id, method, path, key, now)
            if row is None:
                inserted = await store.insert_key(
                    conn,
                    *scope_key,
                    principal_id=principal_id,
                    request_hash=request_hash,
                    message_id=message_id,
                    now=now,
                    expires_at=now + policy.ttl,
                )
                if not inserted:
                    raise _in_flight()
                return Claim(message_id)
            if row.expires_at <= now:
                await store.restart_key(
                    conn,
                    *scope_key,
                    principal_id=principal_id,
                    request_hash=request_hash,
                    message_id=message_id,
                    now=now,
                    expires_at=now + policy.ttl,
                )
                return Claim(message_id)
            if row.principal_id != principal_id:
                raise ProblemError(
                    422,
                    "VAL_IDEMPOTENCY_KEY_OTHER_PRINCIPAL",
                    "This Idempotency-Key was used by another principal for this request; "
                    "a key is only replayed to the principal that first used it. Use a new key.",
                )
            if row.request_hash != request_hash:
                raise ProblemError(
                    422,
                    "VAL_IDEMPOTENCY_KEY_REUSED",
                    "This Idempotency-Key was used for a request with another body; use a new key.",
                )
            if row.state == "done" and row.response_status is not None:
                return _Replay(row.response_status, row.response_headers or {}, row.response_body or b"")
            if row.state == "in_flight" and row.updated_at > now - policy.lock:
                raise _in_flight()
            await store.reclaim_key(conn, *scope_key, now)
            return Claim(row.message_id, retry=True, late_reply=row.late_reply)

    async def _run(
        self,
        policy: IdempotencyPolicy,
        scope_key: tuple[uuid.UUID, str, str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        status = 500
        headers: dict[str, str] = {}
        chunks: list[bytes] = []
        held_start: Message | None = None
        recorded = False

        async def capture(message: Message) -> None:
            # The outcome is recorded before the answer's last byte leaves: a client that retries as soon as
            # it has the answer finds the key finished or released, never still in flight.
            nonlocal status, held_start, recorded
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() in _STORED_HEADERS:
                        headers[name.decode("latin-1").lower()] = value.decode("latin-1")
                held_start = message
                return
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False) and not recorded:
                    recorded = True
                    await self._record(policy, scope_key, scope, status, headers, chunks)
                if held_start is not None:
                    start, held_start = held_start, None
                    await send(start)
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except BaseException:
            # The request died without an answer; free the key for a retry if the database still answers.
            if not recorded:
                with contextlib.suppress(Exception):
                    await policy.store.release_key(*scope_key, policy.clock())
            raise
        if not recorded:
            await self._record(policy, scope_key, scope, status, headers, chunks)

    @staticmethod
    async def _record(
        policy: IdempotencyPolicy,
        scope_key: tuple[uuid.UUID, str, str, str],
        scope: Scope,
        status: int,
        headers: dict[str, str],
        chunks: list[bytes],
    ) -> None:
        """Store a final answer for replays, or release the key so that a retry runs the request again."""
        try:
            if is_final(status):
                handler = scope.get("route_handler")
                fields = tuple(handler.opt.get(REDACT_OPT, ())) if handler is not None else ()
                await policy.store.finish_key(
                    *scope_key,
                    status=status,
                    headers=headers,
                    body=redact(b"".join(chunks), fields),
                    now=policy.clock(),
                )
            else:
                await policy.store.release_key(*scope_key, policy.clock())
        except Exception as exc:
            # The database went away meanwhile. The key stays in flight until idempotency_lock_s has passed,
            # then a retry takes it over and the service answers from its inbox.
            if not is_transient(exc):
                raise
            log.warning("could not record the outcome of an idempotency key", extra={"error": repr(exc)})


@dataclass(frozen=True)
class _Replay:
    status: int
    headers: dict[str, str]
    body: bytes


def _in_flight() -> ProblemError:
    return ProblemError(
        409,
        "RES_IDEMPOTENCY_IN_FLIGHT",
        "A request with this Idempotency-Key is still being handled; retry shortly.",
        headers={"Retry-After": "1"},
    )


async def _replay(replay: _Replay, send: Send) -> None:
    raw_headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in replay.headers.items()]
    raw_headers.append((b"content-length", str(len(replay.body)).encode()))
    raw_headers.append((REPLAYED_HEADER.lower().encode(), b"true"))
    await send({"type": "http.response.start", "status": replay.status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": replay.body, "more_body": False})
