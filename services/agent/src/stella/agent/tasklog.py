"""A task's log on its way to the gateway: redacted, cut, bounded, numbered chunks.

A driver writes lines to a :class:`TaskLog` (it is the driver's :class:`~stella.agent.drivers.base.LogSink`).
Every line is cleaned before it is kept: any secret the task carries (registry passwords) and the agent's
own credential are replaced by ``***``, control characters are dropped, and a line is cut at
:data:`~stella.contracts.agent.MAX_LOG_LINE_CHARS`. At most ``max_lines`` lines of a task are kept; past
that one line says how many were left out. Lines leave in :class:`~stella.contracts.agent.LogChunk` s
numbered from 0, at most :data:`~stella.contracts.agent.MAX_LOG_LINES_PER_CHUNK` lines each; a chunk the
gateway did not take is sent again with the same ``seq`` (the gateway stores a chunk once).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from stella.contracts.agent import MAX_LOG_LINE_CHARS, MAX_LOG_LINES_PER_CHUNK, AgentTask, LogChunk

MAX_LINES_PER_TASK: Final[int] = 10_000
"""Lines of one task sent to the gateway; the rest is counted, not kept."""

MAX_PENDING_CHUNKS: Final[int] = 40
"""Chunks held while the gateway does not take them; the oldest are dropped past this."""

REDACTED: Final[str] = "***"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MIN_SECRET = 4


class TaskLog:
    """The log of one attempt of one task.

    Args:
        task: The task (its credentials' passwords are redacted from every line).
        secrets: Other strings never to be sent (the agent credential).
        max_lines: Lines kept for the gateway.
    """

    def __init__(self, task: AgentTask, secrets: Iterable[str] = (), max_lines: int = MAX_LINES_PER_TASK) -> None:
        self.task_id = task.task_id
        self.attempt = task.attempt
        words = {secret for secret in (*secrets, *(c.password for c in task.credentials)) if len(secret) >= _MIN_SECRET}
        self._secrets = sorted(words, key=len, reverse=True)  # a secret containing another is redacted whole
        self._max_lines = max_lines
        self._kept = 0
        self._dropped = 0
        self._buffer: list[str] = []
        self._chunks: list[LogChunk] = []
        self._seq = 0
        self.full = asyncio.Event()
        """Set when a whole chunk is waiting, so the sender need not wait for its next tick."""

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def __call__(self, line: str) -> None:
        """Record one line (several when it holds line breaks)."""
        for part in self.redact(str(line)).splitlines() or [""]:
            if self._kept >= self._max_lines:
                self._dropped += 1
                continue
            self._kept += 1
            self._buffer.append(_CONTROL.sub("", part)[:MAX_LOG_LINE_CHARS])
            if len(self._buffer) >= MAX_LOG_LINES_PER_CHUNK:
                self._seal()
                self.full.set()

    def _seal(self) -> None:
        if not self._buffer:
            return
        self._chunks.append(LogChunk(task_id=self.task_id, attempt=self.attempt, seq=self._seq, lines=self._buffer))
        self._seq += 1
        self._buffer = []
        if len(self._chunks) > MAX_PENDING_CHUNKS:
            del self._chunks[0]

    def close(self) -> None:
        """End the log: say how many lines were left out, and seal what is buffered."""
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            self._buffer.append(f"... {dropped} more lines were not kept (at most {self._max_lines} per task)")
        self._seal()

    @property
    def lines(self) -> int:
        """Lines kept so far."""
        return self._kept

    def take_final(self) -> list[LogChunk]:
        """End the log and hand over every chunk not sent yet (to go with the task's result); none stay here."""
        self.close()
        chunks, self._chunks = self._chunks, []
        return chunks

    async def send(self, post: Callable[[LogChunk], Awaitable[None]], *, final: bool = False) -> None:
        """Post the sealed chunks in order (and what is buffered, when ``final``); stop at the first failure.

        Raises:
            Whatever ``post`` raises; the chunk it failed on is kept and sent first next time.
        """
        if final:
            self.close()
        elif not self._chunks:
            self._seal()
        self.full.clear()
        while self._chunks:
            await post(self._chunks[0])
            del self._chunks[0]
