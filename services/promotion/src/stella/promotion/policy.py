"""Promotion policies: named CEL rules over the decision inputs.

A policy is a list of named rules; each rule is a boolean expression in the Common Expression Language
(CEL, https://github.com/google/cel-spec) over the decision inputs (see :mod:`stella.promotion.decision`):
the variables ``promotion``, ``release``, ``environment``, ``freeze_windows``, ``gates``, ``security``,
``approvals``, ``overrides`` and ``manual_confirmations`` (:data:`POLICY_VARIABLES`). Evaluation goes
through :mod:`stella.cel`: sandboxed, with a cost budget per rule and per policy, and RE2 ``matches``.

Examples::

    release.components.all(c, c.digest.startsWith("sha256:") && c.tag != "latest")
    environment.name != "prod" || approvals.granted >= 2
    release.components.exists(c, c.name == "api" && c.semver.matches("^1\\.[0-9]+\\.[0-9]+$"))
    has(release.labels.team) && release.labels.team in ["payments", "checkout"]

The previous home-made language maps to CEL as follows (stored rules are compiled as CEL; one that is
not valid CEL makes its gate ``error``, which denies, until it is saved again in CEL):

==============================  =========================================================
before                          CEL
==============================  =========================================================
``a and b``, ``a or b``         ``a && b``, ``a || b``
``not a``, ``x not in xs``      ``!a``, ``!(x in xs)``
``len(x)``                      ``size(x)``
``all(xs, x => p)``             ``xs.all(x, p)``
``any(xs, x => p)``             ``xs.exists(x, p)``
``startswith(s, p)``            ``s.startsWith(p)`` (``endsWith`` alike)
``matches(s, re)``              ``s.matches(re)`` (RE2, a search: anchor with ``^``/``$``)
``sub in s`` (substring)        ``s.contains(sub)``
``xs[-1]``                      ``xs[size(xs) - 1]``
a missing key reads ``null``    reading a missing key is an error (the rule errors, the gate
                                denies); test first with ``has(a.b)`` or ``"b" in a``
==============================  =========================================================

A rule that does not evaluate to a boolean, fails, or exceeds its budget has status ``error`` and the
policy gate reports ``error``, which denies (fail closed). Each gate result records the language and the
exact engine version (:data:`stella.cel.ENGINE`) that produced it, so a replay can tell what decided.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from stella import cel
from stella.promotion.domain.encoding import sha256_digest, to_json_value
from stella.promotion.domain.errors import InvalidInput, RuleViolation

LANGUAGE: Final = cel.LANGUAGE
"""The policy language, recorded in every policy gate result."""

ENGINE: Final = cel.ENGINE
"""The exact engine version, recorded in every policy gate result."""

MAX_EXPRESSION_LENGTH: Final = cel.MAX_EXPRESSION_LENGTH
"""Longest accepted expression, in characters."""

MAX_DEPTH: Final = cel.MAX_NESTING
"""Deepest accepted nesting of sub-expressions."""

MAX_RULE_COST: Final = cel.DEFAULT_MAX_COST
"""Evaluation steps one rule may take."""

MAX_POLICY_COST: Final = 100_000
"""Evaluation steps all the rules of one policy may take together."""

MAX_RULES: Final = 200
"""Most rules one policy may hold."""

POLICY_VARIABLES: Final = frozenset(
    {
        "promotion",
        "release",
        "environment",
        "freeze_windows",
        "gates",
        "security",
        "approvals",
        "overrides",
        "manual_confirmations",
    }
)
"""The names a rule may read: the top-level keys of the decision inputs (an absent one reads ``null``)."""

RULE_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
"""Rule names double as reason codes: letters, digits, ``_ . : -``, at most 100 characters."""


class PolicySyntaxError(InvalidInput):
    """An expression is not valid CEL, or reads a name that does not exist.

    ``line`` and ``column`` (1-based) point at the problem; ``errors`` carries them for the API's problem
    details.
    """

    code = "GATE_POLICY_SYNTAX"
    title = "Policy expression does not parse"

    def __init__(self, message: str, *, column: int, expression: str, rule: str | None = None, line: int = 1) -> None:
        where = f"rule {rule!r}: " if rule else ""
        error: dict[str, Any] = {"loc": ["expr"], "msg": message, "line": line, "column": column}
        if rule:
            error["rule"] = rule
        super().__init__(f"{where}{message} at line {line}, column {column}", errors=[error])
        self.message = message
        self.line = line
        self.column = column
        self.expression = expression
        self.rule = rule


class PolicyLimitExceeded(PolicySyntaxError):
    """An expression is too long or nests too deeply."""

    code = "GATE_POLICY_LIMIT"
    title = "Policy expression exceeds a limit"


class InvalidPolicy(InvalidInput):
    """A policy's rules are malformed (missing fields, duplicate names, too many rules)."""

    code = "GATE_POLICY_INVALID"
    title = "Invalid policy"


