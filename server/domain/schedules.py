"""Cron schedules of triggers: their validation, their fire times in a time zone, catching up.

Expressions are cronsim's (Debian cron's dialect): 5 fields, or 6 with the seconds FIRST.
DST follows one of two rules, chosen by cronsim's own test (its `fixup_tz`):
- 5 fields whose minute and hour fields both start with something other than '*' ("30 2 * * *",
  "0,30 9-17 * * *") are wall-clock times, as in Debian cron: a time in the spring-forward gap
  fires once, when the gap ends; one in the fall-back overlap fires once, at its first pass.
- Anything else ("0 * * * *", "*/15 9-17 * * *", "0 */2 * * *", every 6-field expression) fires
  at each real instant whose local clock reading matches: a time skipped in spring never fires,
  one repeated in autumn fires twice (an hourly job fires 23 and 25 times those days). cronsim
  has no DST rule for these and steps through zone-aware times, which in zones moving by 30
  minutes (Australia/Lord_Howe) loses fire times, or not, depending on where it starts; so it
  runs here on the fixed UTC offset of each span between transitions, which is that rule exactly.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from itertools import islice, takewhile
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from server.domain.errors import FieldViolation, InvalidArgument


class MisfirePolicy(enum.Enum):
    """What happens to occurrences more than MISFIRE_GRACE late (the server was down)."""

    SKIP = "skip"  # none fires; they are recorded as missed
    RUN_LATEST = "run_latest"  # only the latest due occurrence fires
    RUN_ALL = "run_all"  # those within the catch-up window fire, the latest max_catchup_runs


DEFAULT_MISFIRE_POLICY = MisfirePolicy.RUN_LATEST
# An occurrence at most this late is on time: it fires whatever the policy.
MISFIRE_GRACE = timedelta(minutes=1)
DEFAULT_CATCHUP_WINDOW = timedelta(days=1)
MAX_CATCHUP_WINDOW = timedelta(days=7)
DEFAULT_MAX_CATCHUP_RUNS = 10
MAX_CATCHUP_RUNS = 100
MAX_PREVIEW = 50
MAX_CRON_LENGTH = 256
MAX_TIME_ZONE_LENGTH = 64
# CatchUp.missed saturates here: a per-second schedule down for a week misses 604,800.
MAX_COUNTED_MISSED = 100_000

_TICK = timedelta(microseconds=1)
# Occurrences fall on whole seconds, so at most 61 are on time, plus the stored next fire time.
_MOST_ON_TIME = int(MISFIRE_GRACE.total_seconds()) + 2
# A cron expression has no year: one that matches nothing in the 50 years cronsim searches from
# here never matches, and cronsim gives up 50 years after any instant as well.
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)
_HORIZON = timedelta(days=366 * 50)
# Offset spans are read 30 days at a time, probing once a day: no zone shifts twice in a day.
_SPAN_DAYS, _DAY_SECONDS = 30, 86_400
_ZONE_KEY = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")
# Keys that ZoneInfo loads but that name no place.
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
_NOT_ZONE_DIRECTORIES = ("posix/", "right/")
_CRONSIM_PROBLEMS = {
    "Wrong number of fields": "needs 5 fields (minute hour day-of-month month day-of-week), "
    "or 6 with the seconds first",
    "Bad day-of-month": "the day-of-month field is not valid, or names no day the months have",
}


@dataclass(frozen=True)
class Schedule:
    cron: str
    time_zone: str = ""  # IANA name; "" means UTC
    misfire_policy: MisfirePolicy = DEFAULT_MISFIRE_POLICY
    catchup_window: timedelta = DEFAULT_CATCHUP_WINDOW
    max_catchup_runs: int = DEFAULT_MAX_CATCHUP_RUNS

    def validate(self, field: str = "trigger.schedule") -> Schedule:
        """A copy with the cron's whitespace collapsed, or InvalidArgument naming each bad field."""
        cron = " ".join(self.cron.split())
        problems = {
            "cron": _cron_problem(self.cron, cron),
            "time_zone": _time_zone_problem(self.time_zone),
            "catchup_window": _window_problem(self.catchup_window),
            "max_catchup_runs": _runs_problem(self.max_catchup_runs),
        }
        violations = [FieldViolation(f"{field}.{key}", why) for key, why in problems.items() if why]
        if violations:
            raise InvalidArgument("the schedule is not valid", violations)
        return replace(self, cron=cron)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone or "UTC")

    def next_after(self, instant: datetime) -> datetime | None:
        """The first fire time strictly after `instant`, in UTC; None if it never fires again."""
        return next(_fire_times(self, _utc(instant)), None)

    def preview(self, after: datetime, count: int) -> list[datetime]:
        """The next `count` (1..MAX_PREVIEW) fire times after `after`, in UTC."""
        if not 1 <= count <= MAX_PREVIEW:
            raise InvalidArgument(
                "the preview count is not valid",
                [FieldViolation("count", f"must be between 1 and {MAX_PREVIEW}")],
            )
        return list(islice(_fire_times(self, _utc(after)), count))

    def explain(self) -> str:
        """cronsim's English reading of the expression ("At 02:30 every day")."""
        return CronSim(self.cron, _REFERENCE).explain() or self.cron


