"""Rolling a finished job back (``orchestration jobs rollback``): its merges and
archives undone (``orchestration.consolidation.audit``) and the job marked rolled back
by the ``roll back`` transition, in the caller's transaction."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestration.consolidation.audit import RollbackResult, rollback_job
from orchestration.jobs import transitions
from orchestration.store.models import ConsolidationJob
from orchestration.store.types import utcnow

# A job is rolled back once.
ONCE = (ConsolidationJob.rolled_back_at.is_(None), "it was rolled back already")


def roll_back(
    session: Session, job_id: uuid.UUID, retention_days: int, changed_by: str = "rollback", now: datetime | None = None
) -> RollbackResult:
    """Undo every merge and archive of the job and record when and by whom; raises
    ``RollbackRefused`` (nothing changed) as :func:`rollback_job` does."""
    now = now or utcnow()
    result = rollback_job(session, job_id, retention_days, changed_by=changed_by, now=now)
    attempts = session.scalar(select(ConsolidationJob.attempts).where(ConsolidationJob.id == job_id)) or 0
    values = {"rolled_back_at": now, "rolled_back_by": changed_by}
    transitions.apply(session, transitions.ROLL_BACK, job_id, attempts, now, values, unless=ONCE)
    return result
