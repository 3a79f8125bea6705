import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from orchestration.consolidation.audit import (
    RollbackRefused,
    change_counts,
    preview_rollback,
    prune_audit,
    rollback_job,
)
from orchestration.demo.seed import seed
from orchestration.jobs import lifecycle
from orchestration.jobs.rollback import roll_back
from orchestration.settings import load_settings
from orchestration.store import db
from orchestration.store.documents import row_dict
from orchestration.store.models import ConsolidationChange, ConsolidationJob, TaskMemory
from orchestration.store.statuses import JobStatus, TriggerType
from orchestration.store.types import utcnow
from support import job_row, manual_job


def _consolidated_job(status="completed"):
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 80, seed=11, dim=32)
        job = lifecycle.create_job(
            session,
            uuid.UUID(manifest.id),
            run_id=None,
            trigger_type=TriggerType.MANUAL,
            triggered_by="t",
            options=None,
        )
    before = _rows()
    assert lifecycle.run(job.id, load_settings({})).status == "completed"
    with db.session_scope() as session:
        session.execute(
            update(ConsolidationJob).where(ConsolidationJob.id == job.id).values(status=status, completed_at=utcnow())
        )
    return manifest, job.id, before


def _rows() -> dict[uuid.UUID, dict]:
    with db.session_scope() as session:
        return {m.id: row_dict(m) for m in session.scalars(select(TaskMemory))}


def _rollback(job_id, retention_days=90, **kw):
    """A job's rollback as the command line does it: undone, and the job marked."""
    with db.session_scope() as session:
        return roll_back(session, job_id, retention_days, **kw)


# Bumped by a rollback: the version (optimistic concurrency), and the change mark (a
# restored memory is new to the next incremental pass).
BUMPED = ("version", "change_mark")


def test_rollback_restores_every_column_but_version(database):
    manifest, job_id, before = _consolidated_job()
    after_job = _rows()
    created = set(after_job) - set(before)
    assert len(created) == len(manifest.groups)
    result = _rollback(job_id)
    restored = _rows()
    assert set(restored) == set(before)  # consolidated memories removed
    touched = [m for m in before if before[m] != after_job[m]]
    assert len(touched) == result.restored == sum(len(g) for g in manifest.groups) + len(manifest.stale)
    for memory_id, original in before.items():
        now = restored[memory_id]
        assert {k: v for k, v in now.items() if k not in BUMPED} == {
            k: v for k, v in original.items() if k not in BUMPED
        }
        if memory_id in touched:
            assert now["version"] > after_job[memory_id]["version"] > original["version"]
            assert now["change_mark"] > original["change_mark"]
    with db.session_scope() as session:
        counts = change_counts(session, job_id)
    assert counts["rollback"] == result.restored


def test_audit_rows_are_small_and_never_copy_embeddings_or_content(database):
    _, job_id, _ = _consolidated_job()
    with db.session_scope() as session:
        changes = session.scalars(select(ConsolidationChange).where(ConsolidationChange.job_id == job_id)).all()
    assert changes
    for change in changes:
        blob = json.dumps([change.previous_state, change.new_state])
        assert "embedding" not in blob and 'content"' not in blob
        assert len(blob) < 1024


def test_a_second_rollback_is_refused(database):
    _, job_id, _ = _consolidated_job()
    _rollback(job_id)
    with pytest.raises(RollbackRefused, match="already rolled back"):
        _rollback(job_id)


def test_rollback_refuses_when_a_touched_memory_changed_since(database):
    manifest, job_id, _ = _consolidated_job()
    with db.session_scope() as session:
        memory = session.get(TaskMemory, uuid.UUID(manifest.groups[0][0]))
        memory.reused_count += 1  # an agent reused it after the job: its version moves
    state = _rows()
    with pytest.raises(RollbackRefused, match="1 memories changed since") as info:
        _rollback(job_id)
    assert manifest.groups[0][0] in str(info.value)
    assert _rows() == state


def test_rollback_of_an_unfinished_job_is_refused(database):
    _, job_id, _ = _consolidated_job(status="running")
    with pytest.raises(RollbackRefused, match="is running"):
        _rollback(job_id)


def test_prune_deletes_old_rows_in_batches_and_then_rollback_says_why(database):
    _, job_id, _ = _consolidated_job()
    old = utcnow() - timedelta(days=100)
    with db.session_scope() as session:
        total = session.scalar(select(func.count()).select_from(ConsolidationChange))
        session.execute(update(ConsolidationChange).values(changed_at=old))
        session.execute(update(ConsolidationJob).values(completed_at=old, started_at=old))
    assert prune_audit(db.session_scope, retention_days=90, batch_size=7) == total
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(ConsolidationChange)) == 0
    with pytest.raises(RollbackRefused, match="ORCHESTRATION_AUDIT_RETENTION_DAYS=90"):
        _rollback(job_id)


