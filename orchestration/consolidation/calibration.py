"""The calibration report (``orchestration similarity``): where a project's memories
stand against the similarity threshold, so an operator can pick
``similarity_threshold`` for their embedding model.

It compares memories exactly as planning does (the same groups, the blocked
similarity, star clusters, the value guard): each memory's nearest-neighbour
similarity, and for every threshold from 0.80 to 0.98 (and the project's own) how many
memories would merge. The row of the project's threshold matches a dry run's
counters. Read only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from orchestration.consolidation.clustering import clusters_of, pairs_apart, scan
from orchestration.consolidation.options import ConsolidationOptions
from orchestration.consolidation.planning import (
    comparison_groups,
    ranked,
    read_active,
    read_contents,
    value_guard,
)

THRESHOLDS = tuple(round(0.80 + 0.02 * k, 2) for k in range(10))  # 0.80, 0.82, ..., 0.98
# Sample pairs come from this close above and below the project's threshold.
NEAR = 0.02
SAMPLES = 3
HISTOGRAM_EDGES = (-1.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)
QUANTILES = {"p10": 10, "p25": 25, "p50": 50, "p75": 75, "p90": 90, "p99": 99, "max": 100}


@dataclass
class AtThreshold:
    threshold: float
    memories_with_neighbour: int = 0  # nearest neighbour at or above the threshold
    memories_merged: int = 0  # what a consolidation would merge (a dry run's count)
    clusters: int = 0
    pairs_kept_apart: int = 0  # by the value guard


@dataclass
class Calibration:
    project_id: str
    memories: int  # active
    compared: int  # in groups large enough to cluster
    skipped_invalid: int
    threshold: float
    value_guard: bool
    nearest: dict[str, float | None] = field(default_factory=dict)  # quantiles of nearest-neighbour similarity
    histogram: list[dict[str, Any]] = field(default_factory=list)
    thresholds: list[AtThreshold] = field(default_factory=list)
    above: list[dict[str, Any]] = field(default_factory=list)  # pairs just at or above the threshold
    below: list[dict[str, Any]] = field(default_factory=list)  # pairs just below it


def calibrate(session: Session, project_id: uuid.UUID, options: ConsolidationOptions) -> Calibration:
    """The report for the project's active memories under ``options``."""
    memories = read_active(session, project_id, options)
    current = options.similarity_threshold
    levels = sorted({*THRESHOLDS, current})
    report = Calibration(
        project_id=str(project_id),
        memories=len(memories),
        compared=0,
        skipped_invalid=len(memories.invalid),
        threshold=current,
        value_guard=options.value_guard,
        thresholds=[AtThreshold(t) for t in levels],
    )
    nearest_all: list[np.ndarray] = []
    above: list[tuple[float, uuid.UUID, uuid.UUID]] = []
    below: list[tuple[float, uuid.UUID, uuid.UUID]] = []
    for group in comparison_groups(memories, options):
        report.compared += len(group.members)
        neighbours, closest = scan(group.vectors, min(levels[0], current - NEAR))
        assert closest is not None
        nearest_all.append(closest)
        apart = value_guard(session, memories, group.members, neighbours) if options.value_guard else None
        priority = ranked(memories, group, neighbours)
        for row in report.thresholds:
            kept = {i: {j: s for j, s in near.items() if s >= row.threshold} for i, near in neighbours.items()}
            kept = {i: near for i, near in kept.items() if near}
            clusters = clusters_of(kept, priority, options.min_cluster_size, apart)
            row.memories_with_neighbour += int((closest >= row.threshold).sum())
            row.clusters += len(clusters)
            row.memories_merged += sum(1 + len(members) for _, members in clusters)
            row.pairs_kept_apart += pairs_apart(kept, apart) if apart else 0
        for i, near in neighbours.items():
            for j, s in near.items():
                if i < j and current <= s < current + NEAR:
                    above.append((s, memories.id(group.members[i]), memories.id(group.members[j])))
                elif i < j and current - NEAR <= s < current:
                    below.append((-s, memories.id(group.members[i]), memories.id(group.members[j])))
    closest_all = np.concatenate(nearest_all) if nearest_all else np.empty(0)
    report.nearest = {
        name: (round(float(np.percentile(closest_all, q)), 4) if len(closest_all) else None)
        for name, q in QUANTILES.items()
    }
    counts, _ = np.histogram(closest_all, bins=HISTOGRAM_EDGES)
    report.histogram = [
        {"from": low, "to": high, "memories": int(n)}
        for low, high, n in zip(HISTOGRAM_EDGES, HISTOGRAM_EDGES[1:], counts, strict=False)
    ]
    report.above, report.below = _samples(session, sorted(above)[:SAMPLES], sorted(below)[:SAMPLES])
    return report


def _samples(session: Session, *picked: list[tuple[float, uuid.UUID, uuid.UUID]]) -> tuple[list[dict[str, Any]], ...]:
    texts = read_contents(session, list({memory_id for pairs in picked for _, a, b in pairs for memory_id in (a, b)}))
    return tuple(
        [
            {
                "similarity": round(abs(s), 4),
                "a": {"id": str(a), "content": texts.get(a, "")},
                "b": {"id": str(b), "content": texts.get(b, "")},
            }
            for s, a, b in pairs
        ]
        for pairs in picked
    )
