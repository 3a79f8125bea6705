"""Consolidating one project (SPEC §5): plan the merges and archives, then apply them
in batches, each batch one transaction that also records its audit rows and adds
to the job's counters.

Safety while agents keep writing:
- the plan is read once; every batch re-reads its rows under ``FOR UPDATE`` (a
  database lock on SQLite) and drops a cluster or an archive whose memory changed
  since (``version`` moved, or no longer active): nothing is merged from a stale read
  and no concurrent update is overwritten (we only ever write the flag columns);
- a crash between batches leaves whole batches applied; a rerun plans again from the
  current state, where the applied part is no longer active, so nothing is applied
  twice and the end state equals one clean run's.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import numpy as np
from sqlalchemy import and_, bindparam, case, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from orchestration import heartbeat, locks
from orchestration.clustering import star_clusters
from orchestration.counts import count_active
from orchestration.db import chunks, session_scope
from orchestration.dbtypes import utcnow
from orchestration.embeddings import from_bytes, lexical_embedding, normalize_rows, to_bytes
from orchestration.models import ConsolidationChange, ConsolidationJob, Project, TaskMemory, table_of
from orchestration.options import ConsolidationOptions

Progress = Callable[[str, float], None]

MERGE_BATCH = 200  # clusters per transaction
ARCHIVE_BATCH = 1000  # memories per transaction
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


class ProjectGone(LookupError):
    """The project was deleted."""


class ProjectDisabled(RuntimeError):
    """The project has consolidation disabled."""


class Superseded(RuntimeError):
    """A newer attempt of the job took over (this one's heartbeat had stopped): stop
    without writing anything more."""


@dataclass
class Cluster:
    representative: uuid.UUID
    members: list[tuple[uuid.UUID, float]]  # other sources and their similarity to it
    embedding: bytes | None  # normalized mean, None for lexical clusters

    @property
    def source_ids(self) -> list[uuid.UUID]:
        return [self.representative, *(m for m, _ in self.members)]


@dataclass
class Plan:
    project_id: uuid.UUID
    memories_before: int
    versions: dict[uuid.UUID, int]
    clusters: list[Cluster] = field(default_factory=list)
    archive: list[uuid.UUID] = field(default_factory=list)
    skipped_invalid: int = 0
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ConsolidationResult:
    project_id: str
    dry_run: bool
    memories_before: int
    memories_after: int
    clusters_found: int = 0
    memories_merged: int = 0
    memories_archived: int = 0
    skipped_invalid: int = 0
    conflicts: int = 0
    clusters: list[dict[str, Any]] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase

    def counters(self) -> dict[str, int]:
        return {
            "memories_before": self.memories_before,
            "memories_after": self.memories_after,
            "clusters_found": self.clusters_found,
            "memories_merged": self.memories_merged,
            "memories_archived": self.memories_archived,
        }


def active_filter():
    # Spelled exactly like the partial index's predicate, so the planner can use it.
    return and_(~TaskMemory.is_duplicate, ~TaskMemory.is_archived)


def load_project(session: Session, project_id: uuid.UUID, force: bool = False) -> Project:
    return usable_project(session.get(Project, project_id), project_id, force)


def usable_project(project: Project | None, project_id: uuid.UUID, force: bool = False) -> Project:
    """``project`` if it exists and (unless ``force``) has consolidation enabled."""
    if project is None:
        raise ProjectGone(f"project {project_id} does not exist")
    if not project.consolidation_enabled and not force:
        raise ProjectDisabled(f"project {project_id} has consolidation disabled")
    return project


# --- planning -------------------------------------------------------------------


def _effective_types(session: Session, rows: Sequence[Any]) -> dict[uuid.UUID, str]:
    """Memory type for grouping: a ``consolidated`` memory counts as its representative's
    type, so it can merge again with new memories of that type on a later night."""
    types = {row.id: row.memory_type for row in rows}
    pending = {
        row.id: uuid.UUID(row.consolidated_from[0])
        for row in rows
        if row.memory_type == "consolidated" and row.consolidated_from
    }
    for _ in range(32):  # consolidation depth; each level is one query
        if not pending:
            break
        found = {
            r.id: r
            for chunk in chunks(list(set(pending.values())))
            for r in session.execute(
                select(TaskMemory.id, TaskMemory.memory_type, TaskMemory.consolidated_from).where(
                    TaskMemory.id.in_(chunk)
                )
            )
        }
        next_pending = {}
        for memory_id, source_id in pending.items():
            source = found.get(source_id)
            if source is None:
                continue
            if source.memory_type == "consolidated" and source.consolidated_from:
                next_pending[memory_id] = uuid.UUID(source.consolidated_from[0])
            else:
                types[memory_id] = source.memory_type
        pending = next_pending
    return types


def _vectors(rows: Sequence[Any]) -> tuple[dict[Any, list[int]], list[np.ndarray | None], int]:
    """Group row indexes by vector space; returns (space -> rows, vectors, invalid count).

    Stored embeddings of the project's most common length form one space, lexical
    embeddings another. A stored embedding of another length, or with NaN/inf or
    zero norm, is invalid: the memory is skipped (counted) and left untouched.
    """
    lengths = Counter(len(r.embedding) for r in rows if r.embedding is not None)
    dim_bytes = next((n for n, _ in lengths.most_common() if n % 4 == 0 and n > 0), None)
    vectors: list[np.ndarray | None] = [None] * len(rows)
    spaces: dict[Any, list[int]] = defaultdict(list)
    stored = [i for i, r in enumerate(rows) if r.embedding is not None and len(r.embedding) == dim_bytes]
    if stored and dim_bytes is not None:
        # One buffer for all stored embeddings: checked and sliced without a Python loop per value.
        matrix = from_bytes(b"".join(rows[i].embedding for i in stored)).reshape(len(stored), dim_bytes // 4)
        valid = np.isfinite(matrix).all(axis=1) & matrix.any(axis=1)
        for k in np.flatnonzero(valid).tolist():
            vectors[stored[k]] = matrix[k]
            spaces["stored"].append(stored[k])
    for index, row in enumerate(rows):
        if row.embedding is None:
            vectors[index] = lexical_embedding(row.lexical_text or "")
            spaces["lexical"].append(index)
    spaces["stored"].sort()
    invalid = sum(1 for r in rows if r.embedding is not None) - len(spaces["stored"])
    return spaces, vectors, invalid


def plan_project(session: Session, project_id: uuid.UUID, options: ConsolidationOptions, now: datetime) -> Plan:
    """Read the project's active memories and decide what to merge and archive."""
    started = time.perf_counter()
    # Plain Core rows: the ORM adds nothing to a column select but per-row overhead.
    rows = (
        session.connection()
        .execute(
            select(
                TaskMemory.id,
                TaskMemory.memory_type,
                TaskMemory.embedding,
                # Text is only needed where a lexical embedding must be computed.
                case((TaskMemory.embedding.is_(None), TaskMemory.content), else_=None).label("lexical_text"),
                TaskMemory.reused_count,
                TaskMemory.last_reused_at,
                TaskMemory.learned_at,
                TaskMemory.version,
                TaskMemory.consolidated_from,
            ).where(TaskMemory.project_id == project_id, active_filter())
        )
        .all()
    )
    plan = Plan(project_id=project_id, memories_before=len(rows), versions={r.id: r.version for r in rows})
    spaces, vectors, plan.skipped_invalid = _vectors(rows)
    plan.timings["load"] = time.perf_counter() - started
    in_cluster: set[uuid.UUID] = set()
    if options.merge:
        types = _effective_types(session, rows) if options.same_type_only else {}
        for space, indexes in sorted(spaces.items()):
            groups: dict[str, list[int]] = defaultdict(list)
            for i in indexes:
                groups[types.get(rows[i].id, "*")].append(i)
            for _, members in sorted(groups.items()):
                plan.clusters.extend(_cluster_group(rows, vectors, members, options, lexical=space == "lexical"))
        in_cluster = {m for c in plan.clusters for m in c.source_ids}
    plan.timings["similarity"] = time.perf_counter() - started - plan.timings["load"]
    if options.archive:
        cutoff = now - timedelta(days=options.archive_stale_days)
        plan.archive = [
            r.id
            for r, v in zip(rows, vectors, strict=True)
            if v is not None
            and r.id not in in_cluster
            and r.reused_count < options.archive_min_reuse
            and (r.last_reused_at or r.learned_at) < cutoff
        ]
    return plan


def _cluster_group(
    rows: Sequence[Any],
    vectors: list[np.ndarray | None],
    members: list[int],
    options: ConsolidationOptions,
    lexical: bool,
) -> list[Cluster]:
    if len(members) < options.min_cluster_size:
        return []
    # Every member has a vector: the groups are made from the vector spaces.
    matrix = normalize_rows(np.stack([cast(np.ndarray, vectors[i]) for i in members]))
    # Most reused first, then the oldest, then by id: the representative is the most reused source.
    priority = sorted(
        range(len(members)),
        key=lambda k: (-rows[members[k]].reused_count, rows[members[k]].learned_at, str(rows[members[k]].id)),
    )
    clusters = []
    for rep, cluster_members in star_clusters(matrix, priority, options.similarity_threshold, options.min_cluster_size):
        indexes = [rep, *(k for k, _ in cluster_members)]
        embedding = None
        if not lexical:
            mean = matrix[indexes].mean(axis=0)
            embedding = to_bytes(mean / (np.linalg.norm(mean) or 1.0))
        clusters.append(
            Cluster(
                representative=rows[members[rep]].id,
                members=[(rows[members[k]].id, round(s, 6)) for k, s in cluster_members],
                embedding=embedding,
            )
        )
    return clusters


# --- merging text and lists -----------------------------------------------------


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _sentence_key(sentence: str) -> str:
    return " ".join(sentence.lower().split()).rstrip(".!?")


def merge_content(texts: Sequence[str]) -> str:
    """Every unique sentence of ``texts``, first occurrence order (representative first)."""
    seen: set[str] = set()
    kept: list[str] = []
    for text in texts:
        for sentence in _sentences(text):
            key = _sentence_key(sentence)
            if key and key not in seen:
                seen.add(key)
                kept.append(sentence)
    return " ".join(kept)


def union(lists: Iterable[Sequence[str] | None]) -> list[str]:
    seen: dict[str, None] = {}
    for items in lists:
        for item in items or ():
            seen.setdefault(item, None)
    return list(seen)


# --- applying -------------------------------------------------------------------


@dataclass
class _Batch:
    """What one transaction writes."""

    created: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)


