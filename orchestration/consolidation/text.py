"""How the sources of a merge become one memory: every unique sentence of their
text, and the union of their tags and file links, in order."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from orchestration.consolidation.errors import DataError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _sentence_key(sentence: str) -> str:
    return " ".join(sentence.lower().split()).rstrip(".!?")


def merge_content(texts: Sequence[str]) -> str:
    """Every unique sentence of ``texts``, first occurrence order (representative first)."""
    seen: set[str] = set()
    kept: list[str] = []
    for text in texts:
        for sentence in sentences(text):
            key = _sentence_key(sentence)
            if key and key not in seen:
                seen.add(key)
                kept.append(sentence)
    return " ".join(kept)


def union(lists: Iterable[Sequence[str] | None]) -> list[str]:
    """Every item of ``lists`` once, first occurrence order (``None`` is an empty list).
    Raises :class:`DataError` for anything but lists of strings: a string is not a
    list of its characters (callers check their data first, see checks.py)."""
    seen: dict[str, None] = {}
    for items in lists:
        if items is not None and not isinstance(items, list | tuple):
            raise DataError(f"expected a list of strings, got {type(items).__name__} {items!r:.60}")
        for item in items or ():
            if not isinstance(item, str):
                raise DataError(f"expected a list of strings, got an item {item!r:.60}")
            seen.setdefault(item, None)
    return list(seen)
