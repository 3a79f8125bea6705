"""Celery tasks (SPEC §4). Each is thin: parse ids, call the plain functions in
runs/jobs/reaper/audit, log the events. Every task is safe to run twice.

A run's chord has fixed ids: the header's group id is the run id, each job's task id
is the job id, and its place in the header is its place in :func:`runs.chord_order`.
So the reaper can re-send a job whose worker died into the same chord, and whichever
of its deliveries finishes counts once (Celery's Redis backend keys chord parts by
task id and place)."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import Signature, chord
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from celery.worker.request import Request
from sqlalchemy.exc import SQLAlchemyError

from orchestration import audit, consolidation, heartbeat, jobs, notify, reaper, runs
from orchestration.celery_app import app
from orchestration.db import session_scope
from orchestration.dbtypes import utcnow
from orchestration.logs import get_logger
from orchestration.models import ConsolidationJob
from orchestration.schedule import parse_slot, previous_slot
from orchestration.settings import get_settings

log = get_logger("orchestration.tasks")
_settings = get_settings()
# First retry waits up to this many seconds (full jitter), doubling each time up to the cap.
RETRY_BACKOFF_BASE = 30
# How often the chord callback looks again when a redelivered job is still running.
FINALIZE_WAIT_S = 15


def _uuid(value: Any, name: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        log.error("task.rejected", reason=f"{name} {str(value)[:64]!r} is not a UUID")
        return None


@app.task(name="consolidation.run_scheduled")
def run_scheduled(slot: str | None = None, trigger: str = "scheduled", run_id: str | None = None) -> dict[str, Any]:
    """Claim the run for a schedule slot (or start a manual run) and dispatch its chord."""
    settings = get_settings()
    if trigger not in ("scheduled", "manual"):
        log.error("task.rejected", reason=f"unknown trigger {trigger!r}")
        return {"status": "rejected"}
    now = utcnow()
    slot_at = None
    if trigger == "scheduled":
        slot_at = parse_slot(slot) if slot else previous_slot(settings.crontab, now, settings.tz)
    with session_scope() as session:
        started = runs.start_run(
            session,
            trigger,
            slot_at,
            settings.default_threshold,
            now,
            run_id=_uuid(run_id, "run_id") if run_id else None,
        )
        existing = None if started else runs.existing_run_for_slot(session, slot_at) if slot_at else None
        orphaned = runs.undispatched_jobs(session, existing, now) if existing else None
    if started is None:
        if existing is not None and orphaned is not None:
            # This message is the redelivery of a claim whose process died before it
            # sent the chord: send it now, or the run would wait for the reaper.
            structlog.contextvars.bind_contextvars(run_id=str(existing.id))
            log.warning("run.redispatched", jobs=len(orphaned))
            _dispatch(existing.id, orphaned)
            return {"status": "redispatched", "run_id": str(existing.id)}
        log.info(
            "run.duplicate_skipped",
            scheduled_for=slot_at.isoformat() if slot_at else None,
            run_id=str(existing.id) if existing else run_id,
        )
        return {"status": "duplicate", "run_id": str(existing.id) if existing else run_id}
    run_key = str(started.run_id)
    structlog.contextvars.bind_contextvars(run_id=run_key)
    log.info("run.started", trigger_type=trigger, scheduled_for=slot_at.isoformat() if slot_at else None)
    log.info(
        "run.eligible",
        projects_checked=started.checked,
        projects_eligible=started.eligible,
        projects_skipped=started.skipped,
    )
    _dispatch(started.run_id, started.job_ids)
    return {"status": "started", "run_id": run_key, "jobs": len(started.job_ids)}


def _dispatch(run_id: uuid.UUID, job_ids: list[uuid.UUID]) -> None:
    """Send the run's chord (or close an empty run at once), then record that it was sent."""
    run_key = str(run_id)
    if not job_ids:
        finalize_run([], run_key)
        return
    header = [_job_signature(job_id) for job_id in runs.chord_order(job_ids)]
    # The chord's own task_id becomes the header's group id; the callback gets its own.
    chord(header, task_id=run_key)(_callback(run_key), task_id=str(uuid.uuid4()))
    with session_scope() as session:
        runs.mark_dispatched(session, run_id, utcnow())


def _callback(run_key: str) -> Signature:
    return finalize_run.s(run_key).on_error(fail_run.s(run_key))


def _job_signature(job_id: uuid.UUID | str) -> Signature:
    return run_project.s(str(job_id)).set(task_id=str(job_id))