_STATE = (
    TaskMemory.id,
    TaskMemory.version,
    TaskMemory.is_duplicate,
    TaskMemory.is_archived,
    TaskMemory.memory_type,
    TaskMemory.reused_count,
    TaskMemory.last_reused_at,
    TaskMemory.learned_at,
)
_MERGED = (TaskMemory.content, TaskMemory.tags, TaskMemory.file_links)


def _lock_rows(session: Session, ids: Sequence[uuid.UUID], *extra: Any) -> dict[uuid.UUID, Any]:
    """Lock the rows and read what the writes check and copy, as plain rows (never the
    embedding, which a merge does not copy)."""
    found = {}
    for chunk in chunks(list(ids)):
        stmt = select(*_STATE, *extra).where(TaskMemory.id.in_(chunk)).with_for_update()
        for row in session.connection().execute(stmt):
            found[row.id] = row
    return found


def _unchanged(row: Any, version: int | None) -> bool:
    return row is not None and row.version == version and not row.is_duplicate and not row.is_archived


def _change(
    job_id: uuid.UUID,
    operation: str,
    memory_id: uuid.UUID,
    previous: Any,
    new: Any,
    reason: str,
    confidence: float | None,
    now: datetime,
    changed_by: str,
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "job_id": job_id,
        "operation": operation,
        "memory_id": memory_id,
        "previous_state": previous,
        "new_state": new,
        "reason": reason,
        "confidence": confidence,
        "changed_at": now,
        "changed_by": changed_by,
    }


