"""Freeze windows and schedules: validation, DST-exact evaluation, transitions and overrides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import rrulestr

from stella.promotion.freeze import (
    SEARCH_HORIZON,
    FreezeOverride,
    FreezeWindow,
    InvalidFreezeWindow,
    InvalidRRule,
    InvalidWindowBounds,
    InvalidWindowDuration,
    InvalidWindowSchedule,
    OverrideForbidden,
    OverrideReasonRequired,
    TransitionRangeTooLarge,
    UnknownTimeZone,
    WindowKind,
    check_override,
    environment_state,
    format_duration,
    next_transition,
    parse_duration,
    parse_window,
    parse_windows,
    window_transitions,
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def weekend(**overrides: Any) -> FreezeWindow:
    """Every Friday 16:00 for 64 h (Monday 08:00) in Berlin local time."""
    raw: dict[str, Any] = {
        "id": "weekend",
        "kind": "deny",
        "rrule": "FREQ=WEEKLY;BYDAY=FR",
        "dtstart": "2025-01-03T16:00:00",
        "duration": "PT64H",
        "timezone": "Europe/Berlin",
        "reason": "weekend freeze",
        "created_by": "ops",
    }
    raw.update(overrides)
    return parse_window(raw)


def office_hours(**overrides: Any) -> FreezeWindow:
    """Allowed Monday to Thursday, 09:00-17:00 Berlin local time."""
    raw: dict[str, Any] = {
        "id": "office-hours",
        "kind": "allow",
        "rrule": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH",
        "dtstart": "2025-01-06T09:00:00",
        "duration": "PT8H",
        "timezone": "Europe/Berlin",
        "reason": "deploy during office hours",
    }
    raw.update(overrides)
    return parse_window(raw)


def one_off(window_id: str, start: str, end: str, kind: str = "deny", **extra: Any) -> FreezeWindow:
    return parse_window(
        {"id": window_id, "kind": kind, "start": start, "end": end, "timezone": "UTC", "reason": window_id, **extra}
    )


class TestWeekendFreezeAcrossDaylightSaving:
    """Friday 16:00 -> Monday 08:00 Europe/Berlin stays local wall time across both DST changes."""

    # 2025-03-30 01:00 UTC: Berlin moves from CET (+01) to CEST (+02).
    def test_march_weekend_closes_friday_16_cet(self) -> None:
        before = environment_state([weekend()], utc(2025, 3, 28, 14, 59, 59))
        assert before.closed is False
        assert before.next_close == utc(2025, 3, 28, 15, 0)
        assert before.next_open == utc(2025, 3, 31, 6, 0)

        at_start = environment_state([weekend()], utc(2025, 3, 28, 15, 0))
        assert at_start.closed is True
        assert at_start.reason == "weekend freeze"
        assert at_start.active_window_ids == ("weekend",)

    @pytest.mark.parametrize(
        "now",
        [
            utc(2025, 3, 29, 12, 0),  # Saturday, CET
            utc(2025, 3, 30, 0, 59),  # Sunday, one minute before the change
            utc(2025, 3, 30, 1, 0),  # the change itself
            utc(2025, 3, 31, 5, 59, 59),  # Monday 07:59:59 CEST
        ],
    )
    def test_march_weekend_is_closed_until_monday_08_cest(self, now: datetime) -> None:
        state = environment_state([weekend()], now)
        assert state.closed is True
        # Monday 08:00 CEST is 06:00 UTC: the window kept its local end although it lasted only 63 h.
        assert state.next_open == utc(2025, 3, 31, 6, 0)
        assert state.next_close == utc(2025, 4, 4, 14, 0)  # next Friday 16:00 CEST

    def test_march_weekend_opens_exactly_at_monday_08_local(self) -> None:
        state = environment_state([weekend()], utc(2025, 3, 31, 6, 0))
        assert state.closed is False
        assert state.reason is None
        assert state.next_close == utc(2025, 4, 4, 14, 0)
        assert state.next_open == utc(2025, 4, 7, 6, 0)

    def test_march_weekend_lasts_63_hours(self) -> None:
        ((start, end),) = weekend().occurrences(utc(2025, 3, 29), utc(2025, 3, 30))
        assert (start, end) == (utc(2025, 3, 28, 15, 0), utc(2025, 3, 31, 6, 0))
        assert end - start == timedelta(hours=63)

    # 2025-10-26 01:00 UTC: Berlin moves from CEST (+02) back to CET (+01).
    @pytest.mark.parametrize(
        "now",
        [
            utc(2025, 10, 24, 14, 0),  # Friday 16:00 CEST
            utc(2025, 10, 25, 12, 0),  # Saturday
            utc(2025, 10, 26, 0, 30),  # Sunday 02:30 CEST, first pass through the repeated hour
            utc(2025, 10, 26, 1, 30),  # Sunday 02:30 CET, second pass
            utc(2025, 10, 27, 6, 30),  # Monday 07:30 CET
        ],
    )
    def test_october_weekend_is_closed_until_monday_08_cet(self, now: datetime) -> None:
        state = environment_state([weekend()], now)
        assert state.closed is True
        assert state.next_open == utc(2025, 10, 27, 7, 0)  # Monday 08:00 CET
        assert state.next_close == utc(2025, 10, 31, 15, 0)  # next Friday 16:00 CET

    def test_october_weekend_boundaries(self) -> None:
        before = environment_state([weekend()], utc(2025, 10, 24, 13, 59))
        assert before.closed is False
        assert before.next_close == utc(2025, 10, 24, 14, 0)
        assert before.next_open == utc(2025, 10, 27, 7, 0)
        after = environment_state([weekend()], utc(2025, 10, 27, 7, 0))
        assert after.closed is False
        assert after.next_close == utc(2025, 10, 31, 15, 0)

    def test_october_weekend_lasts_65_hours(self) -> None:
        ((start, end),) = weekend().occurrences(utc(2025, 10, 25), utc(2025, 10, 26))
        assert end - start == timedelta(hours=65)

    def test_ordinary_weekend_lasts_64_hours(self) -> None:
        ((start, end),) = weekend().occurrences(utc(2025, 5, 10), utc(2025, 5, 11))
        assert (start, end) == (utc(2025, 5, 9, 14, 0), utc(2025, 5, 12, 6, 0))

    def test_aware_dtstart_is_taken_as_local_wall_time_of_the_zone(self) -> None:
        # 15:00 UTC in January is 16:00 in Berlin; summer occurrences must stay at 16:00 local.
        window = weekend(dtstart="2025-01-03T15:00:00+00:00")
        assert window.dtstart == datetime(2025, 1, 3, 16, 0)
        assert environment_state([window], utc(2025, 7, 4, 14, 0)).closed is True
        assert environment_state([window], utc(2025, 7, 4, 13, 59)).closed is False


class TestCombinedWindows:
    def test_no_windows_is_always_open(self) -> None:
        state = environment_state([], utc(2025, 3, 29))
        assert state.closed is False
        assert (state.next_open, state.next_close, state.reason, state.active_window_ids) == (None, None, None, ())

    def test_deny_beats_allow(self) -> None:
        always_allowed = one_off("all-year", "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z", kind="allow")
        state = environment_state([always_allowed, weekend()], utc(2025, 3, 29, 12))
        assert state.closed is True
        assert state.reason == "weekend freeze"
        assert state.active_window_ids == ("all-year", "weekend")
        assert state.next_open == utc(2025, 3, 31, 6, 0)

    def test_allow_only_closed_outside_every_allow_window(self) -> None:
        # Friday 15:30 UTC: office hours ended Thursday 17:00; next opening Monday 09:00 CEST.
        state = environment_state([office_hours()], utc(2025, 3, 28, 15, 30))
        assert state.closed is True
        assert state.reason == "outside allowed deployment windows"
        assert state.active_window_ids == ()
        assert state.next_open == utc(2025, 3, 31, 7, 0)
        assert state.next_close == utc(2025, 3, 31, 15, 0)

    def test_allow_only_open_inside_an_allow_window(self) -> None:
        state = environment_state([office_hours()], utc(2025, 4, 1, 10, 0))  # Tuesday 12:00 CEST
        assert state.closed is False
        assert state.active_window_ids == ("office-hours",)
        assert state.next_close == utc(2025, 4, 1, 15, 0)
        assert state.next_open == utc(2025, 4, 2, 7, 0)

    def test_allow_and_deny_combined_next_open_is_first_allowed_instant_outside_deny(self) -> None:
        # Monday office hours start 09:00, but a deny window covers Monday until 12:00 local.
        monday_morning = one_off("maintenance", "2025-03-31T00:00:00", "2025-03-31T12:00:00")
        monday_morning = parse_window({**monday_morning.to_dict(), "timezone": "UTC"})
        state = environment_state([office_hours(), monday_morning, weekend()], utc(2025, 3, 29, 12))
        assert state.closed is True
        assert state.next_open == utc(2025, 3, 31, 12, 0)
        assert state.next_close == utc(2025, 3, 31, 15, 0)

    def test_expired_allow_window_keeps_the_environment_closed(self) -> None:
        expired = one_off("old", "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", kind="allow")
        state = environment_state([expired], utc(2025, 3, 29))
        assert state.closed is True
        assert state.next_open is None
        assert state.next_close is None

    def test_overlapping_deny_windows_open_when_the_last_ends(self) -> None:
        first = one_off("a", "2025-03-01T00:00:00Z", "2025-03-03T00:00:00Z")
        second = one_off("b", "2025-03-02T00:00:00Z", "2025-03-05T00:00:00Z")
        state = environment_state([first, second], utc(2025, 3, 2, 12))
        assert state.closed is True
        assert state.active_window_ids == ("a", "b")
        assert state.reason == "a; b"
        assert state.next_open == utc(2025, 3, 5)

    def test_back_to_back_windows_leave_no_gap(self) -> None:
        first = one_off("a", "2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z")
        second = one_off("b", "2025-03-02T00:00:00Z", "2025-03-03T00:00:00Z")
        state = environment_state([first, second], utc(2025, 3, 1, 12))
        assert state.next_open == utc(2025, 3, 3)
        at_switch = environment_state([first, second], utc(2025, 3, 2))
        assert at_switch.active_window_ids == ("b",)

    def test_next_open_beyond_the_horizon_is_none(self) -> None:
        long_freeze = one_off("long", "2025-01-01T00:00:00Z", "2026-06-01T00:00:00Z")
        state = environment_state([long_freeze], utc(2025, 1, 2))
        assert state.closed is True
        assert state.next_open is None

    def test_next_open_found_late_within_the_horizon(self) -> None:
        freeze_until = utc(2025, 1, 2) + SEARCH_HORIZON - timedelta(days=1)
        window = one_off("long", "2025-01-01T00:00:00Z", freeze_until.isoformat())
        state = environment_state([window], utc(2025, 1, 2))
        assert state.next_open == freeze_until

    def test_one_off_naive_times_are_local_to_the_window_zone(self) -> None:
        window = parse_window(
            {
                "id": "release-night",
                "kind": "deny",
                "start": "2025-07-01T20:00:00",
                "end": "2025-07-01T23:00:00",
                "timezone": "America/New_York",
            }
        )
        assert window.start == utc(2025, 7, 2, 0, 0)
        assert window.end == utc(2025, 7, 2, 3, 0)
        assert environment_state([window], utc(2025, 7, 2, 1)).closed is True

    def test_naive_now_is_refused(self) -> None:
        with pytest.raises(Exception, match="no time zone"):
            environment_state([weekend()], datetime(2025, 3, 29))


class TestLocalTimeResolution:
    def test_occurrence_in_the_spring_gap_is_read_with_the_offset_before_the_gap(self) -> None:
        # Daily 02:30 for 2 h: on 2025-03-30 02:30 does not exist in Berlin; RFC 5545 reads it as 03:30 CEST.
        window = parse_window(
            {
                "id": "nightly",
                "kind": "deny",
                "rrule": "FREQ=DAILY",
                "dtstart": "2025-03-01T02:30:00",
                "duration": "PT2H",
                "timezone": "Europe/Berlin",
            }
        )
        occurrences = window.occurrences(utc(2025, 3, 30, 0), utc(2025, 3, 30, 6))
        assert occurrences == [(utc(2025, 3, 30, 1, 30), utc(2025, 3, 30, 2, 30))]

    def test_occurrence_inside_the_spring_gap_moves_forward_by_the_gap(self) -> None:
        window = parse_window(
            {
                "id": "gap",
                "kind": "deny",
                "rrule": "FREQ=DAILY",
                "dtstart": "2025-03-01T02:15:00",
                "duration": "PT30M",
                "timezone": "Europe/Berlin",
            }
        )
        # 02:15-02:45 does not exist on 2025-03-30; both ends read with +01: 03:15-03:45 CEST.
        assert window.occurrences(utc(2025, 3, 29, 23), utc(2025, 3, 30, 6)) == [
            (utc(2025, 3, 30, 1, 15), utc(2025, 3, 30, 1, 45))
        ]
        assert window.occurrences(utc(2025, 3, 31, 0), utc(2025, 3, 31, 6)) == [
            (utc(2025, 3, 31, 0, 15), utc(2025, 3, 31, 0, 45))
        ]

    def test_occurrence_ending_before_its_shifted_start_is_empty(self) -> None:
        window = parse_window(
            {
                "id": "gap",
                "kind": "deny",
                "rrule": "FREQ=DAILY",
                "dtstart": "2025-03-01T02:30:00",
                "duration": "PT30M",
                "timezone": "Europe/Berlin",
            }
        )
        # 02:30 reads as 03:30 CEST but 03:00 exists (CEST): the span 02:30-03:00 does not exist that day.
        assert window.occurrences(utc(2025, 3, 29, 23), utc(2025, 3, 30, 6)) == []
        assert environment_state([window], utc(2025, 3, 30, 1, 15)).closed is False

    def test_repeated_autumn_hour_means_the_first_occurrence(self) -> None:
        window = parse_window(
            {
                "id": "nightly",
                "kind": "deny",
                "rrule": "FREQ=DAILY",
                "dtstart": "2025-10-01T02:30:00",
                "duration": "PT1H",
                "timezone": "Europe/Berlin",
            }
        )
        # 02:30 happens twice on 2025-10-26; the first is 02:30 CEST = 00:30 UTC.
        start, end = window.occurrences(utc(2025, 10, 26, 0), utc(2025, 10, 26, 3))[0]
        assert start == utc(2025, 10, 26, 0, 30)
        assert end == utc(2025, 10, 26, 2, 30)  # 03:30 CET

    def test_until_in_utc_ends_the_recurrence(self) -> None:
        window = weekend(rrule="FREQ=WEEKLY;BYDAY=FR;UNTIL=20250328T150000Z")
        assert environment_state([window], utc(2025, 3, 29)).closed is True
        state = environment_state([window], utc(2025, 4, 5))
        assert state.closed is False
        assert state.next_close is None

    def test_count_limits_the_recurrence(self) -> None:
        window = weekend(rrule="RRULE:FREQ=WEEKLY;BYDAY=FR;COUNT=2")
        assert window.rrule == "FREQ=WEEKLY;BYDAY=FR;COUNT=2"
        assert environment_state([window], utc(2025, 1, 11)).closed is True
        assert environment_state([window], utc(2025, 1, 18)).closed is False


class TestOldRecurrences:
    @pytest.mark.parametrize(
        "rule",
        [
            "FREQ=HOURLY;INTERVAL=5;BYMINUTE=15",
            "FREQ=HOURLY;BYHOUR=1,2,3;BYSETPOS=-1",
            "FREQ=DAILY;INTERVAL=3",
            "FREQ=DAILY;BYDAY=MO,WE;UNTIL=20250401T000000",
            "FREQ=WEEKLY;INTERVAL=2;BYDAY=TU,FR;WKST=SU",
            "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=1,-1",
            "FREQ=DAILY;COUNT=2500",
        ],
    )
    def test_occurrences_of_a_rule_started_years_ago_match_the_full_recurrence(self, rule: str) -> None:
        dtstart = datetime(2019, 2, 27, 22, 40)
        window = parse_window(
            {
                "id": "old",
                "kind": "deny",
                "rrule": rule,
                "dtstart": dtstart.isoformat(),
                "duration": "PT20M",
                "timezone": "Europe/Berlin",
            }
        )
        zone = ZoneInfo("Europe/Berlin")
        for lo in (utc(2025, 3, 27), utc(2025, 10, 24, 13), utc(2026, 1, 1)):
            hi = lo + timedelta(days=9)
            expected = []
            for local in rrulestr(rule, dtstart=dtstart).between(
                (lo - timedelta(days=2)).astimezone(zone).replace(tzinfo=None),
                (hi + timedelta(days=2)).astimezone(zone).replace(tzinfo=None),
                inc=True,
            ):
                start = local.replace(tzinfo=zone).astimezone(UTC)
                end = (local + timedelta(minutes=20)).replace(tzinfo=zone).astimezone(UTC)
                if start < hi and end > lo and end > start:
                    expected.append((start, end))
            assert window.occurrences(lo, hi) == expected


class TestTransitions:
    def test_next_transition_is_the_next_boundary_of_any_window(self) -> None:
        windows = [weekend(), office_hours()]
        assert next_transition(windows, utc(2025, 3, 29)) == utc(2025, 3, 31, 6, 0)
        assert next_transition(windows, utc(2025, 3, 31, 6, 0)) == utc(2025, 3, 31, 7, 0)
        assert next_transition(windows, utc(2025, 3, 31, 7, 0)) == utc(2025, 3, 31, 15, 0)

    def test_next_transition_without_windows_or_beyond_the_horizon_is_none(self) -> None:
        assert next_transition([], utc(2025, 1, 1)) is None
        far = one_off("far", "2027-01-01T00:00:00Z", "2027-01-02T00:00:00Z")
        assert next_transition([far], utc(2025, 1, 1)) is None
        assert next_transition([far], utc(2026, 1, 1)) == utc(2027, 1, 1)

    def test_window_transitions_list_starts_and_ends_with_stable_keys(self) -> None:
        transitions = window_transitions([weekend()], utc(2025, 3, 27), utc(2025, 4, 1))
        assert [(t.transition, t.at, t.event_name) for t in transitions] == [
            ("started", utc(2025, 3, 28, 15, 0), "environment.freeze_started"),
            ("ended", utc(2025, 3, 31, 6, 0), "environment.freeze_ended"),
        ]
        assert {t.occurrence_key for t in transitions} == {"weekend@2025-03-28T15:00:00Z"}
        assert transitions[0].dedup_key == "weekend@2025-03-28T15:00:00Z/started"
        assert transitions[0].kind is WindowKind.DENY
        assert transitions[0].to_dict()["occurrence_end"] == "2025-03-31T06:00:00Z"

    def test_consecutive_ranges_list_each_transition_once(self) -> None:
        windows = [weekend(), office_hours()]
        cut = utc(2025, 3, 28, 15, 0)  # exactly when the weekend starts
        first = window_transitions(windows, utc(2025, 3, 24), cut)
        second = window_transitions(windows, cut, utc(2025, 4, 2))
        whole = window_transitions(windows, utc(2025, 3, 24), utc(2025, 4, 2))
        assert [t.dedup_key for t in first + second] == [t.dedup_key for t in whole]
        assert "weekend@2025-03-28T15:00:00Z/started" in [t.dedup_key for t in first]

    def test_replayed_listing_gives_the_same_keys(self) -> None:
        first = window_transitions([weekend()], utc(2025, 10, 21), utc(2025, 10, 30))
        again = window_transitions([weekend()], utc(2025, 10, 21), utc(2025, 10, 30))
        assert first == again
        assert [t.at for t in first] == [utc(2025, 10, 24, 14, 0), utc(2025, 10, 27, 7, 0)]

    def test_end_before_start_sorts_first_at_the_same_instant(self) -> None:
        first = one_off("a", "2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z")
        second = one_off("b", "2025-03-02T00:00:00Z", "2025-03-03T00:00:00Z")
        transitions = window_transitions([second, first], utc(2025, 3, 1, 12), utc(2025, 3, 2, 12))
        assert [(t.window_id, t.transition) for t in transitions] == [("a", "ended"), ("b", "started")]

    def test_too_large_or_reversed_range_is_refused(self) -> None:
        with pytest.raises(TransitionRangeTooLarge):
            window_transitions([weekend()], utc(2025, 1, 1), utc(2026, 6, 1))
        with pytest.raises(TransitionRangeTooLarge):
            window_transitions([weekend()], utc(2025, 2, 1), utc(2025, 1, 1))


class TestValidation:
    @pytest.mark.parametrize(
        ("rrule", "message"),
        [
            ("FREQ=FORTNIGHTLY", "FREQ=FORTNIGHTLY is not allowed"),
            ("FREQ=MINUTELY", "FREQ=MINUTELY is not allowed"),
            ("BYDAY=FR", "rrule needs FREQ"),
            ("FREQ=WEEKLY;BYDAY=XX", "is invalid"),
            ("FREQ=WEEKLY;COLOR=RED", "'COLOR' is not an RFC 5545 RRULE part"),
            ("FREQ=WEEKLY;FREQ=DAILY", "FREQ appears twice"),
            ("FREQ=WEEKLY;BYDAY", "is not NAME=VALUE"),
            ("FREQ=WEEKLY;BYDAY=", "BYDAY has no value"),
            ("FREQ=WEEKLY;COUNT=2;UNTIL=20250101T000000Z", "not give both COUNT and UNTIL"),
            ("FREQ=WEEKLY;UNTIL=2025-01-01Z", "is not YYYYMMDDTHHMMSSZ"),
            ("DTSTART:20250103T160000\nRRULE:FREQ=WEEKLY", "single RRULE value"),
            ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "never produces an occurrence"),
            ("FREQ=HOURLY;BYMINUTE=0,10,20,30,40,50", "fires more than 10000 times a year"),
            ("", "must be an RFC 5545 RRULE"),
        ],
    )
    def test_malformed_rrule(self, rrule: str, message: str) -> None:
        with pytest.raises(InvalidRRule, match=message) as info:
            weekend(rrule=rrule)
        assert info.value.code == "ENV_FREEZE_RRULE_INVALID"
        assert info.value.status == 400
        assert "'weekend'" in info.value.detail

    def test_impossible_daily_rule_is_refused_quickly(self) -> None:
        # Left to the recurrence engine, this rule would walk day by day to year 9999 on every query.
        with pytest.raises(InvalidRRule, match="never produces"):
            weekend(rrule="FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30")

    @pytest.mark.parametrize("zone", ["Europe/Berln", "Mars/Olympus_Mons", "../../etc/passwd", "", "/etc/localtime"])
    def test_unknown_time_zone(self, zone: str) -> None:
        with pytest.raises(UnknownTimeZone) as info:
            weekend(timezone=zone)
        assert info.value.code == "ENV_FREEZE_TIMEZONE_UNKNOWN"

    def test_unknown_time_zone_message_names_the_zone(self) -> None:
        with pytest.raises(UnknownTimeZone, match="unknown IANA time zone 'Europe/Berln'"):
            weekend(timezone="Europe/Berln")

    @pytest.mark.parametrize(
        ("start", "end"),
        [("2025-03-01T00:00:00Z", "2025-03-01T00:00:00Z"), ("2025-03-02T00:00:00Z", "2025-03-01T00:00:00Z")],
    )
    def test_end_not_after_start(self, start: str, end: str) -> None:
        with pytest.raises(InvalidWindowBounds, match=r"end .* must be after start") as info:
            one_off("x", start, end)
        assert info.value.code == "ENV_FREEZE_WINDOW_BOUNDS_INVALID"

    @pytest.mark.parametrize(
        ("duration", "message"),
        [
            ("PT0S", "must be positive"),
            (0, "must be positive"),
            (-60, "must be positive"),
            ("P1Y", "not an ISO 8601 duration"),
            ("PT", "not an ISO 8601 duration"),
            ("64 hours", "not an ISO 8601 duration"),
            ("P400D", "at most 366 days"),
            (None, "needs a duration"),
        ],
    )
    def test_bad_duration(self, duration: Any, message: str) -> None:
        with pytest.raises(InvalidWindowDuration, match=message):
            weekend(duration=duration)

    def test_both_end_and_rrule(self) -> None:
        with pytest.raises(InvalidWindowSchedule, match="not both"):
            weekend(start="2025-03-01T00:00:00Z", end="2025-03-02T00:00:00Z")

    def test_neither_end_nor_rrule(self) -> None:
        with pytest.raises(InvalidWindowSchedule, match=r"give end \(one-off window\) or rrule"):
            parse_window({"id": "x", "kind": "deny", "start": "2025-03-01T00:00:00Z", "timezone": "UTC"})

    def test_one_off_with_duration_or_recurring_with_start(self) -> None:
        with pytest.raises(InvalidWindowSchedule, match="takes start and end"):
            one_off("x", "2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z", duration="PT1H")
        with pytest.raises(InvalidWindowSchedule, match="takes dtstart, not start"):
            weekend(start="2025-03-01T00:00:00Z")

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            ({"kind": "maybe"}, "kind must be 'deny' or 'allow'"),
            ({"id": ""}, "non-empty string id"),
            ({"color": "red"}, r"unknown field\(s\) color"),
            ({"exceptions": "alice"}, "exceptions must be a list"),
            ({"dtstart": "next friday"}, "dtstart 'next friday' is not an ISO 8601"),
            ({"dtstart": None}, "needs dtstart"),
        ],
    )
    def test_other_invalid_fields(self, raw: dict[str, Any], message: str) -> None:
        with pytest.raises(InvalidFreezeWindow, match=message):
            weekend(**raw)

    def test_duplicate_window_ids(self) -> None:
        with pytest.raises(InvalidFreezeWindow, match="appears twice"):
            parse_windows([weekend().to_dict(), weekend().to_dict()])

    def test_round_trip_through_json(self) -> None:
        for window in (
            weekend(exceptions=["bob", "alice", "bob"]),
            one_off("x", "2025-03-01T01:00:00+01:00", "2025-03-02T00:00:00Z"),
        ):
            assert parse_window(window.to_dict()) == window
        assert weekend(exceptions=["bob", "alice", "bob"]).exceptions == ("alice", "bob")

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("PT64H", timedelta(hours=64)),
            ("P2DT16H", timedelta(hours=64)),
            ("P1W", timedelta(days=7)),
            ("pt90m", timedelta(minutes=90)),
            (3600, timedelta(hours=1)),
            (timedelta(minutes=5), timedelta(minutes=5)),
        ],
    )
    def test_durations(self, text: Any, expected: timedelta) -> None:
        assert parse_duration(text) == expected

    def test_duration_format(self) -> None:
        assert format_duration(timedelta(hours=64)) == "PT64H"
        assert format_duration(timedelta(hours=1, minutes=30, seconds=5)) == "PT1H30M5S"
        assert format_duration(timedelta(0)) == "PT0S"


class TestOverride:
    def test_permission_overrides_any_window(self) -> None:
        check_override(FreezeOverride("carol", "hotfix for INC-1", has_override_permission=True), [weekend()])

    def test_exception_principal_of_every_window_may_override(self) -> None:
        windows = [
            weekend(exceptions=["alice"]),
            one_off("x", "2025-03-01T00:00Z", "2025-03-02T00:00Z", exceptions=["alice"]),
        ]
        check_override(FreezeOverride("alice", "hotfix"), windows)

    def test_principal_missing_from_one_window_is_refused(self) -> None:
        windows = [weekend(exceptions=["alice"]), one_off("x", "2025-03-01T00:00Z", "2025-03-02T00:00Z")]
        with pytest.raises(OverrideForbidden, match=r"not an exception of window\(s\) x") as info:
            check_override(FreezeOverride("alice", "hotfix"), windows)
        assert (info.value.code, info.value.status) == ("GATE_FREEZE_OVERRIDE_FORBIDDEN", 422)

    @pytest.mark.parametrize("reason", ["", "   "])
    def test_reason_is_mandatory(self, reason: str) -> None:
        with pytest.raises(OverrideReasonRequired):
            check_override(FreezeOverride("alice", reason, has_override_permission=True), [weekend()])
