"""Expressions in the Common Expression Language (CEL): compile once, check, evaluate with limits.

Every user-written expression in Stella (policy gate rules, workflow ``when`` conditions and template
outputs) is CEL (https://github.com/google/cel-spec), evaluated by ``cel-python`` over plain JSON values:
no Python ``eval``, no attribute access on Python objects, no loops but the CEL macros (``all``,
``exists``, ``exists_one``, ``map``, ``filter``) over a list or map.

What this module adds to the engine:

* **Checks when an expression is saved** (:func:`compile`): a length and nesting limit, syntax errors with
  their line and column, names that are not declared variables, and ``matches`` patterns given as
  literals that are not valid RE2. :attr:`Program.references` lists the variable paths an expression
  reads (``steps.gates.outputs.result``), so a caller can check them against what will exist.
* **Limits when it runs** (:meth:`Program.evaluate`): a cost budget, counted in evaluation steps (every
  node of the syntax tree evaluated, inside macros too), and a wall-clock limit as a backstop. The cost
  is deterministic: the same expression over the same input always takes the same steps, so a decision
  replays identically.
* **RE2 for** ``matches``: the engine matches with Google's RE2 (``google-re2``), so no pattern can
  backtrack exponentially; RE2 syntax applies (no backreferences or look-around).
* **Equality and ordering across numbers** as the CEL specification defines them: ``1 == 1.0`` and
  ``1 < 1.5`` hold, ``true == 1`` is false, and lists and maps compare element by element.
* **A pinned engine**: :data:`ENGINE` names the engine and its exact version; callers record it next to
  every result, and the package pins that version.

Errors: :class:`ExpressionSyntaxError` (refused when saved, with ``line``/``column``),
:class:`ExpressionEvaluationError` (failed at run time: callers fail closed) and its subclass
:class:`ExpressionCostExceeded`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import celpy
import lark
import re2
from celpy import celtypes
from celpy.evaluation import Activation, CELEvalError, Evaluator, base_functions

__all__ = [
    "DEFAULT_MAX_COST",
    "DEFAULT_TIMEOUT_S",
    "ENGINE",
    "LANGUAGE",
    "MAX_EXPRESSION_LENGTH",
    "MAX_NESTING",
    "Bindings",
    "Evaluation",
    "ExpressionCostExceeded",
    "ExpressionError",
    "ExpressionEvaluationError",
    "ExpressionSyntaxError",
    "Program",
    "bind",
    "compile",
]

LANGUAGE: Final = "cel"
"""The expression language's name, as recorded in decisions."""

ENGINE: Final = f"cel-python/{importlib.metadata.version('cel-python')}"
"""The engine and its exact version (pinned by this package), recorded next to every evaluated result."""

MAX_EXPRESSION_LENGTH: Final = 4096
"""Longest accepted expression, in characters."""

MAX_NESTING: Final = 32
"""Deepest accepted nesting of sub-expressions (parentheses, arguments, list and map items)."""

DEFAULT_MAX_COST: Final = 20_000
"""Evaluation steps one evaluation may take unless the caller says otherwise (a check over every
component of a 50-component release takes about 1,000)."""

COMPILE_CACHE_SIZE: Final = 1024
"""Compiled programs kept for reuse (a policy gate compiles its rules on every decision; parsing costs about
as much as evaluating)."""

DEFAULT_TIMEOUT_S: Final = 2.0
"""Wall-clock limit of one evaluation: a backstop behind the cost budget, which is what normally stops it."""

_MAX_TREE_DEPTH: Final = 12 * MAX_NESTING
"""Deepest syntax tree accepted (one level of nesting is about ten tree levels): bounds unary chains too."""

_MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
_LOG: Final = logging.getLogger(__name__)
_Tree = lark.Tree[lark.Token]


class ExpressionError(Exception):
    """An expression is invalid or failed. ``line``/``column`` (1-based) locate the problem when known."""

    def __init__(self, message: str, *, source: str, line: int | None = None, column: int | None = None) -> None:
        where = f" at line {line}, column {column}" if line is not None and column is not None else ""
        super().__init__(f"{message}{where}")
        self.message = message
        self.source = source
        self.line = line
        self.column = column


class ExpressionSyntaxError(ExpressionError):
    """The expression does not parse, is too long or deep, or names something that does not exist."""


class ExpressionEvaluationError(ExpressionError):
    """Evaluating the expression failed (a type error, a missing key, a division by zero...)."""


class ExpressionCostExceeded(ExpressionEvaluationError):
    """Evaluating the expression took more steps (or time) than it may."""


