"""The ``when`` expression language: a small parser and evaluator, no ``eval``."""

from __future__ import annotations

from typing import Any

import pytest

from stella.workflow.domain import ExpressionError, parse_expression

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
        ('inputs.env == "prod" and steps.gate.status == "succeeded"', True),
        ('inputs.env == "dev" or steps.gate.status == "succeeded"', True),
        ('not inputs.env == "dev"', True),
        ("not inputs.dry_run", True),
        ("inputs.flag", True),
        ("inputs.empty", False),
        ("inputs.replicas == 3", True),
        ("inputs.replicas == 3.0", True),
        ("inputs.ratio == 0.5", True),
        ("inputs.replicas != -3", True),
        ('steps.health-check.status == "failed"', True),
        ("steps.health-check.attempt == 2", True),
        ("steps.gate.outputs.scores.1 == 20", True),
        ("steps.gate.outputs.scores.9 == null", True),
        ("inputs.missing == null", True),
        ("inputs.missing.deeper == null", True),
        ("inputs.env.length == null", True),
        ("true", True),
        ("null", False),
        ('"text" == "text"', True),
    ],
)
def test_evaluates(source: str, expected: bool) -> None:
    assert parse_expression(source).test(CONTEXT) is expected


def test_and_binds_tighter_than_or() -> None:
    assert parse_expression("true or false and false").test({}) is True
    assert parse_expression("(true or false) and false").test({}) is False


def test_not_applies_to_the_whole_comparison() -> None:
    assert parse_expression("not true == false").test({}) is True
    assert parse_expression("not not true").test({}) is True


def test_equality_does_not_coerce_types() -> None:
    # Python says True == 1 and "1" != 1; the language keeps JSON types apart in both directions.
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


def test_string_escapes() -> None:
    expression = parse_expression(r"""inputs.s == "say \"hi\"\n\\" and inputs.t == 'it\'s'""")

    assert expression.test({"inputs": {"s": 'say "hi"\n\\', "t": "it's"}}) is True


def test_paths_lists_what_the_expression_reads() -> None:
    expression = parse_expression('steps.gate.outputs.result == "allow" or not (inputs.env == "prod")')

    assert expression.paths == (("steps", "gate", "outputs", "result"), ("inputs", "env"))


@pytest.mark.parametrize(
    ("source", "position", "fragment"),
    [
        ('__import__("os")', 0, "unknown name '__import__'"),
        ("inputs.env == ", 14, "expected a value"),
        ("(inputs.env", 11, "expected ')'"),
        ("inputs.env == 1)", 15, "unexpected ')'"),
        ('"\\q"', 1, "unknown escape"),
        ("inputs.env ; true", 11, "unexpected character ';'"),
        ("and true", 0, "expected a value but found 'and'"),
        ("1 < 2", 2, "unexpected character '<'"),
    ],
)
def test_syntax_errors_carry_a_position(source: str, position: int, fragment: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(source)

    assert caught.value.position == position
    assert fragment in caught.value.detail
    assert caught.value.code == "WF_INVALID_EXPRESSION"


def test_paths_read_data_never_python_attributes() -> None:
    context = {"inputs": {"env": "x", "obj": {"__class__": "plain key"}}}

    assert parse_expression("inputs.env.__class__ == null").test(context) is True
    assert parse_expression('inputs.obj.__class__ == "plain key"').test(context) is True


def test_nesting_is_bounded() -> None:
    with pytest.raises(ExpressionError, match="nested deeper"):
        parse_expression("(" * 40 + "true" + ")" * 40)
    with pytest.raises(ExpressionError, match="nested deeper"):
        parse_expression("not " * 40 + "true")


def test_length_is_bounded() -> None:
    with pytest.raises(ExpressionError, match="longer than"):
        parse_expression("inputs.a == 1 and " * 200 + "true")
