"""What an incremental pass checks again (docs/consolidation.md, "Incremental passes"):
a completed pass records the memories it could not read in bulk (bad data among them,
``consolidation_jobs.irregular_ids``); the next one checks in full only those and the
memories marked since, and in every memory what changes without marking it. On both
databases (only PostgreSQL reads in bulk: on SQLite nothing is recorded)."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from sqlalchemy import select, text, update

from orchestration.consolidation import passes, planning
from orchestration.consolidation.options import resolve_options
from orchestration.demo.seed import seed
from orchestration.documents.jobs import job_document
from orchestration.jobs import lifecycle
from orchestration.settings import get_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, TaskMemory
from orchestration.store.statuses import PassMode, TriggerType
from orchestration.store.types import utcnow

DEFAULTS = resolve_options(None)


def _seeded() -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A project of 60 memories, and the ids of some that belong to no duplicate group."""
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 60, seed=3, dim=32)
    grouped = {m for group in manifest.groups for m in group}
    with db.session_scope() as session:
        ids = session.scalars(select(TaskMemory.id).where(TaskMemory.project_id == uuid.UUID(manifest.id))).all()
    return uuid.UUID(manifest.id), sorted(i for i in ids if str(i) not in grouped)


def _job(project_id: uuid.UUID) -> ConsolidationJob:
    """One job, run to completion as a worker runs it; its row."""
    with db.session_scope() as session:
        job_id = lifecycle.create_job(
            session, project_id, run_id=None, trigger_type=TriggerType.MANUAL, triggered_by="test", options=None
        ).id
    assert lifecycle.run(job_id, get_settings()).status == "completed"
    with db.session_scope() as session:
        job = session.get_one(ConsolidationJob, job_id)
        session.expunge(job)
        return job


def _set(memory_id: uuid.UUID, **values) -> None:
    with db.session_scope() as session:
        session.execute(update(TaskMemory).where(TaskMemory.id == memory_id).values(**values))


def _raw(statement: str, **params) -> None:
    """A write as an agent's raw SQL would make it."""
    with db.session_scope() as session:
        session.execute(text(statement), params)


def _next_pass(project_id: uuid.UUID, full: bool = False) -> passes.Pass:
    with db.session_scope() as session:
        return passes.choose(session, project_id, DEFAULTS, utcnow(), full=full)


def _plan(project_id: uuid.UUID, pass_: passes.Pass) -> planning.Plan:
    with db.session_scope() as session:
        return planning.plan(session, project_id, DEFAULTS, utcnow(), pass_)


def _skipped(planned: planning.Plan) -> dict[uuid.UUID | None, str | None]:
    return {error.memory_id: error.field for error in planned.invalid}


def test_a_job_records_the_memories_it_read_row_by_row_and_the_next_checks_them_again(database):
    project_id, (bad, odd, *_) = _seeded()
    _set(bad, tags="deploy")  # bad data: skipped
    _set(odd, consolidated_from=[uuid.uuid4().hex])  # an id, but not in canonical form: read row by row
    first = _job(project_id)
    bulk = db.is_postgresql()
    if bulk:
        assert first.irregular_ids == {"checks": passes.CHECKS_VERSION, "ids": sorted([str(bad), str(odd)])}
    else:  # nothing read in bulk: the next pass checks every memory
        assert first.irregular_ids is None
    assert _next_pass(project_id).recheck == ({bad, odd} if bulk else None)
    second = _job(project_id)
    assert (second.mode, second.skipped_invalid) == (PassMode.INCREMENTAL, 1)  # still skipped
    assert second.irregular_ids == first.irregular_ids
    # Bookkeeping, not shown: up to 10,000 ids would swell every job's JSON (API, CLI).
    assert "irregular_ids" not in job_document(second, None) and "mode" in job_document(second, None)


def test_what_changes_without_marking_a_memory_is_checked_in_every_memory(database):
    project_id, (negative, far, *_) = _seeded()
    _job(project_id)
    with db.session_scope() as session:
        marks = dict(session.execute(select(TaskMemory.id, TaskMemory.change_mark)).all())
    _set(negative, reused_count=-5)
    _raw(
        "UPDATE task_memories SET last_reused_at = :v WHERE id = :id",
        v="infinity" if db.is_postgresql() else "yesterday",
        id=str(far),
    )
    with db.session_scope() as session:  # neither change marks them: not new to the next pass
        assert dict(session.execute(select(TaskMemory.id, TaskMemory.change_mark)).all()) == marks
    pass_ = _next_pass(project_id)
    assert pass_.mode == PassMode.INCREMENTAL and pass_.recheck == (frozenset() if db.is_postgresql() else None)
    planned = _plan(project_id, pass_)
    assert _skipped(planned) == {negative: "reused_count", far: "last_reused_at"}


