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

Only pairs above the threshold are kept (a sparse edge list), computed block by
block: peak memory is one ``block x n`` float32 matrix, never ``n x n``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

DEFAULT_BLOCK = 2048


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
        # Compare this block with itself and everything after it; column c is row start + c.
        sims = vectors[start:stop] @ vectors[start:].T
        size = stop - start
        sims[:, :size][np.tri(size, dtype=bool)] = -np.inf  # keep j > i only
        rows, cols = np.nonzero(sims >= threshold)
        for r, c, s in zip(rows.tolist(), cols.tolist(), sims[rows, cols].tolist(), strict=True):
            i, j = start + r, start + c
            neighbours[i][j] = s
            neighbours[j][i] = s
        if nearest is not None:
            # Row maxima cover the later rows, column maxima this block's rows for each later one.
            np.maximum(nearest[start:stop], sims.max(axis=1), out=nearest[start:stop])
            np.maximum(nearest[start:], sims.max(axis=0), out=nearest[start:])
    return Scan(neighbours, nearest)


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

    ``priority`` lists row indexes, most preferred representative first. Members are
    ordered by priority too; the representative is not among them. ``apart(i, j)``
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