def test_prune_keeps_recent_rows(database):
    _consolidated_job()
    assert prune_audit(db.session_scope, retention_days=90) == 0


def _preview(job_id, retention_days=90):
    with db.session_scope() as session:
        return preview_rollback(session, job_id, retention_days)


def test_the_preview_says_what_the_rollback_does_and_changes_nothing(database):
    manifest, job_id, _ = _consolidated_job()
    state = _rows()
    plan = _preview(job_id)
    assert _rows() == state and job_row(job_id).rolled_back_at is None
    assert plan.refused is None and plan.conflicts == [] and plan.status == "completed"
    merged = sum(len(g) for g in manifest.groups)
    assert (plan.unmerged, plan.repointed, plan.unarchived, plan.removed) == (
        merged,
        0,
        len(manifest.stale),
        len(manifest.groups),
    )
    assert plan.changes == merged + len(manifest.stale)
    result = _rollback(job_id, changed_by="alice")
    assert (result.restored, result.removed, result.unmerged, result.unarchived) == (
        plan.changes,
        plan.removed,
        plan.unmerged,
        plan.unarchived,
    )
    job = job_row(job_id)
    assert job.rolled_back_by == "alice" and job.rolled_back_at == result.rolled_back_at is not None


def test_the_preview_lists_the_conflicts_that_would_refuse_it(database):
    manifest, job_id, before = _consolidated_job()
    source = uuid.UUID(manifest.groups[0][0])
    (created, *_) = set(_rows()) - set(before)  # a consolidated memory the job made
    with db.session_scope() as session:
        for memory_id in (source, created):
            session.get_one(TaskMemory, memory_id).reused_count += 1  # reused since: versions move
    state = _rows()
    plan = _preview(job_id)
    assert _rows() == state
    assert plan.refused is not None and plan.refused.startswith("2 memories changed since")
    assert {c.memory_id: (c.expected_version, c.current_version) for c in plan.conflicts} == {
        str(source): (state[source]["version"] - 1, state[source]["version"]),
        str(created): (1, 2),
    }


def test_a_second_rollback_is_refused_naming_when_and_by_whom(database):
    _, job_id, _ = _consolidated_job()
    at = utcnow()
    _rollback(job_id, changed_by="alice", now=at)
    expected = f"was already rolled back at {at:%Y-%m-%dT%H:%M:%SZ} by alice"
    with pytest.raises(RollbackRefused, match=expected):
        _rollback(job_id, changed_by="bob")
    assert expected in (_preview(job_id).refused or "")
    # A job rolled back before the job row kept it (migration 0004): its audit rows say.
    with db.session_scope() as session:
        job = session.get_one(ConsolidationJob, job_id)
        job.rolled_back_at = job.rolled_back_by = None
    with pytest.raises(RollbackRefused, match=expected):
        _rollback(job_id, changed_by="bob")


def test_the_job_row_is_stamped_in_the_rollbacks_own_transaction(database):
    _, job_id, _ = _consolidated_job()
    state = _rows()
    with pytest.raises(RuntimeError, match="after the rollback"), db.session_scope() as session:
        rollback_job(session, job_id, 90, changed_by="alice")
        raise RuntimeError("after the rollback")  # the transaction is rolled back
    assert _rows() == state and job_row(job_id).rolled_back_at is None
    with db.session_scope() as session:
        assert "rollback" not in change_counts(session, job_id)


def test_the_preview_of_an_unknown_unfinished_or_empty_job_says_why(database):
    assert "does not exist" in (_preview(uuid.uuid4()).refused or "")
    _, job_id, _ = _consolidated_job(status="running")
    assert "is running" in (_preview(job_id).refused or "")
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 8, seed=3, dim=8)
    empty = manual_job(uuid.UUID(manifest.id), status=JobStatus.COMPLETED)
    assert "changed nothing" in (_preview(empty).refused or "")


@pytest.mark.integration
def test_a_concurrent_second_rollback_waits_for_the_first_and_is_refused(pg_database):
    import threading

    _, job_id, _ = _consolidated_job()
    outcome: list[BaseException | None] = []
    with db.session_scope() as first:
        rollback_job(first, job_id, 90, changed_by="alice")  # holds the job row until it commits

        def second() -> None:
            try:
                _rollback(job_id, changed_by="bob")
                outcome.append(None)
            except RollbackRefused as exc:
                outcome.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive() and not outcome  # waiting on the lock
    thread.join(timeout=10)
    (error,) = outcome
    assert isinstance(error, RollbackRefused) and "already rolled back at" in str(error)
    assert str(error).endswith("by alice")
    job = job_row(job_id)
    with db.session_scope() as session:
        assert change_counts(session, job_id)["rollback"] == job.memories_merged + job.memories_archived  # once