@dataclass(frozen=True)
class CatchUp:
    """What a scheduler does at one instant: what fires, what was missed, when to wake next."""

    due: tuple[datetime, ...]  # occurrences to fire now, oldest first (UTC)
    missed: int  # due occurrences that will not fire; saturates at MAX_COUNTED_MISSED
    first_missed: datetime | None
    last_missed: datetime | None
    next_fire_time: datetime | None  # the first occurrence after `now`; None: never again


def catch_up(schedule: Schedule, next_fire_time: datetime, now: datetime) -> CatchUp:
    """What fires at `now` for a trigger whose stored next fire time is `next_fire_time`.

    Due are next_fire_time and every later occurrence up to `now`. Those at most MISFIRE_GRACE
    late are on time and always fire; the policy judges the older ones. SKIP: none fires.
    RUN_LATEST: if nothing is on time, the latest due one fires (so one fire after an outage).
    RUN_ALL: those younger than catchup_window fire, but no more than max_catchup_runs together
    with the on-time ones, keeping the latest (on-time ones fire even beyond that cap). Every due
    occurrence that does not fire is missed; all of them are older than the ones that fire.
    Work is bounded by what fires plus MAX_COUNTED_MISSED, however long the outage.
    """
    first, now = _utc(next_fire_time), _utc(now)
    if first > now:
        return CatchUp((), 0, None, None, first)

    def latest_due(after: datetime, upto: datetime, count: int) -> list[datetime]:
        found = _latest(schedule, max(after, first), upto, count)
        if len(found) < count and after < first <= upto:
            found.insert(0, first)
        return found

    on_time = latest_due(now - MISFIRE_GRACE - _TICK, now, _MOST_ON_TIME)
    firing = on_time
    if schedule.misfire_policy is MisfirePolicy.RUN_ALL:
        window = max(schedule.catchup_window, MISFIRE_GRACE + _TICK)
        firing = latest_due(now - window, now, max(schedule.max_catchup_runs, len(on_time)))
    elif schedule.misfire_policy is MisfirePolicy.RUN_LATEST and not on_time:
        firing = latest_due(first - _TICK, now, 1)
    older = latest_due(first - _TICK, firing[0] - _TICK if firing else now, 1)
    last_missed = older[0] if older else None
    missed = 0 if last_missed is None else _count(schedule, first, last_missed)
    first_missed = first if missed else None
    return CatchUp(tuple(firing), missed, first_missed, last_missed, schedule.next_after(now))


