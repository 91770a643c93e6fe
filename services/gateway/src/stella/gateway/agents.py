"""The agent channel's side of the gateway: agent credentials and the wake-ups of long-polled task feeds.

Agents do not hold API tokens. An agent credential reads ``stag_<tenant hex>_<agent hex>_<secret>``: the
gateway takes the tenant and the agent from it to address the deployment service, which checks the whole
credential against its stored hash on every call (so a revoked or unknown credential is refused at once;
nothing is cached here). A registration token reads ``stra_<tenant hex>_<secret>`` and is checked the same
way when used.

A task feed request waits (up to its ``wait``) for tasks: it asks the deployment service, and when nothing
is there it sleeps until the service announces released tasks for the tenant on core NATS
(:data:`~stella.contracts.deployment.TASKS_READY_PREFIX`), or a short interval passes, and asks again.
One subscription per gateway serves every waiting request.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

from litestar.connection import ASGIConnection
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from stella.contracts.deployment import TASKS_READY_PREFIX
from stella.gateway.problems import ProblemError
from stella.kit.naming import Names

_CREDENTIAL: Final = re.compile(r"^stag_([0-9a-f]{32})_([0-9a-f]{32})_[A-Za-z0-9_-]{16,128}$")
_REGISTRATION: Final = re.compile(r"^stra_([0-9a-f]{32})_[A-Za-z0-9_-]{16,128}$")
_CHALLENGE: Final[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="stella-agent"'}

RECHECK_S: Final[float] = 2.0
"""Longest a waiting task feed sleeps without asking again (bounds the cost of a lost wake-up)."""


@dataclass(frozen=True)
class AgentCredential:
    """Who an agent credential names; proven only once the deployment service has checked it."""

    tenant_id: UUID
    agent_id: UUID
    secret: str


def unauthenticated(detail: str, code: str = "AGT_CREDENTIAL_INVALID") -> ProblemError:
    """A 401 for the agent channel."""
    return ProblemError(401, code, detail, title="Unauthorized", headers=dict(_CHALLENGE))


def agent_credential(connection: ASGIConnection[Any, Any, Any, Any], agent_id: UUID) -> AgentCredential:
    """Read the agent credential of a request on ``/api/v1/agents/{agent_id}/...``.

    Raises:
        ProblemError: 401 when there is none, it is malformed, or it names another agent.
    """
    header = connection.headers.get("authorization") or ""
    scheme, _, secret = header.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise unauthenticated("Send the agent credential: 'Authorization: Bearer stag_...'.")
    match = _CREDENTIAL.match(secret)
    if match is None:
        raise unauthenticated("The agent credential is not valid.")
    credential = AgentCredential(UUID(match.group(1)), UUID(match.group(2)), secret)
    if credential.agent_id != agent_id:
        raise unauthenticated("The agent credential belongs to another agent.")
    return credential


def registration_tenant(token: str) -> UUID:
    """The tenant a registration token names.

    Raises:
        ProblemError: 401 ``AGT_TOKEN_INVALID`` for a token Stella did not make.
    """
    match = _REGISTRATION.match(token)
    if match is None:
        raise unauthenticated("The registration token is not valid.", code="AGT_TOKEN_INVALID")
    return UUID(match.group(1))


class TaskNotices:
    """Wakes the task feeds waiting for a tenant when the deployment service releases its tasks."""

    def __init__(self, nc: NatsClient, names: Names) -> None:
        self._nc = nc
        self._names = names
        self._waiting: dict[UUID, set[asyncio.Event]] = defaultdict(set)
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        """Subscribe to every tenant's notices."""
        self._subscription = await self._nc.subscribe(
            self._names.subject(f"{TASKS_READY_PREFIX}.*"), cb=self._on_notice
        )

    async def stop(self) -> None:
        """Unsubscribe and wake every waiter."""
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        for events in self._waiting.values():
            for event in events:
                event.set()

    async def _on_notice(self, msg: Msg) -> None:
        try:
            tenant = UUID(self._names.local(msg.subject).rsplit(".", 1)[1])
        except ValueError:
            return
        for event in self._waiting.get(tenant, ()):
            event.set()

    async def wait(self, tenant_id: UUID, timeout: float) -> None:
        """Sleep until a notice for ``tenant_id`` or ``timeout`` seconds (at most :data:`RECHECK_S`)."""
        event = asyncio.Event()
        self._waiting[tenant_id].add(event)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(timeout, RECHECK_S))):
                    await event.wait()
        finally:
            waiting = self._waiting.get(tenant_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiting[tenant_id]
