"""Planning a consolidation: read the project's active memories once and decide which
clusters to merge and which memories to archive. Reads only; :mod:`applying` writes.

A pass (:mod:`passes`) is full or incremental. An incremental one compares only the
components of similar memories that contain a memory new since the last pass
(``clustering.reachable_pairs``), and one with nothing new reads no embeddings: it
only looks for stale memories to archive."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select

from orchestration.consolidation import values
from orchestration.consolidation.checks import microseconds
from orchestration.consolidation.clustering import clusters_of, pairs_apart, reachable_pairs, similar_pairs
from orchestration.consolidation.embeddings import to_bytes
from orchestration.consolidation.errors import DataError
from orchestration.consolidation.memories import (
    READ_STALE,
    Memories,
    active_filter,
    read,
    read_project,
)
from orchestration.consolidation.options import ConsolidationOptions
from orchestration.consolidation.passes import Pass
from orchestration.consolidation.spaces import LEXICAL
from orchestration.store.counts import active_count_expr
from orchestration.store.db import Executor, chunks
from orchestration.store.models import TaskMemory
from orchestration.store.statuses import PassMode


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
    versions: dict[uuid.UUID, int]  # what each planned (merged or archived) memory's version was when read
    clusters: list[Cluster] = field(default_factory=list)
    archive: list[uuid.UUID] = field(default_factory=list)
    skipped_invalid: int = 0  # memories left untouched: bad data or embedding (``invalid`` says which)
    invalid: list[DataError] = field(default_factory=list)
    pairs_kept_apart: int = 0  # similar pairs the value guard kept out of one cluster
    timings: dict[str, float] = field(default_factory=dict)
    pass_: Pass | None = None  # how it compared (None: a full pass that is not recorded)
    memories_new: int = 0  # memories compared as new: all of them in a full pass
    space: int | None = None  # the stored embeddings' length in bytes
    # The memories with bad data or read row by row (None: not known), which the next
    # pass checks again though unchanged.
    irregular: AbstractSet[uuid.UUID] | None = None

    @property
    def mode(self) -> PassMode:
        return self.pass_.mode if self.pass_ is not None else PassMode.FULL

    def recorded(self, conflicts: int = 0) -> dict[str, Any]:
        """The job row's columns that the next pass starts from (none if not recorded);
        ``conflicts``: what applying the plan left undone (``Pass.recorded``)."""
        if self.pass_ is None:
            return {}
        return self.pass_.recorded(self.memories_new, self.space, conflicts, self.irregular)

    @property
    def is_empty(self) -> bool:
        """Nothing to merge or archive."""
        return not self.clusters and not self.archive


@dataclass
class Group:
    """Memories compared with each other: one vector space and, by default, one type."""

    space: str
    members: np.ndarray  # row indexes (in no order that matters: priority decides)
    vectors: np.ndarray  # the members' unit vectors, in order


def comparison_groups(memories: Memories, options: ConsolidationOptions) -> Iterator[Group]:
    """The groups whose memories are compared, each of at least ``min_cluster_size``."""
    for (space, _), part in sorted(memories.groups.items()):
        if len(part.rows) >= options.min_cluster_size:
            yield Group(space, part.rows, part.vectors)


def ranked(memories: Memories, group: Group, neighbours: Mapping[int, Any]) -> list[int]:
    """The positions in ``group`` of the neighbour map's memories, the preferred
    representative first: all that :func:`clusters_of` orders (the others have no
    neighbour), so a group's other memories are never sorted."""
    positions = np.fromiter(neighbours, dtype=np.int64, count=len(neighbours))
    return positions[memories.priority(group.members[positions])].tolist()


def plan(
    source: Executor, project_id: uuid.UUID, options: ConsolidationOptions, now: datetime, pass_: Pass | None = None
) -> Plan:
    """Read the project's active memories and decide what to merge and archive, in a
    full pass or (``pass_``) an incremental one."""
    started = time.perf_counter()
    since = pass_.since if pass_ is not None and pass_.mode == PassMode.INCREMENTAL else None
    if pass_ is not None and since is not None and not anything_new(source, project_id, since):
        return _nothing_new(source, project_id, options, now, pass_)
    known = pass_ if pass_ is not None and since is not None else None
    memories = read_active(
        source, project_id, options, since, known.space if known else None, known.recheck if known else None
    )
    result = Plan(
        project_id=project_id,
        memories_before=len(memories),
        versions={},
        space=memories.length,
        irregular=memories.irregular,
    )
    result.invalid = list(memories.invalid.values())
    result.skipped_invalid = len(result.invalid)
    if pass_ is not None and since is not None and pass_.space != memories.length:
        pass_, since = pass_.full("the project's embedding length changed"), None
    result.pass_ = pass_
    result.memories_new = len(memories) if since is None else int(memories.new.sum())
    result.timings["load"] = time.perf_counter() - started
    in_cluster = np.zeros(len(memories), dtype=bool)
    if options.merge:
        for group in comparison_groups(memories, options):
            seeds = None if since is None else np.flatnonzero(memories.new[group.members]).tolist()
            if seeds == []:
                continue  # nothing new in this group: a full pass finds nothing here either
            for cluster, rows in _cluster_group(source, result, memories, group, options, seeds):
                result.clusters.append(cluster)
                in_cluster[rows] = True
                result.versions.update(zip(cluster.source_ids, memories.versions[rows].tolist(), strict=True))
    result.timings["similarity"] = time.perf_counter() - started - result.timings["load"]
    if options.archive:
        _archive(result, memories, options, now, ~in_cluster)
    return result


