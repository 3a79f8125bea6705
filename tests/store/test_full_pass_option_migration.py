"""Migration 0009 renames a project's ``full_every_days`` option to SPEC's
``full_pass_every_days`` (unset where it was 0, never), leaves other options and
projects alone, and its downgrade renames it back; on both databases."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from orchestration.consolidation.options import resolve_options
from orchestration.store import db, migrate
from orchestration.store.types import GUID, JSONType, UTCDateTime, utcnow

projects = sa.table(
    "projects",
    sa.column("id", GUID()),
    sa.column("name", sa.String()),
    sa.column("consolidation_options", JSONType),
    sa.column("created_at", UTCDateTime()),
)
BEFORE = {
    "weekly": {"full_every_days": 7, "similarity_threshold": 0.95},
    "never": {"full_every_days": 0},
    "other": {"archive": False},
    "none": None,
}


def _options(engine: sa.Engine) -> dict[str, object]:
    with engine.connect() as connection:
        return dict(connection.execute(sa.select(projects.c.name, projects.c.consolidation_options)).all())


def test_full_every_days_becomes_full_pass_every_days_and_back(database_url):
    migrate.downgrade(database_url, "0008")
    engine = db.build_engine(database_url)
    try:
        with engine.begin() as connection:
            rows = [
                {"id": uuid.uuid4(), "name": n, "consolidation_options": o, "created_at": utcnow()}
                for n, o in BEFORE.items()
            ]
            connection.execute(projects.insert(), rows)
        engine.dispose()

        migrate.upgrade(database_url)
        migrate.check(database_url)
        after = _options(engine)
        assert after == {
            "weekly": {"full_pass_every_days": 7, "similarity_threshold": 0.95},
            "never": {},
            "other": {"archive": False},
            "none": None,
        }
        assert resolve_options(after["weekly"]).full_pass_every_days == 7  # every one resolves again
        assert resolve_options(after["never"]).full_pass_every_days is None
        engine.dispose()

        migrate.downgrade(database_url, "0008")
        assert _options(engine) == {**BEFORE, "never": {}}
    finally:
        engine.dispose()
