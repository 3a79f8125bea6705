"""Helpers the tests share (fixtures live in conftest.py): waiting for a run, and the
end state of the memory store, comparable across databases and runs."""

from __future__ import annotations

import os
import sys
from collections import Counter

import pytest
from sqlalchemy import select

from orchestration import db
from orchestration.models import TaskMemory
from orchestration.runs import wait_for_finish


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
    key = {
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


def unavailable(service: str, error: Exception) -> None:
    reason = (str(error).strip().splitlines() or [""])[0]
    message = f"{service} unreachable ({type(error).__name__}: {reason})"
    if services_required():
        pytest.fail(f"{message}; CI/ORCHESTRATION_REQUIRE_SERVICES requires it", pytrace=False)
    pytest.skip(f"{message}; {START_HINT}")
