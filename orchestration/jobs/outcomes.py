"""How an attempt ends, as the callers of ``orchestration.jobs.lifecycle`` see it: the
exceptions it raises, the outcome it returns, the errors it records, and the ids its
log lines carry."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from orchestration.logs import get_logger
from orchestration.settings import Settings
from orchestration.store.statuses import JobStatus

log = get_logger("orchestration.jobs.lifecycle")


class JobNotFound(LookupError):
    pass


class AlreadyRunning(RuntimeError):
    """Another attempt of the job is alive (its lock's heartbeat is fresh): this
    delivery is a duplicate and must not start it. ``task_id`` is the Celery task that
    started the live attempt, when known."""

    def __init__(self, job_id: uuid.UUID, holder: str, beat: datetime, task_id: str | None = None):
        super().__init__(
            f"attempt {holder.partition('#')[2] or '?'} of job {job_id} is alive "
            f"(heartbeat {beat.isoformat()}); this delivery does not start it"
        )
        self.task_id = task_id


class Superseded(RuntimeError):
    """A newer attempt of the job took over (this one's heartbeat had stopped): stop
    without writing anything more."""


class AttemptFailed(RuntimeError):
    """The attempt ended with an error (its cause); the job is still ``running``, for
    the caller to retry (``lifecycle.mark_retrying``) or end (``lifecycle.fail``)."""

    def __init__(self, attempt: int, error: str):
        super().__init__(error)
        self.attempt = attempt
        self.error = error


def lost_error(attempt: int, settings: Settings) -> str:
    """The error of a job whose last allowed attempt died with its worker process."""
    return (
        f"worker died during attempt {attempt} of {settings.max_retries + 1} "
        f"(ORCHESTRATION_MAX_RETRIES={settings.max_retries}); no attempts left. The process was killed "
        "from outside, most likely for memory (the OOM killer) if it happens every time: run this project "
        "alone on a worker with more memory (docs/reliability.md, 'A project that kills its worker')"
    )


def describe(exc: BaseException) -> str:
    """An error as one line for a job row and a log event."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


@dataclass
class JobOutcome:
    """What a job ended as; small and JSON-friendly (it is the chord's result)."""

    job_id: str
    status: str
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "status": self.status, "error": self.error}


def log_end(outcome: JobOutcome, attempts: int) -> None:
    """``job.failed`` or ``job.skipped``."""
    if outcome.status == JobStatus.FAILED:
        log.error("job.failed", attempts=attempts, error=outcome.error)
    else:
        log.warning("job.skipped", reason=outcome.error)


def job_ids(job: Any) -> dict[str, str | None]:
    """The ids a job's log lines carry (``job``: its row, ORM object or plain row)."""
    return {
        "run_id": str(job.run_id) if job.run_id else None,
        "job_id": str(job.id),
        "project_id": str(job.project_id) if job.project_id else None,
    }


def bind_job(job: Any) -> None:
    """Log lines from here on carry the job's run and project (and the project's name,
    when ``job`` has it: a start's row)."""
    name = getattr(job, "project_name", None)
    structlog.contextvars.bind_contextvars(**job_ids(job), **({"project_name": name} if name is not None else {}))
