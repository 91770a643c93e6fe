"""The policy expression language: semantics, parse errors with columns, limits and digests."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest

from stella.promotion.policy import (
    MAX_DEPTH,
    MAX_EXPRESSION_LENGTH,
    MAX_MATCH_SUBJECT_LENGTH,
    MAX_PATTERN_LENGTH,
    InvalidPolicy,
    PolicyEvaluationError,
    PolicyLimitExceeded,
    PolicyRule,
    PolicyStepLimitExceeded,
    PolicySyntaxError,
    compile_policy,
    evaluate_expression,
    parse_expression,
    policy_digest,
)

DOCUMENT: dict[str, Any] = {
    "release": {
        "name": "shop-2025.03",
        "labels": {"team": "payments", "tier-1": True},
        "components": [
            {"name": "api", "digest": "sha256:" + "a" * 64, "tag": "1.4.2", "semver": "1.4.2"},
            {"name": "web", "digest": "sha256:" + "b" * 64, "tag": "latest", "semver": None},
        ],
    },
    "environment": {"name": "prod", "order_index": 2, "required_approvals": 2},
    "security": {"max_cvss": 7.5},
}


def ev(expression: str, document: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    return evaluate_expression(expression, DOCUMENT if document is None else document, **kwargs)


class TestValues:
    @pytest.mark.parametrize(
        ("expression", "expected"),
        [
            ("release.components[0].name", "api"),
            ("release.components[-1].tag", "latest"),
            ("release.components[5]", None),
            ("release.missing", None),
            ("release.missing.deeper[3].x", None),
            ('release.labels["tier-1"]', True),
            ("environment.order_index", 2),
            ("-environment.order_index", -2),
            ("[1, 'two', null, [true]]", [1, "two", None, [True]]),
            ('"tab\\there \\u00e9"', "tab\there \u00e9"),
            ("1.5e2", 150.0),
            ("unknown_root", None),
        ],
    )
    def test_paths_and_literals(self, expression: str, expected: Any) -> None:
        assert ev(expression) == expected

    def test_field_of_a_scalar_is_an_error(self) -> None:
        with pytest.raises(PolicyEvaluationError, match=r"cannot read field 'x' of a string \(column 13\)"):
            ev("release.name.x")

    def test_python_attributes_are_not_reachable(self) -> None:
        # Names only ever read keys of JSON objects: dunder names are just missing keys.
        assert ev("release.__class__") is None
        assert ev("release.components.__len__", {"release": {"components": {}}}) is None
        with pytest.raises(PolicySyntaxError, match="unknown function '__import__'"):
            parse_expression('__import__("os")')

    @pytest.mark.parametrize(
        ("expression", "message"),
        [
            ('release.components["0"]', "a list index must be an integer"),
            ("release.labels[0]", "an object key must be a string"),
            ("release.name[0]", "cannot index a string"),
            ("-release.name", "'-' needs a number"),
        ],
    )
    def test_index_and_negation_type_errors(self, expression: str, message: str) -> None:
        with pytest.raises(PolicyEvaluationError, match=message):
            ev(expression)


class TestOperators:
    @pytest.mark.parametrize(
        ("expression", "expected"),
        [
            ('environment.name == "prod"', True),
            ('environment.name != "prod"', False),
            ("1 == 1.0", True),
            ("true == 1", False),
            ("null == null", True),
            ("release.missing == null", True),
            ("[1, [2, 3]] == [1, [2, 3]]", True),
            ("[1, 2] == [2, 1]", False),
            ("release.labels == release.labels", True),
            ("environment.order_index >= 2", True),
            ("security.max_cvss < 7", False),
            ('"abc" < "abd"', True),
            ('"api" in ["api", "web"]', True),
            ('"db" not in ["api", "web"]', True),
            ('"shop" in release.name', True),
            ('"team" in release.labels', True),
            ('"owner" not in release.labels', True),
            ("[1, 2] in [[1, 2], [3]]", True),
        ],
    )
    def test_comparisons_and_membership(self, expression: str, expected: bool) -> None:
        assert ev(expression) is expected

    @pytest.mark.parametrize(
        ("expression", "message"),
        [
            ('environment.order_index < "3"', "cannot compare a number with a string using '<'"),
            ("null > 1", "cannot compare a null with a number"),
            ("true < false", "cannot compare a boolean with a boolean"),
            ('"a" in release.missing', "'in' needs a list, string or object on the right, not a null"),
            ('1 in "abc"', "'in' on a string needs a string on the left"),
            ("1 in release.labels", "'in' on an object needs a string key"),
        ],
    )
    def test_type_errors(self, expression: str, message: str) -> None:
        with pytest.raises(PolicyEvaluationError, match=message):
            ev(expression)

    @pytest.mark.parametrize(
        ("expression", "expected"),
        [
            ("true and false or true", True),  # and binds tighter than or
            ("true or true and false", True),
            ("not true or true", True),  # not binds tighter than or
            ("not (true or true)", False),
            ("not not true", True),
            ('not environment.name == "dev"', True),  # not applies to the comparison
            ('false and (1 < "a")', False),  # short-circuit: the type error is never evaluated
            ('true or (1 < "a")', True),
        ],
    )
    def test_logic_precedence_and_short_circuit(self, expression: str, expected: bool) -> None:
        assert ev(expression) is expected

    @pytest.mark.parametrize(
        ("expression", "message"),
        [
            ("1 and true", "'and' needs booleans, got a number"),
            ("false or release.name", "'or' needs booleans, got a string"),
            ("not null", "'not' needs a boolean, not a null"),
        ],
    )
    def test_logic_needs_booleans(self, expression: str, message: str) -> None:
        with pytest.raises(PolicyEvaluationError, match=message):
            ev(expression)


class TestFunctions:
    @pytest.mark.parametrize(
        ("expression", "expected"),
        [
            ("len(release.components)", 2),
            ("len(release.name)", 12),
            ("len(release.labels)", 2),
            ('all(release.components, c => startswith(c.digest, "sha256:"))', True),
            ('all(release.components, c => c.tag != "latest")', False),
            ('any(release.components, c => c.tag == "latest")', True),
            ("any([], x => true)", False),
            ("all([], x => false)", True),
            ('all(release.components, c => any(["api", "web"], n => n == c.name))', True),
            ('endswith(release.name, ".03")', True),
            ('startswith(release.name, "web")', False),
        ],
    )
    def test_functions(self, expression: str, expected: Any) -> None:
        assert ev(expression) == expected

    def test_lambda_parameter_shadows_document_roots(self) -> None:
        assert ev('any(release.components, release => release.name == "web")') is True

    @pytest.mark.parametrize(
        ("expression", "message"),
        [
            ("len(release.missing)", "len\\(\\) needs a list, string or object, not a null"),
            ("all(release.missing, c => true)", "all\\(\\) needs a list, not a null"),
            ("any(release.components, c => c.name)", "must be a boolean, got a string"),
            ("startswith(release.name, 1)", "startswith\\(\\) needs two strings"),
            ('matches(1, "a")', "matches\\(\\) needs two strings"),
        ],
    )
    def test_function_type_errors(self, expression: str, message: str) -> None:
        with pytest.raises(PolicyEvaluationError, match=message):
            ev(expression)


class TestMatches:
    @pytest.mark.parametrize(
        ("subject", "pattern", "expected"),
        [
            ("1.4.2", r"^\d+\.\d+\.\d+$", True),
            ("1.4", r"^\d+\.\d+\.\d+$", False),
            ("v1.4.2", r"\d+\.\d+", True),  # search, not full match
            ("v1.4.2", r"^\d", False),
            ("release-candidate", "^(alpha|beta|release)-", True),
            ("gamma-1", "^(alpha|beta|release)-", False),
            ("abc", "^a.c$", True),
            ("ABC_9", r"^\w+$", True),
            ("a b", r"^\S+$", False),
            ("a b", r"\s", True),
            ("x9", "^[a-z][0-9]$", True),
            ("X9", "^[^a-z][0-9]$", True),
            ("-", "^[a-]$", True),
            ("]", "^[]]$", True),
            ("a5", r"^[\d\w]{2}$", True),
            ("aa", r"^[\D]+$", True),
            ("aaa", "^a{2,3}$", True),
            ("aaaa", "^a{2,3}$", False),
            ("aaaa", "^a{2,}$", True),
            ("a", "^a{2}$", False),
            ("ab", "^ab?c?$", True),
            ("", "^$", True),
            ("", "a*", True),
            ("colour", "colou?r", True),
            ("a.b", r"a\.b", True),
            ("axb", r"a\.b", False),
            ("{x}", r"^\{x\}$", True),
            ("line\nnext", r"line\nnext", True),
            ("xyzxyz", "^(?:xyz)+$", True),
            ("xyzxy", "^(?:xyz)+$", False),
            ("aaa", "^a+?$", True),
        ],
    )
    def test_patterns(self, subject: str, pattern: str, expected: bool) -> None:
        assert evaluate_expression("matches(s, p)", {"s": subject, "p": pattern}) is expected

    def test_pathological_pattern_runs_in_linear_time(self) -> None:
        # (a+)+$ backtracks exponentially in a backtracking engine; here it is a plain NFA simulation.
        started = time.perf_counter()
        assert evaluate_expression('matches(s, "^(a+)+$")', {"s": "a" * 40 + "b"}) is False
        assert evaluate_expression('matches(s, "^(a|a)*$")', {"s": "a" * 40 + "b"}) is False
        assert time.perf_counter() - started < 1.0

    @pytest.mark.parametrize(
        ("pattern", "message"),
        [
            ("(", "missing '\\)'"),
            (")", "unbalanced '\\)'"),
            ("*a", "nothing to repeat"),
            ("a**", "multiple repeat"),
            ("a{3,2}", "m <= n"),
            ("a{101}", "m <= n <= 100"),
            ("a{x}", "malformed repeat"),
            ("[a-", "missing '\\]'"),
            ("[z-a]", "bad character range"),
            (r"\b", "unsupported escape"),
            ("(?=a)", "unsupported group"),
            ("^*", "nothing to repeat"),
            ("x" * (MAX_PATTERN_LENGTH + 1), "longer than"),
            ("(a{100}){100}", "too complex"),
        ],
    )
    def test_invalid_literal_pattern_fails_at_parse_with_its_column(self, pattern: str, message: str) -> None:
        expression = f"matches(release.name, {pattern!r})"
        with pytest.raises(PolicySyntaxError, match=message) as info:
            parse_expression(expression)
        assert info.value.column == len("matches(release.name, ") + 1

    def test_invalid_dynamic_pattern_fails_at_evaluation(self) -> None:
        with pytest.raises(PolicyEvaluationError, match="invalid pattern '\\(': missing"):
            evaluate_expression("matches(s, p)", {"s": "x", "p": "("})

    def test_subject_length_limit(self) -> None:
        with pytest.raises(PolicyEvaluationError, match="subject is longer"):
            evaluate_expression('matches(s, "a")', {"s": "a" * (MAX_MATCH_SUBJECT_LENGTH + 1)})

    def test_regex_work_counts_against_the_step_budget(self) -> None:
        with pytest.raises(PolicyStepLimitExceeded):
            evaluate_expression('matches(s, "(a|b|c|d)*e")', {"s": "abcd" * 2000}, max_steps=5_000)


class TestSyntaxErrors:
    @pytest.mark.parametrize(
        ("expression", "column", "message"),
        [
            ("release.name ==", 16, "unexpected end of expression"),
            ('release.name = "x"', 14, "unexpected '='; use '==' to compare"),
            ("len(release.components) > 0 and", 32, "unexpected end of expression"),
            ("foo(1)", 1, "unknown function 'foo'"),
            ("(a == 1", 8, "expected '\\)'"),
            ("a < b < c", 7, "comparisons cannot be chained"),
            ("x => x", 3, "only allowed as the second argument of all\\(\\) or any\\(\\)"),
            ('"abc', 1, "unterminated string"),
            ("release.components[0", 21, "expected ']'"),
            ("all(xs, 1)", 9, "must be a lambda"),
            ("len(1, 2)", 1, "takes 1 argument\\(s\\), got 2"),
            ("a && b", 3, "use 'and'"),
            ("a || b", 3, "use 'or'"),
            ("!a", 1, "use 'not'"),
            ("a.1", 3, "expected a field name"),
            ("1abc", 1, "malformed number"),
            ("$x", 1, "unexpected character '\\$'"),
            ("a == 1 b", 8, "unexpected 'b'"),
            ('"\\q"', 2, "unknown escape"),
            ('"\\u12"', 2, "4 hex digits"),
            ("   ", 1, "empty expression"),
        ],
    )
    def test_parse_errors_point_at_the_column(self, expression: str, column: int, message: str) -> None:
        with pytest.raises(PolicySyntaxError, match=message) as info:
            parse_expression(expression)
        assert info.value.column == column
        assert info.value.code == "GATE_POLICY_SYNTAX"
        assert info.value.status == 400
        assert info.value.errors[0]["column"] == column
        assert info.value.detail.endswith(f"at column {column}")

    def test_keywords_can_be_field_names(self) -> None:
        assert evaluate_expression("x.in == x.not", {"x": {"in": 1, "not": 1}}) is True


class TestLimits:
    def test_expression_length_limit(self) -> None:
        expression = "true or " * (MAX_EXPRESSION_LENGTH // 8) + "true"
        with pytest.raises(PolicyLimitExceeded, match="longer than 4096") as info:
            parse_expression(expression)
        assert info.value.code == "GATE_POLICY_LIMIT"

    def test_parenthesis_depth_limit_points_at_the_first_excess_parenthesis(self) -> None:
        parse_expression("(" * MAX_DEPTH + "true" + ")" * MAX_DEPTH)
        with pytest.raises(PolicyLimitExceeded, match="deeper than 32") as info:
            parse_expression("(" * (MAX_DEPTH + 1) + "true" + ")" * (MAX_DEPTH + 1))
        assert info.value.column == MAX_DEPTH + 1

    @pytest.mark.parametrize(
        "expression",
        [
            "not " * 1000 + "true",
            "-" * 1000 + "1",
            "x" + ".a" * 1000,
            "x" + "[0]" * 1000,
            "[" * 1000 + "]" * 1000,
            "len(" * 1000 + "x" + ")" * 1000,
        ],
    )
    def test_deep_nesting_is_refused_without_exhausting_the_stack(self, expression: str) -> None:
        with pytest.raises(PolicyLimitExceeded):
            parse_expression(expression)

    def test_step_limit_stops_quadratic_work(self) -> None:
        document = {"xs": list(range(1000))}
        with pytest.raises(PolicyStepLimitExceeded) as info:
            evaluate_expression("all(xs, x => all(xs, y => x != y or x == y))", document)
        assert info.value.code == "GATE_POLICY_STEP_LIMIT"

    def test_step_limit_counts_deep_equality(self) -> None:
        document = {"a": list(range(10_000)), "b": list(range(10_000))}
        assert evaluate_expression("a == b", document) is True
        with pytest.raises(PolicyStepLimitExceeded):
            evaluate_expression("a == b", document, max_steps=1_000)


class TestPolicies:
    RULES = (
        {"name": "no-latest-tag", "expr": 'all(release.components, c => c.tag != "latest")', "message": "no latest"},
        {"name": "prod-needs-approvals", "expr": "environment.required_approvals >= 2", "message": ""},
        {"name": "semver-everywhere", "expr": 'all(release.components, c => matches(c.semver, "^\\\\d"))'},
        {"name": "not-boolean", "expr": "release.name"},
    )

    def test_each_rule_has_an_outcome(self) -> None:
        outcomes = compile_policy(self.RULES).evaluate(DOCUMENT)
        assert [(o.name, o.status) for o in outcomes] == [
            ("no-latest-tag", "fail"),
            ("prod-needs-approvals", "pass"),
            ("semver-everywhere", "error"),  # the web component has no semver: matches(null, ...)
            ("not-boolean", "error"),
        ]
        assert outcomes[0].message == "no latest"
        assert outcomes[2].error_code == "GATE_POLICY_EVALUATION"
        assert "must evaluate to true or false" in outcomes[3].message

    def test_fail_message_defaults_to_the_rule_name(self) -> None:
        policy = compile_policy([{"name": "prod-only", "expr": 'environment.name == "dev"'}])
        assert policy.evaluate(DOCUMENT)[0].message == "rule prod-only is false"

    def test_syntax_error_names_the_rule_and_column(self) -> None:
        with pytest.raises(PolicySyntaxError, match="rule 'broken': unexpected end of expression at column 10") as info:
            compile_policy([{"name": "ok", "expr": "true"}, {"name": "broken", "expr": "a == b or"}])
        assert info.value.rule == "broken"
        assert info.value.column == 10

    @pytest.mark.parametrize(
        ("rules", "message"),
        [
            ([{"name": "a", "expr": "true"}, {"name": "a", "expr": "false"}], "repeated: a"),
            ([{"name": "has space", "expr": "true"}], "must be 1-100 letters"),
            ([{"name": "a", "expr": 1}], "expr must be a string"),
            ([{"name": "a", "expr": "true", "severity": "high"}], "unknown field"),
            ([{"name": "a", "expr": "true", "message": 3}], "message must be a string"),
            ({"name": "a", "expr": "true"}, "must be a list of rules"),
            (["true"], "must be an object"),
        ],
    )
    def test_malformed_policies(self, rules: Any, message: str) -> None:
        with pytest.raises(InvalidPolicy, match=message):
            compile_policy(rules)

    def test_digest_is_sha256_of_the_canonical_rules_sorted_by_name(self) -> None:
        rules = [{"name": "b", "expr": "true", "message": "m"}, {"name": "a", "expr": "1 < 2"}]
        canonical = b'[{"expr":"1 < 2","message":"","name":"a"},{"expr":"true","message":"m","name":"b"}]'
        assert policy_digest(rules) == "sha256:" + hashlib.sha256(canonical).hexdigest()
        assert policy_digest(list(reversed(rules))) == policy_digest(rules)
        assert policy_digest([PolicyRule("a", "1 < 2"), PolicyRule("b", "true", "m")]) == policy_digest(rules)
        assert compile_policy(rules).digest == policy_digest(rules)

    def test_digest_changes_with_any_rule_text(self) -> None:
        base = [{"name": "a", "expr": "true", "message": ""}]
        assert policy_digest(base) != policy_digest([{"name": "a", "expr": "true ", "message": ""}])
        assert policy_digest(base) != policy_digest([{"name": "a", "expr": "true", "message": "x"}])
        assert policy_digest(base) != policy_digest([{"name": "b", "expr": "true", "message": ""}])
