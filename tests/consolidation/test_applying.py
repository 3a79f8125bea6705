"""Applying a consolidation (and previewing it), on SQLite and PostgreSQL, checked
against what the seeder planted."""

import uuid

import numpy as np
import pytest
from sqlalchemy import event, select, update

from orchestration.consolidation import applying, planning, text
from orchestration.consolidation.embeddings import to_bytes
from orchestration.consolidation.options import resolve_options
from orchestration.consolidation.preview import preview
from orchestration.consolidation.projects import ProjectDisabled, ProjectGone
from orchestration.demo.seed import seed
from orchestration.jobs import lifecycle
from orchestration.settings import get_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationChange, ConsolidationJob, Project, TaskMemory
from orchestration.store.statuses import TriggerType
from orchestration.store.types import utcnow
from support import consolidate, failing_call, fingerprint, manual_job

DEFAULTS = resolve_options(None)


def _seed(memories=80, projects=1, seed_value=3):
    with db.session_scope() as session:
        return seed(session, projects, memories, seed=seed_value, dim=32)


def _run(project_id, options=DEFAULTS):
    return consolidate(project_id, options, job_id=manual_job(project_id))


def _memories(project_id=None) -> dict[uuid.UUID, TaskMemory]:
    with db.session_scope() as session:
        query = select(TaskMemory)
        if project_id:
            query = query.where(TaskMemory.project_id == project_id)
        return {m.id: m for m in session.scalars(query)}


def test_merges_and_archives_exactly_what_was_planted(database):
    (manifest,) = _seed()
    pid = uuid.UUID(manifest.id)
    result = _run(pid)
    memories = _memories(pid)
    consolidated = [m for m in memories.values() if m.memory_type == "consolidated"]
    assert sorted(sorted(m.consolidated_from) for m in consolidated) == sorted(sorted(g) for g in manifest.groups)
    assert result.clusters_found == len(manifest.groups)
    assert result.memories_merged == sum(len(g) for g in manifest.groups)
    archived = {str(m.id) for m in memories.values() if m.is_archived}
    assert archived == set(manifest.stale)
    assert all(memories[uuid.UUID(i)].archive_reason == "staleness" for i in archived)
    for pair in manifest.near_miss:
        assert not any(memories[uuid.UUID(i)].is_duplicate for i in pair)
    for memory_id in manifest.stale_reused:
        assert not memories[uuid.UUID(memory_id)].is_archived
    assert result.memories_after == len([m for m in memories.values() if not m.is_duplicate and not m.is_archived])


def test_merged_memories_keep_every_sentence_tag_and_link(database):
    (manifest,) = _seed()
    pid = uuid.UUID(manifest.id)
    before = _memories(pid)
    _run(pid)
    after = _memories(pid)
    for merged in (m for m in after.values() if m.memory_type == "consolidated"):
        sources = [before[uuid.UUID(i)] for i in merged.consolidated_from]
        for source in sources:
            for sentence in text.sentences(source.content):
                assert sentence in merged.content
            assert set(source.tags) <= set(merged.tags) and set(source.file_links) <= set(merged.file_links)
            assert after[source.id].is_duplicate and after[source.id].duplicate_of == merged.id
        assert merged.reused_count == sum(s.reused_count for s in sources)
        # The representative is the most reused source and comes first.
        assert merged.consolidated_from[0] == str(max(sources, key=lambda s: s.reused_count).id)
        assert merged.content.startswith(text.sentences(sources[0].content)[0])
        vector = np.frombuffer(merged.embedding, dtype="<f4")
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-5


def test_each_batch_inserts_and_updates_in_one_statement_per_table(database):
    (manifest,) = _seed()
    pid = uuid.UUID(manifest.id)
    inserts: list[str] = []
    memory_updates: list[bool] = []  # executemany?

    def record(conn, cursor, statement, parameters, context, executemany):
        words = statement.split()
        if words[0] == "INSERT":
            inserts.append(statement.split("(")[0].split()[-1])
        elif words[:2] == ["UPDATE", "task_memories"]:
            memory_updates.append(executemany)

    event.listen(db.get_engine(), "before_cursor_execute", record)
    try:
        result = _run(pid)
    finally:
        event.remove(db.get_engine(), "before_cursor_execute", record)
    assert len(manifest.groups) > 1 and manifest.stale  # a merge batch of several clusters, an archive batch
    # Rows that differ in which values are None (a created memory has no previous
    # state, a duplicate mark has one) still go in one statement per batch.
    assert inserts.count("consolidation_changes") == 2
    assert inserts.count("task_memories") == 1
    # The duplicate marks, then the archives. PostgreSQL: one statement over arrays of
    # the values, not one execution per row (SQLite: an executemany, in-process).
    assert memory_updates == [not db.is_postgresql()] * 2
    with db.session_scope() as session:
        created = session.scalars(select(ConsolidationChange).where(ConsolidationChange.previous_state.is_(None))).all()
    assert len(created) == result.clusters_found  # SQL NULL, not a JSON null
    assert all(change.new_state["created"] for change in created)


