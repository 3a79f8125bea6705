import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from orchestration.consolidation.audit import RollbackRefused, change_counts, prune_audit, rollback_job
from orchestration.demo.seed import seed
from orchestration.jobs import lifecycle
from orchestration.settings import load_settings
from orchestration.store import db
from orchestration.store.documents import row_dict
from orchestration.store.models import ConsolidationChange, ConsolidationJob, TaskMemory
from orchestration.store.statuses import TriggerType
from orchestration.store.types import utcnow


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
    with db.session_scope() as session:
        return rollback_job(session, job_id, retention_days, **kw)


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
        assert {k: v for k, v in now.items() if k != "version"} == {k: v for k, v in original.items() if k != "version"}
        if memory_id in touched:
            assert now["version"] > after_job[memory_id]["version"] > original["version"]
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
