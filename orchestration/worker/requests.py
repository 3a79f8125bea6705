"""``run_project``'s request in a worker's main process (``JobRequest``).

From receipt until the job starts, the main process beats for it
(``heartbeat.received``) for as long as it still holds the message. When the child
process running a job dies (the OOM killer, a kill) or is killed at the hard time
limit, the job row says so before Celery requeues or acknowledges the message, so the
next delivery starts at once and a job that kills its worker every time stops after
its attempts (``docs/reliability.md``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery.worker import state as worker_state
from celery.worker.request import Request

from orchestration.jobs import heartbeat, recovery
from orchestration.logs import get_logger
from orchestration.settings import Settings, get_settings

log = get_logger(__name__)


def _held(task_id: str) -> bool:
    """Whether this worker still holds the message of ``task_id``: Celery keeps every
    request it received, scheduled or runs in ``requests`` until the task is done, and
    drops the ones it cannot acknowledge any more when its broker connection closes."""
    return task_id in worker_state.requests


class JobRequest(Request):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        job_id = self._job_id()
        if job_id is not None:
            heartbeat.received(job_id, partial(_held, self.id))

    def _job_id(self) -> uuid.UUID | None:
        value = (list(self.args or ()) or [(self.kwargs or {}).get("job_id")])[0]
        try:
            return uuid.UUID(str(value))
        except ValueError:
            return None

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = exc_info.exception
        exc = exc.exc if isinstance(exc, ExceptionWithTraceback) else exc
        if isinstance(exc, WorkerLostError):
            self._record(recovery.worker_lost, str(exc).splitlines()[0][:300])
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft:
            self._record(recovery.hard_time_limit, f"killed at the hard time limit of {timeout}s")
        super().on_timeout(soft, timeout)

    def _record(self, function: Callable[[uuid.UUID, Settings, str], None], detail: str) -> None:
        job_id = self._job_id()
        if job_id is None:
            return
        try:
            function(job_id, get_settings(), detail)
        except Exception as exc:  # noqa: BLE001 - never keep Celery from requeueing; the reaper acts later
            log.error(
                "worker.record_failed",
                detail=detail,
                error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                job_id=str(job_id),
            )
