"""The agent's side of the gateway's agent channel (``/api/v1/agents/...``), over aiohttp.

Every call but registration sends ``Authorization: Bearer <agent credential>``. What can go wrong is
told apart, because the runtime answers each differently:

- :class:`CredentialRefused` (401): the credential is revoked or unknown; the agent stops.
- :class:`GatewayUnavailable` (no connection, a timeout, 408/429/5xx): try again later, with backoff.
- :class:`RequestRejected` (any other 4xx): the request itself is wrong; sending it again cannot help.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any, Final
from uuid import UUID

import aiohttp
from pydantic import TypeAdapter, ValidationError

from stella.contracts.agent import (
    AgentRegistered,
    AgentTask,
    Heartbeat,
    HeartbeatAck,
    LogChunk,
    RegisterAgent,
)

REGISTER_PATH: Final[str] = "/api/v1/agents/register"
"""``POST``: :class:`RegisterAgent` -> :class:`AgentRegistered` (no credential yet)."""

HEARTBEAT_PATH: Final[str] = "/api/v1/agents/{agent_id}/heartbeat"
"""``POST``: :class:`Heartbeat` -> :class:`HeartbeatAck`."""

TASKS_PATH: Final[str] = "/api/v1/agents/{agent_id}/tasks"
"""``GET ?wait=<s>&max_tasks=<n>&held=<id>,<id>``: long poll; the tasks leased to this agent (a list, or ``{"tasks": [...]}``; 204: none)."""

RESULT_PATH: Final[str] = "/api/v1/agents/{agent_id}/tasks/{task_id}/result"
"""``POST``: the task's one :class:`~stella.contracts.agent.TaskResult`."""

RESULTS_PATH: Final[str] = "/api/v1/agents/{agent_id}/results"
"""``POST {"results": [...]}``: several :class:`~stella.contracts.agent.TaskResult` at once -> one outcome each."""

MAX_RESULTS_PER_POST: Final[int] = 100
"""Most results one post to :data:`RESULTS_PATH` carries (the gateway's limit)."""

MAX_LOG_CHUNKS_PER_POST: Final[int] = 200
"""Most log chunks one post to :data:`RESULTS_PATH` carries (the gateway's limit)."""

MAX_LOG_CHARS_PER_POST: Final[int] = 256 * 1024
"""Most characters of log lines one post to :data:`RESULTS_PATH` carries (the gateway's limit)."""

LOGS_PATH: Final[str] = "/api/v1/agents/{agent_id}/tasks/{task_id}/logs"
"""``POST``: a :class:`LogChunk`."""

MAX_TASKS_PER_POLL: Final[int] = 100
"""Most tasks one poll asks for (the gateway's limit)."""

MAX_HELD_TASKS: Final[int] = 100
"""Most held task ids one poll lists (the gateway's limit)."""

_RETRYABLE: Final[frozenset[int]] = frozenset({408, 425, 429})
_TASKS = TypeAdapter(list[AgentTask])


