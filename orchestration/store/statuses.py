"""The closed sets of values the schema allows (SPEC §3), as ``StrEnum``s.

Each enum is stored as its string value; the models build their CHECK constraints
from these enums, so code and schema cannot drift apart.
"""

from __future__ import annotations

from enum import StrEnum


class MemoryType(StrEnum):
    ERROR_FIX = "error_fix"
    DISCOVERY = "discovery"
    DECISION = "decision"
    LEARNING = "learning"
    WARNING = "warning"
    CODEBASE_KNOWLEDGE = "codebase_knowledge"
    CONSOLIDATED = "consolidated"
    SYNTHESIS = "synthesis"


class ArchiveReason(StrEnum):
    STALENESS = "staleness"
    LOW_VALUE = "low_value"
    MANUAL = "manual"


class TriggerType(StrEnum):
    SCHEDULED = "scheduled"
    MANUAL = "manual"


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


class PassMode(StrEnum):
    """How a completed job compared its project's memories (``orchestration.consolidation.passes``)."""

    INCREMENTAL = "incremental"
    FULL = "full"


UNFINISHED_JOB_STATUSES = (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.RETRYING)
FINISHED_JOB_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.SKIPPED)


class Operation(StrEnum):
    """What a ``consolidation_changes`` row did to its memory."""

    MERGE = "merge"
    ARCHIVE = "archive"
    ROLLBACK = "rollback"