def _fire_times(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """Fire times strictly after `after`, increasing, in UTC, for at most 50 years."""
    zone = schedule.zone
    wall_clock = CronSim(schedule.cron, after.astimezone(zone))
    if wall_clock.fixup_tz is not None:  # Debian's rule, which cronsim implements
        last = after
        for fire in map(_utc, wall_clock):
            # Started inside a fall-back overlap, cronsim can return that overlap's first pass.
            if fire > last:
                last = fire
                yield fire
        return
    cursor = span_start = after
    while cursor < after + _HORIZON:
        span_end = _offset_change(zone, span_start)
        offset = timezone(_offset_at(zone, int(span_start.timestamp())))
        for fire in CronSim(schedule.cron, cursor.astimezone(offset)):
            if fire >= span_end:
                break
            yield fire.astimezone(UTC)
        else:
            return  # cronsim found nothing in 50 years
        cursor, span_start = span_end - _TICK, span_end


def _latest(schedule: Schedule, after: datetime, upto: datetime, count: int) -> list[datetime]:
    """The latest `count` fire times in (after, upto], oldest first; fewer if there are fewer."""
    if count <= 0 or upto <= after:
        return []
    # cronsim's reverse iteration only locates them: around DST transitions it disagrees with the
    # forward iteration that defines fire times, so the span is read forwards, widened if short.
    offset = timezone(_offset_at(schedule.zone, int(upto.timestamp())))
    start_back = upto.replace(microsecond=0).astimezone(offset) + timedelta(seconds=1)
    backwards = CronSim(schedule.cron, start_back, reverse=True)
    located = list(islice(takewhile(lambda fire: fire > after, backwards), count))
    start = located[-1] - _TICK if len(located) == count else after
    while True:
        upcoming = takewhile(lambda fire: fire <= upto, _fire_times(schedule, start))
        found = deque(upcoming, maxlen=count)
        if len(found) == count or start <= after:
            return list(found)
        start = max(after, upto - 2 * (upto - start))


def _count(schedule: Schedule, first: datetime, last: datetime) -> int:
    """`first` and the fire times after it up to `last`, counted up to MAX_COUNTED_MISSED."""
    later = takewhile(lambda fire: fire <= last, _fire_times(schedule, first))
    return 1 + sum(1 for _ in islice(later, MAX_COUNTED_MISSED - 1))


def _offset_at(zone: ZoneInfo, seconds: int) -> timedelta:
    """`zone`'s UTC offset at a POSIX time (whole seconds: transitions fall on them)."""
    offset = datetime.fromtimestamp(seconds, zone).utcoffset()
    assert offset is not None  # an aware datetime always has one
    return offset


def _offset_change(zone: ZoneInfo, start: datetime) -> datetime:
    """The first instant after `start` with another UTC offset, or the end of a 30-day span."""
    first = int(start.timestamp())
    offset = _offset_at(zone, first)
    for day in range(1, _SPAN_DAYS + 1):
        high = first + day * _DAY_SECONDS
        if _offset_at(zone, high) != offset:
            low = high - _DAY_SECONDS
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if _offset_at(zone, middle) == offset else (low, middle)
            break
    return datetime.fromtimestamp(high, UTC)


def _utc(instant: datetime) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"a naive datetime ({instant.isoformat()}) where an instant is needed")
    return instant.astimezone(UTC)


def _cron_problem(raw: str, cron: str) -> str:
    if not cron:
        return "is required"
    if len(raw) > MAX_CRON_LENGTH:
        return f"must be at most {MAX_CRON_LENGTH} characters"
    try:
        next(CronSim(cron, _REFERENCE))
    except CronSimError as refused:
        reason = str(refused)
        field_name = reason.removeprefix("Bad ")
        return _CRONSIM_PROBLEMS.get(reason, f"the {field_name} field is not valid")
    except StopIteration:
        return "never matches any date"
    return ""


def _window_problem(window: timedelta) -> str:
    if timedelta(0) < window <= MAX_CATCHUP_WINDOW:
        return ""
    return f"must be more than 0 and at most {MAX_CATCHUP_WINDOW.days} days"


def _runs_problem(runs: int) -> str:
    return "" if 1 <= runs <= MAX_CATCHUP_RUNS else f"must be between 1 and {MAX_CATCHUP_RUNS}"


def _time_zone_problem(key: str) -> str:
    if not key:
        return ""
    if len(key) > MAX_TIME_ZONE_LENGTH or not _ZONE_KEY.fullmatch(key):
        return "must be an IANA time zone name such as Europe/Berlin"
    if key in _NOT_ZONES or key.startswith(_NOT_ZONE_DIRECTORIES):
        return f"{key} is not an IANA time zone name"
    try:
        ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return f"no time zone is named {key}"
    return ""