def _resend(lost: reaper.LostJob) -> None:
    """Send a job whose worker died into its run's chord again, in its own place."""
    run_key = lost.ids["run_id"]
    assert run_key is not None and lost.ids["job_id"] is not None
    _job_signature(lost.ids["job_id"]).set(
        group_id=run_key, group_index=lost.group_index, chord=_callback(run_key)
    ).apply_async()


class JobRequest(Request):
    """``run_project``'s request in the worker's main process. From receipt until the
    job starts, the main process beats for it (``heartbeat.received``). When the child
    process running a job dies (the OOM killer, a kill) or is killed at the hard time
    limit, the job row says so before Celery requeues or acknowledges the message, so
    the next delivery starts at once and a job that kills its worker every time stops
    after its attempts (``docs/reliability.md``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        job_id = self._job_id()
        if job_id is not None:
            heartbeat.received(job_id)

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
            self._record(jobs.worker_lost, str(exc).splitlines()[0][:300])
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft:
            self._record(jobs.hard_time_limit, f"killed at the hard time limit of {timeout}s")
        super().on_timeout(soft, timeout)

    def _record(self, function: Any, detail: str) -> None:
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


@app.task(
    name="consolidation.run_project",
    bind=True,
    soft_time_limit=_settings.job_time_limit,
    time_limit=_settings.job_hard_limit,
    rate_limit=_settings.project_rate_limit,
    Request=JobRequest,
)
def run_project(self, job_id: str) -> dict[str, Any]:
    """Consolidate one job's project; retries transient failures, never raises at the end."""
    settings = get_settings()
    job_uuid = _uuid(job_id, "job_id")
    if job_uuid is None:
        return {"job_id": str(job_id)[:64], "status": "rejected"}
    attempt = None
    try:
        attempt = jobs.begin_attempt(job_uuid, settings, self.request.id)
        if attempt is None:
            return _already_finished(job_uuid)
        _bind_job(attempt.run_id, attempt.project_id)
        log.info("job.started", attempt=attempt.number)
        return jobs.execute(attempt).as_dict()
    except jobs.JobNotFound as exc:
        log.error("task.rejected", reason=str(exc))
        return {"job_id": job_id, "status": "unknown"}
    except jobs.AlreadyRunning as exc:
        # A duplicate delivery while the attempt is alive (a broker redelivery, a
        # re-send racing the original): acknowledge it; the live attempt counts.
        _bind_job(exc.run_id, exc.project_id)
        log.info("job.already_running", reason=str(exc))
        raise Ignore() from None
    except consolidation.Superseded:
        raise Ignore() from None  # the newer attempt owns the job and its chord part
    except Ignore:
        raise  # Celery's own control flow, not an error to retry
    except SoftTimeLimitExceeded:
        error = (
            f"exceeded the soft time limit of {settings.job_time_limit}s (ORCHESTRATION_JOB_TIME_LIMIT); "
            "changes committed so far are kept"
        )
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        # Every start counts, starts whose worker died too; a start that was never
        # recorded (the database was unreachable) counts by Celery's retries.
        number = attempt.number if attempt else self.request.retries + 1
        if number <= settings.max_retries and self.request.retries < settings.max_retries:
            countdown = get_exponential_backoff_interval(
                RETRY_BACKOFF_BASE, self.request.retries, settings.retry_backoff_max, full_jitter=True
            )
            if attempt is not None and not _best_effort(jobs.mark_retrying, job_uuid, error):
                # The attempt's lock could not be freed (the database is unreachable):
                # retry once it has gone stale, or the retry would take it for a live
                # attempt and stand down.
                countdown = max(countdown, heartbeat.LOST_AFTER.total_seconds() + 1)
            log.warning("job.retrying", attempt=number, countdown=countdown, error=error)
            raise self.retry(countdown=countdown, max_retries=settings.max_retries) from exc
    attempt = attempt or jobs.Attempt(job_uuid, None, None, self.request.retries + 1, 0.0)
    outcome = _best_effort(jobs.fail, attempt, error)
    if outcome is None:
        log.error("job.failed", attempts=attempt.number, error=f"{error} (not recorded: database unreachable)")
        outcome = jobs.JobOutcome(str(job_uuid), "failed", error)
    return outcome.as_dict()


def _best_effort(function: Any, *args: Any) -> Any:
    """Record a state change if the database can be reached; the chord must go on either
    way (the run is then finalized from what the rows say). ``None`` if it could not."""
    try:
        return function(*args)
    except SQLAlchemyError:
        return None


def _bind_job(run_id: uuid.UUID | None, project_id: uuid.UUID | None) -> None:
    """Log lines of a job carry its run and project (job_id is bound from the arguments)."""
    structlog.contextvars.bind_contextvars(
        run_id=str(run_id) if run_id else None, project_id=str(project_id) if project_id else None
    )


