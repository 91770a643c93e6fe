"""The workflow engine domain: templates, ``when`` conditions, run and step state machines, the scheduler.

Everything here is pure: no I/O, no clock reads, no random ids. Callers pass ``now`` (a timezone-aware
datetime, UTC by convention) and every id.

How the pieces fit together (the I/O layer drives this loop):

1. A template is saved: :func:`validate_template` parses and checks it (DAG, step types, retry, timeout,
   ``when`` expressions) and :func:`topological_order` gives its deterministic order.
2. A run is created with :func:`new_run` (run and one step per node, all ``pending``) and started with
   :func:`start_run`.
3. :func:`advance` (= :func:`schedule` + :func:`apply_schedule`) decides what happens now: steps to start
   (independent branches together), steps to skip, running steps that timed out, failed steps to retry, the
   run's completion, and :attr:`Schedule.next_wakeup_at`, the next instant the run needs attention, so the
   I/O layer sleeps until then instead of polling.
4. For each started step the I/O layer dispatches the step's work with :attr:`StartStep.idempotency_key`
   (the same key for the same run, node and attempt, so a step executed twice has one effect). A step that
   waits for an outside signal (an approval, a timer) is parked with :func:`begin_waiting`.
5. The step's result arrives: :func:`complete_step` records it (a duplicate or late result is a no-op),
   then :func:`advance` runs again.

Step readiness, skipping and ``run_on``
    A node starts once every predecessor is *settled* (succeeded, skipped, cancelled, or failed with no
    attempt left). What happens then depends on the node's ``run_on``:

    * ``success`` (default): a failed (or cancelled) predecessor skips the node (``upstream_failed``); when
      every predecessor was skipped the node is skipped too (``upstream_skipped``: the path leading to it
      was not taken); otherwise (at least one predecessor succeeded, the rest skipped) it may run.
    * ``always``: it may run whatever its predecessors' outcome (evidence is recorded for a rejected
      promotion too).
    * ``failure``: it may run only when at least one predecessor failed (a notification, a clean-up);
      otherwise it is skipped (``no_upstream_failure``).

    A node that may run is then checked against its ``when`` condition; false skips it
    (``condition_false``). Skipped nodes never fail a run; a run fails when any step ends failed (after its
    retries) or cancelled, and succeeds otherwise. Independent branches keep running after a failure
    elsewhere, so the run completes only once every step is settled.

Retries and timeouts
    ``retry.max_attempts`` counts every attempt, the first included. After attempt *k* fails, attempt
    *k + 1* is due ``backoff_s * k`` seconds after the failure was recorded. A ``running`` or ``waiting``
    step whose attempt started ``timeout_s`` ago or more is failed by the scheduler (and retried like any
    other failure).

Step inputs
    A step's resolved inputs are ``{"inputs": <run inputs>, "steps": {<node id>: {"status", "attempt",
    "outputs"}}}`` over every *upstream* node (its transitive predecessors, so the evidence step sees the
    gate decision two hops back). ``when`` conditions are evaluated over the same mapping.
"""

from __future__ import annotations

import copy
import graphlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any, ClassVar, Final
from uuid import UUID, uuid5

from stella import cel
from stella.kit.errors import ServiceError

# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# States
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# Expressions (``when`` conditions and template outputs)
# ---------------------------------------------------------------------------------------------------------

EXPRESSION_ROOTS: Final[frozenset[str]] = frozenset({"inputs", "steps"})
"""The variables an expression reads: run inputs and upstream steps."""

STEP_FIELDS: Final[frozenset[str]] = frozenset({"status", "attempt", "outputs"})
"""What an expression may read of a step: ``steps.<id>.status``, ``.attempt``, ``.outputs...``."""

MAX_EXPRESSION_LENGTH: Final = 2000
"""Longest expression accepted, in characters."""

EXPRESSION_ENGINE: Final = cel.ENGINE
"""The exact CEL engine version, recorded with every condition or output that fails to evaluate."""


class ExpressionEvaluationError(Exception):
    """A condition or output failed while evaluating (or a condition was not a boolean)."""


@dataclass(frozen=True, eq=False)
class Expression:
    """A compiled CEL expression over ``inputs`` (the run inputs) and ``steps`` (upstream steps).

    CEL (https://github.com/google/cel-spec) through :mod:`stella.cel`: ``steps.gates.outputs.result ==
    "allow" && inputs.env != "prod"``, ``!inputs.dry_run``, ``steps["health-check"].status == "failed"``
    (a step id with ``-`` is read with an index), ``has(steps.gates.outputs.verdict)``,
    ``steps.deploy.outputs.targets.all(t, t.healthy)``, ``s.matches("^v[0-9]+")`` (RE2). Reading a key
    that is absent is an error, not ``null``: test with ``has()`` first. A ``when`` condition must be a
    boolean. Evaluation has a cost budget; a condition that fails fails its step (fail closed).

    Attributes:
        source: The expression text.
    """

    source: str
    _program: cel.Program = field(repr=False)

    @property
    def paths(self) -> tuple[tuple[str, ...], ...]:
        """Every variable path the expression reads, as segment tuples, in source order."""
        return self._program.references

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """Evaluate over ``context`` (``{"inputs": ..., "steps": ...}``) and return the JSON value.

        Raises:
            ExpressionEvaluationError: evaluation failed or exceeded its budget.
        """
        variables = {root: context.get(root, {}) for root in EXPRESSION_ROOTS}
        try:
            return self._program.evaluate(variables)
        except cel.ExpressionError as exc:
            raise ExpressionEvaluationError(f"{exc} ({EXPRESSION_ENGINE})") from None

    def test(self, context: Mapping[str, Any]) -> bool:
        """Evaluate a condition over ``context``.

        Raises:
            ExpressionEvaluationError: evaluation failed, or the value is not a boolean.
        """
        value = self.evaluate(context)
        if not isinstance(value, bool):
            raise ExpressionEvaluationError(
                f"a condition must be true or false, got {type(value).__name__} ({EXPRESSION_ENGINE})"
            )
        return value


def parse_expression(source: str) -> Expression:
    """Compile an expression.

    Args:
        source: The expression text, e.g. ``steps.gates.outputs.result == "allow" && inputs.env != "prod"``.

    Raises:
        ExpressionError: when the text is not valid CEL, reads a name other than ``inputs``/``steps``, or
            is too long or deep (the error carries the line, column and character position).
    """
    if not isinstance(source, str):
        raise ExpressionError("an expression must be a string", repr(source), 0)
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_LENGTH} characters", source[:40] + "...", 0)
    try:
        return Expression(source, cel.compile(source, variables=EXPRESSION_ROOTS))
    except cel.ExpressionError as exc:
        line, column = exc.line or 1, exc.column or 1
        lines = source.split("\n")
        position = sum(len(text) + 1 for text in lines[: line - 1]) + column - 1
        raise ExpressionError(exc.message, source, position, line=line, column=column) from None


# ---------------------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------------------

MAX_ATTEMPTS_LIMIT: Final = 100
"""Most attempts a retry policy may allow."""

MAX_BACKOFF_S: Final = 86_400.0
"""Longest retry backoff unit, in seconds (one day)."""

MAX_TIMEOUT_S: Final = 30 * 86_400.0
"""Longest step timeout, in seconds (30 days; an approval waits 7 days by default)."""

