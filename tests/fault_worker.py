"""The production Celery app with one injected fault, for worker-subprocess tests:
``celery -A tests.fault_worker worker``. Same tasks and settings; only
``consolidate_project`` first sleeps ``FAULT_SLEEP_S`` seconds when that is set."""

import os
import time

from orchestration import consolidation
from orchestration.celery_app import app  # noqa: F401 - the app celery -A finds
import orchestration.tasks  # noqa: F401

_real = consolidation.consolidate_project


def _slow(*args, **kwargs):
    time.sleep(float(os.environ["FAULT_SLEEP_S"]))
    return _real(*args, **kwargs)


if os.environ.get("FAULT_SLEEP_S"):
    consolidation.consolidate_project = _slow
