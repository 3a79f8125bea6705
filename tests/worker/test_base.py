"""The task base classes: id parsing and log context (with a real worker), and the
retry policy's backoff."""

import io
import json

import pytest

from orchestration.jobs import heartbeat
from orchestration.logs import configure_logging
from orchestration.settings import get_settings, load_settings
from orchestration.worker.base import RETRY_BACKOFF_BASE, retry_countdown
from orchestration.worker.tasks import finalize_run, run_project, run_scheduled


@pytest.fixture
def log_lines():
    stream = io.StringIO()
    configure_logging(get_settings(), stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    configure_logging(get_settings())


@pytest.mark.parametrize(
    ("task", "args", "kwargs", "expected"),
    [
        (run_project, ["not-a-uuid"], {}, {"job_id": "not-a-uuid", "status": "rejected"}),
        (finalize_run, [[], "r" * 80], {}, {"run_id": "r" * 64, "status": "rejected"}),
        (run_scheduled, [], {"trigger": "manual", "run_id": "42"}, {"run_id": "42", "status": "rejected"}),
    ],
)
def test_a_malformed_id_is_rejected_with_one_event(
    celery_worker, sqlite_database, log_lines, task, args, kwargs, expected
):
    result = task.apply_async(args=args, kwargs=kwargs)
    assert result.get(timeout=30) == expected
    (rejected,) = [e for e in log_lines() if e["event"] == "task.rejected"]
    name = next(iter(expected))
    assert rejected["reason"] == f"{name} {expected[name]!r} is not a UUID"
    assert rejected["task"] == task.name and rejected["task_id"] == result.id and rejected["level"] == "error"


def test_an_unknown_job_is_reported_not_retried(celery_worker, sqlite_database, log_lines):
    job_id = "6f1c1a52-0000-4000-8000-000000000000"
    assert run_project.apply_async(args=[job_id]).get(timeout=30) == {"job_id": job_id, "status": "unknown"}
    (rejected,) = [e for e in log_lines() if e["event"] == "task.rejected"]
    assert rejected["job_id"] == job_id and rejected["reason"] == f"job {job_id} does not exist"
    assert not [e for e in log_lines() if e["event"] == "job.retrying"]


@pytest.mark.parametrize("retries", [0, 1, 2, 5])
def test_retry_backoff_grows_with_full_jitter_up_to_the_cap(retries):
    settings = load_settings({"ORCHESTRATION_RETRY_BACKOFF_MAX": "200"})
    bound = min(200, RETRY_BACKOFF_BASE * 2**retries)
    countdowns = [retry_countdown(retries, settings) for _ in range(200)]
    assert all(0 <= c <= bound for c in countdowns)
    assert max(countdowns) > bound / 2  # jitter spreads them over the whole range


def test_a_retry_whose_lock_was_not_freed_waits_until_the_lock_is_stale():
    settings = load_settings({})
    stale = heartbeat.LOST_AFTER.total_seconds() + 1
    assert all(retry_countdown(0, settings, lock_freed=False) >= stale for _ in range(50))
