"""A small, safe expression language for promotion policies.

Policies are lists of named rules; each rule is a boolean expression over a JSON document (the decision
inputs: ``release``, ``environment``, ``promotion``, ``security``, ``approvals``, ...). The language is
parsed by its own tokenizer and recursive-descent parser and interpreted over plain JSON values: no Python
``eval``/``exec``/``compile``, no attribute access on Python objects, no loops except ``all``/``any`` over a
list, and hard limits on expression length, nesting depth and evaluation steps.

Grammar (lowest precedence first)::

    expr       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := unary [("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in") unary]
    unary      := "-" unary | postfix
    postfix    := primary ("." NAME | "[" expr "]")*
    primary    := NUMBER | STRING | "true" | "false" | "null" | "[" [expr ("," expr)*] "]"
                | NAME | NAME "(" args ")" | "(" expr ")"
    lambda     := NAME "=>" expr            (only as the second argument of all / any)

Semantics:

* A name is a lambda parameter or a top-level key of the document. Reading a missing key, an index out of
  range, or a field of ``null`` gives ``null``; reading a field of a number, string or list is an error.
  Negative indexes count from the end.
* ``==``/``!=`` compare JSON values deeply (``1 == 1.0``; ``true != 1``). ``<``... compare two numbers or two
  strings. ``x in list`` is membership, ``s in string`` substring, ``k in object`` key presence.
* ``and``/``or``/``not`` take booleans only and short-circuit. A rule must evaluate to a boolean.
* Functions: ``len(list|string|object)``, ``all(list, x => expr)``, ``any(list, x => expr)``,
  ``startswith(s, prefix)``, ``endswith(s, suffix)``, ``matches(s, pattern)``.
* ``matches`` searches ``s`` for a regular expression (use ``^``/``$`` to anchor) with a linear-time
  matcher, so no pattern can backtrack exponentially. Supported syntax: literals, ``.``, classes
  ``[a-z]``/``[^...]``, ``\\d \\w \\s \\D \\W \\S`` (ASCII), groups ``(...)``/``(?:...)``, ``|``, ``* + ?
  {m} {m,} {m,n}`` (lazy ``?`` suffixes accepted), ``^`` and ``$``. Patterns are limited to
  :data:`MAX_PATTERN_LENGTH` characters and subjects to :data:`MAX_MATCH_SUBJECT_LENGTH`.
* Operations with the wrong types are evaluation errors; a policy gate reports them as ``error`` (which
  denies: fail closed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from stella.promotion.domain import InvalidInput, RuleViolation, sha256_digest, to_json_value

MAX_EXPRESSION_LENGTH: Final = 4096
"""Longest accepted expression, in characters."""

MAX_DEPTH: Final = 32
"""Deepest accepted nesting (parentheses, ``not``, function calls, field chains...)."""

MAX_STEPS: Final = 100_000
"""Evaluation steps one rule may take (each node, list element compared, and regex step counts one)."""

MAX_RULES: Final = 200
"""Most rules one policy may hold."""

MAX_PATTERN_LENGTH: Final = 256
"""Longest regular expression ``matches`` accepts."""

MAX_MATCH_SUBJECT_LENGTH: Final = 10_000
"""Longest string ``matches`` searches."""

_MAX_REPEAT: Final = 100
_MAX_PROGRAM: Final = 2000
RULE_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
"""Rule names double as reason codes: letters, digits, ``_ . : -``, at most 100 characters."""


class PolicySyntaxError(InvalidInput):
    """An expression does not parse. ``column`` (1-based) points at the offending character."""

    code = "GATE_POLICY_SYNTAX"
    title = "Policy expression does not parse"

    def __init__(self, message: str, *, column: int, expression: str, rule: str | None = None) -> None:
        where = f"rule {rule!r}: " if rule else ""
        super().__init__(
            f"{where}{message} at column {column}",
            errors=[{"loc": ["expr"], "msg": message, "column": column}],
        )
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
    """An expression failed while evaluating (wrong types, non-boolean rule result...)."""

    code = "GATE_POLICY_EVALUATION"
    title = "Policy expression failed"


class PolicyStepLimitExceeded(PolicyEvaluationError):
    """An expression used more than its evaluation step budget."""

    code = "GATE_POLICY_STEP_LIMIT"
    title = "Policy evaluation step limit exceeded"


# --------------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------------

_KEYWORDS: Final = frozenset({"and", "or", "not", "in", "true", "false", "null"})
_OPERATORS: Final = ("==", "!=", "<=", ">=", "=>", "<", ">", "(", ")", "[", "]", ",", ".", "-")
_COMPARISONS: Final = frozenset({"==", "!=", "<", "<=", ">", ">="})
_NUMBER: Final = re.compile(r"\d+(\.\d+)?([eE][+-]?\d+)?")
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "/": "/"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["num", "str", "name", "kw", "op", "eof"]
    value: Any
    column: int
    text: str


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(source)

    def fail(message: str, at: int) -> PolicySyntaxError:
        return PolicySyntaxError(message, column=at + 1, expression=source)

    while i < n:
        ch = source[i]
        if ch in " \t\r\n":
            i += 1
            continue
        if ch.isdigit():
            match = _NUMBER.match(source, i)
            assert match is not None
            text = match.group(0)
            end = match.end()
            if end < n and (source[end].isalpha() or source[end] == "_"):
                raise fail(f"malformed number {source[i : end + 1]!r}", i)
            value: Any = int(text) if match.group(1) is None and match.group(2) is None else float(text)
            tokens.append(_Token("num", value, i + 1, text))
            i = end
            continue
        if ch in "\"'":
            start = i
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise fail("unterminated string", start)
                c = source[i]
                if c == ch:
                    i += 1
                    break
                if c == "\\":
                    if i + 1 >= n:
                        raise fail("unterminated string", start)
                    esc = source[i + 1]
                    if esc in _ESCAPES:
                        chars.append(_ESCAPES[esc])
                        i += 2
                        continue
                    if esc == "u":
                        digits = source[i + 2 : i + 6]
                        if len(digits) != 4 or not all(d in "0123456789abcdefABCDEF" for d in digits):
                            raise fail("\\u must be followed by 4 hex digits", i)
                        chars.append(chr(int(digits, 16)))
                        i += 6
                        continue
                    raise fail(f"unknown escape \\{esc}", i)
                chars.append(c)
                i += 1
            tokens.append(_Token("str", "".join(chars), start + 1, source[start:i]))
            continue
        if ch.isalpha() or ch == "_":
            match = _NAME.match(source, i)
            assert match is not None
            word = match.group(0)
            kind: Literal["kw", "name"] = "kw" if word in _KEYWORDS else "name"
            tokens.append(_Token(kind, word, i + 1, word))
            i = match.end()
            continue
        for op in _OPERATORS:
            if source.startswith(op, i):
                tokens.append(_Token("op", op, i + 1, op))
                i += len(op)
                break
        else:
            if ch == "=":
                raise fail("unexpected '='; use '==' to compare", i)
            if ch == "!":
                raise fail("unexpected '!'; use 'not' or '!='", i)
            if source.startswith("&&", i):
                raise fail("unexpected '&&'; use 'and'", i)
            if source.startswith("||", i):
                raise fail("unexpected '||'; use 'or'", i)
            raise fail(f"unexpected character {ch!r}", i)
    tokens.append(_Token("eof", None, n + 1, "end of expression"))
    return tokens


# --------------------------------------------------------------------------------------------------
# Evaluation support
# --------------------------------------------------------------------------------------------------


class _Budget:
    __slots__ = ("left",)

    def __init__(self, steps: int) -> None:
        self.left = steps

    def charge(self, steps: int = 1) -> None:
        self.left -= steps
        if self.left < 0:
            raise PolicyStepLimitExceeded("expression exceeded its evaluation step limit")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: Any, b: Any, budget: _Budget) -> bool:
    budget.charge()
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y, budget) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k], budget) for k in a)
    return bool(a == b)


class _Node:
    __slots__ = ("column",)

    def __init__(self, column: int) -> None:
        self.column = column

    def children(self) -> Sequence[_Node]:
        return ()

    def evaluate(self, env: Mapping[str, Any], budget: _Budget) -> Any:
        raise NotImplementedError

    def error(self, message: str) -> PolicyEvaluationError:
        return PolicyEvaluationError(f"{message} (column {self.column})")


class _Literal(_Node):
    __slots__ = ("value",)

    def __init__(self, column: int, value: Any) -> None:
        super().__init__(column)
        self.value = value

    def evaluate(self, env: Mapping[str, Any], budget: _Budget) -> Any:
        budget.charge()
        return self.value


class _ListExpr(_Node):
    __slots__ = ("items",)

    def __init__(self, column: int, items: list[_Node]) -> None:
        super().__init__(column)
        self.items = items

    def children(self) -> Sequence[_Node]:
        return self.items

    def evaluate(self, env: Mapping[str, Any], budget: _Budget) -> Any:
        budget.charge()
        return [item.evaluate(env, budget) for item in self.items]


class _Name(_Node):
    __slots__ = ("name",)

    def __init__(self, column: int, name: str) -> None:
        super().__init__(column)
        self.name = name

    def evaluate(self, env: Mapping[str, Any], budget: _Budget) -> Any:
        budget.charge()
        return env.get(self.name)


class _Field(_Node):
    __slots__ = ("name", "target")

    def __init__(self, column: int, target: _Node, name: str) -> None:
        super().__init__(column)
        self.target = target
        self.name = name

    def children(self) -> Sequence[_Node]:
        return (self.target,)

    def evaluate(self, env: Mapping[str, Any], budget: _Budget) -> Any:
        value = self.target.evaluate(env, budget)
        budget.charge()
        if value is None:
            return None
        if isinstance(value, dict):
            return value.get(self.name)
        raise self.error(f"cannot read field {self.name!r} of a {_type_name(value)}")


class _Index(_Node):
    __slots__ = ("index", "target")

    def __init__(self, column: int, target: _Node, index: _Node) -> None:
        super().__init__(column)
        self.target = target
        self.index = index

    def children(self) -> Sequence[_Node]:
        return (self.target, self.index)

    def evaluate(self, env: Mapping[str, Any], budget: _Budget) -> Any:
        value = self.target.evaluate(env, budget)
        key = self.index.evaluate(env, budget)
        budget.charge()
        if value is None:
            return None
        if isinstance(value, list):
            if not isinstance(key, int) or isinstance(key, bool):
                raise self.error(f"a list index must be an integer, not a {_type_name(key)}")
            if -len(value) <= key < len(value):
                return value[key]
            return None
        if isinstance(value, dict):
            if not isinstance(key, str):
                raise self.error(f"an object key must be a string, not a {_type_name(key)}")
            return value.get(key)
        raise self.error(f"cannot index a {_type_name(value)}")


class _Negate(_Node):
    __slots__ = ("operand",)

    def __init__(self, column: int, operand: _Node) -> None:
        super().__init__(column)
        self.operand = operand

    def children(self) -> Sequence[_Node]:
        return (self.operand,)

    def evaluate(self, env: Mapping[str, Any], budget: _Budget) -> Any:
        value = self.operand.evaluate(env, budget)
        budget.charge()
        if not _is_number(value):
            raise self.error(f"'-' needs a number, not a {_type_name(value)}")
        return -value


class _Not(_Node):
    __slots__ = ("operand",)

    def __init__(self, column: int, operand: _Node) -> None:
        super().__init__(column)
        self.operand = operand

    def children(self) -> Sequence[_Node]:
        return (self.operand,)

    def evaluate(self, env: Mapping[str, Any], budget: _Budget) -> Any:
        value = self.operand.evaluate(env, budget)
        budget.charge()
        if not isinstance(value, bool):
            raise self.error(f"'not' needs a boolean, not a {_type_name(value)}")
        return not value


class _Logical(_Node):
    __slots__ = ("items", "op")

    def __init__(self, column: int, op: str, items: list[_Node]) -> None:
        super().__init__(column)
        self.op = op
        self.items = items

    def children(self) -> Sequence[_Node]:
        return self.items

    def evaluate(self, env: Mapping[str, Any], budget: _Budget) -> Any:
        stop = self.op == "or"
        for item in self.items:
            value = item.evaluate(env, budget)
            budget.charge()
            if not isinstance(value, bool):
                raise PolicyEvaluationError(
                    f"'{self.op}' needs booleans, got a {_type_name(value)} (column {item.column})"
                )
            if value is stop:
                return stop
        return not stop


class _Compare(_Node):
    __slots__ = ("left", "op", "right")

    def __init__(self, column: int, op: str, left: _Node, right: _Node) -> None:
        super().__init__(column)
        self.op = op
        self.left = left
        self.right = right

    def children(self) -> Sequence[_Node]:
        return (self.left, self.right)

    def evaluate(self, env: Mapping[str, Any], budget: _Budget) -> Any:
        left = self.left.evaluate(env, budget)
        right = self.right.evaluate(env, budget)
        budget.charge()
        op = self.op
        if op == "==":
            return _equal(left, right, budget)
        if op == "!=":
            return not _equal(left, right, budget)
        if op in ("in", "not in"):
            found = self._contains(left, right, budget)
            return found if op == "in" else not found
        if _is_number(left) and _is_number(right):
            pass
        elif not (isinstance(left, str) and isinstance(right, str)):
            raise self.error(f"cannot compare a {_type_name(left)} with a {_type_name(right)} using {op!r}")
        if op == "<":
            return left < right
        if op == "<=":
            return left <= right
        if op == ">":
            return left > right
        return left >= right

    def _contains(self, item: Any, container: Any, budget: _Budget) -> bool:
        if isinstance(container, list):
            return any(_equal(item, element, budget) for element in container)
        if isinstance(container, str):
            if not isinstance(item, str):
                raise self.error(f"'in' on a string needs a string on the left, not a {_type_name(item)}")
            budget.charge(len(container) // 64 + 1)
            return item in container
        if isinstance(container, dict):
            if not isinstance(item, str):
                raise self.error(f"'in' on an object needs a string key, not a {_type_name(item)}")
            return item in container
        raise self.error(f"'in' needs a list, string or object on the right, not a {_type_name(container)}")


class _Lambda(_Node):
    __slots__ = ("body", "param")

    def __init__(self, column: int, param: str, body: _Node) -> None:
        super().__init__(column)
        self.param = param
        self.body = body

    def children(self) -> Sequence[_Node]:
        return (self.body,)

    def call(self, env: Mapping[str, Any], value: Any, budget: _Budget) -> bool:
        scope = dict(env)
        scope[self.param] = value
        result = self.body.evaluate(scope, budget)
        if not isinstance(result, bool):
            raise PolicyEvaluationError(
                f"the body of '{self.param} => ...' must be a boolean, got a {_type_name(result)} "
                f"(column {self.body.column})"
            )
        return result

    def evaluate(self, env: Mapping[str, Any], budget: _Budget) -> Any:  # pragma: no cover - parser forbids
        raise self.error("a lambda can only be an argument of all() or any()")


class _Call(_Node):
    __slots__ = ("args", "name", "pattern")

    def __init__(self, column: int, name: str, args: list[_Node], pattern: _Regex | None) -> None:
        super().__init__(column)
        self.name = name
        self.args = args
        self.pattern = pattern

    def children(self) -> Sequence[_Node]:
        return self.args

    def evaluate(self, env: Mapping[str, Any], budget: _Budget) -> Any:
        budget.charge()
        name = self.name
        if name in ("all", "any"):
            items = self.args[0].evaluate(env, budget)
            if not isinstance(items, list):
                raise self.error(f"{name}() needs a list, not a {_type_name(items)}")
            predicate = self.args[1]
            assert isinstance(predicate, _Lambda)
            want = name == "any"
            for item in items:
                if predicate.call(env, item, budget) is want:
                    return want
            return not want
        values = [arg.evaluate(env, budget) for arg in self.args]
        if name == "len":
            (value,) = values
            if isinstance(value, list | str | dict):
                return len(value)
            raise self.error(f"len() needs a list, string or object, not a {_type_name(value)}")
        if name in ("startswith", "endswith"):
            text, affix = values
            if not isinstance(text, str) or not isinstance(affix, str):
                raise self.error(f"{name}() needs two strings, got {_type_name(text)} and {_type_name(affix)}")
            return text.startswith(affix) if name == "startswith" else text.endswith(affix)
        assert name == "matches"
        text, pattern = values
        if not isinstance(text, str) or not isinstance(pattern, str):
            raise self.error(f"matches() needs two strings, got {_type_name(text)} and {_type_name(pattern)}")
        if len(text) > MAX_MATCH_SUBJECT_LENGTH:
            raise self.error(f"matches() subject is longer than {MAX_MATCH_SUBJECT_LENGTH} characters")
        regex = self.pattern
        if regex is None:
            try:
                regex = _Regex(pattern)
            except ValueError as exc:
                raise self.error(f"invalid pattern {pattern!r}: {exc}") from None
        return regex.search(text, budget)


# Function name -> number of arguments.
_FUNCTIONS: Final[Mapping[str, int]] = {
    "len": 1,
    "all": 2,
    "any": 2,
    "startswith": 2,
    "endswith": 2,
    "matches": 2,
}


# --------------------------------------------------------------------------------------------------
# Linear-time regular expressions for matches()
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CharSet:
    ranges: tuple[tuple[int, int], ...]
    negated: bool = False

    def matches(self, ch: str) -> bool:
        code = ord(ch)
        inside = any(low <= code <= high for low, high in self.ranges)
        return inside != self.negated


_ANY: Final = _CharSet((), negated=True)
_CLASS_RANGES: Final[Mapping[str, tuple[tuple[int, int], ...]]] = {
    "d": ((48, 57),),
    "w": ((48, 57), (65, 90), (95, 95), (97, 122)),
    "s": ((9, 13), (32, 32)),
}
_CHAR_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}


class _RegexParser:
    """Parses the supported regex subset into a tree of tuples."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.pos = 0
        self.depth = 0

    def parse(self) -> tuple[Any, ...]:
        node = self._alternation()
        if self.pos < len(self.pattern):
            raise ValueError(f"unbalanced ')' at position {self.pos + 1}")
        return node

    def _peek(self) -> str | None:
        return self.pattern[self.pos] if self.pos < len(self.pattern) else None

    def _alternation(self) -> tuple[Any, ...]:
        branches = [self._concatenation()]
        while self._peek() == "|":
            self.pos += 1
            branches.append(self._concatenation())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def _concatenation(self) -> tuple[Any, ...]:
        items = []
        while self._peek() not in (None, "|", ")"):
            items.append(self._repeat())
        return ("cat", items)

    def _repeat(self) -> tuple[Any, ...]:
        start = self.pos
        atom = self._atom()
        quantified = False
        while self._peek() in ("*", "+", "?", "{"):
            if quantified:
                raise ValueError(f"multiple repeat at position {self.pos + 1}")
            if atom[0] in ("bol", "eol"):
                raise ValueError(f"nothing to repeat at position {start + 1}")
            low, high = self._quantifier()
            atom = ("rep", atom, low, high)
            quantified = True
            if self._peek() == "?":  # lazy variant: same set of matches
                self.pos += 1
        return atom

    def _quantifier(self) -> tuple[int, int | None]:
        ch = self.pattern[self.pos]
        self.pos += 1
        if ch == "*":
            return 0, None
        if ch == "+":
            return 1, None
        if ch == "?":
            return 0, 1
        match = re.compile(r"(\d+)(,(\d*))?\}").match(self.pattern, self.pos)
        if match is None:
            raise ValueError(f"malformed repeat at position {self.pos}; escape a literal '{{' as '\\{{'")
        self.pos = match.end()
        low = int(match.group(1))
        high: int | None = low
        if match.group(2):
            high = int(match.group(3)) if match.group(3) else None
        if low > _MAX_REPEAT or (high is not None and (high > _MAX_REPEAT or high < low)):
            raise ValueError(f"repeat counts must satisfy m <= n <= {_MAX_REPEAT}")
        return low, high

    def _atom(self) -> tuple[Any, ...]:
        ch = self.pattern[self.pos]
        if ch == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ValueError("groups nest too deeply")
            self.pos += 1
            if self.pattern.startswith("?:", self.pos):
                self.pos += 2
            elif self._peek() == "?":
                raise ValueError(f"unsupported group syntax at position {self.pos + 1}")
            node = self._alternation()
            if self._peek() != ")":
                raise ValueError("missing ')'")
            self.pos += 1
            self.depth -= 1
            return node
        self.pos += 1
        if ch == "[":
            return ("set", self._char_class())
        if ch == ".":
            return ("set", _ANY)
        if ch == "^":
            return ("bol",)
        if ch == "$":
            return ("eol",)
        if ch in "*+?":
            raise ValueError(f"nothing to repeat at position {self.pos}")
        if ch in "{}":
            raise ValueError(f"escape a literal {ch!r} as '\\{ch}' (position {self.pos})")
        if ch == "\\":
            return ("set", self._escape(in_class=False))
        return ("set", _CharSet(((ord(ch), ord(ch)),)))

    def _escape(self, *, in_class: bool) -> _CharSet:
        if self.pos >= len(self.pattern):
            raise ValueError("pattern ends with '\\'")
        ch = self.pattern[self.pos]
        self.pos += 1
        if ch.lower() in _CLASS_RANGES:
            return _CharSet(_CLASS_RANGES[ch.lower()], negated=ch.isupper())
        if ch in _CHAR_ESCAPES:
            code = ord(_CHAR_ESCAPES[ch])
            return _CharSet(((code, code),))
        if ch.isalnum():
            raise ValueError(f"unsupported escape '\\{ch}'")
        return _CharSet(((ord(ch), ord(ch)),))

    def _char_class(self) -> _CharSet:
        negated = self._peek() == "^"
        if negated:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        excluded: list[_CharSet] = []
        first = True
        while True:
            ch = self._peek()
            if ch is None:
                raise ValueError("missing ']'")
            if ch == "]" and not first:
                self.pos += 1
                break
            first = False
            self.pos += 1
            if ch == "\\":
                escaped = self._escape(in_class=True)
                if escaped.negated:
                    excluded.append(escaped)
                    continue
                if len(escaped.ranges) > 1 or escaped.ranges[0][0] != escaped.ranges[0][1]:
                    ranges.extend(escaped.ranges)
                    continue
                low = escaped.ranges[0][0]
            else:
                low = ord(ch)
            if self._peek() == "-" and self.pos + 1 < len(self.pattern) and self.pattern[self.pos + 1] != "]":
                self.pos += 1
                end_ch = self.pattern[self.pos]
                self.pos += 1
                if end_ch == "\\":
                    escaped = self._escape(in_class=True)
                    if escaped.negated or escaped.ranges[0][0] != escaped.ranges[0][1]:
                        raise ValueError("a class escape cannot end a range")
                    high = escaped.ranges[0][0]
                else:
                    high = ord(end_ch)
                if high < low:
                    raise ValueError("bad character range")
                ranges.append((low, high))
            else:
                ranges.append((low, low))
        if excluded:
            # [\D] and friends: fold the complement of each negated class into explicit ranges.
            for item in excluded:
                ranges.extend(_complement(item.ranges))
        return _CharSet(tuple(ranges), negated=negated)


