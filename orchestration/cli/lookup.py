"""Finding the row a command names (``orchestration.documents.lookup``), a miss as the
command's one-line error (exit 1)."""

from __future__ import annotations

from typing import Any

from orchestration.cli.app import CliError
from orchestration.documents import lookup
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project


def find(model: type[ConsolidationRun] | type[ConsolidationJob] | type[Project], prefix: str, what: str) -> Any:
    """A row by full id or unique id prefix."""
    try:
        return lookup.find(model, prefix, what)
    except lookup.LookupFailed as exc:
        raise CliError(str(exc)) from None


def find_project(text: str) -> Project:
    """A project by full id, unique id prefix, or unique name."""
    try:
        return lookup.find_project(text)
    except lookup.LookupFailed as exc:
        raise CliError(str(exc)) from None
