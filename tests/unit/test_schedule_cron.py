"""Cron expressions: parsing, names and steps, Vixie day rules, DST in two zones."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from appliance.core.cron import cron_next, parse_cron
from appliance.core.errors import InvalidInput

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def _runs(expr: str, start: datetime, tz: ZoneInfo, count: int) -> list[str]:
    cron, out, when = parse_cron(expr), [], start
    for _ in range(count):
        when = cron_next(cron, when, tz)
        out.append(when.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z"))
    return out


def test_lists_ranges_steps_and_names() -> None:
    cron = parse_cron("0,30 8-10/2 * jan,JUL mon-fri")
    assert cron.minutes == (0, 30)
    assert cron.hours == (8, 10)
    assert cron.months == {1, 7}
    assert cron.weekdays == {1, 2, 3, 4, 5}
    assert parse_cron("*/20 * * * *").minutes == (0, 20, 40)
    assert parse_cron("5/20 * * * *").minutes == (5, 25, 45)  # N/S = N to the end
    assert parse_cron("0 0 * * 7").weekdays == {0}  # 7 is Sunday too
    assert parse_cron("0 0 * * fri-sun").weekdays == {5, 6, 0}  # Sunday ends a range as 7


def test_macros_expand_to_their_fields() -> None:
    utc = ZoneInfo("UTC")
    start = datetime(2024, 6, 5, 10, 17, tzinfo=UTC)  # a Wednesday
    assert _runs("@hourly", start, utc, 1) == ["2024-06-05 11:00 UTC"]
    assert _runs("@daily", start, utc, 1) == ["2024-06-06 00:00 UTC"]
    assert _runs("@weekly", start, utc, 1) == ["2024-06-09 00:00 UTC"]
    assert _runs("@monthly", start, utc, 1) == ["2024-07-01 00:00 UTC"]


@pytest.mark.parametrize(
    ("expr", "field"),
    [
        ("60 * * * *", "minute field '60': out of range 0-59"),
        ("0 24 * * *", "hour field '24'"),
        ("0 0 0 * *", "day-of-month field '0'"),
        ("0 0 * 13 *", "month field '13'"),
        ("0 0 * foo *", "month field 'foo': not a number or name"),
        ("0 0 * * 8", "day-of-week field '8'"),
        ("*/0 * * * *", "minute field '*/0': the step"),
        ("0 10-2 * * *", "hour field '10-2': a range must go from low to high"),
        ("0 0 30 feb *", "day-of-month field '30': no such day"),
        ("1,,2 * * * *", "minute field"),
    ],
)
def test_invalid_fields_are_named(expr: str, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_cron(expr)
    assert field in info.value.what
    assert "5 fields" in info.value.fix


def test_wrong_field_count_and_unknown_macro() -> None:
    with pytest.raises(InvalidInput, match="has 4 fields, not 5"):
        parse_cron("0 0 * *")
    with pytest.raises(InvalidInput, match="unknown cron macro '@reboot'"):
        parse_cron("@reboot")


def test_dom_and_dow_both_restricted_is_either() -> None:
    # 1 June 2024 is a Saturday: runs on the 1st and on every Monday.
    start = datetime(2024, 5, 31, 12, tzinfo=UTC)
    assert _runs("0 9 1 * mon", start, ZoneInfo("UTC"), 3) == [
        "2024-06-01 09:00 UTC",
        "2024-06-03 09:00 UTC",
        "2024-06-10 09:00 UTC",
    ]


def test_a_star_day_field_means_both_must_match() -> None:
    start = datetime(2024, 5, 31, 12, tzinfo=UTC)
    # '*/2' starts with '*', so (as in Vixie cron) the weekday must match too.
    assert _runs("0 9 */2 * mon", start, ZoneInfo("UTC"), 2) == [
        "2024-06-03 09:00 UTC",
        "2024-06-17 09:00 UTC",
    ]


def test_leap_day_is_found_years_ahead() -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC)
    assert _runs("0 0 29 feb *", start, ZoneInfo("UTC"), 1) == ["2028-02-29 00:00 UTC"]


def test_berlin_spring_forward_runs_a_skipped_time_at_the_next_valid_time() -> None:
    start = datetime(2024, 3, 30, 12, tzinfo=BERLIN)
    assert _runs("30 2 * * *", start, BERLIN, 2) == [
        "2024-03-31 03:00 CEST",  # 02:30 does not exist that night
        "2024-04-01 02:30 CEST",
    ]


def test_berlin_spring_forward_collapses_skipped_times_into_one_run() -> None:
    start = datetime(2024, 3, 31, 1, 50, tzinfo=BERLIN)
    assert _runs("*/15 * * * *", start, BERLIN, 3) == [
        "2024-03-31 03:00 CEST",
        "2024-03-31 03:15 CEST",
        "2024-03-31 03:30 CEST",
    ]


def test_berlin_fall_back_runs_a_repeated_time_once() -> None:
    start = datetime(2024, 10, 26, 12, tzinfo=BERLIN)
    assert _runs("30 2 * * *", start, BERLIN, 2) == [
        "2024-10-27 02:30 CEST",  # the first 02:30; the second (CET) is not a run
        "2024-10-28 02:30 CET",
    ]


def test_fall_back_with_star_hour_keeps_running_through_the_repeated_hour() -> None:
    start = datetime(2024, 10, 27, 2, 40, tzinfo=BERLIN)
    assert _runs("*/30 * * * *", start, BERLIN, 4) == [
        "2024-10-27 02:00 CET",
        "2024-10-27 02:30 CET",
        "2024-10-27 03:00 CET",
        "2024-10-27 03:30 CET",
    ]


def test_new_york_dst_both_ways() -> None:
    spring = datetime(2024, 3, 9, 12, tzinfo=NEW_YORK)
    assert _runs("15 2 * * *", spring, NEW_YORK, 2) == [
        "2024-03-10 03:00 EDT",
        "2024-03-11 02:15 EDT",
    ]
    fall = datetime(2024, 11, 2, 12, tzinfo=NEW_YORK)
    runs = _runs("30 1 * * *", fall, NEW_YORK, 2)
    assert runs == ["2024-11-03 01:30 EDT", "2024-11-04 01:30 EST"]


def test_next_is_strictly_after_and_returned_in_utc() -> None:
    cron = parse_cron("0 9 * * *")
    at_nine = datetime(2024, 6, 3, 9, tzinfo=BERLIN)
    following = cron_next(cron, at_nine, BERLIN)
    assert following.tzinfo is UTC
    assert following == datetime(2024, 6, 4, 7, tzinfo=UTC)
