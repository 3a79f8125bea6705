"""Finding the row a command names: by full id or unique id prefix."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import String, cast, func, select

from orchestration.cli.app import CliError
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project


def find(model: type[ConsolidationRun] | type[ConsolidationJob] | type[Project], prefix: str, what: str) -> Any:
    """A row by full id or unique id prefix."""
    prefix = prefix.strip().lower()
    with db.session_scope() as session:
        try:
            row = session.get(model, uuid.UUID(prefix))
        except ValueError:
            row = None
        if row is not None:
            return row
        if len(prefix) < 4:
            raise CliError(f"{what} {prefix!r}: give at least 4 characters of the id")
        matches: Sequence[Any] = session.scalars(
            select(model).where(func.lower(cast(model.id, String)).like(f"{prefix}%")).limit(2)
        ).all()
    if not matches:
        raise CliError(f"no {what} with id {prefix!r}")
    if len(matches) > 1:
        raise CliError(f"{what} id prefix {prefix!r} is ambiguous; give more characters")
    return matches[0]
