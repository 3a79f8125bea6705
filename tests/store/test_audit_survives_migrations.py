"""The audit trail survives every migration, up and down: on SQLite a migration that
re-creates ``consolidation_jobs`` (batch mode) must not let the drop of the old table
cascade to ``consolidation_changes`` (docs/operations: a rollback needs every row)."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from orchestration.demo.seed import seed
from orchestration.store import db, migrate
from support import consolidate


def _counts(url: str) -> tuple[int, int]:
    engine = db.build_engine(url)
    try:
        with engine.connect() as connection:
            jobs: int = connection.execute(sa.text("SELECT count(*) FROM consolidation_jobs")).scalar_one()
            changes: int = connection.execute(sa.text("SELECT count(*) FROM consolidation_changes")).scalar_one()
            return jobs, changes
    finally:
        engine.dispose()


def test_jobs_and_their_changes_survive_each_migration_down_and_up(database, database_url):
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 40, seed=2, dim=16)
    assert consolidate(uuid.UUID(manifest.id)).memories_merged > 0
    db.dispose()
    before = _counts(database_url)
    assert before[1] > 0
    for revision in ("0009", "0008", "0007", "0006", "0005", "0004", "0003"):
        migrate.downgrade(database_url, revision)
        assert _counts(database_url) == before, f"downgrade to {revision}"
    migrate.upgrade(database_url)
    assert _counts(database_url) == before
    migrate.check(database_url)
