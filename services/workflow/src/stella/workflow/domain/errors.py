"""The workflow domain's typed errors: each has a stable code and an HTTP status."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stella.kit.errors import ServiceError


class DomainError(ServiceError):
    """Base of every workflow domain error: a stable ``code``, an HTTP ``status``, a ``title`` and a ``detail``.

    The shape matches the problem details the gateway returns (``errors`` carries field-level problems).
    """

    code: str = "WF_ERROR"
    status: int = 400
    title: str = "Workflow error"


class InvalidTemplate(DomainError):
    """The template is malformed (the subclasses name the precise problem)."""

    code = "WF_TEMPLATE_INVALID"
    status = 400
    title = "Invalid workflow template"


class EmptyTemplate(InvalidTemplate):
    """The template has no steps."""

    code = "WF_TEMPLATE_EMPTY"
    title = "Workflow template has no steps"


class DuplicateNodeId(InvalidTemplate):
    """Two nodes share an id."""

    code = "WF_DUPLICATE_NODE"
    title = "Duplicate step id"

    def __init__(self, node_id: str) -> None:
        super().__init__(f"step id {node_id!r} is used by more than one step")
        self.node_id = node_id


class DuplicateEdge(InvalidTemplate):
    """The same edge is declared twice."""

    code = "WF_DUPLICATE_EDGE"
    title = "Duplicate edge"

    def __init__(self, source: str, target: str) -> None:
        super().__init__(f"edge {source!r} -> {target!r} is declared more than once")
        self.source = source
        self.target = target


class UnknownStepType(InvalidTemplate):
    """A node names a step type nobody provides."""

    code = "WF_UNKNOWN_STEP_TYPE"
    title = "Unknown step type"

    def __init__(self, node_id: str, step_type: object, known: Iterable[str]) -> None:
        super().__init__(f"step {node_id!r} has unknown type {step_type!r}; known types: {', '.join(sorted(known))}")
        self.node_id = node_id
        self.step_type = step_type


class DanglingEdge(InvalidTemplate):
    """An edge names a node that does not exist."""

    code = "WF_DANGLING_EDGE"
    title = "Edge names a missing step"

    def __init__(self, source: str, target: str, missing: str) -> None:
        super().__init__(f"edge {source!r} -> {target!r} names step {missing!r}, which does not exist")
        self.source = source
        self.target = target
        self.missing = missing


class CycleDetected(InvalidTemplate):
    """The edges form a cycle; ``cycle`` lists its nodes in edge order, starting at the first declared one."""

    code = "WF_CYCLE"
    title = "Workflow template has a cycle"

    def __init__(self, cycle: tuple[str, ...]) -> None:
        path = " -> ".join((*cycle, cycle[0]))
        super().__init__(f"the steps form a cycle: {path}")
        self.cycle = cycle


class InvalidRetryPolicy(InvalidTemplate):
    """A node's ``retry`` is out of range or of the wrong type."""

    code = "WF_INVALID_RETRY"
    title = "Invalid retry policy"

    def __init__(self, node_id: str, reason: str) -> None:
        super().__init__(f"step {node_id!r}: {reason}")
        self.node_id = node_id


class InvalidTimeout(InvalidTemplate):
    """A node's ``timeout_s`` is out of range or of the wrong type."""

    code = "WF_INVALID_TIMEOUT"
    title = "Invalid step timeout"

    def __init__(self, node_id: str, reason: str) -> None:
        super().__init__(f"step {node_id!r}: {reason}")
        self.node_id = node_id


class ExpressionError(DomainError):
    """An expression does not compile; ``position`` is the 0-based character offset of the problem,
    ``line`` and ``column`` (1-based) the same place."""

    code = "WF_INVALID_EXPRESSION"
    status = 400
    title = "Invalid expression"

    def __init__(self, reason: str, source: str, position: int, *, line: int = 1, column: int | None = None) -> None:
        column = position + 1 if column is None else column
        super().__init__(
            f"{reason} at line {line}, column {column} (position {position}) in {source!r}",
            errors=[{"loc": ["when"], "msg": reason, "line": line, "column": column, "position": position}],
        )
        self.reason = reason
        self.source = source
        self.position = position
        self.line = line
        self.column = column


class InvalidCondition(InvalidTemplate):
    """A node's ``when`` expression does not parse or reads something it cannot see."""

    code = "WF_INVALID_CONDITION"
    title = "Invalid step condition"

    def __init__(
        self, node_id: str, expression: object, reason: str, *, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(f"step {node_id!r}: condition {expression!r}: {reason}", errors=errors)
        self.node_id = node_id
        self.expression = expression


class InvalidTemplateOutput(InvalidTemplate):
    """A template output expression does not parse or reads something that does not exist."""

    code = "WF_INVALID_OUTPUT"
    title = "Invalid template output"

    def __init__(self, name: str, reason: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"output {name!r}: {reason}", errors=errors)
        self.name = name


class TemplateNotFound(DomainError):
    """No template with this name (and version)."""

    code = "WF_TEMPLATE_NOT_FOUND"
    status = 404
    title = "Workflow template not found"


class MissingRunInput(DomainError):
    """A required run input was not supplied."""

    code = "WF_MISSING_INPUT"
    status = 400
    title = "Missing workflow input"

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__(f"required inputs not supplied: {', '.join(names)}")
        self.names = names


class UnknownRunInput(DomainError):
    """A supplied run input is not declared by the template."""

    code = "WF_UNKNOWN_INPUT"
    status = 400
    title = "Unknown workflow input"

    def __init__(self, names: tuple[str, ...], declared: Iterable[str]) -> None:
        declared_list = ", ".join(sorted(declared)) or "none"
        super().__init__(f"inputs not declared by the template: {', '.join(names)} (declared: {declared_list})")
        self.names = names


class UnknownNode(DomainError):
    """A node id that the run's template does not have."""

    code = "WF_UNKNOWN_NODE"
    status = 404
    title = "Unknown workflow step"

    def __init__(self, node_id: str) -> None:
        super().__init__(f"the template has no step {node_id!r}")
        self.node_id = node_id


class RunNotActive(DomainError):
    """The run's status does not allow this (it has not started, or it has finished)."""

    code = "WF_RUN_NOT_ACTIVE"
    status = 409
    title = "Workflow run is not active"


class StepStateConflict(DomainError):
    """The step's status or attempt does not allow this transition."""

    code = "WF_STEP_STATE_CONFLICT"
    status = 409
    title = "Step state does not allow this"


class InvalidStepResult(DomainError):
    """A reported step result is malformed (unknown outcome, outputs that are not an object)."""

    code = "WF_INVALID_STEP_RESULT"
    status = 400
    title = "Invalid step result"
