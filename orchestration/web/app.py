"""The dashboard's application: its routes, what a bad request or an unreachable
database answers, and the guard every response goes through (``security``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from orchestration.documents.lookup import LookupFailed, NotFound
from orchestration.settings import Settings, get_settings
from orchestration.store.diagnosis import database_problem
from orchestration.web import api, pages
from orchestration.web.filters import BadRequest
from orchestration.web.metrics import render_metrics
from orchestration.web.security import Guard

STATIC = pages.TEMPLATES.parent / "static"


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/healthz", "/metrics"))


def _answer(request: Request, status_code: int, message: str) -> Response:
    if _is_api(request):
        return api.json_response({"error": message}, status_code)
    return pages.error(request, status_code, message)


async def _lookup_failed(request: Request, exc: Exception) -> Response:
    return _answer(request, 404 if isinstance(exc, NotFound) else 400, str(exc))


async def _bad_request(request: Request, exc: Exception) -> Response:
    return _answer(request, 400, str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _answer(request, exc.status_code, exc.detail)


async def _database_error(request: Request, exc: Exception) -> Response:
    """One line saying what to do (not migrated, unreachable), as the command line says it."""
    assert isinstance(exc, SQLAlchemyError)
    message, _ = database_problem(exc)  # uvicorn's access log records the 503
    return await run_in_threadpool(_answer, request, 503, message)


def _metrics(settings: Settings) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(_request: Request) -> Response:
        return Response(await run_in_threadpool(render_metrics, settings), media_type=CONTENT_TYPE_LATEST)

    return metrics


def create_app(settings: Settings | None = None, hosts: Sequence[str] | None = None) -> ASGIApp:
    """The dashboard over the configured database; ``settings`` default to the
    environment's (``ORCHESTRATION_WEB_TOKEN`` among them). ``hosts``: the only
    ``Host`` names it answers (``orchestration web`` on loopback gives
    :data:`~orchestration.web.security.LOOPBACK_NAMES`); ``None``: any."""
    settings = settings or get_settings()
    routes = [
        Route("/", pages.runs),
        Route("/runs", pages.runs),
        Route("/runs/{run_id}", pages.run),
        Route("/projects", pages.projects),
        Route("/projects/{project:path}", pages.project),
        Route("/jobs/{job_id}", pages.job),
        Route("/api/runs", api.runs),
        Route("/api/runs/{run_id}", api.run),
        Route("/api/projects", api.projects),
        Route("/api/projects/{project:path}", api.project),
        Route("/api/jobs", api.jobs),
        Route("/api/jobs/{job_id}", api.job),
        Route("/healthz", api.healthz),
        Route("/metrics", _metrics(settings)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            LookupFailed: _lookup_failed,
            BadRequest: _bad_request,
            HTTPException: _http_error,
            SQLAlchemyError: _database_error,
        },
    )
    return Guard(app, settings.web_token, hosts)
