"""Migration 0007 clears a finished job's ``heartbeat_at`` (it has one meaning now: a
process vouching for an unfinished job) and its downgrade copies ``completed_at``
back, on both databases; unfinished jobs keep theirs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from orchestration.store import db, migrate
from orchestration.store.types import GUID, UTCDateTime

BEAT = datetime(2026, 11, 29, 2, 0, 3, tzinfo=UTC)
END = datetime(2026, 11, 29, 2, 5, 0, tzinfo=UTC)
jobs = sa.table(
    "consolidation_jobs",
    sa.column("id", GUID()),
    sa.column("status", sa.String()),
    sa.column("trigger_type", sa.String()),
    sa.column("triggered_by", sa.String()),
    sa.column("created_at", UTCDateTime()),
    sa.column("completed_at", UTCDateTime()),
    sa.column("heartbeat_at", UTCDateTime()),
)


def _beats(engine: sa.Engine) -> dict[str, object]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(jobs.c.status, jobs.c.heartbeat_at)).all()
    return {str(status): beat for status, beat in rows}


def test_a_finished_jobs_heartbeat_is_cleared_and_restored(database_url):
    migrate.downgrade(database_url, "0006")
    engine = db.build_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                jobs.insert(),
                [
                    {
                        "id": uuid.uuid4(),
                        "status": status,
                        "trigger_type": "manual",
                        "triggered_by": "test",
                        "created_at": BEAT,
                        "completed_at": END if status in ("completed", "failed", "skipped") else None,
                        "heartbeat_at": END if status in ("completed", "failed", "skipped") else BEAT,
                    }
                    for status in ("pending", "running", "retrying", "completed", "failed", "skipped")
                ],
            )
        engine.dispose()

        migrate.upgrade(database_url)
        migrate.check(database_url)
        assert _beats(engine) == {
            "pending": BEAT,
            "running": BEAT,
            "retrying": BEAT,
            "completed": None,
            "failed": None,
            "skipped": None,
        }
        engine.dispose()

        migrate.downgrade(database_url, "0006")
        assert set(_beats(engine).values()) == {BEAT, END}
        assert _beats(engine)["completed"] == END and _beats(engine)["running"] == BEAT
    finally:
        engine.dispose()