def test_dry_run_changes_nothing_and_predicts_the_real_run(database):
    (manifest,) = _seed()
    pid = uuid.UUID(manifest.id)
    state = fingerprint()
    dry = preview(pid, DEFAULTS)
    assert fingerprint() == state
    real = _run(pid)
    assert dry.counters() == real.counters()
    predicted = sorted(sorted([c["representative"], *(m["id"] for m in c["members"])]) for c in dry.clusters)
    actual = sorted(sorted(m.consolidated_from) for m in _memories(pid).values() if m.consolidated_from)
    assert predicted == actual
    assert sorted(dry.archived) == sorted(manifest.stale)


def test_a_second_run_finds_nothing_more(database):
    (manifest,) = _seed()
    pid = uuid.UUID(manifest.id)
    _run(pid)
    state = fingerprint()
    again = _run(pid)
    assert (again.clusters_found, again.memories_merged, again.memories_archived) == (0, 0, 0)
    assert fingerprint() == state


def test_crash_between_batches_then_rerun_equals_one_clean_run(database, another_database_url, monkeypatch):
    monkeypatch.setattr(applying, "MERGE_BATCH", 2)
    monkeypatch.setattr(applying, "ARCHIVE_BATCH", 3)
    db.use_database(another_database_url)
    (clean,) = _seed(memories=200)
    _run(uuid.UUID(clean.id))
    expected = fingerprint()

    db.use_database(database)
    (manifest,) = _seed(memories=200)
    pid = uuid.UUID(manifest.id)
    monkeypatch.setattr(
        applying, "merge_batch", failing_call(applying.merge_batch, 3, ConnectionError("worker killed"))
    )
    with db.session_scope() as session:
        job_id = lifecycle.create_job(
            session, pid, run_id=None, trigger_type=TriggerType.MANUAL, triggered_by="test", options=None
        ).id
    with pytest.raises(lifecycle.AttemptFailed, match="ConnectionError: worker killed") as failed:
        lifecycle.run(job_id, get_settings())
    assert isinstance(failed.value.__cause__, ConnectionError)
    with db.session_scope() as session:
        partial = session.get(ConsolidationJob, job_id)
        assert partial.clusters_found == 4  # two whole batches of two clusters
    assert fingerprint() != expected
    assert lifecycle.run(job_id, get_settings()).status == "completed"  # the rerun, same job
    assert fingerprint() == expected
    with db.session_scope() as session:
        job = session.get(ConsolidationJob, job_id)
    assert job.clusters_found == len(manifest.groups)
    assert job.memories_merged == sum(len(g) for g in manifest.groups)
    assert job.attempts == 2


def test_a_concurrent_writer_is_never_overwritten(database):
    (manifest,) = _seed()
    pid = uuid.UUID(manifest.id)
    bumped = uuid.UUID(manifest.groups[0][1])
    stale_touched = uuid.UUID(manifest.stale[0])
    new_id = uuid.uuid4()

    def agent_writes():
        # After the plan was read, before anything is written: an agent reuses one
        # duplicate and one stale memory, and writes a new near-copy of a duplicate.
        with db.session_scope() as session:
            for memory_id in (bumped, stale_touched):
                memory = session.get(TaskMemory, memory_id)
                memory.reused_count += 1
                memory.last_reused_at = utcnow()
            copy = session.get(TaskMemory, uuid.UUID(manifest.groups[1][0]))
            session.add(
                TaskMemory(
                    id=new_id,
                    project_id=pid,
                    memory_type=copy.memory_type,
                    content=copy.content,
                    embedding=copy.embedding,
                    tags=[],
                    file_links=[],
                )
            )

    before = _memories(pid)
    with db.session_scope() as session:
        planned = planning.plan(session, pid, DEFAULTS, utcnow())
    agent_writes()
    result = applying.apply(planned, DEFAULTS, manual_job(pid))
    after = _memories(pid)
    assert result.conflicts == 2  # the cluster with the bumped memory, and the stale one
    assert after[bumped].reused_count == before[bumped].reused_count + 1
    assert not after[bumped].is_duplicate  # not merged from a stale read
    assert not after[stale_touched].is_archived
    assert after[new_id].is_duplicate is False  # written after the read: left for next night
    assert result.clusters_found == len(manifest.groups) - 1
    # Next night picks up what was skipped.
    later = _run(pid)
    assert later.clusters_found == 2  # group 0, and the new copy with group 1's consolidated memory


