"""Consolidation options (SPEC §5): defaults, per-project overrides, validation.

A project's ``consolidation_options`` JSON overrides the defaults key by key. A bad
value raises :class:`InvalidOptions` naming the option, the value and what is allowed;
the job then fails at once instead of retrying, because a retry cannot fix it.

Every option has a type and a range (:data:`RANGES`): switches are JSON ``true`` or
``false`` (not ``"yes"``, not ``1``); whole numbers may be written ``3.0``, not
``2.5``. The bounds keep every value one the consolidation can compute with:
``archive_stale_days`` above 36,500 (100 years) would reach past the dates Python can
represent (``archive_stale_days: 100000000`` raised ``OverflowError`` mid-job).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from orchestration.consolidation.errors import DataError


class InvalidOptions(DataError):
    """A consolidation option has a wrong type or an out-of-range value: a
    :class:`DataError` (bad data, not retried) whose ``field`` is the option."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"consolidation_options.{field}: {problem}", field=field)


@dataclass(frozen=True)
class ConsolidationOptions:
    merge: bool = True
    archive: bool = True
    similarity_threshold: float = 0.90
    min_cluster_size: int = 2
    same_type_only: bool = True
    archive_stale_days: int = 90
    archive_min_reuse: int = 3
    value_guard: bool = True  # never cluster memories that state different values (values.py)
    full_pass_every_days: int | None = None  # a full pass at least this often (passes.py); unset: only when needed

    def __post_init__(self) -> None:
        """Every value checked (:class:`InvalidOptions`), however the options are made;
        whole numbers written as floats become ints."""
        for option in fields(self):
            value = _check(option.name, getattr(self, option.name), _KINDS[str(option.type)])
            object.__setattr__(self, option.name, value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Range:
    """The allowed values of a number option: ``low`` (excluded if ``low_open``) to ``high``."""

    low: float
    high: float
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high  # False for NaN

    def __str__(self) -> str:
        low, high = (f"{b:g}" if isinstance(b, float) else f"{b:,}" for b in (self.low, self.high))
        return f"in ({low}, {high}]" if self.low_open else f"from {low} to {high}"


RANGES: dict[str, Range] = {
    "similarity_threshold": Range(0.0, 1.0, low_open=True),  # cosine: (0, 1]
    "min_cluster_size": Range(2, 10_000),  # a cluster of one merges nothing
    "archive_stale_days": Range(1, 36_500),  # 100 years: the cutoff stays a representable date
    "archive_min_reuse": Range(0, 1_000_000_000),  # reused_count is a 32-bit integer column
    "full_pass_every_days": Range(1, 36_500),
}


_KINDS: dict[str, type] = {"bool": bool, "int": int, "float": float, "int | None": int}  # the fields' annotations
# Options that may be unset (JSON null, or left out).
OPTIONAL = {"full_pass_every_days"}


def _check(name: str, value: Any, kind: type) -> Any:
    if value is None and name in OPTIONAL:
        return None
    # bool is a subclass of int: reject True where a number is expected and vice versa.
    if kind is bool:
        if not isinstance(value, bool):
            raise InvalidOptions(name, f"must be true or false, got {value!r}")
        return value
    allowed = f"{RANGES[name]}{' or null' if name in OPTIONAL else ''}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOptions(name, f"must be a number {allowed}, got {value!r}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise InvalidOptions(name, f"must be a whole number {allowed}, got {value!r}")
    if value not in RANGES[name]:
        raise InvalidOptions(name, f"must be {allowed}, got {value!r}")
    return int(value) if kind is int else float(value)


def resolve_options(overrides: Mapping[str, Any] | None) -> ConsolidationOptions:
    """Defaults updated with ``overrides``; raises :class:`InvalidOptions`."""
    if overrides is None:
        return ConsolidationOptions()
    if not isinstance(overrides, Mapping):
        raise InvalidOptions("(root)", f"must be a JSON object, got {type(overrides).__name__}")
    known = [f.name for f in fields(ConsolidationOptions)]
    unknown = sorted(set(overrides) - set(known), key=str)
    if unknown:
        raise InvalidOptions(str(unknown[0]), f"unknown option (known: {', '.join(known)})")
    return ConsolidationOptions(**overrides)
