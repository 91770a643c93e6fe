"""Ask another service for a read and turn its answer into a value or a typed error.

The rule every caller follows: an answer is validated into the caller's model; an error of 500 or more
(including no answer at all, which :meth:`ServiceClient.query` reports as 503) means the other service is
unavailable, which the caller reports in its own terms (``unavailable``); any other error is the other
service refusing, raised as :class:`Refused` with its code, status, title, detail and field errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from stella.contracts.envelope import ErrorDetail, Query
from stella.kit.broker import ServiceClient
from stella.kit.errors import ServiceError

T = TypeVar("T", bound=BaseModel)


class Refused(ServiceError):
    """Another service answered a read with an error below 500; ``error`` is its answer as it came."""

    def __init__(self, error: ErrorDetail) -> None:
        super().__init__(error.detail, code=error.code, status=error.status, title=error.title, errors=error.errors)
        self.error = error


async def ask(
    client: ServiceClient,
    subject: str,
    query: Query,
    model: type[T],
    *,
    timeout: float,
    unavailable: Callable[[ErrorDetail], Exception],
) -> T:
    """Send ``query`` on ``subject`` and return the answer as ``model``.

    Args:
        client: The service's client.
        subject: The query's contract subject.
        query: The query.
        model: The contract view of the answer.
        timeout: Seconds to wait for the answer.
        unavailable: Builds the exception raised when the other service fails or does not answer.

    Raises:
        Refused: the other service refused the read (status below 500).
        Exception: what ``unavailable`` builds, for a status of 500 or more or no answer.
    """
    reply = await client.query(subject, query, timeout=timeout)
    if reply.ok:
        return model.model_validate(reply.data)
    error = reply.error or ErrorDetail(code="SYS_ERROR", status=500, title="Error", detail="an error without detail")
    if error.status >= 500:
        raise unavailable(error)
    raise Refused(error)
