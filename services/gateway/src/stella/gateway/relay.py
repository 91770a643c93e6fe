"""Relaying requests to services: building commands and queries, and turning replies into responses.

Every message the gateway sends carries the caller's tenant (from the token), the request's trace id as
``correlation_id`` and, for commands, the principal as ``actor_id``. A command's ``message_id`` is the one
the request's idempotency key fixed (see :mod:`stella.gateway.idempotency`), else random.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from uuid import UUID, uuid4

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel, ValidationError

from stella.contracts.envelope import Command, ErrorDetail, Query, Reply
from stella.contracts.streams import HEADER_MSG_ID, HEADER_REPLY_TO
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
    """The idempotency key a request holds.

    Attributes:
        message_id: The id of the command the request sends, the same for every retry.
        retry: Whether an earlier attempt under this key may have sent the command already.
        late_reply: The reply that came after an earlier attempt gave up, if any.
    """

    message_id: UUID
    retry: bool = False
    late_reply: dict[str, Any] | None = None


class RelayClient(ServiceClient):
    """The kit's :class:`ServiceClient` with the gateway's way of sending commands.

    Queries are the kit's. Commands are sent the same way (stored in JetStream with ``Nats-Msg-Id`` set to
    the ``message_id``, the reply requested on this client's inbox) with two additions for requests that
    carry an ``Idempotency-Key``:

    * a reply that arrives after the request answered 503 ``SYS_PENDING`` is handed to ``on_late_reply``,
      so the request's retry can answer with it;
    * a retry is sent with a new ``Nats-Msg-Id`` (``<message_id>:<random>``). The same ``Nats-Msg-Id`` would
      be dropped by the stream's duplicate window and never reach the service; with a new one the service
      receives the command again and answers it from its inbox (keyed by ``message_id``), or handles it once
      if the first copy was lost.

    Args:
        nc: Connected NATS client.
        js: Its JetStream context.
        names: The installation's NATS namespace.
        on_late_reply: Called with ``(tenant_id, message_id, reply)`` for an awaited late reply.
        max_pending: Commands awaited at once; more answer 503 at once.
    """

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        *,
        names: Names,
        on_late_reply: LateReplyHandler,
        max_pending: int = 10_000,
    ) -> None:
        super().__init__(nc, js, names=names)
        self._on_late_reply = on_late_reply
        self._max_waiting = max_pending
        self._inbox = f"_INBOX.stella.gateway.{uuid4().hex}"
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._awaited_late: OrderedDict[str, UUID] = OrderedDict()
        self._inbox_sub: Any = None

    async def start(self) -> None:
        """Subscribe to the kit's and this client's reply inboxes."""
        await super().start()
        self._inbox_sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_command_reply)

    async def stop(self) -> None:
        """Unsubscribe and cancel the commands still awaited."""
        if self._inbox_sub is not None:
            with contextlib.suppress(Exception):
                await self._inbox_sub.unsubscribe()
            self._inbox_sub = None
        for future in self._waiting.values():
            if not future.done():
                future.cancel()
        self._waiting.clear()
        await super().stop()

    def await_late_reply(self, message_id: UUID, tenant_id: UUID) -> None:
        """Keep a reply to ``message_id`` that arrives after its caller stopped waiting (bounded memory)."""
        self._awaited_late[message_id.hex] = tenant_id
        self._awaited_late.move_to_end(message_id.hex)
        while len(self._awaited_late) > _MAX_AWAITED_LATE:
            self._awaited_late.popitem(last=False)

    def forget_late_reply(self, message_id: UUID) -> None:
        """Stop waiting for a late reply to ``message_id`` (its request got an answer)."""
        self._awaited_late.pop(message_id.hex, None)

    async def command(self, subject: str, command: Command, *, timeout: float = 10.0, resend: bool = False) -> Reply:
        """Send a durable command and wait up to ``timeout`` seconds for its reply.

        Args:
            subject: The command's contract subject.
            command: The command.
            timeout: Seconds to wait for the reply; then the answer is 503 ``SYS_PENDING``.
            resend: Whether this repeats a command sent before (a retry under the same idempotency key).

        Returns:
            The service's reply, or a 503 reply when none came in time.
        """
        key = command.message_id.hex
        if len(self._waiting) >= self._max_waiting:
            return Reply.failure(
                ErrorDetail(
                    code="SYS_UNAVAILABLE",
                    status=503,
                    title="Service unavailable",
                    detail="too many commands in flight",
                )
            )
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        stream_id = f"{command.message_id}:{uuid4().hex}" if resend else str(command.message_id)
        try:
            await self.js.publish(
                self.names.subject(subject),
                command.model_dump_json().encode(),
                headers={HEADER_MSG_ID: stream_id, HEADER_REPLY_TO: f"{self._inbox}.{key}"},
                timeout=timeout,
            )
            return await asyncio.wait_for(future, timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return Reply.failure(
                ErrorDetail(
                    code="SYS_PENDING",
                    status=503,
                    title="The command is queued but not handled yet",
                    detail=f"No result came within {timeout:g}s; the command stays queued. Repeat the request "
                    "with the same Idempotency-Key to get its result.",
                )
            )
        finally:
            if self._waiting.get(key) is future:
                del self._waiting[key]

    async def _on_command_reply(self, msg: Msg) -> None:
        key = msg.subject.rsplit(".", 1)[-1]
        try:
            reply = Reply.model_validate_json(msg.data)
        except ValidationError:
            log.error("a command reply is not a Reply", extra={"subject": msg.subject})
            return
        future = self._waiting.get(key)
        if future is not None:
            if not future.done():
                future.set_result(reply)
            return
        tenant_id = self._awaited_late.pop(key, None)
        if tenant_id is None:
            return  # nobody waits for it: a duplicate answer, or a request without an idempotency key
        try:
            await self._on_late_reply(tenant_id, UUID(hex=key), reply)
        except Exception:
            # A reply callback has no caller to report to; the retry falls back to sending again.
            log.exception("could not keep a late command reply", extra={"message_id": key})


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
        reply = await self.client.command(
            subject, command, timeout=self.command_timeout_s, resend=claim is not None and claim.retry
        )
        pending = not reply.ok and reply.error is not None and reply.error.code == "SYS_PENDING"
        if claim is not None and not pending:
            self.client.forget_late_reply(command.message_id)
        return unwrap(reply)
