"""The events a run and its steps cause."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from stella.workflow.domain.states import SkipReason


@dataclass(frozen=True, kw_only=True)
class WorkflowEvent:
    """Base of the events the workflow domain emits; ``name`` is the event name (``workflow.<event>``)."""

    name: ClassVar[str]
    run_id: UUID
    at: datetime


@dataclass(frozen=True, kw_only=True)
class RunStarted(WorkflowEvent):
    """The run started."""

    name: ClassVar[str] = "workflow.run_started"
    template_name: str
    template_version: int


@dataclass(frozen=True, kw_only=True)
class StepStarted(WorkflowEvent):
    """An attempt of a step started; dispatch it with ``idempotency_key``."""

    name: ClassVar[str] = "workflow.step_started"
    node_id: str
    node_type: str
    attempt: int
    idempotency_key: str


@dataclass(frozen=True, kw_only=True)
class StepWaiting(WorkflowEvent):
    """A step attempt is parked until an outside signal (or ``resume_at``)."""

    name: ClassVar[str] = "workflow.step_waiting"
    node_id: str
    attempt: int
    resume_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class StepCompleted(WorkflowEvent):
    """A step attempt succeeded."""

    name: ClassVar[str] = "workflow.step_completed"
    node_id: str
    attempt: int
    outputs: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class StepFailed(WorkflowEvent):
    """A step attempt failed; ``will_retry`` says whether another attempt is due at ``retry_at``."""

    name: ClassVar[str] = "workflow.step_failed"
    node_id: str
    attempt: int
    error: str
    will_retry: bool
    retry_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class StepSkipped(WorkflowEvent):
    """A step was skipped."""

    name: ClassVar[str] = "workflow.step_skipped"
    node_id: str
    reason: SkipReason


@dataclass(frozen=True, kw_only=True)
class RunCompleted(WorkflowEvent):
    """The run succeeded."""

    name: ClassVar[str] = "workflow.run_completed"
    outputs: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class RunFailed(WorkflowEvent):
    """The run failed: ``failed_nodes`` ended failed (after their retries) or cancelled."""

    name: ClassVar[str] = "workflow.run_failed"
    failed_nodes: tuple[str, ...]
    error: str
    outputs: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class RunCancelled(WorkflowEvent):
    """The run was cancelled."""

    name: ClassVar[str] = "workflow.run_cancelled"
    reason: str
