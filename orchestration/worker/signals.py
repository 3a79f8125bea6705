"""The worker's own start-up hooks (Celery signals) that need the layers below the
Celery app: the heartbeat thread of a prefork main process starts as the worker comes
up, so that the jobs it receives are marked received at once. Connected when the
worker imports its tasks (``tasks`` imports this module)."""

from __future__ import annotations

from typing import Any

from celery import signals

from orchestration.jobs import heartbeat
from orchestration.logs import get_logger

log = get_logger("orchestration.worker.signals")


@signals.worker_ready.connect
def _warm_heartbeat(sender: Any = None, **_: Any) -> None:
    from celery.concurrency.prefork import TaskPool

    if not isinstance(getattr(sender, "pool", None), TaskPool):
        return  # only a prefork main process marks received jobs apart from running them
    try:
        heartbeat.warm()
    except Exception as exc:  # noqa: BLE001 - the heartbeat thread retries; the jobs report the database
        log.warning("heartbeat.failed", error=str(exc)[:300])
