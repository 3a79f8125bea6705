"""The kept active counts (migration 0002, ``orchestration.store.counts``) stay equal to a
literal count of the active memories through every kind of write, before and after
folding, on SQLite and PostgreSQL."""

import random
import threading
import uuid

import pytest
from sqlalchemy import create_engine, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from orchestration.consolidation.audit import rollback_job
from orchestration.consolidation.memories import active_filter
from orchestration.consolidation.options import resolve_options
from orchestration.demo.seed import seed
from orchestration.store import counts, db, migrate
from orchestration.store.counts import count_active
from orchestration.store.models import (
    ConsolidationJob,
    Project,
    ProjectMemoryCount,
    ProjectMemoryCountDelta,
    TaskMemory,
)
from support import consolidate


def _drift(session) -> dict[uuid.UUID, tuple[int, int]]:
    """Projects whose kept count differs from a literal count: {id: (kept, literal)}."""
    literal = dict(
        session.execute(
            select(TaskMemory.project_id, func.count()).where(active_filter()).group_by(TaskMemory.project_id)
        ).all()
    )
    kept = {p: count_active(session, p) for p in session.scalars(select(Project.id))}
    return {p: (n, literal.get(p, 0)) for p, n in kept.items() if n != literal.get(p, 0)}


def _assert_exact() -> None:
    """Exact with the deltas pending, and again once they are folded (a fold rolled
    back here, so the next step starts with deltas pending again)."""
    with db.session_scope() as session:
        assert _drift(session) == {}
        counts.fold(session)
        assert _drift(session) == {}
        assert session.scalar(select(func.count()).select_from(ProjectMemoryCountDelta)) == 0
        session.rollback()


def _memory(project_id, duplicate=False, archived=False) -> dict:
    return {
        "id": uuid.uuid4(),
        "project_id": project_id,
        "memory_type": "learning",
        "content": "m",
        "tags": [],
        "file_links": [],
        "is_duplicate": duplicate,
        "is_archived": archived,
    }


def _project_with(active: int) -> uuid.UUID:
    with db.session_scope() as session:
        project = Project(name="p")
        session.add(project)
        session.flush()
        if active:
            session.execute(insert(TaskMemory), [_memory(project.id) for _ in range(active)])
        return project.id


def test_every_kind_of_write_keeps_the_counts_exact(database):
    rng = random.Random(7)
    with db.session_scope() as session:
        projects = [Project(name=f"p{i}") for i in range(4)]
        session.add_all(projects)
        session.flush()
        ids = [p.id for p in projects]
        assert session.scalars(select(ProjectMemoryCount.active_count)).all() == [0, 0, 0, 0]  # a row each
        # one multi-row INSERT over several projects, a third of it inactive
        session.execute(insert(TaskMemory), [_memory(rng.choice(ids), duplicate=i % 3 == 0) for i in range(60)])
        session.add(TaskMemory(**_memory(ids[0])))  # one ORM insert
    _assert_exact()

    steps = [
        lambda s: s.execute(
            update(TaskMemory)
            .where(TaskMemory.content == "m", TaskMemory.project_id == ids[1])
            .values(is_archived=True)
        ),
        lambda s: s.execute(
            update(TaskMemory).where(TaskMemory.project_id == ids[0]).values(project_id=ids[2])
        ),  # move between projects
        lambda s: s.execute(update(TaskMemory).values(is_duplicate=~TaskMemory.is_duplicate)),
        lambda s: s.execute(update(TaskMemory).values(reused_count=TaskMemory.reused_count + 1)),  # not activity
        lambda s: s.execute(delete(TaskMemory).where(TaskMemory.is_duplicate)),
        lambda s: s.delete(s.get(Project, ids[3])),  # cascades to its memories and its count row
    ]
    for step in steps:
        with db.session_scope() as session:
            step(session)
        _assert_exact()

    # A rolled-back transaction leaves no trace in the counts either.
    with pytest.raises(RuntimeError), db.session_scope() as session:
        session.execute(insert(TaskMemory), [_memory(ids[1]) for _ in range(5)])
        raise RuntimeError("abort")
    _assert_exact()


