"""Fixtures of the agent runtime's unit tests: an in-process HTTP server speaking the agent channel of ``stella.contracts.agent``.

It stands in for the gateway's agent routes (served for real by the deployment service's gateway routes):
one-time registration tokens, bearer credentials that can be revoked, a long-polled task feed, heartbeats
whose answers carry tasks to cancel, results and log chunks. It can fail result posts on purpose, answer
503 to everything, or go away altogether (the port closes) and come back on the same port.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest_asyncio
from aiohttp import web

from stella.contracts.agent import (
    AgentRegistered,
    AgentStatus,
    AgentTask,
    Heartbeat,
    HeartbeatAck,
    LogChunk,
    RegisterAgent,
    TaskResult,
)


@dataclass
class RegisteredAgent:
    agent_id: uuid.UUID
    name: str
    credential: str
    capabilities: list[str]
    labels: dict[str, str]
    revoked: bool = False
    queue: list[AgentTask] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayDouble:
    """The agent channel's server side, in memory."""

    def __init__(self, heartbeat_interval_s: float = 0.05, task_poll_timeout_s: float = 0.2) -> None:
        self.heartbeat_interval_s = heartbeat_interval_s
        self.task_poll_timeout_s = task_poll_timeout_s
        self.port = free_port()
        self.tokens: set[str] = set()
        self.agents: dict[uuid.UUID, RegisteredAgent] = {}
        self.registrations = 0
        self.heartbeats: list[tuple[uuid.UUID, Heartbeat]] = []
        self.held: list[list[uuid.UUID] | None] = []
        """What each feed request listed as held (None: nothing listed)."""
        self.result_posts: list[tuple[uuid.UUID, bytes]] = []
        self.results: dict[uuid.UUID, TaskResult] = {}
        self.logs: dict[uuid.UUID, dict[int, LogChunk]] = {}
        self.cancel: set[uuid.UUID] = set()
        self.fail_results = 0
        """Result posts still to be answered 503 (the result is not kept)."""
        self.batch_posts: list[list[uuid.UUID]] = []
        """The tasks of each post of several results, in order."""
        self.carried_logs = 0
        """Log chunks that came with results (``POST .../results``)."""
        self.serves_batches = True
        """Whether ``POST .../results`` exists (False: like a gateway that takes results one at a time)."""
        self.unavailable = False
        """Answer 503 to every request."""
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def new_token(self) -> str:
        token = "stl_reg_" + secrets.token_urlsafe(24)
        self.tokens.add(token)
        return token

    # --- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v1/agents/register", self._register)
        app.router.add_post("/api/v1/agents/{agent_id}/heartbeat", self._heartbeat)
        app.router.add_get("/api/v1/agents/{agent_id}/tasks", self._tasks)
        app.router.add_post("/api/v1/agents/{agent_id}/tasks/{task_id}/result", self._result)
        app.router.add_post("/api/v1/agents/{agent_id}/tasks/{task_id}/logs", self._logs)
        app.router.add_post("/api/v1/agents/{agent_id}/results", self._results)
        # A feed request whose agent went away is cancelled, so it cannot take tasks meant for the next one.
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- what tests do ----------------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        """Wait until ``predicate()`` holds (checked after every request the double answers)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(predicate)

    def give(self, agent_id: uuid.UUID, *tasks: AgentTask) -> None:
        """Lease tasks to an agent (handed out by its next feed request)."""
        self.agents[agent_id].queue.extend(tasks)

    async def deliver(self, agent_id: uuid.UUID, *tasks: AgentTask) -> None:
        self.give(agent_id, *tasks)
        await self._notify()

    def log_lines(self, task_id: uuid.UUID) -> list[str]:
        chunks = self.logs.get(task_id, {})
        return [line for seq in sorted(chunks) for line in chunks[seq].lines]

    # --- handlers ---------------------------------------------------------------------------------------

    def _agent(self, request: web.Request) -> RegisteredAgent:
        if self.unavailable:
            raise web.HTTPServiceUnavailable()
        header = request.headers.get("Authorization", "")
        try:
            agent = self.agents[uuid.UUID(request.match_info["agent_id"])]
        except (KeyError, ValueError):
            raise web.HTTPUnauthorized() from None
        if agent.revoked or not secrets.compare_digest(header, f"Bearer {agent.credential}"):
            raise web.HTTPUnauthorized()
        return agent

    async def _register(self, request: web.Request) -> web.Response:
        if self.unavailable:
            raise web.HTTPServiceUnavailable()
        body = RegisterAgent.model_validate_json(await request.read())
        if body.registration_token not in self.tokens:
            raise web.HTTPUnauthorized(text='{"detail": "unknown, used or expired registration token"}')
        self.tokens.discard(body.registration_token)
        agent = RegisteredAgent(
            agent_id=uuid.uuid4(),
            name=body.name,
            credential="stl_agt_" + secrets.token_urlsafe(32),
            capabilities=list(body.capabilities),
            labels=dict(body.labels),
        )
        self.agents[agent.agent_id] = agent
        self.registrations += 1
        await self._notify()
        answer = AgentRegistered(
            agent_id=agent.agent_id,
            credential=agent.credential,
            heartbeat_interval_s=self.heartbeat_interval_s,
            task_poll_timeout_s=self.task_poll_timeout_s,
        )
        return web.json_response(text=answer.model_dump_json(), status=201)

    async def _heartbeat(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        beat = Heartbeat.model_validate_json(await request.read())
        self.heartbeats.append((agent.agent_id, beat))
        cancel = [task_id for task_id in self.cancel if task_id in beat.running_tasks]
        await self._notify()
        status = AgentStatus.ONLINE if all(check.ok for check in beat.checks) else AgentStatus.DEGRADED
        return web.json_response(text=HeartbeatAck(status=status, cancel_tasks=cancel).model_dump_json())

    async def _tasks(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        wait = min(float(request.query.get("wait", "0")), 5.0)
        limit = int(request.query.get("max_tasks", "10"))
        held = request.query.get("held")
        self.held.append(None if held is None else [uuid.UUID(item) for item in held.split(",") if item])
        try:
            async with asyncio.timeout(wait):
                async with self._changed:
                    await self._changed.wait_for(lambda: bool(agent.queue) or self.unavailable)
        except TimeoutError:
            pass
        if self.unavailable:
            raise web.HTTPServiceUnavailable()
        given, agent.queue[:] = agent.queue[:limit], agent.queue[limit:]
        if not given:
            return web.Response(status=204)
        body = "[" + ",".join(task.model_dump_json() for task in given) + "]"
        return web.json_response(text=body)

    async def _result(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        body = await request.read()
        task_id = uuid.UUID(request.match_info["task_id"])
        self.result_posts.append((task_id, body))
        if self.fail_results > 0:
            self.fail_results -= 1
            await self._notify()
            raise web.HTTPServiceUnavailable()
        result = TaskResult.model_validate_json(body)
        assert result.task_id == task_id, "a result is posted to its own task"
        assert agent.agent_id in self.agents
        self.results[task_id] = result
        await self._notify()
        return web.json_response({"accepted": True})

    async def _results(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        if not self.serves_batches:
            raise web.HTTPNotFound()
        posted = json.loads(await request.read())
        items = posted["results"]
        chunks = [LogChunk.model_validate(chunk) for chunk in posted.get("logs", [])]
        bodies = [json.dumps(item, separators=(",", ":")).encode() for item in items]
        results = [TaskResult.model_validate(item) for item in items]
        self.batch_posts.append([result.task_id for result in results])
        self.result_posts.extend((result.task_id, body) for result, body in zip(results, bodies, strict=True))
        if self.fail_results > 0:
            self.fail_results -= 1
            await self._notify()
            raise web.HTTPServiceUnavailable()
        assert agent.agent_id in self.agents
        for chunk in chunks:
            self.logs.setdefault(chunk.task_id, {}).setdefault(chunk.seq, chunk)
        self.carried_logs += len(chunks)
        for result in results:
            self.results[result.task_id] = result
        await self._notify()
        return web.json_response({"results": [{"task_id": str(r.task_id), "accepted": True} for r in results]})

    async def _logs(self, request: web.Request) -> web.Response:
        self._agent(request)
        chunk = LogChunk.model_validate_json(await request.read())
        assert str(chunk.task_id) == request.match_info["task_id"]
        self.logs.setdefault(chunk.task_id, {}).setdefault(chunk.seq, chunk)
        await self._notify()
        return web.json_response({"accepted": True})


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[GatewayDouble]:
    double = GatewayDouble()
    await double.start()
    try:
        yield double
    finally:
        await double.stop()
