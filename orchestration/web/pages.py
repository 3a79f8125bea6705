"""The dashboard's HTML pages, rendered on the server from the same documents as
``/api/`` (Jinja2 escapes every value; the charts escape their own text)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from orchestration import __version__
from orchestration.documents import lookup
from orchestration.documents.jobs import job_detail, pass_text
from orchestration.documents.projects import project_detail, project_documents
from orchestration.documents.runs import list_runs, run_page
from orchestration.documents.times import parse
from orchestration.nightly.health import check_health
from orchestration.settings import get_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun
from orchestration.store.statuses import UNFINISHED_JOB_STATUSES, JobStatus, RunStatus, TriggerType
from orchestration.store.types import utcnow
from orchestration.web import charts, filters

TEMPLATES = Path(__file__).parent / "templates"
# The runs page lists a month of nights unless ``limit`` says otherwise.
RUNS_SHOWN = 30
SLOWEST = 10
# The runs page names this many failed jobs of the latest scheduled run.
FAILED_NAMED = 5
# A run page shows this many failed jobs' whole errors (the rest: jobs list --status failed).
FAILED_SHOWN = 50
# A run page lists this many jobs in its table (every job is on the timeline).
JOBS_LISTED = 500
# Summary keys the run page shows elsewhere (its duration, the failed jobs' section).
ON_THE_PAGE = ("duration_s", "failed_jobs")
# An open run's page reloads itself this often (seconds), by a meta refresh: no script.
REFRESH_S = 5


def _when(value: str | datetime | None) -> str:
    moment = parse(value)
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any) -> str:
    return str(value)[:8] if value else "—"


environment = Environment(
    loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True
)
environment.filters.update(when=_when, short=_short, duration=charts.format_duration, pass_text=pass_text)
environment.globals.update(version=__version__, run_statuses=list(RunStatus), triggers=list(TriggerType))


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    page = environment.get_template(template).render(request=request, database=db.describe(), **context)
    return HTMLResponse(page, status_code=status_code)


def runs(request: Request) -> HTMLResponse:
    params = request.query_params
    where = filters.run_filter(params)
    now = utcnow()
    with db.session_scope() as session:
        documents = list_runs(session, filters.limit(params, RUNS_SHOWN), where, summary=False)
        verdict = check_health(session, get_settings(), now, timedelta(hours=26))
        health = verdict.as_dict()
        summary = verdict.run.summary if verdict.run is not None else None
    failed = summary.get("failed_jobs") if isinstance(summary, dict) else None
    return render(
        request,
        "runs.html",
        runs=documents,
        chart=charts.runs_chart(documents, now),
        health=health,
        failed=failed[:FAILED_NAMED] if isinstance(failed, list) else [],
        params=params,
        filtered=bool(where),
        refresh=REFRESH_S if any(r["status"] == RunStatus.RUNNING for r in documents) else None,
    )


def _run_seconds(doc: dict[str, Any], now: datetime) -> float | None:
    start, end = parse(doc["started_at"]), parse(doc["finished_at"]) or now
    return None if start is None else (end - start).total_seconds()


def _notes(summary: Any) -> dict[str, Any]:
    """What the summary notes that the page shows nowhere else (a hand-edited summary
    that is not an object notes nothing)."""
    if not isinstance(summary, dict):
        return {}
    return {k: v for k, v in summary.items() if k not in ON_THE_PAGE and v not in (None, [], {})}


def run(request: Request) -> HTMLResponse:
    found = lookup.find(ConsolidationRun, request.path_params["run_id"], "run")
    doc = run_page(found.id)
    now = utcnow()
    jobs = doc["jobs"]
    is_open = doc["status"] == RunStatus.RUNNING
    timed = [j for j in jobs if j["duration_s"] is not None]
    return render(
        request,
        "run.html",
        run=doc,
        seconds=_run_seconds(doc, now),
        timeline=charts.timeline(jobs, doc["started_at"], now),
        failed=[j for j in jobs if j["status"] == JobStatus.FAILED],
        failed_shown=FAILED_SHOWN,
        slowest=sorted(timed, key=lambda j: j["duration_s"], reverse=True)[:SLOWEST],
        listed=jobs[:JOBS_LISTED],
        notes=_notes(doc["summary"]),
        refresh=REFRESH_S if is_open else None,
    )


def projects(request: Request) -> HTMLResponse:
    with db.session_scope() as session:
        documents = project_documents(session)
    return render(request, "projects.html", projects=documents)


def project(request: Request) -> HTMLResponse:
    doc = project_detail(lookup.find_project(request.path_params["project"]).id)
    return render(request, "project.html", project=doc, history=charts.history_chart(doc["recent_jobs"]))


def job(request: Request) -> HTMLResponse:
    doc = job_detail(lookup.find(ConsolidationJob, request.path_params["job_id"], "job").id)
    return render(
        request,
        "job.html",
        job=doc,
        refresh=REFRESH_S if doc["status"] in UNFINISHED_JOB_STATUSES else None,
    )


def error(request: Request, status_code: int, message: str) -> HTMLResponse:
    return render(request, "error.html", status_code=status_code, status=status_code, message=message)
