import pytest
from sqlalchemy import text

from orchestration.nightly.eligibility import check_projects, eligible_query
from orchestration.store import db, migrate
from orchestration.store.models import Project, TaskMemory


def _project(session, name, active, threshold=None, enabled=True, duplicates=0, archived=0):
    project = Project(name=name, consolidation_threshold=threshold, consolidation_enabled=enabled)
    session.add(project)
    session.flush()
    for i in range(active + duplicates + archived):
        session.add(
            TaskMemory(
                project_id=project.id,
                memory_type="learning",
                content=f"m{i}",
                tags=[],
                file_links=[],
                is_duplicate=i >= active and i < active + duplicates,
                is_archived=i >= active + duplicates,
            )
        )
    return project.id


def test_enabled_projects_above_their_threshold(database):
    with db.session_scope() as session:
        over = _project(session, "over", 6, threshold=5)
        at = _project(session, "at", 5, threshold=5)
        default_over = _project(session, "default-over", 4)
        inactive_heavy = _project(session, "inactive", 2, threshold=3, duplicates=5, archived=5)
        _project(session, "disabled", 50, threshold=1, enabled=False)
    with db.session_scope() as session:
        result = check_projects(session, default_threshold=3)
    assert result.checked == 5 and result.skipped == 1
    assert {pid for pid, _ in result.eligible} == {over, default_over}
    assert at not in dict(result.eligible) and inactive_heavy not in dict(result.eligible)


def test_the_eligibility_query_reads_the_kept_counts_not_the_memories(pg_database):
    with db.session_scope() as session:
        project_id = _project(session, "p", 0, threshold=1)
        # 20,000 memories, nine in ten of them archived or duplicate.
        session.execute(
            text(
                "INSERT INTO task_memories (id, project_id, memory_type, content, tags, file_links, learned_at, "
                "is_duplicate, is_archived) SELECT gen_random_uuid(), :p, 'learning', 'm', '[]', '[]', now(), "
                "g % 10 = 1, g % 10 > 1 FROM generate_series(1, 20000) g"
            ),
            {"p": project_id},
        )
    with db.get_engine().connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
        compiled = eligible_query(1000).compile(conn, compile_kwargs={"literal_binds": True})
        plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN {compiled}").scalars())
    assert "project_memory_counts" in plan and "task_memories" not in plan
    with db.session_scope() as session:
        assert [pid for pid, _ in check_projects(session, 1000).eligible] == [project_id]


def test_sqlite_reads_the_kept_counts_too(sqlite_database):
    with db.session_scope() as session:
        compiled = eligible_query(1000).compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        plan = " ".join(str(row) for row in session.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
    assert "project_memory_counts" in plan and "task_memories" not in plan


# Issue 22, finding 6: a threshold below 1 never makes a project eligible (-1 archived
# a project's only memory).
@pytest.mark.parametrize("default_threshold", [0, -1])
def test_a_default_threshold_below_one_is_refused(database, default_threshold):
    with db.session_scope() as session:
        _project(session, "one memory", 1)
    with (
        pytest.raises(ValueError, match="ORCHESTRATION_DEFAULT_THRESHOLD\\) must be at least 1"),
        db.session_scope() as session,
    ):
        check_projects(session, default_threshold=default_threshold)
    with pytest.raises(ValueError, match="must be at least 1"):
        eligible_query(default_threshold)


def test_a_project_threshold_below_one_is_never_eligible(database):
    """With migration 0003 such a threshold cannot be stored; before it, one could."""
    migrate.downgrade(database, "0002")
    db.dispose()
    with db.session_scope() as session:
        minus = _project(session, "minus", 1, threshold=-1)
        zero = _project(session, "zero", 1, threshold=0)
        one = _project(session, "one", 2, threshold=1)
        default = _project(session, "default", 4)
    with db.session_scope() as session:
        result = check_projects(session, default_threshold=3)
    assert {pid for pid, _ in result.eligible} == {one, default}
    assert minus not in dict(result.eligible) and zero not in dict(result.eligible)
