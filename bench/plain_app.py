"""The baseline of ``bench/orchestration.py``: a minimal Celery app, configured only
as the issue describes a plain one (JSON, late acks, prefetch 1), with a no-op task
and a no-op chord callback. Broker and result backend: ``PLAIN_BROKER``."""

import os

from celery import Celery

app = Celery("plain", broker=os.environ["PLAIN_BROKER"], backend=os.environ["PLAIN_BROKER"])
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
)


@app.task(name="plain.noop")
def noop(index: int) -> int:
    return index


@app.task(name="plain.collect")
def collect(results: list[int]) -> int:
    return len(results)
