"""The nightly schedule: which cron slot a beat tick belongs to.

Beat fires ``consolidation.run_scheduled`` on a Celery crontab built from
``ORCHESTRATION_SCHEDULE`` in ``ORCHESTRATION_TIMEZONE``. The task may start late
(busy worker, broker hiccup), so it names its run by the *slot*: the latest cron
time at or before now. Both beat and this module read the cron fields with Celery's
own parser, so they agree on what the fields mean.

Wall-clock times that do not exist in the zone (the hour skipped when daylight saving
starts) are not slots; a time that occurs twice (when it ends) is a slot once, at its
first occurrence.

``check_slot`` decides whether a slot given by hand (``run-now --slot``) may run: never
one in the future, and one the schedule does not produce only as a backfill.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import crontab

from orchestration.settings import Settings, parse_cron

# A slot further back than this does not exist (e.g. "0 0 30 2 *" never fires).
MAX_LOOKBACK_DAYS = 366 * 8


def _exists(local: datetime) -> bool:
    """False for a wall time inside a daylight-saving gap."""
    roundtrip = local.astimezone(UTC).astimezone(local.tzinfo)
    return roundtrip.replace(tzinfo=None) == local.replace(tzinfo=None)


def _day_matches(cron: crontab, day: date) -> bool:
    cron_weekday = day.isoweekday() % 7  # cron: 0 = Sunday
    return day.month in cron.month_of_year and day.day in cron.day_of_month and cron_weekday in cron.day_of_week


def _slots(cron: crontab, tz: ZoneInfo, days: Iterable[date], latest_first: bool) -> Iterator[datetime]:
    """The times matching ``cron`` on ``days`` (in that order) that exist in ``tz``, in UTC."""
    times = sorted(((h, m) for h in cron.hour for m in cron.minute), reverse=latest_first)
    for day in days:
        if not _day_matches(cron, day):
            continue
        for hour, minute in times:
            candidate = datetime.combine(day, time(hour, minute), tzinfo=tz)
            if _exists(candidate):
                yield candidate.astimezone(UTC)


def previous_slot(cron: crontab, now: datetime, tz: ZoneInfo) -> datetime:
    """The latest time matching ``cron`` in ``tz`` that is at or before ``now``, in UTC."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    today = now.astimezone(tz).date()
    days = (today - timedelta(days=back) for back in range(MAX_LOOKBACK_DAYS))
    for slot in _slots(cron, tz, days, latest_first=True):
        if slot <= now:
            return slot
    raise ValueError("the schedule has no slot in the last eight years")


def next_slot(cron: crontab, after: datetime, tz: ZoneInfo) -> datetime:
    """The earliest time matching ``cron`` in ``tz`` that is strictly after ``after``, in UTC."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    # From the day before: where a zone turns its clocks back at midnight, a later
    # instant can have an earlier local date.
    first_day = after.astimezone(tz).date() - timedelta(days=1)
    days = (first_day + timedelta(days=ahead) for ahead in range(MAX_LOOKBACK_DAYS))
    for slot in _slots(cron, tz, days, latest_first=False):
        if slot > after:
            return slot
    raise ValueError("the schedule has no slot in the next eight years")


class SlotRefused(ValueError):
    """A slot that must not be run; the message is one line for the operator."""


def _shown(value: datetime, tz: ZoneInfo) -> str:
    """A slot as the operator reads (and can paste back): ISO 8601 in the schedule's zone."""
    return value.astimezone(tz).isoformat()


def check_slot(slot: datetime, cron: crontab, tz: ZoneInfo, now: datetime, *, backfill: bool) -> None:
    """Refuse (``SlotRefused``) a slot given by hand that must not run: one later than
    ``now`` always (its run would claim that night before beat gets there), one the
    schedule does not produce unless ``backfill`` (it would be a second scheduled run
    beside that night's). Pure: the CLI calls it before sending anything, the task
    ``consolidation.run_scheduled`` again when it receives the slot."""
    if slot.tzinfo is None or now.tzinfo is None:
        raise ValueError("slot and now must be timezone-aware")
    if slot > now:
        try:
            latest = f"the schedule's latest slot is {_shown(previous_slot(cron, now, tz), tz)}"
        except ValueError:
            latest = "the schedule has no slot before now"
        raise SlotRefused(f"slot {_shown(slot, tz)} is in the future; {latest}")
    if backfill:
        return
    try:
        before: datetime | None = previous_slot(cron, slot, tz)
    except ValueError:
        before = None
    if before == slot:
        return
    try:
        after: datetime | None = next_slot(cron, slot, tz)
    except ValueError:
        after = None
    nearest = [f"{_shown(s, tz)} ({where})" for s, where in ((before, "before"), (after, "after")) if s is not None]
    raise SlotRefused(
        f"slot {_shown(slot, tz)} is not on the schedule (in {tz}); "
        + {0: "the schedule has no slot near it", 1: "the nearest slot is ", 2: "the nearest slots are "}[len(nearest)]
        + " and ".join(nearest)
        + "; use --backfill to run it anyway"
    )


def parse_slot(value: str) -> datetime:
    """Parse an ISO 8601 slot; a naive value is taken as UTC. Raises ValueError."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).replace(second=0, microsecond=0)


@dataclass(frozen=True)
class ScheduleMismatch:
    """Beat's schedule (as its message carries it) and this worker's, when they differ."""

    beat: tuple[str, str]  # cron expression, time zone
    worker: tuple[str, str]

    def log_fields(self) -> dict[str, str]:
        return {
            "beat_schedule": self.beat[0],
            "beat_timezone": self.beat[1],
            "worker_schedule": self.worker[0],
            "worker_timezone": self.worker[1],
            "hint": "give beat and every worker the same ORCHESTRATION_SCHEDULE and ORCHESTRATION_TIMEZONE",
        }

    def note(self) -> dict[str, Any]:
        """The run summary's note (``health`` fails while the latest run has one)."""
        return {"schedule_mismatch": {"beat": " ".join(self.beat), "worker": " ".join(self.worker)}}


def scheduled_slot(
    settings: Settings,
    now: datetime,
    slot: str | None,
    *,
    backfill: bool = False,
    beat: tuple[str | None, str | None] = (None, None),
) -> tuple[datetime, ScheduleMismatch | None]:
    """The slot a ``run_scheduled`` message claims: the one it names (checked with
    :func:`check_slot`), else the latest of the schedule. The schedule is beat's, as its
    message carries it (beat is the clock), else this worker's; a difference is returned
    for the caller to report. Raises ValueError for a bad slot or schedule."""
    given = (beat[0] or settings.schedule, beat[1] or settings.timezone)
    try:
        cron, tz = parse_cron(given[0]), ZoneInfo(given[1])
    except ZoneInfoNotFoundError:
        raise ValueError(f"unknown time zone {given[1]!r} in the message") from None
    mine = (settings.schedule, settings.timezone)
    mismatch = ScheduleMismatch(given, mine) if given != mine else None
    if not slot:
        return previous_slot(cron, now, tz), mismatch
    slot_at = parse_slot(slot)
    check_slot(slot_at, cron, tz, now, backfill=backfill)
    return slot_at, mismatch