def _merge_batch(
    session: Session, plan: Plan, clusters: Sequence[Cluster], job_id: uuid.UUID, now: datetime, changed_by: str
) -> tuple[int, int, int]:
    """Apply one batch of clusters; returns (clusters merged, sources merged, conflicts)."""
    rows = _lock_rows(session, [m for c in clusters for m in c.source_ids], *_MERGED)
    batch = _Batch()
    merged_clusters = merged_sources = conflicts = 0
    replaced: dict[uuid.UUID, uuid.UUID] = {}  # consolidated memory -> its replacement
    for cluster in clusters:
        if not all(_unchanged(rows.get(m), plan.versions.get(m)) for m in cluster.source_ids):
            conflicts += 1
            continue
        sources = [rows[m] for m in cluster.source_ids]
        new_id = uuid.uuid4()
        content = merge_content([s.content for s in sources])
        batch.created.append(
            {
                "id": new_id,
                "project_id": plan.project_id,
                "memory_type": "consolidated",
                "content": content,
                "embedding": cluster.embedding,
                "tags": union(s.tags for s in sources),
                "file_links": union(s.file_links for s in sources),
                "reused_count": sum(s.reused_count for s in sources),
                "last_reused_at": max((s.last_reused_at for s in sources if s.last_reused_at), default=None),
                "learned_at": max(s.learned_at for s in sources),
                "is_duplicate": False,
                "is_archived": False,
                "consolidated_from": [str(s.id) for s in sources],
                "consolidated_at": now,
                "version": 1,
            }
        )
        batch.changes.append(
            _change(
                job_id,
                "merge",
                new_id,
                None,
                {
                    "created": True,
                    "version": 1,
                    "consolidated_from": [str(s.id) for s in sources],
                    "content_sha256": hashlib.sha256(content.encode()).hexdigest(),
                },
                f"consolidated {len(sources)} similar memories",
                None,
                now,
                changed_by,
            )
        )
        similarity = {cluster.representative: 1.0, **dict(cluster.members)}
        for source in sources:
            batch.updates.append(
                {
                    "b_id": source.id,
                    "b_version": source.version,
                    "is_duplicate": True,
                    "duplicate_of": new_id,
                    "version": source.version + 1,
                }
            )
            batch.changes.append(
                _change(
                    job_id,
                    "merge",
                    source.id,
                    {"is_duplicate": False, "duplicate_of": None, "version": source.version},
                    {"is_duplicate": True, "duplicate_of": str(new_id), "version": source.version + 1},
                    f"duplicate of consolidated memory {new_id}",
                    similarity[source.id],
                    now,
                    changed_by,
                )
            )
            if source.memory_type == "consolidated":
                replaced[source.id] = new_id
        merged_clusters += 1
        merged_sources += len(sources)
    if replaced:
        _repoint(session, replaced, batch, job_id, now, changed_by)
    if batch.created:
        session.execute(insert(TaskMemory), batch.created)
    _write(session, batch)
    return merged_clusters, merged_sources, conflicts


