"""Parsing and validating a template (DAG, step types, retry, timeout, ``when`` expressions, outputs) and
resolving a run's inputs against it.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from uuid import UUID

from stella.workflow.domain.conditions import STEP_FIELDS, parse_expression
from stella.workflow.domain.errors import (
    DuplicateNodeId,
    EmptyTemplate,
    ExpressionError,
    InvalidCondition,
    InvalidRetryPolicy,
    InvalidTemplate,
    InvalidTemplateOutput,
    InvalidTimeout,
    MissingRunInput,
    UnknownRunInput,
    UnknownStepType,
)
from stella.workflow.domain.states import RunOn
from stella.workflow.domain.template import (
    Edge,
    InputSpec,
    Node,
    RetryPolicy,
    WorkflowTemplate,
    check_edges,
    check_nodes_unique,
)

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
    nodes = check_nodes_unique(parsed.nodes)
    check_edges(parsed.edges, nodes)
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
