"""Task base classes: what every task body would otherwise repeat.

:class:`OrchestrationTask` parses the UUID arguments a task names in ``id_args`` (a
malformed one is logged as ``task.rejected`` and the task returns
``{"status": "rejected"}``) and binds the task and those ids to the log context.
:class:`JobTask` adds the retry policy of ``consolidation.run_project``.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any, ClassVar, TypeVar

import structlog
from celery import Task
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy.exc import SQLAlchemyError

from orchestration.consolidation.errors import DataError
from orchestration.jobs import heartbeat, lifecycle, transitions
from orchestration.logs import get_logger
from orchestration.settings import Settings, get_settings
from orchestration.store import db
from orchestration.store.statuses import JobStatus
from orchestration.store.types import utcnow

log = get_logger(__name__)
T = TypeVar("T")

# First retry waits up to this many seconds (full jitter), doubling each time up to the cap.
RETRY_BACKOFF_BASE = 30
# While the database is unreachable a task looks again after a backoff from this base
# up to this cap: an outage costs its duration plus at most a minute.
OUTAGE_BACKOFF_BASE = 5
OUTAGE_BACKOFF_MAX = 60
# A chord's delivery whose job another delivery is running looks again after this long.
RECHECK_S = 15


class OrchestrationTask(Task):
    """Parses ``id_args``, binds the log context (cleared after the task by the
    ``task_postrun`` handler, so Celery's own lines about the task carry it too).
    Tasks are run by a worker, never called directly: the request must be Celery's."""

    id_args: ClassVar[tuple[str, ...]] = ()
    # A message whose body does not fit the task is rejected, never allowed to stop the worker.
    Strategy = "orchestration.worker.strategy:guarded"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(task_id=self.request.id, task=self.name)
        try:
            bound = inspect.signature(self.run).bind(*args, **kwargs)
        except TypeError:
            return self.run(*args, **kwargs)  # Celery reports the bad call
        for name in self.id_args:
            value = bound.arguments.get(name)
            if value is None:
                continue
            try:
                bound.arguments[name] = uuid.UUID(str(value))
            except ValueError:
                shown = str(value)[:64]
                log.error("task.rejected", reason=f"{name} {shown!r} is not a UUID")
                return {name: shown, "status": "rejected"}
            structlog.contextvars.bind_contextvars(**{name: str(bound.arguments[name])})
        return self.invoke(*bound.args, **bound.kwargs)

    def invoke(self, *args: Any, **kwargs: Any) -> Any:
        """The task body with parsed ids; subclasses wrap it in their policy."""
        return self.run(*args, **kwargs)


def retry_countdown(retries: int, settings: Settings, lock_freed: bool = True) -> float:
    """Seconds before retry number ``retries + 1``: exponential backoff with full jitter.
    If the failed attempt's lock could not be freed (the database is unreachable),
    wait until it has gone stale, or the retry would take it for a live attempt."""
    countdown = get_exponential_backoff_interval(RETRY_BACKOFF_BASE, retries, settings.retry_backoff_max, True)
    if not lock_freed:
        countdown = max(countdown, heartbeat.LOST_AFTER.total_seconds() + 1)
    return countdown


def outage_countdown(retries: int) -> float:
    """Seconds before looking again for a database that was unreachable: exponential
    backoff with full jitter, from :data:`OUTAGE_BACKOFF_BASE` up to
    :data:`OUTAGE_BACKOFF_MAX`, never less than one second."""
    return max(1.0, get_exponential_backoff_interval(OUTAGE_BACKOFF_BASE, retries, OUTAGE_BACKOFF_MAX, True))


def wait_out_outage(task: Task, exc: BaseException, kwargs: dict[str, Any] | None = None) -> Retry:
    """The database is unreachable: send the task again after :func:`outage_countdown`,
    as often as it takes (the run's deadline bounds how long its run waits). Not a
    failure of the task's work: it counts against no retry limit. ``kwargs`` replaces the
    message's arguments (all given by name). Returns Celery's ``Retry`` for the caller
    to raise."""
    countdown = outage_countdown(task.request.retries)
    log.warning("database.unreachable", countdown=round(countdown, 1), error=lifecycle.describe(_root(exc)))
    # Both engines' pooled connections died with the server (or its network): start
    # afresh, or the first statement after its return would meet a dead connection.
    db.dispose(close=False)
    if kwargs is None:
        return task.retry(countdown=countdown, max_retries=unbounded(task))
    return task.retry(args=[], kwargs=kwargs, countdown=countdown, max_retries=unbounded(task))


def unbounded(task: Task) -> int:
    """A ``max_retries`` for ``Task.retry`` that never stops this retry (``None`` there
    means the task's own limit): the caller's own count decides."""
    return int(task.request.retries) + 1


def _root(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def best_effort(function: Callable[..., T], *args: Any) -> T | None:
    """Record a state change if the database can be reached; the chord must go on either
    way (the run is then finalized from what the rows say). ``None`` if it could not."""
    try:
        return function(*args)
    except SQLAlchemyError:
        return None


class JobTask(OrchestrationTask):
    """``consolidation.run_project``: how an attempt's end becomes the task's end.

    - a duplicate delivery while the attempt is alive, or an attempt that a newer one
      superseded: acknowledged with ``Ignore`` (the live attempt counts). But when the
      live attempt was started by another message (one sent by hand, outside the
      run's chord), this delivery is the one its chord waits for: it is sent again,
      as it is, to look after :data:`RECHECK_S` and report the job's outcome;
    - an unknown job: ``task.rejected``;
    - the database unreachable (at the start, or during the attempt): waited out
      (:func:`wait_out_outage`); an attempt that it cut short does not count, its
      retry gives it back (``spare_attempt``, :func:`lifecycle.spare_attempt`);
    - bad data (:class:`DataError`): the job fails at once, naming the memory and field;
    - another failure: retried with backoff while attempts are left (every start
      counts, starts whose worker died too), else the job fails; a soft time limit
      fails it at once. The task never raises at the end: the chord always gets a result.
    """

    id_args = ("job_id",)

    def invoke(self, job_id: uuid.UUID, spare_attempt: int | None = None, failed_at: str | None = None) -> Any:
        try:
            if spare_attempt is not None and failed_at is not None:
                lifecycle.spare_attempt(job_id, spare_attempt, datetime.fromisoformat(failed_at))
            return self.run(job_id)
        except lifecycle.JobNotFound as exc:
            log.error("task.rejected", reason=str(exc))
            return {"job_id": str(job_id), "status": "unknown"}
        except lifecycle.AlreadyRunning as exc:
            # The chord's own delivery, while another message runs its job, looks again.
            recheck = self.request.chord is not None and exc.task_id != self.request.id
            log.info("job.already_running", reason=str(exc), recheck_in_s=RECHECK_S if recheck else None)
            if recheck:
                # Same task id, place in the chord and retry count: not a retry, a later look.
                self.signature_from_request(countdown=RECHECK_S).apply_async()
            raise Ignore() from None
        except lifecycle.Superseded:
            raise Ignore() from None
        except (Ignore, Retry):
            raise  # Celery's own control flow
        except Exception as exc:  # every failure is waited out, retried or recorded: the chord gets a result
            if db.unreachable(exc):
                raise self._outage(job_id, exc, spare_attempt, failed_at) from exc
            return self._failed(job_id, exc)

    def _outage(self, job_id: uuid.UUID, exc: Exception, spare_attempt: int | None, failed_at: str | None) -> Retry:
        """Wait the outage out. An attempt it cut short is given back by the retry, once the
        database answers again (the lock that attempt holds is freed then too)."""
        if isinstance(exc, lifecycle.AttemptFailed):
            spare_attempt, failed_at = exc.attempt, utcnow().isoformat()
        kwargs: dict[str, Any] = {"job_id": str(job_id)}
        if spare_attempt is not None:
            kwargs.update(spare_attempt=spare_attempt, failed_at=failed_at)
        return wait_out_outage(self, exc, kwargs)

    def _failed(self, job_id: uuid.UUID, exc: Exception) -> dict[str, Any]:
        settings = get_settings()
        started = isinstance(exc, lifecycle.AttemptFailed)
        # A start that failed before it was recorded is counted by Celery's retries:
        # the job row cannot count what never reached it.
        number = exc.attempt if isinstance(exc, lifecycle.AttemptFailed) else self.request.retries + 1
        cause = exc.__cause__ if started else exc
        if isinstance(cause, SoftTimeLimitExceeded):
            error = (
                f"exceeded the soft time limit of {settings.job_time_limit}s (ORCHESTRATION_JOB_TIME_LIMIT); "
                "changes committed so far are kept"
            )
        elif isinstance(cause, DataError):
            error = f"bad data, not retried: {cause}"[:500]
        else:
            error = str(exc) if started else lifecycle.describe(exc)
            if transitions.attempts_left(number, settings):
                freed = not started or best_effort(lifecycle.mark_retrying, job_id, error, number) is not None
                countdown = retry_countdown(number - 1, settings, lock_freed=freed)
                log.warning("job.retrying", attempt=number, countdown=countdown, error=error)
                retry = self.retry(
                    args=[], kwargs={"job_id": str(job_id)}, countdown=countdown, max_retries=unbounded(self)
                )
                raise retry from exc
        try:
            outcome = best_effort(partial(lifecycle.fail, fenced=started), job_id, number, error)
        except lifecycle.Superseded:
            raise Ignore() from None  # a newer attempt runs the job and reports it
        if outcome is None:
            log.error("job.failed", attempts=number, error=f"{error} (not recorded: database unreachable)")
            outcome = lifecycle.JobOutcome(str(job_id), JobStatus.FAILED, error)
        return outcome.as_dict()
