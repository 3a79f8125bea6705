"""The query parameters of the lists (``/runs``, ``/api/runs``, ``/api/jobs``): the
command line's filters (``runs list``, ``jobs list``) with the same names, checked
the same way. A bad value is a :class:`BadRequest` naming the parameter."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from enum import StrEnum

from orchestration.documents import lookup, times
from orchestration.documents.jobs import JobFilter
from orchestration.documents.runs import RunFilter
from orchestration.store.models import ConsolidationRun
from orchestration.store.statuses import JobStatus, RunStatus, TriggerType

DEFAULT_LIMIT = 20
MAX_LIMIT = 10_000


class BadRequest(ValueError):
    """A query parameter has a value the list does not take (HTTP 400)."""


def limit(params: Mapping[str, str], default: int = DEFAULT_LIMIT) -> int:
    text = params.get("limit", "").strip()
    if not text:
        return default
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequest(f"limit={text!r}: give a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def _choice(params: Mapping[str, str], name: str, choices: type[StrEnum]) -> str | None:
    value = params.get(name, "").strip()
    if not value:
        return None
    allowed = [c.value for c in choices]
    if value not in allowed:
        raise BadRequest(f"{name}={value!r}: one of {', '.join(allowed)}")
    return value


def _project_id(params: Mapping[str, str]) -> uuid.UUID | None:
    given = params.get("project", "").strip()
    return None if not given else lookup.find_project(given).id


RUN_PARAMETERS = ("limit", "status", "trigger", "since", "project")
JOB_PARAMETERS = ("limit", "run", "project", "status")


def only(params: Mapping[str, str], known: tuple[str, ...]) -> None:
    """A parameter the list does not take is refused (a misspelt filter would
    otherwise list everything)."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r}: this list takes {', '.join(known)}")


def run_filter(params: Mapping[str, str]) -> RunFilter:
    """``status``, ``trigger``, ``since`` (ISO date or date-time, naive is UTC) and
    ``project`` (id, id prefix or name), as ``runs list`` takes them."""
    only(params, RUN_PARAMETERS)
    since = params.get("since", "").strip()
    try:
        moment = times.parse_since(since) if since else None
    except ValueError as exc:
        raise BadRequest(f"since={exc}") from None
    return RunFilter(
        status=_choice(params, "status", RunStatus),
        trigger=_choice(params, "trigger", TriggerType),
        since=moment,
        project_id=_project_id(params),
    )


def job_filter(params: Mapping[str, str]) -> JobFilter:
    """``run`` (id or id prefix), ``project`` and ``status``, as ``jobs list`` takes them."""
    only(params, JOB_PARAMETERS)
    run = params.get("run", "").strip()
    return JobFilter(
        run_id=lookup.find(ConsolidationRun, run, "run").id if run else None,
        project_id=_project_id(params),
        status=_choice(params, "status", JobStatus),
    )
