"""The nightly schedule: which cron slot a beat tick belongs to.

Beat fires ``consolidation.run_scheduled`` on a Celery crontab built from
``ORCHESTRATION_SCHEDULE`` in ``ORCHESTRATION_TIMEZONE``. The task may start late
(busy worker, broker hiccup), so it names its run by the *slot*: the latest cron
time at or before now. Both beat and this module read the cron fields with Celery's
own parser, so they agree on what the fields mean.

Wall-clock times that do not exist in the zone (the hour skipped when daylight saving
starts) are not slots; a time that occurs twice (when it ends) is a slot once, at its
first occurrence.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from celery.schedules import crontab

# A slot further back than this does not exist (e.g. "0 0 30 2 *" never fires).
MAX_LOOKBACK_DAYS = 366 * 8


def _exists(local: datetime) -> bool:
    """False for a wall time inside a daylight-saving gap."""
    roundtrip = local.astimezone(UTC).astimezone(local.tzinfo)
    return roundtrip.replace(tzinfo=None) == local.replace(tzinfo=None)


def _day_matches(cron: crontab, day: date) -> bool:
    cron_weekday = day.isoweekday() % 7  # cron: 0 = Sunday
    return day.month in cron.month_of_year and day.day in cron.day_of_month and cron_weekday in cron.day_of_week


def previous_slot(cron: crontab, now: datetime, tz: ZoneInfo) -> datetime:
    """The latest time matching ``cron`` in ``tz`` that is at or before ``now``, in UTC."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    local_now = now.astimezone(tz)
    times = sorted(((h, m) for h in cron.hour for m in cron.minute), reverse=True)
    for back in range(MAX_LOOKBACK_DAYS):
        day = local_now.date() - timedelta(days=back)
        if not _day_matches(cron, day):
            continue
        for hour, minute in times:
            candidate = datetime.combine(day, time(hour, minute), tzinfo=tz)
            if not _exists(candidate):
                continue
            slot = candidate.astimezone(UTC)
            if slot <= now:
                return slot
    raise ValueError("the schedule has no slot in the last eight years")


def parse_slot(value: str) -> datetime:
    """Parse an ISO 8601 slot; a naive value is taken as UTC. Raises ValueError."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).replace(second=0, microsecond=0)
