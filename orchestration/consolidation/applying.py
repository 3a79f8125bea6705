"""Applying a plan: merges, then archives, in batches. Each batch is one transaction
that re-reads and locks its rows, writes the changes and their audit rows, and runs
the caller's hook (a job adds the batch's counts to its row there, fenced on its
attempt). Nothing here knows about locks, jobs or Celery.

Safety while agents keep writing:
- every batch re-reads its rows under ``FOR UPDATE`` (a database lock on SQLite) and
  drops a cluster or an archive whose memory changed since the plan (``version``
  moved, or no longer active): nothing is merged from a stale read and no concurrent
  update is overwritten (only the flag columns are written, guarded by ``version``);
- a crash between batches leaves whole batches applied; planning again from the
  current state finds the applied part no longer active, so nothing is applied twice.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from orchestration.consolidation.audit import Author
from orchestration.consolidation.checks import problem, readable, unreadable
from orchestration.consolidation.options import ConsolidationOptions
from orchestration.consolidation.planning import Cluster, Plan, is_stale
from orchestration.consolidation.result import ConsolidationResult
from orchestration.consolidation.text import merge_content, union
from orchestration.store.db import chunks, session_scope
from orchestration.store.models import Base, ConsolidationChange, TaskMemory, table_of
from orchestration.store.statuses import ArchiveReason, MemoryType, Operation
from orchestration.store.types import utcnow

MERGE_BATCH = 200  # clusters per transaction
# The largest reused_count (a 32-bit column on PostgreSQL): a merge's sum stops there
# rather than failing its batch on every attempt.
MAX_COUNT = 2**31 - 1
ARCHIVE_BATCH = 1000  # memories per transaction
# Share of the progress bar that planning takes; applying fills the rest up to DONE.
PLANNED, DONE = 0.4, 0.95

Progress = Callable[[str, float], None]


@dataclass
class BatchCounts:
    """What one batch did."""

    clusters_found: int = 0
    memories_merged: int = 0
    memories_archived: int = 0
    conflicts: int = 0  # clusters or archives dropped: a memory changed since the plan

    def counters(self) -> dict[str, int]:
        """The job counters this batch adds to."""
        return {
            "clusters_found": self.clusters_found,
            "memories_merged": self.memories_merged,
            "memories_archived": self.memories_archived,
        }


# Runs inside each batch's transaction, after its writes; raising rolls the batch back.
BatchHook = Callable[[Session, BatchCounts], None]


@dataclass
class _Update:
    """A memory's new flag values, written only if its version is still ``version``."""

    memory_id: uuid.UUID
    version: int
    values: dict[str, Any]


@dataclass
class _Batch:
    """What one transaction writes."""

    created: list[dict[str, Any]] = field(default_factory=list)
    updates: list[_Update] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)


