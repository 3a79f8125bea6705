"""Per-project lock: a row in ``project_locks``, taken with one atomic upsert.

Two jobs never consolidate the same project at once, and neither do two attempts of
one job: the holder names the attempt (:func:`holder_for`). A live attempt's lock is
owned by its :class:`Lease`, which takes it, keeps its heartbeat fresh
(``orchestration.jobs.heartbeat``) and gives it back. A lock whose heartbeat is
older than :data:`heartbeat.LOST_AFTER` belongs to a process that died: the next
attempt takes it over, and recovery (:func:`free`) may give it back for the dead
holder. Works the same on PostgreSQL and SQLite, both of which support
``INSERT ... ON CONFLICT DO UPDATE ... WHERE``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from orchestration.jobs import heartbeat
from orchestration.logs import get_logger
from orchestration.store.db import session_scope
from orchestration.store.models import ProjectLock, table_of

log = get_logger(__name__)


HOLDER_SEPARATOR = "#"


def holder_for(job_id: uuid.UUID, attempt: int) -> str:
    """The lock holder of one attempt of a job (``<job id>#<attempt>``)."""
    return f"{job_id}{HOLDER_SEPARATOR}{attempt}"


def job_of(holder: str) -> str:
    return holder.partition(HOLDER_SEPARATOR)[0]


class ProjectBusy(RuntimeError):
    """Another job holds the project's lock."""

    def __init__(self, project_id: uuid.UUID, holder: str):
        super().__init__(f"project {project_id} is busy: job {job_of(holder)} is consolidating it")
        self.project_id = project_id
        self.holder = holder


class Lease:
    """The project lock of one attempt of a job, from the attempt's first transaction to
    its last: :meth:`acquire` in the transaction that starts the attempt, :meth:`held`
    around its work (heartbeat; given back if the work fails), :meth:`release` in the
    transaction that records the attempt's end. On PostgreSQL the start and the end
    are single statements that take and give back the same row
    (``orchestration.jobs.statements``)."""

    def __init__(self, project_id: uuid.UUID, job_id: uuid.UUID, attempt: int):
        self.project_id = project_id
        self.job_id = job_id
        self.holder = holder_for(job_id, attempt)

    def acquire(self, session: Session, now: datetime) -> None:
        """Take the lock (or a stale one over), or raise :class:`ProjectBusy`. Published
        when the caller's transaction commits."""
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        table = table_of(ProjectLock)
        stmt = insert(table).values(project_id=self.project_id, holder=self.holder, acquired_at=now, heartbeat_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.project_id],
            set_={"holder": self.holder, "acquired_at": now, "heartbeat_at": now},
            where=table.c.heartbeat_at < now - heartbeat.LOST_AFTER,
        )
        # RETURNING yields a row only if we inserted or took over the lock.
        if session.execute(stmt.returning(table.c.holder)).first() is None:
            current = session.scalar(select(ProjectLock.holder).where(ProjectLock.project_id == self.project_id))
            raise ProjectBusy(self.project_id, current or "?")

    def release(self, session: Session) -> None:
        """Give the lock back in the caller's transaction (a no-op once another attempt
        took it over)."""
        free(session, self.project_id, self.holder)

    @contextmanager
    def held(self) -> Iterator[Lease]:
        """Beat for the lock while the block runs. If the block fails, give the lock back
        at once; if even that fails (the database is down), the lock goes stale after
        :data:`heartbeat.LOST_AFTER` and the next attempt takes it over."""
        with heartbeat.beating(self.holder, self.job_id):
            try:
                yield self
            except BaseException:
                try:
                    with session_scope() as session:
                        self.release(session)
                except SQLAlchemyError as exc:
                    log.warning("lock.release_failed", holder=self.holder, error=str(exc).splitlines()[0][:300])
                raise


def free(session: Session, project_id: uuid.UUID, holder: str) -> None:
    """Delete the lock if ``holder`` still has it: a lease's release, or recovery freeing
    the lock of an attempt that died."""
    session.execute(delete(ProjectLock).where(ProjectLock.project_id == project_id, ProjectLock.holder == holder))
