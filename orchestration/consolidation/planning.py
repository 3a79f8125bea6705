"""Planning a consolidation: read the project's active memories once and decide which
clusters to merge and which memories to archive. Reads only; :mod:`applying` writes.

A pass (:mod:`passes`) is full or incremental. An incremental one compares only the
components of similar memories that contain a memory new since the last pass
(``clustering.reachable_pairs``), and one with nothing new reads no embeddings: it
only looks for stale memories to archive."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import numpy as np
from sqlalchemy import ColumnElement, and_, bindparam, case, func, select
from sqlalchemy.orm import Session

from orchestration.consolidation import checks, values
from orchestration.consolidation.checks import problem, readable
from orchestration.consolidation.clustering import clusters_of, pairs_apart, reachable_pairs, similar_pairs
from orchestration.consolidation.embeddings import normalize_rows, to_bytes
from orchestration.consolidation.errors import DataError
from orchestration.consolidation.options import ConsolidationOptions
from orchestration.consolidation.passes import Pass
from orchestration.consolidation.spaces import LEXICAL, effective_types, stored_length, vector_spaces
from orchestration.store.counts import active_count_expr
from orchestration.store.db import BINARY_ROWS, Executor, chunks
from orchestration.store.models import TaskMemory
from orchestration.store.statuses import PassMode
from orchestration.store.types import UTCDateTime


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
    pass_: Pass | None = None  # how it compared (None: a full pass that is not recorded)
    memories_new: int = 0  # memories compared as new: all of them in a full pass
    space: int | None = None  # the stored embeddings' length in bytes

    @property
    def mode(self) -> PassMode:
        return self.pass_.mode if self.pass_ is not None else PassMode.FULL

    def recorded(self, conflicts: int = 0) -> dict[str, Any]:
        """The job row's columns that the next pass starts from (none if not recorded);
        ``conflicts``: what applying the plan left undone (``Pass.recorded``)."""
        return self.pass_.recorded(self.memories_new, self.space, conflicts) if self.pass_ is not None else {}

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


def plan(
    source: Executor, project_id: uuid.UUID, options: ConsolidationOptions, now: datetime, pass_: Pass | None = None
) -> Plan:
    """Read the project's active memories and decide what to merge and archive, in a
    full pass or (``pass_``) an incremental one."""
    started = time.perf_counter()
    new: set[uuid.UUID] | None = None
    if pass_ is not None and pass_.mode == PassMode.INCREMENTAL and pass_.since is not None:
        new = set(new_memories(source, project_id, pass_.since))
        if not new:
            return _nothing_new(source, project_id, options, now, pass_)
    rows = read_active(source, project_id)
    result = Plan(project_id=project_id, memories_before=len(rows), versions={r.id: r.version for r in rows})
    spaces, vectors, result.invalid, result.space = usable_spaces(source, rows)
    if pass_ is not None and new is not None and pass_.space != result.space:
        pass_, new = pass_.full("the project's embedding length changed"), None
    result.pass_, result.memories_new = pass_, len(rows) if new is None else len(new)
    result.skipped_invalid = len(result.invalid)
    result.timings["load"] = time.perf_counter() - started
    in_cluster: set[uuid.UUID] = set()
    if options.merge:
        for group in comparison_groups(source, rows, spaces, vectors, options):
            seeds = None if new is None else [k for k, i in enumerate(group.members) if rows[i].id in new]
            if seeds == []:
                continue  # nothing new in this group: a full pass finds nothing here either
            result.clusters.extend(_cluster_group(source, result, rows, group, options, seeds))
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
    source: Executor, rows: Sequence[Any], dim_bytes: int | None = None
) -> tuple[dict[str, list[int]], list[np.ndarray | None], list[DataError], int | None]:
    """:func:`vector_spaces` of the rows whose data is valid; returns (space -> rows,
    vectors, why each other memory is skipped, the stored embeddings' length). A
    skipped memory has no vector: it is neither merged nor archived. ``dim_bytes``: the
    length, when the rows are only a part of the project."""
    bad_data = checks.check_rows(source, rows)
    dim_bytes = dim_bytes or stored_length(rows, skip=bad_data)
    spaces, vectors, bad_embeddings = vector_spaces(rows, skip=bad_data, dim_bytes=dim_bytes)
    bad_data.update((i, DataError.of_memory(rows[i].id, "embedding", why)) for i, why in bad_embeddings.items())
    return spaces, vectors, [bad_data[i] for i in sorted(bad_data)], dim_bytes


def new_memories(source: Executor, project_id: uuid.UUID, since: int) -> list[uuid.UUID]:
    """The project's active memories marked at or after the watermark ``since``."""
    query = select(TaskMemory.id).where(
        TaskMemory.project_id == project_id, TaskMemory.change_mark >= since, active_filter()
    )
    return list(source.execute(query).scalars())


_READ_STALE = _READ_ACTIVE.where(
    TaskMemory.reused_count < bindparam("min_reuse"),
    func.coalesce(TaskMemory.last_reused_at, TaskMemory.learned_at) < bindparam("cutoff", type_=UTCDateTime()),
)


def _nothing_new(
    source: Executor, project_id: uuid.UUID, options: ConsolidationOptions, now: datetime, pass_: Pass
) -> Plan:
    """An incremental pass with nothing new: no similarity work, no embeddings read but
    those of the stale memories, which are archived as in a full pass."""
    started = time.perf_counter()
    active = source.execute(select(active_count_expr(project_id))).scalar() or 0
    result = Plan(project_id, active, versions={}, pass_=pass_, memories_new=0, space=pass_.space)
    if options.archive:
        cutoff = now - timedelta(days=options.archive_stale_days)
        parameters = {"project_id": project_id, "min_reuse": options.archive_min_reuse, "cutoff": cutoff}
        rows = source.execute(_READ_STALE, parameters).all()
        _, vectors, result.invalid, _ = usable_spaces(source, rows, dim_bytes=pass_.space)
        result.skipped_invalid = len(result.invalid)
        result.versions = {r.id: r.version for r in rows}
        result.archive = [
            r.id for r, v in zip(rows, vectors, strict=True) if v is not None and is_stale(r, options, cutoff)
        ]
    result.timings["load"] = time.perf_counter() - started
    return result


def is_stale(row: Any, options: ConsolidationOptions, cutoff: datetime) -> bool:
    """Reused too rarely, and not since ``cutoff``: to be archived."""
    return row.reused_count < options.archive_min_reuse and (row.last_reused_at or row.learned_at) < cutoff


def _cluster_group(
    source: Executor,
    result: Plan,
    rows: Sequence[Any],
    group: Group,
    options: ConsolidationOptions,
    seeds: Sequence[int] | None = None,
) -> list[Cluster]:
    """The group's clusters; with ``seeds`` (positions of new memories), those of the
    components the seeds reach only."""
    matrix = group.unit_vectors()
    threshold = options.similarity_threshold
    neighbours = similar_pairs(matrix, threshold) if seeds is None else reachable_pairs(matrix, threshold, seeds)
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