class PolicyEvaluationError(RuleViolation):
    """An expression failed while evaluating (wrong types, a missing key, a non-boolean rule result...)."""

    code = "GATE_POLICY_EVALUATION"
    title = "Policy expression failed"


class PolicyStepLimitExceeded(PolicyEvaluationError):
    """An expression used more than its evaluation budget."""

    code = "GATE_POLICY_STEP_LIMIT"
    title = "Policy evaluation step limit exceeded"


def _syntax_error(exc: cel.ExpressionError, expression: str, rule: str | None = None) -> PolicySyntaxError:
    limit = "longer than" in exc.message or "deeper than" in exc.message
    error_type = PolicyLimitExceeded if limit else PolicySyntaxError
    return error_type(exc.message, column=exc.column or 1, line=exc.line or 1, expression=expression, rule=rule)


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled expression; evaluate it any number of times with :meth:`evaluate`."""

    source: str
    program: cel.Program = field(repr=False, compare=False)

    def evaluate(self, document: Mapping[str, Any], *, max_steps: int = MAX_RULE_COST) -> Any:
        """Evaluate over ``document`` (its top-level keys are the variables) and return the JSON result.

        Raises:
            PolicyEvaluationError: a type error or other failure during evaluation.
            PolicyStepLimitExceeded: more than ``max_steps`` steps were needed.
        """
        plain = to_json_value(document)
        if not isinstance(plain, dict):
            raise PolicyEvaluationError("the policy input must be a JSON object")
        return self._run(plain, max_steps).value

    def _run(self, variables: Mapping[str, Any] | cel.Bindings, max_steps: int) -> cel.Evaluation:
        try:
            return self.program.run(variables, max_cost=max_steps)
        except cel.ExpressionCostExceeded as exc:
            raise PolicyStepLimitExceeded(str(exc)) from None
        except cel.ExpressionEvaluationError as exc:
            raise PolicyEvaluationError(str(exc)) from None


def parse_expression(source: str, *, variables: frozenset[str] | None = None) -> Expression:
    """Compile an expression (any variable name when ``variables`` is None).

    Raises:
        PolicySyntaxError: the expression is not valid CEL or reads an unknown name; ``column`` points
            at the problem.
        PolicyLimitExceeded: the expression is longer than :data:`MAX_EXPRESSION_LENGTH` or nests deeper
            than :data:`MAX_DEPTH`.
    """
    if not isinstance(source, str):
        raise PolicySyntaxError("an expression must be a string", column=1, expression=repr(source))
    try:
        return Expression(source, cel.compile(source, variables=variables))
    except cel.ExpressionError as exc:
        raise _syntax_error(exc, source[:MAX_EXPRESSION_LENGTH]) from None


def evaluate_expression(
    expression: str | Expression, document: Mapping[str, Any], *, max_steps: int = MAX_RULE_COST
) -> Any:
    """Compile (when given text) and evaluate an expression over ``document``.

    Raises:
        PolicySyntaxError: the expression does not compile.
        PolicyEvaluationError: evaluation failed or exceeded ``max_steps``.
    """
    parsed = expression if isinstance(expression, Expression) else parse_expression(expression)
    return parsed.evaluate(document, max_steps=max_steps)


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """A named rule: ``expr`` must be true; otherwise the gate fails with ``name`` as reason code."""

    name: str
    expr: str
    message: str = ""

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | PolicyRule) -> PolicyRule:
        """Build a rule from ``{name, expr, message}``.

        Raises:
            InvalidPolicy: a field is missing or of the wrong type, or the name is not a valid code.
        """
        if isinstance(raw, PolicyRule):
            return raw
        if not isinstance(raw, Mapping):
            raise InvalidPolicy("a policy rule must be an object {name, expr, message}")
        unknown = sorted(set(raw) - {"name", "expr", "message"})
        if unknown:
            raise InvalidPolicy(f"policy rule has unknown field(s) {', '.join(unknown)}")
        name, expr, message = raw.get("name"), raw.get("expr"), raw.get("message", "")
        if not isinstance(name, str) or not RULE_NAME_PATTERN.match(name):
            raise InvalidPolicy(
                f"policy rule name {name!r} must be 1-100 letters, digits, '_', '.', ':' or '-' "
                "(it is used as a reason code)"
            )
        if not isinstance(expr, str):
            raise InvalidPolicy(f"policy rule {name!r}: expr must be a string")
        if not isinstance(message, str):
            raise InvalidPolicy(f"policy rule {name!r}: message must be a string")
        return cls(name=name, expr=expr, message=message)

    def to_dict(self) -> dict[str, str]:
        """Return ``{name, expr, message}``."""
        return {"name": self.name, "expr": self.expr, "message": self.message}


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """The result of one rule: ``pass``, ``fail`` (false) or ``error`` (evaluation failed)."""

    name: str
    status: Literal["pass", "fail", "error"]
    message: str
    error_code: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"name": self.name, "status": self.status, "message": self.message, "error_code": self.error_code}


@dataclass(frozen=True, slots=True)
class Policy:
    """A compiled list of rules. Build it with :func:`compile_policy`."""

    rules: tuple[PolicyRule, ...]
    _expressions: tuple[Expression, ...] = field(repr=False, compare=False)

    @property
    def digest(self) -> str:
        """The policy's :func:`policy_digest`."""
        return policy_digest(self.rules)

    def evaluate(
        self, document: Mapping[str, Any], *, max_steps: int = MAX_RULE_COST, max_total_steps: int = MAX_POLICY_COST
    ) -> tuple[RuleOutcome, ...]:
        """Evaluate every rule over ``document``.

        Each rule may take ``max_steps`` steps, and all of them together ``max_total_steps``. A rule that
        does not return a boolean, fails, or runs out of budget has status ``error``. Every variable of
        :data:`POLICY_VARIABLES` is bound; one the document lacks reads ``null``.
        """
        plain = to_json_value(document)
        if not isinstance(plain, dict):
            raise PolicyEvaluationError("the policy input must be a JSON object")
        variables = cel.bind({name: plain.get(name) for name in POLICY_VARIABLES})
        left = max_total_steps
        outcomes = []
        for rule, expression in zip(self.rules, self._expressions, strict=True):
            try:
                evaluation = expression._run(variables, min(max_steps, left))
            except PolicyEvaluationError as exc:
                outcomes.append(RuleOutcome(rule.name, "error", exc.detail, exc.code))
                left = 0 if isinstance(exc, PolicyStepLimitExceeded) else left
                continue
            left -= evaluation.cost
            value = evaluation.value
            if not isinstance(value, bool):
                outcomes.append(
                    RuleOutcome(
                        rule.name,
                        "error",
                        f"rule must evaluate to true or false, got {_json_type(value)}",
                        PolicyEvaluationError.code,
                    )
                )
            elif value:
                outcomes.append(RuleOutcome(rule.name, "pass", ""))
            else:
                outcomes.append(RuleOutcome(rule.name, "fail", rule.message or f"rule {rule.name} is false"))
        return tuple(outcomes)


