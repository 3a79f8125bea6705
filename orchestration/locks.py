"""Per-project lock: a row in ``project_locks``, taken with one atomic upsert.

Two jobs never consolidate the same project at once, and neither do two attempts of
one job: the holder names the attempt (:func:`holder_for`). The holder's process
keeps the lock's heartbeat fresh (``orchestration.heartbeat``); a lock whose
heartbeat is older than ``stale_after`` belongs to a process that died, and the next
attempt takes it over. Works the same on PostgreSQL and SQLite, both of which
support ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchestration.models import ProjectLock, table_of


def holder_for(job_id: uuid.UUID, attempt: int | None = None) -> str:
    """The lock holder of one attempt of a job (``<job id>#<attempt>``)."""
    return f"{job_id}#{attempt}" if attempt else str(job_id)


def job_of(holder: str) -> str:
    return holder.partition("#")[0]


class ProjectBusy(RuntimeError):
    """Another job holds the project's lock."""

    def __init__(self, project_id: uuid.UUID, holder: str):
        super().__init__(f"project {project_id} is busy: job {job_of(holder)} is consolidating it")
        self.project_id = project_id
        self.holder = holder


def acquire(session: Session, project_id: uuid.UUID, holder: str, now: datetime, stale_after: timedelta) -> None:
    """Take the lock for ``holder`` or raise :class:`ProjectBusy`. Commit to publish it."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    table = table_of(ProjectLock)
    stmt = insert(table).values(project_id=project_id, holder=holder, acquired_at=now, heartbeat_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.project_id],
        set_={"holder": holder, "acquired_at": now, "heartbeat_at": now},
        where=table.c.heartbeat_at < now - stale_after,
    )
    # RETURNING yields a row only if we inserted or took over the lock.
    if session.execute(stmt.returning(table.c.holder)).first() is None:
        current = session.scalar(select(ProjectLock.holder).where(ProjectLock.project_id == project_id))
        raise ProjectBusy(project_id, current or "?")


def release(session: Session, project_id: uuid.UUID, holder: str) -> None:
    session.execute(delete(ProjectLock).where(ProjectLock.project_id == project_id, ProjectLock.holder == holder))
