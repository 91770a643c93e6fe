"""stella.cel: compile-time checks, references, limits, RE2 and CEL's equality over JSON values."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import pytest

from stella import cel


def evaluate(source: str, **variables: Any) -> Any:
    return cel.compile(source).evaluate(variables)


def test_the_engine_is_named_with_its_installed_version() -> None:
    installed = importlib.metadata.version("cel-python")
    assert cel.ENGINE.split("/") == ["cel-python", installed]
    assert cel.LANGUAGE == "cel"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 == 1.0", True),
        ("1 != 1.0", False),
        ("2 < 2.5 && 3.0 >= 3", True),
        ("true == 1", False),
        ("null == null", True),
        ('{"a": [1, 2.0]} == {"a": [1.0, 2]}', True),
        ('[1, "1"] == [1, 1]', False),
        ("1 in [1.0]", True),
        ('"k" in {"k": 1}', True),
    ],
)
def test_equality_and_ordering_follow_the_specification(source: str, expected: bool) -> None:
    assert evaluate(source) is expected


def test_results_come_back_as_plain_json() -> None:
    value = evaluate('{"n": 1, "x": 1.5, "s": "é", "l": [true, null], "m": {"k": []}}')
    assert value == {"n": 1, "x": 1.5, "s": "é", "l": [True, None], "m": {"k": []}}
    assert type(value["n"]) is int and type(value["l"][0]) is bool
    assert evaluate('timestamp("2025-01-02T03:04:05Z")') == "2025-01-02T03:04:05Z"
    with pytest.raises(cel.ExpressionEvaluationError, match="no JSON form"):
        evaluate('b"bytes"')


@pytest.mark.parametrize("source", ["1 && true", "false || 2", "!1"])
def test_logic_takes_booleans_only(source: str) -> None:
    with pytest.raises(cel.ExpressionEvaluationError):
        evaluate(source)


def test_errors_are_absorbed_by_logic_in_either_order() -> None:
    assert evaluate("m.missing == 1 && false", m={}) is False
    assert evaluate("true || m.missing == 1", m={}) is True


def test_references_are_the_longest_paths_read_and_skip_macro_variables() -> None:
    program = cel.compile(
        'steps.gates.outputs.result == "allow" && inputs["env"] != "prod" '
        "&& steps.deploy.outputs.targets.all(t, t.ok) && has(steps.gates.status) && size(inputs.list[0]) > 0"
    )
    assert program.references == (
        ("steps", "gates", "outputs", "result"),
        ("inputs", "env"),
        ("steps", "deploy", "outputs", "targets"),
        ("steps", "gates", "status"),
        ("inputs", "list"),
    )


def test_unknown_names_are_refused_with_their_position() -> None:
    with pytest.raises(cel.ExpressionSyntaxError, match="unknown name 'stpes'") as info:
        cel.compile("inputs.a == 1 || stpes.x", variables={"inputs", "steps"})
    assert (info.value.line, info.value.column) == (1, 18)
    # A macro's variable is not a free name.
    cel.compile("inputs.list.exists(item, item == 1)", variables={"inputs"})


@pytest.mark.parametrize(
    ("source", "line", "column"),
    [("a ==", 1, 3), ("a == 1\n&& (b", 2, 5), ('"unterminated', 1, 1)],
)
def test_syntax_errors_carry_line_and_column(source: str, line: int, column: int) -> None:
    with pytest.raises(cel.ExpressionSyntaxError) as info:
        cel.compile(source)
    assert (info.value.line, info.value.column) == (line, column)


def test_an_invalid_literal_pattern_is_refused_when_compiled() -> None:
    with pytest.raises(cel.ExpressionSyntaxError, match="invalid RE2 pattern"):
        cel.compile('s.matches("(a)\\\\1")')  # a backreference: RE2 has none
    assert evaluate('s.matches("^(a+)+$")', s="a" * 10_000 + "b") is False


def test_the_cost_limit_is_deterministic() -> None:
    program = cel.compile("xs.all(x, xs.all(y, x + y >= 0))")
    small = program.run({"xs": list(range(10))})
    assert small.value is True
    assert program.run({"xs": list(range(10))}).cost == small.cost
    with pytest.raises(cel.ExpressionCostExceeded, match="cost limit of 1000"):
        program.evaluate({"xs": list(range(10))}, max_cost=1000)
    with pytest.raises(cel.ExpressionCostExceeded):
        program.evaluate({"xs": list(range(1000))})


def test_the_time_limit_is_a_backstop() -> None:
    program = cel.compile("xs.all(x, xs.all(y, x + y >= 0))")
    with pytest.raises(cel.ExpressionCostExceeded, match="time limit"):
        program.evaluate({"xs": list(range(100))}, max_cost=10**9, timeout_s=0.0)


@pytest.mark.parametrize("source", ["(" * 40 + "1" + ")" * 40, "!" * 500 + "true", "x" + ".a" * 400])
def test_deep_nesting_is_refused(source: str) -> None:
    with pytest.raises(cel.ExpressionSyntaxError, match="nests deeper"):
        cel.compile(source)


def test_length_limit() -> None:
    with pytest.raises(cel.ExpressionSyntaxError, match="longer than"):
        cel.compile("1 + " * 2000 + "1")


@pytest.mark.parametrize(
    "source", ["m.missing == 1", "m.missing != 1", "m.missing < 1", "m.missing in [1]", "!m.missing"]
)
def test_an_error_operand_is_an_error_not_false(source: str) -> None:
    with pytest.raises(cel.ExpressionEvaluationError, match="no such member"):
        evaluate(source, m={})