_ID_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_TEMPLATE_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_TEMPLATE_FIELDS: Final = frozenset({"name", "version", "description", "nodes", "edges", "inputs", "outputs"})
_NODE_FIELDS: Final = frozenset({"id", "type", "config", "retry", "timeout_s", "when", "run_on"})
_RETRY_FIELDS: Final = frozenset({"max_attempts", "backoff_s"})
_EDGE_FIELDS: Final = frozenset({"from", "to"})
_INPUT_FIELDS: Final = frozenset({"name", "required", "default", "description"})


@dataclass(frozen=True)
class RetryPolicy:
    """How often a step is attempted and how long to wait between attempts.

    Attributes:
        max_attempts: Attempts in total, the first included (1 = no retry).
        backoff_s: After attempt *k* fails, attempt *k + 1* is due ``backoff_s * k`` seconds later.
    """

    max_attempts: int = 1
    backoff_s: float = 0.0

    def delay_after(self, attempt: int) -> timedelta:
        """The wait between the failure of ``attempt`` and the start of the next one."""
        return timedelta(seconds=self.backoff_s * attempt)


@dataclass(frozen=True)
class Node:
    """One step of a template.

    Attributes:
        id: Unique within the template; letters, digits, ``_`` and ``-``, starting with a letter.
        type: The step type (``gate``, ``approval``, ... or a plugin's step type).
        config: The step type's own configuration, passed to its executor untouched.
        retry: The retry policy.
        timeout_s: Longest an attempt may stay ``running`` or ``waiting``; ``None`` means no limit.
        when: Optional condition (see :class:`Expression`); false skips the step.
        run_on: Which predecessor outcomes let the step run (see the module docstring).
    """

    id: str
    type: str
    config: Mapping[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = RetryPolicy()
    timeout_s: float | None = None
    when: str | None = None
    run_on: RunOn = RunOn.SUCCESS


@dataclass(frozen=True)
class Edge:
    """A dependency: ``target`` runs after ``source`` (``{"from": source, "to": target}`` in JSON)."""

    source: str
    target: str


@dataclass(frozen=True)
class InputSpec:
    """A run input the template declares.

    Attributes:
        name: The input's name, read as ``inputs.<name>``.
        required: Whether a run must supply it.
        default: The value of an optional input that is not supplied.
        description: What the input is for.
    """

    name: str
    required: bool = True
    default: Any = None
    description: str = ""


@dataclass(frozen=True)
class _Graph:
    nodes: dict[str, Node]
    order: tuple[str, ...]
    predecessors: dict[str, tuple[str, ...]]
    successors: dict[str, tuple[str, ...]]
    ancestors: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class WorkflowTemplate:
    """A versioned DAG of steps.

    Attributes:
        name: Template name (lower case letters, digits, ``.``, ``_`` and ``-``).
        version: Template version; a run pins the version it started with.
        nodes: The steps, in declaration order (the tie-break of the topological order).
        edges: The dependencies.
        inputs: The run inputs the template declares.
        outputs: Run outputs: name -> expression evaluated over every step when the run completes.
        tenant_id: Owning tenant; ``None`` for built-in templates.
        description: What the template does.
    """

    name: str
    version: int
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...] = ()
    inputs: tuple[InputSpec, ...] = ()
    outputs: Mapping[str, str] = field(default_factory=dict)
    tenant_id: UUID | None = None
    description: str = ""

    @property
    def is_builtin(self) -> bool:
        """Whether the template ships with the product (it has no tenant)."""
        return self.tenant_id is None

    @cached_property
    def _graph(self) -> _Graph:
        # Checked here too (not only in validate_template) so that no code path can schedule a run over a
        # malformed graph: any use of a broken template raises the precise error.
        nodes = _check_nodes_unique(self.nodes)
        _check_edges(self.edges, nodes)
        predecessors: dict[str, list[str]] = {node_id: [] for node_id in nodes}
        successors: dict[str, list[str]] = {node_id: [] for node_id in nodes}
        for edge in self.edges:
            predecessors[edge.target].append(edge.source)
            successors[edge.source].append(edge.target)
        position = {node_id: index for index, node_id in enumerate(nodes)}
        frozen_preds = {k: tuple(sorted(v, key=position.__getitem__)) for k, v in predecessors.items()}
        frozen_succs = {k: tuple(sorted(v, key=position.__getitem__)) for k, v in successors.items()}
        order = _kahn(tuple(nodes), frozen_preds, position)
        rank = {node_id: index for index, node_id in enumerate(order)}
        ancestors: dict[str, tuple[str, ...]] = {}
        for node_id in order:
            found: set[str] = set()
            for pred in frozen_preds[node_id]:
                found.add(pred)
                found.update(ancestors[pred])
            ancestors[node_id] = tuple(sorted(found, key=rank.__getitem__))
        return _Graph(nodes, order, frozen_preds, frozen_succs, ancestors)

    @cached_property
    def _conditions(self) -> dict[str, Expression | ExpressionError]:
        # A stored template is not validated again; an expression that no longer compiles (one saved in a
        # former language) is kept as its error, and reaching it fails the step or the run: fail closed.
        compiled: dict[str, Expression | ExpressionError] = {}
        for node in self.nodes:
            if node.when is not None:
                try:
                    compiled[node.id] = parse_expression(node.when)
                except ExpressionError as exc:
                    compiled[node.id] = exc
        return compiled

    @cached_property
    def _output_expressions(self) -> dict[str, Expression | ExpressionError]:
        compiled: dict[str, Expression | ExpressionError] = {}
        for name, source in self.outputs.items():
            try:
                compiled[name] = parse_expression(source)
            except ExpressionError as exc:
                compiled[name] = exc
        return compiled

    @property
    def topological_order(self) -> tuple[str, ...]:
        """Node ids in dependency order; among nodes ready together, the first declared comes first."""
        return self._graph.order

    def node(self, node_id: str) -> Node:
        """Return the node ``node_id``.

        Raises:
            UnknownNode: when the template has no such node.
        """
        try:
            return self._graph.nodes[node_id]
        except KeyError:
            raise UnknownNode(node_id) from None

    def predecessors(self, node_id: str) -> tuple[str, ...]:
        """Direct predecessors of ``node_id``, in declaration order."""
        self.node(node_id)
        return self._graph.predecessors[node_id]

    def successors(self, node_id: str) -> tuple[str, ...]:
        """Direct successors of ``node_id``, in declaration order."""
        self.node(node_id)
        return self._graph.successors[node_id]

    def ancestors(self, node_id: str) -> tuple[str, ...]:
        """Every node upstream of ``node_id`` (transitive predecessors), in topological order."""
        self.node(node_id)
        return self._graph.ancestors[node_id]

    def to_dict(self) -> dict[str, Any]:
        """Return the template's JSON form (the inverse of :func:`parse_template`; ``tenant_id`` excluded)."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "nodes": [
                {
                    "id": node.id,
                    "type": node.type,
                    "config": copy.deepcopy(dict(node.config)),
                    "retry": {"max_attempts": node.retry.max_attempts, "backoff_s": node.retry.backoff_s},
                    "timeout_s": node.timeout_s,
                    "when": node.when,
                    "run_on": str(node.run_on),
                }
                for node in self.nodes
            ],
            "edges": [{"from": edge.source, "to": edge.target} for edge in self.edges],
            "inputs": [
                {
                    "name": spec.name,
                    "required": spec.required,
                    "default": copy.deepcopy(spec.default),
                    "description": spec.description,
                }
                for spec in self.inputs
            ],
            "outputs": dict(self.outputs),
        }


def _check_nodes_unique(nodes: tuple[Node, ...]) -> dict[str, Node]:
    if not nodes:
        raise EmptyTemplate("a workflow template needs at least one step")
    by_id: dict[str, Node] = {}
    for node in nodes:
        if node.id in by_id:
            raise DuplicateNodeId(node.id)
        by_id[node.id] = node
    return by_id


def _check_edges(edges: tuple[Edge, ...], nodes: Mapping[str, Node]) -> None:
    seen: set[tuple[str, str]] = set()
    for edge in edges:
        for end in (edge.source, edge.target):
            if end not in nodes:
                raise DanglingEdge(edge.source, edge.target, end)
        if (edge.source, edge.target) in seen:
            raise DuplicateEdge(edge.source, edge.target)
        seen.add((edge.source, edge.target))


def _kahn(
    declared: tuple[str, ...],
    predecessors: Mapping[str, tuple[str, ...]],
    position: Mapping[str, int],
) -> tuple[str, ...]:
    sorter = graphlib.TopologicalSorter({node_id: predecessors[node_id] for node_id in declared})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        # args[1] lists the cycle with its first node repeated at the end, each node a predecessor of the
        # next; report it from its earliest declared node so the message is the same on every run.
        cycle = list(exc.args[1][:-1])
        first = min(range(len(cycle)), key=lambda i: position[cycle[i]])
        raise CycleDetected(tuple(cycle[first:] + cycle[:first])) from None
    ready: list[str] = []
    order: list[str] = []
    while sorter.is_active():
        ready.extend(sorter.get_ready())
        # Deterministic: always take the earliest declared ready node.
        ready.sort(key=position.__getitem__)
        current = ready.pop(0)
        order.append(current)
        sorter.done(current)
    return tuple(order)


def topological_order(template: WorkflowTemplate) -> tuple[str, ...]:
    """Return the template's node ids in dependency order.

    Among nodes whose predecessors are all placed, the one declared first comes first, so the order is the
    same on every call and every machine.

    Raises:
        EmptyTemplate, DuplicateNodeId, DanglingEdge, DuplicateEdge, CycleDetected: for a malformed graph.
    """
    return template.topological_order


def _require_fields(data: Any, allowed: frozenset[str], where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidTemplate(f"{where} must be an object")
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise InvalidTemplate(f"{where} has unknown fields: {', '.join(unknown)}")
    return data


def _as_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidTemplate(f"{where} must be a list")
    return list(value)


def parse_template(data: Mapping[str, Any], *, tenant_id: UUID | None = None) -> WorkflowTemplate:
    """Build a template from its JSON form, checking only its shape (objects, lists, known fields).

    Values are checked by :func:`validate_template`, which also accepts the JSON form directly.

    Args:
        data: ``{name, version, description?, nodes: [{id, type, config?, retry?: {max_attempts, backoff_s},
            timeout_s?, when?, run_on?}], edges?: [{from, to}], inputs?: [{name, required?, default?,
            description?}], outputs?: {name: expression}}``. ``version`` defaults to 1.
        tenant_id: The owning tenant (from the caller's token, never from the body); ``None`` for built-ins.

    Raises:
        InvalidTemplate: for a wrong shape or an unknown field.
    """
    root = _require_fields(data, _TEMPLATE_FIELDS, "template")
    nodes: list[Node] = []
    for index, raw in enumerate(_as_list(root.get("nodes"), "template field 'nodes'")):
        spec = _require_fields(raw, _NODE_FIELDS, f"step #{index + 1}")
        node_id = spec.get("id")
        label = node_id if isinstance(node_id, str) else f"#{index + 1}"
        retry_raw = spec.get("retry")
        if retry_raw is None:
            retry = RetryPolicy()
        else:
            retry_spec = _require_fields(retry_raw, _RETRY_FIELDS, f"step {label!r} field 'retry'")
            retry = RetryPolicy(
                max_attempts=retry_spec.get("max_attempts", 1), backoff_s=retry_spec.get("backoff_s", 0.0)
            )
        run_on_raw = spec.get("run_on", RunOn.SUCCESS.value)
        try:
            run_on = RunOn(run_on_raw)
        except ValueError:
            allowed = ", ".join(member.value for member in RunOn)
            raise InvalidTemplate(f"step {label!r}: run_on {run_on_raw!r} is not one of {allowed}") from None
        config = spec.get("config")
        if config is None:
            config = {}
        elif not isinstance(config, Mapping):
            raise InvalidTemplate(f"step {label!r}: config must be an object")
        nodes.append(
            Node(
                id=node_id,  # type: ignore[arg-type]  # checked by validate_template
                type=spec.get("type"),  # type: ignore[arg-type]
                config=copy.deepcopy(dict(config)),
                retry=retry,
                timeout_s=spec.get("timeout_s"),
                when=spec.get("when"),
                run_on=run_on,
            )
        )
    edges: list[Edge] = []
    for index, raw in enumerate(_as_list(root.get("edges"), "template field 'edges'")):
        spec = _require_fields(raw, _EDGE_FIELDS, f"edge #{index + 1}")
        source, target = spec.get("from"), spec.get("to")
        if not isinstance(source, str) or not isinstance(target, str):
            raise InvalidTemplate(f"edge #{index + 1} needs string 'from' and 'to' step ids")
        edges.append(Edge(source, target))
    inputs: list[InputSpec] = []
    for index, raw in enumerate(_as_list(root.get("inputs"), "template field 'inputs'")):
        spec = _require_fields(raw, _INPUT_FIELDS, f"input #{index + 1}")
        inputs.append(
            InputSpec(
                name=spec.get("name"),  # type: ignore[arg-type]
                required=spec.get("required", True),
                default=copy.deepcopy(spec.get("default")),
                description=spec.get("description", ""),
            )
        )
    outputs = root.get("outputs") or {}
    if not isinstance(outputs, Mapping):
        raise InvalidTemplate("template field 'outputs' must be an object of name -> expression")
    return WorkflowTemplate(
        name=root.get("name"),  # type: ignore[arg-type]
        version=root.get("version", 1),
        nodes=tuple(nodes),
        edges=tuple(edges),
        inputs=tuple(inputs),
        outputs=dict(outputs),
        tenant_id=tenant_id,
        description=root.get("description", ""),
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_reference(
    path: tuple[str, ...], *, visible: Iterable[str] | None, all_nodes: Mapping[str, Node], inputs: set[str]
) -> str | None:
    """Why ``path`` cannot be read (``visible`` None = every node), or None when it is fine."""
    text = ".".join(path)
    if path[0] == "inputs":
        if len(path) >= 2 and path[1] not in inputs:
            declared = ", ".join(sorted(inputs)) or "none"
            return f"{text!r} reads input {path[1]!r}, which the template does not declare (declared: {declared})"
        return None
    if len(path) < 2:
        return "'steps' must name a step, e.g. steps.gates.status"
    step_id = path[1]
    if step_id not in all_nodes:
        return f"{text!r} names step {step_id!r}, which does not exist"
    if visible is not None and step_id not in visible:
        return f"{text!r} reads step {step_id!r}, which is not upstream of this step"
    if len(path) >= 3:
        if path[2] not in STEP_FIELDS:
            return f"{text!r}: a step exposes {', '.join(sorted(STEP_FIELDS))}, not {path[2]!r}"
        if path[2] != "outputs" and len(path) > 3:
            return f"{text!r}: {path[2]!r} has no fields"
    return None


def validate_template(
    template: WorkflowTemplate | Mapping[str, Any], known_step_types: Iterable[str]
) -> WorkflowTemplate:
    """Check a template and return it (parsed first when given its JSON form).

    Checks, in this order (the first problem found is raised): name and version, at least one step, step
    ids (format, uniqueness), step types, retry policies, timeouts, ``run_on``, edges (dangling,
    duplicate), cycles, declared inputs, ``when`` conditions (syntax, and every path names a declared input
    or an upstream step), template outputs (syntax, and every path names a declared input or a step).

    Args:
        template: The template, or its JSON form (see :func:`parse_template`).
        known_step_types: Every step type the installation provides (built-ins and plugins).

    Returns:
        The validated template; its :attr:`WorkflowTemplate.topological_order` is ready.

    Raises:
        InvalidTemplate: or one of its subclasses, naming the step, edge, input or output at fault.
    """
    parsed = template if isinstance(template, WorkflowTemplate) else parse_template(template)
    known = frozenset(known_step_types)
    if not isinstance(parsed.name, str) or not _TEMPLATE_NAME_RE.match(parsed.name):
        raise InvalidTemplate(
            f"template name {parsed.name!r} must be 1-100 lower case letters, digits, '.', '_' or '-'"
        )
    if not isinstance(parsed.version, int) or isinstance(parsed.version, bool) or parsed.version < 1:
        raise InvalidTemplate(f"template version {parsed.version!r} must be a positive integer")
    if not isinstance(parsed.description, str):
        raise InvalidTemplate("template description must be a string")
    if not parsed.nodes:
        raise EmptyTemplate("a workflow template needs at least one step")
    seen: set[str] = set()
    for node in parsed.nodes:
        if not isinstance(node.id, str) or not _ID_RE.match(node.id):
            raise InvalidTemplate(
                f"step id {node.id!r} must be 1-64 letters, digits, '_' or '-', starting with a letter"
            )
        if node.id in seen:
            raise DuplicateNodeId(node.id)
        seen.add(node.id)
    for node in parsed.nodes:
        if not isinstance(node.type, str) or node.type not in known:
            raise UnknownStepType(node.id, node.type, known)
    for node in parsed.nodes:
        _validate_retry(node)
        _validate_timeout(node)
        if not isinstance(node.config, Mapping):
            raise InvalidTemplate(f"step {node.id!r}: config must be an object")
    nodes = _check_nodes_unique(parsed.nodes)
    _check_edges(parsed.edges, nodes)
    graph = parsed._graph  # raises CycleDetected
    for node in parsed.nodes:
        if node.run_on is RunOn.FAILURE and not graph.predecessors[node.id]:
            raise InvalidTemplate(f"step {node.id!r} runs on failure but has no predecessor, so it could never run")
    input_names = _validate_inputs(parsed.inputs)
    for node in parsed.nodes:
        if node.when is None:
            continue
        if not isinstance(node.when, str):
            raise InvalidCondition(node.id, node.when, "a condition must be a string")
        try:
            expression = parse_expression(node.when)
        except ExpressionError as exc:
            raise InvalidCondition(node.id, node.when, exc.detail, errors=exc.errors) from exc
        for path in expression.paths:
            problem = _check_reference(path, visible=graph.ancestors[node.id], all_nodes=nodes, inputs=input_names)
            if problem:
                raise InvalidCondition(node.id, node.when, problem)
    for name, source in parsed.outputs.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InvalidTemplateOutput(str(name), "an output name is 1-64 letters, digits, '_' or '-'")
        if not isinstance(source, str):
            raise InvalidTemplateOutput(name, "an output is an expression string")
        try:
            expression = parse_expression(source)
        except ExpressionError as exc:
            raise InvalidTemplateOutput(name, exc.detail, errors=exc.errors) from exc
        for path in expression.paths:
            problem = _check_reference(path, visible=None, all_nodes=nodes, inputs=input_names)
            if problem:
                raise InvalidTemplateOutput(name, problem)
    return parsed


def _validate_retry(node: Node) -> None:
    retry = node.retry
    if not isinstance(retry, RetryPolicy):
        raise InvalidRetryPolicy(node.id, "retry must be an object {max_attempts, backoff_s}")
    attempts = retry.max_attempts
    if not isinstance(attempts, int) or isinstance(attempts, bool):
        raise InvalidRetryPolicy(node.id, f"retry.max_attempts {attempts!r} must be an integer")
    if not 1 <= attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidRetryPolicy(
            node.id, f"retry.max_attempts {attempts} must be between 1 and {MAX_ATTEMPTS_LIMIT} (1 = no retry)"
        )
    if not _is_number(retry.backoff_s):
        raise InvalidRetryPolicy(node.id, f"retry.backoff_s {retry.backoff_s!r} must be a number of seconds")
    if not 0 <= retry.backoff_s <= MAX_BACKOFF_S:
        raise InvalidRetryPolicy(node.id, f"retry.backoff_s {retry.backoff_s} must be between 0 and {MAX_BACKOFF_S:g}")


def _validate_timeout(node: Node) -> None:
    timeout = node.timeout_s
    if timeout is None:
        return
    if not _is_number(timeout):
        raise InvalidTimeout(node.id, f"timeout_s {timeout!r} must be a number of seconds or null")
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise InvalidTimeout(node.id, f"timeout_s {timeout} must be above 0 and at most {MAX_TIMEOUT_S:g}")


def _validate_inputs(inputs: tuple[InputSpec, ...]) -> set[str]:
    names: set[str] = set()
    for spec in inputs:
        if not isinstance(spec.name, str) or not _NAME_RE.match(spec.name):
            raise InvalidTemplate(f"input name {spec.name!r} must be 1-64 letters, digits, '_' or '-'")
        if spec.name in names:
            raise InvalidTemplate(f"input {spec.name!r} is declared more than once")
        if not isinstance(spec.required, bool):
            raise InvalidTemplate(f"input {spec.name!r}: required must be true or false")
        if spec.required and spec.default is not None:
            raise InvalidTemplate(f"input {spec.name!r} is required, so it cannot have a default")
        names.add(spec.name)
    return names


def resolve_run_inputs(template: WorkflowTemplate, supplied: Mapping[str, Any]) -> dict[str, Any]:
    """Return a run's inputs: the supplied values plus the defaults of optional inputs not supplied.

    Raises:
        UnknownRunInput: for a supplied name the template does not declare.
        MissingRunInput: for a required input not supplied.
    """
    declared = {spec.name: spec for spec in template.inputs}
    unknown = tuple(sorted(name for name in supplied if name not in declared))
    if unknown:
        raise UnknownRunInput(unknown, declared)
    missing = tuple(spec.name for spec in template.inputs if spec.required and spec.name not in supplied)
    if missing:
        raise MissingRunInput(missing)
    return {spec.name: copy.deepcopy(supplied.get(spec.name, spec.default)) for spec in template.inputs}


# ---------------------------------------------------------------------------------------------------------
# Runs and steps
# ---------------------------------------------------------------------------------------------------------

_IDEMPOTENCY_NAMESPACE: Final = UUID("a4368ddf-33c4-45eb-b088-7dc0b1addcb7")


def step_idempotency_key(run_id: UUID, node_id: str, attempt: int) -> str:
    """The key that makes one step attempt have one effect, however often it is dispatched.

    The same (run, node, attempt) always gives the same key; a retry (a new attempt) gets a new key.
    """
    return f"wf/{run_id}/{node_id}/{attempt}"


def step_attempt_id(run_id: UUID, node_id: str, attempt: int) -> UUID:
    """A deterministic UUID for a step attempt (a name-based UUID of :func:`step_idempotency_key`).

    Suitable as the ``message_id`` of the command that dispatches the attempt, so a re-dispatch is dropped
    by the broker's duplicate window and by the receiver's inbox.
    """
    return uuid5(_IDEMPOTENCY_NAMESPACE, step_idempotency_key(run_id, node_id, attempt))


@dataclass(frozen=True)
class WorkflowRun:
    """An execution of a pinned template version.

    Attributes:
        id: Run id.
        tenant_id: Owning tenant.
        template_id: The template row the run started from.
        template_name: The template's name.
        template_version: The pinned template version.
        status: Run status.
        inputs: Resolved run inputs.
        context: Opaque caller context (e.g. the promotion id), carried along for the I/O layer.
        outputs: Run outputs, set when the run completes.
        created_at: When the run was created.
        started_at: When the run started.
        completed_at: When the run reached a terminal status.
        error: Why the run failed or was cancelled.
        next_wakeup_at: When the run next needs attention without an outside event (retry due, timeout,
            timer), as of the last :func:`apply_schedule`; ``None`` when nothing is due.
    """

    id: UUID
    tenant_id: UUID
    template_id: UUID
    template_name: str
    template_version: int
    status: RunStatus
    inputs: Mapping[str, Any]
    created_at: datetime
    context: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    next_wakeup_at: datetime | None = None


@dataclass(frozen=True)
class StepRun:
    """The state of one node in one run.

    Attributes:
        run_id: The run.
        node_id: The template node.
        status: Step status.
        attempt_number: The latest attempt (1 for the first); 0 until the step first starts.
        started_at: Start of the latest attempt.
        finished_at: End of the latest attempt (or when the step was skipped or cancelled).
        resume_at: For a ``waiting`` timer step, when the scheduler completes it.
        inputs: Resolved inputs of the latest attempt (see the module docstring).
        outputs: Outputs of the latest attempt.
        error: Why the latest attempt failed.
        skip_reason: Why the step was skipped.
    """

    run_id: UUID
    node_id: str
    status: StepStatus = StepStatus.PENDING
    attempt_number: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    resume_at: datetime | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    skip_reason: SkipReason | None = None

    @property
    def idempotency_key(self) -> str | None:
        """The key of the latest attempt, or ``None`` before the first start."""
        if self.attempt_number < 1:
            return None
        return step_idempotency_key(self.run_id, self.node_id, self.attempt_number)


# ---------------------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# Scheduler decisions
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StartStep:
    """Start an attempt of a step now.

    Attributes:
        node_id: The node.
        node_type: Its step type (which executor runs it).
        attempt: The attempt number (1 for the first; higher for a retry).
        idempotency_key: Dispatch key of this attempt (see :func:`step_idempotency_key`).
        inputs: Resolved inputs (run inputs and upstream steps).
        config: The node's config.
        deadline_at: When the attempt times out, or ``None``.
    """

    node_id: str
    node_type: str
    attempt: int
    idempotency_key: str
    inputs: Mapping[str, Any]
    config: Mapping[str, Any]
    deadline_at: datetime | None

    @property
    def is_retry(self) -> bool:
        """Whether this attempt follows a failed one."""
        return self.attempt > 1


@dataclass(frozen=True, kw_only=True)
class SkipStep:
    """Skip a pending step."""

    node_id: str
    reason: SkipReason


@dataclass(frozen=True, kw_only=True)
class TimeOutStep:
    """Fail a running or waiting attempt that passed its deadline (a retry follows when the policy allows)."""

    node_id: str
    attempt: int
    deadline_at: datetime


@dataclass(frozen=True, kw_only=True)
class ResumeStep:
    """Complete a waiting timer step whose ``resume_at`` has come."""

    node_id: str
    attempt: int
    resume_at: datetime


@dataclass(frozen=True, kw_only=True)
class FailStep:
    """Fail a pending step whose ``when`` condition could not be evaluated: fail closed, never retried."""

    node_id: str
    error: str


StepAction = StartStep | SkipStep | TimeOutStep | ResumeStep | FailStep


@dataclass(frozen=True, kw_only=True)
class PendingRetry:
    """A failed step whose next attempt is not due yet."""

    node_id: str
    next_attempt: int
    due_at: datetime


@dataclass(frozen=True, kw_only=True)
class RunCompletion:
    """The run is complete: every step is settled. ``error`` lists the outputs that failed (they read null)."""

    status: RunStatus
    outputs: Mapping[str, Any]
    failed_nodes: tuple[str, ...]
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """What a run needs now.

    Attributes:
        actions: Step actions in the order they were decided (topological); apply them in this order.
        retries: Failed steps waiting for their backoff.
        completion: Set when the run is complete after the actions.
        next_wakeup_at: The earliest future instant the run needs attention without an outside event
            (retry due, attempt deadline, timer), or ``None``.
    """

    actions: tuple[StepAction, ...] = ()
    retries: tuple[PendingRetry, ...] = ()
    completion: RunCompletion | None = None
    next_wakeup_at: datetime | None = None

    @property
    def start(self) -> tuple[StartStep, ...]:
        """Steps to start now."""
        return tuple(a for a in self.actions if isinstance(a, StartStep))

    @property
    def skip(self) -> tuple[SkipStep, ...]:
        """Steps to skip now."""
        return tuple(a for a in self.actions if isinstance(a, SkipStep))

    @property
    def time_out(self) -> tuple[TimeOutStep, ...]:
        """Attempts that passed their deadline."""
        return tuple(a for a in self.actions if isinstance(a, TimeOutStep))

    @property
    def fail(self) -> tuple[FailStep, ...]:
        """Pending steps failed because their condition could not be evaluated."""
        return tuple(a for a in self.actions if isinstance(a, FailStep))

    @property
    def resume(self) -> tuple[ResumeStep, ...]:
        """Timer steps whose time has come."""
        return tuple(a for a in self.actions if isinstance(a, ResumeStep))

    @property
    def has_changes(self) -> bool:
        """Whether applying the schedule changes the run or a step."""
        return bool(self.actions) or self.completion is not None


@dataclass(frozen=True, kw_only=True)
class RunUpdate:
    """The outcome of a run-level transition.

    Attributes:
        run: The run after the transition.
        steps: Every step after the transition, in topological order.
        changed: The steps the transition changed (the ones to write).
        events: The events caused, in order.
    """

    run: WorkflowRun
    steps: tuple[StepRun, ...]
    changed: tuple[StepRun, ...]
    events: tuple[WorkflowEvent, ...]


@dataclass(frozen=True, kw_only=True)
class Advance(RunUpdate):
    """The outcome of :func:`advance`: the run update plus the schedule that caused it."""

    schedule: Schedule


@dataclass(frozen=True, kw_only=True)
class RunTransition:
    """The outcome of a run-only transition: the run and its events (none when nothing changed)."""

    run: WorkflowRun
    events: tuple[WorkflowEvent, ...]


@dataclass(frozen=True, kw_only=True)
class StepTransition:
    """The outcome of a step transition; ``changed`` is false for a duplicate or late report (a no-op)."""

    step: StepRun
    events: tuple[WorkflowEvent, ...]
    changed: bool


# ---------------------------------------------------------------------------------------------------------
# Transitions
# ---------------------------------------------------------------------------------------------------------


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime (UTC)")


def new_run(
    *,
    run_id: UUID,
    tenant_id: UUID,
    template: WorkflowTemplate,
    template_id: UUID,
    inputs: Mapping[str, Any],
    now: datetime,
    context: Mapping[str, Any] | None = None,
) -> RunUpdate:
    """Create a pending run and one pending step per node.

    Args:
        run_id: The new run's id.
        tenant_id: The tenant that starts it.
        template: The template version the run pins.
        template_id: The template's row id.
        inputs: Supplied run inputs (checked against the template's declared inputs).
        now: Creation time.
        context: Opaque caller context stored with the run.

    Raises:
        UnknownRunInput, MissingRunInput: when ``inputs`` do not match the template.
    """
    _require_aware(now)
    resolved = resolve_run_inputs(template, inputs)
    run = WorkflowRun(
        id=run_id,
        tenant_id=tenant_id,
        template_id=template_id,
        template_name=template.name,
        template_version=template.version,
        status=RunStatus.PENDING,
        inputs=resolved,
        context=copy.deepcopy(dict(context or {})),
        created_at=now,
    )
    steps = tuple(StepRun(run_id=run_id, node_id=node_id) for node_id in template.topological_order)
    return RunUpdate(run=run, steps=steps, changed=steps, events=())


def start_run(run: WorkflowRun, *, now: datetime) -> RunTransition:
    """Move a pending run to running (call :func:`advance` next to start its first steps).

    Starting a running run again is a no-op (no events).

    Raises:
        RunNotActive: when the run has already finished.
    """
    _require_aware(now)
    if run.status is RunStatus.RUNNING:
        return RunTransition(run=run, events=())
    if run.status is not RunStatus.PENDING:
        raise RunNotActive(f"run {run.id} is {run.status.value} and cannot start")
    started = replace(run, status=RunStatus.RUNNING, started_at=now)
    return RunTransition(
        run=started,
        events=(
            RunStarted(run_id=run.id, at=now, template_name=run.template_name, template_version=run.template_version),
        ),
    )


def cancel_run(
    template: WorkflowTemplate, run: WorkflowRun, steps: Iterable[StepRun], *, now: datetime, reason: str
) -> RunUpdate:
    """Cancel a pending or running run and every step not yet settled.

    Cancelling a cancelled run again is a no-op (no events).

    Raises:
        RunNotActive: when the run has already succeeded or failed.
    """
    _require_aware(now)
    view = _index_steps(template, run, steps)
    if run.status is RunStatus.CANCELLED:
        return _update(template, run, view, view, ())
    if run.status.is_terminal:
        raise RunNotActive(f"run {run.id} is {run.status.value} and cannot be cancelled")
    original = dict(view)
    for node_id, step in view.items():
        if step.status in (StepStatus.PENDING, StepStatus.RUNNING, StepStatus.WAITING):
            view[node_id] = replace(step, status=StepStatus.CANCELLED, finished_at=now, resume_at=None)
    cancelled = replace(run, status=RunStatus.CANCELLED, completed_at=now, error=reason, next_wakeup_at=None)
    return _update(template, cancelled, original, view, (RunCancelled(run_id=run.id, at=now, reason=reason),))


def begin_waiting(step: StepRun, *, attempt: int, now: datetime, resume_at: datetime | None = None) -> StepTransition:
    """Park a running attempt until an outside signal (an approval) or until ``resume_at`` (a timer).

    A waiting step is completed by :func:`complete_step` (outside signal) or by the scheduler at
    ``resume_at`` (it then succeeds). The step's timeout still applies while it waits. Repeating the same
    call is a no-op.

    Raises:
        StepStateConflict: when the attempt is not the step's running attempt.
    """
    _require_aware(now)
    if step.status is StepStatus.WAITING and step.attempt_number == attempt and step.resume_at == resume_at:
        return StepTransition(step=step, events=(), changed=False)
    if step.status is not StepStatus.RUNNING or step.attempt_number != attempt:
        raise StepStateConflict(
            f"step {step.node_id!r} is {step.status.value} at attempt {step.attempt_number}; "
            f"attempt {attempt} cannot start waiting"
        )
    waiting = replace(step, status=StepStatus.WAITING, resume_at=resume_at)
    event = StepWaiting(run_id=step.run_id, at=now, node_id=step.node_id, attempt=attempt, resume_at=resume_at)
    return StepTransition(step=waiting, events=(event,), changed=True)


def complete_step(
    template: WorkflowTemplate,
    step: StepRun,
    *,
    attempt: int,
    outcome: StepOutcome | str,
    now: datetime,
    outputs: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> StepTransition:
    """Record the result of a step attempt (from its executor or from an outside signal).

    Works on a ``running`` or ``waiting`` attempt. The first result recorded for an attempt wins: a result
    for an older attempt, for an attempt already settled (e.g. failed by its timeout), or for a cancelled
    or skipped step is a no-op, so a redelivered or late message changes nothing. Call :func:`advance`
    next.

    Args:
        template: The run's template (for the retry policy).
        step: The step.
        attempt: The attempt the result belongs to.
        outcome: ``succeeded`` or ``failed``.
        now: When the result is recorded.
        outputs: The attempt's outputs (kept on failure too: a denied approval reports its votes).
        error: Why the attempt failed.

    Raises:
        InvalidStepResult: for an unknown outcome, outputs that are not an object, or an attempt below 1.
        StepStateConflict: for an attempt that has not started.
        UnknownNode: when the template has no such node.
    """
    _require_aware(now)
    try:
        result = StepOutcome(outcome)
    except ValueError:
        raise InvalidStepResult(f"outcome {outcome!r} must be 'succeeded' or 'failed'") from None
    if outputs is not None and not (isinstance(outputs, Mapping) and all(isinstance(k, str) for k in outputs)):
        raise InvalidStepResult("step outputs must be an object with string keys")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise InvalidStepResult(f"attempt {attempt!r} must be a positive integer")
    node = template.node(step.node_id)
    if attempt > step.attempt_number:
        raise StepStateConflict(
            f"step {step.node_id!r} is at attempt {step.attempt_number}; attempt {attempt} has not started"
        )
    if attempt < step.attempt_number or not step.status.is_active:
        return StepTransition(step=step, events=(), changed=False)
    values = copy.deepcopy(dict(outputs or {}))
    if result is StepOutcome.SUCCEEDED:
        done = replace(step, status=StepStatus.SUCCEEDED, finished_at=now, outputs=values, error=None, resume_at=None)
        event: WorkflowEvent = StepCompleted(
            run_id=step.run_id, at=now, node_id=step.node_id, attempt=attempt, outputs=copy.deepcopy(values)
        )
        return StepTransition(step=done, events=(event,), changed=True)
    reason = error or "step failed"
    failed = replace(step, status=StepStatus.FAILED, finished_at=now, outputs=values, error=reason, resume_at=None)
    return StepTransition(step=failed, events=(_failed_event(node, failed, now),), changed=True)


def _failed_event(node: Node, step: StepRun, now: datetime) -> StepFailed:
    retry_at = _retry_due(node, step) if _can_retry(node, step) else None
    return StepFailed(
        run_id=step.run_id,
        at=now,
        node_id=step.node_id,
        attempt=step.attempt_number,
        error=step.error or "step failed",
        will_retry=retry_at is not None,
        retry_at=retry_at,
    )


def _can_retry(node: Node, step: StepRun) -> bool:
    # A failed step that never started (attempt 0) failed on its condition: retrying cannot change that.
    return step.status is StepStatus.FAILED and 0 < step.attempt_number < node.retry.max_attempts


def _retry_due(node: Node, step: StepRun) -> datetime:
    # A failed step always has finished_at when written by this module; fall back to its start so that a
    # hand-edited row cannot stall the run forever.
    failed_at = step.finished_at or step.started_at
    if failed_at is None:
        raise StepStateConflict(f"failed step {step.node_id!r} has no failure time")
    return failed_at + node.retry.delay_after(step.attempt_number)


def step_deadline(node: Node, step: StepRun) -> datetime | None:
    """When the step's current attempt times out (``started_at + timeout_s``), or ``None``."""
    if node.timeout_s is None or step.started_at is None or not step.status.is_active:
        return None
    return step.started_at + timedelta(seconds=node.timeout_s)


def _settled(node: Node, step: StepRun) -> bool:
    if step.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.CANCELLED):
        return True
    return step.status is StepStatus.FAILED and not _can_retry(node, step)


def _trigger_skip_reason(node: Node, upstream: list[StepRun]) -> SkipReason | None:
    """Whether the predecessors' outcomes (all settled) skip the node, per its ``run_on``."""
    failed = any(s.status in (StepStatus.FAILED, StepStatus.CANCELLED) for s in upstream)
    if node.run_on is RunOn.ALWAYS:
        return None
    if node.run_on is RunOn.FAILURE:
        return None if failed else SkipReason.NO_UPSTREAM_FAILURE
    if failed:
        return SkipReason.UPSTREAM_FAILED
    if upstream and all(s.status is StepStatus.SKIPPED for s in upstream):
        return SkipReason.UPSTREAM_SKIPPED
    return None


def _step_view(step: StepRun) -> dict[str, Any]:
    return {
        "status": step.status.value,
        "attempt": step.attempt_number,
        "outputs": copy.deepcopy(dict(step.outputs)),
    }


def _context(run_inputs: Mapping[str, Any], steps: Mapping[str, StepRun], node_ids: Iterable[str]) -> dict[str, Any]:
    return {
        "inputs": copy.deepcopy(dict(run_inputs)),
        "steps": {node_id: _step_view(steps[node_id]) for node_id in node_ids},
    }


def resolve_step_inputs(
    template: WorkflowTemplate, run: WorkflowRun, steps: Iterable[StepRun], node_id: str
) -> dict[str, Any]:
    """Return a step's resolved inputs: ``{"inputs": run inputs, "steps": {upstream id: {status, attempt,
    outputs}}}`` over every node upstream of ``node_id`` (the same mapping its ``when`` reads).

    Raises:
        UnknownNode: when the template has no such node.
    """
    template.node(node_id)
    view = _index_steps(template, run, steps)
    return _context(run.inputs, view, template.ancestors(node_id))


def _index_steps(template: WorkflowTemplate, run: WorkflowRun, steps: Iterable[StepRun]) -> dict[str, StepRun]:
    """Steps by node id in topological order; a node without a stored step is a fresh pending one."""
    given: dict[str, StepRun] = {}
    for step in steps:
        template.node(step.node_id)
        if step.run_id != run.id:
            raise StepStateConflict(f"step {step.node_id!r} belongs to run {step.run_id}, not {run.id}")
        given[step.node_id] = step
    return {
        node_id: given.get(node_id) or StepRun(run_id=run.id, node_id=node_id) for node_id in template.topological_order
    }


def _start(node: Node, step: StepRun, run: WorkflowRun, inputs: dict[str, Any], now: datetime) -> StartStep:
    attempt = step.attempt_number + 1
    return StartStep(
        node_id=node.id,
        node_type=node.type,
        attempt=attempt,
        idempotency_key=step_idempotency_key(run.id, node.id, attempt),
        inputs=inputs,
        config=copy.deepcopy(dict(node.config)),
        deadline_at=None if node.timeout_s is None else now + timedelta(seconds=node.timeout_s),
    )


def _started(step: StepRun, action: StartStep, now: datetime) -> StepRun:
    return replace(
        step,
        status=StepStatus.RUNNING,
        attempt_number=action.attempt,
        started_at=now,
        finished_at=None,
        resume_at=None,
        inputs=copy.deepcopy(dict(action.inputs)),
        outputs={},
        error=None,
        skip_reason=None,
    )


def _timed_out(node: Node, step: StepRun, now: datetime) -> StepRun:
    return replace(
        step,
        status=StepStatus.FAILED,
        finished_at=now,
        resume_at=None,
        error=f"timed out after {node.timeout_s:g}s",
    )


def _condition_failed(step: StepRun, action: FailStep, now: datetime) -> StepRun:
    return replace(step, status=StepStatus.FAILED, finished_at=now, error=action.error)


def _resumed(step: StepRun, now: datetime) -> StepRun:
    return replace(step, status=StepStatus.SUCCEEDED, finished_at=now, resume_at=None, error=None)


def _skipped(step: StepRun, reason: SkipReason, now: datetime) -> StepRun:
    return replace(step, status=StepStatus.SKIPPED, finished_at=now, skip_reason=reason)


def _run_outputs(
    template: WorkflowTemplate, run: WorkflowRun, steps: Mapping[str, StepRun]
) -> tuple[dict[str, Any], list[str]]:
    """The run's outputs (``null`` for one that failed) and the errors of those that failed."""
    context = _context(run.inputs, steps, template.topological_order)
    outputs: dict[str, Any] = {}
    errors: list[str] = []
    for name, expr in template._output_expressions.items():
        try:
            if isinstance(expr, ExpressionError):
                raise ExpressionEvaluationError(f"does not compile: {expr.detail}")
            outputs[name] = copy.deepcopy(expr.evaluate(context))
        except ExpressionEvaluationError as exc:
            outputs[name] = None
            errors.append(f"output {name!r}: {exc}")
    return outputs, errors


def schedule(template: WorkflowTemplate, run: WorkflowRun, steps: Iterable[StepRun], *, now: datetime) -> Schedule:
    """Decide what a run needs at ``now``: a pure function of the template, the stored states and ``now``.

    Nodes are visited in topological order over a working copy of the states, so the decisions cascade in
    one call: a timed-out step whose backoff is zero restarts at once, a skip propagates down its path,
    and a run whose last step is skipped completes. Applying the schedule and scheduling again at the same
    ``now`` yields no actions, which is what makes a restart safe: the I/O layer reloads the stored states
    and gets the decisions it would have made without the restart.

    A run that is not ``running`` needs nothing (an empty schedule).

    Raises:
        UnknownNode: for a stored step of a node the template does not have.
        StepStateConflict: for a stored step of another run.
    """
    _require_aware(now)
    view = _index_steps(template, run, steps)
    if run.status is not RunStatus.RUNNING:
        return Schedule()
    graph = template._graph
    conditions = template._conditions
    actions: list[StepAction] = []
    retries: list[PendingRetry] = []
    for node_id in graph.order:
        node = graph.nodes[node_id]
        step = view[node_id]
        if step.status.is_active:
            deadline = step_deadline(node, step)
            if deadline is not None and now >= deadline:
                actions.append(TimeOutStep(node_id=node_id, attempt=step.attempt_number, deadline_at=deadline))
                step = view[node_id] = _timed_out(node, step, now)
            elif step.status is StepStatus.WAITING and step.resume_at is not None and now >= step.resume_at:
                actions.append(ResumeStep(node_id=node_id, attempt=step.attempt_number, resume_at=step.resume_at))
                step = view[node_id] = _resumed(step, now)
        if step.status is StepStatus.FAILED and _can_retry(node, step):
            due = _retry_due(node, step)
            if now >= due:
                start = _start(node, step, run, _context(run.inputs, view, graph.ancestors[node_id]), now)
                actions.append(start)
                view[node_id] = _started(step, start, now)
            else:
                retries.append(PendingRetry(node_id=node_id, next_attempt=step.attempt_number + 1, due_at=due))
        elif step.status is StepStatus.PENDING:
            predecessors = graph.predecessors[node_id]
            if not all(_settled(graph.nodes[p], view[p]) for p in predecessors):
                continue
            reason = _trigger_skip_reason(node, [view[p] for p in predecessors])
            if reason is None:
                inputs = _context(run.inputs, view, graph.ancestors[node_id])
                try:
                    condition = conditions.get(node_id)
                    if isinstance(condition, ExpressionError):
                        raise ExpressionEvaluationError(f"does not compile: {condition.detail}")
                    if condition is not None and not condition.test(inputs):
                        reason = SkipReason.CONDITION_FALSE
                except ExpressionEvaluationError as exc:
                    failure = FailStep(node_id=node_id, error=f"condition {node.when!r} failed: {exc}")
                    actions.append(failure)
                    view[node_id] = _condition_failed(step, failure, now)
                    continue
            if reason is not None:
                actions.append(SkipStep(node_id=node_id, reason=reason))
                view[node_id] = _skipped(step, reason, now)
            else:
                start = _start(node, step, run, inputs, now)
                actions.append(start)
                view[node_id] = _started(step, start, now)
    completion: RunCompletion | None = None
    wakeups: list[datetime] = [retry.due_at for retry in retries]
    if all(_settled(graph.nodes[n], view[n]) for n in graph.order):
        failed = tuple(n for n in graph.order if view[n].status in (StepStatus.FAILED, StepStatus.CANCELLED))
        outputs, output_errors = _run_outputs(template, run, view)
        completion = RunCompletion(
            status=RunStatus.FAILED if failed else RunStatus.SUCCEEDED,
            outputs=outputs,
            failed_nodes=failed,
            error="; ".join(output_errors) or None,
        )
    else:
        for node_id in graph.order:
            step = view[node_id]
            deadline = step_deadline(graph.nodes[node_id], step)
            if deadline is not None:
                wakeups.append(deadline)
            if step.status is StepStatus.WAITING and step.resume_at is not None:
                wakeups.append(step.resume_at)
    return Schedule(
        actions=tuple(actions),
        retries=tuple(retries),
        completion=completion,
        next_wakeup_at=min(wakeups) if wakeups and completion is None else None,
    )


def apply_schedule(
    template: WorkflowTemplate,
    run: WorkflowRun,
    steps: Iterable[StepRun],
    plan: Schedule,
    *,
    now: datetime,
) -> RunUpdate:
    """Apply a schedule computed by :func:`schedule` over the same states and ``now``.

    Raises:
        RunNotActive: when the schedule changes something and the run is not running.
        StepStateConflict: when a decision does not match the step's state (a stale schedule).
    """
    _require_aware(now)
    view = _index_steps(template, run, steps)
    original = dict(view)
    if plan.has_changes and run.status is not RunStatus.RUNNING:
        raise RunNotActive(f"run {run.id} is {run.status.value}; its steps cannot change")
    events: list[WorkflowEvent] = []
    for action in plan.actions:
        node = template.node(action.node_id)
        step = view[action.node_id]
        if isinstance(action, StartStep):
            startable = step.status is StepStatus.PENDING or _can_retry(node, step)
            if not startable or step.attempt_number != action.attempt - 1:
                raise _stale(step, f"start attempt {action.attempt}")
            view[node.id] = _started(step, action, now)
            events.append(
                StepStarted(
                    run_id=run.id,
                    at=now,
                    node_id=node.id,
                    node_type=node.type,
                    attempt=action.attempt,
                    idempotency_key=action.idempotency_key,
                )
            )
        elif isinstance(action, SkipStep):
            if step.status is not StepStatus.PENDING:
                raise _stale(step, "skip")
            view[node.id] = _skipped(step, action.reason, now)
            events.append(StepSkipped(run_id=run.id, at=now, node_id=node.id, reason=action.reason))
        elif isinstance(action, FailStep):
            if step.status is not StepStatus.PENDING:
                raise _stale(step, "fail")
            failed = view[node.id] = _condition_failed(step, action, now)
            events.append(_failed_event(node, failed, now))
        elif isinstance(action, TimeOutStep):
            if not step.status.is_active or step.attempt_number != action.attempt:
                raise _stale(step, f"time out attempt {action.attempt}")
            failed = view[node.id] = _timed_out(node, step, now)
            events.append(_failed_event(node, failed, now))
        else:
            if step.status is not StepStatus.WAITING or step.attempt_number != action.attempt:
                raise _stale(step, f"resume attempt {action.attempt}")
            done = view[node.id] = _resumed(step, now)
            events.append(
                StepCompleted(run_id=run.id, at=now, node_id=node.id, attempt=done.attempt_number, outputs={})
            )
    updated = replace(run, next_wakeup_at=plan.next_wakeup_at)
    completion = plan.completion
    if completion is not None:
        updated = replace(
            updated,
            status=completion.status,
            completed_at=now,
            outputs=completion.outputs,
            next_wakeup_at=None,
            error=completion.error,
        )
        if completion.status is RunStatus.SUCCEEDED:
            events.append(RunCompleted(run_id=run.id, at=now, outputs=copy.deepcopy(dict(completion.outputs))))
        else:
            failed_steps = f"steps failed: {', '.join(completion.failed_nodes)}" if completion.failed_nodes else ""
            error = "; ".join(part for part in (failed_steps, completion.error or "") if part)
            updated = replace(updated, error=error)
            events.append(
                RunFailed(
                    run_id=run.id,
                    at=now,
                    failed_nodes=completion.failed_nodes,
                    error=error,
                    outputs=copy.deepcopy(dict(completion.outputs)),
                )
            )
    return _update(template, updated, original, view, tuple(events))


def _stale(step: StepRun, what: str) -> StepStateConflict:
    return StepStateConflict(
        f"cannot {what} of step {step.node_id!r}: it is {step.status.value} at attempt {step.attempt_number}"
    )


def _update(
    template: WorkflowTemplate,
    run: WorkflowRun,
    original: Mapping[str, StepRun],
    view: Mapping[str, StepRun],
    events: tuple[WorkflowEvent, ...],
) -> RunUpdate:
    ordered = tuple(view[node_id] for node_id in template.topological_order)
    changed = tuple(step for step in ordered if step != original[step.node_id])
    return RunUpdate(run=run, steps=ordered, changed=changed, events=events)


def advance(template: WorkflowTemplate, run: WorkflowRun, steps: Iterable[StepRun], *, now: datetime) -> Advance:
    """Schedule and apply in one call: what the I/O layer runs after every change and at every wake-up.

    Returns:
        The updated run (with ``next_wakeup_at``), every step, the changed ones, the events, and the
        schedule (its :attr:`Schedule.start` lists the attempts to dispatch).
    """
    stored = tuple(steps)
    plan = schedule(template, run, stored, now=now)
    update = apply_schedule(template, run, stored, plan, now=now)
    return Advance(run=update.run, steps=update.steps, changed=update.changed, events=update.events, schedule=plan)
