"""CEL (``stella.cel``) cost per evaluation against the same rules written in Python, measured in the same run.

Baseline: three typical policy rules as Python functions over the same JSON document (what a hand-written
evaluator costs at best). Measured, per evaluation of the three rules: compiling anew then evaluating (what
every decision paid before compiled programs were kept), the policy gate's path (``compile`` then evaluate:
what :class:`~stella.promotion.gates.PolicyGate` does on every decision, now served from the cache), and
evaluation of programs compiled once. No server needed.

    uv run python tests/bench/cel.py [N]

Exits non-zero when the policy gate's path costs more than ``GOAL_RATIO`` times the baseline.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from stella import cel

GOAL_RATIO = 400.0
"""Most the policy gate's path (compile + evaluate) may cost, as a multiple of the Python baseline."""

RULES = (
    'release.components.all(c, c.digest.startsWith("sha256:") && c.tag != "latest")',
    'environment.name != "prod" || approvals.granted >= 2',
    'release.components.exists(c, c.name == "api" && c.semver.matches("^1\\\\.[0-9]+\\\\.[0-9]+$"))',
)
VARIABLES = ("release", "environment", "approvals")


def document(components: int) -> dict[str, Any]:
    """Decision inputs with ``components`` components."""
    return {
        "release": {
            "components": [
                {
                    "name": "api" if i == 0 else f"c{i}",
                    "digest": "sha256:" + "a" * 64,
                    "tag": "1.4.2",
                    "semver": "1.4.2",
                }
                for i in range(components)
            ]
        },
        "environment": {"name": "prod"},
        "approvals": {"granted": 2},
    }


def python_rules(doc: dict[str, Any]) -> list[bool]:
    """The same three rules, hand-written."""
    components = doc["release"]["components"]
    return [
        all(c["digest"].startswith("sha256:") and c["tag"] != "latest" for c in components),
        doc["environment"]["name"] != "prod" or doc["approvals"]["granted"] >= 2,
        any(c["name"] == "api" and cel_free_semver(c["semver"]) for c in components),
    ]


def cel_free_semver(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 3 and parts[0] == "1" and all(p.isdigit() for p in parts[1:])


def per_call(n: int, call: Callable[[], Any]) -> float:
    """Seconds per call of ``call`` (best of three rounds of ``n``)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter() - started) / n)
    return best


def main(n: int) -> int:
    failed = 0
    for components in (3, 20):
        doc = document(components)
        expected = python_rules(doc)
        compiled = [cel.compile(rule, variables=VARIABLES) for rule in RULES]
        assert [p.evaluate(doc) for p in compiled] == expected

        def gate_path(doc: dict[str, Any] = doc) -> list[Any]:
            bound = cel.bind(doc)
            return [cel.compile(rule, variables=VARIABLES).evaluate(bound) for rule in RULES]

        def uncached_path(doc: dict[str, Any] = doc) -> list[Any]:
            bound = cel.bind(doc)
            compile_anew = cel._compile.__wrapped__  # what every decision paid before programs were kept
            return [compile_anew(rule, frozenset(VARIABLES)).evaluate(bound) for rule in RULES]

        def compiled_path(doc: dict[str, Any] = doc, compiled: list[cel.Program] = compiled) -> list[Any]:
            bound = cel.bind(doc)
            return [p.evaluate(bound) for p in compiled]

        def baseline(doc: dict[str, Any] = doc) -> list[bool]:
            return python_rules(doc)

        assert gate_path() == expected
        base = per_call(n * 20, baseline)
        uncached = per_call(max(n // 10, 5), uncached_path)
        gate = per_call(max(n // 10, 5), gate_path)
        ready = per_call(max(n // 10, 5), compiled_path)
        print(f"3 rules over {components} components")
        print(f"  python rules (baseline)     {base * 1e6:9,.1f} us   1x")
        print(f"  compile anew + eval (before) {uncached * 1e6:9,.1f} us   {uncached / base:,.0f}x")
        print(f"  policy gate: compile + eval {gate * 1e6:9,.1f} us   {gate / base:,.0f}x")
        print(f"  compiled once: eval only    {ready * 1e6:9,.1f} us   {ready / base:,.0f}x")
        if gate / base > GOAL_RATIO:
            print(f"GOAL MISSED: policy gate path {gate / base:,.0f}x > {GOAL_RATIO:,.0f}x", file=sys.stderr)
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
