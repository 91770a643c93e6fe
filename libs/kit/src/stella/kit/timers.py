"""Sleep until the next due time instead of polling: the shape of every service's timer loop.

A :class:`DueLoop` asks ``next_due()`` (usually ``SELECT min(due_at) ...`` on an index) and sleeps until
then, or until :meth:`DueLoop.wake` is called (after a local write that may move the next due time
earlier, or on a Postgres NOTIFY from another replica). When the time comes it calls ``run_due(now)``,
which handles everything due in transactions of its own (and must be safe to run on two replicas at once:
``FOR UPDATE SKIP LOCKED``). A ceiling on the sleep bounds the effect of a missed wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from stella.kit.faults import is_transient

log = logging.getLogger(__name__)


class DueLoop:
    """Runs ``run_due`` whenever the earliest due time from ``next_due`` has come."""

    def __init__(
        self,
        name: str,
        next_due: Callable[[], Awaitable[datetime | None]],
        run_due: Callable[[datetime], Awaitable[object]],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_sleep_s: float = 60.0,
    ) -> None:
        self.name = name
        self._next_due = next_due
        self._run_due = run_due
        self._clock = clock
        self._max_sleep_s = max_sleep_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._until: datetime | None = None  # when the sleeping loop reads again; None while it is not asleep

    def start(self) -> None:
        """Run the loop in the background."""
        self._task = asyncio.create_task(self._run(), name=f"due-loop-{self.name}")

    def wake(self) -> None:
        """Re-read the next due time now."""
        self._wake.set()

    def wake_for(self, at: datetime | None) -> None:
        """A committed local write set a due time ``at`` (None: it set none): re-read only if that can be earlier.

        A loop asleep until ``at`` or before will read the due times then anyway, and a write that sets no due
        time cannot make anything due sooner; a loop that is not asleep (reading or running what is due) is
        woken, since its read may have come before the write's commit. Saves the ``SELECT min(...)`` that a
        :meth:`wake` after every write costs.
        """
        if at is None and self._until is not None:
            return
        if at is not None and self._until is not None and at >= self._until:
            return
        self._wake.set()

    async def stop(self) -> None:
        """Stop the loop."""
        # The flag ends the loop even where a cancellation is swallowed by a timeout helper (Python 3.11).
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            now = self._clock()
            try:
                due = await self._next_due()
                if due is not None and due <= now:
                    await self._run_due(now)
                    continue
                sleep = self._max_sleep_s if due is None else min(self._max_sleep_s, (due - now).total_seconds())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_transient(exc):
                    # The database or NATS is away: nothing to fix here, look again shortly.
                    log.warning("timer loop %s waits for a dependency: %r", self.name, exc)
                else:
                    log.exception("timer loop %s failed; retrying", self.name)
                sleep = min(5.0, self._max_sleep_s)
            self._until = now + timedelta(seconds=max(0.0, sleep))
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, sleep)):
                        await self._wake.wait()
            finally:
                self._until = None
