"""Per-project lock: a row in ``project_locks``, taken with one atomic upsert.

Two jobs never consolidate the same project at once. The lock is re-entrant for the
same holder (a job redelivered after its worker died takes its own lock back) and
can be taken over once its heartbeat is older than ``stale_after`` (a holder that
vanished without releasing it). Works the same on PostgreSQL and SQLite, both of
which support ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchestration.models import ProjectLock


class ProjectBusy(RuntimeError):
    """Another job holds the project's lock."""

    def __init__(self, project_id: uuid.UUID, holder: str):
        super().__init__(f"project {project_id} is busy: job {holder} is consolidating it")
        self.project_id = project_id
        self.holder = holder


def acquire(session: Session, project_id: uuid.UUID, holder: str, now: datetime, stale_after: timedelta) -> None:
    """Take the lock for ``holder`` or raise :class:`ProjectBusy`. Commit to publish it."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    table = ProjectLock.__table__
    stmt = insert(table).values(project_id=project_id, holder=holder, acquired_at=now, heartbeat_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.project_id],
        set_={"holder": holder, "acquired_at": now, "heartbeat_at": now},
        where=(table.c.holder == holder) | (table.c.heartbeat_at < now - stale_after),
    )
    # RETURNING yields a row only if we inserted or took over the lock.
    if session.execute(stmt.returning(table.c.holder)).first() is None:
        current = session.scalar(select(ProjectLock.holder).where(ProjectLock.project_id == project_id))
        raise ProjectBusy(project_id, current or "?")


def heartbeat(session: Session, project_id: uuid.UUID, holder: str, now: datetime) -> None:
    session.execute(
        update(ProjectLock)
        .where(ProjectLock.project_id == project_id, ProjectLock.holder == holder)
        .values(heartbeat_at=now)
    )


def release(session: Session, project_id: uuid.UUID, holder: str) -> None:
    session.execute(
        delete(ProjectLock).where(ProjectLock.project_id == project_id, ProjectLock.holder == holder)
    )
