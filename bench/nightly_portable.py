"""The production Celery app with a job's one-statement start and end turned off, for
``bench/orchestration.py`` and ``bench/night.py``: every job starts and finishes on the
portable path (``jobs.starts.start_portable`` and ``transitions.apply(COMPLETE)``), as
on a database other than PostgreSQL, so the two paths can be timed side by side on
the same PostgreSQL database.

The switch is set when the worker imports this module, before it forks its prefork
processes, which inherit it; each process sets it again as it starts, in case a pool
ever starts its processes some other way."""

from celery import signals

from orchestration.celery_app import app
from orchestration.jobs import statements


def _portable() -> bool:
    return False


def _turn_off_the_fast_path(**_: object) -> None:
    statements.one_statement = _portable


_turn_off_the_fast_path()
signals.worker_process_init.connect(_turn_off_the_fast_path, weak=False)

__all__ = ["app"]
