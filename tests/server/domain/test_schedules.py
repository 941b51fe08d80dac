"""Cron schedules: fire times across DST in three zones, a simulated scheduler, misfire policies
after outages, and validation."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from server.domain.errors import InvalidArgument
from server.domain.schedules import (
    MAX_COUNTED_MISSED,
    MAX_CRON_LENGTH,
    MAX_PREVIEW,
    MISFIRE_GRACE,
    CatchUp,
    MisfirePolicy,
    Schedule,
    catch_up,
)

NEW_YORK, BERLIN, LORD_HOWE = "America/New_York", "Europe/Berlin", "Australia/Lord_Howe"
YEARS = range(2025, 2031)
# Per zone: a daily time inside the spring-forward gap, one inside the fall-back overlap, and
# the local time at which the gap ends. Lord Howe moves 30 minutes at 02:00.
GAP_TIME = {NEW_YORK: "30 2 * * *", BERLIN: "30 2 * * *", LORD_HOWE: "15 2 * * *"}
OVERLAP_TIME = {NEW_YORK: "30 1 * * *", BERLIN: "30 2 * * *", LORD_HOWE: "45 1 * * *"}
GAP_END = {NEW_YORK: time(3), BERLIN: time(3), LORD_HOWE: time(2, 30)}
HOUR = timedelta(hours=1)


def fire_times(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time in (start, end], one next_after at a time."""
    fires: list[datetime] = []
    fire = schedule.next_after(start)
    while fire is not None and fire <= end:
        fires.append(fire)
        fire = schedule.next_after(fire)
    return fires


