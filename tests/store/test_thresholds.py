"""Projects' consolidation thresholds are NULL or at least 1 (issue 22, finding 6): the
database refuses anything else, and migration 0003 resets existing bad values to NULL
without losing anything else. On SQLite and PostgreSQL."""

import uuid

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.exc import IntegrityError

from orchestration.store import db, migrate
from orchestration.store.models import Project

MEMORY = (
    "INSERT INTO task_memories (id, project_id, memory_type, content, tags, file_links, reused_count, learned_at, "
    "is_duplicate, is_archived, version) VALUES (:id, :project, 'learning', 'm', '[]', '[]', 0, :at, :dup, :dup, 1)"
)
JOB = (
    "INSERT INTO consolidation_jobs (id, project_id, status, trigger_type, triggered_by, attempts, progress, "
    "memories_before, memories_after, clusters_found, memories_merged, memories_archived, created_at) "
    "VALUES (:id, :project, 'completed', 'manual', 'test', 1, 1, 0, 0, 0, 0, 0, :at)"
)


@pytest.mark.parametrize("threshold", [0, -1, -5])
def test_the_database_refuses_thresholds_below_one(database, threshold):
    with pytest.raises(IntegrityError, match="ck_projects_consolidation_threshold"), db.session_scope() as session:
        session.add(Project(name="bad", consolidation_threshold=threshold))
    with db.session_scope() as session:
        project = Project(name="good", consolidation_threshold=1)
        session.add_all([project, Project(name="default", consolidation_threshold=None)])
    with pytest.raises(IntegrityError, match="ck_projects_consolidation_threshold"), db.session_scope() as session:
        session.execute(update(Project).where(Project.id == project.id).values(consolidation_threshold=threshold))


def _ids(engine: Engine, number: int) -> str | uuid.UUID:
    value = uuid.UUID(int=number)
    return str(value) if engine.dialect.name == "sqlite" else value


def _snapshot(engine: Engine) -> dict:
    with engine.connect() as conn:
        return {
            "thresholds": dict(conn.execute(text("SELECT name, consolidation_threshold FROM projects")).all()),
            "memories": conn.execute(text("SELECT count(*) FROM task_memories")).scalar(),
            "jobs with project": conn.execute(
                text("SELECT count(*) FROM consolidation_jobs WHERE project_id IS NOT NULL")
            ).scalar(),
            "counts": conn.execute(text("SELECT count(*) FROM project_memory_counts")).scalar(),
        }


def test_the_migration_resets_bad_thresholds_to_null_and_keeps_everything_else(database_url):
    migrate.downgrade(database_url, "0002")
    engine = db.build_engine(database_url)
    try:
        at = "2026-11-01 00:00:00" + ("+00" if engine.dialect.name == "postgresql" else ".000000")
        with engine.begin() as conn:
            for number, (name, threshold) in enumerate([("null", None), ("five", 5), ("zero", 0), ("minus", -1)]):
                project = _ids(engine, number + 1)
                conn.execute(
                    text(
                        "INSERT INTO projects (id, name, consolidation_enabled, consolidation_threshold, created_at) "
                        "VALUES (:id, :name, true, :threshold, :at)"
                    ),
                    {"id": project, "name": name, "threshold": threshold, "at": at},
                )
                for k in range(3):
                    conn.execute(text(MEMORY), {"id": _ids(engine, 100 * (number + 1) + k), "project": project,
                                                "at": at, "dup": k == 2})  # fmt: skip
                conn.execute(text(JOB), {"id": _ids(engine, 1000 + number), "project": project, "at": at})
        before = _snapshot(engine)
        engine.dispose()

        migrate.upgrade(database_url)  # back to head: 0003 again, over data
        migrate.check(database_url)
        after = _snapshot(engine)
        assert after["thresholds"] == {"null": None, "five": 5, "zero": None, "minus": None}
        assert (
            {k: v for k, v in after.items() if k != "thresholds"}
            == {k: v for k, v in before.items() if k != "thresholds"}
            == {"memories": 12, "jobs with project": 4, "counts": 4}
        )
        with engine.connect() as conn:  # the count triggers survived (SQLite re-creates the table)
            actives = conn.execute(text("SELECT active_count FROM project_memory_counts")).scalars().all()
        assert actives == [2, 2, 2, 2] or engine.dialect.name == "postgresql"  # PostgreSQL: deltas pending
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO projects (id, name, consolidation_enabled, created_at) VALUES (:id, 'new', true, :at)"
                ),
                {"id": _ids(engine, 99), "at": at},
            )
        assert _snapshot(engine)["counts"] == 5  # a new project still gets its count row
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("UPDATE projects SET consolidation_threshold = 0 WHERE name = 'five'"))
        engine.dispose()

        migrate.downgrade(database_url, "0002")  # and down and up once more
        assert _snapshot(engine)["memories"] == 12
        with engine.begin() as conn:
            conn.execute(text("UPDATE projects SET consolidation_threshold = 0 WHERE name = 'five'"))
        engine.dispose()
        migrate.upgrade(database_url)
        migrate.check(database_url)
        assert _snapshot(engine)["thresholds"]["five"] is None
        assert _snapshot(engine)["memories"] == 12
    finally:
        engine.dispose()
