"""The embedded default behind ``orchestration demo``: a fresh SQLite database under
``var/``, synthetic projects, and a real Celery worker in this process (threads pool,
in-memory transport, in-process result backend that supports chords) running the
nightly chord exactly as production does.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from celery import Celery
from sqlalchemy import select

from orchestration import db, migrate, reports, runs
from orchestration.dbtypes import utcnow
from orchestration.models import ConsolidationRun

DEMO_DB = Path("var/demo.db")
DEMO_SEED = 42
WAIT_S = 120.0


def use_embedded_transport(app: Celery) -> None:
    transport = {**app.conf.broker_transport_options, "polling_interval": 0.05}
    app.conf.update(broker_url="memory://", result_backend="cache+memory://", broker_transport_options=transport)


@contextmanager
def embedded_worker(app: Celery, concurrency: int = 4) -> Iterator[Any]:
    """A real worker in a thread of this process."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(app, pool="threads", concurrency=concurrency, perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=30) as worker:
        yield worker


def fresh_database(path: Path = DEMO_DB) -> str:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    return url


def run_demo(projects: int, memories: int, with_failure: bool = False) -> dict[str, Any]:
    """Seed, run tonight's scheduled run through the chord, return the run document."""
    from orchestration.celery_app import app
    from orchestration.seed import seed
    from orchestration.tasks import run_scheduled

    use_embedded_transport(app)
    # The demo shows our events; Celery's and Alembic's chatter only when it matters.
    for name in ("celery", "kombu", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    db.use_database(fresh_database())
    with db.session_scope() as session:
        seed(session, projects, memories, DEMO_SEED, failing=with_failure)
    slot = utcnow().replace(second=0, microsecond=0)
    with embedded_worker(app):
        run_scheduled.apply_async(kwargs={"slot": slot.isoformat()})
        run = runs.wait_for_finish(
            lambda session: session.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == slot)),
            WAIT_S,
        )
    if run is None:
        raise TimeoutError(f"the demo run did not finish within {WAIT_S:.0f}s")
    return reports.run_document(run.id)
