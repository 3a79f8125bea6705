"""Whether a project may be consolidated: it exists, and its consolidation is enabled
(unless forced)."""

from __future__ import annotations

import uuid
from typing import Protocol, TypeVar

from sqlalchemy.orm import Session

from orchestration.store.models import Project


class ProjectGone(LookupError):
    """The project was deleted."""


class ProjectDisabled(RuntimeError):
    """The project has consolidation disabled."""


class _Switchable(Protocol):
    consolidation_enabled: bool


P = TypeVar("P", bound=_Switchable)


def check_project(project: P | None, project_id: uuid.UUID, force: bool = False) -> P:
    """``project`` (a model or a plain row) if it exists and (unless ``force``) has
    consolidation enabled."""
    if project is None:
        raise ProjectGone(f"project {project_id} does not exist")
    if not project.consolidation_enabled and not force:
        raise ProjectDisabled(f"project {project_id} has consolidation disabled")
    return project


def load_project(session: Session, project_id: uuid.UUID, force: bool = False) -> Project:
    """Read the project and :func:`check_project` it."""
    return check_project(session.get(Project, project_id), project_id, force)
