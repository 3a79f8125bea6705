"""The value guard and the calibration report on SQLite and PostgreSQL: memories that
embed alike but state different values are never merged into one."""

import uuid

import numpy as np
from sqlalchemy import select

from orchestration.consolidation.calibration import THRESHOLDS, calibrate
from orchestration.consolidation.embeddings import normalize_rows, to_bytes
from orchestration.consolidation.options import resolve_options
from orchestration.consolidation.preview import preview
from orchestration.demo.seed import plant_texts
from orchestration.store import db
from orchestration.store.models import TaskMemory
from support import consolidate, manual_job

# Four memories that embed almost alike: two say 40 s, two say 4 minutes.
BUILD = [
    "The CI build takes 40 s.",
    "Building in CI takes 40 seconds.",
    "The CI build takes 4 min.",
    "Building in CI takes 4 minutes.",
]


def _project(texts, vectors) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with db.session_scope() as session:
        return plant_texts(session, "guard", texts, [to_bytes(v) for v in vectors])


def _alike(n, seed=0, noise=0.02):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(32)
    return normalize_rows(np.stack([base + noise * rng.standard_normal(32) for _ in range(n)]).astype(np.float32))


def _groups(result, ids):
    name = {str(m): k for k, m in enumerate(ids)}
    return sorted(sorted([name[c["representative"]], *(name[m["id"]] for m in c["members"])]) for c in result.clusters)


def test_the_guard_keeps_different_values_apart_and_merges_the_rest(database):
    pid, ids = _project(BUILD, _alike(4))
    guarded = preview(pid, resolve_options(None))
    assert _groups(guarded, ids) == [[0, 1], [2, 3]]
    assert guarded.pairs_kept_apart == 4  # each "40 s" memory with each "4 min" one
    unguarded = preview(pid, resolve_options({"value_guard": False}))
    assert _groups(unguarded, ids) == [[0, 1, 2, 3]] and unguarded.pairs_kept_apart == 0

    result = consolidate(pid, resolve_options({"archive": False}), job_id=manual_job(pid))
    assert (result.clusters_found, result.pairs_kept_apart) == (2, 4)
    with db.session_scope() as session:
        merged = session.scalars(
            select(TaskMemory.content).where(TaskMemory.project_id == pid, TaskMemory.memory_type == "consolidated")
        ).all()
    assert sorted(("40 s" in text, "4 min" in text) for text in merged) == [(False, True), (True, False)]


def test_a_member_must_agree_with_every_member_not_only_the_representative(database):
    texts = [
        "The deploy takes about 8 minutes.",  # no number of its own kind but the duration
        "The deploy takes about 8 minutes, 40 s of them on the health check.",
        "The deploy takes about 8 minutes, 90 s of them on the health check.",
    ]
    pid, ids = _project(texts, _alike(3, seed=1))
    # 1 and 2 each agree with 0 ({480} is in both), but not with each other ({480, 40} vs {480, 90}).
    assert _groups(preview(pid, resolve_options(None)), ids) == [[0, 1]]


def test_the_calibration_report_matches_a_dry_run_at_every_threshold(database):
    rng = np.random.default_rng(5)
    vectors = list(_alike(4))  # the BUILD memories, near-identical
    base = normalize_rows(rng.standard_normal((1, 32)).astype(np.float32))[0]
    for similarity in (0.91, 0.89, 0.83):  # a pair at each: just above, just below, further below 0.90
        other = normalize_rows((rng.standard_normal((1, 32))).astype(np.float32))[0]
        other = normalize_rows((other - (other @ base) * base)[None, :])[0]
        vectors += [base, similarity * base + np.sqrt(1 - similarity**2) * other]
        base = normalize_rows(rng.standard_normal((1, 32)).astype(np.float32))[0]
    texts = [*BUILD, "alpha one", "alpha two", "beta one", "beta two", "gamma one", "gamma two"]
    pid, ids = _project(texts, normalize_rows(np.stack(vectors).astype(np.float32)))
    with db.session_scope() as session:
        report = calibrate(session, pid, resolve_options(None))
    assert [row.threshold for row in report.thresholds] == list(THRESHOLDS)
    assert report.memories == report.compared == 10 and report.threshold == 0.9 and report.value_guard
    for row in report.thresholds:
        dry = preview(pid, resolve_options({"similarity_threshold": row.threshold}))
        assert (row.memories_merged, row.clusters, row.pairs_kept_apart) == (
            dry.memories_merged,
            dry.clusters_found,
            dry.pairs_kept_apart,
        )
    at = {row.threshold: row for row in report.thresholds}
    assert (at[0.80].memories_with_neighbour, at[0.88].memories_with_neighbour, at[0.90].memories_with_neighbour) == (
        10,
        8,
        6,
    )
    assert [(p["a"]["content"], p["b"]["content"]) for p in report.above] == [("alpha one", "alpha two")]
    assert [(p["a"]["content"], p["b"]["content"]) for p in report.below] == [("beta one", "beta two")]
    assert report.above[0]["similarity"] == 0.91 and report.below[0]["similarity"] == 0.89
    assert sum(b["memories"] for b in report.histogram) == 10 and report.nearest["max"] > 0.99
