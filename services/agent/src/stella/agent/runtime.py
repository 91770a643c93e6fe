"""The agent's runtime: register once, heartbeat, pull tasks, run them with drivers, report every result.

One :class:`Agent` runs three loops until it is stopped:

- **heartbeat**: every ``heartbeat_interval_s`` (the gateway's answer to the registration), the drivers'
  self-checks and the running tasks; the answer lists tasks to stop, which are cancelled;
- **task feed**: while fewer than ``max_concurrent_tasks`` run, a long-polling ``GET`` of the tasks leased to
  this agent, listing the tasks it holds (so tasks leased to it whose answer was lost come again at once);
  each task runs with the driver of its target type, its log streamed in chunks;
- **results**: each result is journalled on disk first, then posted until the gateway takes it, the same
  bytes every time (across restarts too); results that end while a post is on its way go together in the
  next one (``POST .../results``, one transaction for all of them). A task delivered again with an idempotency key the agent already
  finished is answered from the journal and not run again.

Outages of the gateway are waited out with backoff. A refused credential (401: revoked or unknown) stops
the agent at once with :class:`CredentialRefused`; an agent never acts on a task it cannot report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final
from uuid import UUID

from stella.agent.backoff import Backoff
from stella.agent.channel import (
    MAX_LOG_CHARS_PER_POST,
    MAX_LOG_CHUNKS_PER_POST,
    MAX_RESULTS_PER_POST,
    CredentialRefused,
    GatewayChannel,
    GatewayUnavailable,
    RequestRejected,
)
from stella.agent.credential import StoredCredential, load_credential, save_credential
from stella.agent.drivers.base import Driver
from stella.agent.drivers.errors import UNSUPPORTED
from stella.agent.journal import Entry, TaskJournal
from stella.agent.tasklog import TaskLog
from stella.contracts.agent import AgentCheck, AgentTask, Heartbeat, LogChunk, RegisterAgent, TaskResult
from stella.contracts.envelope import utcnow

logger = logging.getLogger("stella.agent")

CANCELLED: Final[str] = "AGT_CANCELLED"
"""The task was stopped because Stella cancelled it (``cancel_tasks`` in a heartbeat answer)."""

INTERNAL: Final[str] = "AGT_INTERNAL"
"""A driver failed unexpectedly; the agent keeps running."""

MIN_FREE_BYTES: Final[int] = 64 * 1024 * 1024
"""Free space the state directory needs for the ``disk`` self-check to pass."""

_LOG_TICK_S: Final[float] = 1.0
_FINAL_LOG_ATTEMPTS: Final[int] = 3
_CHECK_TIMEOUT_S: Final[float] = 15.0


def agent_version() -> str:
    """The installed agent's version."""
    try:
        return metadata.version("stella-agent")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class RegistrationFailed(Exception):
    """The agent has no credential and could not get one (no token, or the token was refused)."""


@dataclass
class AgentOptions:
    """What one agent is, besides its drivers and its channel.

    Attributes:
        name: Its name.
        state_dir: Its directory (journal under ``journal/``).
        credential_path: Where its credential is kept.
        registration_token: One-time token, used when no credential is stored.
        labels: Labels declared at registration.
        max_concurrent_tasks: Tasks run at once.
        heartbeat_interval_s: Overrides the registration answer's interval.
        task_poll_timeout_s: Overrides the registration answer's long-poll wait.
        max_backoff_s: Longest pause while the gateway is unreachable.
        shutdown_grace_s: How long running tasks may go on when the agent is asked to stop.
        version: The version it reports.
        durable_journal: Flush each result to disk before posting it (False only for simulated agents).
    """

    name: str
    state_dir: Path
    credential_path: Path
    registration_token: str | None = field(default=None, repr=False)
    labels: dict[str, str] = field(default_factory=dict)
    max_concurrent_tasks: int = 4
    heartbeat_interval_s: float | None = None
    task_poll_timeout_s: float | None = None
    max_backoff_s: float = 30.0
    shutdown_grace_s: float = 30.0
    version: str = field(default_factory=agent_version)
    durable_journal: bool = True


