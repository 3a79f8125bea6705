"""Full and incremental passes (docs/consolidation.md, "Incremental passes").

Database triggers mark each memory when it changes in a way that matters here
(``task_memories.change_mark``, migration 0008). A completed job records the
watermark its pass took before reading, and the signature of everything that decides
which pairs merge. The project's next pass is **incremental** when that signature
still holds: it compares only the memories marked at or above the watermark (new,
edited, or active again) with the others of their group. It is **full** when there is
no earlier pass, when the signature changed, on request, or when the last full pass
is ``full_pass_every_days`` old.

A completed pass also records the memories it found bad data in or could not read in
bulk (``irregular_ids``). The next incremental pass checks in full only those and the
marked ones: a memory left unmarked has the columns the last pass checked (the
triggers mark every change to them), so only what changes without marking it (its
reuse) and its embedding's length are checked again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, exists, func, literal_column, select
from sqlalchemy.orm import Session

from orchestration.consolidation import values
from orchestration.consolidation.options import ConsolidationOptions
from orchestration.store.db import Executor
from orchestration.store.models import ConsolidationJob
from orchestration.store.statuses import JobStatus, PassMode

# Bump when the clustering rule changes (clustering.py): the next pass of every project
# is then full.
RULE_VERSION = 1
# Bump when what counts as bad data (checks.py) or what is read in bulk (bulk.regular)
# changes: the next pass of every project then checks every memory again.
CHECKS_VERSION = 1
# Irregular memories a pass records at most (beyond, none: the next checks all).
MAX_IRREGULAR = 10_000
# The options that decide which pairs merge (and whether any are compared at all);
# the ``archive_*`` options do not: every pass archives over all active memories.
DECISIVE = ("merge", "similarity_threshold", "min_cluster_size", "same_type_only", "value_guard")
# A recorded signature ends with the embedding length the pass compared in.
SPACE = ":"
REQUESTED = "requested (--full)"
# Why a pass is full when the project's completed jobs all predate migration 0008.
UNRECORDED = "no earlier completed pass recorded a watermark (they predate incremental passes)"


@dataclass(frozen=True)
class Pass:
    """How a pass compares: ``since`` (incremental) is the watermark of the last
    completed pass; ``watermark`` is this pass's, taken before it reads anything."""

    mode: PassMode
    watermark: int
    signature: str
    since: int | None = None
    reason: str | None = None  # why it is full
    space: int | None = None  # incremental: the embedding length (bytes) the last pass compared in
    # Incremental: the memories the last pass recorded as irregular, checked again in
    # full though unmarked (None: not recorded, every memory is checked in full).
    recheck: frozenset[uuid.UUID] | None = None

    def full(self, reason: str) -> Pass:
        return Pass(PassMode.FULL, self.watermark, self.signature, reason=reason)

    def recorded(
        self,
        memories_new: int,
        space: int | None,
        conflicts: int = 0,
        irregular: AbstractSet[uuid.UUID] | None = None,
    ) -> dict[str, Any]:
        """The job row's columns for this pass, once it completed in ``space`` and found
        the ``irregular`` memories (None: not known). A pass that left merges undone
        because an agent changed a memory meanwhile (a change that may not mark it, such
        as a reuse) records the watermark it started from: the next pass compares those
        memories again (after a full pass, none: the next is full)."""
        listed = None if irregular is None or len(irregular) > MAX_IRREGULAR else sorted(map(str, irregular))
        return {
            "mode": self.mode,
            "memories_new": memories_new,
            "full_reason": self.reason,
            "watermark": self.since if conflicts else self.watermark,
            "signature": f"{self.signature}{SPACE}{space or 0}",
            "irregular_ids": None if listed is None else {"checks": CHECKS_VERSION, "ids": listed},
        }


def _recheck(recorded: Any) -> frozenset[uuid.UUID] | None:
    """The irregular memories a job recorded, if it recorded them by these checks
    (anything else, written by hand or by other checks: as if unrecorded)."""
    if not isinstance(recorded, dict) or type(recorded.get("checks")) is not int:
        return None
    ids = recorded.get("ids")
    if recorded["checks"] != CHECKS_VERSION or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return None
    try:
        return frozenset(uuid.UUID(i) for i in ids)
    except ValueError:
        return None


