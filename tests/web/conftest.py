"""The dashboard's fixtures: a real nightly run (the in-process Celery worker) with
one failed job and a project whose name is markup, and a client of the app."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from orchestration.demo.seed import seed
from orchestration.settings import Settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project
from orchestration.store.types import utcnow
from orchestration.web.app import create_app
from support import WEB_TOKEN, XSS_NAME, run_for_slot


@dataclass
class Night:
    run: ConsolidationRun
    jobs: list[ConsolidationJob]
    xss_project_id: uuid.UUID
    failing_project_id: uuid.UUID

    def job_of(self, project_id: uuid.UUID) -> ConsolidationJob:
        return next(job for job in self.jobs if job.project_id == project_id)


@pytest.fixture
def night(celery_worker, database) -> Night:
    """Last night's scheduled run, run for real: three projects consolidated (one of
    them named ``<script>alert(1)</script>``) and one failed."""
    from sqlalchemy import select

    from orchestration.worker.tasks import run_scheduled

    with db.session_scope() as session:
        manifests = seed(session, 5, 40, seed=11, dim=16, failing=True)
    eligible = [m for m in manifests if m.kind == "eligible"]
    failing = next(m for m in manifests if m.kind == "failing")
    xss = uuid.UUID(eligible[0].id)
    with db.session_scope() as session:
        session.execute(update(Project).where(Project.id == xss).values(name=XSS_NAME))
    slot = utcnow().replace(second=0, microsecond=0).isoformat()
    run_scheduled.apply_async(kwargs={"slot": slot, "backfill": True})
    run = run_for_slot(slot)
    with db.session_scope() as session:
        jobs = list(session.scalars(select(ConsolidationJob).where(ConsolidationJob.run_id == run.id)))
    return Night(run, jobs, xss, uuid.UUID(failing.id))


@pytest.fixture
def client(database) -> Iterator[TestClient]:
    with TestClient(create_app(Settings()), raise_server_exceptions=True) as test_client:
        yield test_client


@pytest.fixture
def token_client(database) -> Iterator[TestClient]:
    """The app with ``ORCHESTRATION_WEB_TOKEN`` set to ``support.WEB_TOKEN``."""
    with TestClient(create_app(Settings(web_token=WEB_TOKEN))) as test_client:
        yield test_client
