"""Template parsing and validation: every malformed template is refused with a precise, stable error."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pytest

from stella.workflow.domain.errors import (
    CycleDetected,
    DanglingEdge,
    DuplicateEdge,
    DuplicateNodeId,
    EmptyTemplate,
    InvalidCondition,
    InvalidRetryPolicy,
    InvalidTemplate,
    InvalidTemplateOutput,
    InvalidTimeout,
    UnknownNode,
    UnknownStepType,
)
from stella.workflow.domain.states import RunOn
from stella.workflow.domain.template import Edge, Node, RetryPolicy, WorkflowTemplate, topological_order
from stella.workflow.domain.validation import MAX_TIMEOUT_S, parse_template, validate_template

KNOWN = frozenset({"task", "approval", "wait"})


def node(node_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "task", **fields}


def template(nodes: list[dict[str, Any]], edges: Sequence[tuple[str, str]] = (), **fields: Any) -> dict[str, Any]:
    return {
        "name": "sample",
        "version": 1,
        "nodes": nodes,
        "edges": [{"from": source, "to": target} for source, target in edges],
        **fields,
    }


def test_a_valid_template_parses_into_the_model() -> None:
    data = template(
        [
            node("build", config={"image": "x"}, retry={"max_attempts": 3, "backoff_s": 5}, timeout_s=60),
            node("notify", when='inputs.env == "prod"', run_on="always"),
        ],
        [("build", "notify")],
        inputs=[{"name": "env"}],
        outputs={"built": 'steps.build.status == "succeeded"'},
    )

    parsed = validate_template(data, KNOWN)

    assert parsed.nodes[0] == Node(
        id="build", type="task", config={"image": "x"}, retry=RetryPolicy(3, 5), timeout_s=60
    )
    assert parsed.nodes[1].run_on is RunOn.ALWAYS
    assert parsed.edges == (Edge("build", "notify"),)
    assert parsed.is_builtin


def test_the_json_form_round_trips() -> None:
    tenant = UUID(int=7)
    data = template(
        [node("a", retry={"max_attempts": 2, "backoff_s": 1.5}), node("b", when="inputs.go", run_on="failure")],
        [("a", "b")],
        inputs=[{"name": "go", "required": False, "default": True, "description": "d"}],
        outputs={"a_out": "steps.a.outputs"},
    )
    parsed = validate_template(parse_template(data, tenant_id=tenant), KNOWN)

    again = parse_template(parsed.to_dict(), tenant_id=tenant)

    assert again == parsed
    assert not again.is_builtin


def test_empty_template_is_refused() -> None:
    with pytest.raises(EmptyTemplate) as caught:
        validate_template(template([]), KNOWN)

    assert caught.value.code == "WF_TEMPLATE_EMPTY"
    assert caught.value.status == 400


def test_duplicate_node_id_is_named() -> None:
    with pytest.raises(DuplicateNodeId) as caught:
        validate_template(template([node("a"), node("b"), node("a")]), KNOWN)

    assert caught.value.node_id == "a"
    assert caught.value.code == "WF_DUPLICATE_NODE"


def test_unknown_step_type_names_the_node_and_the_type() -> None:
    with pytest.raises(UnknownStepType) as caught:
        validate_template(template([node("a"), {"id": "ship-it", "type": "teleport"}]), KNOWN)

    error = caught.value
    assert (error.node_id, error.step_type, error.code) == ("ship-it", "teleport", "WF_UNKNOWN_STEP_TYPE")
    assert "'ship-it'" in error.detail
    assert "'teleport'" in error.detail


@pytest.mark.parametrize(
    ("edge", "missing"), [(("a", "ghost"), "ghost"), (("phantom", "a"), "phantom")], ids=["to", "from"]
)
def test_dangling_edge_names_the_missing_node(edge: tuple[str, str], missing: str) -> None:
    with pytest.raises(DanglingEdge) as caught:
        validate_template(template([node("a"), node("b")], [("a", "b"), edge]), KNOWN)

    assert caught.value.missing == missing
    assert caught.value.code == "WF_DANGLING_EDGE"
    assert repr(missing) in caught.value.detail


def test_duplicate_edge_is_refused() -> None:
    with pytest.raises(DuplicateEdge) as caught:
        validate_template(template([node("a"), node("b")], [("a", "b"), ("a", "b")]), KNOWN)

    assert (caught.value.source, caught.value.target) == ("a", "b")


def test_cycle_names_its_nodes_in_order() -> None:
    data = template(
        [node("start"), node("c"), node("a"), node("b"), node("end")],
        [("start", "a"), ("a", "b"), ("b", "c"), ("c", "a"), ("c", "end")],
    )

    with pytest.raises(CycleDetected) as caught:
        validate_template(data, KNOWN)

    # Starts at the first declared node of the cycle and follows the edges.
    assert caught.value.cycle == ("c", "a", "b")
    assert caught.value.detail == "the steps form a cycle: c -> a -> b -> c"
    assert caught.value.code == "WF_CYCLE"


def test_a_self_loop_is_a_cycle() -> None:
    with pytest.raises(CycleDetected) as caught:
        validate_template(template([node("a"), node("b")], [("a", "b"), ("b", "b")]), KNOWN)

    assert caught.value.cycle == ("b",)


def test_a_template_built_in_code_cannot_bypass_graph_checks() -> None:
    broken = WorkflowTemplate(
        name="x", version=1, nodes=(Node("a", "task"), Node("b", "task")), edges=(Edge("a", "b"), Edge("b", "a"))
    )

    with pytest.raises(CycleDetected):
        topological_order(broken)


@pytest.mark.parametrize(
    "retry",
    [
        {"max_attempts": 0},
        {"max_attempts": 101},
        {"max_attempts": -1},
        {"max_attempts": "3"},
        {"max_attempts": True},
        {"max_attempts": 1.5},
        {"backoff_s": -1},
        {"backoff_s": "10"},
        {"backoff_s": 86_401},
        {"backoff_s": math.inf},
        {"backoff_s": math.nan},
    ],
)
def test_bad_retry_policy_is_refused(retry: dict[str, Any]) -> None:
    with pytest.raises(InvalidRetryPolicy) as caught:
        validate_template(template([node("a"), node("flaky", retry=retry)]), KNOWN)

    assert caught.value.node_id == "flaky"
    assert caught.value.code == "WF_INVALID_RETRY"


def test_unknown_retry_field_is_refused() -> None:
    with pytest.raises(InvalidTemplate, match="unknown fields: attempts"):
        validate_template(template([node("a", retry={"attempts": 3})]), KNOWN)


@pytest.mark.parametrize("timeout", [0, -5, "30", True, MAX_TIMEOUT_S + 1, math.nan])
def test_bad_timeout_is_refused(timeout: Any) -> None:
    with pytest.raises(InvalidTimeout) as caught:
        validate_template(template([node("slow", timeout_s=timeout)]), KNOWN)

    assert caught.value.node_id == "slow"
    assert caught.value.code == "WF_INVALID_TIMEOUT"


def test_no_timeout_and_fractional_timeout_are_accepted() -> None:
    parsed = validate_template(template([node("a", timeout_s=None), node("b", timeout_s=0.5)]), KNOWN)

    assert [n.timeout_s for n in parsed.nodes] == [None, 0.5]


@pytest.mark.parametrize(
    ("when", "fragment"),
    [
        ('inputs.env = "prod"', "syntax error at '= \"prod\"'"),
        ("inputs.env ==", "syntax error"),
        ('(inputs.env == "prod"', "syntax error"),
        ('inputs.env == "prod', "syntax error"),
        ("config.env == 1", "unknown name 'config'"),
        ("inputs.env == 'a' 'b'", "syntax error"),
        ("inputs.env and true", "syntax error"),
        ("inputs.env.explode()", "unknown function 'explode'"),
        ("inputs.env.matches('(a)\\\\1')", "invalid RE2 pattern"),
    ],
)
def test_when_that_does_not_compile_is_refused(when: str, fragment: str) -> None:
    data = template([node("a"), node("b", when=when)], [("a", "b")], inputs=[{"name": "env"}])

    with pytest.raises(InvalidCondition) as caught:
        validate_template(data, KNOWN)

    assert caught.value.node_id == "b"
    assert caught.value.code == "WF_INVALID_CONDITION"
    assert fragment in caught.value.detail


def test_an_empty_when_is_refused() -> None:
    with pytest.raises(InvalidCondition, match="empty expression"):
        validate_template(template([node("a", when="")]), KNOWN)


def test_when_error_reports_the_position() -> None:
    with pytest.raises(InvalidCondition, match=r"at line 1, column 13 \(position 12\)") as caught:
        validate_template(template([node("a", when="inputs.x == = 1")], inputs=[{"name": "x"}]), KNOWN)
    assert caught.value.status == 400
    assert caught.value.errors[0]["line"] == 1 and caught.value.errors[0]["column"] == 13


@pytest.mark.parametrize(
    ("when", "fragment"),
    [
        ('steps.sibling.status == "succeeded"', "'sibling', which is not upstream"),
        ('steps.nowhere.status == "succeeded"', "'nowhere', which does not exist"),
        ('inputs.region == "eu"', "input 'region', which the template does not declare"),
        ('steps.root.result == "x"', "not 'result'"),
        ('steps.root.status.code == "x"', "'status' has no fields"),
        ("steps", "'steps' must name a step"),
    ],
)
def test_when_that_reads_what_it_cannot_see_is_refused(when: str, fragment: str) -> None:
    data = template(
        [node("root"), node("sibling"), node("target", when=when)],
        [("root", "sibling"), ("root", "target")],
        inputs=[{"name": "env"}],
    )

    with pytest.raises(InvalidCondition) as caught:
        validate_template(data, KNOWN)

    assert caught.value.node_id == "target"
    assert fragment in caught.value.detail


def test_when_may_read_any_upstream_step_not_only_direct_predecessors() -> None:
    data = template(
        [node("a"), node("b"), node("c", when='steps.a.outputs.verdict == "allow" && inputs.env != "dev"')],
        [("a", "b"), ("b", "c")],
        inputs=[{"name": "env"}],
    )

    assert validate_template(data, KNOWN).nodes[2].when is not None


def test_run_on_failure_without_predecessor_is_refused() -> None:
    with pytest.raises(InvalidTemplate, match="could never run"):
        validate_template(template([node("cleanup", run_on="failure")]), KNOWN)


def test_unknown_run_on_is_refused() -> None:
    with pytest.raises(InvalidTemplate, match="run_on 'sometimes'"):
        validate_template(template([node("a", run_on="sometimes")]), KNOWN)


def test_unknown_node_field_is_refused() -> None:
    with pytest.raises(InvalidTemplate, match="step #1 has unknown fields: retries"):
        validate_template(template([node("a", retries=3)]), KNOWN)


@pytest.mark.parametrize("bad_id", ["", "1st", "has space", "a.b", "x" * 65, 7])
def test_bad_node_id_is_refused(bad_id: Any) -> None:
    with pytest.raises(InvalidTemplate, match="step id"):
        validate_template(template([node(bad_id)]), KNOWN)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"name": ""}, "template name"),
        ({"name": "Has Caps"}, "template name"),
        ({"version": 0}, "template version"),
        ({"version": "2"}, "template version"),
        ({"inputs": [{"name": "a"}, {"name": "a"}]}, "declared more than once"),
        ({"inputs": [{"name": "a", "default": 1}]}, "cannot have a default"),
        ({"inputs": [{"name": "a b"}]}, "input name"),
        ({"nodes": "a"}, "must be a list"),
        ({"colour": "red"}, "unknown fields: colour"),
    ],
)
def test_bad_template_fields_are_refused(fields: dict[str, Any], fragment: str) -> None:
    data = {**template([node("a")]), **fields}

    with pytest.raises(InvalidTemplate) as caught:
        validate_template(data, KNOWN)

    assert fragment in caught.value.detail


@pytest.mark.parametrize(
    ("outputs", "fragment"),
    [
        ({"x": "steps.a.outputs =="}, "syntax error"),
        ({"x": "steps.ghost.outputs"}, "'ghost', which does not exist"),
        ({"x": 3}, "expression string"),
        ({"bad name": "steps.a.status"}, "output name"),
    ],
)
def test_bad_template_output_is_refused(outputs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidTemplateOutput) as caught:
        validate_template(template([node("a")], outputs=outputs), KNOWN)

    assert caught.value.code == "WF_INVALID_OUTPUT"
    assert fragment in caught.value.detail


def test_topological_order_breaks_ties_by_declaration_order() -> None:
    parsed = validate_template(template([node("zeta"), node("alpha"), node("mid")]), KNOWN)

    assert topological_order(parsed) == ("zeta", "alpha", "mid")


def test_topological_order_respects_edges_then_declaration() -> None:
    data = template(
        [node("report"), node("test"), node("build"), node("lint"), node("ship")],
        [("build", "test"), ("lint", "ship"), ("test", "ship"), ("ship", "report")],
    )

    order = topological_order(validate_template(data, KNOWN))

    assert order == ("build", "test", "lint", "ship", "report")
    assert topological_order(validate_template(data, KNOWN)) == order


def test_graph_queries() -> None:
    parsed = validate_template(
        template([node("a"), node("b"), node("c"), node("d")], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]),
        KNOWN,
    )

    assert parsed.predecessors("d") == ("b", "c")
    assert parsed.successors("a") == ("b", "c")
    assert parsed.ancestors("d") == ("a", "b", "c")
    assert parsed.ancestors("a") == ()
    with pytest.raises(UnknownNode):
        parsed.node("zz")


def test_errors_carry_a_problem_shape() -> None:
    with pytest.raises(UnknownStepType) as caught:
        validate_template(template([{"id": "a", "type": "nope"}]), KNOWN)

    problem = caught.value.as_problem()
    assert problem["code"] == "WF_UNKNOWN_STEP_TYPE"
    assert problem["status"] == 400
    assert problem["title"] == "Unknown step type"
    assert "'a'" in problem["detail"]