def test_a_change_made_behind_the_triggers_is_seen_when_recorded_or_by_a_full_pass(pg_database):
    """What the carry-over trusts: every change to a checked column marks the memory
    (migration 0008's triggers). An edit with the triggers disabled is not seen by an
    incremental pass (nor does it fail the read), only by one that checks the memory
    in full: recorded irregular, recorded by other checks, or a full pass."""
    project_id, (victim, *_) = _seeded()
    _job(project_id)
    with db.session_scope() as session:
        session.execute(text("ALTER TABLE task_memories DISABLE TRIGGER USER"))
        session.execute(
            text("""UPDATE task_memories SET consolidated_from = '["not an id"]' WHERE id = :id"""), {"id": victim}
        )
        session.execute(text("ALTER TABLE task_memories ENABLE TRIGGER USER"))
    pass_ = _next_pass(project_id)
    assert (pass_.mode, pass_.recheck) == (PassMode.INCREMENTAL, frozenset())
    assert victim not in _skipped(_plan(project_id, pass_))  # trusted: read in bulk
    for checked_in_full in (
        dataclasses.replace(pass_, recheck=frozenset({victim})),
        dataclasses.replace(pass_, recheck=None),
        _next_pass(project_id, full=True),
    ):
        assert _skipped(_plan(project_id, checked_in_full)) == {victim: "consolidated_from"}
    with db.session_scope() as session:  # recorded by checks of another version
        session.execute(
            update(ConsolidationJob)
            .where(ConsolidationJob.project_id == project_id)
            .values(irregular_ids={"checks": passes.CHECKS_VERSION + 1, "ids": []})
        )
    pass_ = _next_pass(project_id)
    assert pass_.recheck is None
    assert _skipped(_plan(project_id, pass_)) == {victim: "consolidated_from"}


@pytest.mark.parametrize(
    "recorded",
    [
        None,
        {"checks": passes.CHECKS_VERSION},
        {"checks": passes.CHECKS_VERSION, "ids": ["not an id"]},
        {"checks": passes.CHECKS_VERSION, "ids": 7},
        {"checks": passes.CHECKS_VERSION, "ids": ""},
        {"checks": passes.CHECKS_VERSION, "ids": {}},
        {"checks": passes.CHECKS_VERSION, "ids": [7]},
        {"checks": True, "ids": []},
        {"checks": float(passes.CHECKS_VERSION), "ids": []},
        {"checks": str(passes.CHECKS_VERSION), "ids": []},
        ["a list"],
    ],
)
def test_a_value_not_written_by_these_checks_makes_the_next_pass_check_every_memory(database, recorded):
    project_id, _ = _seeded()
    job = _job(project_id)
    with db.session_scope() as session:
        session.execute(update(ConsolidationJob).where(ConsolidationJob.id == job.id).values(irregular_ids=recorded))
    pass_ = _next_pass(project_id)
    assert (pass_.mode, pass_.recheck) == (PassMode.INCREMENTAL, None)


def test_too_many_irregular_memories_are_not_listed_and_the_next_pass_checks_all():
    pass_ = passes.Pass(PassMode.FULL, 10, "s")
    most = {uuid.UUID(int=k) for k in range(passes.MAX_IRREGULAR)}
    assert len(pass_.recorded(0, 32, irregular=most)["irregular_ids"]["ids"]) == passes.MAX_IRREGULAR
    assert pass_.recorded(0, 32, irregular=most | {uuid.uuid4()})["irregular_ids"] is None
    assert pass_.recorded(0, 32, irregular=None)["irregular_ids"] is None


def test_a_pass_with_nothing_new_records_what_the_last_one_did(database):
    project_id, (bad, *_) = _seeded()
    _set(bad, tags="deploy")
    _job(project_id)
    pass_ = _next_pass(project_id)
    with db.session_scope() as session:  # nothing marked since this watermark
        pass_ = dataclasses.replace(pass_, since=passes.watermark(session))
    planned = _plan(project_id, pass_)
    assert planned.memories_new == 0
    assert planned.recorded()["irregular_ids"] == (
        {"checks": passes.CHECKS_VERSION, "ids": [str(bad)]} if db.is_postgresql() else None
    )


def test_a_pass_that_left_merges_undone_records_its_set_with_the_older_watermark():
    """What it read stays what it found; the older watermark only makes more memories
    marked since, checked in full again."""
    bad = uuid.uuid4()
    pass_ = passes.Pass(PassMode.INCREMENTAL, watermark=20, signature="s", since=10, recheck=frozenset())
    recorded = pass_.recorded(3, 32, conflicts=2, irregular={bad})
    assert (recorded["watermark"], recorded["irregular_ids"]["ids"]) == (10, [str(bad)])


def test_a_read_at_the_wrong_embedding_length_reads_again_with_the_recorded_set(database):
    """The last pass compared in another length: the first read guesses it, finds every
    memory of another length, and reads again at the usual one, with the same set."""
    project_id, (bad, *_) = _seeded()
    _set(bad, tags="deploy")
    _job(project_id)
    pass_ = _next_pass(project_id)
    elsewhere = dataclasses.replace(pass_, space=(pass_.space or 0) * 2)
    planned = _plan(project_id, elsewhere)
    assert planned.mode == PassMode.FULL and _skipped(planned) == {bad: "tags"}
    assert planned.recorded()["irregular_ids"] == (
        {"checks": passes.CHECKS_VERSION, "ids": [str(bad)]} if db.is_postgresql() else None
    )
