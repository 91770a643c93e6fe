"""Expressions: ``when`` conditions and template outputs, in CEL over ``inputs`` and ``steps``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from stella import cel
from stella.workflow.domain.errors import ExpressionError

EXPRESSION_ROOTS: Final[frozenset[str]] = frozenset({"inputs", "steps"})


"""The variables an expression reads: run inputs and upstream steps."""


STEP_FIELDS: Final[frozenset[str]] = frozenset({"status", "attempt", "outputs"})


"""What an expression may read of a step: ``steps.<id>.status``, ``.attempt``, ``.outputs...``."""


MAX_EXPRESSION_LENGTH: Final = 2000


"""Longest expression accepted, in characters."""


EXPRESSION_ENGINE: Final = cel.ENGINE


"""The exact CEL engine version, recorded with every condition or output that fails to evaluate."""


class ExpressionEvaluationError(Exception):
    """A condition or output failed while evaluating (or a condition was not a boolean)."""


@dataclass(frozen=True, eq=False)
class Expression:
    """A compiled CEL expression over ``inputs`` (the run inputs) and ``steps`` (upstream steps).

    CEL (https://github.com/google/cel-spec) through :mod:`stella.cel`: ``steps.gates.outputs.result ==
    "allow" && inputs.env != "prod"``, ``!inputs.dry_run``, ``steps["health-check"].status == "failed"``
    (a step id with ``-`` is read with an index), ``has(steps.gates.outputs.verdict)``,
    ``steps.deploy.outputs.targets.all(t, t.healthy)``, ``s.matches("^v[0-9]+")`` (RE2). Reading a key
    that is absent is an error, not ``null``: test with ``has()`` first. A ``when`` condition must be a
    boolean. Evaluation has a cost budget; a condition that fails fails its step (fail closed).

    Attributes:
        source: The expression text.
    """

    source: str
    _program: cel.Program = field(repr=False)

    @property
    def paths(self) -> tuple[tuple[str, ...], ...]:
        """Every variable path the expression reads, as segment tuples, in source order."""
        return self._program.references

    def evaluate(self, context: Mapping[str, Any] | cel.Bindings) -> Any:
        """Evaluate over ``context`` (``{"inputs": ..., "steps": ...}``, or :func:`bind_context` of it when
        several expressions read the same one) and return the JSON value.

        Raises:
            ExpressionEvaluationError: evaluation failed or exceeded its budget.
        """
        try:
            return self._program.evaluate(context if isinstance(context, cel.Bindings) else bind_context(context))
        except cel.ExpressionError as exc:
            raise ExpressionEvaluationError(f"{exc} ({EXPRESSION_ENGINE})") from None

    def test(self, context: Mapping[str, Any]) -> bool:
        """Evaluate a condition over ``context``.

        Raises:
            ExpressionEvaluationError: evaluation failed, or the value is not a boolean.
        """
        value = self.evaluate(context)
        if not isinstance(value, bool):
            raise ExpressionEvaluationError(
                f"a condition must be true or false, got {type(value).__name__} ({EXPRESSION_ENGINE})"
            )
        return value


def bind_context(context: Mapping[str, Any]) -> cel.Bindings:
    """``context`` (``{"inputs": ..., "steps": ...}``) converted once for several expressions: converting
    every step's outputs costs more than most expressions' evaluation."""
    return cel.bind({root: context.get(root, {}) for root in EXPRESSION_ROOTS})


def parse_expression(source: str) -> Expression:
    """Compile an expression.

    Args:
        source: The expression text, e.g. ``steps.gates.outputs.result == "allow" && inputs.env != "prod"``.

    Raises:
        ExpressionError: when the text is not valid CEL, reads a name other than ``inputs``/``steps``, or
            is too long or deep (the error carries the line, column and character position).
    """
    if not isinstance(source, str):
        raise ExpressionError("an expression must be a string", repr(source), 0)
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_LENGTH} characters", source[:40] + "...", 0)
    try:
        return Expression(source, cel.compile(source, variables=EXPRESSION_ROOTS))
    except cel.ExpressionError as exc:
        line, column = exc.line or 1, exc.column or 1
        lines = source.split("\n")
        position = sum(len(text) + 1 for text in lines[: line - 1]) + column - 1
        raise ExpressionError(exc.message, source, position, line=line, column=column) from None
