"""Celery tasks (SPEC §4). Each is thin: its base class parses the ids and binds the
log context (``orchestration.worker.base``); the body calls the plain functions of
``nightly`` and ``jobs`` and logs. Every task is safe to run twice.

A run's chord has fixed ids: the header's group id is the run id, each job's task id
is the job id, and its place in the header is its place in :func:`runs.chord_order`
(creation order, largest project first).
So the reaper can re-send a job whose worker died into the same chord, and whichever
of its deliveries finishes counts once (Celery's Redis backend keys chord parts by
task id and place).

Time limits, rate limit and ``finalize_run``'s retry bounds come from the settings
through ``task_annotations`` (``orchestration.celery_app``), not from import time.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from celery import Signature, chord
from sqlalchemy.exc import SQLAlchemyError

from orchestration.celery_app import app
from orchestration.consolidation import audit
from orchestration.jobs import lifecycle, recovery
from orchestration.logs import get_logger
from orchestration.nightly import notify, reaper, retries, runs
from orchestration.nightly.schedule import scheduled_slot
from orchestration.settings import get_settings
from orchestration.store.db import session_scope, unreachable
from orchestration.store.statuses import RunStatus, TriggerType
from orchestration.store.types import utcnow
from orchestration.worker import signals  # noqa: F401 - connects the worker's start-up hooks
from orchestration.worker.base import JobTask, OrchestrationTask, unbounded, wait_out_outage
from orchestration.worker.requests import JobRequest

log = get_logger(__name__)
# How often the chord callback looks again when a redelivered job is still running.
FINALIZE_WAIT_S = 15


@app.task(name="consolidation.run_scheduled", base=OrchestrationTask, id_args=("run_id", "retry_of"), bind=True)
def run_scheduled(
    self: OrchestrationTask,
    slot: str | None = None,
    trigger: str = TriggerType.SCHEDULED,
    run_id: uuid.UUID | None = None,
    backfill: bool = False,
    schedule: str | None = None,
    timezone: str | None = None,
    projects: list[str] | None = None,
    retry_of: uuid.UUID | None = None,
    full: bool = False,
) -> dict[str, Any]:
    """Claim the run for a schedule slot (or start a manual run) and dispatch its chord.

    Beat's message carries beat's own ``schedule`` and ``timezone``: the slot is worked
    out with them (beat is the clock), and a worker configured otherwise says so
    (``schedule.mismatch``, and ``health`` fails) instead of skipping nights. A slot
    given by hand must not be in the future, and must be one the schedule produces
    unless ``backfill``. While the database is unreachable the task waits, its slot
    fixed, so a night is claimed late rather than lost.

    ``projects`` (project ids) and ``retry_of`` (a run id), with a manual trigger only:
    the run consolidates just those projects and is linked to the run it retries
    (``runs retry``). ``full``: every job makes a full pass (``run-now --full``)."""
    settings = get_settings()
    if trigger not in tuple(TriggerType):
        log.error("task.rejected", reason=f"unknown trigger {trigger!r}")
        return {"status": "rejected"}
    try:
        project_ids = retries.retry_message(TriggerType(trigger), projects, retry_of)
    except ValueError as exc:
        log.error("task.rejected", reason=str(exc)[:300])
        return {"status": "rejected", "error": str(exc)[:300]}
    now = utcnow()
    slot_at = mismatch = None
    if trigger == TriggerType.SCHEDULED:
        try:
            slot_at, mismatch = scheduled_slot(settings, now, slot, backfill=backfill, beat=(schedule, timezone))
        except ValueError as exc:
            log.error("task.rejected", reason=str(exc)[:300])
            return {"status": "rejected", "error": str(exc)[:300]}
        if mismatch:
            log.error("schedule.mismatch", **mismatch.log_fields())
    try:
        with session_scope() as session:
            claim = runs.claim(
                session,
                TriggerType(trigger),
                slot_at,
                settings.default_threshold,
                now,
                run_id=run_id,
                notes=mismatch.note() if mismatch else None,
                projects=project_ids,
                retry_of=retry_of,
                full=full is True,
            )
    except SQLAlchemyError as exc:
        if not unreachable(exc):
            raise
        kwargs: dict[str, Any] = {
            "slot": slot_at.isoformat() if slot_at else None,
            "trigger": trigger,
            "run_id": str(run_id) if run_id else None,
            "backfill": backfill,
            "schedule": schedule,
            "timezone": timezone,
        }
        if project_ids is not None:  # only when set: the message stays what older workers take
            kwargs["projects"] = [str(p) for p in project_ids]
        if retry_of is not None:
            kwargs["retry_of"] = str(retry_of)
        if full is True:
            kwargs["full"] = True
        raise wait_out_outage(self, exc, kwargs) from exc
    _log_claim(claim, slot_at.isoformat() if slot_at else None)
    if claim.dispatch is not None and claim.run_id is not None:
        _dispatch(claim.run_id, claim.dispatch)
    return claim.as_dict()


def _log_claim(claim: runs.Claim, scheduled_for: str | None) -> None:
    if claim.status == "duplicate":
        log.info(
            "run.duplicate_skipped", scheduled_for=scheduled_for, run_id=str(claim.run_id) if claim.run_id else None
        )
        return
    structlog.contextvars.bind_contextvars(run_id=str(claim.run_id))
    if claim.started is None:
        # The redelivery of a claim whose process died before it sent the chord: send
        # it now, or the run would wait for the reaper.
        log.warning("run.redispatched", jobs=len(claim.dispatch or ()))
        return
    log.info("run.started", trigger_type=claim.started.trigger_type, scheduled_for=scheduled_for)
    log.info(
        "run.eligible",
        projects_checked=claim.started.checked,
        projects_eligible=claim.started.eligible,
        projects_skipped=claim.started.skipped,
    )


def _dispatch(run_id: uuid.UUID, job_ids: list[uuid.UUID]) -> None:
    """Send the run's chord (or close an empty run at once), then record that it was sent."""
    run_key = str(run_id)
    if not job_ids:
        _close_run(run_id)
        return
    header = [_job_signature(job_id) for job_id in job_ids]  # in runs.chord_order
    # The chord's own task_id becomes the header's group id; the callback gets its own.
    chord(header, task_id=run_key)(_callback(run_key), task_id=str(uuid.uuid4()))
    with session_scope() as session:
        runs.mark_dispatched(session, run_id, utcnow())