def _repoint(
    session: Session,
    replaced: dict[uuid.UUID, uuid.UUID],
    batch: _Batch,
    job_id: uuid.UUID,
    now: datetime,
    changed_by: str,
) -> None:
    """Duplicates of a memory that is now itself a duplicate point at its replacement,
    so ``duplicate_of`` never leads through a chain."""
    for chunk in chunks(list(replaced)):
        for row in session.execute(
            select(TaskMemory.id, TaskMemory.duplicate_of, TaskMemory.version)
            .where(TaskMemory.duplicate_of.in_(chunk))
            .with_for_update()
        ):
            target = replaced[row.duplicate_of]
            batch.updates.append(
                {
                    "b_id": row.id,
                    "b_version": row.version,
                    "is_duplicate": True,
                    "duplicate_of": target,
                    "version": row.version + 1,
                }
            )
            batch.changes.append(
                _change(
                    job_id,
                    "merge",
                    row.id,
                    {"duplicate_of": str(row.duplicate_of), "version": row.version},
                    {"duplicate_of": str(target), "version": row.version + 1},
                    f"re-pointed from {row.duplicate_of} to {target}",
                    None,
                    now,
                    changed_by,
                )
            )


def _write(session: Session, batch: _Batch) -> None:
    table = table_of(TaskMemory)
    if batch.updates:
        keys = [k for k in batch.updates[0] if not k.startswith("b_")]
        stmt = (
            update(table)
            .where(table.c.id == bindparam("b_id"), table.c.version == bindparam("b_version"))
            .values({k: bindparam(k) for k in keys})
        )
        session.execute(stmt, batch.updates)
    if batch.changes:
        session.execute(insert(ConsolidationChange), batch.changes)


