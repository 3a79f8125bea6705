"""The production Celery app without its BLAS thread limit, for ``bench/night.py``: each
worker process keeps OpenBLAS's default of one thread per CPU."""

from celery import signals

from orchestration.celery_app import _share_the_cpus, app

signals.worker_process_init.disconnect(_share_the_cpus)

__all__ = ["app"]
