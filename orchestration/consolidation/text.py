"""How the sources of a merge become one memory: every unique sentence of their
text, and the union of their tags and file links, in order."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

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
    """Every item of ``lists`` once, first occurrence order."""
    seen: dict[str, None] = {}
    for items in lists:
        for item in items or ():
            seen.setdefault(item, None)
    return list(seen)
