"""Fixtures of the job tests: a run whose jobs are created, not yet started; a fast
heartbeat; and the three ways a start and an end can go (:func:`three_ways`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest

from orchestration.demo.seed import seed
from orchestration.jobs import heartbeat, lifecycle, statements
from orchestration.nightly import runs
from orchestration.settings import Settings, load_settings
from orchestration.store import db
from orchestration.store.statuses import TriggerType

THREE_WAYS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.integration),
    pytest.param("postgresql-portable", marks=pytest.mark.integration),
]


@pytest.fixture(params=THREE_WAYS)
def three_ways(request, monkeypatch) -> str:
    """SQLite, PostgreSQL, and PostgreSQL with its one-statement start and end turned off
    (the portable path, which PostgreSQL otherwise takes only for unusual starts). A
    module that starts and ends jobs uses it as its ``database_url``."""
    if request.param == "postgresql-portable":
        monkeypatch.setattr(statements, "one_statement", lambda: False)
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def fast_heartbeat(database, monkeypatch) -> Iterator[None]:
    """A heartbeat every 50 ms for the test. Torn down before the database, after a
    pause: a beat under way when the test ends lands first (a connection it still had
    when the engine is disposed would never be closed)."""
    monkeypatch.setattr(heartbeat, "INTERVAL", timedelta(seconds=0.05))
    yield
    time.sleep(0.3)


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
