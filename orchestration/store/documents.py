"""Rows as JSON documents: every column keyed by its name, UUIDs and times as strings
(run summaries as notified and printed, ``--json`` output)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import inspect as sa_inspect

from orchestration.store.models import Base


def jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def row_dict(row: Base) -> dict[str, Any]:
    """Every column of a model instance, JSON-ready, keyed by column name, but those
    marked ``info={"internal": True}`` (bookkeeping for the next pass, not for people)."""
    return {
        c.key: jsonable(getattr(row, c.key))
        for c in sa_inspect(type(row)).column_attrs
        if not c.columns[0].info.get("internal")
    }
