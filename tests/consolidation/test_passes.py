"""Incremental passes (docs/consolidation.md, "Incremental passes"): the database marks
every change that matters, a pass chooses its mode from what the last completed one
recorded, and on a converged project an incremental pass plans exactly what a full
one plans. On both databases."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from orchestration.consolidation import applying, passes, planning
from orchestration.consolidation.embeddings import to_bytes
from orchestration.consolidation.options import resolve_options
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, Project, TaskMemory
from orchestration.store.statuses import JobStatus, PassMode, TriggerType
from orchestration.store.types import utcnow
from support import manual_job

DIM = 8
DEFAULTS = resolve_options(None)


def _project() -> uuid.UUID:
    with db.session_scope() as session:
        project = Project(name=f"p-{uuid.uuid4().hex[:8]}")
        session.add(project)
        session.flush()
        return project.id


def _unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def _add(project_id: uuid.UUID, vectors: list[np.ndarray], texts: list[str] | None = None, **values) -> list[uuid.UUID]:
    """Memories of these embeddings (fresh, so not stale), in one transaction."""
    memories = [
        TaskMemory(
            project_id=project_id,
            memory_type=values.get("memory_type", "learning"),
            content=(texts[k] if texts else "a note about the build"),
            embedding=to_bytes(vector),
            learned_at=values.get("learned_at", utcnow()),
            reused_count=values.get("reused_count", 5),
        )
        for k, vector in enumerate(vectors)
    ]
    with db.session_scope() as session:
        session.add_all(memories)
        session.flush()
        return [m.id for m in memories]


def _marks(ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    with db.session_scope() as session:
        return dict(session.execute(select(TaskMemory.id, TaskMemory.change_mark).where(TaskMemory.id.in_(ids))).all())


def _watermark() -> int:
    with db.session_scope() as session:
        return passes.watermark(session)


def test_the_database_marks_every_change_that_matters(database):
    project_id = _project()
    before = _watermark()
    kept, edited, reused, archived = _add(project_id, [_unit(np.eye(DIM)[k] + 0.1) for k in range(4)])
    marks = _marks([kept, edited, reused, archived])
    assert all(mark >= before for mark in marks.values())  # inserted: new to a pass that took ``before``
    after_insert = _watermark()
    assert after_insert >= before
    with db.session_scope() as session:
        session.execute(update(TaskMemory).where(TaskMemory.id == edited).values(content="changed"))
        session.execute(update(TaskMemory).where(TaskMemory.id == reused).values(reused_count=9))
        session.execute(update(TaskMemory).where(TaskMemory.id == archived).values(is_archived=True))
    changed = _marks([kept, edited, reused, archived])
    assert changed[edited] >= after_insert  # its content: new again
    assert {k: changed[k] for k in (kept, reused, archived)} == {k: marks[k] for k in (kept, reused, archived)}
    before_restore = _watermark()
    with db.session_scope() as session:
        session.execute(update(TaskMemory).where(TaskMemory.id == archived).values(is_archived=False))
        session.execute(update(TaskMemory).where(TaskMemory.id == kept).values(tags=["fixed"]))
    # Active again (a rollback), or a field a pass skips it for when malformed, fixed: new again.
    assert all(mark >= before_restore for mark in _marks([archived, kept]).values())


def _record(project_id: uuid.UUID, pass_: passes.Pass, space: int, completed_at=None, conflicts: int = 0) -> None:
    """A completed job that recorded ``pass_``, as the end of a job does."""
    job_id = manual_job(project_id, JobStatus.COMPLETED)
    with db.session_scope() as session:
        session.execute(
            update(ConsolidationJob)
            .where(ConsolidationJob.id == job_id)
            .values(completed_at=completed_at or utcnow(), **pass_.recorded(3, space, conflicts))
        )


def test_a_pass_is_full_until_one_completed_and_then_incremental(database):
    project_id = _project()
    with db.session_scope() as session:
        first = passes.choose(session, project_id, DEFAULTS, utcnow())
    assert (first.mode, first.reason) == (PassMode.FULL, "no earlier completed pass")
    _record(project_id, first, space=DIM * 4)
    with db.session_scope() as session:
        second = passes.choose(session, project_id, DEFAULTS, utcnow())
        requested = passes.choose(session, project_id, DEFAULTS, utcnow(), full=True)
        other = passes.choose(session, project_id, resolve_options({"similarity_threshold": 0.8}), utcnow())
        archive_only_change = passes.choose(session, project_id, resolve_options({"archive_stale_days": 9}), utcnow())
    assert (second.mode, second.since, second.space) == (PassMode.INCREMENTAL, first.watermark, DIM * 4)
    assert second.watermark >= first.watermark
    assert (requested.mode, requested.reason) == (PassMode.FULL, "requested (--full)")
    assert (other.mode, other.reason) == (PassMode.FULL, "the options that decide which pairs merge changed")
    assert archive_only_change.mode == PassMode.INCREMENTAL


def test_merges_left_undone_by_a_conflict_are_compared_again(database):
    """An agent changed a memory between the plan and the write (a reuse, which marks
    nothing): the pass records the watermark it started from, so the next compares
    those memories again; after a full pass with conflicts the next is full."""
    project_id = _project()
    with db.session_scope() as session:
        first = passes.choose(session, project_id, DEFAULTS, utcnow())
    _record(project_id, first, DIM * 4)
    with db.session_scope() as session:
        second = passes.choose(session, project_id, DEFAULTS, utcnow())
    _record(project_id, second, DIM * 4, conflicts=1)
    with db.session_scope() as session:
        third = passes.choose(session, project_id, DEFAULTS, utcnow())
    assert (third.mode, third.since) == (PassMode.INCREMENTAL, first.watermark)
    _record(project_id, first, DIM * 4, conflicts=2)  # a full pass that left merges undone
    with db.session_scope() as session:
        fourth = passes.choose(session, project_id, DEFAULTS, utcnow())
    assert (fourth.mode, fourth.reason) == (
        PassMode.FULL,
        "the last pass left merges undone: an agent changed a memory meanwhile",
    )


def test_a_watermark_ahead_of_the_database_makes_a_full_pass(database):
    """A database restored from a dump (PostgreSQL transaction ids start over)."""
    project_id = _project()
    with db.session_scope() as session:
        first = passes.choose(session, project_id, DEFAULTS, utcnow())
    ahead = passes.Pass(first.mode, first.watermark + 10**9, first.signature)
    _record(project_id, ahead, DIM * 4)
    with db.session_scope() as session:
        again = passes.choose(session, project_id, DEFAULTS, utcnow())
    assert (again.mode, again.reason) == (PassMode.FULL, "the recorded watermark is ahead of the database's")


def test_full_pass_every_days_makes_a_full_pass_when_the_last_full_one_is_that_old(database):
    project_id = _project()
    every_week = resolve_options({"full_pass_every_days": 7})
    with db.session_scope() as session:
        first = passes.choose(session, project_id, every_week, utcnow())
    _record(project_id, first, DIM * 4, completed_at=utcnow() - timedelta(days=8))
    with db.session_scope() as session:
        assert passes.choose(session, project_id, every_week, utcnow() - timedelta(days=2)).mode == PassMode.INCREMENTAL
        due = passes.choose(session, project_id, every_week, utcnow())
    assert (due.mode, due.reason) == (PassMode.FULL, "the last full pass is 7 days old or more (full_pass_every_days)")


# --- exactness: an incremental pass plans what a full pass plans ---------------------


def _plan(project_id: uuid.UUID, options, pass_: passes.Pass | None = None) -> planning.Plan:
    with db.session_scope() as session:
        return planning.plan(session, project_id, options, utcnow(), pass_)


def _outcome(plan: planning.Plan) -> tuple[list, list]:
    """What a plan decides: each cluster's representative and members, and the archive."""
    clusters = sorted((str(c.representative), sorted(str(m) for m, _ in c.members)) for c in plan.clusters)
    return clusters, sorted(str(m) for m in plan.archive)


