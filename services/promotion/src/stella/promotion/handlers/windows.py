"""Freeze windows as the handlers need them: built from their contract spec, their occurrences and
transitions, and the windows that keep an environment closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

from stella.contracts import promotion as c
from stella.promotion import freeze
from stella.promotion.domain.encoding import format_utc
from stella.promotion.handlers.messages import MESSAGE_NAMESPACE


def window_from_spec(
    spec: c.FreezeWindowSpec, window_id: UUID, created_by: UUID | None, now: datetime | None = None
) -> freeze.FreezeWindow:
    """Validate a client's window with the freeze module.

    A recurring window anchors its occurrences at ``dtstart``; ``start`` stands in for it when only
    ``start`` is given, since the reference describes windows as ``start`` with ``end`` or with ``rrule``.
    With neither, ``dtstart`` is :func:`freeze.default_dtstart`: local midnight of the creation day, moved
    back by whole periods so that an occurrence already running when the window is created belongs to it
    (a rule with ``COUNT`` needs an explicit ``dtstart``). Given ``now``, a window with no occurrence ending
    after it (``UNTIL`` or ``end`` in the past) is refused: it would never apply.

    Raises:
        freeze.InvalidFreezeWindow: or a subclass (bad RRULE, unknown time zone, bounds, duration, schedule,
            a window that never applies).
    """
    raw: dict[str, Any] = {
        "id": str(window_id),
        "kind": spec.kind,
        "timezone": spec.timezone,
        "reason": spec.reason,
        "created_by": str(created_by) if created_by else "",
        "exceptions": [str(p) for p in spec.exceptions],
    }
    start: Any = spec.start
    dtstart: Any = spec.dtstart
    if spec.rrule is not None and dtstart is None and start is not None:
        start, dtstart = None, start
    if spec.rrule is not None and dtstart is None and now is not None and spec.duration_s is not None:
        duration = timedelta(seconds=min(spec.duration_s, freeze.MAX_DURATION.total_seconds()))
        dtstart = freeze.default_dtstart(spec.rrule, spec.timezone, duration, now).isoformat()
    optional = {
        "start": start,
        "end": spec.end,
        "rrule": spec.rrule,
        "dtstart": dtstart,
        "duration": _duration(spec.duration_s),
    }
    raw.update({k: v for k, v in optional.items() if v is not None})
    window = freeze.parse_window(raw)
    if now is not None and not window.applies_after(now):
        raise freeze.WindowNeverApplies(
            f"window {window.id!r} has no occurrence that ends after now ({format_utc(now)}): "
            "its end or UNTIL is in the past, or its COUNT is used up"
        )
    return window


def _duration(seconds: float | None) -> int | timedelta | None:
    if seconds is None:
        return None
    # Whole seconds go in as an integer; anything else is left for the freeze module to refuse clearly.
    return int(seconds) if float(seconds).is_integer() else timedelta(seconds=seconds)


def active_occurrence(window: freeze.FreezeWindow, now: datetime) -> tuple[datetime, datetime] | None:
    """The occurrence of ``window`` that covers ``now``, if any."""
    covering = [(s, e) for s, e in window.occurrences(now, now + timedelta(microseconds=1)) if s <= now < e]
    return covering[0] if covering else None


def next_transition_after(window: freeze.FreezeWindow, after: datetime) -> datetime | None:
    """When the freeze timer must look at ``window`` next; None once it can never open or close again.

    Past the search horizon the window is looked at again at the horizon, so a sparse rule (or a one-off
    window more than 400 days ahead) is not forgotten.
    """
    found = freeze.next_transition([window], after)
    if found is not None:
        return found
    if window.is_recurring or (window.end is not None and window.end > after):
        return after + freeze.SEARCH_HORIZON
    return None


def occurrence_key(window: freeze.FreezeWindow, start: datetime) -> str:
    """The freeze module's key of one occurrence of a window."""
    return f"{window.id}@{format_utc(start)}"


def freeze_event_id(tenant: UUID, key: str) -> UUID:
    """The message id of a freeze transition: a replayed or repeated transition is the same message."""
    return uuid5(MESSAGE_NAMESPACE, f"freeze:{tenant}:{key}")


def closing_windows(
    windows: Sequence[freeze.FreezeWindow], state: freeze.EnvironmentState
) -> list[freeze.FreezeWindow]:
    """The windows that keep an environment closed: active deny windows, or every allow window outside them."""
    active = set(state.active_window_ids)
    deny = [x for x in windows if x.kind is freeze.WindowKind.DENY and x.id in active]
    allow = [x for x in windows if x.kind is freeze.WindowKind.ALLOW]
    outside_schedule = bool(allow) and not any(x.id in active for x in allow)
    return deny + (allow if outside_schedule else [])
