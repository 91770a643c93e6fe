"""Every answer about a recurring window agrees with python-dateutil run on the stored dtstart.

The freeze module speeds recurrence queries up (it moves dtstart forward by whole periods); whatever it
does, "is it closed at t" (``active_at``, ``environment_state``) and "when does it change"
(``window_transitions``, ``next_transition``) must give the occurrences dateutil gives for the rule with
the dtstart the window stores, converted to instants by the documented rules.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import rrulestr
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from stella.promotion import freeze

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Chatham"]
DAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]


@st.composite
def rules(draw: st.DrawFn) -> str:
    freq = draw(st.sampled_from(["HOURLY", "DAILY", "WEEKLY", "MONTHLY"]))
    parts = [f"FREQ={freq}"]
    if draw(st.booleans()):
        parts.append(f"INTERVAL={draw(st.integers(1, 3))}")
    if freq in ("WEEKLY", "DAILY") or draw(st.booleans()):
        days = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=4, unique=True))
        parts.append("BYDAY=" + ",".join(days))
    if freq != "HOURLY":
        hours = draw(st.lists(st.integers(0, 23), min_size=1, max_size=3, unique=True))
        parts.append("BYHOUR=" + ",".join(map(str, sorted(hours))))
    parts.append(f"BYMINUTE={draw(st.sampled_from([0, 15, 30, 45]))}")
    if freq in ("WEEKLY", "MONTHLY") and draw(st.booleans()):
        parts.append(f"BYSETPOS={draw(st.sampled_from([1, 2, -1]))}")
    if draw(st.booleans()):
        parts.append(f"WKST={draw(st.sampled_from(DAYS))}")
    return ";".join(parts)


def _expected(rule: str, dtstart: datetime, zone: str, duration: timedelta, lo: datetime, hi: datetime):
    """The occurrences dateutil gives for the stored rule and dtstart, as UTC intervals overlapping [lo, hi)."""
    tz = ZoneInfo(zone)
    engine = rrulestr(rule, dtstart=dtstart)
    local_lo = lo.astimezone(tz).replace(tzinfo=None) - duration - timedelta(days=1)
    local_hi = hi.astimezone(tz).replace(tzinfo=None) + timedelta(days=1)
    result = []
    for local_start in engine.between(local_lo, local_hi, inc=True):
        start = local_start.replace(tzinfo=tz, fold=0).astimezone(UTC)
        end = (local_start + duration).replace(tzinfo=tz, fold=0).astimezone(UTC)
        if start < end and start < hi and end > lo:
            result.append((start, end))
    return sorted(result)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=rules(),
    zone=st.sampled_from(ZONES),
    dtstart=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2024, 12, 31)).map(
        lambda d: d.replace(second=0, microsecond=0)
    ),
    duration_minutes=st.integers(1, 3 * 24 * 60),
    offset_hours=st.integers(0, 3 * 365 * 24),
    probes=st.lists(st.integers(0, 14 * 24 * 60 - 1), min_size=1, max_size=8),
)
def test_every_answer_agrees_with_dateutil_on_the_stored_dtstart(
    rule: str, zone: str, dtstart: datetime, duration_minutes: int, offset_hours: int, probes: list[int]
) -> None:
    note(f"rule={rule} zone={zone} dtstart={dtstart} duration={duration_minutes}m offset={offset_hours}h")
    duration = timedelta(minutes=duration_minutes)
    try:
        window = freeze.FreezeWindow(
            id="w", kind=freeze.WindowKind.DENY, timezone=zone, rrule=rule, dtstart=dtstart, duration=duration
        )
    except freeze.InvalidRRule:
        return  # a rule that never fires (e.g. BYSETPOS=2 of one day) is refused, not answered
    start = dtstart.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC) + timedelta(hours=offset_hours)
    end = start + timedelta(days=14)
    expected = _expected(window.rrule or rule, window.dtstart or dtstart, zone, duration, start, end)
    assert window.occurrences(start, end) == expected
    for minutes in probes:
        instant = start + timedelta(minutes=minutes)
        covering = any(s <= instant < e for s, e in expected)
        assert window.active_at(instant) == covering, instant
        assert freeze.environment_state([window], instant).closed == covering, instant
    # Transitions are listed in (start, end]: an occurrence starting exactly at end counts.
    closing = _expected(
        window.rrule or rule, window.dtstart or dtstart, zone, duration, start, end + timedelta(microseconds=1)
    )
    edges = sorted({t for s, e in closing for t in (s, e) if start < t <= end})
    listed = freeze.window_transitions([window], start, end)
    assert sorted({t.at for t in listed}) == edges
    following = [t for t in edges if t > start]
    found = freeze.next_transition([window], start)
    if following:
        assert found == following[0]


def test_bysetpos_from_a_tuesday_gives_mondays_everywhere_after_the_first_week() -> None:
    """The window of the report: closed Mondays 12:30-13:30 Berlin time, never on Saturdays after week one."""
    window = freeze.FreezeWindow(
        id="w",
        kind=freeze.WindowKind.DENY,
        timezone="Europe/Berlin",
        rrule="FREQ=WEEKLY;BYDAY=SA,MO;BYHOUR=12;BYMINUTE=30;BYSETPOS=1",
        dtstart=datetime(2025, 1, 7),  # a Tuesday
        duration=timedelta(hours=1),
    )
    saturday = datetime(2025, 6, 14, 10, 45, tzinfo=UTC)  # 12:45 Berlin, a Saturday months later
    monday = datetime(2025, 6, 16, 10, 45, tzinfo=UTC)
    assert not window.active_at(saturday)
    assert not freeze.environment_state([window], saturday).closed
    assert window.active_at(monday)
    week = freeze.window_transitions([window], datetime(2025, 6, 13, tzinfo=UTC), datetime(2025, 6, 20, tzinfo=UTC))
    assert [t.at.weekday() for t in week] == [0, 0]


def test_rules_that_never_fire_or_overflow_are_refused_not_crashed_on() -> None:
    for rule, words in (
        ("FREQ=DAILY;INTERVAL=99999999999", "INTERVAL"),
        ("FREQ=HOURLY;INTERVAL=1001", "INTERVAL"),
        ("FREQ=DAILY;INTERVAL=0", "INTERVAL"),
        ("FREQ=DAILY;COUNT=0", "COUNT"),
        ("FREQ=DAILY;COUNT=-1", "COUNT"),
        ("FREQ=DAILY;COUNT=\u0661", "COUNT"),  # an Arabic-Indic digit: int() reads it, RFC 5545 does not
    ):
        with pytest.raises(freeze.InvalidRRule, match=words):
            freeze.FreezeWindow(
                id="w",
                kind=freeze.WindowKind.DENY,
                timezone="UTC",
                rrule=rule,
                dtstart=datetime(2025, 1, 1),
                duration=timedelta(hours=1),
            )
    # The largest interval allowed is answered, far ahead or not at all, without an error.
    window = freeze.FreezeWindow(
        id="w",
        kind=freeze.WindowKind.DENY,
        timezone="UTC",
        rrule="FREQ=HOURLY;INTERVAL=1000",
        dtstart=datetime(2020, 1, 1),
        duration=timedelta(hours=1),
    )
    assert freeze.environment_state([window], datetime(2025, 6, 1, tzinfo=UTC)) is not None
