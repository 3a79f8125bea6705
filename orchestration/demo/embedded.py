"""The embedded default behind ``orchestration demo``: a fresh SQLite database under
``var/``, synthetic projects, and a real Celery worker in this process (threads pool,
in-memory transport, in-process result backend that supports chords) running the
nightly chord exactly as production does. The demo is one of the two commands that
create a SQLite file (migrating it); :func:`inspect_command` is how to look at it
afterwards.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import click
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestration.documents.runs import run_document
from orchestration.nightly import runs
from orchestration.store import db, migrate
from orchestration.store.models import ConsolidationRun
from orchestration.store.types import utcnow

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

    with start_worker(
        app, pool="threads", concurrency=concurrency, perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30
    ) as worker:
        yield worker


def fresh_database(path: Path = DEMO_DB) -> str:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    return url


def _program() -> str:
    """This command as the user can type it here: ``orchestration`` if that is on the
    PATH, else the path it was started by (``.venv/bin/orchestration`` under
    ``make demo``)."""
    started_as = Path(sys.argv[0])
    if started_as.name != "orchestration":  # python -m orchestration.cli, tests
        return "orchestration"
    found = shutil.which("orchestration")
    if found and Path(found).resolve() == started_as.resolve():
        return "orchestration"
    absolute = started_as.absolute()
    return str(absolute.relative_to(Path.cwd())) if absolute.is_relative_to(Path.cwd()) else str(absolute)


def inspect_command(run_id: object, path: Path = DEMO_DB) -> str:
    """The command that shows the demo's run afterwards, from the folder the demo ran in."""
    url = f"sqlite:///{path}"
    return f"ORCHESTRATION_DATABASE_URL={shlex.quote(url)} {shlex.quote(_program())} runs show {run_id}"


def web_command(path: Path = DEMO_DB, port: int = 8800) -> str:
    """The command that serves the dashboard on the demo's database."""
    url = f"sqlite:///{path}"
    option = "" if port == 8800 else f" --port {port}"
    return f"ORCHESTRATION_DATABASE_URL={shlex.quote(url)} {shlex.quote(_program())} web{option}"


# Shows a run's progress on a stream until it ends (the command line's
# ``progress.watch``): given by the caller, so that the demo needs no command line.
Watch = Callable[[Callable[[Session], ConsolidationRun | None], float, IO[str]], ConsolidationRun | None]


def run_demo(
    projects: int,
    memories: int,
    with_failure: bool = False,
    out: IO[str] | None = None,
    watch: Watch | None = None,
) -> dict[str, Any]:
    """Seed, run tonight's scheduled run through the chord, return the run document.
    With ``out``, say what happens there, and show the run's progress with ``watch``."""
    from orchestration.celery_app import app
    from orchestration.demo.seed import seed
    from orchestration.logs import log_format
    from orchestration.settings import get_settings
    from orchestration.worker.tasks import run_scheduled

    say = (lambda text: click.echo(f"demo: {text}", file=out)) if out is not None else (lambda text: None)
    use_embedded_transport(app)
    # The demo shows our events; Celery's and Alembic's chatter only when it matters.
    # At a terminal the progress line tells the story: our events only when they warn.
    quiet = {"celery": logging.WARNING, "alembic": logging.WARNING, "kombu": logging.ERROR}
    if out is not None and log_format(get_settings()) == "console":
        quiet["orchestration"] = logging.WARNING
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    db.use_database(fresh_database())
    with db.session_scope() as session:
        manifests = seed(session, projects, memories, DEMO_SEED, failing=with_failure)
    say(f"fresh SQLite database {DEMO_DB}, {len(manifests)} synthetic projects of {memories} memories each")
    slot = utcnow().replace(second=0, microsecond=0)
    find = lambda session: session.scalar(  # noqa: E731
        select(ConsolidationRun).where(ConsolidationRun.scheduled_for == slot)
    )
    with embedded_worker(app) as worker:
        say(f"in-process Celery worker ({worker.concurrency} threads) started; running tonight's chord now")
        run_scheduled.apply_async(kwargs={"slot": slot.isoformat(), "backfill": True})  # now, off the schedule
        run = watch(find, WAIT_S, out) if out is not None and watch else runs.wait_for_finish(find, WAIT_S)
    if run is None:
        raise TimeoutError(f"the demo run did not finish within {WAIT_S:.0f}s")
    return run_document(run.id)
