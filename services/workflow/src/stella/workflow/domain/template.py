"""Workflow templates: nodes, edges, retry policies, declared inputs; parsing and validating them (DAG,
step types, retry, timeout, ``when`` expressions, outputs), their deterministic order, and a run's inputs.
"""

from __future__ import annotations

import copy
import graphlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any, Final
from uuid import UUID

from stella.workflow.domain.conditions import STEP_FIELDS, Expression, parse_expression
from stella.workflow.domain.errors import (
    CycleDetected,
    DanglingEdge,
    DuplicateEdge,
    DuplicateNodeId,
    EmptyTemplate,
    ExpressionError,
    InvalidCondition,
    InvalidRetryPolicy,
    InvalidTemplate,
    InvalidTemplateOutput,
    InvalidTimeout,
    MissingRunInput,
    UnknownNode,
    UnknownRunInput,
    UnknownStepType,
)
from stella.workflow.domain.states import RunOn

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
