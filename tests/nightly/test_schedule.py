from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab
from freezegun import freeze_time

from orchestration.nightly.schedule import SlotRefused, check_slot, next_slot, parse_slot, previous_slot
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


def test_next_slot_is_the_first_slot_strictly_after():
    utc = ZoneInfo("UTC")
    cron = parse_cron("0 2 * * *")
    assert next_slot(cron, at(2026, 11, 27, 2, 0), utc) == at(2026, 11, 28, 2, 0)
    assert next_slot(cron, at(2026, 11, 27, 1, 59), utc) == at(2026, 11, 27, 2, 0)
    ny = ZoneInfo("America/New_York")
    # No 02:00 on 2026-03-08 in New York; the next slot after the 7th's is the 9th's (EDT).
    assert next_slot(cron, at(2026, 3, 7, 7), ny) == at(2026, 3, 9, 6)
    # 01:30 happens twice on 2026-11-01; after its first occurrence comes the next day's.
    assert next_slot(parse_cron("30 1 * * *"), at(2026, 11, 1, 5, 30), ny) == at(2026, 11, 2, 6, 30)


NOW = at(2026, 11, 27, 9, 0)


@pytest.mark.parametrize("backfill", [False, True])
def test_check_slot_accepts_past_slots_of_the_schedule(backfill):
    cron, utc = parse_cron("0 2 * * *"), ZoneInfo("UTC")
    for slot in (at(2026, 11, 27, 2), at(2026, 11, 20, 2), at(2025, 1, 1, 2)):
        check_slot(slot, cron, utc, NOW, backfill=backfill)
    check_slot(NOW, parse_cron("0 9 * * *"), utc, NOW, backfill=False)  # the slot of this very minute


@pytest.mark.parametrize("backfill", [False, True])
def test_check_slot_refuses_the_future_even_as_a_backfill(backfill):
    cron, utc = parse_cron("0 2 * * *"), ZoneInfo("UTC")
    for slot in (at(2026, 11, 28, 2), NOW + timedelta(minutes=1), at(2026, 11, 27, 9, 7)):
        with pytest.raises(SlotRefused) as refused:
            check_slot(slot, cron, utc, NOW, backfill=backfill)
        assert str(refused.value) == (
            f"slot {slot.isoformat()} is in the future; the schedule's latest slot is 2026-11-27T02:00:00+00:00"
        )


def test_check_slot_refuses_a_time_off_the_schedule_unless_backfill():
    cron, utc = parse_cron("0 2 * * *"), ZoneInfo("UTC")
    with pytest.raises(SlotRefused) as refused:
        check_slot(at(2026, 11, 27, 2, 7), cron, utc, NOW, backfill=False)
    assert str(refused.value) == (
        "slot 2026-11-27T02:07:00+00:00 is not on the schedule (in UTC); the nearest slots are "
        "2026-11-27T02:00:00+00:00 (before) and 2026-11-28T02:00:00+00:00 (after); use --backfill to run it anyway"
    )
    assert isinstance(refused.value, ValueError) and "\n" not in str(refused.value)
    check_slot(at(2026, 11, 27, 2, 7), cron, utc, NOW, backfill=True)
    with pytest.raises(SlotRefused, match="not on the schedule"):  # a Monday-only schedule, on a Tuesday
        check_slot(at(2026, 11, 24, 3, 30), parse_cron("30 3 * * 1"), utc, NOW, backfill=False)
    with pytest.raises(SlotRefused, match="not on the schedule"):  # seconds are not a slot either
        check_slot(at(2026, 11, 27, 2, 0, 30), cron, utc, NOW, backfill=False)


def test_check_slot_follows_the_zone_across_daylight_saving():
    ny = ZoneInfo("America/New_York")
    cron = parse_cron("0 2 * * *")
    now = at(2026, 11, 27, 12)
    check_slot(at(2026, 3, 7, 7), cron, ny, now, backfill=False)  # 02:00 EST
    check_slot(at(2026, 3, 9, 6), cron, ny, now, backfill=False)  # 02:00 EDT
    # 2026-03-08 02:00 does not exist in New York: read as EST it is 03:00 EDT, no slot.
    with pytest.raises(SlotRefused) as refused:
        check_slot(parse_slot("2026-03-08T02:00:00-05:00"), cron, ny, now, backfill=False)
    assert "slot 2026-03-08T03:00:00-04:00 is not on the schedule (in America/New_York)" in str(refused.value)
    assert "2026-03-07T02:00:00-05:00 (before) and 2026-03-09T02:00:00-04:00 (after)" in str(refused.value)
    # 01:30 on 2026-11-01 happens twice: its first occurrence (EDT) is the slot, the second is not.
    cron = parse_cron("30 1 * * *")
    check_slot(at(2026, 11, 1, 5, 30), cron, ny, now, backfill=False)
    with pytest.raises(SlotRefused, match="slot 2026-11-01T01:30:00-05:00 is not on the schedule"):
        check_slot(at(2026, 11, 1, 6, 30), cron, ny, now, backfill=False)
    check_slot(at(2026, 11, 1, 6, 30), cron, ny, now, backfill=True)
    # The future is judged by the instant, not the wall clock: 02:00 EST tonight is after 06:00 UTC.
    with pytest.raises(SlotRefused, match="the schedule's latest slot is 2026-11-26T02:00:00-05:00"):
        check_slot(at(2026, 11, 27, 7), parse_cron("0 2 * * *"), ny, at(2026, 11, 27, 6), backfill=True)


def test_check_slot_wants_aware_times():
    with pytest.raises(ValueError):
        check_slot(datetime(2026, 11, 27, 2), parse_cron("0 2 * * *"), ZoneInfo("UTC"), NOW, backfill=False)


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


def test_the_slot_of_a_message_uses_beats_schedule_and_names_a_difference():
    from orchestration.nightly.schedule import scheduled_slot
    from orchestration.settings import load_settings

    settings = load_settings({})  # 0 2 * * * UTC
    now = datetime(2026, 11, 27, 5, tzinfo=UTC)
    slot, mismatch = scheduled_slot(settings, now, None)
    assert slot == datetime(2026, 11, 27, 2, tzinfo=UTC) and mismatch is None
    slot, mismatch = scheduled_slot(settings, now, None, beat=("30 3 * * *", None))
    assert slot == datetime(2026, 11, 27, 3, 30, tzinfo=UTC)
    assert mismatch is not None and mismatch.note() == {
        "schedule_mismatch": {"beat": "30 3 * * * UTC", "worker": "0 2 * * * UTC"}
    }
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        scheduled_slot(settings, now, None, beat=(None, "Mars/Olympus"))
    with pytest.raises(ValueError, match="in the future"):
        scheduled_slot(settings, now, "2026-11-28T02:00:00+00:00")
