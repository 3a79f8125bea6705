"""A job's start and end on PostgreSQL, each as one statement.

Every job of every night starts and ends, so these two are the hot path of a run:
each is one data-modifying statement sent in autocommit mode (one round trip, where
the portable path in ``lifecycle`` needs five: BEGIN, three statements, COMMIT). They
do exactly what the portable path does in the common case and nothing in the others:
a start that finds anything unusual (the job finished, its project gone or disabled,
no attempts left, the project's lock held by a live attempt of this or another job)
changes nothing, and the caller takes the portable path, which decides under the job
row's lock.

They are the ``start`` (or ``take over``) and ``complete`` transitions of
``orchestration.jobs.transitions`` and are written from its declarations: the
from-states, the to-states, the ``heartbeat_at`` they leave, and the active count.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, literal_column, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from orchestration.jobs import heartbeat
from orchestration.jobs.locks import HOLDER_SEPARATOR
from orchestration.jobs.transitions import COMPLETE, TAKE_OVER, active_count
from orchestration.jobs.transitions import START as _START
from orchestration.store import db
from orchestration.store.statuses import JobStatus
from orchestration.store.types import JSONType


def statuses(states: frozenset[JobStatus] | set[JobStatus]) -> str:
    """A set of statuses as an SQL list of literals (enum values: nothing to escape)."""
    return ", ".join(f"'{state.value}'" for state in sorted(states))


# The job's project's active count (``transitions.active_count``), for the CTE ``job``.
_ACTIVE_COUNT = str(
    active_count(literal_column("job.project_id")).compile(
        dialect=postgresql.dialect(),
        compile_kwargs={"literal_binds": True},
    )
)
assert _START.target == TAKE_OVER.target and COMPLETE.sources == {_START.target}

# The lock is taken before the attempt is counted: a conflict with a live holder is
# decided on the latest committed lock row (ON CONFLICT), never on this statement's
# snapshot, which may predate a concurrent start of the same job.
START = text(f"""
WITH job AS (
    SELECT j.id, j.run_id, j.project_id, j.status, j.attempts, j.started_at, j.error_message,
           j.celery_task_id, j.options, j.mode, p.consolidation_options, p.name AS project_name
    FROM consolidation_jobs j
    LEFT JOIN projects p ON p.id = j.project_id
    WHERE j.id = :job_id
    FOR UPDATE OF j
), locked AS (
    INSERT INTO project_locks (project_id, holder, acquired_at, heartbeat_at)
    SELECT job.project_id, :job_key || '{HOLDER_SEPARATOR}' || (job.attempts + 1), :now, :now
    FROM job JOIN projects p ON p.id = job.project_id
    WHERE job.status IN ({statuses(_START.sources | TAKE_OVER.sources)}) AND job.attempts < :max_attempts
      AND (p.consolidation_enabled OR :force)
    ON CONFLICT (project_id) DO UPDATE
        SET holder = excluded.holder, acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at
        WHERE project_locks.heartbeat_at < :alive_since
    RETURNING holder
), started AS (
    UPDATE consolidation_jobs AS j
    SET attempts = job.attempts + {_START.counts}, status = '{_START.target}',
        started_at = coalesce(job.started_at, :now),
        heartbeat_at = :now, error_message = NULL, celery_task_id = coalesce(:celery_task_id, job.celery_task_id),
        worker = :worker,
        memories_before = CASE WHEN job.started_at IS NULL THEN {_ACTIVE_COUNT} ELSE j.memories_before END
    FROM job
    WHERE j.id = job.id AND EXISTS (SELECT 1 FROM locked)
    RETURNING j.attempts
)
SELECT job.*, (SELECT attempts FROM started) AS number FROM job
""")

FINISH = text(f"""
WITH done AS (
    UPDATE consolidation_jobs AS job
    SET status = '{COMPLETE.target}', progress = 1.0, memories_after = {_ACTIVE_COUNT},
        completed_at = :now, heartbeat_at = NULL, error_message = NULL,
        skipped_invalid = :skipped_invalid, conflicts = :conflicts, pairs_kept_apart = :pairs_kept_apart,
        mode = :mode, memories_new = :memories_new, full_reason = :full_reason, watermark = :watermark,
        signature = :signature, irregular_ids = :irregular_ids
    WHERE job.id = :job_id AND job.status IN ({statuses(COMPLETE.sources)}) AND job.attempts = :attempt
    RETURNING memories_before, memories_after, clusters_found, memories_merged, memories_archived
), freed AS (
    DELETE FROM project_locks WHERE project_id = :project_id AND holder = :holder
)
SELECT * FROM done
""").bindparams(bindparam("irregular_ids", type_=JSONType))


def one_statement() -> bool:
    """Whether a job's start and end take these statements (PostgreSQL)."""
    return db.is_postgresql()


def start(
    connection: Connection,
    job_id: uuid.UUID,
    now: datetime,
    *,
    max_attempts: int,
    celery_task_id: str | None,
    force: bool,
) -> Any:
    """Start the job's next attempt, lock taken, if nothing is unusual. The row has the
    job and its project's options as they were, and ``number``: the attempt started,
    or ``None`` (the job finished, has no attempts left, its project is gone or
    disabled, or the project's lock is held); ``None`` if the job does not exist."""
    return connection.execute(
        START,
        {
            "job_id": job_id,
            "job_key": str(job_id),
            "now": now,
            "alive_since": now - heartbeat.LOST_AFTER,
            "max_attempts": max_attempts,
            "celery_task_id": celery_task_id,
            "worker": heartbeat.worker_name(),
            "force": force,
        },
    ).first()


def finish(
    connection: Connection,
    job_id: uuid.UUID,
    attempt: int,
    project_id: uuid.UUID,
    holder: str,
    now: datetime,
    recorded: dict[str, Any],
) -> Any:
    """Record the attempt's job completed (fenced on the attempt) with what it left alone
    (``skipped_invalid``, ``conflicts``, ``pairs_kept_apart``) and what its pass recorded
    (``mode``, ``memories_new``, ``full_reason``, ``watermark``, ``signature``), and give
    its lock back; the job's counters, or ``None`` if a newer attempt took the job over."""
    return connection.execute(
        FINISH,
        {"job_id": job_id, "attempt": attempt, "project_id": project_id, "holder": holder, "now": now, **recorded},
    ).first()