def _complement(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    result = []
    current = 0
    for low, high in sorted(ranges):
        if low > current:
            result.append((current, low - 1))
        current = max(current, high + 1)
    result.append((current, 0x10FFFF))
    return result


class _Regex:
    """A compiled pattern, matched by simulating all NFA threads at once (time O(len(text) * size))."""

    __slots__ = ("program",)

    def __init__(self, pattern: str) -> None:
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise ValueError(f"pattern is longer than {MAX_PATTERN_LENGTH} characters")
        tree = _RegexParser(pattern).parse()
        self.program: list[tuple[Any, ...]] = []
        self._emit(tree)
        self.program.append(("match",))

    def _add(self, instruction: tuple[Any, ...]) -> int:
        if len(self.program) >= _MAX_PROGRAM:
            raise ValueError("pattern is too complex (too many repeats)")
        self.program.append(instruction)
        return len(self.program) - 1

    def _emit(self, node: tuple[Any, ...]) -> None:
        kind = node[0]
        if kind == "set":
            self._add(("char", node[1]))
        elif kind in ("bol", "eol"):
            self._add((kind,))
        elif kind == "cat":
            for item in node[1]:
                self._emit(item)
        elif kind == "alt":
            jumps = []
            branches = node[1]
            for index, branch in enumerate(branches):
                if index < len(branches) - 1:
                    split = self._add(("split", 0, 0))
                    self._emit(branch)
                    jumps.append(self._add(("jmp", 0)))
                    self.program[split] = ("split", split + 1, len(self.program))
                else:
                    self._emit(branch)
            for jump in jumps:
                self.program[jump] = ("jmp", len(self.program))
        else:
            _, body, low, high = node
            for _ in range(low):
                self._emit(body)
            if high is None:
                loop = self._add(("split", 0, 0))
                self._emit(body)
                self._add(("jmp", loop))
                self.program[loop] = ("split", loop + 1, len(self.program))
            else:
                splits = []
                for _ in range(high - low):
                    splits.append(self._add(("split", 0, 0)))
                    self._emit(body)
                for split in splits:
                    self.program[split] = ("split", split + 1, len(self.program))

    def search(self, text: str, budget: _Budget) -> bool:
        program = self.program
        size = len(text)

        def add(threads: list[int], seen: set[int], pc: int, pos: int) -> bool:
            stack = [pc]
            while stack:
                pc = stack.pop()
                if pc in seen:
                    continue
                seen.add(pc)
                budget.charge()
                instruction = program[pc]
                kind = instruction[0]
                if kind == "char":
                    threads.append(pc)
                elif kind == "match":
                    return True
                elif kind == "jmp":
                    stack.append(instruction[1])
                elif kind == "split":
                    stack.append(instruction[2])
                    stack.append(instruction[1])
                elif kind == "bol":
                    if pos == 0:
                        stack.append(pc + 1)
                elif pos == size:  # eol
                    stack.append(pc + 1)
            return False

        threads: list[int] = []
        seen: set[int] = set()
        for pos in range(size + 1):
            if add(threads, seen, 0, pos):
                return True
            if pos == size:
                break
            ch = text[pos]
            next_threads: list[int] = []
            next_seen: set[int] = set()
            for pc in threads:
                budget.charge()
                if program[pc][1].matches(ch) and add(next_threads, next_seen, pc + 1, pos + 1):
                    return True
            threads, seen = next_threads, next_seen
        return False


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.pos = 0
        self.depth = 0
        self.params: list[str] = []

    def fail(self, message: str, token: _Token | None = None) -> PolicySyntaxError:
        token = token or self.tokens[self.pos]
        return PolicySyntaxError(message, column=token.column, expression=self.source)

    def peek(self, offset: int = 0) -> _Token:
        return self.tokens[min(self.pos + offset, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def at(self, kind: str, value: Any = None, offset: int = 0) -> bool:
        token = self.peek(offset)
        return token.kind == kind and (value is None or token.value == value)

    def expect(self, kind: str, value: Any, what: str) -> _Token:
        if not self.at(kind, value):
            token = self.peek()
            raise self.fail(f"expected {what}, found {token.text!r}")
        return self.advance()

    def descend(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise PolicyLimitExceeded(
                f"expression nests deeper than {MAX_DEPTH} levels", column=token.column, expression=self.source
            )

    def parse(self) -> _Node:
        node = self.parse_or()
        if not self.at("eof"):
            token = self.peek()
            raise self.fail(f"unexpected {token.text!r}; expected an operator or the end of the expression")
        return node

    def parse_or(self) -> _Node:
        first = self.peek()
        items = [self.parse_and()]
        while self.at("kw", "or"):
            self.advance()
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else _Logical(first.column, "or", items)

    def parse_and(self) -> _Node:
        first = self.peek()
        items = [self.parse_not()]
        while self.at("kw", "and"):
            self.advance()
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else _Logical(first.column, "and", items)

    def parse_not(self) -> _Node:
        if self.at("kw", "not"):
            token = self.advance()
            self.descend(token)
            operand = self.parse_not()
            self.depth -= 1
            return _Not(token.column, operand)
        return self.parse_comparison()

    def _comparison_op(self) -> str | None:
        token = self.peek()
        if token.kind == "op" and token.value in _COMPARISONS:
            return str(token.value)
        if token.kind == "kw" and token.value == "in":
            return "in"
        if token.kind == "kw" and token.value == "not" and self.at("kw", "in", offset=1):
            return "not in"
        return None

    def parse_comparison(self) -> _Node:
        left = self.parse_unary()
        op = self._comparison_op()
        if op is None:
            return left
        token = self.advance()
        if op == "not in":
            self.advance()
        right = self.parse_unary()
        if self._comparison_op() is not None:
            raise self.fail("comparisons cannot be chained; combine them with 'and'")
        return _Compare(token.column, op, left, right)

    def parse_unary(self) -> _Node:
        if self.at("op", "-"):
            token = self.advance()
            self.descend(token)
            operand = self.parse_unary()
            self.depth -= 1
            if isinstance(operand, _Literal) and _is_number(operand.value):
                return _Literal(token.column, -operand.value)
            return _Negate(token.column, operand)
        return self.parse_postfix()

    def parse_postfix(self) -> _Node:
        node = self.parse_primary()
        steps = 0
        while True:
            if self.at("op", "."):
                dot = self.advance()
                name = self.peek()
                if name.kind not in ("name", "kw"):
                    raise self.fail(f"expected a field name after '.', found {name.text!r}")
                self.advance()
                node = _Field(dot.column, node, str(name.value))
            elif self.at("op", "["):
                bracket = self.advance()
                self.descend(bracket)
                index = self.parse_or()
                self.depth -= 1
                self.expect("op", "]", "']'")
                node = _Index(bracket.column, node, index)
            else:
                break
            steps += 1
            if self.depth + steps > MAX_DEPTH:
                raise PolicyLimitExceeded(
                    f"expression nests deeper than {MAX_DEPTH} levels",
                    column=self.tokens[self.pos - 1].column,
                    expression=self.source,
                )
        return node

    def parse_primary(self) -> _Node:
        token = self.peek()
        if token.kind in ("num", "str"):
            self.advance()
            return _Literal(token.column, token.value)
        if token.kind == "kw" and token.value in ("true", "false", "null"):
            self.advance()
            return _Literal(token.column, {"true": True, "false": False, "null": None}[token.value])
        if self.at("op", "("):
            self.advance()
            self.descend(token)
            node = self.parse_or()
            self.depth -= 1
            self.expect("op", ")", "')'")
            return node
        if self.at("op", "["):
            self.advance()
            self.descend(token)
            items: list[_Node] = []
            if not self.at("op", "]"):
                items.append(self.parse_or())
                while self.at("op", ","):
                    self.advance()
                    items.append(self.parse_or())
            self.depth -= 1
            self.expect("op", "]", "',' or ']'")
            return _ListExpr(token.column, items)
        if token.kind == "name":
            self.advance()
            if self.at("op", "("):
                return self.parse_call(token)
            if self.at("op", "=>"):
                raise self.fail("a lambda 'x => ...' is only allowed as the second argument of all() or any()")
            return _Name(token.column, str(token.value))
        if token.kind == "eof":
            raise self.fail("unexpected end of expression")
        raise self.fail(f"unexpected {token.text!r}")

    def parse_call(self, name: _Token) -> _Node:
        function = str(name.value)
        if function not in _FUNCTIONS:
            known = ", ".join(sorted(_FUNCTIONS))
            raise self.fail(f"unknown function {function!r} (known: {known})", name)
        self.advance()  # (
        self.descend(name)
        args: list[_Node] = []
        if not self.at("op", ")"):
            while True:
                if function in ("all", "any") and len(args) == 1:
                    args.append(self.parse_lambda(function))
                else:
                    args.append(self.parse_or())
                if not self.at("op", ","):
                    break
                self.advance()
        self.depth -= 1
        self.expect("op", ")", "',' or ')'")
        if len(args) != _FUNCTIONS[function]:
            raise self.fail(f"{function}() takes {_FUNCTIONS[function]} argument(s), got {len(args)}", name)
        pattern: _Regex | None = None
        if function == "matches" and isinstance(args[1], _Literal):
            literal = args[1]
            if not isinstance(literal.value, str):
                raise self.fail("matches() needs a string pattern", self._token_at(literal.column))
            try:
                pattern = _Regex(literal.value)
            except ValueError as exc:
                raise PolicySyntaxError(
                    f"invalid pattern: {exc}", column=literal.column, expression=self.source
                ) from None
        return _Call(name.column, function, args, pattern)

    def _token_at(self, column: int) -> _Token:
        return next(t for t in self.tokens if t.column == column)

    def parse_lambda(self, function: str) -> _Node:
        param = self.peek()
        if param.kind != "name" or not self.at("op", "=>", offset=1):
            raise self.fail(f"the second argument of {function}() must be a lambda like 'x => x.name == \"a\"'")
        self.advance()
        self.advance()
        body = self.parse_or()
        return _Lambda(param.column, str(param.value), body)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed expression; evaluate it any number of times with :meth:`evaluate`."""

    source: str
    _root: _Node = field(repr=False, compare=False)

    def evaluate(self, document: Mapping[str, Any], *, max_steps: int = MAX_STEPS) -> Any:
        """Evaluate over ``document`` (converted to plain JSON first) and return the JSON result.

        Raises:
            PolicyEvaluationError: a type error or other failure during evaluation.
            PolicyStepLimitExceeded: more than ``max_steps`` steps were needed.
        """
        plain = to_json_value(document)
        if not isinstance(plain, dict):
            raise PolicyEvaluationError("the policy input must be a JSON object")
        return self._root.evaluate(plain, _Budget(max_steps))

    def _evaluate_plain(self, document: dict[str, Any], max_steps: int) -> Any:
        return self._root.evaluate(document, _Budget(max_steps))


def parse_expression(source: str) -> Expression:
    """Parse an expression.

    Raises:
        PolicySyntaxError: the expression does not parse; ``column`` points at the problem.
        PolicyLimitExceeded: the expression is longer than :data:`MAX_EXPRESSION_LENGTH` or nests deeper
            than :data:`MAX_DEPTH`.
    """
    if not isinstance(source, str):
        raise PolicySyntaxError("an expression must be a string", column=1, expression=repr(source))
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise PolicyLimitExceeded(
            f"expression is longer than {MAX_EXPRESSION_LENGTH} characters",
            column=MAX_EXPRESSION_LENGTH + 1,
            expression=source[:80],
        )
    if not source.strip():
        raise PolicySyntaxError("empty expression", column=1, expression=source)
    # The parser counts every nesting construct against MAX_DEPTH, which also bounds the evaluator's
    # recursion: a tree can only be a small constant factor deeper than the counted nesting.
    return Expression(source, _Parser(source).parse())


def evaluate_expression(
    expression: str | Expression, document: Mapping[str, Any], *, max_steps: int = MAX_STEPS
) -> Any:
    """Parse (when given text) and evaluate an expression over ``document``.

    Raises:
        PolicySyntaxError: the expression does not parse.
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

    def evaluate(self, document: Mapping[str, Any], *, max_steps: int = MAX_STEPS) -> tuple[RuleOutcome, ...]:
        """Evaluate every rule over ``document``; each rule has its own step budget.

        A rule that does not return a boolean, or fails, has status ``error``.
        """
        plain = to_json_value(document)
        if not isinstance(plain, dict):
            raise PolicyEvaluationError("the policy input must be a JSON object")
        outcomes = []
        for rule, expression in zip(self.rules, self._expressions, strict=True):
            try:
                value = expression._evaluate_plain(plain, max_steps)
            except PolicyEvaluationError as exc:
                outcomes.append(RuleOutcome(rule.name, "error", exc.detail, exc.code))
                continue
            if not isinstance(value, bool):
                outcomes.append(
                    RuleOutcome(
                        rule.name,
                        "error",
                        f"rule must evaluate to true or false, got a {_type_name(value)}",
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
            expressions.append(parse_expression(rule.expr))
        except PolicySyntaxError as exc:
            error_type: Callable[..., PolicySyntaxError] = type(exc)
            raise error_type(
                exc.errors[0]["msg"] if exc.errors else exc.detail,
                column=exc.column,
                expression=rule.expr,
                rule=rule.name,
            ) from None
    return Policy(parsed, tuple(expressions))


def policy_digest(rules: Sequence[Mapping[str, Any] | PolicyRule]) -> str:
    """Return ``"sha256:<hex>"`` over the canonical JSON of the rules, sorted by name.

    Rules are evaluated independently, so their order carries no meaning and does not change the digest.

    Raises:
        InvalidPolicy: a rule is malformed.
    """
    parsed = sorted((PolicyRule.from_dict(rule) for rule in rules), key=lambda rule: rule.name)
    return sha256_digest([rule.to_dict() for rule in parsed])