def _converge(project_id: uuid.UUID, options) -> passes.Pass:
    """Consolidate until a full pass finds nothing to do; the incremental pass that
    would follow (its watermark taken now)."""
    for _ in range(8):
        planned = _plan(project_id, options)
        if planned.is_empty:
            break
        applying.apply(planned, options, manual_job(project_id))
    else:
        pytest.fail("the project did not converge")
    with db.session_scope() as session:
        # Seen, all of them. (On PostgreSQL a watermark is the oldest transaction running
        # on the whole server, which other tests' transactions may hold back: a pass then
        # takes more memories as new, never fewer. Here the new ones must be just those
        # the test adds.)
        session.execute(update(TaskMemory).where(TaskMemory.project_id == project_id).values(change_mark=0))
        since = passes.watermark(session)
    return passes.Pass(PassMode.INCREMENTAL, since, passes.signature(options), since=since, space=DIM * 4)


def _then_incremental(pass_: passes.Pass) -> passes.Pass:
    with db.session_scope() as session:
        return passes.Pass(pass_.mode, passes.watermark(session), pass_.signature, pass_.since, space=pass_.space)


def _assert_incremental_equals_full(project_id: uuid.UUID, options, converged: passes.Pass) -> planning.Plan:
    incremental = _plan(project_id, options, _then_incremental(converged))
    full = _plan(project_id, options)
    assert incremental.mode == PassMode.INCREMENTAL
    assert _outcome(incremental) == _outcome(full)
    return incremental


