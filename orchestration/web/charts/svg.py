"""What the dashboard's charts share: escaping data into SVG text (with the characters
XML forbids replaced), durations, days and tick labels for people, tick steps, the
``<svg>`` element itself, legends, y and x axes, the failed and partial marks, and the
choice of the :data:`MAX_BARS` newest documents that the runs and history charts draw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from markupsafe import Markup, escape

from orchestration.store.statuses import JobStatus, RunStatus

__all__ = ["JOB_STATUSES", "MAX_BARS", "RUN_STATUSES", "format_duration"]

MAX_BARS = 30

RUN_STATUSES: frozenset[str] = frozenset(RunStatus)
JOB_STATUSES: frozenset[str] = frozenset(JobStatus)

_SVG_NS = "http://www.w3.org/2000/svg"
_FAR_PAST = datetime.min.replace(tzinfo=UTC)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Seconds between time ticks: the first that gives few enough ticks is used.
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
# Characters XML 1.0 does not allow (control characters, lone surrogates): an error
# text with an ANSI escape would otherwise make the whole SVG ill-formed.
_NOT_XML = dict.fromkeys(
    [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0xD800, 0xE000), 0xFFFE, 0xFFFF], "\ufffd"
)
# Rough width of a character of the 11px chart font, in viewBox units.
_CHAR_W = 6.2


# --- text ---------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """A duration for people: ``0.4s``, ``12s``, ``3 min 05 s``, ``1 h 02 min``; ``—`` if unknown."""
    if seconds is None or math.isnan(seconds):
        return "—"
    seconds = max(seconds, 0.0)
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _text(value: object) -> Markup:
    """Data as SVG/HTML text: escaped, with the characters XML forbids replaced."""
    return escape(str(value).translate(_NOT_XML))


def _first_line(text: str | None, limit: int = 160) -> str:
    line = (text or "").strip().split("\n", 1)[0].strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _href(kind: str, ident: object) -> Markup:
    return _text(f"/{kind}/{quote(str(ident), safe='')}")


def _status(value: object, known: frozenset[str]) -> str:
    """The status for a class name: one of ``known`` or ``unknown`` (never data as-is)."""
    return value if isinstance(value, str) and value in known else "unknown"


def _n(value: float) -> str:
    return f"{value:.1f}"


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "—"


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


# --- times --------------------------------------------------------------------------


def _parse(value: str | datetime | None) -> datetime | None:
    """An ISO 8601 time as an aware datetime; naive times are taken as UTC."""
    if value is None or value == "":
        return None
    return _aware(value if isinstance(value, datetime) else datetime.fromisoformat(value))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _day(moment: datetime | None) -> str:
    if moment is None:
        return "?"
    moment = moment.astimezone(UTC)
    return f"{_MONTHS[moment.month - 1]} {moment.day}"


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def _time_step(span: float, max_ticks: int) -> float:
    for step in _TIME_STEPS:
        if span / step <= max_ticks:
            return step
    return 86400 * math.ceil(span / 86400 / max_ticks)


def _time_label(seconds: float) -> str:
    """A tick label: ``30s``, ``5 min``, ``1 h 30 min`` (ticks fall on whole steps)."""
    whole = round(abs(seconds))
    sign = "−" if seconds < 0 else ""
    if whole < 60:
        return f"{sign}{whole}s"
    if whole < 3600:
        minutes, secs = divmod(whole, 60)
        return f"{sign}{minutes} min" + (f" {secs:02d} s" if secs else "")
    hours, rest = divmod(whole, 3600)
    return f"{sign}{hours} h" + (f" {rest // 60:02d} min" if rest // 60 else "")


def _count_step(top: float, max_ticks: int) -> int:
    magnitude = 10 ** max(0, math.floor(math.log10(max(top, 1))) - 1)
    while True:
        for factor in (1, 2, 5):
            if top / (factor * magnitude) <= max_ticks:
                return factor * magnitude
        magnitude *= 10


def _frange(start: float, stop: float, step: float) -> list[float]:
    """``start``, ``start + step``, ... up to ``stop`` included (within rounding)."""
    count = math.floor((stop - start) / step + 1e-9)
    return [start + k * step for k in range(count + 1)]


# --- SVG pieces ---------------------------------------------------------------------


def _svg(kind: str, width: float, height: float, label: str, parts: Iterable[str]) -> Markup:
    head = (
        f'<svg xmlns="{_SVG_NS}" class="chart {kind}" viewBox="0 0 {_n(width)} {_n(height)}" '
        f'aria-label="{_text(label)}">'
    )
    return Markup(head + "".join(parts) + "</svg>")


def _empty(message: str) -> Markup:
    return Markup(f'<p class="chart-empty">{_text(message)}</p>')


def _mark(status: str, cx: float, cy: float) -> str:
    """The shape that flags a failed (a cross) or partial (a triangle) bar, so failures
    stand out without relying on colour."""
    if status == "failed":
        d = f"M{_n(cx - 4)} {_n(cy - 4)}L{_n(cx + 4)} {_n(cy + 4)}M{_n(cx + 4)} {_n(cy - 4)}L{_n(cx - 4)} {_n(cy + 4)}"
        return f'<path class="fail-mark mark-failed" d="{d}"/>'
    if status == "partial":
        d = f"M{_n(cx)} {_n(cy - 4.5)}L{_n(cx + 5)} {_n(cy + 4)}L{_n(cx - 5)} {_n(cy + 4)}Z"
        return f'<path class="fail-mark mark-partial" d="{d}"/>'
    return ""


def _legend(items: Sequence[tuple[str, str, str]], x: float, y: float) -> str:
    """A row of keys: (swatch class or "", mark status or "", label) each."""
    parts = ['<g class="legend">']
    for swatch, mark, label in items:
        if swatch:
            parts.append(f'<rect class="legend-swatch {swatch}" x="{_n(x)}" y="{_n(y - 9)}" width="10" height="10"/>')
            x += 14
        if mark:
            parts.append(_mark(mark, x + 5, y - 4))
            x += 14
        parts.append(f'<text class="legend-label" x="{_n(x)}" y="{_n(y)}">{_text(label)}</text>')
        x += len(label) * _CHAR_W + 14
    parts.append("</g>")
    return "".join(parts)


def _y_axis(ticks: Iterable[tuple[float, str]], left: float, right: float) -> str:
    """Horizontal gridlines with their labels left of the plot, at (y, label) each."""
    parts = ['<g class="axis y-axis">']
    for y, label in ticks:
        parts.append(f'<line class="grid" x1="{_n(left)}" y1="{_n(y)}" x2="{_n(right)}" y2="{_n(y)}"/>')
        parts.append(
            f'<text class="axis-label y-label" x="{_n(left - 6)}" y="{_n(y)}" dy="0.35em">{_text(label)}</text>'
        )
    parts.append("</g>")
    return "".join(parts)


def _x_labels(labels: Iterable[tuple[float, str]], y: float) -> str:
    parts = ['<g class="axis x-axis">']
    for x, label in labels:
        parts.append(f'<text class="axis-label x-label" x="{_n(x)}" y="{_n(y)}">{_text(label)}</text>')
    parts.append("</g>")
    return "".join(parts)


def _baseline(left: float, right: float, y: float) -> str:
    return f'<line class="axis-line" x1="{_n(left)}" y1="{_n(y)}" x2="{_n(right)}" y2="{_n(y)}"/>'


def _label_every(slot: float, label_chars: int) -> int:
    """Every how many bars an x label fits without overlapping its neighbours."""
    return max(1, math.ceil((label_chars * _CHAR_W + 8) / slot))


def _newest(documents: Sequence[Mapping[str, Any]], *time_keys: str) -> list[tuple[datetime | None, Mapping[str, Any]]]:
    """The :data:`MAX_BARS` first documents (the input is newest first), oldest first,
    each with its time (the first of ``time_keys`` that is set)."""
    dated = []
    for doc in documents[:MAX_BARS]:
        moment = None
        for key in time_keys:
            moment = _parse(doc.get(key))
            if moment is not None:
                break
        dated.append((moment, doc))
    dated.reverse()
    # Sorted (stably) as well, in case the input was not strictly newest first.
    dated.sort(key=lambda pair: pair[0] or _FAR_PAST)
    return dated
