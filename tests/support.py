"""Helpers the tests share (fixtures live in conftest.py): consolidating a project
without a job's lock, waiting for a run, and the end state of the memory store,
comparable across databases and runs."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections import Counter
from typing import NoReturn

import pytest
from sqlalchemy import select

from orchestration.consolidation import applying, planning
from orchestration.consolidation.options import ConsolidationOptions, resolve_options
from orchestration.consolidation.result import ConsolidationResult
from orchestration.nightly.runs import wait_for_finish
from orchestration.store import db
from orchestration.store.counts import count_active
from orchestration.store.models import ConsolidationJob, ProjectLock, TaskMemory
from orchestration.store.statuses import JobStatus, TriggerType
from orchestration.store.types import utcnow


def manual_job(project_id, status: JobStatus = JobStatus.RUNNING):
    """A job row for audit rows to name (a consolidation outside any run)."""
    with db.session_scope() as session:
        job = ConsolidationJob(
            project_id=project_id, trigger_type=TriggerType.MANUAL, triggered_by="test", status=status
        )
        session.add(job)
    return job.id


def job_row(job_id) -> ConsolidationJob:
    with db.session_scope() as session:
        return session.get_one(ConsolidationJob, job_id)


def lock_holders() -> list[str]:
    with db.session_scope() as session:
        return list(session.scalars(select(ProjectLock.holder)))


def consolidate(project_id, options: ConsolidationOptions | None = None, job_id=None, **apply) -> ConsolidationResult:
    """Plan and apply one project's consolidation in this process, as a job does but
    without its lock or job row counters; ``memories_after`` counted afterwards."""
    options = options or resolve_options(None)
    with db.session_scope() as session:
        planned = planning.plan(session, project_id, options, utcnow())
    result = applying.apply(planned, options, job_id or manual_job(project_id), **apply)
    with db.session_scope() as session:
        result.memories_after = count_active(session, project_id)
    return result


def failing_call(function, call: int, error: Exception):
    """``function``, except that its ``call``-th call raises ``error`` (an injected fault)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise error
        return function(*args, **kwargs)

    return wrapper


def failing_first(function, times: int, error, when=lambda *args: True):
    """``function``, except that its first ``times`` calls whose arguments match ``when``
    raise ``error()`` (an injected fault)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        if when(*args) and calls["n"] < times:
            calls["n"] += 1
            raise error()
        return function(*args, **kwargs)

    return wrapper


def wait_until(condition, timeout: float = 30.0, what: str = "the condition") -> None:
    """Poll ``condition()`` every 50 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.05)


def wait_for_run(finder, timeout: float = 60.0):
    """Poll the database until ``finder(session)`` returns a finished run."""
    run = wait_for_finish(finder, timeout, interval=0.1)
    assert run is not None, f"run not finished within {timeout}s"
    return run


def fingerprint() -> list[tuple]:
    """Every memory row, independent of generated ids and timestamps: consolidated
    memories are named by their sorted sources."""
    with db.session_scope() as session:
        memories = {m.id: m for m in session.scalars(select(TaskMemory))}
    key: dict[uuid.UUID | None, str] = {  # looked up with duplicate_of, which may be None
        m.id: "consolidated:" + ",".join(sorted(m.consolidated_from)) if m.consolidated_from else str(m.id)
        for m in memories.values()
    }
    return sorted(
        (
            key[m.id],
            m.memory_type,
            m.content,
            m.is_duplicate,
            key.get(m.duplicate_of, ""),
            m.is_archived,
            m.archive_reason or "",
            m.reused_count,
            tuple(m.tags),
            tuple(m.file_links),
        )
        for m in memories.values()
    )


def difference(expected: list[tuple], actual: list[tuple]) -> tuple[int, int]:
    """(lost, doubled): rows of ``expected`` missing from ``actual``, and extra rows."""
    want, got = Counter(expected), Counter(actual)
    return sum((want - got).values()), sum((got - want).values())


def celery_worker_command(app: str, *options: str) -> list[str]:
    """``celery -A <app> worker`` with a 2-process prefork pool, as the suites start it."""
    return [sys.executable, "-m", "celery", "-A", app, "worker", "--pool", "prefork", "--concurrency", "2",
            "--without-mingle", "--without-gossip", *options]  # fmt: skip


START_HINT = "start them with: docker compose up -d redis postgres"


def services_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("ORCHESTRATION_REQUIRE_SERVICES") == "1"


def unavailable(service: str, error: Exception) -> NoReturn:
    reason = (str(error).strip().splitlines() or [""])[0]
    message = f"{service} unreachable ({type(error).__name__}: {reason})"
    if services_required():
        pytest.fail(f"{message}; CI/ORCHESTRATION_REQUIRE_SERVICES requires it", pytrace=False)
    pytest.skip(f"{message}; {START_HINT}")


def run_for_slot(slot: str):
    """The finished scheduled run of ``slot`` (ISO 8601), waited for."""
    from orchestration.nightly.schedule import parse_slot
    from orchestration.store.models import ConsolidationRun

    at = parse_slot(slot)
    return wait_for_run(lambda s: s.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == at)))


def jobs_by_project(run_id) -> dict:
    """A run's job rows by project id."""
    from orchestration.store import db
    from orchestration.store.models import ConsolidationJob

    with db.session_scope() as session:
        jobs = session.scalars(select(ConsolidationJob).where(ConsolidationJob.run_id == run_id))
        return {job.project_id: job for job in jobs}


# The dashboard's tests (tests/web): a project name that is markup, what the demo's
# failing project's job fails with (its options are malformed on purpose), a token.
XSS_NAME = "<script>alert(1)</script>"
FAILED_ERROR = "similarity_threshold"
WEB_TOKEN = "t0ken-of-the-dashboard-0123456789"
