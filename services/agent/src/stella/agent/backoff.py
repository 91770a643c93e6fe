"""Growing, jittered pauses between attempts while something is unavailable."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with full jitter: each pause is drawn from ``[base/2, min(cap, base * 2**n)]``.

    Args:
        initial_s: The first pause's upper bound.
        max_s: The largest pause.
    """

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0

    def next(self) -> float:
        """The pause before the next attempt (counts one more failure)."""
        ceiling = min(self.max_s, self.initial_s * 2 ** min(self.failures, 30))
        self.failures += 1
        return random.uniform(min(ceiling, self.initial_s / 2), ceiling)

    def reset(self) -> None:
        """Start over after a success."""
        self.failures = 0
