"""What a consolidation reports: its counters, and for a dry run the plan itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestration.consolidation.planning import Plan


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
    invalid: list[str] = field(default_factory=list)  # why each skipped memory was skipped
    conflicts: int = 0
    pairs_kept_apart: int = 0  # similar pairs the value guard kept apart
    clusters: list[dict[str, Any]] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    mode: str = "full"  # incremental or full (passes.py)
    memories_new: int = 0  # compared as new: every memory in a full pass
    full_reason: str | None = None  # why the pass was full, when it was recorded

    @classmethod
    def of(cls, plan: Plan, dry_run: bool) -> ConsolidationResult:
        """A result with nothing applied yet."""
        return cls(
            project_id=str(plan.project_id),
            dry_run=dry_run,
            memories_before=plan.memories_before,
            memories_after=plan.memories_before,
            skipped_invalid=plan.skipped_invalid,
            invalid=[str(error) for error in plan.invalid],
            pairs_kept_apart=plan.pairs_kept_apart,
            timings=dict(plan.timings),
            mode=plan.mode,
            memories_new=plan.memories_new,
            full_reason=plan.pass_.reason if plan.pass_ is not None else None,
        )

    def counters(self) -> dict[str, int]:
        return {
            "memories_before": self.memories_before,
            "memories_after": self.memories_after,
            "clusters_found": self.clusters_found,
            "memories_merged": self.memories_merged,
            "memories_archived": self.memories_archived,
        }