def _callback(run_key: str) -> Signature:
    return finalize_run.s(run_key).on_error(fail_run.s(run_key))


def _job_signature(job_id: uuid.UUID | str) -> Signature:
    return run_project.s(str(job_id)).set(task_id=str(job_id))


def _resend(lost: reaper.LostJob) -> None:
    """Send a job whose worker died (or whose message was lost) into its run's chord
    again, in its own place."""
    run_key = lost.ids["run_id"]
    assert run_key is not None and lost.ids["job_id"] is not None
    _job_signature(lost.ids["job_id"]).set(
        group_id=run_key, group_index=lost.group_index, chord=_callback(run_key)
    ).apply_async()


@app.task(name="consolidation.run_project", base=JobTask, bind=True, Request=JobRequest)
def run_project(
    self: JobTask, job_id: uuid.UUID, spare_attempt: int | None = None, failed_at: str | None = None
) -> dict[str, Any]:
    """Consolidate one job's project: one attempt; :class:`JobTask` retries or ends it
    (and handles ``spare_attempt`` and ``failed_at``, which only its own retries send)."""
    return lifecycle.run(job_id, get_settings(), celery_task_id=self.request.id).as_dict()


@app.task(
    name="consolidation.finalize_run",
    base=OrchestrationTask,
    id_args=("run_id",),
    bind=True,
    # Other database errors: Celery's own retry with backoff (bounds from the settings);
    # if they persist, the errback and then the reaper act. An unreachable database is
    # waited out instead (wait_out_outage).
    autoretry_for=(SQLAlchemyError,),
    retry_backoff=True,
    retry_jitter=True,
)
def finalize_run(
    self: OrchestrationTask, results: list[Any] | None, run_id: uuid.UUID, callback_error: str | None = None
) -> dict[str, Any]:
    """Chord callback: summarize the run from its job rows, log, notify. Idempotent.

    If a job of the run is still unfinished (its message was redelivered after the
    chord gave up on it), wait for it, up to the run deadline."""
    settings = get_settings()
    try:
        with session_scope() as session:
            waiting = runs.waiting_for_jobs(session, run_id, utcnow(), settings.run_deadline)
        if not waiting:
            return _close_run(run_id, callback_error=callback_error)
    except SQLAlchemyError as exc:
        if unreachable(exc):
            raise wait_out_outage(self, exc) from exc
        raise
    except Exception as exc:  # noqa: BLE001 - the errback or the backstop closes the run
        return _backstop(run_id, callback_error, exc)
    # Bounded by the deadline, after which waiting_for_jobs is False.
    raise self.retry(countdown=FINALIZE_WAIT_S, max_retries=unbounded(self))


