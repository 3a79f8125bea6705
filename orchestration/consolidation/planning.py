"""Planning a consolidation: read the project's active memories once and decide which
clusters to merge and which memories to archive. Reads only; :mod:`applying` writes."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import numpy as np
from sqlalchemy import ColumnElement, and_, bindparam, case, select
from sqlalchemy.orm import Session

from orchestration.consolidation import checks, values
from orchestration.consolidation.checks import problem, readable
from orchestration.consolidation.clustering import clusters_of, pairs_apart, similar_pairs
from orchestration.consolidation.embeddings import normalize_rows, to_bytes
from orchestration.consolidation.errors import DataError
from orchestration.consolidation.options import ConsolidationOptions
from orchestration.consolidation.spaces import LEXICAL, effective_types, vector_spaces
from orchestration.store.db import BINARY_ROWS, Executor, chunks
from orchestration.store.models import TaskMemory


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
    versions: dict[uuid.UUID, int]  # what each planned memory's version was when read
    clusters: list[Cluster] = field(default_factory=list)
    archive: list[uuid.UUID] = field(default_factory=list)
    skipped_invalid: int = 0  # memories left untouched: bad data or embedding (``invalid`` says which)
    invalid: list[DataError] = field(default_factory=list)
    pairs_kept_apart: int = 0  # similar pairs the value guard kept out of one cluster
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        """Nothing to merge or archive."""
        return not self.clusters and not self.archive


def active_filter() -> ColumnElement[bool]:
    # Spelled exactly like the partial index's predicate, so the planner can use it.
    return and_(~TaskMemory.is_duplicate, ~TaskMemory.is_archived)


# The columns whose values a memory is skipped for (besides its embedding).
CHECKED = (
    TaskMemory.tags,
    TaskMemory.file_links,
    TaskMemory.consolidated_from,
    TaskMemory.learned_at,
    TaskMemory.last_reused_at,
)
# Built once: every job of every night runs it, and building a statement and its cache
# key costs more than running it on a small project.
_READ_ACTIVE = (
    select(
        TaskMemory.id,
        TaskMemory.memory_type,
        TaskMemory.embedding,
        # Text is only needed where a lexical embedding must be computed.
        case((TaskMemory.embedding.is_(None), TaskMemory.content), else_=None).label("lexical_text"),
        TaskMemory.reused_count,
        readable(TaskMemory.last_reused_at),
        readable(TaskMemory.learned_at),
        TaskMemory.version,
        readable(TaskMemory.consolidated_from),
        # Which column, if any, holds bad data (checks.py): the lists are checked, not sent.
        problem(*CHECKED).label("problem"),
    )
    .where(TaskMemory.project_id == bindparam("project_id"), active_filter())
    .execution_options(**{BINARY_ROWS: True})  # the embeddings: see BINARY_ROWS
)


def read_active(source: Executor, project_id: uuid.UUID) -> Sequence[Any]:
    """The project's active memories, with what planning needs of each."""
    # Plain Core rows: the ORM adds nothing to a column select but per-row overhead.
    connection = source.connection() if isinstance(source, Session) else source
    return connection.execute(_READ_ACTIVE, {"project_id": project_id}).all()


@dataclass
class Group:
    """Memories compared with each other: one vector space and, by default, one type."""

    space: str
    members: list[int]  # row indexes, ascending
    priority: list[int]  # positions in ``members``, the preferred representative first
    vectors: list[np.ndarray | None]  # of all rows (every member has one)

    def unit_vectors(self) -> np.ndarray:
        """The members' unit vectors, in order: built on use, so that only one group's
        matrix is alive at a time."""
        return normalize_rows(np.stack([cast(np.ndarray, self.vectors[i]) for i in self.members]))


def comparison_groups(
    source: Executor,
    rows: Sequence[Any],
    spaces: dict[str, list[int]],
    vectors: list[np.ndarray | None],
    options: ConsolidationOptions,
) -> Iterator[Group]:
    """The groups whose memories are compared, each of at least ``min_cluster_size``."""
    types = effective_types(source, rows) if options.same_type_only else {}
    for space, indexes in sorted(spaces.items()):
        by_type: dict[str, list[int]] = defaultdict(list)
        for i in indexes:
            by_type[types.get(rows[i].id, "*")].append(i)
        for _, members in sorted(by_type.items()):
            if len(members) < options.min_cluster_size:
                continue
            # Most reused first, then the oldest, then by id: the representative is the most reused source.
            priority = sorted(
                range(len(members)),
                key=lambda k: (-rows[members[k]].reused_count, rows[members[k]].learned_at, str(rows[members[k]].id)),
            )
            yield Group(space, members, priority, vectors)


