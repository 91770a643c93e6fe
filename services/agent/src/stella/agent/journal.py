"""The agent's task journal: each finished task's result, by idempotency key, and whether Stella has it.

A result is written here before it is posted, and marked posted once the gateway took it. So:

- a result whose post failed, even across a crash or a restart of the agent, is posted again with the
  very same bytes until the gateway takes it (:meth:`TaskJournal.pending`);
- a task delivered again with a key the agent already finished is answered with the earlier result
  instead of being run twice (:meth:`TaskJournal.recall`).

The journal keeps the newest :data:`MAX_ENTRIES` posted results; pending ones are never dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from stella.agent.drivers.errors import TaskFailure
from stella.agent.drivers.files import write_atomic
from stella.contracts.agent import TaskResult

MAX_ENTRIES: Final[int] = 5000
"""Posted results kept; the oldest go first."""

_PRUNE_EVERY: Final[int] = 100


class JournalError(Exception):
    """The journal cannot be written (the disk is full, the directory is not writable...)."""


@dataclass(frozen=True)
class Entry:
    """One journalled result.

    Attributes:
        key: The task's idempotency key.
        body: The result exactly as it is (or was) posted.
        posted: Whether the gateway took it.
    """

    key: str
    body: bytes
    posted: bool

    @property
    def result(self) -> TaskResult:
        """The result, parsed."""
        return TaskResult.model_validate_json(self.body)


class TaskJournal:
    """Results by idempotency key under ``directory``.

    Args:
        directory: The journal's directory (created with mode 0700).
        durable: Flush each new result to disk before it is posted (False: for simulated agents only, whose
            results a crash of their host may lose).
    """

    def __init__(self, directory: Path, *, durable: bool = True) -> None:
        self.directory = directory
        self.durable = durable
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._writes = 0

    def _path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode()).hexdigest() + ".json")

    @staticmethod
    def _decode(data: bytes) -> Entry | None:
        try:
            raw = json.loads(data)
            return Entry(key=str(raw["key"]), body=str(raw["result"]).encode(), posted=bool(raw["posted"]))
        except (ValueError, KeyError, TypeError):
            return None

    def _write(self, entry: Entry, *, durable: bool = True) -> None:
        data = json.dumps({"key": entry.key, "posted": entry.posted, "result": entry.body.decode()}).encode()
        try:
            write_atomic(self._path(entry.key), data, mode=0o600, durable=durable)
        except TaskFailure as exc:
            raise JournalError(exc.message) from exc

    def recall(self, key: str) -> Entry | None:
        """The journalled result of the task with this idempotency key, if the agent finished one."""
        try:
            data = self._path(key).read_bytes()
        except OSError:
            return None
        entry = self._decode(data)
        return entry if entry is not None and entry.key == key else None

    def record(self, result: TaskResult) -> Entry:
        """Journal a finished task's result as not yet posted; returns the entry whose body is to be posted."""
        entry = Entry(key=result.idempotency_key, body=result.model_dump_json().encode(), posted=False)
        self._write(entry, durable=self.durable)
        self._writes += 1
        if self._writes % _PRUNE_EVERY == 0:
            self.prune()
        return entry

    def mark_posted(self, entry: Entry) -> None:
        """Note that the gateway took this result.

        Not flushed to disk: a crash that loses the note only makes the next start post the result again,
        which the gateway answers without a second effect.
        """
        self._write(Entry(key=entry.key, body=entry.body, posted=True), durable=False)

    def pending(self) -> list[Entry]:
        """Results not yet taken by the gateway, oldest first."""
        found = []
        for path in sorted(self.directory.glob("*.json"), key=_mtime):
            with contextlib.suppress(OSError):
                entry = self._decode(path.read_bytes())
                if entry is not None and not entry.posted:
                    found.append(entry)
        return found

    def prune(self, keep: int = MAX_ENTRIES) -> None:
        """Drop the oldest posted results beyond ``keep``."""
        paths = sorted(self.directory.glob("*.json"), key=_mtime)
        for path in paths[: max(0, len(paths) - keep)]:
            with contextlib.suppress(OSError):
                entry = self._decode(path.read_bytes())
                if entry is None or entry.posted:
                    path.unlink()


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
