"""Relaying requests to services: building commands and queries, and turning replies into responses.

Every message the gateway sends carries the caller's tenant (from the token), the request's trace id as
``correlation_id`` and, for commands, the principal as ``actor_id``. A command's ``message_id`` is the one
the request's idempotency key fixed (see :mod:`stella.gateway.idempotency`), else random.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from uuid import UUID, uuid4

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel, ValidationError

from stella.contracts.envelope import Command, Query, Reply
from stella.gateway.auth import Identity
from stella.gateway.problems import ProblemError, pydantic_errors
from stella.kit.broker import ServiceClient
from stella.kit.naming import Names

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Command)
Q = TypeVar("Q", bound=Query)
M = TypeVar("M", bound=BaseModel)

LateReplyHandler = Callable[[UUID, UUID, Reply], Awaitable[None]]
"""``handler(tenant_id, message_id, reply)`` for a reply that came after its request gave up."""

_MAX_AWAITED_LATE: Final[int] = 10_000


@dataclass(frozen=True)
class Claim:
    """The idempotency key a request holds: the command id it must use and a reply already received."""

    message_id: UUID
    late_reply: dict[str, Any] | None = None


class RelayClient(ServiceClient):
    """The kit's :class:`ServiceClient`, plus a hand-over of replies that arrive after their caller gave up.

    A command that times out answers 503 ``SYS_PENDING``; the service still handles it and replies later.
    For commands sent under an idempotency key, that late reply is handed to ``on_late_reply`` so the
    request's retry can answer with it: re-sending the command within the stream's duplicate window is
    dropped by JetStream and would never be answered.

    Args:
        nc: Connected NATS client.
        js: Its JetStream context.
        names: The installation's NATS namespace.
        on_late_reply: Called with ``(tenant_id, message_id, reply)`` for an awaited late reply.
    """

    def __init__(self, nc: NatsClient, js: JetStreamContext, *, names: Names, on_late_reply: LateReplyHandler) -> None:
        super().__init__(nc, js, names=names)
        self._on_late_reply = on_late_reply
        self._awaited_late: OrderedDict[str, UUID] = OrderedDict()

    def await_late_reply(self, message_id: UUID, tenant_id: UUID) -> None:
        """Keep a reply to ``message_id`` that arrives after its caller stopped waiting (bounded memory)."""
        self._awaited_late[message_id.hex] = tenant_id
        self._awaited_late.move_to_end(message_id.hex)
        while len(self._awaited_late) > _MAX_AWAITED_LATE:
            self._awaited_late.popitem(last=False)

    def forget_late_reply(self, message_id: UUID) -> None:
        """Stop waiting for a late reply to ``message_id`` (its request got an answer)."""
        self._awaited_late.pop(message_id.hex, None)

    async def _on_reply(self, msg: Msg) -> None:
        key = msg.subject.rsplit(".", 1)[-1]
        if key not in self._pending and key in self._awaited_late:
            tenant_id = self._awaited_late.pop(key)
            try:
                reply = Reply.model_validate_json(msg.data)
                await self._on_late_reply(tenant_id, UUID(hex=key), reply)
            except Exception:
                # A reply callback has no caller to report to; the retry falls back to re-sending.
                log.exception("could not keep a late command reply", extra={"message_id": key})
            return
        await super()._on_reply(msg)


@dataclass(frozen=True)
class CallContext:
    """What every message sent for one request carries.

    Attributes:
        identity: The authenticated caller.
        correlation_id: The request's trace id.
        claim: The idempotency key the request holds, if it sent one.
    """

    identity: Identity
    correlation_id: UUID
    claim: Claim | None = None

    def command(self, model: type[C], **fields: Any) -> C:
        """Build a command for this request; invalid fields are a 400 with field errors."""
        message_id = self.claim.message_id if self.claim is not None else uuid4()
        return _build(
            model,
            message_id=message_id,
            tenant_id=self.identity.tenant_id,
            correlation_id=self.correlation_id,
            actor_id=self.identity.principal_id,
            **fields,
        )

    def query(self, model: type[Q], **fields: Any) -> Q:
        """Build a query for this request; invalid fields are a 400 with field errors."""
        return _build(model, tenant_id=self.identity.tenant_id, correlation_id=self.correlation_id, **fields)


def _build(model: type[M], **fields: Any) -> M:
    try:
        return model(**fields)
    except ValidationError as exc:
        raise ProblemError(
            400, "VAL_INVALID_REQUEST", "The request is not valid.", errors=pydantic_errors(exc)
        ) from exc


def unwrap(reply: Reply) -> Any:
    """Return a successful reply's data, or raise its error as a problem."""
    if reply.ok:
        return reply.data
    if reply.error is None:
        raise ProblemError(502, "SYS_BAD_GATEWAY", "A service answered with an error but no detail.")
    problem = ProblemError.from_error_detail(reply.error)
    if problem.status == 503:
        problem.headers.setdefault("Retry-After", "1")
    raise problem


def parse_data(model: type[M], data: Any) -> M:
    """Validate a service's reply data as the gateway's response schema ``model``.

    Raises:
        ProblemError: 502 ``SYS_BAD_GATEWAY`` when the service answered something else.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        log.error("a service reply does not match %s: %s", model.__name__, exc)
        raise ProblemError(502, "SYS_BAD_GATEWAY", "A service answered in an unexpected shape.") from exc


class Relay:
    """Sends a request's commands and queries and unwraps the replies.

    Args:
        client: The running :class:`RelayClient`.
        command_timeout_s: How long a command's reply is awaited before answering 503 ``SYS_PENDING``.
        query_timeout_s: How long a query's reply is awaited before answering 503 ``SYS_UNAVAILABLE``.
    """

    def __init__(self, client: RelayClient, *, command_timeout_s: float, query_timeout_s: float) -> None:
        self.client = client
        self.command_timeout_s = command_timeout_s
        self.query_timeout_s = query_timeout_s

    async def query(self, subject: str, query: Query) -> Any:
        """Ask ``subject`` and return the reply's data.

        Raises:
            ProblemError: the service's error, or 503 when no service answers in time.
        """
        return unwrap(await self.client.query(subject, query, timeout=self.query_timeout_s))

    async def command(self, ctx: CallContext, subject: str, command: Command) -> Any:
        """Send ``command`` on ``subject`` and return the reply's data.

        Under an idempotency key, a reply that arrived after an earlier attempt gave up answers at once;
        otherwise the command is (re-)sent with the key's ``message_id``, which the service de-duplicates.

        Raises:
            ProblemError: the service's error, or 503 ``SYS_PENDING`` when the reply did not come in time.
        """
        claim = ctx.claim
        if claim is not None and claim.late_reply is not None:
            return unwrap(Reply.model_validate(claim.late_reply))
        if claim is not None:
            self.client.await_late_reply(command.message_id, ctx.identity.tenant_id)
        # Should this request be cancelled mid-way, the awaited late reply is still kept for its retry.
        reply = await self.client.command(subject, command, timeout=self.command_timeout_s)
        pending = not reply.ok and reply.error is not None and reply.error.code == "SYS_PENDING"
        if claim is not None and not pending:
            self.client.forget_late_reply(command.message_id)
        return unwrap(reply)
