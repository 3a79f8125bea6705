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
    """Progress callback: logs ``job.progress`` and writes the job row, at most every
    :data:`INTERVAL_S`. Progress never moves backwards, even across attempts; 0 and 1
    are not written (the start and the end of the job set those)."""

    def __init__(self, job_id: uuid.UUID, interval: float = INTERVAL_S):
        self.job_id = job_id
        self.interval = interval
        self.last_write = time.monotonic()
        self.last_value = -1.0

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        final = fraction >= 1.0
        if fraction <= self.last_value or (0.0 < fraction < 1.0 and now - self.last_write < self.interval):
            return
        self.last_value = fraction
        log.info("job.progress", progress=round(fraction, 3), stage=stage)
        if fraction > 0.0 and not final:
            self.last_write = now
            with session_scope() as session:
                session.execute(
                    update(ConsolidationJob)
                    .where(ConsolidationJob.id == self.job_id, ConsolidationJob.progress < fraction)
                    .values(progress=fraction, heartbeat_at=utcnow())
                )
