"""The policy language (CEL through stella.cel): semantics, errors with positions, limits and digests."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from stella.promotion.policy import (
    ENGINE,
    LANGUAGE,
    MAX_DEPTH,
    MAX_EXPRESSION_LENGTH,
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
            ("release.components[size(release.components) - 1].tag", "latest"),
            ('release.labels["tier-1"]', True),
            ("environment.order_index", 2),
            ("-environment.order_index", -2),
            ("[1, 'two', null, [true]]", [1, "two", None, [True]]),
            ('"tab\\there \\u00e9"', "tab\there \u00e9"),
            ("1.5e2", 150.0),
            ("has(release.labels.team)", True),
            ("has(release.missing)", False),
            ('"owner" in release.labels', False),
            ("release.components.map(c, c.name)", ["api", "web"]),
            ('release.components.filter(c, c.tag == "latest").size()', 1),
        ],
    )
    def test_paths_literals_and_macros(self, expression: str, expected: Any) -> None:
        assert ev(expression) == expected

    @pytest.mark.parametrize(
        ("expression", "message"),
        [
            ("release.missing", "no such member"),
            ("release.components[5]", "index"),
            ("release.name.x", "does not support field selection"),
            ("unknown_root", "undeclared reference"),
            ("1 / 0", "divide by zero"),
            ("9223372036854775807 + 1", "overflow"),
        ],
    )
    def test_reading_what_is_not_there_is_an_error(self, expression: str, message: str) -> None:
        with pytest.raises(PolicyEvaluationError, match=message):
            ev(expression)

    def test_python_attributes_are_not_reachable(self) -> None:
        with pytest.raises(PolicyEvaluationError):
            ev("release.__class__")
        with pytest.raises(PolicySyntaxError, match="unknown function '__import__'"):
            parse_expression('__import__("os")')
        with pytest.raises(PolicySyntaxError, match="unknown function '__len__'"):
            parse_expression("release.components.__len__()")


class TestOperators:
    @pytest.mark.parametrize(
        ("expression", "expected"),
        [
            ('environment.name == "prod"', True),
            ('environment.name != "prod"', False),
            ("1 == 1.0", True),
            ("1 < 1.5", True),
            ("true == 1", False),
            ("null == null", True),
            ("release.components[1].semver == null", True),
            ("[1, [2, 3]] == [1, [2, 3]]", True),
            ("[1, 2] == [2, 1]", False),
            ("release.labels == release.labels", True),
            ("environment.order_index >= 2", True),
            ("security.max_cvss < 7", False),
            ('"abc" < "abd"', True),
            ('"api" in ["api", "web"]', True),
            ('!("db" in ["api", "web"])', True),
            ("2 in [1, 2.0]", True),
            ('release.name.contains("shop")', True),
            ('"team" in release.labels', True),
            ("[1, 2] in [[1, 2], [3]]", True),
            ('release.name.startsWith("shop") && release.name.endsWith(".03")', True),
        ],
    )
    def test_comparisons_and_membership(self, expression: str, expected: bool) -> None:
        assert ev(expression) is expected

    @pytest.mark.parametrize(
        "expression",
        ['environment.order_index < "3"', "null > 1", '1 in "abc"', "release.missing.deeper"],
    )
    def test_type_errors(self, expression: str) -> None:
        with pytest.raises(PolicyEvaluationError):
            ev(expression)

    @pytest.mark.parametrize(
        ("expression", "expected"),
        [
            ("true && false || true", True),  # && binds tighter than ||
            ("true || true && false", True),
            ("!true || true", True),
            ("!(true || true)", False),
            ("!!true", True),
            ('!(environment.name == "dev")', True),
            ('false && (1 < "a")', False),  # the error is absorbed: the result does not depend on it
            ('(1 < "a") && false', False),  # in either order (CEL's commutative logic)
            ('true || (1 < "a")', True),
            ('environment.name == "prod" ? 2 : 0', 2),
        ],
    )
    def test_logic_precedence_and_error_absorption(self, expression: str, expected: Any) -> None:
        assert ev(expression) == expected

    @pytest.mark.parametrize("expression", ["1 && true", "false || release.name", "!null"])
    def test_logic_needs_booleans(self, expression: str) -> None:
        with pytest.raises(PolicyEvaluationError):
            ev(expression)


class TestFunctions:
    @pytest.mark.parametrize(
        ("expression", "expected"),
        [
            ("size(release.components)", 2),
            ("size(release.name)", 12),
            ('size("h\u00e9llo")', 5),  # code points, not bytes
            ("size(release.labels)", 2),
            ('release.components.all(c, c.digest.startsWith("sha256:"))', True),
            ('release.components.all(c, c.tag != "latest")', False),
            ('release.components.exists(c, c.tag == "latest")', True),
            ('release.components.exists_one(c, c.tag == "latest")', True),
            ("[].exists(x, true)", False),
            ("[].all(x, false)", True),
            ('release.components.all(c, ["api", "web"].exists(n, n == c.name))', True),
            ('release.components.exists(release, release.name == "web")', True),  # the variable shadows
        ],
    )
    def test_functions(self, expression: str, expected: Any) -> None:
        assert ev(expression) == expected

    @pytest.mark.parametrize(
        "expression",
        [
            "size(release.missing)",
            "release.missing.all(c, true)",
            "release.components.exists(c, c.name)",
            "release.name.startsWith(1)",
            'environment.order_index.matches("a")',
        ],
    )
    def test_function_type_errors(self, expression: str) -> None:
        with pytest.raises(PolicyEvaluationError):
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
            ("ABC_9", r"^\w+$", True),
            ("a b", r"^\S+$", False),
            ("aaa", "^a{2,3}$", True),
            ("aaaa", "^a{2,3}$", False),
            ("colour", "colou?r", True),
            ("a.b", r"a\.b", True),
            ("axb", r"a\.b", False),
            ("xyzxyz", "^(?:xyz)+$", True),
            ("caf\u00e9", "^caf.$", True),  # . matches one code point
        ],
    )
    def test_patterns(self, subject: str, pattern: str, expected: bool) -> None:
        assert evaluate_expression("s.matches(p)", {"s": subject, "p": pattern}) is expected

    def test_pathological_patterns_are_linear(self) -> None:
        # (a+)+$ backtracks exponentially in a backtracking engine; RE2 answers without backtracking.
        assert evaluate_expression('s.matches("^(a+)+$")', {"s": "a" * 5000 + "b"}) is False
        assert evaluate_expression('s.matches("^(a|a)*$")', {"s": "a" * 5000 + "b"}) is False

    @pytest.mark.parametrize("pattern", ["(", "*a", "[z-a]", "(a)\\1", "(?=a)"])
    def test_invalid_literal_pattern_is_refused_when_saved(self, pattern: str) -> None:
        with pytest.raises(PolicySyntaxError, match="invalid RE2 pattern") as info:
            parse_expression(f"release.name.matches({pattern!r})")
        assert info.value.line == 1 and info.value.column >= 1

    def test_invalid_dynamic_pattern_fails_at_evaluation(self) -> None:
        with pytest.raises(PolicyEvaluationError, match="match error"):
            evaluate_expression("s.matches(p)", {"s": "x", "p": "("})


class TestSyntaxErrors:
    @pytest.mark.parametrize(
        ("expression", "column"),
        [
            ("release.name == ", 14),
            ('release.name = "x"', 14),
            ("(a == 1", 7),
            ('"abc', 1),
            ("release.components[0", 20),
            ("a and b", 3),
        ],
    )
    def test_parse_errors_point_at_a_column(self, expression: str, column: int) -> None:
        with pytest.raises(PolicySyntaxError) as info:
            parse_expression(expression)
        assert info.value.code == "GATE_POLICY_SYNTAX"
        assert info.value.status == 400
        assert (info.value.line, info.value.column) == (1, column)
        assert info.value.errors[0]["column"] == column
        assert info.value.detail.endswith(f"at line 1, column {column}")

    def test_an_empty_expression_is_refused(self) -> None:
        with pytest.raises(PolicySyntaxError, match="empty expression"):
            parse_expression("   ")

    def test_a_macro_needs_a_variable(self) -> None:
        with pytest.raises(PolicySyntaxError, match="takes a variable name"):
            parse_expression("release.components.all(1, true)")


class TestLimits:
    def test_expression_length_limit(self) -> None:
        expression = "true || " * (MAX_EXPRESSION_LENGTH // 8) + "true"
        with pytest.raises(PolicyLimitExceeded, match="longer than 4096") as info:
            parse_expression(expression)
        assert info.value.code == "GATE_POLICY_LIMIT"

    def test_nesting_limit(self) -> None:
        parse_expression("(" * (MAX_DEPTH - 1) + "true" + ")" * (MAX_DEPTH - 1))
        with pytest.raises(PolicyLimitExceeded, match="deeper than 32"):
            parse_expression("(" * (MAX_DEPTH + 1) + "true" + ")" * (MAX_DEPTH + 1))

    @pytest.mark.parametrize(
        "expression",
        ["!" * 1000 + "true", "-" * 1000 + "1", "[" * 1000 + "]" * 1000, "size(" * 600 + "x" + ")" * 600],
    )
    def test_deep_nesting_is_refused_without_exhausting_the_stack(self, expression: str) -> None:
        with pytest.raises(PolicySyntaxError):
            parse_expression(expression)

    def test_step_limit_stops_quadratic_work(self) -> None:
        document = {"xs": list(range(1000))}
        # The cost limit stops it; on a machine busy enough, the time limit may stop it first.
        with pytest.raises(PolicyStepLimitExceeded, match=r"cost limit|time limit") as info:
            evaluate_expression("xs.all(x, xs.all(y, x != y || x == y))", document)
        assert info.value.code == "GATE_POLICY_STEP_LIMIT"

    def test_step_limit_is_deterministic(self) -> None:
        document = {"xs": list(range(100))}
        expression = parse_expression("xs.all(x, x >= 0)")
        assert expression.evaluate(document, max_steps=5_000) is True
        with pytest.raises(PolicyStepLimitExceeded):
            expression.evaluate(document, max_steps=500)


def test_gate_results_record_the_language_and_engine_version() -> None:
    assert LANGUAGE == "cel"
    assert ENGINE.startswith("cel-python/")


class TestPolicies:
    RULES = (
        {"name": "no-latest-tag", "expr": 'release.components.all(c, c.tag != "latest")', "message": "no latest"},
        {"name": "prod-needs-approvals", "expr": "environment.required_approvals >= 2", "message": ""},
        {"name": "semver-everywhere", "expr": 'release.components.all(c, c.semver.matches("^\\\\d"))'},
        {"name": "not-boolean", "expr": "release.name"},
    )

    def test_each_rule_has_an_outcome(self) -> None:
        outcomes = compile_policy(self.RULES).evaluate(DOCUMENT)
        assert [(o.name, o.status) for o in outcomes] == [
            ("no-latest-tag", "fail"),
            ("prod-needs-approvals", "pass"),
            ("semver-everywhere", "error"),  # the web component has no semver: null.matches(...)
            ("not-boolean", "error"),
        ]
        assert outcomes[0].message == "no latest"
        assert outcomes[2].error_code == "GATE_POLICY_EVALUATION"
        assert "must evaluate to true or false" in outcomes[3].message

    def test_fail_message_defaults_to_the_rule_name(self) -> None:
        policy = compile_policy([{"name": "prod-only", "expr": 'environment.name == "dev"'}])
        assert policy.evaluate(DOCUMENT)[0].message == "rule prod-only is false"

    def test_syntax_error_names_the_rule_line_and_column(self) -> None:
        with pytest.raises(PolicySyntaxError, match=r"rule 'broken': .* at line 1, column \d+") as info:
            compile_policy([{"name": "ok", "expr": "true"}, {"name": "broken", "expr": "release.name == ||"}])
        assert info.value.rule == "broken"
        assert (info.value.line, info.value.column) == (1, 17)
        assert info.value.status == 400
        assert info.value.errors == [
            {"loc": ["expr"], "msg": info.value.message, "line": 1, "column": 17, "rule": "broken"}
        ]

    def test_an_unknown_variable_is_refused_when_saved(self) -> None:
        with pytest.raises(PolicySyntaxError, match="unknown name 'relase'") as info:
            compile_policy([{"name": "typo", "expr": 'relase.name == "x"'}])
        assert info.value.column == 1

    def test_the_previous_language_is_refused_when_saved(self) -> None:
        with pytest.raises(PolicySyntaxError):
            compile_policy([{"name": "old", "expr": 'all(release.components, c => c.tag != "latest")'}])

    def test_variables_the_document_lacks_read_null(self) -> None:
        policy = compile_policy([{"name": "no-scans", "expr": "security == null && approvals == null"}])
        assert policy.evaluate({"release": {}})[0].status == "pass"

    def test_each_rule_has_its_own_budget_and_the_policy_a_total(self) -> None:
        document = {"release": {"components": list(range(300))}}
        heavy = {"name": "heavy", "expr": "release.components.all(c, c >= 0)"}
        light = [{"name": f"r{i}", "expr": "release.components.all(c, c >= 0)"} for i in range(5)]
        policy = compile_policy([heavy])
        assert policy.evaluate(document)[0].status == "pass"
        assert policy.evaluate(document, max_steps=500)[0].error_code == "GATE_POLICY_STEP_LIMIT"
        cost_of_one = 5_000
        outcomes = compile_policy(light).evaluate(document, max_total_steps=3 * cost_of_one)
        assert [o.status for o in outcomes][:2] == ["pass", "pass"]
        assert outcomes[-1].status == "error" and outcomes[-1].error_code == "GATE_POLICY_STEP_LIMIT"

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