def _old_project(count: int = 12, seed: int = 1) -> tuple[uuid.UUID, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    vectors = [_unit(rng.normal(size=DIM)) for _ in range(count)]
    project_id = _project()
    _add(project_id, vectors)
    return project_id, vectors


def _near(vector: np.ndarray, rng: np.random.Generator, noise: float = 0.02) -> np.ndarray:
    return _unit(vector + rng.normal(scale=noise, size=DIM))


def test_nothing_new_reads_no_embeddings_and_still_archives(database):
    project_id, _ = _old_project()
    converged = _converge(project_id, DEFAULTS)
    stale = _add(project_id, [_unit(np.ones(DIM))], learned_at=utcnow() - timedelta(days=400), reused_count=0)
    with db.session_scope() as session:  # seen by the last pass
        session.execute(update(TaskMemory).where(TaskMemory.id == stale[0]).values(change_mark=0))
    incremental = _plan(project_id, DEFAULTS, _then_incremental(converged))
    assert (incremental.memories_new, incremental.clusters, incremental.archive) == (0, [], stale)
    assert _outcome(incremental) == _outcome(_plan(project_id, DEFAULTS))


def test_new_duplicates_of_old_memories_merge_with_them(database):
    project_id, old = _old_project()
    converged = _converge(project_id, DEFAULTS)
    rng = np.random.default_rng(2)
    _add(project_id, [_near(old[0], rng), _near(old[3], rng)])
    planned = _assert_incremental_equals_full(project_id, DEFAULTS, converged)
    assert len(planned.clusters) == 2 and planned.memories_new == 2


def test_new_duplicates_of_each_other_merge(database):
    project_id, _ = _old_project()
    converged = _converge(project_id, DEFAULTS)
    rng = np.random.default_rng(3)
    fresh = _unit(rng.normal(size=DIM))
    _add(project_id, [fresh, _near(fresh, rng), _near(fresh, rng)])
    planned = _assert_incremental_equals_full(project_id, DEFAULTS, converged)
    assert [len(c.source_ids) for c in planned.clusters] == [3]


def test_new_distinct_memories_merge_nothing(database):
    project_id, _ = _old_project()
    converged = _converge(project_id, DEFAULTS)
    rng = np.random.default_rng(4)
    _add(project_id, [_unit(rng.normal(size=DIM)) for _ in range(3)])
    assert _assert_incremental_equals_full(project_id, DEFAULTS, converged).clusters == []


def test_conflicting_values_stay_apart_and_an_old_pair_kept_apart_joins_a_new_cluster(database):
    """Two old memories alike but for their version were kept apart (the project is
    converged with that pair); a new memory stating the first one's version joins it.
    The component reached from the new memory includes the old pair."""
    project_id = _project()
    rng = np.random.default_rng(5)
    base = _unit(rng.normal(size=DIM))
    _add(project_id, [base, _near(base, rng)], texts=["deploy with tool v1.2.3", "deploy with tool v1.2.4"])
    converged = _converge(project_id, DEFAULTS)
    _add(project_id, [_near(base, rng), _near(base, rng)], texts=["deploy with tool v1.2.3", "deploy with tool v2.0.0"])
    planned = _assert_incremental_equals_full(project_id, DEFAULTS, converged)
    assert len(planned.clusters) == 1 and planned.pairs_kept_apart > 0


def test_an_old_pair_too_small_to_merge_joins_a_new_memory_and_keeps_its_representative(database):
    """With min_cluster_size=3 an old pair of alike memories stays (too small); a new
    memory alike makes three. The full pass makes the oldest the representative: so
    must the incremental one, which needs the old pair's own edge (reached through the
    new memory) to see it."""
    options = resolve_options({"min_cluster_size": 3})
    project_id = _project()
    rng = np.random.default_rng(6)
    base = _unit(rng.normal(size=DIM))
    first = _add(project_id, [base], learned_at=utcnow() - timedelta(days=3))
    _add(project_id, [_near(base, rng)], learned_at=utcnow() - timedelta(days=2))
    converged = _converge(project_id, options)
    _add(project_id, [_near(base, rng)])
    planned = _assert_incremental_equals_full(project_id, options, converged)
    assert [c.representative for c in planned.clusters] == first


def test_a_changed_embedding_length_makes_the_pass_full(database):
    project_id, _ = _old_project()
    converged = _converge(project_id, DEFAULTS)
    _add(project_id, [_unit(np.ones(DIM))])
    elsewhere = passes.Pass(PassMode.INCREMENTAL, converged.watermark, converged.signature, converged.since, space=64)
    planned = _plan(project_id, DEFAULTS, elsewhere)
    assert (planned.mode, planned.pass_.reason if planned.pass_ else None) == (
        PassMode.FULL,
        "the project's embedding length changed",
    )


VERSIONS = ["", "tool v1.2.3", "tool v1.2.4", "path /srv/app"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    old=st.integers(2, 14),
    new=st.lists(st.tuples(st.sampled_from(["old", "new", "distinct"]), st.sampled_from(VERSIONS)), max_size=10),
    min_cluster_size=st.sampled_from([2, 3]),
    types=st.booleans(),
)
def test_an_incremental_pass_plans_what_a_full_pass_plans(database, seed, old, new, min_cluster_size, types):
    """Random small converged projects (a few directions, duplicates and values among
    them), then any mix of new memories: duplicates of old ones or of each other,
    distinct ones, with or without conflicting values."""
    rng = np.random.default_rng(seed)
    options = resolve_options({"min_cluster_size": min_cluster_size})
    project_id = _project()
    directions = [_unit(rng.normal(size=DIM)) for _ in range(max(2, old // 2))]
    olds = [_near(directions[rng.integers(len(directions))], rng, 0.05) for _ in range(old)]
    texts = [f"note {k} {VERSIONS[rng.integers(len(VERSIONS))]}" for k in range(old)]
    kind = ["learning", "decision"]
    for k, vector in enumerate(olds):
        _add(project_id, [vector], [texts[k]], memory_type=kind[k % 2] if types else "learning")
    converged = _converge(project_id, options)
    added: list[np.ndarray] = []
    for k, (of, value) in enumerate(new):
        if of == "old":
            vector = _near(olds[rng.integers(len(olds))], rng)
        elif of == "new" and added:
            vector = _near(added[rng.integers(len(added))], rng)
        else:
            vector = _unit(rng.normal(size=DIM))
        added.append(vector)
        _add(project_id, [vector], [f"new {k} {value}"], memory_type=kind[k % 2] if types else "learning")
    _assert_incremental_equals_full(project_id, options, converged)


def test_the_recorded_pass_is_what_the_next_one_starts_from(database):
    project_id, _ = _old_project()
    with db.session_scope() as session:
        first = passes.choose(session, project_id, DEFAULTS, utcnow())
    planned = _plan(project_id, DEFAULTS, first)
    assert planned.recorded()["mode"] == PassMode.FULL and planned.recorded()["memories_new"] == 12
    assert planned.recorded()["signature"].endswith(f":{DIM * 4}")
    assert TriggerType.MANUAL  # the job below is a manual one
    _record(project_id, first, DIM * 4)
    with db.session_scope() as session:
        assert passes.choose(session, project_id, DEFAULTS, utcnow()).since == first.watermark


def test_jobs_from_before_passes_were_recorded_are_named_as_the_reason_for_a_full_pass(database):
    project_id = _project()
    manual_job(project_id, JobStatus.COMPLETED)  # completed before migration 0008: no mode, no watermark
    with db.session_scope() as session:
        first = passes.choose(session, project_id, DEFAULTS, utcnow())
    assert (first.mode, first.reason) == (
        PassMode.FULL,
        "no earlier completed pass recorded a watermark (they predate incremental passes)",
    )
