"""The production Celery app with task events off, for ``bench/orchestration.py``: what
the nightly run costs beyond the plain chord when both send no task events."""

from orchestration.celery_app import app

app.conf.worker_send_task_events = False

__all__ = ["app"]
