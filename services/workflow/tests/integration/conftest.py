"""A workflow service running in-process on real Postgres and NATS; the test plays the services that execute
steps: it watches the ``ExecuteStep`` subjects and answers with ``CompleteStep`` as they would."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from stella.contracts import workflow as c
from stella.contracts.envelope import Reply
from stella.contracts.streams import COMMANDS, StreamSpec
from stella.kit.naming import Names
from stella.testing.plugins import INTEGRATION_SCHEMA
from stella.testing.services import TenantCaller, service_client
from stella.workflow.app import MIGRATIONS, WorkflowApp, create_app
from stella.workflow.settings import Settings

Record = tuple[str, dict[str, Any]]
"""A message seen on the wire: its contract subject and its payload."""


class StreamWatch:
    """Every message stored under a subject, replayed from its stream and followed live, parsed."""

    def __init__(self, names: Names, subject: str) -> None:
        self.names = names
        self.subject = subject
        self.records: list[Record] = []
        self._arrived = asyncio.Event()
        self._sub: Subscription | None = None

    async def start(self, nats: Client) -> None:
        self._sub = await nats.jetstream().subscribe(
            self.names.subject(self.subject), cb=self._receive, ordered_consumer=True
        )

    async def stop(self) -> None:
        if self._sub is not None:
            with suppress(Exception):
                await self._sub.unsubscribe()

    async def _receive(self, msg: Msg) -> None:
        self.records.append((self.names.local(msg.subject), json.loads(msg.data)))
        self._arrived.set()

    def matching(self, predicate: Callable[[str, dict[str, Any]], bool]) -> list[Record]:
        return [record for record in self.records if predicate(*record)]

    async def wait_for(
        self, predicate: Callable[[str, dict[str, Any]], bool], *, count: int = 1, timeout: float = 15.0
    ) -> list[Record]:
        """Wait until ``count`` messages match ``predicate``; returns them."""
        try:
            async with asyncio.timeout(timeout):
                while len(found := self.matching(predicate)) < count:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            seen = [(s, p.get("node_id"), p.get("attempt")) for s, p in self.records]
            raise TimeoutError(f"{len(self.matching(predicate))} of {count} awaited messages; seen {seen}") from None
        return found[:count]


async def read_stream(nats: Client, names: Names, spec: StreamSpec, subject: str) -> list[Record]:
    """Everything the stream ``spec`` holds under ``subject`` right now, read by a throwaway consumer."""
    js = nats.jetstream()
    sub = await js.pull_subscribe(names.subject(subject), stream=names.stream(spec))
    records: list[Record] = []
    try:
        while True:
            try:
                batch = await sub.fetch(256, timeout=0.5)
            except TimeoutError:
                return records
            for msg in batch:
                records.append((names.local(msg.subject), json.loads(msg.data)))
                await msg.ack()
    finally:
        with suppress(Exception):
            await sub.unsubscribe()


@dataclass
class Deployment:
    """One installation (a database and a NATS namespace) on which workflow instances start and stop."""

    dsn: str
    nats_url: str
    namespace: str
    apps: list[WorkflowApp] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    """Settings of every instance started from now on (a plugin path, the http steps' allow-lists)."""

    @property
    def names(self) -> Names:
        return Names(self.namespace)

    def settings(self) -> Settings:
        # A short ack wait: a command fetched by an instance that stopped before handling it comes back fast.
        return Settings(
            database_url=self.dsn,
            nats_url=self.nats_url,
            nats_namespace=self.namespace,
            ack_wait_s=2.0,
            outbox_poll_s=0.2,
            **self.overrides,
        )

    async def start(self) -> WorkflowApp:
        app = create_app(self.settings())
        await app.start()
        self.apps.append(app)
        return app


@dataclass
class Harness(TenantCaller):
    """Talks to the workflow as one tenant and plays the services that execute its steps."""

    deployment: Deployment
    commands: StreamWatch
    events: StreamWatch
    nats: Client

    @property
    def names(self) -> Names:
        return self.deployment.names

    async def save_template(
        self, name: str, nodes: list[dict[str, Any]], edges: Sequence[tuple[str, str]] = (), **kw: Any
    ) -> Reply:
        """Save a template; one with promotion steps declares the promotion inputs unless ``inputs`` is given."""
        if "inputs" not in kw and any(node["type"] in c.PROMOTION_STEP_TYPES for node in nodes):
            kw["inputs"] = {name: {"required": False} for name in c.PROMOTION_RUN_INPUTS}
        return await self.command(
            c.SAVE_TEMPLATE,
            c.SaveTemplate,
            name=name,
            nodes=nodes,
            edges=[{"from": a, "to": b} for a, b in edges],
            **kw,
        )

    async def start_run(self, template: str, **fields: Any) -> dict[str, Any]:
        reply = await self.command(c.START_RUN, c.StartRun, template_name=template, **fields)
        assert reply.ok, reply.error
        return reply.data

    async def get_run(self, run_id: uuid.UUID | str) -> dict[str, Any]:
        reply = await self.query(c.GET_RUN, c.GetRun, run_id=run_id)
        assert reply.ok, reply.error
        return reply.data

    def dispatched(self, run_id: uuid.UUID | str | None = None) -> list[c.ExecuteStep]:
        """Every ``ExecuteStep`` seen so far (of one run when given)."""
        steps = [
            c.ExecuteStep.model_validate(payload)
            for subject, payload in self.commands.records
            if subject in c.STEP_SUBJECTS.values()
        ]
        return [s for s in steps if run_id is None or str(s.run_id) == str(run_id)]

    async def dispatch(self, run_id: uuid.UUID | str, node_id: str, attempt: int = 1) -> c.ExecuteStep:
        """Wait for the ``ExecuteStep`` of one attempt, as the executing service would receive it."""
        [(_, payload)] = await self.commands.wait_for(
            lambda subject, p: (
                subject in c.STEP_SUBJECTS.values()
                and p["run_id"] == str(run_id)
                and p["node_id"] == node_id
                and p["attempt"] == attempt
            )
        )
        return c.ExecuteStep.model_validate(payload)

    def result(
        self, step: c.ExecuteStep, *, ok: bool = True, outputs: dict[str, Any] | None = None, **kw: Any
    ) -> c.CompleteStep:
        """The ``CompleteStep`` an executing service answers ``step`` with."""
        return step.caused(
            c.CompleteStep,
            run_id=step.run_id,
            node_id=step.node_id,
            attempt=step.attempt,
            status=c.StepStatus.SUCCEEDED if ok else c.StepStatus.FAILED,
            outputs=outputs or {},
            **kw,
        )

    async def complete(
        self, step: c.ExecuteStep, *, ok: bool = True, outputs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        """Answer a step fire-and-forget, as another service does (through JetStream, no reply awaited)."""
        await self.client.send(c.COMPLETE_STEP, self.result(step, ok=ok, outputs=outputs, **kw))

    async def event(self, subject: str, run_id: uuid.UUID | str, **match: Any) -> dict[str, Any]:
        """Wait for one workflow event of the run (with the given payload fields)."""
        [(_, payload)] = await self.events.wait_for(
            lambda s, p: (
                s == subject
                and str(p.get("run_id") or p.get("run", {}).get("id")) == str(run_id)
                and all(p.get(k) == v for k, v in match.items())
            )
        )
        return payload

    def events_of(self, subject: str, run_id: uuid.UUID | str, **match: Any) -> list[dict[str, Any]]:
        return [
            p
            for s, p in self.events.records
            if s == subject
            and str(p.get("run_id") or p.get("run", {}).get("id")) == str(run_id)
            and all(p.get(k) == v for k, v in match.items())
        ]

    async def finished(self, run_id: uuid.UUID | str) -> tuple[str, dict[str, Any]]:
        """Wait for the run's completion event: ``(subject, payload)``."""
        [record] = await self.events.wait_for(
            lambda s, p: s in (c.RUN_COMPLETED, c.RUN_FAILED) and p["run_id"] == str(run_id)
        )
        return record

    async def stored_dispatches(self) -> list[c.ExecuteStep]:
        """Every ``ExecuteStep`` the commands stream holds, read afresh."""
        found: list[c.ExecuteStep] = []
        for subject in c.STEP_SUBJECTS.values():
            records = await read_stream(self.nats, self.names, COMMANDS, subject)
            found.extend(c.ExecuteStep.model_validate(p) for _, p in records)
        return found


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest_asyncio.fixture
async def deployment(make_database, nats_url: str, stella_namespace: str) -> AsyncIterator[Deployment]:
    dsn = await make_database([("workflow", MIGRATIONS), INTEGRATION_SCHEMA])
    deployment = Deployment(dsn=dsn, nats_url=nats_url, namespace=stella_namespace)
    try:
        yield deployment
    finally:
        for app in reversed(deployment.apps):
            with suppress(Exception):
                await app.stop()


@pytest_asyncio.fixture
async def harness(deployment: Deployment, nats: Client) -> AsyncIterator[Harness]:
    async for value in start_harness(deployment, nats):
        yield value


async def start_harness(deployment: Deployment, nats: Client) -> AsyncIterator[Harness]:
    """Start an instance of ``deployment`` (with its ``overrides``) and talk to it as one tenant."""
    app = await deployment.start()
    async with service_client(nats, app.runtime.names) as client:
        commands = StreamWatch(deployment.names, "stella.cmd.>")
        events = StreamWatch(deployment.names, "stella.evt.workflow.>")
        await commands.start(nats)
        await events.start(nats)
        try:
            yield Harness(client, deployment, commands, events, nats)
        finally:
            await commands.stop()
            await events.stop()
