"""``when`` conditions and template outputs: CEL over ``inputs`` and ``steps``, checked when saved."""

from __future__ import annotations

from typing import Any

import pytest

from stella.workflow.domain.conditions import (
    EXPRESSION_ENGINE,
    ExpressionEvaluationError,
    bind_context,
    parse_expression,
)
from stella.workflow.domain.errors import ExpressionError

CONTEXT: dict[str, Any] = {
    "inputs": {"env": "prod", "replicas": 3, "ratio": 0.5, "dry_run": False, "flag": True, "empty": ""},
    "steps": {
        "gate": {"status": "succeeded", "attempt": 1, "outputs": {"result": "allow", "scores": [10, 20]}},
        "health-check": {"status": "failed", "attempt": 2, "outputs": {}},
    },
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('steps.gate.outputs.result == "allow"', True),
        ("steps.gate.outputs.result == 'deny'", False),
        ('inputs.env != "prod"', False),
        ('inputs.env == "prod" && steps.gate.status == "succeeded"', True),
        ('inputs.env == "dev" || steps.gate.status == "succeeded"', True),
        ('!(inputs.env == "dev")', True),
        ("!inputs.dry_run", True),
        ("inputs.flag", True),
        ('inputs.empty == ""', True),
        ("inputs.replicas == 3", True),
        ("inputs.replicas == 3.0", True),
        ("inputs.ratio == 0.5", True),
        ("inputs.replicas != -3", True),
        ("inputs.replicas > 2 && inputs.ratio < 1", True),
        ('steps["health-check"].status == "failed"', True),
        ('steps["health-check"].attempt == 2', True),
        ("steps.gate.outputs.scores[1] == 20", True),
        ("steps.gate.outputs.scores.exists(s, s > 15)", True),
        ("has(inputs.missing)", False),
        ('has(steps.gate.outputs.result) && steps.gate.outputs.result == "allow"', True),
        ('inputs.env in ["prod", "staging"]', True),
        ('inputs.env.matches("^pr")', True),
        ("true", True),
        ('"text" == "text"', True),
    ],
)
def test_evaluates(source: str, expected: bool) -> None:
    assert parse_expression(source).test(CONTEXT) is expected


def test_precedence() -> None:
    assert parse_expression("true || false && false").test({}) is True
    assert parse_expression("(true || false) && false").test({}) is False
    assert parse_expression("!true == false").test({}) is True


def test_equality_does_not_coerce_types() -> None:
    # Python says True == 1; CEL keeps booleans, numbers and strings apart.
    assert parse_expression("inputs.flag == 1").test(CONTEXT) is False
    assert parse_expression("inputs.replicas == true").test(CONTEXT) is False
    assert parse_expression('inputs.replicas == "3"').test(CONTEXT) is False
    assert parse_expression("inputs.dry_run == 0").test(CONTEXT) is False
    assert parse_expression("inputs.dry_run == false").test(CONTEXT) is True


def test_structured_values_compare_by_content() -> None:
    context = {"inputs": {"a": {"x": [1, True]}, "b": {"x": [1, True]}, "c": {"x": [1, 1]}}}

    assert parse_expression("inputs.a == inputs.b").test(context) is True
    assert parse_expression("inputs.a == inputs.c").test(context) is False


def test_a_path_returns_its_value() -> None:
    assert parse_expression("steps.gate.outputs").evaluate(CONTEXT) == {"result": "allow", "scores": [10, 20]}


def test_a_context_converted_once_serves_every_expression_like_the_context_itself() -> None:
    sources = [
        "steps.gate.outputs",
        'steps["health-check"].status == "failed"',
        "steps.gate.outputs.scores.map(s, s * 2)",
        "inputs",
        "{'env': inputs.env, 'n': size(steps.gate.outputs.scores)}",
    ]
    bound = bind_context(CONTEXT)
    for source in sources + sources:  # twice: an evaluation leaves the converted values as they were
        expression = parse_expression(source)
        assert expression.evaluate(bound) == expression.evaluate(CONTEXT)
    assert parse_expression("steps.gate.outputs.scores").evaluate(bound) == [10, 20]
    with pytest.raises(ExpressionEvaluationError, match="missing"):
        parse_expression("steps.gate.outputs.missing").evaluate(bound)
    assert parse_expression("size(inputs)").evaluate(bind_context({})) == 0


def test_string_escapes() -> None:
    expression = parse_expression(r"""inputs.s == "say \"hi\"\n\\" && inputs.t == 'it\'s'""")

    assert expression.test({"inputs": {"s": 'say "hi"\n\\', "t": "it's"}, "steps": {}}) is True


def test_paths_lists_what_the_expression_reads() -> None:
    expression = parse_expression(
        'steps.gate.outputs.result == "allow" || !(inputs.env == "prod") || steps["health-check"].status == "x"'
    )

    assert expression.paths == (
        ("steps", "gate", "outputs", "result"),
        ("inputs", "env"),
        ("steps", "health-check", "status"),
    )


@pytest.mark.parametrize(
    ("source", "position", "fragment"),
    [
        ('__import__("os")', 0, "unknown function '__import__'"),
        ("config.env == 1", 0, "unknown name 'config'"),
        ("inputs.env == ", 11, "syntax error"),
        ("inputs.env and true", 11, "syntax error"),
        ('inputs.env == "prod', 14, "syntax error"),
        ("inputs.env == 1\n&& (", 19, "syntax error"),
    ],
)
def test_syntax_errors_carry_a_position(source: str, position: int, fragment: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(source)

    assert caught.value.position == position
    assert fragment in caught.value.detail
    assert caught.value.code == "WF_INVALID_EXPRESSION"
    assert caught.value.errors[0]["position"] == position


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("inputs.missing == 1", "no such member"),
        ("steps.gate.outputs.scores[9] == 1", "index"),
        ("inputs.env", "must be true or false"),
        ("inputs.env.__class__ == 1", "field selection"),
    ],
)
def test_a_condition_that_fails_or_is_not_boolean_is_an_error(source: str, message: str) -> None:
    with pytest.raises(ExpressionEvaluationError, match=message) as caught:
        parse_expression(source).test(CONTEXT)
    assert EXPRESSION_ENGINE in str(caught.value)


def test_evaluation_has_a_cost_limit() -> None:
    context = {"inputs": {"xs": list(range(1000))}, "steps": {}}
    # The cost limit stops it; on a machine busy enough, the time limit may stop it first.
    with pytest.raises(ExpressionEvaluationError, match=r"cost limit|time limit"):
        parse_expression("inputs.xs.all(x, inputs.xs.all(y, x + y >= 0))").test(context)


def test_nesting_and_length_are_bounded() -> None:
    with pytest.raises(ExpressionError, match="nests deeper"):
        parse_expression("(" * 40 + "true" + ")" * 40)
    with pytest.raises(ExpressionError, match="longer than"):
        parse_expression("inputs.a == 1 && " * 200 + "true")