def apply(
    plan: Plan,
    options: ConsolidationOptions,
    job_id: uuid.UUID,
    *,
    changed_by: str = "system",
    in_batch: BatchHook | None = None,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> ConsolidationResult:
    """Write ``plan`` batch by batch; the audit rows name ``job_id`` and ``changed_by``.
    ``result.memories_after`` is left at ``memories_before``: the caller counts it."""
    result = ConsolidationResult.of(plan, dry_run=False)
    batches: list[tuple[str, Sequence[Any]]] = [
        *((Operation.MERGE, c) for c in chunks(plan.clusters, MERGE_BATCH)),
        *((Operation.ARCHIVE, a) for a in chunks(plan.archive, ARCHIVE_BATCH)),
    ]
    timings = result.timings
    for done, (operation, items) in enumerate(batches, start=1):
        author = Author(job_id, changed_by, clock())
        with session_scope() as session:
            started = time.perf_counter()
            if operation == Operation.MERGE:
                counts = merge_batch(session, plan, items, author)
            else:
                counts = archive_batch(session, plan, items, options, author)
            if in_batch is not None:
                in_batch(session, counts)
            written = time.perf_counter()
        timings["write"] = timings.get("write", 0.0) + written - started
        timings["commit"] = timings.get("commit", 0.0) + time.perf_counter() - written
        result.clusters_found += counts.clusters_found
        result.memories_merged += counts.memories_merged
        result.memories_archived += counts.memories_archived
        result.conflicts += counts.conflicts
        if progress is not None:
            progress(operation, PLANNED + (DONE - PLANNED) * done / len(batches))
    return result


_STATE = (
    TaskMemory.id,
    TaskMemory.version,
    TaskMemory.is_duplicate,
    TaskMemory.is_archived,
    TaskMemory.memory_type,
    TaskMemory.reused_count,
    readable(TaskMemory.last_reused_at),
    readable(TaskMemory.learned_at),
)
_MERGED = (TaskMemory.content, readable(TaskMemory.tags), readable(TaskMemory.file_links))
# Planning skipped the memories with bad data (checks.py); one found here was written
# since by a writer that did not move ``version``. Its cluster or archive waits for next
# night, when planning skips that memory.
_STATE_CHECKED = problem(TaskMemory.learned_at, TaskMemory.last_reused_at).label("problem")
_MERGED_CHECKED = problem(
    TaskMemory.learned_at, TaskMemory.last_reused_at, TaskMemory.tags, TaskMemory.file_links
).label("problem")


def _lock_rows(session: Session, ids: Sequence[uuid.UUID], merged: bool = False) -> dict[uuid.UUID, Any]:
    """Lock the rows and read what the writes check (and, ``merged``, copy), as plain
    rows (never the embedding, which a merge does not copy)."""
    columns = (*_STATE, *_MERGED, _MERGED_CHECKED) if merged else (*_STATE, _STATE_CHECKED)
    found = {}
    for chunk in chunks(list(ids)):
        stmt = select(*columns).where(TaskMemory.id.in_(chunk)).with_for_update()
        for row in session.connection().execute(stmt):
            found[row.id] = row
    return found


def _unchanged(row: Any, version: int | None) -> bool:
    return (
        row is not None
        and row.version == version
        and not row.is_duplicate
        and not row.is_archived
        and row.problem is None
        and unreadable(row) is None
    )


def merge_batch(session: Session, plan: Plan, clusters: Sequence[Cluster], author: Author) -> BatchCounts:
    """Merge a batch of clusters: one new ``consolidated`` memory per cluster, its
    sources marked duplicates of it."""
    rows = _lock_rows(session, [m for c in clusters for m in c.source_ids], merged=True)
    batch = _Batch()
    counts = BatchCounts()
    replaced: dict[uuid.UUID, uuid.UUID] = {}  # consolidated memory -> its replacement
    for cluster in clusters:
        if not all(_unchanged(rows.get(m), plan.versions.get(m)) for m in cluster.source_ids):
            counts.conflicts += 1
            continue
        sources = [rows[m] for m in cluster.source_ids]
        new_id = uuid.uuid4()
        source_ids = [str(s.id) for s in sources]
        content = merge_content([s.content for s in sources])
        batch.created.append(
            {
                "id": new_id,
                "project_id": plan.project_id,
                "memory_type": MemoryType.CONSOLIDATED,
                "content": content,
                "embedding": cluster.embedding,
                "tags": union(s.tags for s in sources),
                "file_links": union(s.file_links for s in sources),
                "reused_count": min(sum(s.reused_count for s in sources), MAX_COUNT),
                "last_reused_at": max((s.last_reused_at for s in sources if s.last_reused_at), default=None),
                "learned_at": max(s.learned_at for s in sources),
                "is_duplicate": False,
                "is_archived": False,
                "consolidated_from": source_ids,
                "consolidated_at": author.at,
                "version": 1,
            }
        )
        batch.changes.append(
            author.change(
                Operation.MERGE,
                new_id,
                before=None,
                after={
                    "created": True,
                    "version": 1,
                    "consolidated_from": source_ids,
                    "content_sha256": hashlib.sha256(content.encode()).hexdigest(),
                },
                reason=f"consolidated {len(sources)} similar memories",
            )
        )
        similarity = {cluster.representative: 1.0, **dict(cluster.members)}
        for source in sources:
            _mark_duplicate(batch, author, source.id, source.version, None, new_id, similarity[source.id])
            if source.memory_type == MemoryType.CONSOLIDATED:
                replaced[source.id] = new_id
        counts.clusters_found += 1
        counts.memories_merged += len(sources)
    _repoint(session, replaced, batch, author)
    _insert(session, TaskMemory, batch.created)
    _write(session, batch)
    return counts


def _mark_duplicate(
    batch: _Batch,
    author: Author,
    memory_id: uuid.UUID,
    version: int,
    previous: uuid.UUID | None,
    target: uuid.UUID,
    confidence: float | None,
) -> None:
    """``memory_id`` becomes a duplicate of ``target`` (or, already a duplicate of
    ``previous``, now points at ``target``)."""
    batch.updates.append(
        _Update(memory_id, version, {"is_duplicate": True, "duplicate_of": target, "version": version + 1})
    )
    if previous is None:
        before: dict[str, Any] = {"is_duplicate": False, "duplicate_of": None, "version": version}
        after: dict[str, Any] = {"is_duplicate": True, "duplicate_of": str(target), "version": version + 1}
        reason = f"duplicate of consolidated memory {target}"
    else:
        before = {"duplicate_of": str(previous), "version": version}
        after = {"duplicate_of": str(target), "version": version + 1}
        reason = f"re-pointed from {previous} to {target}"
    batch.changes.append(
        author.change(Operation.MERGE, memory_id, before=before, after=after, reason=reason, confidence=confidence)
    )


def _repoint(session: Session, replaced: dict[uuid.UUID, uuid.UUID], batch: _Batch, author: Author) -> None:
    """Duplicates of a memory that is now itself a duplicate point at its replacement,
    so ``duplicate_of`` never leads through a chain."""
    for chunk in chunks(list(replaced)):
        for row in session.execute(
            select(TaskMemory.id, TaskMemory.duplicate_of, TaskMemory.version)
            .where(TaskMemory.duplicate_of.in_(chunk))
            .with_for_update()
        ):
            _mark_duplicate(batch, author, row.id, row.version, row.duplicate_of, replaced[row.duplicate_of], None)


def archive_batch(
    session: Session, plan: Plan, ids: Sequence[uuid.UUID], options: ConsolidationOptions, author: Author
) -> BatchCounts:
    """Archive a batch of stale memories, unless one was reused or changed since the plan."""
    rows = _lock_rows(session, ids)
    cutoff = author.at - timedelta(days=options.archive_stale_days)
    batch = _Batch()
    for memory_id in ids:
        row = rows.get(memory_id)
        if row is None or not _unchanged(row, plan.versions.get(memory_id)) or not is_stale(row, options, cutoff):
            continue  # changed, or reused, since the plan
        values = {"is_archived": True, "archived_at": author.at, "archive_reason": ArchiveReason.STALENESS}
        batch.updates.append(_Update(row.id, row.version, {**values, "version": row.version + 1}))
        batch.changes.append(
            author.change(
                Operation.ARCHIVE,
                row.id,
                before={"is_archived": False, "archived_at": None, "archive_reason": None, "version": row.version},
                after={**values, "archived_at": author.at.isoformat(), "version": row.version + 1},
                reason=f"not reused for {options.archive_stale_days} days and reused {row.reused_count} times",
            )
        )
    _write(session, batch)
    archived = len(batch.updates)
    return BatchCounts(memories_archived=archived, conflicts=len(ids) - archived)


def _write(session: Session, batch: _Batch) -> None:
    """The batch's updates (one statement per set of columns) and audit rows."""
    by_columns: dict[tuple[str, ...], list[_Update]] = defaultdict(list)
    for item in batch.updates:
        by_columns[tuple(item.values)].append(item)
    for columns, items in by_columns.items():
        _update(session, columns, items)
    _insert(session, ConsolidationChange, batch.changes)


def _update(session: Session, columns: tuple[str, ...], items: list[_Update]) -> None:
    """Set ``columns`` of each memory in ``items`` whose version still matches. On
    PostgreSQL one statement joins the memories to arrays of the values
    (``unnest``): an ``executemany`` runs the statement once per row, which costs the
    server more (docs/benchmarks.md)."""
    table = table_of(TaskMemory)
    if session.get_bind().dialect.name == "postgresql":
        arrays = {
            "match_id": (table.c.id.type, [u.memory_id for u in items]),
            "match_version": (table.c.version.type, [u.version for u in items]),
            **{name: (table.c[name].type, [u.values[name] for u in items]) for name in columns},
        }
        binds = [bindparam(name, values, type_=ARRAY(type_)) for name, (type_, values) in arrays.items()]
        given = func.unnest(*binds).table_valued(*arrays).render_derived()
        where = (table.c.id == given.c.match_id, table.c.version == given.c.match_version)
        session.execute(update(table).where(*where).values({name: given.c[name] for name in columns}))
        return
    # Bind names of the WHERE clause must differ from the column names being set.
    stmt = (
        update(table)
        .where(table.c.id == bindparam("match_id"), table.c.version == bindparam("match_version"))
        .values({name: bindparam(name) for name in columns})
    )
    session.execute(stmt, [{"match_id": u.memory_id, "match_version": u.version, **u.values} for u in items])


def _insert(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` in one statement. A Core insert: the ORM's bulk insert starts a
    new statement wherever the rows' ``None`` values change places (a created memory's
    audit row has no previous state, a duplicate mark's has one), which made a merge
    batch's audit rows hundreds of statements (measured: docs/benchmarks.md)."""
    if rows:
        session.connection().execute(insert(table_of(model)), rows)