def signature(options: ConsolidationOptions) -> str:
    """What decides which pairs merge, as a short digest (the embedding space is checked
    by the pass itself, once it has read the embeddings)."""
    decisive = {name: getattr(options, name) for name in DECISIVE}
    decisive.update(rule=RULE_VERSION, value_guard_version=values.GUARD_VERSION if options.value_guard else None)
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:32]


# The mark from which a change is not yet seen: on PostgreSQL the oldest transaction
# still running on the server (every earlier one has committed or aborted; one left
# open holds it back, and a pass then takes more memories as new, never fewer), on
# SQLite the next value of the change counter.
_WATERMARK = {
    "postgresql": "(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint)",
    "sqlite": "(SELECT value + 1 FROM memory_change_counter WHERE id = 1)",
}


def _watermark_expr(source: Executor) -> ColumnElement[int]:
    connection = source.connection() if isinstance(source, Session) else source
    return literal_column(_WATERMARK[connection.dialect.name], BigInteger())


def watermark(source: Executor) -> int:
    """The watermark a pass that starts now records (see :data:`_WATERMARK`)."""
    return int(source.execute(select(_watermark_expr(source))).scalar_one())


@dataclass(frozen=True)
class Previous:
    """What the project's completed passes left: the last one's watermark, signature
    and irregular memories, and when the last full one ended."""

    watermark: int | None
    signature: str | None
    full_at: datetime | None
    irregular: frozenset[uuid.UUID] | None = None
    older: bool = False  # completed jobs from before passes were recorded (migration 0008)


def _previous_and_watermark(source: Executor, project_id: uuid.UUID) -> tuple[Previous, int]:
    """What the project's completed passes left, and the watermark now: one statement
    (every job of every night asks), the watermark taken with it."""
    jobs = ConsolidationJob
    done = (jobs.project_id == project_id, jobs.status == JobStatus.COMPLETED, jobs.mode.is_not(None))
    latest = select(jobs.id).where(*done).order_by(jobs.completed_at.desc(), jobs.id).limit(1).scalar_subquery()
    full_at = select(func.max(jobs.completed_at)).where(*done, jobs.mode == PassMode.FULL).scalar_subquery()
    row = source.execute(
        select(
            _watermark_expr(source).label("mark"),
            select(jobs.watermark).where(jobs.id == latest).scalar_subquery().label("watermark"),
            select(jobs.signature).where(jobs.id == latest).scalar_subquery().label("signature"),
            full_at.label("full_at"),
            select(jobs.irregular_ids).where(jobs.id == latest).scalar_subquery().label("irregular"),
            exists().where(*done[:2], jobs.mode.is_(None)).label("older"),
        )
    ).one()
    previous = Previous(row.watermark, row.signature, row.full_at, _recheck(row.irregular), bool(row.older))
    return previous, int(row.mark)


def choose(
    source: Executor, project_id: uuid.UUID, options: ConsolidationOptions, now: datetime, *, full: bool = False
) -> Pass:
    """This pass's mode, watermark and signature. Takes the watermark first: whatever
    the pass reads after it is at least what the watermark says it saw."""
    last, mark = _previous_and_watermark(source, project_id)
    current = Pass(PassMode.FULL, mark, signature(options))
    if full:
        return current.full(REQUESTED)
    if last.signature is None:
        return current.full(UNRECORDED if last.older else "no earlier completed pass")
    if last.watermark is None:
        return current.full("the last pass left merges undone: an agent changed a memory meanwhile")
    if last.watermark > mark:  # a database restored from a dump, or moved: its transaction ids start over
        return current.full("the recorded watermark is ahead of the database's")
    decisive, _, space = last.signature.partition(SPACE)
    if decisive != current.signature:
        return current.full("the options that decide which pairs merge changed")
    every = options.full_pass_every_days
    if every is not None and (last.full_at is None or now - last.full_at >= timedelta(days=every)):
        return current.full(f"the last full pass is {every} days old or more (full_pass_every_days)")
    return Pass(
        PassMode.INCREMENTAL,
        current.watermark,
        current.signature,
        since=last.watermark,
        space=int(space or 0) or None,
        recheck=last.irregular,
    )