class Agent:
    """One agent: its identity, drivers, journal and loops.

    Args:
        channel: Calls to the gateway (its base URL is the one the credential belongs to).
        drivers: The drivers, one per target type served.
        options: Name, directories, limits.
        gateway_url: The gateway's base URL, as stored with the credential.
    """

    def __init__(
        self, channel: GatewayChannel, drivers: Sequence[Driver], options: AgentOptions, gateway_url: str
    ) -> None:
        self.channel = channel
        self.drivers = list(drivers)
        self.options = options
        self.gateway_url = gateway_url.rstrip("/")
        self.journal = TaskJournal(options.state_dir / "journal", durable=options.durable_journal)
        self.identity: StoredCredential | None = None
        self._running: dict[UUID, asyncio.Task[None]] = {}
        self._keys: dict[str, UUID] = {}
        self._cancelled: set[UUID] = set()
        self._ending: set[UUID] = set()
        """Tasks whose driver is done: their result is being journalled, and they can no longer be stopped."""
        self._posting: set[asyncio.Task[None]] = set()
        self._outbox: list[tuple[Entry, list[LogChunk]]] = []
        self._poster: asyncio.Task[None] | None = None
        self._batch_results = True
        self._slots = asyncio.Semaphore(options.max_concurrent_tasks)
        self._free = asyncio.Event()
        self._free.set()
        self._stopping = asyncio.Event()
        self._fatal: asyncio.Future[None] | None = None
        self._checks: list[AgentCheck] = []
        self.completed = 0
        """Tasks finished (run or answered from the journal) since start."""

    # --- identity ---------------------------------------------------------------------------------------

    @property
    def capabilities(self) -> list[Any]:
        """The capabilities of its drivers."""
        return sorted({driver.capability for driver in self.drivers})

    @property
    def heartbeat_interval_s(self) -> float:
        """Seconds between heartbeats."""
        assert self.identity is not None
        return self.options.heartbeat_interval_s or self.identity.heartbeat_interval_s

    @property
    def poll_timeout_s(self) -> float:
        """Seconds one task feed request waits."""
        assert self.identity is not None
        return self.options.task_poll_timeout_s or self.identity.task_poll_timeout_s

    async def ensure_registered(self) -> StoredCredential:
        """Use the stored credential, or register with the token and store the credential (mode 0600).

        Raises:
            RegistrationFailed: no credential and no token, a token the gateway refused, or a credential
                stored for another gateway.
            CredentialFileError: the stored credential cannot be read or written safely.
        """
        stored = load_credential(self.options.credential_path)
        if stored is not None:
            if stored.gateway_url != self.gateway_url:
                raise RegistrationFailed(
                    f"{self.options.credential_path} holds a credential for {stored.gateway_url}, not "
                    f"{self.gateway_url}: point --credential-file elsewhere to register with this gateway"
                )
            self._adopt(stored)
            return stored
        token = self.options.registration_token
        if not token:
            raise RegistrationFailed(
                f"no stored credential at {self.options.credential_path}: give a registration token "
                "(--registration-token or STELLA_AGENT_REGISTRATION_TOKEN) from POST /api/v1/agent-tokens"
            )
        request = RegisterAgent(
            registration_token=token,
            name=self.options.name,
            version=self.options.version,
            capabilities=self.capabilities,
            labels=self.options.labels,
        )
        backoff = Backoff(max_s=self.options.max_backoff_s)
        while True:
            try:
                registered = await self.channel.register(request)
                break
            except CredentialRefused as exc:
                raise RegistrationFailed(
                    f"the registration token was refused (used, expired or unknown): {exc}"
                ) from exc
            except RequestRejected as exc:
                raise RegistrationFailed(f"registration refused: {exc}") from exc
            except GatewayUnavailable as exc:
                delay = backoff.next()
                logger.warning("cannot register yet (%s); trying again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
        stored = StoredCredential(
            gateway_url=self.gateway_url,
            agent_id=registered.agent_id,
            name=self.options.name,
            credential=registered.credential,
            heartbeat_interval_s=registered.heartbeat_interval_s,
            task_poll_timeout_s=registered.task_poll_timeout_s,
        )
        save_credential(self.options.credential_path, stored)
        logger.info("registered as %s (agent %s)", self.options.name, registered.agent_id)
        self._adopt(stored)
        return stored

    def _adopt(self, stored: StoredCredential) -> None:
        self.identity = stored
        self.channel.authenticate(stored.agent_id, stored.credential)

    # --- running ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the agent to stop: no new tasks; running ones get ``shutdown_grace_s`` to finish."""
        self._stopping.set()

    async def run(self) -> None:
        """Register if needed, then serve until :meth:`stop`.

        Raises:
            CredentialRefused: the gateway refused the credential (revoked or unknown).
            RegistrationFailed: see :meth:`ensure_registered`.
        """
        await self.ensure_registered()
        self._fatal = asyncio.get_running_loop().create_future()
        for entry in self.journal.pending():
            logger.info("posting the result of task %s kept from before", entry.result.task_id)
            self._deliver(entry)
        loops = [
            asyncio.create_task(self._guard(self._heartbeat_loop()), name="heartbeat"),
            asyncio.create_task(self._checks_loop(), name="self-checks"),
            asyncio.create_task(self._guard(self._feed_loop()), name="task-feed"),
        ]
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            waiters: list[asyncio.Future[Any]] = [self._fatal, stopping, *loops]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, stopping, return_exceptions=True)
        if self._fatal.done() and self._fatal.exception() is not None:
            await self._abandon()
            raise self._fatal.exception()  # type: ignore[misc]
        await self._drain()

    async def _guard(self, loop: Coroutine[Any, Any, None]) -> None:
        try:
            await loop
        except CredentialRefused as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._fatal is not None and not self._fatal.done():
            self._fatal.set_exception(exc)

    async def _drain(self) -> None:
        """Give running tasks and pending posts the grace period, then cancel what is left (re-posted at next start)."""
        deadline = asyncio.get_running_loop().time() + self.options.shutdown_grace_s
        while self._running or self._posting:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            await asyncio.wait([*self._running.values(), *self._posting], timeout=remaining)
        await self._abandon()

    async def _abandon(self) -> None:
        tasks = [*self._running.values(), *self._posting]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- heartbeat --------------------------------------------------------------------------------------

    async def checks(self) -> list[AgentCheck]:
        """The self-checks sent with a heartbeat: each driver's, and free space in the state directory."""

        async def one(driver: Driver) -> AgentCheck:
            try:
                ok, message = await asyncio.wait_for(driver.check(), _CHECK_TIMEOUT_S)
            except TimeoutError:
                ok, message = False, f"the {driver.capability} self-check took longer than {_CHECK_TIMEOUT_S:g}s"
            except Exception as exc:
                logger.exception("the %s self-check failed", driver.capability)
                ok, message = False, f"the self-check failed: {type(exc).__name__}"
            return AgentCheck(name=str(driver.capability), ok=ok, message=message[:500])

        results = list(await asyncio.gather(*(one(driver) for driver in self.drivers)))
        try:
            free = shutil.disk_usage(self.options.state_dir).free
            results.append(
                AgentCheck(name="disk", ok=free >= MIN_FREE_BYTES, message=f"{free // (1024 * 1024)} MiB free")
            )
        except OSError as exc:
            results.append(
                AgentCheck(name="disk", ok=False, message=f"cannot read the state directory: {exc.strerror}")
            )
        return results

    async def heartbeat(self) -> None:
        """Send one heartbeat (with the latest self-checks) and stop the tasks Stella cancelled."""
        beat = Heartbeat(version=self.options.version, checks=self._checks, running_tasks=list(self._running)[:1000])
        ack = await self.channel.heartbeat(beat)
        for task_id in ack.cancel_tasks:
            self.cancel(task_id)

    async def _checks_loop(self) -> None:
        """Refresh the self-checks once per heartbeat interval, apart from the heartbeats.

        A self-check may take seconds (starting Compose to ask its version); a heartbeat that waited for it
        would come late, and an agent whose heartbeats come late is taken for gone.
        """
        while True:
            try:
                self._checks = await self.checks()
            except Exception:
                logger.exception("the self-checks failed")
            await asyncio.sleep(self.heartbeat_interval_s)

    async def _heartbeat_loop(self) -> None:
        """Heartbeats at a fixed rate: the interval runs from one heartbeat's start to the next one's."""
        clock = asyncio.get_running_loop().time
        unreachable = False
        due = clock()
        while True:
            try:
                await self.heartbeat()
                if unreachable:
                    logger.info("the gateway answers again")
                unreachable = False
            except (GatewayUnavailable, RequestRejected) as exc:
                if not unreachable:
                    logger.warning("heartbeat not taken (%s); going on and trying again", exc)
                unreachable = True
            except CredentialRefused:
                raise
            except Exception:
                logger.exception("heartbeat failed")
            due = max(due + self.heartbeat_interval_s, clock())
            await asyncio.sleep(due - clock())

    def cancel(self, task_id: UUID) -> bool:
        """Stop a running task (its result says ``AGT_CANCELLED``); False when it does not run here."""
        running = self._running.get(task_id)
        if running is None or running.done() or task_id in self._ending:
            return False
        logger.info("task %s was cancelled by Stella; stopping it", task_id)
        self._cancelled.add(task_id)
        running.cancel()
        return True

    # --- task feed --------------------------------------------------------------------------------------

    async def _feed_loop(self) -> None:
        backoff = Backoff(max_s=self.options.max_backoff_s)
        unreachable = False
        while not self._stopping.is_set():
            await self._free.wait()
            free = self.options.max_concurrent_tasks - len(self._running)
            try:
                tasks = await self.channel.tasks(self.poll_timeout_s, max(1, free), held=list(self._running))
            except (GatewayUnavailable, RequestRejected) as exc:
                delay = backoff.next()
                if not unreachable:
                    logger.warning("the task feed is unavailable (%s); trying again with backoff", exc)
                unreachable = True
                await asyncio.sleep(delay)
                continue
            if unreachable:
                logger.info("the task feed answers again")
            unreachable = False
            backoff.reset()
            for task in tasks:
                self.accept(task)

    def accept(self, task: AgentTask) -> bool:
        """Start a task unless it (or another delivery with its idempotency key) already runs here."""
        if task.task_id in self._running or task.idempotency_key in self._keys:
            logger.debug("task %s is already running here", task.task_id)
            return False
        runner = asyncio.create_task(self._execute(task), name=f"task-{task.task_id}")
        self._running[task.task_id] = runner
        self._keys[task.idempotency_key] = task.task_id
        if len(self._running) >= self.options.max_concurrent_tasks:
            self._free.clear()
        runner.add_done_callback(lambda _: self._finished(task))
        return True

    def _finished(self, task: AgentTask) -> None:
        self._running.pop(task.task_id, None)
        self._keys.pop(task.idempotency_key, None)
        self._cancelled.discard(task.task_id)
        self._ending.discard(task.task_id)
        self.completed += 1
        if len(self._running) < self.options.max_concurrent_tasks:
            self._free.set()

    # --- one task ---------------------------------------------------------------------------------------

    def _driver_for(self, task: AgentTask) -> Driver | None:
        for driver in self.drivers:
            if task.target.target_type in driver.target_types:
                return driver
        return None

    def _earlier(self, task: AgentTask) -> Entry | None:
        """The journalled answer to a delivery of an idempotency key this agent already finished.

        A success is final for its key. A failure answers the same attempt again; a later attempt is Stella
        trying again on purpose, and is run.
        """
        entry = self.journal.recall(task.idempotency_key)
        if entry is None:
            return None
        earlier = entry.result
        if earlier.status != "succeeded" and task.attempt > earlier.attempt:
            return None
        if earlier.task_id == task.task_id and earlier.attempt == task.attempt:
            return entry
        return self.journal.record(earlier.model_copy(update={"task_id": task.task_id, "attempt": task.attempt}))

    async def _execute(self, task: AgentTask) -> None:
        async with self._slots:
            entry = self._earlier(task)
            if entry is not None:
                logger.info("task %s: key already finished here; reporting the earlier result", task.task_id)
                logs: list[LogChunk] = []
            else:
                result, logs = await self._run(task)
                self._ending.add(task.task_id)
                # Off the event loop: a flush to disk takes milliseconds, during which heartbeats, the feed
                # and other tasks' posts go on (and the flushes of several tasks overlap).
                entry = await asyncio.to_thread(self.journal.record, result)
                logger.info("task %s (%s on %s): %s", task.task_id, task.type, task.target.name, result.status)
        self._deliver(entry, logs)

    async def _run(self, task: AgentTask) -> tuple[TaskResult, list[LogChunk]]:
        """Run a task with its driver: its result, and the last chunks of its log when they go with the result."""
        started = utcnow()
        assert self.identity is not None
        log = TaskLog(task, secrets=[self.identity.credential, self.options.registration_token or ""])
        driver = self._driver_for(task)
        if driver is None:
            return _failed(
                task, started, UNSUPPORTED, f"this agent has no driver for {task.target.target_type} targets"
            ), []
        shipper = asyncio.create_task(self._ship_logs(log))
        try:
            result = await driver.run(task, log)
        except asyncio.CancelledError:
            if task.task_id not in self._cancelled:
                raise
            log("stopped: the task was cancelled")
            result = _failed(task, started, CANCELLED, "the task was cancelled")
        except Exception as exc:
            logger.exception("task %s: the driver failed", task.task_id)
            log(f"failed: {INTERNAL}: {type(exc).__name__}")
            result = _failed(task, started, INTERNAL, f"the agent failed unexpectedly: {type(exc).__name__}")
        finally:
            shipper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shipper
        if self._batch_results:
            return result, log.take_final()
        await self._post_chunks(log.take_final())
        return result, []

    async def _ship_logs(self, log: TaskLog) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(log.full.wait(), _LOG_TICK_S)
            try:
                await log.send(self.channel.post_logs)
            except (GatewayUnavailable, RequestRejected):
                pass  # kept (bounded) and sent with the next tick
            except CredentialRefused as exc:
                self._fail(exc)
                return

    async def _post_chunks(self, chunks: list[LogChunk]) -> None:
        """Post the last chunks of a task's log one by one, a few times over while the gateway is unavailable."""
        if not chunks:
            return
        pending = list(chunks)
        backoff = Backoff(initial_s=0.2, max_s=2.0)
        for attempt in range(_FINAL_LOG_ATTEMPTS):
            try:
                while pending:
                    await self.channel.post_logs(pending[0])
                    del pending[0]
                return
            except RequestRejected as exc:
                logger.warning("task %s: log chunk refused: %s", pending[0].task_id, exc)
                return
            except GatewayUnavailable:
                if attempt + 1 < _FINAL_LOG_ATTEMPTS:
                    await asyncio.sleep(backoff.next())
            except CredentialRefused as exc:
                self._fail(exc)
                return
        logger.warning("task %s: the last log lines could not be sent", pending[0].task_id)

    # --- results ----------------------------------------------------------------------------------------

    def _deliver(self, entry: Entry, logs: list[LogChunk] | None = None) -> None:
        self._outbox.append((entry, logs or []))
        if self._poster is None or self._poster.done():
            poster = asyncio.create_task(self._post_pending(), name="results")
            self._poster = poster
            self._posting.add(poster)
            poster.add_done_callback(self._posting.discard)

    async def _post_pending(self) -> None:
        """Post the results waiting to go until none is left, many per call.

        One post is on its way at a time; results that end meanwhile go together in the next one. A result
        not taken when the agent stops stays journalled as not posted and goes again at the next start.
        """
        while self._outbox:
            batch = self._outbox[:MAX_RESULTS_PER_POST]
            del self._outbox[: len(batch)]
            if self._batch_results:
                await self._post_batch_until_taken(batch)
            else:
                for entry, logs in batch:
                    await self._post_chunks(logs)
                    await self._post_until_taken(entry)

    async def _post_batch_until_taken(self, batch: list[tuple[Entry, list[LogChunk]]]) -> None:
        """Post several results' exact bytes in one call until the gateway takes them (or refuses some for good).

        The last chunks of their logs go along while they fit the post (the gateway keeps them first, in the
        same transaction); chunks that do not fit are posted on their own before.
        """
        carried, alone = _fit([chunk for _, logs in batch for chunk in logs])
        await self._post_chunks(alone)
        entries = [entry for entry, _ in batch]
        backoff = Backoff(max_s=self.options.max_backoff_s)
        while True:
            try:
                outcomes = await self.channel.post_results([entry.body for entry in entries], carried)
                break
            except GatewayUnavailable as exc:
                delay = backoff.next()
                logger.warning("%d results not taken (%s); posting them again in %.1fs", len(batch), exc, delay)
                await asyncio.sleep(delay)
            except RequestRejected as exc:
                if exc.status in (404, 405):
                    logger.info("the gateway takes results one at a time only; posting them so")
                    self._batch_results = False
                # Refused as a whole: each goes on its own, so that each gets its own answer.
                await self._post_chunks(carried)
                for entry in entries:
                    await self._post_until_taken(entry)
                return
            except CredentialRefused as exc:
                self._fail(exc)
                return
        for entry, outcome in zip(entries, outcomes, strict=True):
            if outcome.get("status"):
                # 404/409/410/422: the task is no longer leased here, or the result is not the task's.
                logger.warning(
                    "task %s: the gateway will not take this result: %s (%s)",
                    entry.result.task_id,
                    outcome.get("code"),
                    outcome.get("reason"),
                )
        await asyncio.to_thread(self._mark_posted, entries)

    def _mark_posted(self, entries: list[Entry]) -> None:
        for entry in entries:
            self.journal.mark_posted(entry)

    async def _post_until_taken(self, entry: Entry) -> None:
        """Post the result's exact bytes until the gateway takes it (or says it never will)."""
        task_id = entry.result.task_id
        backoff = Backoff(max_s=self.options.max_backoff_s)
        while True:
            try:
                await self.channel.post_result(task_id, entry.body)
                break
            except GatewayUnavailable as exc:
                delay = backoff.next()
                logger.warning("task %s: result not taken (%s); posting it again in %.1fs", task_id, exc, delay)
                await asyncio.sleep(delay)
            except RequestRejected as exc:
                # 404/409/410: the task is no longer leased here (re-assigned, cancelled, an older attempt).
                logger.warning("task %s: the gateway will not take this result: %s", task_id, exc)
                break
            except CredentialRefused as exc:
                self._fail(exc)
                return
        self.journal.mark_posted(entry)


def _fit(chunks: list[LogChunk]) -> tuple[list[LogChunk], list[LogChunk]]:
    """The chunks that fit one results post (by count and characters, in order), and the others."""
    carried: list[LogChunk] = []
    alone: list[LogChunk] = []
    chars = 0
    for chunk in chunks:
        size = sum(len(line) for line in chunk.lines)
        if len(carried) < MAX_LOG_CHUNKS_PER_POST and chars + size <= MAX_LOG_CHARS_PER_POST:
            carried.append(chunk)
            chars += size
        else:
            alone.append(chunk)
    return carried, alone


def _failed(task: AgentTask, started: Any, code: str, message: str) -> TaskResult:
    return TaskResult(
        task_id=task.task_id,
        idempotency_key=task.idempotency_key,
        attempt=task.attempt,
        status="failed",
        error_code=code,
        message=message,
        started_at=started,
        finished_at=utcnow(),
    )
