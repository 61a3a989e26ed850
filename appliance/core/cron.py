"""Five-field cron expressions and their next run in a time zone (pure).

Written here rather than taken from a library so the DST rules are ours and
stated: a wall-clock time skipped at spring-forward runs at the first valid
time after the gap (once, however many skipped times matched); a wall-clock
time repeated at fall-back runs once, at its first occurrence — except when
the hour field is ``*``, where the job is "every N minutes"-like and also
runs in the repeated hour (Vixie cron does the same).

Day-of-month and day-of-week follow Vixie cron: if either field starts with
``*`` the day must match both (the ``*`` one matches anything); if both are
restricted, a day matching *either* is enough (``0 9 1 * mon`` = the 1st and
every Monday).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

from appliance.core.errors import InvalidInput

_FIX = "use 5 fields 'minute hour day-of-month month day-of-week', e.g. '30 8 * * mon-fri'"

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = {name: i for i, name in enumerate(calendar.month_abbr) if name}
_MONTH_NAMES = {k.lower(): v for k, v in _MONTHS.items()}
_DOW_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}

# (name shown in errors, lowest, highest, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTH_NAMES),
    ("day-of-week", 0, 7, _DOW_NAMES),
)

# A match is always found within 8 years (29 Feb skips 2100); past that the
# expression cannot match, which parse_cron already refuses.
_SEARCH_DAYS = 366 * 9


@dataclass(frozen=True)
class CronExpr:
    source: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday … 6 = Saturday (7 folded into 0)
    dom_star: bool
    dow_star: bool
    hour_star: bool

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom_ok = day.day in self.days
        dow_ok = (day.weekday() + 1) % 7 in self.weekdays
        if self.dom_star or self.dow_star:
            return dom_ok and dow_ok
        return dom_ok or dow_ok


def _bad(field: str, part: str, why: str) -> InvalidInput:
    return InvalidInput(f"invalid cron {field} field {part!r}: {why}", _FIX)


def _value(token: str, field: str, lo: int, hi: int, names: dict[str, int]) -> int:
    low = token.lower()
    if low in names:
        return names[low]
    if not token.isdigit():
        raise _bad(field, token, "not a number" + (" or name" if names else ""))
    number = int(token)
    if not lo <= number <= hi:
        raise _bad(field, token, f"out of range {lo}-{hi}")
    return number


def _parse_field(text: str, index: int) -> set[int]:
    field, lo, hi, names = _FIELDS[index]
    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise _bad(field, part, "the step after '/' must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            first, _, last = base.partition("-")
            start = _value(first, field, lo, hi, names)
            end = _value(last, field, lo, hi, names)
            if index == 4 and end == 0 and start > 0:
                end = 7  # 'fri-sun': Sunday closes a weekday range as 7
            if start > end:
                raise _bad(field, part, "a range must go from low to high")
        elif base:
            start = _value(base, field, lo, hi, names)
            # 'N/S' means N to the end of the field, as cronie reads it.
            end = hi if slash else start
        else:
            raise _bad(field, part or text, "empty list item")
        values.update(range(start, end + 1, step))
    return values


def parse_cron(expr: str) -> CronExpr:
    """Parse ``expr`` (5 fields or an @macro); InvalidInput names the bad field."""
    source = " ".join(expr.split())
    text = MACROS.get(source.lower(), source)
    if text.startswith("@"):
        raise InvalidInput(
            f"unknown cron macro {source!r}",
            "use one of " + ", ".join(MACROS) + " or 5 fields",
        )
    fields = text.split()
    if len(fields) != 5:
        raise InvalidInput(f"cron expression {source!r} has {len(fields)} fields, not 5", _FIX)
    parsed = [_parse_field(f, i) for i, f in enumerate(fields)]
    weekdays = frozenset(d % 7 for d in parsed[4])
    cron = CronExpr(
        source=source,
        minutes=tuple(sorted(parsed[0])),
        hours=tuple(sorted(parsed[1])),
        days=frozenset(parsed[2]),
        months=frozenset(parsed[3]),
        weekdays=weekdays,
        dom_star=fields[2].startswith("*"),
        dow_star=fields[4].startswith("*"),
        hour_star=fields[1] == "*",
    )
    if cron.dow_star and not any(d <= _month_days(m) for m in cron.months for d in cron.days):
        raise _bad("day-of-month", fields[2], "no such day in the chosen month(s)")
    return cron


def _month_days(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def resolve_local(naive: datetime, tz: ZoneInfo) -> datetime:
    """The instant (UTC) of wall-clock time ``naive`` in ``tz``: the first
    occurrence if it is repeated, the end of the gap if it was skipped."""
    if exists_local(naive, tz):
        return naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    probe = naive.replace(second=0, microsecond=0)
    # Gaps are at most a day long (Samoa, 2011); walk to their end.
    for _ in range(24 * 60 + 1):
        probe += timedelta(minutes=1)
        if exists_local(probe, tz):
            return probe.replace(tzinfo=tz, fold=0).astimezone(UTC)
    raise ValueError(f"no valid time after {naive} in {tz.key}")


def exists_local(naive: datetime, tz: ZoneInfo) -> bool:
    aware = naive.replace(tzinfo=tz, fold=0)
    return aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive


def _instants(naive: datetime, tz: ZoneInfo, both_folds: bool) -> list[datetime]:
    if not exists_local(naive, tz):
        return [resolve_local(naive, tz)]
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    return [first, second] if both_folds and second != first else [first]


def cron_next(cron: CronExpr, after: datetime, tz: ZoneInfo) -> datetime:
    """The first run strictly after ``after`` (aware), as an aware UTC datetime."""
    after = after.astimezone(UTC)
    # Start one hour of wall clock early so a repeated hour (fall-back) is
    # searched in full; instants at or before ``after`` are discarded below.
    local = after.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0)
    start = local - timedelta(hours=1)
    day = start.date()
    for _ in range(_SEARCH_DAYS):
        if cron.matches_day(day):
            found = _first_in_day(cron, day, start, after, tz)
            if found is not None:
                return found
        day += timedelta(days=1)
    raise ValueError(f"cron {cron.source!r} has no run within {_SEARCH_DAYS} days")


def _first_in_day(
    cron: CronExpr, day: date, start: datetime, after: datetime, tz: ZoneInfo
) -> datetime | None:
    # Wall-clock order is not instant order inside a repeated hour (01:30 of
    # the second pass comes after 01:45 of the first), so keep the earliest
    # instant seen and stop once the wall clock is well past it.
    best: datetime | None = None
    best_naive = start
    for hour in cron.hours:
        for minute in cron.minutes:
            naive = datetime.combine(day, dtime(hour, minute))
            if naive < start:
                continue
            if best is not None and naive - best_naive > timedelta(hours=3):
                return best
            for instant in _instants(naive, tz, cron.hour_star):
                if instant > after and (best is None or instant < best):
                    best, best_naive = instant, naive
    return best
