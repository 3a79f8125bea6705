"""A job's life as one declared state machine, and the only writer of a job's status,
its attempt count and the release of its attempt's project lock.

=========  ===============================  =========  =========================================
name       from                             to         when
=========  ===============================  =========  =========================================
start      pending, retrying                running    a worker starts the next attempt
take over  running                          running    the same, after the last attempt's lock
                                                       went stale (its process died unseen)
complete   running                          completed  the attempt consolidated the project
retry      running                          retrying   the attempt failed; attempts are left
lose       pending, running, retrying       retrying   its worker died, or its retry or its
                                                       message was lost; it is sent again
spare      running, retrying                retrying   the database's outage cut the attempt
                                                       short: it does not count
fail       pending, running, retrying       failed     no attempts left, a permanent error, or
                                                       its run was finalized without it
skip       running                          skipped    a start found its project gone or
                                                       disabled (right after ``start``)
roll back  completed, failed, skipped       (same)     an operator undid the job's changes
                                                       (``rolled_back_at``, once)
=========  ===============================  =========  =========================================

:func:`apply` carries a transition out as one fenced ``UPDATE ... WHERE id = :job AND
status IN (<from>) AND attempts = :attempt``: the caller names the attempt it knows,
so a write by an attempt that a newer one took over matches nothing. The same
statement sets the attempt count (``start`` and ``take over`` count one, ``spare``
gives one back) and ``heartbeat_at`` (see :data:`EFFECTS`); every transition out of
``running`` frees the fenced attempt's lock in the same transaction. A transition
that does not apply raises :class:`Refused`, naming it, the job's state and why.

The project lock is *taken* by the attempt's ``Lease`` (``orchestration.jobs.locks``)
in the transaction of its start. PostgreSQL's one-statement start and finish
(``orchestration.jobs.statements``) are built from these declarations.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import ColumnElement, case, func, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from orchestration.jobs import heartbeat
from orchestration.jobs.locks import free, holder_for
from orchestration.settings import Settings
from orchestration.store import counts
from orchestration.store.models import ConsolidationJob
from orchestration.store.statuses import FINISHED_JOB_STATUSES, UNFINISHED_JOB_STATUSES, JobStatus

PENDING, RUNNING, RETRYING = JobStatus.PENDING, JobStatus.RUNNING, JobStatus.RETRYING


@dataclass(frozen=True)
class Transition:
    """One allowed change of a job's status."""

    name: str
    sources: frozenset[JobStatus]
    target: JobStatus | None  # None: the status stays
    counts: int = 0  # what it adds to the job's attempts

    @property
    def frees_lock(self) -> bool:
        """Whether the fenced attempt's project lock is freed with it: every transition
        out of ``running`` ends that attempt."""
        return self.target is not None and self.target != RUNNING

    @property
    def finishes(self) -> bool:
        return self.target is not None and self.target not in UNFINISHED_JOB_STATUSES


START = Transition("start", frozenset({PENDING, RETRYING}), RUNNING, counts=1)
TAKE_OVER = Transition("take over", frozenset({RUNNING}), RUNNING, counts=1)
COMPLETE = Transition("complete", frozenset({RUNNING}), JobStatus.COMPLETED)
RETRY = Transition("retry", frozenset({RUNNING}), RETRYING)
LOSE = Transition("lose", frozenset(UNFINISHED_JOB_STATUSES), RETRYING)
SPARE = Transition("spare", frozenset({RUNNING, RETRYING}), RETRYING, counts=-1)
FAIL = Transition("fail", frozenset(UNFINISHED_JOB_STATUSES), JobStatus.FAILED)
SKIP = Transition("skip", frozenset({RUNNING}), JobStatus.SKIPPED)
ROLL_BACK = Transition("roll back", frozenset(FINISHED_JOB_STATUSES), None)
TRANSITIONS = (START, TAKE_OVER, COMPLETE, RETRY, LOSE, SPARE, FAIL, SKIP, ROLL_BACK)


def starting(status: str) -> Transition:
    """The transition that starts a job's next attempt from ``status``."""
    return TAKE_OVER if status == RUNNING else START


