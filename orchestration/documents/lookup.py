"""Finding the row a command or a page names: a run or job by full id or unique id
prefix, a project (:func:`find_project`) also by its unique name. A miss or an
ambiguous name raises :class:`LookupFailed` with one line that says what to give."""

from __future__ import annotations

import difflib
import re
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import String, cast, func, select
from sqlalchemy.orm import Session

from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project

# The shortest id prefix taken, and what an id prefix can look like: hex digits and
# dashes only (anything else is not an id, and never reaches a LIKE pattern).
MIN_PREFIX = 4
ID_LENGTH = 36
_ID_PREFIX = re.compile(r"[0-9a-f-]+")
# How many similar names a miss suggests, and how many ids an ambiguous name lists.
SUGGESTIONS = 3
LISTED_IDS = 5


class LookupFailed(LookupError):
    """Nothing, or more than one row, matches what was given."""


class NotFound(LookupFailed):
    """Nothing matches."""


class Ambiguous(LookupFailed):
    """More than one row matches, or too little was given to tell."""


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
        if len(prefix) < MIN_PREFIX:
            raise Ambiguous(f"{what} {prefix!r}: give at least {MIN_PREFIX} characters of the id")
        is_prefix = len(prefix) <= ID_LENGTH and _ID_PREFIX.fullmatch(prefix)
        matches = _by_prefix(session, model, prefix, limit=4) if is_prefix else []
    if not matches:
        raise NotFound(f"no {what} with id {prefix!r}")
    if len(matches) > 1:
        shown = ", ".join(str(row.id) for row in matches[:3]) + (", …" if len(matches) > 3 else "")
        raise Ambiguous(f"{what} id prefix {prefix!r} is ambiguous: {shown}; give more characters")
    return matches[0]


def _by_prefix(session: Session, model: Any, prefix: str, limit: int = 2) -> Sequence[Any]:
    return session.scalars(
        select(model).where(func.lower(cast(model.id, String)).like(f"{prefix}%")).order_by(model.id).limit(limit)
    ).all()


def find_project(text: str) -> Project:
    """A project by full id, unique id prefix, or unique name: the exact name first,
    then a case-insensitive match. A miss names the closest names; an ambiguous name
    lists the ids to choose from."""
    given = text.strip()
    if not given:
        raise NotFound("no project given: name one by its id, a unique id prefix or its name")
    with db.session_scope() as session:
        try:
            project = session.get(Project, uuid.UUID(given))
        except ValueError:
            pass
        else:
            if project is None:
                raise NotFound(f"no project with id {given!r}")
            return project
        by_name = session.scalars(select(Project).where(Project.name == given).order_by(Project.id)).all()
        if not by_name:
            by_name = session.scalars(
                select(Project).where(func.lower(Project.name) == given.lower()).order_by(Project.id)
            ).all()
        prefix = given.lower()
        by_id: Sequence[Project] = []
        if MIN_PREFIX <= len(prefix) <= ID_LENGTH and _ID_PREFIX.fullmatch(prefix):
            by_id = _by_prefix(session, Project, prefix)
        found = {p.id: p for p in [*by_name, *by_id]}
        if len(found) == 1:
            return next(iter(found.values()))
        if not found:
            names = session.scalars(select(Project.name)).all()
    if not found:
        raise NotFound(_miss(given, names))
    if by_name and not by_id:
        raise Ambiguous(f"{len(by_name)} projects are named {given!r}; give one of their ids: {_ids(by_name)}")
    if by_id and not by_name:
        raise Ambiguous(f"project id prefix {prefix!r} is ambiguous: {_ids(by_id)}; give more characters")
    raise Ambiguous(f"{given!r} names a project and starts another's id; give the full id: {_ids(found.values())}")


def _miss(given: str, names: Sequence[str]) -> str:
    """The miss message: "no project named X", with the closest names (ignoring case)."""
    by_lower = {name.lower(): name for name in names}
    close = difflib.get_close_matches(given.lower(), list(by_lower), n=SUGGESTIONS)
    hint = f"; did you mean: {', '.join(by_lower[c] for c in close)}?" if close else ""
    return f"no project named {given!r}{hint}"


def _ids(projects: Any) -> str:
    ids = [str(p.id) for p in projects]
    return ", ".join(ids[:LISTED_IDS]) + (f" and {len(ids) - LISTED_IDS} more" if len(ids) > LISTED_IDS else "")
