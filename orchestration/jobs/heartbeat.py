"""Liveness of running jobs: a heartbeat written by the job's own process.

While a job attempt holds its project's lock, one daemon thread per process writes
``project_locks.heartbeat_at`` every :data:`INTERVAL`, whatever the job is doing (a
long similarity phase, a big batch). A worker's main process does the same for the
jobs whose messages it received but has not started yet: their rows stay
``pending`` with a ``heartbeat_at``, while a job still in the queue has none. A
heartbeat older than :data:`LOST_AFTER` belongs to a process that died: the reaper
re-sends the job, and its next attempt takes the lock over (``docs/reliability.md``).

The job row's ``heartbeat_at`` is refreshed in the same transaction where the row is
free; a batch transaction holding it refreshes it on commit, so the heartbeat never
waits for a batch (PostgreSQL ``SKIP LOCKED``; SQLite has one writer at a time).

A received job is beaten for only while the worker still holds its message (the
``held`` predicate given at receipt): once the task ended, or the worker dropped its
messages with a lost broker connection, the row's heartbeat stops and the reaper
re-sends the job if nothing else runs it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import select, update

from orchestration.logs import get_logger
from orchestration.store.db import session_scope
from orchestration.store.models import ConsolidationJob, ProjectLock, table_of
from orchestration.store.statuses import JobStatus
from orchestration.store.types import utcnow

INTERVAL = timedelta(seconds=10)
# Six missed beats: a process that stopped beating this long ago is dead (or frozen,
# in which case the fence on the job's attempt number stops it at its next write).
LOST_AFTER = timedelta(seconds=60)

# A receipt is marked within this long (plus one statement).
RECEIPT_PAUSE_S = 0.1
# A received job waits in these statuses until it starts.
WAITING = (JobStatus.PENDING, JobStatus.RETRYING)

log = get_logger("orchestration.jobs.heartbeat")


def worker_name() -> str:
    """Where an attempt runs, as the job row's ``worker`` names it: ``host:pid``, and
    the thread's name in a thread pool (``host:pid/name``), whose threads run jobs side
    by side in one process."""
    thread = threading.current_thread()
    suffix = "" if thread is threading.main_thread() else f"/{thread.name}"
    return f"{socket.gethostname()}:{os.getpid()}{suffix}"


class _Beater:
    """The process's heartbeat thread, the lock holders it beats for, and the jobs this
    worker received but has not started yet."""

    def __init__(self) -> None:
        self._holders: dict[str, uuid.UUID | None] = {}  # lock holder -> its job
        self._received: dict[uuid.UUID, Callable[[], bool]] = {}  # job -> is its message still held?
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._pid: int | None = None

    def start(self) -> None:
        with self._guard:
            self._start()

    def add(self, holder: str, job_id: uuid.UUID | None) -> None:
        with self._guard:
            self._start()
            self._holders[holder] = job_id

    def remove(self, holder: str) -> None:
        with self._guard:
            self._holders.pop(holder, None)

    def receive(self, job_id: uuid.UUID, held: Callable[[], bool]) -> None:
        with self._guard:
            self._start()
            self._received[job_id] = held
        self._wake.set()  # mark it at once: a worker may die before the job starts

    def _start(self) -> None:
        if self._pid != os.getpid():  # first use in this process, or a forked child
            self._pid = os.getpid()
            self._holders, self._received = {}, {}  # a child does not beat for its parent
            self._wake = threading.Event()
            threading.Thread(target=self._run, args=(self._wake,), name="orchestration-heartbeat", daemon=True).start()

    def _run(self, wake: threading.Event) -> None:
        while True:
            if wake.wait(INTERVAL.total_seconds()):
                # Receipts come in bursts (a chord of a thousand jobs): one statement for
                # all that arrive within this pause, not one per message.
                time.sleep(RECEIPT_PAUSE_S)
            wake.clear()
            with self._guard:
                holders = dict(self._holders)
                for job_id in [job_id for job_id, held in self._received.items() if not held()]:
                    del self._received[job_id]  # its message is gone: the task ended or was dropped
                received = set(self._received)
            if not (holders or received):
                continue
            try:
                waiting = beat(holders, received)
            except Exception as exc:  # noqa: BLE001 - keep beating; the job itself fails if the db is gone
                log.warning("heartbeat.failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
                continue
            with self._guard:
                for job_id in received - waiting:  # started (or finished) since: their lock beats now
                    self._received.pop(job_id, None)


def beat(holders: dict[str, uuid.UUID | None], received: AbstractSet[uuid.UUID] = frozenset()) -> set[uuid.UUID]:
    """Write one heartbeat for these lock holders and their jobs, and for the received
    jobs not started yet, in one transaction. Returns those not started yet."""
    now = utcnow()
    job_ids = [job_id for job_id in holders.values() if job_id is not None]
    jobs = table_of(ConsolidationJob)
    waiting: set[uuid.UUID] = set()
    with session_scope() as session:
        if holders:
            session.execute(update(ProjectLock).where(ProjectLock.holder.in_(list(holders))).values(heartbeat_at=now))
        if job_ids:
            free = (
                select(jobs.c.id)
                .where(jobs.c.id.in_(job_ids), jobs.c.status == JobStatus.RUNNING)
                .with_for_update(skip_locked=True)
            )
            session.execute(update(jobs).where(jobs.c.id.in_(free)).values(heartbeat_at=now))
        if received:
            waiting = set(
                session.scalars(
                    update(jobs)
                    .where(jobs.c.id.in_(list(received)), jobs.c.status.in_(WAITING))
                    .values(heartbeat_at=now)
                    .returning(jobs.c.id)
                )
            )
    return waiting


_beater = _Beater()


def warm() -> None:
    """Start this process's heartbeat thread and open its database connection now, so
    the first received job is marked within milliseconds (a worker's main process)."""
    _beater.start()
    with session_scope() as session:
        session.execute(select(1))


def received(job_id: uuid.UUID, held: Callable[[], bool]) -> None:
    """This worker holds the job's message: until the job starts, or ``held()`` says the
    worker no longer holds it, its row's heartbeat says so (a ``pending`` job whose
    heartbeat stopped was lost with its worker or its message)."""
    _beater.receive(job_id, held)


@contextmanager
def beating(holder: str, job_id: uuid.UUID | None = None) -> Iterator[None]:
    """Keep ``holder``'s lock (and ``job_id``'s row) beating for the block."""
    _beater.add(holder, job_id)
    try:
        yield
    finally:
        _beater.remove(holder)
