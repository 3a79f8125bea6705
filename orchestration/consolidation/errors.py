"""Errors in a project's data: deterministic, so a job that meets one is not retried."""

from __future__ import annotations

import json
import uuid
from typing import Any

# How much of a bad value a message quotes.
QUOTED = 60


class DataError(ValueError):
    """A memory or a project's options hold a value that cannot be consolidated. The
    message names the memory (or the option) and the field; retrying cannot help.

    ``memory_id`` is the memory's id (``None`` for an option), ``field`` the column or
    the option's name."""

    def __init__(self, message: str, *, memory_id: uuid.UUID | None = None, field: str | None = None):
        super().__init__(message)
        self.memory_id = memory_id
        self.field = field

    @classmethod
    def of_memory(cls, memory_id: uuid.UUID, field: str, problem: str) -> DataError:
        """``memory <id> field <field>: <problem>``."""
        return cls(f"memory {memory_id} field {field}: {problem}", memory_id=memory_id, field=field)


def quote(value: Any) -> str:
    """``value`` as JSON, shortened to about :data:`QUOTED` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # a circular structure: cannot come from JSON, but say something
        text = repr(value)
    return text if len(text) <= QUOTED else text[: QUOTED - 1] + "…"


def kind(value: Any) -> str:
    """The JSON kind of ``value``, with an article: ``a string``, ``an object``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
