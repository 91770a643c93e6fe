"""Freeze windows and deployment schedules: validation and exact, clock-free evaluation.

A window is either one-off (``start``/``end``) or recurring (an RFC 5545 ``RRULE`` with a ``dtstart`` and a
``duration``). ``deny`` windows close the environment while they are active; ``allow`` windows are a
schedule: when an environment has any, it is open only inside one of them. Deny beats allow.

Time semantics:

* Every interval is half-open, ``[start, end)``: a window ending at 08:00 no longer applies at 08:00.
* Recurrences are computed in the local wall time of the window's IANA time zone. ``dtstart`` is a
  local wall time (an aware ``dtstart`` is first converted to that zone), so "every Friday 16:00" stays
  16:00 local on both sides of a daylight-saving change.
* The end of an occurrence is the local wall-clock start plus ``duration``, computed in local time and
  then resolved to an instant. "Friday 16:00 for 64 h" therefore always ends Monday 08:00 local time,
  even though the elapsed time is 63 h or 65 h on a weekend with a daylight-saving change.
* Local times are resolved as RFC 5545 prescribes: a time that occurs twice (autumn) means the first
  occurrence, a time that does not exist (spring gap) is read with the offset before the gap (02:30 on
  the spring-forward day is 03:30 summer time). Start and end are resolved separately, so an occurrence
  lying wholly inside the gap moves forward by the gap's length, and one that would end before it starts
  (02:30 to 03:00 on the spring-forward day: a wall-clock span that does not exist) is empty and ignored.
* One-off ``start``/``end`` given without an offset are local wall times of the window's zone too.
* Searches for the next opening or closing look at most :data:`SEARCH_HORIZON` (400 days) ahead; past it
  the answer is ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import rrule as RecurrenceRule
from dateutil.rrule import rrulestr

from stella.promotion.domain.encoding import format_utc, require_aware
from stella.promotion.domain.errors import InvalidInput, RuleViolation

SEARCH_HORIZON: Final = timedelta(days=400)
"""How far ahead ``next_open``, ``next_close`` and :func:`next_transition` look."""

MAX_DURATION: Final = timedelta(days=366)
"""Longest allowed occurrence of a recurring window."""

MAX_OCCURRENCES_PER_YEAR: Final = 10_000
"""Densest allowed recurrence (an hourly rule has 8,784 occurrences in a leap year)."""

MAX_INTERVAL: Final = 1000
"""Largest ``INTERVAL`` of a window's RRULE (every 1000 hours, days, weeks, months or years)."""

MAX_COUNT: Final = 100_000
"""Largest ``COUNT`` of a window's RRULE; ``COUNT=0`` (a rule that never fires) is refused too."""

ALLOWED_FREQUENCIES: Final = frozenset({"YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY"})
"""``FREQ`` values accepted in a window's RRULE; minutely and secondly rules make no sense for a freeze."""

