"""The JSON twins of the pages under ``/api/``: the documents the command line's
``--json`` prints (``orchestration.documents``), and ``/healthz``."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from orchestration.documents import lookup
from orchestration.documents.jobs import job_detail, list_jobs
from orchestration.documents.projects import project_detail, project_documents
from orchestration.documents.runs import list_runs, run_document
from orchestration.nightly.health import check_health
from orchestration.settings import get_settings
from orchestration.store import db
from orchestration.store.documents import jsonable
from orchestration.store.models import ConsolidationJob, ConsolidationRun
from orchestration.store.types import utcnow
from orchestration.web import filters

# ``orchestration health``'s default: a scheduled run completed within the last 26 h.
DEFAULT_MAX_AGE_HOURS = 26.0


def json_response(document: Any, status_code: int = 200) -> Response:
    """Compact JSON (json's C encoder: a run of 20,000 jobs is tens of MB indented)."""
    body = json.dumps(document, default=jsonable, separators=(",", ":"))
    return Response(body + "\n", status_code=status_code, media_type="application/json")


def runs(request: Request) -> Response:
    params = request.query_params
    with db.session_scope() as session:
        return json_response(list_runs(session, filters.limit(params), filters.run_filter(params)))


def run(request: Request) -> Response:
    found = lookup.find(ConsolidationRun, request.path_params["run_id"], "run")
    return json_response(run_document(found.id))


def projects(request: Request) -> Response:
    with db.session_scope() as session:
        return json_response(project_documents(session))


def project(request: Request) -> Response:
    return json_response(project_detail(lookup.find_project(request.path_params["project"]).id))


def jobs(request: Request) -> Response:
    params = request.query_params
    with db.session_scope() as session:
        return json_response(list_jobs(session, filters.limit(params), filters.job_filter(params)))


def job(request: Request) -> Response:
    return json_response(job_detail(lookup.find(ConsolidationJob, request.path_params["job_id"], "job").id))


def max_age(request: Request) -> timedelta:
    text = request.query_params.get("max_age", "").strip()
    try:
        hours = float(text) if text else DEFAULT_MAX_AGE_HOURS
    except ValueError:
        hours = -1.0
    if not 0 < hours <= 24 * 365:
        raise filters.BadRequest(f"max_age={text!r}: give hours, a number above 0 (default {DEFAULT_MAX_AGE_HOURS:g})")
    return timedelta(hours=hours)


def healthz(request: Request) -> Response:
    """``orchestration health --json``'s document: 200 when its exit code would be 0,
    503 otherwise (and when the database cannot answer)."""
    with db.session_scope() as session:
        result = check_health(session, get_settings(), utcnow(), max_age(request))
        return json_response(result.as_dict(), 200 if result.code == 0 else 503)
