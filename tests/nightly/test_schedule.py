from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab
from freezegun import freeze_time

from orchestration.nightly.schedule import parse_slot, previous_slot
from orchestration.settings import load_settings, parse_cron

UTC = UTC


def at(*args, tz=UTC):
    return datetime(*args, tzinfo=tz)


def test_slot_of_a_late_tick_is_the_scheduled_time():
    cron = parse_cron("0 2 * * *")
    assert previous_slot(cron, at(2026, 11, 27, 2, 0), ZoneInfo("UTC")) == at(2026, 11, 27, 2, 0)
    assert previous_slot(cron, at(2026, 11, 27, 2, 7, 31), ZoneInfo("UTC")) == at(2026, 11, 27, 2, 0)
    assert previous_slot(cron, at(2026, 11, 27, 1, 59), ZoneInfo("UTC")) == at(2026, 11, 26, 2, 0)


def test_weekday_and_month_fields():
    cron = parse_cron("30 3 * * 1")  # Mondays 03:30
    assert previous_slot(cron, at(2026, 11, 27, 12, 0), ZoneInfo("UTC")) == at(2026, 11, 23, 3, 30)
    cron = parse_cron("0 0 1 1 *")
    assert previous_slot(cron, at(2026, 11, 27), ZoneInfo("UTC")) == at(2026, 1, 1)


def test_slots_follow_the_zone_across_daylight_saving():
    ny = ZoneInfo("America/New_York")
    cron = parse_cron("0 2 * * *")
    # Before the switch (EST, UTC-5) 02:00 local is 07:00 UTC; after it (EDT, UTC-4), 06:00 UTC.
    assert previous_slot(cron, at(2026, 3, 7, 12), ny) == at(2026, 3, 7, 7)
    # 2026-03-08 02:00 does not exist in New York: that night has no slot.
    assert previous_slot(cron, at(2026, 3, 8, 12), ny) == at(2026, 3, 7, 7)
    assert previous_slot(cron, at(2026, 3, 9, 12), ny) == at(2026, 3, 9, 6)
    # Autumn: 01:30 happens twice on 2026-11-01; it is one slot, the first one (EDT).
    cron = parse_cron("30 1 * * *")
    assert previous_slot(cron, at(2026, 11, 1, 12), ny) == at(2026, 11, 1, 5, 30)


def test_naive_now_is_refused():
    with pytest.raises(ValueError):
        previous_slot(parse_cron("0 2 * * *"), datetime(2026, 1, 1), ZoneInfo("UTC"))


def test_parse_slot():
    assert parse_slot("2026-11-27T02:00:00+00:00") == at(2026, 11, 27, 2)
    assert parse_slot("2026-11-27T03:00:00+01:00") == at(2026, 11, 27, 2)
    assert parse_slot("2026-11-27 02:00") == at(2026, 11, 27, 2)
    with pytest.raises(ValueError):
        parse_slot("last tuesday")


def _due(schedule: crontab, last_run: datetime, now: datetime) -> bool:
    schedule.nowfun = lambda: now
    return schedule.is_due(last_run).is_due


def test_beat_entry_is_due_at_two_utc_and_not_before():
    schedule = load_settings({}).crontab
    last = at(2026, 11, 26, 2, 0)
    with freeze_time("2026-11-27 01:59:00"):
        assert not _due(schedule, last, at(2026, 11, 27, 1, 59))
    with freeze_time("2026-11-27 02:00:00"):
        assert _due(schedule, last, at(2026, 11, 27, 2, 0))


def test_custom_schedule_and_zone_with_daylight_saving():
    from celery import Celery

    settings = load_settings({"ORCHESTRATION_SCHEDULE": "0 2 * * *", "ORCHESTRATION_TIMEZONE": "America/New_York"})
    local = Celery(set_as_current=False)
    local.conf.timezone = settings.timezone
    schedule = crontab(hour=2, minute=0, app=local)
    last = at(2026, 3, 9, 6, 0)  # 02:00 EDT
    assert not _due(schedule, last, at(2026, 3, 10, 5, 59))
    assert _due(schedule, last, at(2026, 3, 10, 6, 0))
    # What beat fires at is what previous_slot calls the slot.
    assert previous_slot(settings.crontab, at(2026, 3, 10, 6, 3), settings.tz) == at(2026, 3, 10, 6, 0)
    assert previous_slot(settings.crontab, at(2026, 1, 10, 7, 3), settings.tz) == at(2026, 1, 10, 7, 0)
    assert timedelta(0) == at(2026, 3, 10, 6) - previous_slot(settings.crontab, at(2026, 3, 10, 6), settings.tz)