def compile_policy(rules: Sequence[Mapping[str, Any] | PolicyRule]) -> Policy:
    """Validate and parse a policy's rules.

    Raises:
        InvalidPolicy: the rules are not a list, a rule is malformed, names repeat, or there are too many.
        PolicySyntaxError: an expression does not parse (the error names the rule and the column).
    """
    if isinstance(rules, str | bytes | Mapping) or not isinstance(rules, Sequence):
        raise InvalidPolicy("a policy must be a list of rules {name, expr, message}")
    if len(rules) > MAX_RULES:
        raise InvalidPolicy(f"a policy holds at most {MAX_RULES} rules")
    parsed = tuple(PolicyRule.from_dict(rule) for rule in rules)
    names = [rule.name for rule in parsed]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidPolicy(f"policy rule name(s) repeated: {', '.join(duplicates)}")
    expressions = []
    for rule in parsed:
        try:
            expressions.append(Expression(rule.expr, cel.compile(rule.expr, variables=POLICY_VARIABLES)))
        except cel.ExpressionError as exc:
            raise _syntax_error(exc, rule.expr, rule.name) from None
    return Policy(parsed, tuple(expressions))


def policy_digest(rules: Sequence[Mapping[str, Any] | PolicyRule]) -> str:
    """Return ``"sha256:<hex>"`` over the canonical JSON of the rules, sorted by name.

    Rules are evaluated independently, so their order carries no meaning and does not change the digest.

    Raises:
        InvalidPolicy: a rule is malformed.
    """
    parsed = sorted((PolicyRule.from_dict(rule) for rule in rules), key=lambda rule: rule.name)
    return sha256_digest([rule.to_dict() for rule in parsed])


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a map"
