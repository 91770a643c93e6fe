"""Relaying requests to services: building commands and queries, and turning replies into responses.

Every message the gateway sends carries the caller's tenant (from the token), the request's trace id as
``correlation_id`` and, for commands, the principal as ``actor_id`` with its name and display name (so records of
who acted name the principal without asking the gateway back). A command's ``message_id`` is the one
the request's idempotency key fixed (see :mod:`stella.gateway.idempotency`), else random.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID, uuid4

from pydantic import BaseModel, ValidationError

from stella.contracts.envelope import Command, Query, Reply
from stella.gateway.auth import Identity
from stella.gateway.problems import ProblemError, pydantic_errors
from stella.kit.broker import ServiceClient

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Command)
Q = TypeVar("Q", bound=Query)
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Claim:
    """The idempotency key a request holds.

    Attributes:
        message_id: The id of the command the request sends, the same for every retry.
        retry: Whether an earlier attempt under this key may have sent the command already.
        late_reply: The reply that came after an earlier attempt gave up, if any.
    """

    message_id: UUID
    retry: bool = False
    late_reply: dict[str, Any] | None = None


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
            # Names are at most 200 characters where they are set; cut rather than refuse a request over them.
            actor_name=self.identity.principal_name[:200],
            actor_display_name=self.identity.display_name[:200] if self.identity.display_name else None,
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
    """Validate a service's reply data as ``model``: a response schema, or a contract's view the gateway reads.

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
        client: The running :class:`~stella.kit.broker.ServiceClient` (with a late-reply handler).
        command_timeout_s: How long a command's reply is awaited before answering 503 ``SYS_PENDING``.
        query_timeout_s: How long a query's reply is awaited before answering 503 ``SYS_UNAVAILABLE``.
    """

    def __init__(self, client: ServiceClient, *, command_timeout_s: float, query_timeout_s: float) -> None:
        self.client = client
        self.command_timeout_s = command_timeout_s
        self.query_timeout_s = query_timeout_s

    async def query(self, subject: str, query: Query, *, timeout_s: float | None = None) -> Any:
        """Ask ``subject`` and return the reply's data.

        Args:
            subject: The query's subject.
            query: The query.
            timeout_s: Seconds to wait for the reply, for queries that take longer than most
                (``query_timeout_s`` when None).

        Raises:
            ProblemError: the service's error, or 503 when no service answers in time.
        """
        timeout = self.query_timeout_s if timeout_s is None else timeout_s
        return unwrap(await self.client.query(subject, query, timeout=timeout))

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
        reply = await self.client.command(
            subject, command, timeout=self.command_timeout_s, resend=claim is not None and claim.retry
        )
        pending = not reply.ok and reply.error is not None and reply.error.code == "SYS_PENDING"
        if claim is not None and not pending:
            self.client.forget_late_reply(command.message_id)
        return unwrap(reply)