def read_active(
    source: Executor,
    project_id: uuid.UUID,
    options: ConsolidationOptions,
    since: int | None = None,
    dim_bytes: int | None = None,
    recheck: AbstractSet[uuid.UUID] | None = None,
) -> Memories:
    """The project's active memories in their comparison groups (``memories.read_project``);
    ``since``: the watermark that the memories' ``new`` flag is taken from; ``recheck``:
    the last pass's irregular memories (then only those and the new ones are checked
    in full)."""
    return read_project(source, project_id, options.same_type_only, since, dim_bytes, recheck=recheck)


def _active_count(source: Executor, project_id: uuid.UUID) -> int:
    return int(source.execute(select(active_count_expr(project_id))).scalar() or 0)


def anything_new(source: Executor, project_id: uuid.UUID, since: int) -> bool:
    """Whether an active memory of the project is marked at or after the watermark ``since``."""
    query = select(TaskMemory.id).where(
        TaskMemory.project_id == project_id, TaskMemory.change_mark >= since, active_filter()
    )
    return source.execute(query.limit(1)).first() is not None


def _archive(result: Plan, memories: Memories, options: ConsolidationOptions, now: datetime, free: np.ndarray) -> None:
    """Plan to archive the stale memories among ``free`` ones (not in a cluster), in row order."""
    cutoff = microseconds(now - timedelta(days=options.archive_stale_days))
    stale = (memories.reused < options.archive_min_reuse) & (memories.last_used < cutoff)
    rows = np.flatnonzero(stale & free & memories.usable()).tolist()
    result.archive = [memories.id(i) for i in rows]
    result.versions.update(zip(result.archive, memories.versions[rows].tolist(), strict=True))


def _nothing_new(
    source: Executor, project_id: uuid.UUID, options: ConsolidationOptions, now: datetime, pass_: Pass
) -> Plan:
    """An incremental pass with nothing new: no similarity work, no embeddings read but
    those of the stale memories, which are archived as in a full pass."""
    started = time.perf_counter()
    active = _active_count(source, project_id)
    # Nothing changed that marks a memory: the last pass's irregular memories still are.
    result = Plan(
        project_id, active, versions={}, pass_=pass_, memories_new=0, space=pass_.space, irregular=pass_.recheck
    )
    if options.archive:
        cutoff = now - timedelta(days=options.archive_stale_days)
        parameters = {"project_id": project_id, "min_reuse": options.archive_min_reuse, "cutoff": cutoff}
        stale = read(source, READ_STALE, parameters, False, pass_.space, part=True)
        result.invalid = list(stale.invalid.values())
        result.skipped_invalid = len(result.invalid)
        _archive(result, stale, options, now, np.ones(len(stale), dtype=bool))
    result.timings["load"] = time.perf_counter() - started
    return result


def is_stale(row: Any, options: ConsolidationOptions, cutoff: datetime) -> bool:
    """Reused too rarely, and not since ``cutoff``: to be archived."""
    return row.reused_count < options.archive_min_reuse and (row.last_reused_at or row.learned_at) < cutoff


def _cluster_group(
    source: Executor,
    result: Plan,
    memories: Memories,
    group: Group,
    options: ConsolidationOptions,
    seeds: Sequence[int] | None = None,
) -> Iterator[tuple[Cluster, np.ndarray]]:
    """The group's clusters and their rows; with ``seeds`` (positions of new memories),
    those of the components the seeds reach only."""
    matrix = group.vectors
    threshold = options.similarity_threshold
    neighbours = similar_pairs(matrix, threshold) if seeds is None else reachable_pairs(matrix, threshold, seeds)
    apart = None
    if options.value_guard and neighbours:
        apart = value_guard(source, memories, group.members, neighbours)
        result.pairs_kept_apart += pairs_apart(neighbours, apart)
    order = ranked(memories, group, neighbours)
    for rep, cluster_members in clusters_of(neighbours, order, options.min_cluster_size, apart):
        indexes = [rep, *(k for k, _ in cluster_members)]
        embedding = None
        if group.space != LEXICAL:
            mean = matrix[indexes].mean(axis=0)
            embedding = to_bytes(mean / (np.linalg.norm(mean) or 1.0))
        rows = group.members[indexes]
        cluster = Cluster(
            representative=memories.id(rows[0]),
            members=[(memories.id(r), round(s, 6)) for r, (_, s) in zip(rows[1:], cluster_members, strict=True)],
            embedding=embedding,
        )
        yield cluster, rows


def value_guard(
    source: Executor, memories: Memories, members: np.ndarray, neighbours: Mapping[int, Any]
) -> Callable[[int, int], bool]:
    """``apart(i, j)``: the group's ``members[i]`` and ``members[j]`` state conflicting
    values. Only memories with a neighbour above the threshold are read and parsed, once each."""
    ids = {i: memories.id(members[i]) for i in neighbours}
    texts = read_contents(source, list(ids.values()))
    stated = {i: values.extract(texts.get(memory_id) or "") for i, memory_id in ids.items()}
    return lambda i, j: values.conflict(stated[i], stated[j])


def read_contents(source: Executor, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The text of these memories (planning reads it only where it needs it)."""
    texts: dict[uuid.UUID, str] = {}
    for chunk in chunks(ids):
        query = select(TaskMemory.id, TaskMemory.content).where(TaskMemory.id.in_(chunk))
        texts.update((memory_id, content) for memory_id, content in source.execute(query))
    return texts
