"""Where a Stella installation's subjects and streams live on a NATS server.

With an empty namespace (the default) subjects are exactly the contracts' constants. A namespace puts a
whole installation under ``stella.<namespace>.…`` with streams ``<NAME>_<NAMESPACE>``, so several
installations (or test runs) share one NATS server without seeing each other's messages or consumers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stella.contracts.streams import StreamSpec

_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
# The second token of contract subjects (stella.evt..., stella.public...): a namespace named like one of
# them would put an installation's subjects inside another's.
_RESERVED = frozenset({"evt", "cmd", "rpc", "dlq", "public"})


@dataclass(frozen=True)
class Names:
    """Maps contract subjects and stream names into a namespace and back."""

    namespace: str = ""

    def __post_init__(self) -> None:
        if self.namespace and not _NAMESPACE.match(self.namespace):
            raise ValueError(f"NATS namespace {self.namespace!r} must match {_NAMESPACE.pattern}")
        if self.namespace in _RESERVED:
            raise ValueError(f"NATS namespace {self.namespace!r} is reserved (one of {sorted(_RESERVED)})")

    def subject(self, subject: str) -> str:
        """The wire subject of a contract subject (``stella.x.y`` -> ``stella.<ns>.x.y``)."""
        if not self.namespace:
            return subject
        head, _, rest = subject.partition(".")
        if head != "stella":
            raise ValueError(f"{subject} is not a stella subject")
        return f"stella.{self.namespace}.{rest}"

    def local(self, wire_subject: str) -> str:
        """The contract subject of a wire subject (inverse of :meth:`subject`)."""
        if not self.namespace:
            return wire_subject
        prefix = f"stella.{self.namespace}."
        if not wire_subject.startswith(prefix):
            raise ValueError(f"{wire_subject} is outside namespace {self.namespace}")
        return "stella." + wire_subject[len(prefix) :]

    def stream(self, spec: StreamSpec) -> str:
        """The stream name of ``spec`` in this namespace."""
        if not self.namespace:
            return spec.name
        return f"{spec.name}_{self.namespace.upper().replace('-', '_')}"

    def stream_subjects(self, spec: StreamSpec) -> list[str]:
        """The wire subjects ``spec`` captures in this namespace."""
        return [self.subject(s) for s in spec.subjects]