def _archive_batch(
    session: Session,
    plan: Plan,
    ids: Sequence[uuid.UUID],
    options: ConsolidationOptions,
    job_id: uuid.UUID,
    now: datetime,
    changed_by: str,
) -> tuple[int, int]:
    rows = _lock_rows(session, ids)
    cutoff = now - timedelta(days=options.archive_stale_days)
    batch = _Batch()
    for memory_id in ids:
        row = rows.get(memory_id)
        if row is None or not _unchanged(row, plan.versions.get(memory_id)):
            continue
        if row.reused_count >= options.archive_min_reuse or (row.last_reused_at or row.learned_at) >= cutoff:
            continue  # reused since the plan: no longer stale
        batch.updates.append(
            {
                "b_id": row.id,
                "b_version": row.version,
                "is_archived": True,
                "archived_at": now,
                "archive_reason": "staleness",
                "version": row.version + 1,
            }
        )
        batch.changes.append(
            _change(
                job_id,
                "archive",
                row.id,
                {"is_archived": False, "archived_at": None, "archive_reason": None, "version": row.version},
                {
                    "is_archived": True,
                    "archived_at": now.isoformat(),
                    "archive_reason": "staleness",
                    "version": row.version + 1,
                },
                f"not reused for {options.archive_stale_days} days and reused {row.reused_count} times",
                None,
                now,
                changed_by,
            )
        )
    _write(session, batch)
    archived = len(batch.updates)
    return archived, len(ids) - archived


def _add_to_job(session: Session, job_id: uuid.UUID, attempt: int | None, now: datetime, **increments: int) -> None:
    """Add a batch's counts to its job, in the batch's transaction. The job row is the
    fence: if another attempt started since this one (``attempts`` moved on), the
    batch is rolled back by :class:`Superseded`."""
    values = {name: getattr(ConsolidationJob, name) + amount for name, amount in increments.items()}
    stmt = update(ConsolidationJob).where(ConsolidationJob.id == job_id)
    if attempt is not None:
        stmt = stmt.where(ConsolidationJob.attempts == attempt)
    if cast(CursorResult, session.execute(stmt.values(heartbeat_at=now, **values))).rowcount == 0:
        raise Superseded(f"job {job_id}: attempt {attempt} was superseded by a newer attempt")