# --------------------------------------------------------------------------------------------------
# Values: JSON in, JSON out, CEL's cross-numeric equality
# --------------------------------------------------------------------------------------------------


def to_cel(value: Any) -> Any:
    """Convert a plain JSON value (``dict``/``list``/``str``/numbers/``bool``/``None``) to CEL values."""
    return celpy.json_to_cel(value)


def to_json(value: Any) -> Any:
    """Convert a CEL result to plain JSON (timestamps and durations become strings, bytes are refused)."""
    if value is None or isinstance(value, celtypes.NullType):
        return None
    if isinstance(value, celtypes.BoolType | bool):
        return bool(value)
    if isinstance(value, celtypes.DoubleType | float):
        number = float(value)
        if not math.isfinite(number):
            raise TypeError(f"the result {number} is not a JSON number")
        return number
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    raise TypeError(f"a {type(value).__name__} result has no JSON form")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool | celtypes.BoolType)


def _equal(left: Any, right: Any) -> bool:
    """CEL equality: numbers by value across int/uint/double, no bool/number coercion, deep lists and maps."""
    if isinstance(left, celtypes.BoolType | bool) or isinstance(right, celtypes.BoolType | bool):
        return (
            isinstance(left, celtypes.BoolType | bool)
            and isinstance(right, celtypes.BoolType | bool)
            and bool(left) is bool(right)
        )
    if _is_number(left) and _is_number(right):
        return (
            bool(float(left) == float(right)) if isinstance(left, float) or isinstance(right, float) else left == right
        )
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return len(left) == len(right) and all(key in right and _equal(item, right[key]) for key, item in left.items())
    if isinstance(left, str) and isinstance(right, str):
        return str(left) == str(right)
    if isinstance(left, bytes) and isinstance(right, bytes):
        return bytes(left) == bytes(right)
    if type(left) is not type(right):
        return False
    return bool(left == right)


def _ordering(name: str) -> Callable[[Any, Any], Any]:
    engine = base_functions[name]

    def compare(left: Any, right: Any) -> Any:
        if _is_number(left) and _is_number(right):
            floats = isinstance(left, float) or isinstance(right, float)
            a, b = (float(left), float(right)) if floats else (int(left), int(right))
            outcome = {"_<_": a < b, "_<=_": a <= b, "_>_": a > b, "_>=_": a >= b}[name]
            return celtypes.BoolType(outcome)
        return engine(left, right)

    return compare


def _contains(item: Any, container: Any) -> Any:
    if isinstance(container, list):
        return celtypes.BoolType(any(_equal(item, element) for element in container))
    if isinstance(container, Mapping):
        return celtypes.BoolType(any(_equal(item, key) for key in container))
    raise TypeError(f"'in' needs a list or map on the right, not {type(container).__name__}")


def _boolean_operator(name: str) -> Callable[..., Any]:
    engine = base_functions[name]

    def operate(*operands: Any) -> Any:
        # CEL's logic takes booleans (or errors, which && and || may absorb); the engine would also take
        # integers, so anything else is refused here as the specification says.
        for operand in operands:
            if not isinstance(operand, celtypes.BoolType | bool | CELEvalError):
                raise TypeError(f"{name} needs booleans, not {type(operand).__name__}")
        return engine(*operands)

    return operate


def _errors_propagate(function: Callable[..., Any]) -> Callable[..., Any]:
    """An operand that is an error makes the result that error (only && and || may absorb one)."""

    def apply(*operands: Any) -> Any:
        for operand in operands:
            if isinstance(operand, CELEvalError):
                return operand
        return function(*operands)

    return apply


_FUNCTIONS: Final[dict[str, Any]] = {
    "_&&_": _boolean_operator("_&&_"),
    "_||_": _boolean_operator("_||_"),
    "!_": _errors_propagate(_boolean_operator("!_")),
    "_==_": _errors_propagate(lambda left, right: celtypes.BoolType(_equal(left, right))),
    "_!=_": _errors_propagate(lambda left, right: celtypes.BoolType(not _equal(left, right))),
    "_<_": _errors_propagate(_ordering("_<_")),
    "_<=_": _errors_propagate(_ordering("_<=_")),
    "_>_": _errors_propagate(_ordering("_>_")),
    "_>=_": _errors_propagate(_ordering("_>=_")),
    "_in_": _errors_propagate(_contains),
}


# --------------------------------------------------------------------------------------------------
# Metered evaluation
# --------------------------------------------------------------------------------------------------