def test_consolidation_and_its_rollback_keep_the_counts_exact(database):
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 120, seed=3, dim=32)
        job = ConsolidationJob(
            project_id=uuid.UUID(manifest.id), trigger_type="manual", triggered_by="t", status="running"
        )
        session.add(job)
    result = consolidate(job.project_id, resolve_options(None), job_id=job.id)
    assert result.memories_merged and result.memories_archived
    assert (
        result.memories_after
        == result.memories_before - result.memories_merged - result.memories_archived + result.clusters_found
    )
    _assert_exact()
    with db.session_scope() as session:
        session.execute(update(ConsolidationJob).where(ConsolidationJob.id == job.id).values(status="completed"))
    with db.session_scope() as session:
        rollback_job(session, job.id, retention_days=90)
    _assert_exact()
    with db.session_scope() as session:
        assert count_active(session, job.project_id) == result.memories_before


def test_the_migration_counts_memories_written_before_it(database_url):
    migrate.downgrade(database_url, "0001")
    engine = create_engine(db.normalize_url(database_url))
    try:
        with engine.begin() as conn:
            project_ids = [uuid.uuid4(), uuid.uuid4()]
            conn.execute(insert(Project), [{"id": p, "name": "old"} for p in project_ids])
            conn.execute(insert(TaskMemory), [_memory(project_ids[0], archived=i < 3) for i in range(10)])
    finally:
        engine.dispose()
    migrate.upgrade(database_url)
    db.use_database(database_url)
    try:
        with db.session_scope() as session:
            assert session.get(ProjectMemoryCount, project_ids[0]).active_count == 7
            assert session.get(ProjectMemoryCount, project_ids[1]).active_count == 0
        _assert_exact()
    finally:
        db.use_database(None)


@pytest.mark.integration
def test_concurrent_writers_to_one_project_are_all_counted(pg_database):
    """Writers of one project never wait on a shared count row, and none is lost."""
    project_id = _project_with(0)
    writers, per_writer = 4, 25
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            barrier.wait()
            for _ in range(per_writer):
                with db.session_scope() as session:
                    session.execute(insert(TaskMemory), [_memory(project_id)])
                    session.execute(text("SELECT pg_sleep(0.001)"))  # overlap the transactions
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with db.session_scope() as session:
        assert count_active(session, project_id) == writers * per_writer
    _assert_exact()


@pytest.mark.integration
def test_truncate_zeroes_the_counts(pg_database):
    project_id = _project_with(3)
    with db.session_scope() as session:
        session.execute(text("TRUNCATE task_memories CASCADE"))
    with db.session_scope() as session:
        assert count_active(session, project_id) == 0
    _assert_exact()


@pytest.mark.integration
def test_a_fold_leaves_the_deltas_of_open_transactions_alone(pg_database):
    """A writer still in its transaction during the fold neither blocks it nor loses
    its deltas: they are folded next time."""
    project_id = _project_with(3)
    with Session(db.get_engine()) as writer:
        writer.execute(insert(TaskMemory), [_memory(project_id) for _ in range(2)])  # not committed yet
        with db.session_scope() as session:
            counts.fold(session)
        writer.commit()
    with db.session_scope() as session:
        assert session.get(ProjectMemoryCount, project_id).active_count == 3  # folded
        assert count_active(session, project_id) == 5  # with the writer's pending deltas
    _assert_exact()


@pytest.mark.integration
def test_the_deltas_of_a_deleted_project_are_dropped_by_the_next_fold(pg_database):
    project_id = _project_with(3)
    with db.session_scope() as session:
        session.execute(delete(Project).where(Project.id == project_id))  # its memories go with it
    with db.session_scope() as session:
        deltas = session.scalars(
            select(ProjectMemoryCountDelta.delta).where(ProjectMemoryCountDelta.project_id == project_id)
        ).all()
        assert sum(d for d in deltas if d > 0) == 3 and -3 in deltas  # the delete: one statement
        counts.fold(session)
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(ProjectMemoryCountDelta)) == 0
        assert session.scalar(select(func.count()).select_from(ProjectMemoryCount)) == 0
