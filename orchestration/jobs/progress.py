"""A job's progress: the ``job.progress`` event and the job row's ``progress`` column."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import update

from orchestration.logs import get_logger
from orchestration.store.db import session_scope
from orchestration.store.models import ConsolidationJob
from orchestration.store.types import utcnow

INTERVAL_S = 2.0
log = get_logger(__name__)


class ProgressRecorder:
    """Progress callback of a job between its start and its end (``job.started`` and
    ``job.completed`` say those): logs ``job.progress`` and writes the job row, at most
    every ``interval`` seconds (default :data:`INTERVAL_S`), so a job shorter than
    that logs none. Progress never moves backwards, even across attempts."""

    def __init__(self, job_id: uuid.UUID, interval: float | None = None):
        self.job_id = job_id
        self.interval = INTERVAL_S if interval is None else interval
        self.last_write = time.monotonic()
        self.last_value = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if not 0.0 < fraction < 1.0 or fraction <= self.last_value or now - self.last_write < self.interval:
            return
        self.last_value, self.last_write = fraction, now
        log.info("job.progress", progress=round(fraction, 3), stage=stage)
        with session_scope() as session:
            session.execute(
                update(ConsolidationJob)
                .where(ConsolidationJob.id == self.job_id, ConsolidationJob.progress < fraction)
                .values(progress=fraction, heartbeat_at=utcnow())
            )
