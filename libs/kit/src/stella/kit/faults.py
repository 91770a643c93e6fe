"""What a failure is, and therefore what happens to the message (or request) that hit it.

Every service follows one rule; the kit applies it in :func:`stella.kit.broker.settle` (durable consumers),
in :class:`stella.kit.broker.QueryRoutes` (reads) and in :class:`stella.kit.broker.CommandProcessor`
(commands), and the gateway applies it to the errors of its own requests. A new service gets all of it by
using those; it only has to raise the right kind of error:

``transient``
    The infrastructure failed, not the message: Postgres refused or lost the connection (whatever asyncpg
    reports it as), is starting up or shutting down, has too many connections; a serialization failure or a
    deadlock; NATS timed out, has no
    responders or lost its connection; or the handler raised :class:`TransientFault` (another service did
    not answer, say). The same work would succeed once the fault passes, so a consumer keeps the message and
    tries again in the same process with capped exponential back-off, telling JetStream it is still working
    on it, for as long as the outage lasts. This never counts against the message's poison budget and never
    dead-letters it. A read answers 503 at once; the caller retries.

``permanent``
    Postgres refused a value of the message itself (SQLSTATE class 22: a NUL character, a number out of
    range, a string too long, text that is not a valid number or date...). Every delivery would fail the
    same way, so a command is answered at once with a 400 ``VAL_VALUE_REFUSED`` reply (not retried, not
    dead-lettered) and a read answers the same; an event, which has nobody to answer, is dead-lettered at
    once.

``poison``
    Anything else: a bug, a constraint the code did not expect, a payload that does not parse. Retrying may
    help (a race) or not (a bug), so the message is redelivered with a growing delay and, after
    ``max_deliver`` such failures, kept on its dead-letter subject with the error, where an operator can see
    it and replay it (``/api/v1/admin/dead-letters``). A message that can never be handled (unparseable,
    unknown subject) raises :class:`~stella.kit.broker.PoisonMessage` and is dead-lettered at once.

Business outcomes (:class:`~stella.kit.errors.ServiceError` and anything with ``code`` and ``status``) are
none of these: they are the handler's answer and are replied, not retried.
"""

from __future__ import annotations

import errno
import socket
from enum import StrEnum
from typing import Final

import asyncpg
import nats.errors
import nats.js.errors

from stella.kit.errors import BadRequest, TransientFault


class Failure(StrEnum):
    """The kinds of failure (see the module's description)."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    POISON = "poison"


class ValueRefused(BadRequest):
    """Postgres refused a value the request or message carries (a permanent failure)."""

    code = "VAL_VALUE_REFUSED"
    title = "A value cannot be stored"


_TRANSIENT_POSTGRES: Final = (
    asyncpg.PostgresConnectionError,  # class 08: cannot connect, connection lost
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down, in recovery
    asyncpg.exceptions.AdminShutdownError,  # 57P01: the server stops
    asyncpg.exceptions.CrashShutdownError,  # 57P02: another backend crashed
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, out of memory or disk
    asyncpg.exceptions.TransactionRollbackError,  # class 40: serialization failure, deadlock
    asyncpg.exceptions.LockNotAvailableError,  # 55P03: lock_timeout
)

_TRANSIENT_NATS: Final = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoServersError,
    nats.errors.FlushTimeoutError,
    nats.errors.UnexpectedEOF,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)

_NETWORK_ERRNOS: Final = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EADDRNOTAVAIL,
    }
)

# asyncpg raises a bare InterfaceError when a connection it held died under it.
_DEAD_CONNECTION_MESSAGES: Final = ("connection is closed", "connection was closed", "underlying connection")

_MAX_CHAIN: Final = 8


def _is_transient_itself(exc: BaseException) -> bool:
    if isinstance(exc, (TransientFault, *_TRANSIENT_POSTGRES, *_TRANSIENT_NATS)):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc).lower()
        return any(message in text for message in _DEAD_CONNECTION_MESSAGES)
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # The protocol lost track of a connection the server closed under it; the pool discards that
        # connection, so the next try gets a new one.
        return True
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    if isinstance(exc, OSError):
        # asyncio reports a connection refused on every address of a host as one OSError without errno.
        return exc.errno in _NETWORK_ERRNOS or (exc.errno is None and "connect call failed" in str(exc).lower())
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was explicitly raised from (``raise ... from``), nearest first."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(found) < _MAX_CHAIN and current not in found:
        found.append(current)
        current = current.__cause__
    return found


def is_permanent(exc: BaseException) -> bool:
    """Whether Postgres refused a value (SQLSTATE class 22), which no retry can change."""
    return isinstance(exc, asyncpg.DataError)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an infrastructure fault that will pass (see the module's description).

    An exception raised ``from`` a transient one is transient too (a client library wrapping a lost
    connection); an exception group is transient when every member is.
    """
    if isinstance(exc, BaseExceptionGroup):
        return bool(exc.exceptions) and all(is_transient(member) for member in exc.exceptions)
    return any(_is_transient_itself(link) for link in _chain(exc))


def classify(exc: BaseException) -> Failure:
    """The kind of failure ``exc`` is (business outcomes are not failures: check them first)."""
    if is_permanent(exc):
        return Failure.PERMANENT
    if is_transient(exc):
        return Failure.TRANSIENT
    return Failure.POISON


def refused(exc: BaseException) -> ValueRefused:
    """The 400 a caller gets when Postgres refused one of its values (``exc`` is a permanent failure)."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ValueRefused(f"A value was refused: {message[:300]}. Nothing was stored; correct the value and retry.")


def retry_delay(retry: int, base_s: float, cap_s: float) -> float:
    """Capped exponential back-off: ``base_s * 2**(retry - 1)``, at most ``cap_s`` (``retry`` counts from 1)."""
    return float(min(cap_s, base_s * 2.0 ** min(max(retry - 1, 0), 30)))