# The horizons tried one after the other: most answers are found within days, so the long search (and
# the occurrence enumeration it needs) only runs when a short one finds nothing.
_SEARCH_STEPS: Final = (timedelta(days=8), timedelta(days=64), SEARCH_HORIZON)
# Slack added around local-time queries so that UTC offsets (at most a day apart) never hide an occurrence.
_SLACK: Final = timedelta(days=1)
_RRULE_PARTS: Final = frozenset(
    {
        "FREQ",
        "UNTIL",
        "COUNT",
        "INTERVAL",
        "BYSECOND",
        "BYMINUTE",
        "BYHOUR",
        "BYDAY",
        "BYMONTHDAY",
        "BYYEARDAY",
        "BYWEEKNO",
        "BYMONTH",
        "BYSETPOS",
        "WKST",
    }
)
_WINDOW_KEYS: Final = frozenset(
    {
        "id",
        "kind",
        "start",
        "end",
        "rrule",
        "dtstart",
        "duration",
        "timezone",
        "reason",
        "created_by",
        "exceptions",
    }
)
_ISO_DURATION: Final = re.compile(
    r"^P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)
OVERRIDE_PERMISSION: Final = "freeze:override"
"""Permission that lets a principal override any freeze window (besides the window's own exceptions)."""


class InvalidFreezeWindow(InvalidInput):
    """A freeze window definition is invalid."""

    code = "ENV_FREEZE_WINDOW_INVALID"
    title = "Invalid freeze window"


class InvalidRRule(InvalidFreezeWindow):
    """The RRULE is not a valid RFC 5545 recurrence rule, or is one this service refuses."""

    code = "ENV_FREEZE_RRULE_INVALID"
    title = "Invalid recurrence rule"


class UnknownTimeZone(InvalidFreezeWindow):
    """The time zone is not an IANA time zone name."""

    code = "ENV_FREEZE_TIMEZONE_UNKNOWN"
    title = "Unknown time zone"


class InvalidWindowBounds(InvalidFreezeWindow):
    """A one-off window ends at or before its start."""

    code = "ENV_FREEZE_WINDOW_BOUNDS_INVALID"
    title = "Window ends before it starts"


class InvalidWindowDuration(InvalidFreezeWindow):
    """A recurring window's duration is missing, not positive, or too long."""

    code = "ENV_FREEZE_DURATION_INVALID"
    title = "Invalid window duration"


class InvalidWindowSchedule(InvalidFreezeWindow):
    """A window gives both ``end`` and ``rrule``, or neither, or mixes one-off and recurring fields."""

    code = "ENV_FREEZE_SCHEDULE_INVALID"
    title = "Window must be one-off or recurring"


class WindowNeverApplies(InvalidFreezeWindow):
    """The window has no occurrence that ends after now: an UNTIL or end in the past, a COUNT used up."""

    code = "ENV_FREEZE_WINDOW_NEVER_APPLIES"
    title = "Window never applies"


class TransitionRangeTooLarge(InvalidInput):
    """A window-transition listing was asked for a range longer than the search horizon."""

    code = "ENV_FREEZE_RANGE_TOO_LARGE"
    title = "Range too large"


class OverrideReasonRequired(InvalidInput):
    """A freeze override gives no reason; the reason is mandatory and recorded."""

    code = "GATE_OVERRIDE_REASON_REQUIRED"
    title = "Override needs a reason"


class OverrideForbidden(RuleViolation):
    """The principal is neither an exception of the closing windows nor holds ``freeze:override``."""

    code = "GATE_FREEZE_OVERRIDE_FORBIDDEN"
    title = "Principal may not override this window"


class WindowKind(StrEnum):
    """Whether a window closes the environment (deny) or is a time the environment is open (allow)."""

    DENY = "deny"
    ALLOW = "allow"


def _zone(name: Any, window_id: str) -> ZoneInfo:
    if not isinstance(name, str) or not name.strip():
        raise UnknownTimeZone(f"window {window_id!r}: timezone must be an IANA name such as 'Europe/Berlin'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError/OSError: names that are not even paths inside the database (absolute, '..', NUL).
        raise UnknownTimeZone(f"window {window_id!r}: unknown IANA time zone {name!r}") from None


def _to_utc(local: datetime, zone: ZoneInfo) -> datetime:
    """Resolve a local wall time to an instant (fold=0: first of two, offset before a gap: RFC 5545)."""
    return local.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _to_local(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def parse_duration(value: Any, *, window_id: str = "?") -> timedelta:
    """Parse a window duration: a timedelta, a number of seconds, or ISO 8601 (``PT64H``, ``P2DT16H``).

    Years and months are refused because their length varies.

    Raises:
        InvalidWindowDuration: the value is none of these forms.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _ISO_DURATION.match(value.strip().upper())
        if match and value.strip().upper() not in ("P", "PT") and not value.strip().upper().endswith("T"):
            parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
            return timedelta(
                weeks=parts.get("weeks", 0),
                days=parts.get("days", 0),
                hours=parts.get("hours", 0),
                minutes=parts.get("minutes", 0),
                seconds=parts.get("seconds", 0),
            )
    raise InvalidWindowDuration(
        f"window {window_id!r}: duration {value!r} is not an ISO 8601 duration like 'PT64H' "
        "or a number of seconds (years and months are not allowed)"
    )


def format_duration(value: timedelta) -> str:
    """Format a duration as ISO 8601 with hours, minutes and seconds only (``PT64H``, ``PT1H30M``)."""
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    text = "PT"
    if hours:
        text += f"{hours}H"
    if minutes:
        text += f"{minutes}M"
    if seconds or text == "PT":
        text += f"{seconds}S"
    return text


def _parse_instant(value: Any, zone: ZoneInfo, what: str, window_id: str) -> datetime:
    """Parse ``start``/``end``: aware values are instants, naive ones local wall times of ``zone``."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidFreezeWindow(f"window {window_id!r}: {what} {value!r} is not an ISO 8601 date-time") from None
    if not isinstance(value, datetime):
        raise InvalidFreezeWindow(f"window {window_id!r}: {what} must be an ISO 8601 date-time")
    if value.tzinfo is None or value.utcoffset() is None:
        return _to_utc(value, zone)
    return value.astimezone(UTC)


def _parse_local(value: Any, zone: ZoneInfo, window_id: str) -> datetime:
    """Parse ``dtstart`` to a naive local wall time of ``zone``."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidFreezeWindow(f"window {window_id!r}: dtstart {value!r} is not an ISO 8601 date-time") from None
    if not isinstance(value, datetime):
        raise InvalidFreezeWindow(f"window {window_id!r}: a recurring window needs dtstart (ISO 8601 date-time)")
    local: datetime = value
    if local.tzinfo is not None and local.utcoffset() is not None:
        local = _to_local(local, zone)
    return local.replace(tzinfo=None, microsecond=0)


def _normalise_rrule(text: Any, zone: ZoneInfo, window_id: str) -> tuple[str, str]:
    """Check an RRULE's parts and return (stored form, form handed to dateutil).

    ``UNTIL`` may be a UTC time (``...Z``, what RFC 5545 requires with a zoned ``DTSTART``) or a local
    wall time; dateutil works on local wall times here, so a UTC ``UNTIL`` is converted for it.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidRRule(f"window {window_id!r}: rrule must be an RFC 5545 RRULE such as 'FREQ=WEEKLY;BYDAY=FR'")
    value = text.strip()
    if "\n" in value or "\r" in value:
        raise InvalidRRule(
            f"window {window_id!r}: rrule must be a single RRULE value; give dtstart and duration as fields"
        )
    if value.upper().startswith("RRULE:"):
        value = value[len("RRULE:") :]
    value = value.upper()
    parts: dict[str, str] = {}
    for part in value.split(";"):
        if "=" not in part:
            raise InvalidRRule(f"window {window_id!r}: rrule part {part!r} is not NAME=VALUE")
        name, _, item = part.partition("=")
        if name not in _RRULE_PARTS:
            raise InvalidRRule(f"window {window_id!r}: rrule part {name!r} is not an RFC 5545 RRULE part")
        if name in parts:
            raise InvalidRRule(f"window {window_id!r}: rrule part {name} appears twice")
        if not item:
            raise InvalidRRule(f"window {window_id!r}: rrule part {name} has no value")
        parts[name] = item
    freq = parts.get("FREQ")
    if freq is None:
        raise InvalidRRule(f"window {window_id!r}: rrule needs FREQ")
    if freq not in ALLOWED_FREQUENCIES:
        allowed = ", ".join(sorted(ALLOWED_FREQUENCIES))
        raise InvalidRRule(f"window {window_id!r}: FREQ={freq} is not allowed; use one of {allowed}")
    if "COUNT" in parts and "UNTIL" in parts:
        raise InvalidRRule(f"window {window_id!r}: rrule must not give both COUNT and UNTIL (RFC 5545)")
    for name, upper in (("COUNT", MAX_COUNT), ("INTERVAL", MAX_INTERVAL)):
        if name in parts and not (parts[name].isascii() and parts[name].isdigit() and 1 <= int(parts[name]) <= upper):
            raise InvalidRRule(f"window {window_id!r}: {name} must be a whole number from 1 to {upper}")
    engine_parts = dict(parts)
    until = parts.get("UNTIL")
    if until is not None and until.endswith("Z"):
        try:
            until_utc = datetime.strptime(until, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise InvalidRRule(f"window {window_id!r}: UNTIL {until!r} is not YYYYMMDDTHHMMSSZ") from None
        engine_parts["UNTIL"] = _to_local(until_utc, zone).strftime("%Y%m%dT%H%M%S")
    stored = ";".join(f"{k}={v}" for k, v in parts.items())
    engine = ";".join(f"{k}={v}" for k, v in engine_parts.items())
    return stored, engine


def default_dtstart(rrule_text: str, timezone: str, duration: timedelta, now: datetime) -> datetime:
    """The ``dtstart`` of a recurring window created at ``now`` without one (a naive local wall time).

    It is local midnight of the creation day, moved back by whole recurrence periods (``INTERVAL`` times the
    rule's frequency, in local wall time) until it lies at least ``duration`` before ``now``: an occurrence
    that started before the window was created and still runs (daily 22:00 for 8 h, created at 03:46) is
    then part of the window. Whole periods keep everything the rule takes from dtstart (weekday, day of
    month, the phase of ``INTERVAL``); a month or year back that lacks the day (the 31st, 29 February) is
    skipped for the next one.

    Raises:
        InvalidRRule: the rule gives ``COUNT``, which counts occurrences from dtstart: such a rule needs an
            explicit ``dtstart``. Other problems are left to :func:`parse_window`.
    """
    now = require_aware(now, "now")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        zone = ZoneInfo("UTC")  # parse_window names the bad time zone
    local_now = _to_local(now, zone)
    midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    parts = {}
    for part in rrule_text.strip().upper().removeprefix("RRULE:").split(";"):
        name, _, value = part.partition("=")
        parts[name] = value
    if "COUNT" in parts:
        raise InvalidRRule("a rule with COUNT counts its occurrences from dtstart: give dtstart")
    try:
        interval = max(1, min(MAX_INTERVAL, int(parts.get("INTERVAL", "1"))))
    except ValueError:
        return midnight
    latest = local_now - duration
    freq = parts.get("FREQ")
    if freq in ("HOURLY", "DAILY", "WEEKLY"):
        unit = {"HOURLY": timedelta(hours=1), "DAILY": timedelta(days=1), "WEEKLY": timedelta(weeks=1)}[freq]
        period = unit * interval
        if midnight <= latest:
            return midnight
        return midnight - -((midnight - latest) // -period) * period
    months = {"MONTHLY": 1, "YEARLY": 12}.get(freq or "")
    if months is None:
        return midnight
    candidate, steps = midnight, 0
    while candidate > latest and steps < 1000:
        steps += 1
        total = midnight.year * 12 + (midnight.month - 1) - steps * months * interval
        year, month = divmod(total, 12)
        if year < 1:
            break
        try:
            candidate = midnight.replace(year=year, month=month + 1)
        except ValueError:
            continue  # that month has no such day: the rule would not take its default from it either
    return candidate


def _compile_rule(engine_text: str, dtstart: datetime, window_id: str) -> RecurrenceRule:
    try:
        rule = rrulestr(engine_text, dtstart=dtstart)
    except (ValueError, TypeError, OverflowError, KeyError, IndexError) as exc:
        raise InvalidRRule(f"window {window_id!r}: rrule {engine_text!r} is invalid: {exc}") from None
    if not isinstance(rule, RecurrenceRule):
        raise InvalidRRule(f"window {window_id!r}: rrule {engine_text!r} must be a single RRULE")
    _check_density(rule, dtstart, window_id)
    return rule


def _check_density(rule: RecurrenceRule, dtstart: datetime, window_id: str) -> None:
    """Refuse rules that never fire or fire too often.

    A rule that never produces an occurrence (``BYMONTH=2;BYMONTHDAY=30``) makes the underlying iterator
    walk to year 9999 on every query, which costs seconds. The Gregorian calendar repeats every 400 years,
    so the rule's pattern (without COUNT/UNTIL) is probed on a copy whose dtstart is moved by a multiple
    of 400 years close to year 9999: the walk is then short even for a rule that never fires.
    """
    shift_years = max(0, (9599 - dtstart.year + 399) // 400) * 400
    probe = rule.replace(dtstart=dtstart.replace(year=dtstart.year + shift_years), count=None, until=None)
    first: datetime | None = None
    for count, occurrence in enumerate(probe, start=1):
        if first is None:
            first = occurrence
        if occurrence >= first + timedelta(days=366):
            break
        if count > MAX_OCCURRENCES_PER_YEAR:
            raise InvalidRRule(f"window {window_id!r}: rrule fires more than {MAX_OCCURRENCES_PER_YEAR} times a year")
    if first is None:
        raise InvalidRRule(f"window {window_id!r}: rrule never produces an occurrence")


def _anchor_period(stored_rule: str) -> timedelta | None:
    """Length of one recurrence period when dtstart may move by whole periods without changing anything.

    True for hourly, daily and weekly rules without COUNT (COUNT numbers occurrences from dtstart). Their
    defaults taken from dtstart (minute, hour, weekday) survive a shift by whole periods, and BYSETPOS
    works within one period, except in the first one (see :meth:`FreezeWindow.occurrences`). Monthly and
    yearly rules have few occurrences and are left alone.
    """
    parts = dict(part.split("=", 1) for part in stored_rule.split(";"))
    if "COUNT" in parts:
        return None
    interval = int(parts.get("INTERVAL", "1"))
    unit = {"HOURLY": timedelta(hours=1), "DAILY": timedelta(days=1), "WEEKLY": timedelta(weeks=1)}.get(parts["FREQ"])
    return unit * interval if unit is not None else None


@dataclass(frozen=True, slots=True)
class FreezeWindow:
    """A validated freeze window (deny) or deployment window (allow).

    Build it with :func:`parse_window` from JSON, or directly with the constructor (which validates the
    same way). One-off windows have ``start``/``end`` (UTC); recurring windows have ``rrule``,
    ``dtstart`` (naive local wall time of ``timezone``) and ``duration``.
    """

    id: str
    kind: WindowKind
    timezone: str
    reason: str = ""
    created_by: str = ""
    exceptions: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    rrule: str | None = None
    dtstart: datetime | None = None
    duration: timedelta | None = None
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _rule: RecurrenceRule | None = field(init=False, repr=False, compare=False)
    _period: timedelta | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        window_id = self.id
        if not isinstance(window_id, str) or not window_id.strip():
            raise InvalidFreezeWindow("a window needs a non-empty string id")
        try:
            kind = WindowKind(self.kind)
        except ValueError:
            raise InvalidFreezeWindow(
                f"window {window_id!r}: kind must be 'deny' or 'allow', got {self.kind!r}"
            ) from None
        zone = _zone(self.timezone, window_id)
        if not isinstance(self.reason, str) or not isinstance(self.created_by, str):
            raise InvalidFreezeWindow(f"window {window_id!r}: reason and created_by must be strings")
        exceptions = self.exceptions
        if isinstance(exceptions, str) or not all(isinstance(p, str) and p for p in exceptions):
            raise InvalidFreezeWindow(f"window {window_id!r}: exceptions must be a list of principal ids")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "exceptions", tuple(sorted(set(exceptions))))
        object.__setattr__(self, "_zone", zone)

        has_end = self.end is not None
        has_rule = self.rrule is not None
        if has_end and has_rule:
            raise InvalidWindowSchedule(
                f"window {window_id!r}: give either end (one-off window) or rrule + duration "
                "(recurring window), not both"
            )
        if not has_end and not has_rule:
            raise InvalidWindowSchedule(
                f"window {window_id!r}: give end (one-off window) or rrule + duration (recurring window)"
            )
        if has_end:
            if self.duration is not None or self.dtstart is not None:
                raise InvalidWindowSchedule(
                    f"window {window_id!r}: a one-off window takes start and end, not duration or dtstart"
                )
            if self.start is None:
                raise InvalidWindowSchedule(f"window {window_id!r}: a one-off window needs start")
            start = _parse_instant(self.start, zone, "start", window_id)
            end = _parse_instant(self.end, zone, "end", window_id)
            if end <= start:
                raise InvalidWindowBounds(
                    f"window {window_id!r}: end {format_utc(end)} must be after start {format_utc(start)}"
                )
            object.__setattr__(self, "start", start)
            object.__setattr__(self, "end", end)
            object.__setattr__(self, "_rule", None)
            object.__setattr__(self, "_period", None)
            return
        if self.start is not None:
            raise InvalidWindowSchedule(
                f"window {window_id!r}: a recurring window takes dtstart, not start (the rule gives the starts)"
            )
        if self.duration is None:
            raise InvalidWindowDuration(f"window {window_id!r}: a recurring window needs a duration")
        duration = parse_duration(self.duration, window_id=window_id)
        if duration <= timedelta(0):
            raise InvalidWindowDuration(f"window {window_id!r}: duration must be positive, got {self.duration!r}")
        if duration > MAX_DURATION:
            raise InvalidWindowDuration(f"window {window_id!r}: duration must be at most 366 days")
        if duration.microseconds:
            raise InvalidWindowDuration(f"window {window_id!r}: duration must be whole seconds")
        if self.dtstart is None:
            raise InvalidFreezeWindow(f"window {window_id!r}: a recurring window needs dtstart")
        dtstart = _parse_local(self.dtstart, zone, window_id)
        stored, engine = _normalise_rrule(self.rrule, zone, window_id)
        rule = _compile_rule(engine, dtstart, window_id)
        object.__setattr__(self, "duration", duration)
        object.__setattr__(self, "dtstart", dtstart)
        object.__setattr__(self, "rrule", stored)
        object.__setattr__(self, "_rule", rule)
        object.__setattr__(self, "_period", _anchor_period(stored))

    @property
    def is_recurring(self) -> bool:
        """Whether the window repeats (has an RRULE)."""
        return self._rule is not None

    def occurrences(self, lo: datetime, hi: datetime) -> list[tuple[datetime, datetime]]:
        """Return the ``[start, end)`` intervals (UTC) of this window that overlap ``[lo, hi)``, by start.

        Args:
            lo: Start of the range (aware).
            hi: End of the range (aware).
        """
        lo = require_aware(lo, "lo")
        hi = require_aware(hi, "hi")
        if self._rule is None:
            assert self.start is not None and self.end is not None
            return [(self.start, self.end)] if self.start < hi and self.end > lo else []
        assert self.duration is not None
        zone = self._zone
        local_lo = _to_local(lo - self.duration - _SLACK, zone)
        local_hi = _to_local(hi + _SLACK, zone)
        rule = self._rule
        if self._period is not None and self.dtstart is not None and local_lo - self.dtstart > 2 * self._period:
            # The recurrence engine walks from dtstart on every query. Moving dtstart forward by whole
            # periods (in local wall time) leaves the occurrences of every later *whole* period unchanged,
            # so an hourly rule that started years ago costs the same as a new one. The period holding the
            # moved dtstart is not whole: the engine starts a weekly rule's first week at dtstart, so BYSETPOS
            # would pick among fewer days there (BYDAY=SA,MO;BYSETPOS=1 from a Tuesday gives that week's
            # Saturday). The move therefore stops a whole period short of the range asked about, and the
            # partial period lies before it.
            periods = (local_lo - self.dtstart) // self._period - 1
            rule = rule.replace(dtstart=self.dtstart + periods * self._period)
        result = []
        for local_start in rule.between(local_lo, local_hi, inc=True):
            start = _to_utc(local_start, zone)
            end = _to_utc(local_start + self.duration, zone)
            if end <= start:
                # A start in a spring-forward gap moves forward past an end just after the gap: the
                # wall-clock span does not exist that day.
                continue
            if start < hi and end > lo:
                result.append((start, end))
        result.sort()
        return result

    def applies_after(self, instant: datetime) -> bool:
        """Whether an occurrence of the window ends after ``instant`` (a window that never applies again does not).

        Unlike the searches for the next opening, this has no horizon: a yearly rule whose next occurrence
        is years away still applies.
        """
        instant = require_aware(instant, "instant")
        if self._rule is None:
            assert self.end is not None
            return self.end > instant
        assert self.duration is not None
        cursor = _to_local(instant - self.duration - _SLACK, self._zone)
        inclusive = True
        for _ in range(MAX_OCCURRENCES_PER_YEAR * 2):
            local_start = self._rule.after(cursor, inc=inclusive)
            if local_start is None:
                return False
            if _to_utc(local_start + self.duration, self._zone) > instant:
                return True
            cursor, inclusive = local_start, False
        return True

    def active_at(self, instant: datetime) -> bool:
        """Whether an occurrence of the window covers ``instant``."""
        instant = require_aware(instant, "instant")
        return bool(self.occurrences(instant, instant + timedelta(microseconds=1)))

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (the input form of :func:`parse_window`)."""
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind.value,
            "timezone": self.timezone,
            "reason": self.reason,
            "created_by": self.created_by,
            "exceptions": list(self.exceptions),
        }
        if self._rule is None:
            assert self.start is not None and self.end is not None
            data["start"] = format_utc(self.start)
            data["end"] = format_utc(self.end)
        else:
            assert self.dtstart is not None and self.duration is not None
            data["rrule"] = self.rrule
            data["dtstart"] = self.dtstart.isoformat()
            data["duration"] = format_duration(self.duration)
        return data


def parse_window(raw: Mapping[str, Any] | FreezeWindow) -> FreezeWindow:
    """Validate a JSON freeze window.

    Accepted fields: ``id``, ``kind`` (deny|allow), ``timezone`` (IANA), ``reason``, ``created_by``,
    ``exceptions`` (principal ids allowed to override), and either ``start`` + ``end`` (ISO 8601; without
    offset they are local times of ``timezone``) or ``rrule`` + ``dtstart`` (local wall time) + ``duration``
    (ISO 8601 like ``PT64H``, or seconds).

    Raises:
        InvalidFreezeWindow: or one of its subclasses, with a message naming the window and the field.
    """
    if isinstance(raw, FreezeWindow):
        return raw
    if not isinstance(raw, Mapping):
        raise InvalidFreezeWindow("a freeze window must be an object")
    window_id = raw.get("id")
    label = window_id if isinstance(window_id, str) else "?"
    unknown = sorted(set(raw) - _WINDOW_KEYS)
    if unknown:
        raise InvalidFreezeWindow(f"window {label!r}: unknown field(s) {', '.join(unknown)}")
    exceptions = raw.get("exceptions", ())
    if not isinstance(exceptions, list | tuple):
        raise InvalidFreezeWindow(f"window {label!r}: exceptions must be a list of principal ids")
    return FreezeWindow(
        id=window_id,  # type: ignore[arg-type]  # validated in __post_init__
        kind=raw.get("kind"),  # type: ignore[arg-type]
        timezone=raw.get("timezone"),  # type: ignore[arg-type]
        reason=raw.get("reason", ""),
        created_by=raw.get("created_by", ""),
        exceptions=tuple(exceptions),
        start=raw.get("start"),
        end=raw.get("end"),
        rrule=raw.get("rrule"),
        dtstart=raw.get("dtstart"),
        duration=raw.get("duration"),
    )


def parse_windows(raw: Iterable[Mapping[str, Any] | FreezeWindow] | None) -> tuple[FreezeWindow, ...]:
    """Validate a list of windows; ids must be unique.

    Raises:
        InvalidFreezeWindow: a window is invalid, the list is not a list, or two windows share an id.
    """
    if raw is None:
        return ()
    if isinstance(raw, str | bytes | Mapping) or not isinstance(raw, Iterable):
        raise InvalidFreezeWindow("freeze windows must be a list")
    windows = tuple(parse_window(item) for item in raw)
    seen: set[str] = set()
    for window in windows:
        if window.id in seen:
            raise InvalidFreezeWindow(f"window id {window.id!r} appears twice")
        seen.add(window.id)
    return windows


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnvironmentState:
    """Freeze status of an environment at an instant (Kargo's status contract).

    Attributes:
        closed: Whether promotions are blocked now.
        reason: Why it is closed (the active deny windows' reasons, or "outside allowed deployment
            windows"); ``None`` when open.
        next_open: The next instant after ``now`` at which the environment goes from closed to open, or
            ``None`` when that does not happen within the search horizon.
        next_close: The next instant after ``now`` at which it goes from open to closed, or ``None``.
        active_window_ids: Ids of the windows (deny and allow) active now, sorted.
    """

    closed: bool
    reason: str | None
    next_open: datetime | None
    next_close: datetime | None
    active_window_ids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form with UTC timestamps."""
        return {
            "closed": self.closed,
            "reason": self.reason,
            "next_open": format_utc(self.next_open) if self.next_open else None,
            "next_close": format_utc(self.next_close) if self.next_close else None,
            "active_window_ids": list(self.active_window_ids),
        }


def _closed(deny_active: int, allow_active: int, has_allow: bool) -> bool:
    # Deny beats allow; with any allow window configured, only the inside of one is open.
    return deny_active > 0 or (has_allow and allow_active == 0)


def environment_state(windows: Iterable[FreezeWindow], now: datetime) -> EnvironmentState:
    """Evaluate an environment's windows at ``now``.

    The environment is closed when a deny window is active, or when it has allow windows and none is
    active. ``next_open``/``next_close`` are exact instants (occurrence boundaries), searched up to
    :data:`SEARCH_HORIZON` ahead.

    Args:
        windows: The environment's validated windows.
        now: The instant to evaluate (aware).

    Returns:
        The state at ``now``.
    """
    now = require_aware(now, "now")
    windows = tuple(windows)
    has_allow = any(w.kind is WindowKind.ALLOW for w in windows)
    state: EnvironmentState | None = None
    for horizon in _SEARCH_STEPS:
        state, complete = _state_within(windows, now, now + horizon, has_allow)
        if complete:
            break
    assert state is not None
    return state


def _state_within(
    windows: Sequence[FreezeWindow], now: datetime, until: datetime, has_allow: bool
) -> tuple[EnvironmentState, bool]:
    deny = allow = 0
    active: set[str] = set()
    reasons: dict[str, str] = {}
    deltas: dict[datetime, list[int]] = {}
    for window in windows:
        index = 0 if window.kind is WindowKind.DENY else 1
        for start, end in window.occurrences(now, until + timedelta(microseconds=1)):
            if start <= now < end:
                active.add(window.id)
                if window.kind is WindowKind.DENY:
                    deny += 1
                    reasons[window.id] = window.reason
                else:
                    allow += 1
            elif start > now:
                deltas.setdefault(start, [0, 0])[index] += 1
            if now < end <= until:
                deltas.setdefault(end, [0, 0])[index] -= 1
    closed_now = _closed(deny, allow, has_allow)
    next_open: datetime | None = None
    next_close: datetime | None = None
    current = closed_now
    for instant in sorted(deltas):
        if instant > until:
            break
        deny += deltas[instant][0]
        allow += deltas[instant][1]
        state = _closed(deny, allow, has_allow)
        if state == current:
            continue
        current = state
        if state:
            next_close = next_close or instant
        else:
            next_open = next_open or instant
        if next_open and next_close:
            break
    reason: str | None = None
    if closed_now:
        if reasons:
            reason = "; ".join(reasons[key] or f"freeze window {key}" for key in sorted(reasons))
        else:
            reason = "outside allowed deployment windows"
    state_value = EnvironmentState(
        closed=closed_now,
        reason=reason,
        next_open=next_open,
        next_close=next_close,
        active_window_ids=tuple(sorted(active)),
    )
    return state_value, bool(next_open and next_close) or not windows


def next_transition(windows: Iterable[FreezeWindow], after: datetime) -> datetime | None:
    """Return the first instant strictly after ``after`` at which any window opens or closes.

    A scheduler sleeps until then and evaluates again, instead of polling. ``None`` when nothing
    happens within :data:`SEARCH_HORIZON`.
    """
    after = require_aware(after, "after")
    windows = tuple(windows)
    for horizon in _SEARCH_STEPS:
        until = after + horizon
        best: datetime | None = None
        for window in windows:
            for start, end in window.occurrences(after, until + timedelta(microseconds=1)):
                for instant in (start, end):
                    if after < instant <= until and (best is None or instant < best):
                        best = instant
        if best is not None:
            return best
    return None


@dataclass(frozen=True, slots=True)
class WindowTransition:
    """A window occurrence that started or ended, the source of ``environment.freeze_started/ended``.

    Attributes:
        window_id: The window.
        kind: deny or allow (an allow window starting opens a deployment window).
        transition: ``started`` or ``ended``.
        at: When it happened (UTC).
        occurrence_start: Start of the occurrence (UTC).
        occurrence_end: End of the occurrence (UTC).
        occurrence_key: ``"<window id>@<occurrence start>"``; identifies the occurrence across calls.
        reason: The window's reason.
    """

    window_id: str
    kind: WindowKind
    transition: Literal["started", "ended"]
    at: datetime
    occurrence_start: datetime
    occurrence_end: datetime
    occurrence_key: str
    reason: str

    @property
    def event_name(self) -> str:
        """``environment.freeze_started`` or ``environment.freeze_ended``."""
        return f"environment.freeze_{self.transition}"

    @property
    def dedup_key(self) -> str:
        """Key that is the same every time this transition is listed (``<occurrence_key>/<transition>``)."""
        return f"{self.occurrence_key}/{self.transition}"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form with UTC timestamps."""
        return {
            "window_id": self.window_id,
            "kind": self.kind.value,
            "transition": self.transition,
            "at": format_utc(self.at),
            "occurrence_start": format_utc(self.occurrence_start),
            "occurrence_end": format_utc(self.occurrence_end),
            "occurrence_key": self.occurrence_key,
            "reason": self.reason,
        }


def window_transitions(windows: Iterable[FreezeWindow], start: datetime, end: datetime) -> list[WindowTransition]:
    """List window occurrences that started or ended in ``(start, end]``.

    Consecutive calls with ``(t0, t1]``, ``(t1, t2]``... list every transition exactly once; a replayed call
    lists the same transitions with the same :attr:`WindowTransition.dedup_key`. Sorted by instant, an
    ending before a start at the same instant, then by window id.

    Raises:
        TransitionRangeTooLarge: ``end`` is before ``start`` or more than :data:`SEARCH_HORIZON` after it.
    """
    start = require_aware(start, "start")
    end = require_aware(end, "end")
    if end < start:
        raise TransitionRangeTooLarge(f"end {format_utc(end)} is before start {format_utc(start)}")
    if end - start > SEARCH_HORIZON:
        raise TransitionRangeTooLarge(
            f"range {format_utc(start)} .. {format_utc(end)} is longer than {SEARCH_HORIZON.days} days; "
            "list it in shorter pieces"
        )
    result: list[WindowTransition] = []
    for window in windows:
        for occ_start, occ_end in window.occurrences(start, end + timedelta(microseconds=1)):
            key = f"{window.id}@{format_utc(occ_start)}"
            for transition, instant in (("started", occ_start), ("ended", occ_end)):
                if start < instant <= end:
                    result.append(
                        WindowTransition(
                            window_id=window.id,
                            kind=window.kind,
                            transition=transition,  # type: ignore[arg-type]
                            at=instant,
                            occurrence_start=occ_start,
                            occurrence_end=occ_end,
                            occurrence_key=key,
                            reason=window.reason,
                        )
                    )
    result.sort(key=lambda t: (t.at, t.transition != "ended", t.window_id, t.occurrence_key))
    return result


# --------------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FreezeOverride:
    """A principal's request to promote through a closed window.

    Attributes:
        principal: Who overrides.
        reason: Why (mandatory; recorded in the decision and the evidence).
        has_override_permission: The principal holds ``freeze:override`` on the environment (checked by the
            caller, which knows the principal's permissions).
        at: When the override was given.
    """

    principal: str
    reason: str
    has_override_permission: bool = False
    at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "principal": self.principal,
            "reason": self.reason,
            "has_override_permission": self.has_override_permission,
            "at": format_utc(self.at) if self.at else None,
        }


def check_override(override: FreezeOverride, closing_windows: Sequence[FreezeWindow]) -> None:
    """Check that ``override`` may lift the closure caused by ``closing_windows``.

    A principal holding ``freeze:override`` may override any window; otherwise it must be listed in the
    ``exceptions`` of every closing window. The reason is mandatory.

    Raises:
        OverrideReasonRequired: the reason is empty.
        OverrideForbidden: the principal may not override one of the windows.
    """
    if not isinstance(override.reason, str) or not override.reason.strip():
        raise OverrideReasonRequired("a freeze override needs a reason; it is recorded in the evidence")
    if not isinstance(override.principal, str) or not override.principal:
        raise OverrideForbidden("a freeze override must name the principal who gives it")
    if override.has_override_permission:
        return
    refusing = sorted(w.id for w in closing_windows if override.principal not in w.exceptions)
    if refusing:
        raise OverrideForbidden(
            f"principal {override.principal!r} is not an exception of window(s) {', '.join(refusing)} "
            f"and does not hold {OVERRIDE_PERMISSION}"
        )
