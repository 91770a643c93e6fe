"""Workflow templates: nodes, edges, retry policies, declared inputs, and their deterministic order."""

from __future__ import annotations

import copy
import graphlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any
from uuid import UUID

from stella.workflow.domain.conditions import Expression, parse_expression
from stella.workflow.domain.errors import (
    CycleDetected,
    DanglingEdge,
    DuplicateEdge,
    DuplicateNodeId,
    EmptyTemplate,
    ExpressionError,
    UnknownNode,
)
from stella.workflow.domain.states import RunOn


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
        nodes = check_nodes_unique(self.nodes)
        check_edges(self.edges, nodes)
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


def check_nodes_unique(nodes: tuple[Node, ...]) -> dict[str, Node]:
    if not nodes:
        raise EmptyTemplate("a workflow template needs at least one step")
    by_id: dict[str, Node] = {}
    for node in nodes:
        if node.id in by_id:
            raise DuplicateNodeId(node.id)
        by_id[node.id] = node
    return by_id


def check_edges(edges: tuple[Edge, ...], nodes: Mapping[str, Node]) -> None:
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