class _Meter:
    __slots__ = ("deadline", "left", "max_cost")

    def __init__(self, max_cost: int, timeout_s: float) -> None:
        self.max_cost = max_cost
        self.left = max_cost
        self.deadline = time.monotonic() + timeout_s

    def charge(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _Exhausted(f"expression exceeded its cost limit of {self.max_cost} evaluation steps")
        if self.left % 256 == 0 and time.monotonic() > self.deadline:
            raise _Exhausted("expression exceeded its time limit")


class _Exhausted(Exception):
    """Raised inside the evaluator to unwind it; turned into ExpressionCostExceeded."""


class _MeteredEvaluator(Evaluator):
    """The engine's evaluator, charging steps for the syntax-tree nodes it evaluates (macro bodies included)."""

    def __init__(self, ast: _Tree, activation: Activation, meter: _Meter) -> None:
        super().__init__(ast, activation)
        self._meter = meter

    def sub_evaluator(self, ast: _Tree) -> Evaluator:
        return _MeteredEvaluator(ast, self.activation, self._meter)

    # The engine reaches a node either through visit() or through visit_children(); charging in both
    # (one step per node handed over) counts every node, some twice: the count is what matters, and it is
    # the same on every run.
    def visit(self, tree: _Tree) -> Any:
        self._meter.charge()
        return super().visit(tree)

    def visit_children(self, tree: _Tree) -> list[Any]:
        for _ in tree.children:
            self._meter.charge()
        return super().visit_children(tree)


# --------------------------------------------------------------------------------------------------
# Static checks over the syntax tree
# --------------------------------------------------------------------------------------------------


def _subtrees(node: _Tree) -> Iterator[_Tree]:
    return (child for child in node.children if isinstance(child, lark.Tree))


def _bound_name(expr: _Tree) -> str | None:
    """The identifier an expression consists of (the variable of a macro), or None."""
    node: Any = expr
    while isinstance(node, lark.Tree):
        if node.data == "ident":
            return str(node.children[0])
        subtrees = list(_subtrees(node))
        if len(subtrees) != 1 or len(node.children) != 1:
            return None
        node = subtrees[0]
    return None


def _literal_string(expr: _Tree) -> str | None:
    """The value of an expression that is one string literal, or None."""
    node: Any = expr
    while isinstance(node, lark.Tree):
        if node.data == "literal":
            token = node.children[0]
            if isinstance(token, lark.Token) and token.type in {"STRING_LIT", "MLSTRING_LIT"}:
                try:
                    value = _environment().program(expr).evaluate({})
                except Exception:
                    return None
                return str(value) if isinstance(value, str) else None
            return None
        subtrees = list(_subtrees(node))
        if len(subtrees) != 1 or len(node.children) != 1:
            return None
        node = subtrees[0]
    return None


def _path(member: _Tree) -> list[str] | None:
    """The variable path a ``member`` node reads (``a.b["c"]`` -> ``[a, b, c]``), or None."""
    child = member.children[0]
    if not isinstance(child, lark.Tree):
        return None
    if child.data == "primary":
        inner = child.children[0]
        if isinstance(inner, lark.Tree) and inner.data == "ident":
            return [str(inner.children[0])]
        return None
    if child.data == "member_dot":
        base_node, name = child.children[0], child.children[1]
        base = _path(base_node) if isinstance(base_node, lark.Tree) else None
        return [*base, str(name)] if base is not None else None
    if child.data == "member_index":
        base_node, index = child.children[0], child.children[1]
        base = _path(base_node) if isinstance(base_node, lark.Tree) else None
        key = _literal_string(index) if isinstance(index, lark.Tree) else None
        if base is None:
            return None
        return [*base, key] if key is not None else base
    return None


@dataclass
class _Analysis:
    source: str
    variables: Collection[str] | None
    paths: dict[tuple[str, ...], tuple[int, int]] = field(default_factory=dict)

    def fail(self, message: str, node: _Tree | lark.Token) -> ExpressionSyntaxError:
        meta_line = getattr(node, "line", None) if isinstance(node, lark.Token) else getattr(node.meta, "line", None)
        column = getattr(node, "column", None) if isinstance(node, lark.Token) else getattr(node.meta, "column", None)
        return ExpressionSyntaxError(message, source=self.source, line=meta_line, column=column)

    def walk(self, root: _Tree) -> None:
        # Iterative, so a deep tree cannot exhaust the interpreter's stack; ``depth`` counts nested ``expr``s.
        stack: list[tuple[_Tree, frozenset[str], int, int]] = [(root, frozenset(), 0, 1)]
        while stack:
            node, bound, depth, level = stack.pop()
            if node.data == "expr":
                depth += 1
                if depth > MAX_NESTING:
                    raise self.fail(f"expression nests deeper than {MAX_NESTING} levels", node)
            if level > _MAX_TREE_DEPTH:
                raise self.fail(f"expression nests deeper than {MAX_NESTING} levels", node)
            if node.data == "member":
                path = _path(node)
                if path is not None and path[0] not in bound:
                    self._reference(tuple(path), node)
            if node.data == "member_dot_arg":
                stack.extend((*item, level + 1) for item in self._method(node, bound, depth))
                continue
            if node.data == "ident_arg" and str(node.children[0]) not in _GLOBAL_FUNCTIONS:
                known = ", ".join(sorted(_GLOBAL_FUNCTIONS))
                raise self.fail(f"unknown function {str(node.children[0])!r} (known: {known})", node)
            if node.data == "ident" and str(node.children[0]) not in bound:
                self._reference((str(node.children[0]),), node)
            stack.extend((child, bound, depth, level + 1) for child in _subtrees(node))

    def _method(self, node: _Tree, bound: frozenset[str], depth: int) -> list[tuple[_Tree, frozenset[str], int]]:
        target, name = node.children[0], str(node.children[1])
        args = [
            expr for exprlist in node.children[2:] if isinstance(exprlist, lark.Tree) for expr in _subtrees(exprlist)
        ]
        pending: list[tuple[_Tree, frozenset[str], int]] = []
        if isinstance(target, lark.Tree):
            pending.append((target, bound, depth))
        if name not in _MACROS and name not in _METHODS:
            raise self.fail(f"unknown function {name!r}", node)
        if name in _MACROS:
            variable = _bound_name(args[0]) if args else None
            if variable is None or len(args) != 2:
                raise self.fail(f"{name}() takes a variable name and an expression, like {name}(x, x > 0)", node)
            pending.append((args[1], bound | {variable}, depth))
            return pending
        if name == "matches" and len(args) == 1:
            pattern = _literal_string(args[0])
            if pattern is not None:
                try:
                    re2.compile(pattern)
                except re2.error as exc:
                    reason = (
                        exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
                    )
                    raise self.fail(f"invalid RE2 pattern {pattern!r}: {reason}", node) from None
        pending.extend((arg, bound, depth) for arg in args)
        return pending

    def _reference(self, path: tuple[str, ...], node: _Tree) -> None:
        if self.variables is not None and path[0] not in self.variables:
            known = ", ".join(sorted(self.variables)) or "none"
            raise self.fail(f"unknown name {path[0]!r} (known: {known})", node)
        where = (getattr(node.meta, "line", 0), getattr(node.meta, "column", 0))
        self.paths[path] = min(where, self.paths.get(path, where))


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


@functools.cache
def _environment() -> celpy.Environment:
    """The one CEL environment, built on first use: building its parser takes about half a second, which a
    process that never evaluates a rule should not pay at start."""
    return celpy.Environment()


_METHODS: Final = frozenset(name for name in base_functions if name[0].isalpha())
"""Functions callable as methods (``s.startsWith(p)``, ``l.size()``...)."""
_GLOBAL_FUNCTIONS: Final = _METHODS | {"has", "dyn"}
"""Functions callable by name (``size(l)``, ``int(s)``, ``has(a.b)``...)."""


@dataclass(frozen=True, slots=True)
class Bindings:
    """Variables converted once for several evaluations (the rules of one policy): see :func:`bind`."""

    values: Mapping[str, Any]


def bind(variables: Mapping[str, Any]) -> Bindings:
    """Convert plain JSON variables for evaluation; pass the result to :meth:`Program.run` many times."""
    return Bindings({name: to_cel(value) for name, value in variables.items()})


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A result and the evaluation steps it took."""

    value: Any
    cost: int


@dataclass(frozen=True, eq=False)
class Program:
    """A compiled, checked expression; evaluate it any number of times.

    Attributes:
        source: The expression text.
        references: Every variable path the expression reads, in source order, longest form only
            (``steps.gates.outputs.result``; a path stops at a computed index). Names bound by macros
            (the ``x`` of ``list.all(x, ...)``) are not references.
    """

    source: str
    references: tuple[tuple[str, ...], ...]
    _ast: _Tree = field(repr=False)
    _runner: celpy.Runner = field(repr=False)

    def evaluate(
        self,
        variables: Mapping[str, Any] | Bindings,
        *,
        max_cost: int = DEFAULT_MAX_COST,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> Any:
        """Evaluate over ``variables`` (plain JSON values by name) and return the plain JSON result.

        Raises:
            ExpressionCostExceeded: more than ``max_cost`` steps (or ``timeout_s`` seconds) were needed.
            ExpressionEvaluationError: evaluation failed.
        """
        return self.run(variables, max_cost=max_cost, timeout_s=timeout_s).value

    def run(
        self,
        variables: Mapping[str, Any] | Bindings,
        *,
        max_cost: int = DEFAULT_MAX_COST,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> Evaluation:
        """Evaluate like :meth:`evaluate` and also return the steps it took (to share one budget).

        Raises:
            ExpressionCostExceeded: more than ``max_cost`` steps (or ``timeout_s`` seconds) were needed.
            ExpressionEvaluationError: evaluation failed (wrong types, a missing key or variable, a
                division by zero, a result with no JSON form...).
        """
        activation = dict((variables if isinstance(variables, Bindings) else bind(variables)).values)
        meter = _Meter(max_cost, timeout_s)
        evaluator = _MeteredEvaluator(self._ast, self._runner.new_activation(), meter)
        try:
            result = evaluator.evaluate(activation)
        except _Exhausted as exc:
            raise ExpressionCostExceeded(str(exc), source=self.source) from None
        except CELEvalError as exc:
            raise ExpressionEvaluationError(
                _describe(exc), source=self.source, line=exc.line, column=exc.column
            ) from None
        except RecursionError:
            raise ExpressionCostExceeded("expression nests too deeply to evaluate", source=self.source) from None
        except Exception as exc:  # the engine's own defects: fail closed with a message, never crash
            _LOG.debug("expression %r raised", self.source, exc_info=True)
            raise ExpressionEvaluationError(f"{type(exc).__name__}: {exc}", source=self.source) from None
        try:
            return Evaluation(to_json(result), meter.max_cost - meter.left)
        except TypeError as exc:
            raise ExpressionEvaluationError(str(exc), source=self.source) from None


def _describe(error: CELEvalError) -> str:
    message = error.args[0] if error.args else "evaluation failed"
    detail = error.args[2] if len(error.args) > 2 and error.args[2] else None
    if isinstance(detail, tuple) and detail:
        detail = detail[0]
    text = str(message)
    if detail and str(detail) not in text:
        text = f"{text}: {detail}"
    # The engine's messages can embed its whole activation; keep the first line, bounded.
    return text.splitlines()[0][:300]


def compile(source: str, *, variables: Collection[str] | None = None) -> Program:
    """Parse and check ``source``.

    Args:
        source: The expression text.
        variables: The names an expression may read; ``None`` accepts any name (checked at run time).

    Raises:
        ExpressionSyntaxError: the text does not parse, is longer than :data:`MAX_EXPRESSION_LENGTH`,
            nests deeper than :data:`MAX_NESTING`, reads a name not in ``variables``, or gives ``matches``
            a literal pattern that is not valid RE2.
    """
    if not isinstance(source, str):
        raise ExpressionSyntaxError("an expression must be a string", source=repr(source))
    return _compile(source, None if variables is None else frozenset(variables))


@functools.lru_cache(maxsize=COMPILE_CACHE_SIZE)
def _compile(source: str, variables: frozenset[str] | None) -> Program:
    """:func:`compile`, remembered: a program is immutable, and the same text checked against the same names
    always compiles to the same program (refusals are not remembered: they raise each time)."""
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ExpressionSyntaxError(
            f"expression is longer than {MAX_EXPRESSION_LENGTH} characters",
            source=source[:80],
            line=1,
            column=MAX_EXPRESSION_LENGTH + 1,
        )
    if not source.strip():
        raise ExpressionSyntaxError("empty expression", source=source, line=1, column=1)
    try:
        ast = _environment().compile(source)
    except celpy.CELParseError as exc:
        column = exc.column if isinstance(exc.column, int) else None
        if column is not None and 0 < column <= len(source.rstrip()):
            message = f"syntax error at {source[column - 1 : column + 19]!r}"
        else:
            message = "syntax error: unexpected end of expression"
        raise ExpressionSyntaxError(message, source=source, line=exc.line, column=exc.column) from None
    except RecursionError:
        raise ExpressionSyntaxError(
            f"expression nests deeper than {MAX_NESTING} levels", source=source, line=1, column=1
        ) from None
    analysis = _Analysis(source, variables)
    analysis.walk(ast)
    in_order = sorted(analysis.paths, key=lambda path: analysis.paths[path])
    paths = [path for path in in_order if not any(_extends(other, path) for other in in_order)]
    runner = _environment().program(ast, functions=_FUNCTIONS)
    return Program(source=source, references=tuple(paths), _ast=ast, _runner=runner)


def _extends(longer: tuple[str, ...], shorter: tuple[str, ...]) -> bool:
    return len(longer) > len(shorter) and longer[: len(shorter)] == shorter