def _already_finished(job_id: uuid.UUID) -> dict[str, Any]:
    with session_scope() as session:
        job = session.get_one(ConsolidationJob, job_id)
        status, error = job.status, job.error_message
        _bind_job(job.run_id, job.project_id)
    log.info("job.already_finished", status=status)
    return {"job_id": str(job_id), "status": status, "error": error}


@app.task(
    name="consolidation.finalize_run",
    bind=True,
    # The database may be briefly unreachable at the end of a run: Celery's own
    # retry with backoff; if it never comes back, the errback and then the reaper act.
    autoretry_for=(SQLAlchemyError,),
    retry_backoff=True,
    retry_backoff_max=_settings.retry_backoff_max,
    retry_jitter=True,
    max_retries=_settings.max_retries,
)
def finalize_run(self, results: list[Any] | None, run_id: str, callback_error: str | None = None) -> dict[str, Any]:
    """Chord callback: summarize the run from its job rows, log, notify. Idempotent.

    If a job of the run is still unfinished (its message was redelivered after the
    chord gave up on it), wait for it, up to the run deadline."""
    run_uuid = _uuid(run_id, "run_id")
    if run_uuid is None:
        return {"status": "rejected"}
    settings = get_settings()
    with session_scope() as session:
        waiting = runs.waiting_for_jobs(session, run_uuid, utcnow(), settings.run_deadline)
    if waiting:
        # Bounded by the deadline, after which waiting_for_jobs is False.
        raise self.retry(countdown=FINALIZE_WAIT_S, max_retries=self.request.retries + 1)
    try:
        return _close_run(run_uuid, callback_error=callback_error)
    except SQLAlchemyError:
        raise
    except Exception as exc:
        if callback_error is None:
            raise  # the errback sends one more finalize, carrying this error
        # The summary cannot be written at all: the backstop marks the run failed.
        error = f"{callback_error}; finalizing again failed: {type(exc).__name__}: {exc}"[:500]
        with session_scope() as session:
            run = runs.mark_failed(session, run_uuid, error)
            fields = runs.finished_fields(run) if run else None
        if fields:
            log.error("run.finished", **fields)
        return {"run_id": run_id, "status": "failed"}


@app.task(name="consolidation.fail_run")
def fail_run(request: Any, exc: Any, traceback: Any, run_id: str) -> None:
    """Errback of the chord callback (a job's result could not be stored, or the callback
    raised): finalize again from the job rows, which are the truth, noting the error.
    The run never stays ``running``: if this cannot be sent, the reaper closes it."""
    error = f"run callback failed: {type(exc).__name__}: {exc}"[:500]
    finalize_run.apply_async(args=[[], run_id], kwargs={"callback_error": error})


def _close_run(run_id: uuid.UUID, callback_error: str | None = None) -> dict[str, Any]:
    structlog.contextvars.bind_contextvars(run_id=str(run_id))
    with session_scope() as session:
        run = runs.finalize(session, run_id, callback_error=callback_error)
        if run is None:
            return {"run_id": str(run_id), "status": "already_finished"}
        fields, summary = runs.finished_fields(run), runs.summary_document(run)
    _announce(fields, summary)
    return {"run_id": str(run_id), "status": fields["status"]}


def _announce(fields: dict[str, Any], summary: dict[str, Any]) -> None:
    log.info("run.finished", **fields)
    url = get_settings().notify_url
    if url:
        notify.post_summary(url, summary)


@app.task(name="consolidation.reap_stale")
def reap_stale() -> dict[str, Any]:
    """Re-send or fail jobs whose worker died; finalize runs past the deadline."""
    with session_scope() as session:
        reaped = reaper.reap(session, get_settings(), utcnow())
        closed = [
            (run.id, reason, runs.finished_fields(run), runs.summary_document(run)) for run, reason in reaped.runs
        ]
    for lost in reaped.lost:
        jobs.log_lost(lost.ids, lost.attempt, lost.error, lost.status, lost.final_error)
    for lost in reaped.resend:
        _resend(lost)
    for run_id, reason, fields, summary in closed:
        with structlog.contextvars.bound_contextvars(run_id=str(run_id)):
            log.warning("run.reaped", reason=reason)
            _announce(fields, summary)
    return {"lost": len(reaped.lost), "resent": len(reaped.resend), "runs": len(closed)}


@app.task(name="consolidation.prune_audit")
def prune_audit() -> dict[str, Any]:
    """Delete audit rows older than the retention period, in bounded batches."""
    rows = audit.prune_audit(session_scope, get_settings().audit_retention_days)
    log.info("audit.pruned", rows=rows)
    return {"rows": rows}