class ChannelError(Exception):
    """A call to the gateway did not succeed."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CredentialRefused(ChannelError):
    """401: the agent credential (or registration token) was refused: revoked, unknown, used or expired."""


class GatewayUnavailable(ChannelError):
    """The gateway could not be reached or asked to come back later."""


class RequestRejected(ChannelError):
    """The gateway refused the request for a reason sending it again cannot fix."""


def _problem(body: bytes) -> str:
    try:
        problem = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    if isinstance(problem, dict):
        return str(problem.get("detail") or problem.get("title") or problem)[:500]
    return str(problem)[:200]


class GatewayChannel:
    """Calls of one agent to the gateway.

    Args:
        session: The HTTP session (shared by every agent of a swarm).
        gateway_url: The gateway's base URL, without a trailing slash.
        request_timeout_s: Longest wait for an answer (a long poll waits this long on top of its own wait).
    """

    def __init__(self, session: aiohttp.ClientSession, gateway_url: str, request_timeout_s: float = 30.0) -> None:
        self._session = session
        self._base = gateway_url.rstrip("/")
        self._timeout = request_timeout_s
        self.agent_id: UUID | None = None
        self._credential: str | None = None

    def authenticate(self, agent_id: UUID, credential: str) -> None:
        """Use this agent identity for every later call."""
        self.agent_id = agent_id
        self._credential = credential

    def _path(self, template: str, **values: Any) -> str:
        if self.agent_id is None:
            raise RuntimeError("the agent has no credential yet")
        return self._base + template.format(agent_id=self.agent_id, **values)

    async def _call(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        params: dict[str, str] | None = None,
        wait_s: float = 0.0,
        authenticated: bool = True,
    ) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if authenticated:
            headers["Authorization"] = f"Bearer {self._credential}"
        try:
            async with self._session.request(
                method,
                url,
                data=body,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout + wait_s, sock_connect=min(10.0, self._timeout)),
            ) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise GatewayUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if status < 300:
            return status, payload
        detail = f"{method} {url} answered {status}: {_problem(payload)}"
        if status == 401:
            raise CredentialRefused(detail, status)
        if status >= 500 or status in _RETRYABLE:
            raise GatewayUnavailable(detail, status)
        raise RequestRejected(detail, status)

    async def register(self, request: RegisterAgent) -> AgentRegistered:
        """Register with a one-time token; the answer carries the credential (shown once)."""
        body = request.model_dump_json().encode()
        _, payload = await self._call("POST", self._base + REGISTER_PATH, body=body, authenticated=False)
        try:
            return AgentRegistered.model_validate_json(payload)
        except ValidationError as exc:
            raise RequestRejected(f"the registration answer is not understood: {exc.error_count()} errors") from exc

    async def heartbeat(self, heartbeat: Heartbeat) -> HeartbeatAck:
        """Say the agent is alive, with its self-checks and running tasks."""
        _, payload = await self._call("POST", self._path(HEARTBEAT_PATH), body=heartbeat.model_dump_json().encode())
        try:
            return HeartbeatAck.model_validate_json(payload)
        except ValidationError as exc:
            raise GatewayUnavailable(f"the heartbeat answer is not understood: {exc.error_count()} errors") from exc

    async def tasks(self, wait_s: float, limit: int, held: Collection[UUID] | None = None) -> list[AgentTask]:
        """Wait up to ``wait_s`` for tasks leased to this agent; at most ``limit``.

        ``held``: every task the agent has now; tasks leased to it and not in it are handed over again (they
        were lost on their way). Too many to list: none are, and lost ones come back when their lease ends.
        """
        params = {"wait": f"{wait_s:g}", "max_tasks": str(min(limit, MAX_TASKS_PER_POLL))}
        if held is not None and len(held) <= MAX_HELD_TASKS:
            params["held"] = ",".join(str(task_id) for task_id in held)
        status, payload = await self._call("GET", self._path(TASKS_PATH), params=params, wait_s=wait_s)
        if status == 204 or not payload.strip():
            return []
        try:
            decoded = json.loads(payload)
            items = decoded.get("tasks", []) if isinstance(decoded, dict) else decoded
            return _TASKS.validate_python(items)
        except (ValueError, ValidationError) as exc:
            raise GatewayUnavailable(f"the task feed's answer is not understood: {exc}") from exc

    async def post_result(self, task_id: UUID, body: bytes) -> None:
        """Post a task's result: ``body`` is the serialised :class:`TaskResult`, sent again byte for byte."""
        await self._call("POST", self._path(RESULT_PATH, task_id=task_id), body=body)

    async def post_results(self, bodies: Sequence[bytes], logs: Sequence[LogChunk] = ()) -> list[dict[str, Any]]:
        """Post several results at once (each the exact bytes of a serialised :class:`TaskResult`).

        ``logs``: log chunks kept before the results, in the same transaction (at most
        :data:`MAX_LOG_CHUNKS_PER_POST`, :data:`MAX_LOG_CHARS_PER_POST` characters of lines in all).
        Returns one outcome per result, in order: ``accepted``, and for a refused one its ``status`` and ``code``.
        A gateway without the endpoint answers 404 or 405 (:class:`RequestRejected`).
        """
        body = b'{"results":[' + b",".join(bodies) + b"]"
        if logs:
            body += b',"logs":[' + b",".join(chunk.model_dump_json().encode() for chunk in logs) + b"]"
        body += b"}"
        _, payload = await self._call("POST", self._path(RESULTS_PATH), body=body)
        try:
            outcomes = json.loads(payload)["results"]
        except (ValueError, KeyError, TypeError) as exc:
            raise GatewayUnavailable(f"the results answer is not understood: {exc}") from exc
        if not isinstance(outcomes, list) or len(outcomes) != len(bodies):
            raise GatewayUnavailable("the results answer does not have one outcome per result")
        return [outcome if isinstance(outcome, dict) else {} for outcome in outcomes]

    async def post_logs(self, chunk: LogChunk) -> None:
        """Post one log chunk."""
        await self._call("POST", self._path(LOGS_PATH, task_id=chunk.task_id), body=chunk.model_dump_json().encode())
