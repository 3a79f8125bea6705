"""Consolidating one project, on SQLite and PostgreSQL, checked against what the
seeder planted."""

import uuid
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import select, update

from orchestration import consolidation, db, locks
from orchestration.consolidation import consolidate_project, merge_content
from orchestration.dbtypes import utcnow
from orchestration.embeddings import to_bytes
from orchestration.models import ConsolidationJob, Project, TaskMemory
from orchestration.options import resolve_options
from orchestration.seed import seed
from support import fingerprint

DEFAULTS = resolve_options(None)


def _seed(memories=80, projects=1, seed_value=3):
    with db.session_scope() as session:
        return seed(session, projects, memories, seed=seed_value, dim=32)


def _job(project_id) -> uuid.UUID:
    with db.session_scope() as session:
        job = ConsolidationJob(project_id=project_id, trigger_type="manual", triggered_by="test", status="running")
        session.add(job)
    return job.id


def _run(project_id, options=DEFAULTS, **kwargs):
    return consolidate_project(project_id, options, job_id=_job(project_id), **kwargs)


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
            for sentence in consolidation._sentences(source.content):
                assert sentence in merged.content
            assert set(source.tags) <= set(merged.tags) and set(source.file_links) <= set(merged.file_links)
            assert after[source.id].is_duplicate and after[source.id].duplicate_of == merged.id
        assert merged.reused_count == sum(s.reused_count for s in sources)
        # The representative is the most reused source and comes first.
        assert merged.consolidated_from[0] == str(max(sources, key=lambda s: s.reused_count).id)
        assert merged.content.startswith(consolidation._sentences(sources[0].content)[0])
        vector = np.frombuffer(merged.embedding, dtype="<f4")
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-5


def test_dry_run_changes_nothing_and_predicts_the_real_run(database):
    (manifest,) = _seed()
    pid = uuid.UUID(manifest.id)
    state = fingerprint()
    dry = consolidate_project(pid, DEFAULTS, dry_run=True)
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
    monkeypatch.setattr(consolidation, "MERGE_BATCH", 2)
    monkeypatch.setattr(consolidation, "ARCHIVE_BATCH", 3)
    db.use_database(another_database_url)
    (clean,) = _seed(memories=200)
    _run(uuid.UUID(clean.id))
    expected = fingerprint()

    db.use_database(database)
    (manifest,) = _seed(memories=200)
    pid = uuid.UUID(manifest.id)
    real_batch = consolidation._merge_batch
    calls = {"n": 0}

    def crash_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("worker killed")
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(consolidation, "_merge_batch", crash_on_third_batch)
    job_id = _job(pid)
    with pytest.raises(ConnectionError):
        consolidate_project(pid, DEFAULTS, job_id=job_id)
    with db.session_scope() as session:
        partial = session.get(ConsolidationJob, job_id)
        assert partial.clusters_found == 4  # two whole batches of two clusters
    assert fingerprint() != expected
    consolidate_project(pid, DEFAULTS, job_id=job_id)  # the rerun, same job
    assert fingerprint() == expected
    with db.session_scope() as session:
        job = session.get(ConsolidationJob, job_id)
    assert job.clusters_found == len(manifest.groups)
    assert job.memories_merged == sum(len(g) for g in manifest.groups)
    assert job.memories_archived == len(manifest.stale)


def test_a_concurrent_writer_is_never_overwritten(database):
    (manifest,) = _seed()
    pid = uuid.UUID(manifest.id)
    bumped = uuid.UUID(manifest.groups[0][1])
    stale_touched = uuid.UUID(manifest.stale[0])
    new_id = uuid.uuid4()

    def agent_writes(stage, fraction):
        if stage != "similarity":
            return
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
    result = _run(pid, progress=agent_writes)
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
    assert result.clusters_found >= len(manifest.groups) - 2


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
    dry = consolidate_project(pid, resolve_options({"min_cluster_size": 3, "archive": False}), dry_run=True)
    assert dry.clusters_found == sum(len(g) >= 3 for g in manifest.groups)
    assert dry.memories_archived == 0
    dry = consolidate_project(pid, resolve_options({"merge": False}), dry_run=True)
    assert dry.clusters_found == 0 and dry.memories_archived == len(manifest.stale)
    dry = consolidate_project(pid, resolve_options({"similarity_threshold": 0.8}), dry_run=True)
    assert dry.clusters_found == len(manifest.groups) + len(manifest.near_miss)


def test_two_jobs_never_consolidate_one_project_at_once(database):
    (manifest,) = _seed()
    pid = uuid.UUID(manifest.id)
    with db.session_scope() as session:
        locks.acquire(session, pid, "other-job", utcnow(), timedelta(hours=1))
    with pytest.raises(locks.ProjectBusy, match="busy"):
        _run(pid)
    # A lock whose holder stopped heartbeating is taken over.
    with db.session_scope() as session:
        session.execute(update(locks.ProjectLock).values(heartbeat_at=utcnow() - timedelta(hours=2)))
    assert _run(pid).clusters_found == len(manifest.groups)
    with db.session_scope() as session:
        assert session.scalar(select(locks.ProjectLock)) is None  # released


def test_disabled_and_missing_projects(database):
    manifests = _seed(projects=3)
    disabled = uuid.UUID(next(m.id for m in manifests if m.kind == "disabled"))
    with pytest.raises(consolidation.ProjectDisabled):
        _run(disabled)
    assert _run(disabled, force=True).clusters_found > 0
    with pytest.raises(consolidation.ProjectGone):
        consolidate_project(uuid.uuid4(), DEFAULTS, dry_run=True)


def test_merge_content_keeps_unique_sentences_once():
    merged = merge_content(["Use a retry. Keep it short!", "use a retry.  Then log it?", "Keep it short"])
    assert merged == "Use a retry. Keep it short! Then log it?"
    assert (
        merge_content(["Émigré café: naïve façade. 日本語の文。", "日本語の文。"])
        == "Émigré café: naïve façade. 日本語の文。"
    )
