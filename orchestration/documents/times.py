"""Times in documents: ISO 8601 strings back to aware datetimes, and spans in seconds."""

from __future__ import annotations

from datetime import UTC, datetime


def parse(value: str | datetime | None) -> datetime | None:
    """A document's time (an ISO 8601 string, or already a datetime) as a datetime."""
    if isinstance(value, datetime) or value is None:
        return value
    return datetime.fromisoformat(value)


def seconds(start: str | datetime | None, end: str | datetime | None) -> float | None:
    """The ``duration_s`` of a document: seconds from ``start`` to ``end``, or ``None``."""
    begun, ended = parse(start), parse(end)
    return None if begun is None or ended is None else round((ended - begun).total_seconds(), 3)


def parse_since(text: str) -> datetime:
    """An ISO 8601 date or date-time as aware UTC (a naive one is UTC); a ``ValueError``
    naming an example otherwise."""
    try:
        moment = datetime.fromisoformat(text.strip())
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: a time that is out of range in UTC
        raise ValueError(f"{text!r} is not an ISO 8601 date or date-time, e.g. 2026-11-27") from None
