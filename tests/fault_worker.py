"""The production Celery app with injected faults, for worker-subprocess tests:
``celery -A tests.fault_worker worker``. Same tasks, settings and code paths; the
faults are switched on by environment variables:

- ``FAULT_SLEEP_S``: planning a job's consolidation first sleeps this long;
- ``FAULT_BATCH_SLEEP_S``: every merge batch first sleeps this long;
- ``FAULT_MERGE_BATCH``: clusters per merge batch (to get several batches);
- ``FAULT_RAISE_PROJECT``: jobs of this project id always raise;
- ``FAULT_KILL_AT``: ``before_first_commit`` (inside the first batch, before its
  commit), ``between_batches`` (the first batch committed, the second not begun),
  ``before_complete`` (every batch committed, the job not yet marked completed);
  ``FAULT_KILL_SCOPE`` ``worker`` (SIGKILL the whole process group) or ``child``
  (SIGKILL only the prefork child); happens once, recorded in ``FAULT_MARKER``;
- ``FAULT_VISIBILITY_TIMEOUT``: a short Redis visibility timeout, so a message whose
  worker died is redelivered within seconds instead of an hour;
- ``FAULT_LOST_AFTER``: seconds after which a job's stopped heartbeat means its worker
  died (production: ``heartbeat.LOST_AFTER``, 60 s), with a beat every sixth of it.

Without ``FAULT_VISIBILITY_TIMEOUT`` and ``FAULT_LOST_AFTER`` the worker runs with the
production defaults.
"""

import os
import signal
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import orchestration.worker.tasks  # noqa: F401
from orchestration.celery_app import app
from orchestration.consolidation import applying, passes, planning
from orchestration.consolidation.options import ConsolidationOptions
from orchestration.jobs import heartbeat, lifecycle
from orchestration.store.db import Executor

_env = os.environ.get


def _kill_once(point: str) -> None:
    marker = Path(_env("FAULT_MARKER", "/nonexistent/marker"))
    if _env("FAULT_KILL_AT") != point or marker.exists():
        return
    marker.write_text(point)
    if _env("FAULT_KILL_SCOPE", "worker") == "worker":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


if visibility_timeout := _env("FAULT_VISIBILITY_TIMEOUT"):
    timeout = int(visibility_timeout)
    # kombu looks for expired unacked messages every 10 checks of this interval.
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "visibility_timeout": timeout,
        "unacked_restore_interval": 0.3,
    }
if lost_after := _env("FAULT_LOST_AFTER"):
    heartbeat.LOST_AFTER = timedelta(seconds=float(lost_after))
    heartbeat.INTERVAL = heartbeat.LOST_AFTER / 6
if merge_batch_size := _env("FAULT_MERGE_BATCH"):
    applying.MERGE_BATCH = int(merge_batch_size)

_plan, _merge_batch, _finish = planning.plan, applying.merge_batch, lifecycle._finish
_batches = {"n": 0}


def plan(
    source: Executor,
    project_id: uuid.UUID,
    options: ConsolidationOptions,
    now: datetime,
    pass_: passes.Pass | None = None,
) -> planning.Plan:
    if (failing := _env("FAULT_RAISE_PROJECT")) and uuid.UUID(failing) == project_id:
        raise RuntimeError("injected fault: this project's job always fails")
    if (crashing := _env("FAULT_CRASH_PROJECT")) and uuid.UUID(crashing) == project_id:
        os.kill(os.getpid(), signal.SIGKILL)
    if sleep_s := _env("FAULT_SLEEP_S"):
        time.sleep(float(sleep_s))
    return _plan(source, project_id, options, now, pass_)


def merge_batch(*args, **kwargs):
    _batches["n"] += 1
    if _env("FAULT_BATCH_SLEEP_S"):
        time.sleep(float(_env("FAULT_BATCH_SLEEP_S")))
    if _batches["n"] == 2:
        _kill_once("between_batches")
    result = _merge_batch(*args, **kwargs)
    _kill_once("before_first_commit")
    return result


def finish(*args, **kwargs):
    # The last statement of a job marks it completed and gives its lock back.
    _kill_once("before_complete")
    return _finish(*args, **kwargs)


planning.plan = plan
applying.merge_batch = merge_batch
lifecycle._finish = finish


@app.task(name="tests.blas_threads")
def blas_threads() -> list[int]:
    """The BLAS thread pools of the worker process that runs this (a probe, not a fault)."""
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