def test_a_later_night_merges_consolidated_memories_without_chains(database):
    (manifest,) = _seed()
    pid = uuid.UUID(manifest.id)
    _run(pid)
    first = next(m for m in _memories(pid).values() if m.memory_type == "consolidated")
    source_type = _memories(pid)[uuid.UUID(first.consolidated_from[0])].memory_type
    newcomer = uuid.uuid4()
    with db.session_scope() as session:
        session.add(
            TaskMemory(
                id=newcomer,
                project_id=pid,
                memory_type=source_type,
                content="A brand new insight.",
                embedding=first.embedding,
                tags=["new"],
                file_links=[],
                reused_count=50,
            )
        )
    result = _run(pid)
    assert result.clusters_found == 1
    memories = _memories(pid)
    second = next(m for m in memories.values() if m.consolidated_from and str(newcomer) in m.consolidated_from)
    assert set(second.consolidated_from) == {str(newcomer), str(first.id)}
    assert memories[first.id].duplicate_of == second.id
    for source_id in first.consolidated_from:  # re-pointed: no chain through `first`
        assert memories[uuid.UUID(source_id)].duplicate_of == second.id
    assert "A brand new insight." in second.content and first.content in second.content


def test_bad_embeddings_are_skipped_and_counted(database):
    (manifest,) = _seed()
    pid = uuid.UUID(manifest.id)
    nan_id, short_id = uuid.UUID(manifest.groups[0][0]), uuid.UUID(manifest.groups[1][0])
    with db.session_scope() as session:
        session.execute(
            update(TaskMemory).where(TaskMemory.id == nan_id).values(embedding=to_bytes([float("nan")] * 32))
        )
        session.execute(update(TaskMemory).where(TaskMemory.id == short_id).values(embedding=to_bytes([1.0] * 7)))
    result = _run(pid)
    memories = _memories(pid)
    assert result.skipped_invalid == 2
    assert not memories[nan_id].is_duplicate and not memories[short_id].is_duplicate
    # The planted groups without their invalid member; a group left with one member is no cluster.
    expected = [sorted(set(g) - {str(nan_id), str(short_id)}) for g in manifest.groups]
    expected = sorted(g for g in expected if len(g) >= 2)
    merged = sorted(sorted(m.consolidated_from) for m in memories.values() if m.consolidated_from)
    assert merged == expected and result.clusters_found == len(expected)


def test_memories_without_embeddings_use_the_lexical_fallback(database):
    with db.session_scope() as session:
        project = Project(name="no-embeddings", consolidation_threshold=1)
        session.add(project)
        session.flush()
        text = "Retry the flaky upload with exponential backoff. The S3 client times out after 30 seconds."
        for content in (text, text + " Seen on the staging cluster.", "Completely unrelated note about fonts."):
            session.add(
                TaskMemory(project_id=project.id, memory_type="learning", content=content, tags=[], file_links=[])
            )
    result = _run(project.id, resolve_options({"similarity_threshold": 0.8}))
    assert result.clusters_found == 1 and result.memories_merged == 2
    merged = next(m for m in _memories(project.id).values() if m.consolidated_from)
    assert merged.embedding is None and "Seen on the staging cluster." in merged.content


def test_options_change_what_is_merged(database):
    (manifest,) = _seed()
    pid = uuid.UUID(manifest.id)
    dry = preview(pid, resolve_options({"min_cluster_size": 3, "archive": False}))
    assert dry.clusters_found == sum(len(g) >= 3 for g in manifest.groups)
    assert dry.memories_archived == 0
    dry = preview(pid, resolve_options({"merge": False}))
    assert dry.clusters_found == 0 and dry.memories_archived == len(manifest.stale)
    dry = preview(pid, resolve_options({"similarity_threshold": 0.8}))
    assert dry.clusters_found == len(manifest.groups) + len(manifest.near_miss)


def test_disabled_and_missing_projects(database):
    manifests = _seed(projects=3)
    disabled = uuid.UUID(next(m.id for m in manifests if m.kind == "disabled"))
    with pytest.raises(ProjectDisabled):
        preview(disabled, DEFAULTS)
    assert preview(disabled, DEFAULTS, force=True).clusters_found > 0
    with pytest.raises(ProjectGone):
        preview(uuid.uuid4(), DEFAULTS)
