"""Similarity clustering of unit vectors, in blocks so memory stays bounded.

Definition (star clustering around a representative): memories are visited in
priority order (most reused first, then oldest, then id). An unassigned memory with
at least one unassigned neighbour at cosine similarity >= the threshold becomes a
representative; all its unassigned neighbours join its cluster. So **every member is
at least the threshold similar to its cluster's representative**, the memory the
merged text is built around.

With the value guard (:mod:`values`), a neighbour joins a cluster only if it states
no value that conflicts with the representative's or an earlier member's; one that
does stays free for a later representative.

Why not connected components: similarity is not transitive, so components chain
A~B~C into one cluster even when A and C are unrelated, and a long chain can swallow
a whole topic. Star clusters cannot drift that way, and the result is deterministic.

Only pairs above the threshold are kept (a sparse edge list), computed tile by
tile: peak memory is one ``block x COLUMNS`` float32 matrix, never ``n x n``. Whether a
pair is at the threshold is decided on its similarity recomputed in float64
(:func:`_exact`), so that the answer does not depend on how a matrix product was
blocked: a full pass and an incremental one (:func:`reachable_pairs`) agree.

Star clusters of a neighbour map decompose over its connected components: which
memories a representative gets depends only on its component. So an incremental pass
that builds the components reached from its new memories (:func:`reachable_pairs`)
clusters them exactly as a full pass would, and on a project where a full pass finds
nothing to merge, no other component has anything to merge either. A row it reaches
from one compared with every row needs comparing only with that one's near rows
(:func:`near_bound`): no other row can be its neighbour.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np

DEFAULT_BLOCK = 1024
# Columns per tile: a tile of DEFAULT_BLOCK x COLUMNS float32 similarities is 32 MB,
# whatever the project's size (a whole row of a 1,000,000-memory project's would be 4 GB).
COLUMNS = 8192
# Pairs this close below the threshold in float32 are checked in float64.
SLACK = 1e-5


class Scan(NamedTuple):
    neighbours: dict[int, dict[int, float]]  # i -> {j: similarity} for pairs at or above the threshold
    nearest: np.ndarray | None  # each row's similarity to its most similar other row (-1 for a lone row)


def scan(vectors: np.ndarray, threshold: float, block: int = DEFAULT_BLOCK, with_nearest: bool = True) -> Scan:
    """One blocked pass over the upper triangle of the similarity matrix: the pairs at
    or above ``threshold`` and (``with_nearest``) every row's nearest-neighbour similarity."""
    neighbours: dict[int, dict[int, float]] = defaultdict(dict)
    n = len(vectors)
    nearest = np.full(n, -1.0, dtype=np.float32) if with_nearest else None
    for start in range(0, n, block):
        stop = min(start + block, n)
        # Compare this block with itself and everything after it, a tile at a time;
        # the first tile holds the block's own square, of which only j > i counts.
        for first, sims in _tiles(vectors, np.arange(start, stop), start, max(block, COLUMNS)):
            if first == start:
                size = stop - start
                sims[:, :size][np.tri(size, dtype=bool)] = -np.inf
            _add_candidates(neighbours, vectors, threshold, sims, np.arange(start, stop), first)
            if nearest is not None:
                # Row maxima cover the later rows, column maxima this block's rows for each later one.
                last = first + sims.shape[1]
                np.maximum(nearest[start:stop], sims.max(axis=1), out=nearest[start:stop])
                np.maximum(nearest[first:last], sims.max(axis=0), out=nearest[first:last])
    return Scan(neighbours, nearest)


