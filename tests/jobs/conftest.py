"""Fixtures of the job tests: a run whose jobs are created, not yet started, on
SQLite, on PostgreSQL, and on PostgreSQL with its one-statement start and end turned
off (the portable path, which PostgreSQL otherwise takes only for unusual starts)."""

from __future__ import annotations

import uuid

import pytest

from orchestration.demo.seed import seed
from orchestration.jobs import lifecycle, statements
from orchestration.nightly import runs
from orchestration.settings import Settings, load_settings
from orchestration.store import db
from orchestration.store.statuses import TriggerType


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.integration),
        pytest.param("postgresql-portable", marks=pytest.mark.integration),
    ]
)
def database_url(request, monkeypatch) -> str:
    if request.param == "postgresql-portable":
        monkeypatch.setattr(statements, "one_statement", lambda: False)
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def settings() -> Settings:
    return load_settings({})  # the production defaults: ORCHESTRATION_MAX_RETRIES=3


@pytest.fixture
def job_ids(database) -> list[uuid.UUID]:
    """The jobs of a manual run over three seeded projects (one eligible)."""
    with db.session_scope() as session:
        seed(session, 3, 60, seed=5, dim=16)
        started = runs.start_run(session, TriggerType.MANUAL, None, 10)
    assert started is not None and started.job_ids
    return started.job_ids


@pytest.fixture
def attempt(job_ids, settings) -> lifecycle.Attempt:
    """The first job, started: its lock taken for attempt 1."""
    started = lifecycle.begin_attempt(job_ids[0], settings)
    assert isinstance(started, lifecycle.Attempt)
    return started