def consolidate_project(
    project_id: uuid.UUID,
    options: ConsolidationOptions,
    *,
    job_id: uuid.UUID | None = None,
    dry_run: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    lock_stale_after: timedelta | None = None,
    changed_by: str = "system",
    clock: Callable[[], datetime] = utcnow,
    lock_held: bool = False,
    on_finish: Callable[[Session, ConsolidationResult], None] | None = None,
    attempt: int | None = None,
) -> ConsolidationResult:
    """Consolidate one project. A real run needs ``job_id``: its audit rows and counters
    go to that job, batch by batch. ``dry_run`` changes nothing and reports the plan.

    ``lock_held``: the caller already checked the project and took its lock for
    ``job_id``'s ``attempt`` (the job start does both in one transaction); every batch
    is fenced on that attempt number. While it works, this process keeps the lock's
    heartbeat fresh. ``on_finish`` runs in the
    last transaction, the one that releases the lock, and must set
    ``result.memories_after`` (a job stores it with its own row); without it the active
    memories are counted here.
    """
    report = progress or (lambda stage, fraction: None)
    if not dry_run and job_id is None:
        raise ValueError("a real consolidation needs a job_id for its audit trail")
    holder = locks.holder_for(job_id, attempt) if job_id and not dry_run else None
    if not lock_held:
        with session_scope() as session:
            load_project(session, project_id, force=force)
            if holder:
                locks.acquire(session, project_id, holder, clock(), lock_stale_after or heartbeat.LOST_AFTER)
    released = False
    try:
        with heartbeat.beating(holder, job_id) if holder else nullcontext():
            report("load", 0.0)
            with session_scope() as session:
                plan = plan_project(session, project_id, options, clock())
            report("similarity", 0.4)
            result = ConsolidationResult(
                project_id=str(project_id),
                dry_run=dry_run,
                memories_before=plan.memories_before,
                memories_after=plan.memories_before,
                skipped_invalid=plan.skipped_invalid,
                timings=dict(plan.timings),
            )
            if dry_run:
                return _dry_run_report(plan, result)
            assert job_id is not None and holder is not None
            _apply(plan, options, job_id, attempt, result, report, changed_by, clock)
        with session_scope() as session:
            locks.release(session, project_id, holder)
            if on_finish is None:
                result.memories_after = count_active(session, project_id)
            else:
                on_finish(session, result)
        released = True
        report("done", 1.0)
        return result
    finally:
        if holder and not released:
            with session_scope() as session:
                locks.release(session, project_id, holder)


def _apply(
    plan: Plan,
    options: ConsolidationOptions,
    job_id: uuid.UUID,
    attempt: int | None,
    result: ConsolidationResult,
    report: Progress,
    changed_by: str,
    clock: Callable[[], datetime],
) -> None:
    merge_batches = list(chunks(plan.clusters, MERGE_BATCH))
    archive_batches = list(chunks(plan.archive, ARCHIVE_BATCH))
    total = max(1, len(merge_batches) + len(archive_batches))
    timings = result.timings
    batches: list[tuple[str, Sequence[Any]]] = [
        *(("merge", c) for c in merge_batches),
        *(("archive", a) for a in archive_batches),
    ]
    for done, (kind, items) in enumerate(batches, start=1):
        now = clock()
        with session_scope() as session:
            started = time.perf_counter()
            if kind == "merge":
                found, merged, conflicts = _merge_batch(session, plan, items, job_id, now, changed_by)
                _add_to_job(session, job_id, attempt, now, clusters_found=found, memories_merged=merged)
                result.clusters_found += found
                result.memories_merged += merged
            else:
                archived, conflicts = _archive_batch(session, plan, items, options, job_id, now, changed_by)
                _add_to_job(session, job_id, attempt, now, memories_archived=archived)
                result.memories_archived += archived
            written = time.perf_counter()
        timings["write"] = timings.get("write", 0.0) + written - started
        timings["commit"] = timings.get("commit", 0.0) + time.perf_counter() - written
        result.conflicts += conflicts
        report(kind, 0.4 + 0.55 * done / total)


def _dry_run_report(plan: Plan, result: ConsolidationResult) -> ConsolidationResult:
    result.clusters_found = len(plan.clusters)
    result.memories_merged = sum(len(c.source_ids) for c in plan.clusters)
    result.memories_archived = len(plan.archive)
    result.memories_after = (
        plan.memories_before - result.memories_merged + result.clusters_found - result.memories_archived
    )
    result.clusters = [
        {"representative": str(c.representative), "members": [{"id": str(m), "similarity": s} for m, s in c.members]}
        for c in plan.clusters
    ]
    result.archived = [str(m) for m in plan.archive]
    return result