def _tiles(
    vectors: np.ndarray, rows: np.ndarray, start: int, width: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """The similarities of ``rows`` with the vectors from ``start`` on, ``width`` columns
    (default :data:`COLUMNS`) at a time: (first column, ``len(rows) x width``
    similarities). Peak memory is one tile."""
    width = width or COLUMNS
    block = vectors[rows]
    for first in range(start, len(vectors), width):
        yield first, block @ vectors[first : first + width].T


def _add_candidates(
    neighbours: dict[int, dict[int, float]],
    vectors: np.ndarray,
    threshold: float,
    sims: np.ndarray,
    rows: np.ndarray,
    first: int,
) -> None:
    """Add the pairs of a tile (``rows`` against the columns from ``first`` on) that are
    at or above ``threshold``: those near it in float32 are decided in float64."""
    hit = np.flatnonzero((sims >= threshold - SLACK).any(axis=1))  # few rows have a candidate
    if len(hit):
        i, j = np.nonzero(sims[hit] >= threshold - SLACK)
        _add_pairs(neighbours, vectors, threshold, rows[hit[i]], j + first)


def _exact(vectors: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The similarities of the pairs ``(left[k], right[k])``, in float64."""
    return np.einsum("ij,ij->i", vectors[left].astype(np.float64), vectors[right].astype(np.float64))


def _add_pairs(
    neighbours: dict[int, dict[int, float]], vectors: np.ndarray, threshold: float, left: np.ndarray, right: np.ndarray
) -> None:
    """Add the candidate pairs whose exact similarity is at or above ``threshold``."""
    for start in range(0, len(left), DEFAULT_BLOCK):
        i, j = left[start : start + DEFAULT_BLOCK], right[start : start + DEFAULT_BLOCK]
        similarity = _exact(vectors, i, j)
        keep = similarity >= threshold
        for a, b, s in zip(i[keep].tolist(), j[keep].tolist(), similarity[keep].tolist(), strict=True):
            neighbours[a][b] = s
            neighbours[b][a] = s


def near_bound(threshold: float) -> float:
    """How similar a row is at least to its neighbours' neighbours: for unit vectors the
    angle is a metric, so one is at most twice the threshold's angle ``a`` away, and
    ``cos 2a = 2 cos^2 a - 1``."""
    return 2 * threshold * threshold - 1


def reachable_pairs(
    vectors: np.ndarray, threshold: float, seeds: Sequence[int], block: int = DEFAULT_BLOCK
) -> dict[int, dict[int, float]]:
    """The neighbour map of the connected components that contain a seed: the seeds
    compared with every row, then each row they reached, and so on until no new row is
    reached. Every row of those components has all its pairs; no other row is in it.

    A row reached from one that was compared with every row is compared only with that
    one's *near* rows (at least :func:`near_bound` similar to it): no other row can be
    its neighbour. Where near rows are many (a low threshold, crowded vectors), rows
    are compared with every row instead."""
    neighbours: dict[int, dict[int, float]] = defaultdict(dict)
    near: dict[int, np.ndarray] = {}  # rows compared with every row, that have a neighbour: their near rows
    done: set[int] = set()
    frontier = sorted(set(seeds))
    collect = near_bound(threshold) > 0  # below, nearly every row is near: nothing to gain
    while frontier:
        done.update(frontier)
        whole: list[int] = []
        for i in frontier:
            known = [k for k in neighbours.get(i, {}) if k in near]
            if known:  # the neighbour with the fewest near rows
                _compare_with(neighbours, vectors, threshold, i, near[min(known, key=lambda k: len(near[k]))])
            else:
                whole.append(i)
        for start in range(0, len(whole), block):
            batch = np.array(whole[start : start + block])
            collect = _compare_whole(neighbours, near if collect else None, vectors, threshold, batch)
        frontier = sorted({j for i in frontier for j in neighbours.get(i, {})} - done)
    return neighbours


# Near rows kept per row at most, and found per compared row on average (over a batch,
# all its tiles) while they are kept: beyond, the vectors are crowded and nothing is kept.
NEAR_MAX = 4096
NEAR_PER_ROW = 256


def _compare_whole(
    neighbours: dict[int, dict[int, float]],
    near: dict[int, np.ndarray] | None,
    vectors: np.ndarray,
    threshold: float,
    batch: np.ndarray,
) -> bool:
    """Compare the rows ``batch`` with every row; with ``near``, also keep their near
    rows (those that have a neighbour, and not too many). Returns whether near rows are
    still worth keeping (False once a batch found too many: what it held is dropped, so
    that memory stays bounded)."""
    low = near_bound(threshold) - 2 * SLACK if near is not None else threshold - SLACK
    found: list[tuple[np.ndarray, np.ndarray]] = []  # (positions in batch, columns) of near rows
    budget = NEAR_PER_ROW * len(batch)
    for first, sims in _tiles(vectors, batch, 0):
        inside = (batch >= first) & (batch < first + sims.shape[1])
        sims[np.flatnonzero(inside), batch[inside] - first] = -np.inf  # not a pair with itself
        if near is None:
            _add_candidates(neighbours, vectors, threshold, sims, batch, first)
            continue
        hit = np.flatnonzero((sims >= low).any(axis=1))
        if not len(hit):
            continue
        part = sims[hit]
        i, j = np.nonzero(part >= low)
        close = part[i, j] >= threshold - SLACK
        _add_pairs(neighbours, vectors, threshold, batch[hit[i[close]]], j[close] + first)
        budget -= len(i)
        if budget < 0:  # crowded: stop keeping near rows
            near, found = None, []
            continue
        found.append((hit[i], j + first))
    if near is not None and found:
        rows = np.concatenate([f[0] for f in found])
        columns = np.concatenate([f[1] for f in found])
        order = np.argsort(rows, kind="stable")
        starts = np.searchsorted(rows[order], np.arange(len(batch) + 1))
        for k, row in enumerate(batch.tolist()):
            count = starts[k + 1] - starts[k]
            if row in neighbours and count <= NEAR_MAX:
                near[row] = columns[order[starts[k] : starts[k + 1]]].astype(np.int32)
    return near is not None


def _compare_with(
    neighbours: dict[int, dict[int, float]], vectors: np.ndarray, threshold: float, row: int, candidates: np.ndarray
) -> None:
    """Compare ``row`` with ``candidates`` only (rows that hold all its neighbours)."""
    candidates = candidates[candidates != row]
    similar = candidates[vectors[candidates] @ vectors[row] >= threshold - SLACK]
    _add_pairs(neighbours, vectors, threshold, np.full(len(similar), row), similar)


def similar_pairs(vectors: np.ndarray, threshold: float, block: int = DEFAULT_BLOCK) -> dict[int, dict[int, float]]:
    """Neighbour map ``i -> {j: similarity}`` of all pairs ``i != j`` at or above ``threshold``."""
    return scan(vectors, threshold, block, with_nearest=False).neighbours


Clusters = list[tuple[int, list[tuple[int, float]]]]


def clusters_of(
    neighbours: Mapping[int, Mapping[int, float]],
    priority: Sequence[int],
    min_size: int = 2,
    apart: Callable[[int, int], bool] | None = None,
) -> Clusters:
    """Star clusters from a neighbour map (:func:`similar_pairs`), as
    ``(representative, [(member, similarity_to_representative), ...])``.

    ``priority`` lists row indexes, most preferred representative first: at least
    every row of the map (which holds each pair both ways). Members are ordered by
    priority too; the representative is not among them. ``apart(i, j)``
    says that two rows must never share a cluster.
    """
    rank = {index: position for position, index in enumerate(priority)}
    assigned: set[int] = set()
    clusters: Clusters = []
    for rep in priority:
        if rep in assigned or rep not in neighbours:
            continue
        candidates = sorted(
            ((j, s) for j, s in neighbours[rep].items() if j not in assigned),
            key=lambda item: rank[item[0]],
        )
        members: list[tuple[int, float]] = []
        for j, s in candidates:
            if apart is None or not any(apart(j, k) for k in (rep, *(m for m, _ in members))):
                members.append((j, s))
        if len(members) + 1 < min_size:
            continue
        assigned.add(rep)
        assigned.update(j for j, _ in members)
        clusters.append((rep, members))
    return clusters


def pairs_apart(neighbours: Mapping[int, Mapping[int, float]], apart: Callable[[int, int], bool]) -> int:
    """How many neighbour pairs ``apart`` keeps out of any one cluster."""
    return sum(1 for i, row in neighbours.items() for j in row if i < j and apart(i, j))
