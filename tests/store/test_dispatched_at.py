"""Migration 0006 moves an open run's ``summary["dispatched_at"]`` into the column
``consolidation_runs.dispatched_at``, and its downgrade moves it back, on both
databases; finished runs (whose summaries never keep the key) are left as they are."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from orchestration.store import db, migrate
from orchestration.store.types import GUID, JSONType, UTCDateTime

SENT = datetime(2026, 11, 29, 2, 0, 3, tzinfo=UTC)
runs = sa.table(
    "consolidation_runs",
    sa.column("id", GUID()),
    sa.column("trigger_type", sa.String()),
    sa.column("status", sa.String()),
    sa.column("started_at", UTCDateTime()),
    sa.column("summary", JSONType),
)


def _summaries(engine: sa.Engine) -> dict[uuid.UUID, object]:
    with engine.connect() as connection:
        return dict(connection.execute(sa.select(runs.c.id, runs.c.summary)).all())


def test_the_chord_sent_time_moves_to_its_column_and_back(database_url):
    migrate.downgrade(database_url, "0005")
    engine = db.build_engine(database_url)
    open_run, finished_run = uuid.uuid4(), uuid.uuid4()
    try:
        with engine.begin() as connection:
            connection.execute(
                runs.insert(),
                [
                    {
                        "id": open_run,
                        "trigger_type": "scheduled",
                        "status": "running",
                        "started_at": SENT,
                        "summary": {"dispatched_at": SENT.isoformat(), "retry_of": "r"},
                    },
                    {
                        "id": finished_run,
                        "trigger_type": "manual",
                        "status": "completed",
                        "started_at": SENT,
                        "summary": {"duration_s": 1.5},
                    },
                ],
            )
        engine.dispose()

        migrate.upgrade(database_url)
        migrate.check(database_url)
        with engine.connect() as connection:
            sent = dict(connection.execute(sa.text("SELECT id, dispatched_at FROM consolidation_runs")).all())
        moved = {str(key): value for key, value in sent.items()}
        assert moved[str(finished_run)] is None and moved[str(open_run)] is not None
        assert _summaries(engine) == {open_run: {"retry_of": "r"}, finished_run: {"duration_s": 1.5}}
        engine.dispose()

        migrate.downgrade(database_url, "0005")
        assert _summaries(engine) == {
            open_run: {"retry_of": "r", "dispatched_at": SENT.isoformat()},
            finished_run: {"duration_s": 1.5},
        }
    finally:
        engine.dispose()
        migrate.upgrade(database_url)
