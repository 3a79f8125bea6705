"""Liveness of running jobs: a heartbeat written by the job's own process.

While a job attempt holds its project's lock, one daemon thread per process writes
``project_locks.heartbeat_at`` every :data:`INTERVAL`, whatever the job is doing (a
long similarity phase, a big batch). A lock whose heartbeat is older than
:data:`LOST_AFTER` belongs to a process that died: the reaper then re-sends the job
and the next attempt may take the lock over (``docs/reliability.md``).

The job row's ``heartbeat_at`` is refreshed in the same transaction where the row is
free; a batch transaction holding it refreshes it on commit, so the heartbeat never
waits for a batch (PostgreSQL ``SKIP LOCKED``; SQLite has one writer at a time).
"""

from __future__ import annotations

import os
import threading
import uuid
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

from sqlalchemy import select, update

from orchestration.db import session_scope
from orchestration.dbtypes import utcnow
from orchestration.logs import get_logger
from orchestration.models import ConsolidationJob, ProjectLock

INTERVAL = timedelta(seconds=10)
# Six missed beats: a process that stopped beating this long ago is dead (or frozen,
# in which case the fence on the job's attempt number stops it at its next write).
LOST_AFTER = timedelta(seconds=60)

log = get_logger("orchestration.heartbeat")


class _Beater:
    """The process's heartbeat thread and the lock holders it beats for."""

    def __init__(self) -> None:
        self._holders: dict[str, uuid.UUID | None] = {}  # lock holder -> its job
        self._guard = threading.Lock()
        self._pid: int | None = None

    def add(self, holder: str, job_id: uuid.UUID | None) -> None:
        with self._guard:
            self._holders[holder] = job_id
            if self._pid != os.getpid():  # first use in this process (or a forked child)
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="orchestration-heartbeat", daemon=True).start()

    def remove(self, holder: str) -> None:
        with self._guard:
            self._holders.pop(holder, None)

    def _run(self) -> None:
        pause = threading.Event()  # never set: a sleep
        while not pause.wait(INTERVAL.total_seconds()):
            with self._guard:
                holders = dict(self._holders)
            if holders:
                try:
                    beat(holders)
                except Exception as exc:  # noqa: BLE001 - keep beating; the job itself will fail if the db is gone
                    log.warning("heartbeat.failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])


def beat(holders: dict[str, uuid.UUID | None]) -> None:
    """Write one heartbeat for these lock holders and their jobs, in one transaction."""
    now = utcnow()
    job_ids = [job_id for job_id in holders.values() if job_id is not None]
    with session_scope() as session:
        session.execute(update(ProjectLock).where(ProjectLock.holder.in_(list(holders))).values(heartbeat_at=now))
        if job_ids:
            free = (
                select(ConsolidationJob.id)
                .where(ConsolidationJob.id.in_(job_ids), ConsolidationJob.status == "running")
                .with_for_update(skip_locked=True)
            )
            session.execute(
                update(ConsolidationJob).where(ConsolidationJob.id.in_(free)).values(heartbeat_at=now),
                execution_options={"synchronize_session": False},
            )


_beater = _Beater()


@contextmanager
def beating(holder: str, job_id: uuid.UUID | None = None) -> Iterator[None]:
    """Keep ``holder``'s lock (and ``job_id``'s row) beating for the block."""
    _beater.add(holder, job_id)
    try:
        yield
    finally:
        _beater.remove(holder)
