"""The states of runs and steps, how a step may be triggered (``run_on``) and why it was skipped."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class RunStatus(StrEnum):
    """Status of a workflow run: ``pending -> running -> succeeded | failed | cancelled``."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the run can no longer change."""
        return self in _TERMINAL_RUN


_TERMINAL_RUN: Final = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class StepStatus(StrEnum):
    """Status of a step run.

    ``pending -> running -> succeeded | failed | waiting``; ``waiting -> succeeded | failed``;
    ``pending -> skipped``; any non-terminal -> ``cancelled`` (run cancelled); ``failed -> running`` when the
    retry policy allows another attempt.
    """

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the status ends an attempt (a ``failed`` step may still be retried by its policy)."""
        return self in _TERMINAL_STEP

    @property
    def is_active(self) -> bool:
        """Whether an attempt is in flight (``running`` or ``waiting``)."""
        return self in _ACTIVE_STEP


_TERMINAL_STEP: Final = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED})


_ACTIVE_STEP: Final = frozenset({StepStatus.RUNNING, StepStatus.WAITING})


class RunOn(StrEnum):
    """Which predecessor outcomes let a node run (see the module docstring)."""

    SUCCESS = "success"
    FAILURE = "failure"
    ALWAYS = "always"


class SkipReason(StrEnum):
    """Why the scheduler skipped a step."""

    CONDITION_FALSE = "condition_false"
    UPSTREAM_FAILED = "upstream_failed"
    UPSTREAM_SKIPPED = "upstream_skipped"
    NO_UPSTREAM_FAILURE = "no_upstream_failure"


class StepOutcome(StrEnum):
    """The result an executor (or an outside signal) reports for a step attempt."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