def previewed(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time in (start, end], computed up front with preview, a page at a time."""
    fires: list[datetime] = []
    while True:
        page = [fire for fire in schedule.preview(start, MAX_PREVIEW) if fire <= end]
        fires += page
        if len(page) < MAX_PREVIEW:
            return fires
        start = page[-1]


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), zone)


def transition_days(zone_name: str, year: int) -> tuple[date, date]:
    """(spring-forward day, fall-back day) of a year, found from the offsets alone."""
    zone = ZoneInfo(zone_name)
    spring = fall = None
    day = date(year, 1, 1)
    while day.year == year:
        before = local_midnight(day, zone).utcoffset()
        after = local_midnight(day + timedelta(days=1), zone).utcoffset()
        assert before is not None
        assert after is not None
        if after > before:
            spring = day
        elif after < before:
            fall = day
        day += timedelta(days=1)
    assert spring is not None
    assert fall is not None
    return spring, fall


def wall_clock_hours(day: date, zone: ZoneInfo) -> int:
    """Real instants of a local day at which the local clock shows HH:00, counted in steps of
    a quarter of an hour in UTC (every offset of these zones is a multiple of 30 minutes)."""
    instant, end = local_midnight(day, zone), local_midnight(day + timedelta(days=1), zone)
    count = 0
    while instant < end:
        count += instant.astimezone(zone).minute == 0
        instant = (instant.astimezone(UTC) + timedelta(minutes=15)).astimezone(zone)
    return count


def per_local_day(fires: list[datetime], zone: ZoneInfo) -> Counter[date]:
    return Counter(fire.astimezone(zone).date() for fire in fires)


# DST ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("year", YEARS)
@pytest.mark.parametrize(
    ("zone_name", "cron"),
    [(zone, GAP_TIME[zone]) for zone in GAP_TIME]
    + [(zone, OVERLAP_TIME[zone]) for zone in (NEW_YORK, LORD_HOWE)],
)
def test_a_daily_job_fires_once_every_local_day(zone_name: str, cron: str, year: int) -> None:
    zone = ZoneInfo(zone_name)
    schedule = Schedule(cron, zone_name).validate()
    start = local_midnight(date(year, 1, 1), zone)
    fires = fire_times(schedule, start, local_midnight(date(year + 1, 1, 1), zone))

    assert all(earlier < later for earlier, later in itertools.pairwise(fires))
    days = per_local_day(fires, zone)
    assert set(days.values()) == {1}
    assert len(days) == (date(year + 1, 1, 1) - date(year, 1, 1)).days

    spring, fall = transition_days(zone_name, year)
    minute, hour = (int(part) for part in cron.split()[:2])
    on_spring = next(fire for fire in fires if fire.astimezone(zone).date() == spring)
    on_fall = next(fire for fire in fires if fire.astimezone(zone).date() == fall)
    if cron == GAP_TIME[zone_name]:
        # The time does not exist that day: the job runs once, the moment the gap ends.
        assert on_spring.astimezone(zone).time() == GAP_END[zone_name]
        assert (on_spring - HOUR / 2).astimezone(zone).time() < time(hour, minute)
    if cron == OVERLAP_TIME[zone_name]:
        # The time happens twice that day: the job runs at the first one only.
        first_pass = datetime.combine(fall, time(hour, minute), zone)  # fold=0
        second_pass = datetime.combine(fall, time(hour, minute), zone).replace(fold=1)
        assert first_pass.astimezone(UTC) != second_pass.astimezone(UTC)
        assert on_fall == first_pass.astimezone(UTC)


def on_day(schedule: Schedule, day: date) -> list[str]:
    """The local fire times of one local day, as a person reads them ("02:30+0200")."""
    zone = schedule.zone
    start, end = local_midnight(day, zone), local_midnight(day + timedelta(days=1), zone)
    fires = fire_times(schedule, start - timedelta(seconds=1), end - timedelta(seconds=1))
    return [fire.astimezone(zone).strftime("%H:%M%z") for fire in fires]


@pytest.mark.parametrize("year", YEARS)
def test_a_daily_berlin_job_in_both_gap_and_overlap(year: int) -> None:
    # In Berlin 02:30 is both skipped (March) and repeated (October).
    spring, fall = transition_days(BERLIN, year)
    schedule = Schedule("30 2 * * *", BERLIN).validate()
    assert on_day(schedule, spring) == ["03:00+0200"]
    assert on_day(schedule, fall) == ["02:30+0200"]


@pytest.mark.parametrize("year", YEARS)
@pytest.mark.parametrize(
    ("zone_name", "spring_count", "fall_count"),
    # Lord Howe's repeated half hour (01:30-02:00) holds no HH:00; its skipped one holds 02:00.
    [(NEW_YORK, 23, 25), (BERLIN, 23, 25), (LORD_HOWE, 23, 24)],
)
def test_an_hourly_job_fires_at_each_hour_the_clock_shows(
    zone_name: str, spring_count: int, fall_count: int, year: int
) -> None:
    zone = ZoneInfo(zone_name)
    schedule = Schedule("0 * * * *", zone_name).validate()
    for day, expected in zip(
        transition_days(zone_name, year), (spring_count, fall_count), strict=True
    ):
        start = local_midnight(day, zone)
        fires = fire_times(schedule, start - timedelta(seconds=1), start + timedelta(hours=24))
        fires = [fire for fire in fires if fire.astimezone(zone).date() == day]
        assert len(fires) == expected == wall_clock_hours(day, zone)
        assert all(fire.astimezone(zone).minute == 0 for fire in fires)
        assert all(earlier < later for earlier, later in itertools.pairwise(fires))


def test_lord_howe_steps_of_hours_and_minutes_keep_every_wall_clock_match() -> None:
    zone = ZoneInfo(LORD_HOWE)
    fall = datetime(2025, 4, 6, tzinfo=zone)  # 02:00+11:00 becomes 01:30+10:30
    shown = [
        fire.astimezone(zone).strftime("%H:%M%z")
        for fire in fire_times(Schedule("*/20 2 * * *", LORD_HOWE), fall, fall + 4 * HOUR)
    ]
    assert shown == ["02:00+1030", "02:20+1030", "02:40+1030"]
    every_two_hours = fire_times(Schedule("0 */2 * * *", LORD_HOWE), fall, fall + 5 * HOUR)
    assert [fire.astimezone(zone).hour for fire in every_two_hours] == [2, 4]


def test_six_field_expressions_follow_the_wall_clock_not_debian() -> None:
    # Documented: 6 fields get no DST rule: the gap's 02:30 never fires, the overlap's twice.
    schedule = Schedule("0 30 2 * * *", BERLIN).validate()
    spring, fall = transition_days(BERLIN, 2026)
    assert on_day(schedule, spring) == []
    assert on_day(schedule, fall) == ["02:30+0200", "02:30+0100"]
    assert on_day(schedule, fall + timedelta(days=1)) == ["02:30+0100"]


def test_next_after_is_strictly_after_and_in_utc() -> None:
    schedule = Schedule("30 1 * * *", NEW_YORK).validate()
    zone = ZoneInfo(NEW_YORK)
    # 01:15 of the second pass through the overlap: today's 01:30 (first pass) is already over.
    second_pass = datetime(2025, 11, 2, 1, 15, tzinfo=zone, fold=1)
    fire = schedule.next_after(second_pass)
    assert fire == datetime(2025, 11, 3, 6, 30, tzinfo=UTC)
    assert fire is not None
    assert fire.tzinfo is UTC
    exactly = datetime(2025, 11, 3, 1, 30, tzinfo=zone)
    assert schedule.next_after(exactly) == datetime(2025, 11, 4, 6, 30, tzinfo=UTC)


# A simulated scheduler ------------------------------------------------------------------------


def run_scheduler(schedule: Schedule, start: datetime, clock: list[datetime]) -> list[datetime]:
    """A scheduler that stored next_after(start), woken at each instant of `clock`."""
    stored = schedule.next_after(start)
    fired: list[datetime] = []
    for now in clock:
        assert stored is not None
        result = catch_up(schedule, stored, now)
        fired += result.due
        assert result.missed == 0
        stored = result.next_fire_time
    return fired


@pytest.mark.parametrize(
    ("zone_name", "cron"),
    [
        (NEW_YORK, "30 1 * * *"),
        (NEW_YORK, "*/7 * * * *"),
        (BERLIN, "30 2 * * *"),
        (BERLIN, "0 */2 * * *"),
        (BERLIN, "0 30 2 * * *"),
        (LORD_HOWE, "*/20 2 * * *"),
        (LORD_HOWE, "15,45 1-2 * * *"),
        (LORD_HOWE, "0 * * * *"),
    ],
)
def test_a_scheduler_polling_every_17_seconds_fires_what_the_preview_showed(
    zone_name: str, cron: str
) -> None:
    schedule = Schedule(cron, zone_name).validate()
    for day in transition_days(zone_name, 2025):
        start = local_midnight(day, ZoneInfo(zone_name)).astimezone(UTC) - 3 * HOUR
        end = start + 30 * HOUR
        expected = previewed(schedule, start, end)
        clock = [start + timedelta(seconds=17 * step) for step in range(1, 30 * 3600 // 17 + 1)]
        fired = run_scheduler(schedule, start, clock)
        assert fired == [fire for fire in expected if fire <= clock[-1]]
        assert len(set(fired)) == len(fired) > 0


@pytest.mark.parametrize("zone_name", [NEW_YORK, BERLIN, LORD_HOWE])
def test_a_scheduler_woken_late_within_the_grace_fires_a_year_as_previewed(zone_name: str) -> None:
    schedule = Schedule("0 */6 * * *", zone_name).validate()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    expected = previewed(schedule, start, start + timedelta(days=365))
    # Woken up to MISFIRE_GRACE late, never the same lateness twice in a row.
    clock = [fire + (MISFIRE_GRACE * (i % 7)) / 6 for i, fire in enumerate(expected)]
    assert run_scheduler(schedule, start, clock) == expected
    assert len(expected) == 365 * 4  # 00, 06, 12 and 18 o'clock are never skipped or repeated


# Misfires after an outage -------------------------------------------------------------------

ELEVEN = datetime(2025, 6, 2, 11, tzinfo=UTC)


@pytest.mark.parametrize(
    ("policy", "fired", "missed"),
    [
        (MisfirePolicy.SKIP, [], [11, 12, 13]),
        (MisfirePolicy.RUN_LATEST, [13], [11, 12]),
        (MisfirePolicy.RUN_ALL, [11, 12, 13], []),
    ],
)
def test_an_hourly_trigger_after_three_hours_down(
    policy: MisfirePolicy, fired: list[int], missed: list[int]
) -> None:
    schedule = Schedule("0 * * * *", misfire_policy=policy).validate()
    result = catch_up(schedule, ELEVEN, ELEVEN + timedelta(hours=2, minutes=30))
    assert [fire.hour for fire in result.due] == fired
    assert result.missed == len(missed)
    assert result.first_missed == (ELEVEN.replace(hour=missed[0]) if missed else None)
    assert result.last_missed == (ELEVEN.replace(hour=missed[-1]) if missed else None)
    assert result.next_fire_time == ELEVEN.replace(hour=14)


@pytest.mark.parametrize("policy", list(MisfirePolicy))
def test_an_occurrence_within_the_grace_fires_whatever_the_policy(policy: MisfirePolicy) -> None:
    schedule = Schedule("0 * * * *", misfire_policy=policy).validate()
    assert catch_up(schedule, ELEVEN, ELEVEN + MISFIRE_GRACE) == CatchUp(
        (ELEVEN,), 0, None, None, ELEVEN + HOUR
    )
    late = catch_up(schedule, ELEVEN, ELEVEN + MISFIRE_GRACE + timedelta(seconds=1))
    assert late.due == (() if policy is MisfirePolicy.SKIP else (ELEVEN,))


def test_nothing_is_due_before_the_next_fire_time() -> None:
    schedule = Schedule("0 * * * *").validate()
    assert catch_up(schedule, ELEVEN, ELEVEN - timedelta(seconds=1)) == CatchUp(
        (), 0, None, None, ELEVEN
    )


def test_nine_days_down_fire_at_most_the_cap_all_inside_the_window() -> None:
    schedule = Schedule(
        "0 * * * *",
        misfire_policy=MisfirePolicy.RUN_ALL,
        catchup_window=timedelta(days=7),
        max_catchup_runs=100,
    ).validate()
    now = ELEVEN + timedelta(days=9, minutes=30)
    result = catch_up(schedule, ELEVEN, now)
    assert len(result.due) == 100
    assert all(now - timedelta(days=7) < fire <= now for fire in result.due)
    assert list(result.due) == [now.replace(minute=0) - HOUR * k for k in range(99, -1, -1)]
    assert result.missed == 9 * 24 + 1 - 100
    assert result.first_missed == ELEVEN
    assert result.last_missed == result.due[0] - HOUR


def test_run_all_leaves_out_what_is_older_than_the_window() -> None:
    schedule = Schedule("0 * * * *", misfire_policy=MisfirePolicy.RUN_ALL, max_catchup_runs=100)
    now = ELEVEN + timedelta(days=3, minutes=30)
    result = catch_up(schedule.validate(), ELEVEN, now)
    assert len(result.due) == 24
    assert result.due[0] == now.replace(minute=0) - 23 * HOUR
    assert result.missed == 3 * 24 + 1 - 24


def test_run_latest_fires_once_after_a_month_down_and_counts_the_rest() -> None:
    schedule = Schedule("30 2 * * *", BERLIN).validate()
    first = datetime(2025, 3, 1, 1, 30, tzinfo=UTC)
    result = catch_up(schedule, first, datetime(2025, 4, 1, 12, tzinfo=UTC))
    assert result.due == (datetime(2025, 4, 1, 0, 30, tzinfo=UTC),)  # 02:30 summer time
    assert result.missed == 31
    assert result.last_missed == datetime(2025, 3, 31, 0, 30, tzinfo=UTC)


def test_an_outage_over_the_fall_back_night_catches_up_its_25_hours() -> None:
    schedule = Schedule(
        "0 * * * *", BERLIN, MisfirePolicy.RUN_ALL, timedelta(days=2), max_catchup_runs=100
    ).validate()
    down = local_midnight(date(2025, 10, 26), ZoneInfo(BERLIN)).astimezone(UTC)
    back = local_midnight(date(2025, 10, 27), ZoneInfo(BERLIN)).astimezone(UTC)
    assert back - down == 25 * HOUR
    result = catch_up(schedule, down, back)
    assert len(result.due) == 26  # both midnights and the 24 hours between, 02:00 twice
    assert result.due == tuple(previewed(schedule, down - timedelta(seconds=1), back))
    assert result.missed == 0


@pytest.mark.parametrize("policy", list(MisfirePolicy))
def test_a_per_second_trigger_down_for_a_week_is_bounded(policy: MisfirePolicy) -> None:
    schedule = Schedule("* * * * * *", misfire_policy=policy).validate()
    now = ELEVEN + timedelta(days=7)
    result = catch_up(schedule, ELEVEN, now)
    # The last minute is on time and fires whatever the policy; the week before is missed,
    # counted up to the limit.
    assert result.due == tuple(now - timedelta(seconds=s) for s in range(60, -1, -1))
    assert result.missed == MAX_COUNTED_MISSED
    assert result.first_missed == ELEVEN
    assert result.last_missed == now - timedelta(seconds=61)
    assert result.next_fire_time == now + timedelta(seconds=1)


def test_naive_instants_are_a_programming_error() -> None:
    schedule = Schedule("0 * * * *").validate()
    naive = datetime(2025, 1, 1)
    with pytest.raises(ValueError, match="naive"):
        schedule.next_after(naive)
    with pytest.raises(ValueError, match="naive"):
        catch_up(schedule, naive, ELEVEN)
    with pytest.raises(ValueError, match="naive"):
        catch_up(schedule, ELEVEN, naive)


# Validation ---------------------------------------------------------------------------------


def violations(schedule: Schedule, field: str = "trigger.schedule") -> dict[str, str]:
    with pytest.raises(InvalidArgument) as raised:
        schedule.validate(field)
    return {v.field: v.description for v in raised.value.violations}


def test_every_bad_field_is_reported_on_its_path() -> None:
    bad = Schedule(
        "61 * * * *",
        "Mars/Olympus_Mons",
        catchup_window=timedelta(days=8),
        max_catchup_runs=0,
    )
    assert violations(bad, "triggers[2].schedule") == {
        "triggers[2].schedule.cron": "the minute field is not valid",
        "triggers[2].schedule.time_zone": "no time zone is named Mars/Olympus_Mons",
        "triggers[2].schedule.catchup_window": "must be more than 0 and at most 7 days",
        "triggers[2].schedule.max_catchup_runs": "must be between 1 and 100",
    }


@pytest.mark.parametrize(
    ("cron", "problem"),
    [
        ("", "is required"),
        (" \t\n", "is required"),
        ("0 " * (MAX_CRON_LENGTH // 2) + "*", "must be at most 256 characters"),
        ("* * *", "needs 5 fields"),
        ("0 0 0 * * * *", "needs 5 fields"),
        ("0 25 * * *", "the hour field is not valid"),
        ("0 0 * * MON#6", "the day-of-week field is not valid"),
        ("0 0 30 2 *", "names no day the months have"),  # 30 February never comes
        ("0 0 31 4,6,9,11 *", "names no day the months have"),
        ("60 * * * * *", "the second field is not valid"),
    ],
)
def test_bad_expressions(cron: str, problem: str) -> None:
    assert problem in violations(Schedule(cron))["trigger.schedule.cron"]


@pytest.mark.parametrize(
    "zone",
    [
        "localtime",
        "posixrules",
        "posix/Europe/Berlin",
        "right/UTC",
        "/etc/localtime",
        "../../etc/passwd",
        "Europe/../Europe/Berlin",
        "europe/berlin",
        "Europe/Berlin ",
        "America",
        "x" * 65,
    ],
)
def test_only_iana_zone_names(zone: str) -> None:
    assert list(violations(Schedule("0 9 * * *", zone))) == ["trigger.schedule.time_zone"]


@pytest.mark.parametrize(
    ("window", "runs", "fields"),
    [
        (timedelta(0), 1, ["catchup_window"]),
        (timedelta(seconds=-1), 1, ["catchup_window"]),
        (timedelta(days=7, microseconds=1), 1, ["catchup_window"]),
        (timedelta(days=7), 101, ["max_catchup_runs"]),
        (timedelta(seconds=1), -1, ["max_catchup_runs"]),
    ],
)
def test_catch_up_bounds(window: timedelta, runs: int, fields: list[str]) -> None:
    schedule = Schedule("0 9 * * *", catchup_window=window, max_catchup_runs=runs)
    assert list(violations(schedule, "s")) == [f"s.{field}" for field in fields]
    Schedule("0 9 * * *", catchup_window=timedelta(days=7), max_catchup_runs=100).validate()


def test_a_valid_schedule_comes_back_with_its_whitespace_collapsed() -> None:
    schedule = Schedule("  30\t2 *  * mon-fri ", "Asia/Kolkata").validate()
    assert schedule == Schedule("30 2 * * mon-fri", "Asia/Kolkata")
    assert schedule.next_after(datetime(2025, 6, 6, 21, tzinfo=UTC)) == datetime(
        2025,
        6,
        8,
        21,
        tzinfo=UTC,  # Monday 02:30 in India is Sunday 21:00 UTC
    )


def test_six_fields_have_the_seconds_first() -> None:
    schedule = Schedule("30 0 12 * * *").validate()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    assert schedule.preview(start, 2) == [
        datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC),
        datetime(2025, 1, 2, 12, 0, 30, tzinfo=UTC),
    ]
    every_ten = Schedule("*/10 * * * * *").validate().preview(start, 3)
    assert [fire.second for fire in every_ten] == [10, 20, 30]


def test_an_empty_zone_means_utc() -> None:
    schedule = Schedule("0 9 * * *").validate()
    assert schedule.zone == ZoneInfo("UTC")
    # Midnight in Berlin is 22:00 UTC the day before; 09:00 is UTC's 09:00.
    assert schedule.next_after(datetime(2025, 7, 1, tzinfo=ZoneInfo(BERLIN))) == datetime(
        2025, 7, 1, 9, tzinfo=UTC
    )


def test_preview_count_is_bounded() -> None:
    schedule = Schedule("0 9 * * *").validate()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    assert len(schedule.preview(start, MAX_PREVIEW)) == MAX_PREVIEW
    for count in (0, MAX_PREVIEW + 1):
        with pytest.raises(InvalidArgument) as raised:
            schedule.preview(start, count)
        assert [v.field for v in raised.value.violations] == ["count"]


def test_explain_reads_the_expression() -> None:
    assert Schedule("30 2 * * *").explain() == "At 02:30 every day"
    assert Schedule("*/10 * * * * *").explain() == "Every 10th second of every minute"
    assert Schedule("0 0 L * *").explain()


def test_catch_up_is_the_policy_applied_to_every_due_occurrence() -> None:
    """Against the rules spelled out over the whole list of due occurrences, for random
    schedules, zones, policies and outages around the DST transitions."""
    rng = random.Random(7)  # noqa: S311  (reproducible draws; nothing secret)
    crons = ["0 * * * *", "*/7 * * * *", "30 2 * * *", "15,45 1-2 * * *", "*/20 2 * * *"]
    crons += ["0 */2 * * *", "*/15 * * * * *", "0 30 2 * * *", "* * * * *", "0 0 * * 1"]
    nights = [datetime(2025, 3, 8, 20), datetime(2025, 10, 25, 20), datetime(2025, 4, 5, 10)]
    nights += [datetime(2025, 10, 4, 10), datetime(2025, 11, 1, 20)]
    for _ in range(300):
        schedule = Schedule(
            rng.choice(crons),
            rng.choice(["", NEW_YORK, BERLIN, LORD_HOWE]),
            rng.choice(list(MisfirePolicy)),
            timedelta(seconds=rng.choice([1, 30, 90, 3600, 86400, 3 * 86400])),
            rng.choice([1, 2, 5, 100]),
        ).validate()
        stored = schedule.next_after(
            rng.choice(nights).replace(tzinfo=UTC) + timedelta(seconds=rng.randrange(86400))
        )
        assert stored is not None
        late = rng.choice([0, 1, 59, 60, 61, 600, 3 * 3600, 86400, 2 * 86400 + 17])
        if schedule.cron in ("*/15 * * * * *", "* * * * *", "*/7 * * * *"):
            late = min(late, 3 * 3600)  # keeps the list of due occurrences short
        now = stored + timedelta(seconds=late + rng.choice([0, 0.5]))

        due = fire_times(schedule, stored, now)
        due.insert(0, stored)
        on_time = [fire for fire in due if now - fire <= MISFIRE_GRACE]
        if schedule.misfire_policy is MisfirePolicy.SKIP:
            fired = on_time
        elif schedule.misfire_policy is MisfirePolicy.RUN_LATEST:
            fired = on_time or due[-1:]
        else:
            young = [fire for fire in due if now - fire < schedule.catchup_window]
            eligible = sorted(set(young) | set(on_time))
            fired = eligible[-max(schedule.max_catchup_runs, len(on_time)) :]
        missed = [fire for fire in due if fire not in fired]
        assert catch_up(schedule, stored, now) == CatchUp(
            tuple(fired),
            len(missed),
            missed[0] if missed else None,
            missed[-1] if missed else None,
            schedule.next_after(now),
        ), (schedule, stored, now)