class Refused(RuntimeError):
    """A transition that does not apply to the job as it is: ``status`` and
    ``attempts`` are the job's (``None`` if it does not exist)."""

    def __init__(self, transition: Transition, job_id: uuid.UUID, status: str | None, attempts: int | None, why: str):
        super().__init__(f"{transition.name} of job {job_id} refused: {why}")
        self.transition, self.status, self.attempts = transition, status, attempts


class Counted(Protocol):
    attempts: int


def attempts_left(job: Counted | int, settings: Settings) -> int:
    """How many more attempts the job may start (``job``: a row, or its attempt count):
    every start counts, ``ORCHESTRATION_MAX_RETRIES`` retries after the first."""
    attempts = job if isinstance(job, int) else job.attempts
    return max(0, settings.max_retries + 1 - attempts)


_JOB = ConsolidationJob


def active_count(project_id: Any = _JOB.project_id) -> ColumnElement[int]:
    """The job's project's active memories as a column expression (in an ``UPDATE`` of
    the job: correlated to its row)."""
    return counts.active_count_expr(project_id)


def effects(transition: Transition, now: datetime) -> dict[str, Any]:
    """What a transition writes besides status and attempts.

    ``heartbeat_at`` has one meaning: when a process last vouched for the unfinished
    job (the worker holding its message or running its attempt, beating; the one that
    started it or sent it on to its next attempt). It is ``NULL`` while the job waits
    unreceived in the queue, and once the job has finished."""
    if transition.target is None:
        return {}
    if transition.target == RUNNING:
        return {
            "started_at": func.coalesce(_JOB.started_at, now),
            "memories_before": case((_JOB.started_at.is_(None), active_count()), else_=_JOB.memories_before),
            "heartbeat_at": now,
            "error_message": None,
            "worker": heartbeat.worker_name(),
        }
    if transition.finishes:
        return {
            "completed_at": now,
            "heartbeat_at": None,
            # What is active now: the run's totals stay true for a job that ended halfway.
            "memories_after": case((_JOB.project_id.is_(None), _JOB.memories_after), else_=active_count()),
        }
    return {"heartbeat_at": now}


def apply(
    session: Session,
    transition: Transition,
    job_id: uuid.UUID,
    attempt: int,
    now: datetime,
    values: Mapping[str, Any] | None = None,
    *,
    unless: tuple[ColumnElement[bool], str] | None = None,
    returning: tuple[Any, ...] = (),
) -> Row[Any]:
    """Carry ``transition`` out on the job at attempt ``attempt``, with ``values`` set too,
    in the caller's transaction; then free that attempt's lock if the transition ends
    it. ``unless``: a further condition of the job row and what its failure means.
    Returns the row's ``project_id``, ``attempts`` and ``returning``; raises
    :class:`Refused` if the job is not in a from-state, not at ``attempt``, or fails
    ``unless``. ORM objects of the job in ``session`` are brought up to date."""
    fence = [_JOB.id == job_id, _JOB.status.in_(sorted(transition.sources)), _JOB.attempts == attempt]
    if unless is not None:
        fence.append(unless[0])
    row = session.execute(
        update(_JOB)
        .where(*fence)
        .values(
            attempts=attempt + transition.counts,
            **({"status": transition.target} if transition.target is not None else {}),
            **{**effects(transition, now), **(values or {})},
        )
        .returning(_JOB.project_id, _JOB.attempts, *returning)
        .execution_options(synchronize_session="fetch")
    ).first()
    if row is None:
        raise _refusal(session, transition, job_id, attempt, unless[1] if unless else "")
    if transition.frees_lock and row.project_id is not None:
        free(session, row.project_id, holder_for(job_id, attempt))
    return row


def _refusal(session: Session, transition: Transition, job_id: uuid.UUID, attempt: int, otherwise: str) -> Refused:
    found = session.execute(select(_JOB.status, _JOB.attempts).where(_JOB.id == job_id)).first()
    if found is None:
        return Refused(transition, job_id, None, None, "the job does not exist")
    status, attempts = found
    if status not in transition.sources:
        sources = ", ".join(sorted(transition.sources))
        why = f"the job is {status}; {transition.name} goes from {sources} only"
    elif attempts != attempt:
        why = f"the job is at attempt {attempts}, not {attempt}: another attempt took it over"
    else:
        why = otherwise or "its condition does not hold"
    return Refused(transition, job_id, status, attempts, why)