def _backstop(run_id: uuid.UUID, callback_error: str | None, exc: Exception) -> dict[str, Any]:
    """The summary could not be computed: the errback tries once more, then the run is
    marked failed with both errors."""
    if callback_error is None:
        raise exc  # the errback sends one more finalize, carrying this error
    error = f"{callback_error}; finalizing again failed: {type(exc).__name__}: {exc}"[:500]
    with session_scope() as session:
        run = runs.mark_failed(session, run_id, error)
        fields = runs.finished_fields(run) if run else None
    if fields:
        log.error("run.finished", **fields)
    return {"run_id": str(run_id), "status": RunStatus.FAILED}


@app.task(name="consolidation.fail_run", base=OrchestrationTask)
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
    """``run.finished``, and the webhook as a task of its own: a slow or dead endpoint
    never holds up the callback or the reaper."""
    log.info("run.finished", **fields)
    if get_settings().notify_url:
        try:
            post_summary.delay(summary)
        except Exception as exc:  # noqa: BLE001 - the run is closed; only its notification is lost
            log.warning("notify.failed", error=f"not sent to the broker: {lifecycle.describe(exc)}")


@app.task(name="consolidation.notify", base=OrchestrationTask)
def post_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """POST a finished run's summary to ``ORCHESTRATION_NOTIFY_URL``: a bounded number of
    attempts, each with one total deadline; never retried by Celery (a late summary is
    worth less than a free worker)."""
    settings = get_settings()
    if not settings.notify_url:
        return {"sent": False}
    with structlog.contextvars.bound_contextvars(run_id=str(summary.get("id"))):
        sent = notify.post_summary(settings.notify_url, summary, allow_private=settings.notify_allow_private)
    return {"sent": sent}


@app.task(name="consolidation.reap_stale", base=OrchestrationTask)
def reap_stale() -> dict[str, Any]:
    """Re-send or fail jobs whose worker died, re-send jobs whose messages the broker
    lost, and finalize runs past the deadline or whose callback never came."""
    with session_scope() as session:
        reaped = reaper.reap(session, get_settings(), utcnow())
        unreceived = reaper.unreceived_jobs(session, utcnow())
        closed = [
            (run.id, reason, runs.finished_fields(run), runs.summary_document(run)) for run, reason in reaped.runs
        ]
    for lost in reaped.lost:
        recovery.log_lost(lost.ids, lost.attempt, lost.error, lost.status, lost.final_error)
    for lost in reaped.resend:
        _resend(lost)
    lost_messages = _lost_messages(unreceived)
    for run_id, reason, fields, summary in closed:
        with structlog.contextvars.bound_contextvars(run_id=str(run_id)):
            log.warning("run.reaped", reason=reason)
            _announce(fields, summary)
    return {"lost": len(reaped.lost), "resent": len(reaped.resend) + lost_messages, "runs": len(closed)}


def _lost_messages(unreceived: list[reaper.LostJob]) -> int:
    """Re-send the unreceived jobs if the queue holds fewer messages than there are of
    them: the broker lost some. Returns how many were re-sent."""
    if not unreceived:
        return 0
    queued = queued_messages()
    if queued >= len(unreceived):
        return 0
    with session_scope() as session:
        reaper.note_lost_messages(session, {uuid.UUID(str(lost.ids["run_id"])) for lost in unreceived}, utcnow())
    for lost in unreceived:
        with structlog.contextvars.bound_contextvars(**lost.ids):
            log.warning("job.resent", reason=lost.error, queued=queued, unreceived=len(unreceived))
        _resend(lost)
    return len(unreceived)


def queued_messages(queue: str = "celery") -> int:
    """Messages waiting in the broker's queue (none if the queue does not exist)."""
    with app.connection_for_write() as connection:
        try:
            return int(connection.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except connection.channel_errors:
            return 0


@app.task(name="consolidation.prune_audit", base=OrchestrationTask)
def prune_audit() -> dict[str, Any]:
    """Delete audit rows older than the retention period, in bounded batches."""
    rows = audit.prune_audit(session_scope, get_settings().audit_retention_days)
    log.info("audit.pruned", rows=rows)
    return {"rows": rows}