def plan(source: Executor, project_id: uuid.UUID, options: ConsolidationOptions, now: datetime) -> Plan:
    """Read the project's active memories and decide what to merge and archive."""
    started = time.perf_counter()
    rows = read_active(source, project_id)
    result = Plan(project_id=project_id, memories_before=len(rows), versions={r.id: r.version for r in rows})
    spaces, vectors, result.invalid = usable_spaces(source, rows)
    result.skipped_invalid = len(result.invalid)
    result.timings["load"] = time.perf_counter() - started
    in_cluster: set[uuid.UUID] = set()
    if options.merge:
        for group in comparison_groups(source, rows, spaces, vectors, options):
            result.clusters.extend(_cluster_group(source, result, rows, group, options))
        in_cluster = {m for c in result.clusters for m in c.source_ids}
    result.timings["similarity"] = time.perf_counter() - started - result.timings["load"]
    if options.archive:
        cutoff = now - timedelta(days=options.archive_stale_days)
        result.archive = [
            r.id
            for r, v in zip(rows, vectors, strict=True)
            if v is not None and r.id not in in_cluster and is_stale(r, options, cutoff)
        ]
    return result


def usable_spaces(
    source: Executor, rows: Sequence[Any]
) -> tuple[dict[str, list[int]], list[np.ndarray | None], list[DataError]]:
    """:func:`vector_spaces` of the rows whose data is valid; returns (space -> rows,
    vectors, why each other memory is skipped). A skipped memory has no vector: it is
    neither merged nor archived."""
    bad_data = checks.check_rows(source, rows)
    spaces, vectors, bad_embeddings = vector_spaces(rows, skip=bad_data)
    bad_data.update((i, DataError.of_memory(rows[i].id, "embedding", why)) for i, why in bad_embeddings.items())
    return spaces, vectors, [bad_data[i] for i in sorted(bad_data)]


def is_stale(row: Any, options: ConsolidationOptions, cutoff: datetime) -> bool:
    """Reused too rarely, and not since ``cutoff``: to be archived."""
    return row.reused_count < options.archive_min_reuse and (row.last_reused_at or row.learned_at) < cutoff


def _cluster_group(
    source: Executor, result: Plan, rows: Sequence[Any], group: Group, options: ConsolidationOptions
) -> list[Cluster]:
    matrix = group.unit_vectors()
    neighbours = similar_pairs(matrix, options.similarity_threshold)
    apart = None
    if options.value_guard and neighbours:
        apart = value_guard(source, [rows[i] for i in group.members], neighbours)
        result.pairs_kept_apart += pairs_apart(neighbours, apart)
    clusters = []
    for rep, cluster_members in clusters_of(neighbours, group.priority, options.min_cluster_size, apart):
        indexes = [rep, *(k for k, _ in cluster_members)]
        embedding = None
        if group.space != LEXICAL:
            mean = matrix[indexes].mean(axis=0)
            embedding = to_bytes(mean / (np.linalg.norm(mean) or 1.0))
        clusters.append(
            Cluster(
                representative=rows[group.members[rep]].id,
                members=[(rows[group.members[k]].id, round(s, 6)) for k, s in cluster_members],
                embedding=embedding,
            )
        )
    return clusters


def value_guard(source: Executor, rows: Sequence[Any], neighbours: Mapping[int, Any]) -> Callable[[int, int], bool]:
    """``apart(i, j)``: rows ``i`` and ``j`` state conflicting values. Only rows with a
    neighbour above the threshold are read and parsed, once each."""
    texts = {rows[i].id: rows[i].lexical_text for i in neighbours if rows[i].lexical_text is not None}
    texts.update(read_contents(source, [rows[i].id for i in neighbours if rows[i].id not in texts]))
    stated = {i: values.extract(texts.get(rows[i].id) or "") for i in neighbours}
    return lambda i, j: values.conflict(stated[i], stated[j])


def read_contents(source: Executor, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The text of these memories (planning reads it only where it needs it)."""
    texts: dict[uuid.UUID, str] = {}
    for chunk in chunks(ids):
        query = select(TaskMemory.id, TaskMemory.content).where(TaskMemory.id.in_(chunk))
        texts.update((memory_id, content) for memory_id, content in source.execute(query))
    return texts
