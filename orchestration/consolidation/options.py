"""Consolidation options (SPEC §5): defaults, per-project overrides, validation.

A project's ``consolidation_options`` JSON overrides the defaults key by key. A bad
value raises :class:`InvalidOptions` naming the field; the job then fails at once
instead of retrying, because a retry cannot fix it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


class InvalidOptions(ValueError):
    """A consolidation option has a wrong type or an out-of-range value."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"consolidation_options.{field}: {problem}")
        self.field = field


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(name: str, value: Any, kind: type) -> Any:
    # bool is a subclass of int: reject True where a number is expected and vice versa.
    if kind is bool:
        if not isinstance(value, bool):
            raise InvalidOptions(name, f"must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOptions(name, f"must be a number, got {value!r}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise InvalidOptions(name, f"must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def resolve_options(overrides: Mapping[str, Any] | None) -> ConsolidationOptions:
    """Defaults updated with ``overrides``; raises :class:`InvalidOptions`."""
    if overrides is None:
        return ConsolidationOptions()
    if not isinstance(overrides, Mapping):
        raise InvalidOptions("(root)", f"must be a JSON object, got {type(overrides).__name__}")
    known = {f.name: f for f in fields(ConsolidationOptions)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise InvalidOptions(unknown[0], f"unknown option (known: {', '.join(known)})")
    kinds = {"bool": bool, "int": int, "float": float}
    values = {name: _check(name, value, kinds[str(known[name].type)]) for name, value in overrides.items()}
    options = ConsolidationOptions(**values)
    if not 0.0 < options.similarity_threshold <= 1.0:
        raise InvalidOptions("similarity_threshold", f"must be in (0, 1], got {options.similarity_threshold}")
    if options.min_cluster_size < 2:
        raise InvalidOptions("min_cluster_size", f"must be at least 2, got {options.min_cluster_size}")
    if options.archive_stale_days < 1:
        raise InvalidOptions("archive_stale_days", f"must be at least 1, got {options.archive_stale_days}")
    if options.archive_min_reuse < 0:
        raise InvalidOptions("archive_min_reuse", f"must be at least 0, got {options.archive_min_reuse}")
    return options
