"""Planning's read of a project's active memories, streamed into columns.

Rows arrive in chunks (:func:`orchestration.store.db.stream`) and each chunk is taken
apart at once: its embeddings are checked, scaled to unit length and copied into one
float32 matrix, its other values into numpy arrays. Nothing per memory is kept as a
Python object, so a project of 1,000,000 memories of 384 dimensions costs the 1.5 GB
of its vectors and about 50 MB besides (docs/benchmarks.md).

The matrix's width is the project's usual embedding length (``spaces.usual_length``).
A read that is told it (the last pass's) or guesses it from its first chunk checks it
against all the rows at the end, and reads again in the rare case it was wrong.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Select, and_, bindparam, case, func, literal, select

from orchestration.consolidation import checks
from orchestration.consolidation.checks import first_source, problem, readable
from orchestration.consolidation.embeddings import normalize_rows
from orchestration.consolidation.errors import DataError
from orchestration.consolidation.spaces import LEXICAL, STORED, effective_types, usual_length, vectors_of
from orchestration.store.db import BINARY_ROWS, Executor, stream
from orchestration.store.models import TaskMemory
from orchestration.store.statuses import MemoryType
from orchestration.store.types import UTCDateTime

# Rows taken apart at a time: about 15 MB of 384-dimension embeddings.
CHUNK = 10_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


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


def _read(*where: ColumnElement[bool]) -> Select[Any]:
    # Built once each: every job of every night runs one, and building a statement and
    # its cache key costs more than running it on a small project.
    return (
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
            # Marked since the last pass's watermark (never, for a full pass's NULL).
            func.coalesce(TaskMemory.change_mark >= bindparam("since"), literal(False)).label("new"),
        )
        .where(TaskMemory.project_id == bindparam("project_id"), active_filter(), *where)
        .execution_options(**{BINARY_ROWS: True})  # the embeddings: see BINARY_ROWS
    )


READ_ACTIVE = _read()
# What a pass with nothing new reads: the memories that may be stale.
READ_STALE = _read(
    TaskMemory.reused_count < bindparam("min_reuse"),
    func.coalesce(TaskMemory.last_reused_at, TaskMemory.learned_at) < bindparam("cutoff", type_=UTCDateTime()),
)


def microseconds(moment: datetime) -> int:
    """``moment`` as microseconds since 1970 (exact for every year Python holds)."""
    return (moment - EPOCH) // _MICROSECOND


@dataclass
class Space:
    """The memories of one vector space: their rows and unit vectors, row by row."""

    name: str
    rows: np.ndarray  # row indexes, ascending
    vectors: np.ndarray  # (len(rows), dimensions) float32 unit vectors

    def of(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (ascending, all in this space): the matrix itself,
        not a copy, when they are all of it."""
        if len(rows) == len(self.rows):
            return self.vectors
        return self.vectors[np.searchsorted(self.rows, rows)]


@dataclass
class Memories:
    """A project's active memories (or some of them) as columns, by row index."""

    ids: np.ndarray  # (n, 16) uint8: the ids' bytes
    types: list[str]  # the type names, by code
    type_codes: np.ndarray  # int16
    reused: np.ndarray  # int64 reused_count
    learned: np.ndarray  # int64 learned_at, microseconds since 1970
    last_used: np.ndarray  # int64 last_reused_at, or learned_at if never reused
    versions: np.ndarray  # int64
    new: np.ndarray  # bool: marked at or after the watermark read from
    origins: dict[int, uuid.UUID]  # consolidated memories: the first memory each was made of
    spaces: dict[str, Space]
    invalid: dict[int, DataError] = field(default_factory=dict)  # skipped: no vector
    length: int | None = None  # the stored embeddings' length in bytes

    def __len__(self) -> int:
        return len(self.versions)

    def id(self, row: int) -> uuid.UUID:
        return uuid.UUID(bytes=self.ids[row].tobytes())

    def usable(self) -> np.ndarray:
        """Which rows have a vector (are neither skipped nor invalid)."""
        mask = np.zeros(len(self), dtype=bool)
        for space in self.spaces.values():
            mask[space.rows] = True
        return mask

    def grouping_types(self, source: Executor) -> np.ndarray:
        """Each row's type code for grouping (``spaces.effective_types``)."""
        codes = self.type_codes.copy()
        own = {row: self.types[codes[row]] for row in self.origins}
        for row, name in effective_types(source, self.origins, own).items():
            if name not in self.types:
                self.types.append(name)
            codes[row] = self.types.index(name)
        return codes

    def priority(self, rows: np.ndarray) -> np.ndarray:
        """Positions in ``rows``, the preferred representative first: the most reused,
        then the oldest, then by id (its text's order is its bytes')."""
        halves = self.ids[rows].view(">u8")  # (len(rows), 2): the id's bytes as two big-endian integers
        return np.lexsort((halves[:, 1], halves[:, 0], self.learned[rows], -self.reused[rows]))


class _Columns:
    """The columns of a read, chunk by chunk, and the stored matrix they fill."""

    def __init__(self, capacity: int, dim_bytes: int | None):
        self.length = dim_bytes
        self.capacity = capacity
        # Untouched pages of an empty array take no memory: a capacity too large costs nothing.
        self.matrix = np.empty((capacity, (dim_bytes or 0) // 4), dtype=np.float32)
        self.filled = 0
        self.rows = 0
        self.parts: dict[str, list[np.ndarray]] = {
            name: [] for name in ("ids", "codes", "reused", "learned", "last_used", "versions", "new")
        }
        self.stored_rows: list[np.ndarray] = []
        self.lexical_rows: list[np.ndarray] = []
        self.lexical: list[np.ndarray] = []
        self.types: dict[str, int] = {}
        self.origins: dict[int, uuid.UUID] = {}
        self.invalid: dict[int, DataError] = {}
        self.lengths: Counter[int] = Counter()  # of the stored embeddings of rows without bad data

    def add(self, source: Executor, rows: Sequence[Any]) -> None:
        offset = self.rows
        bad = checks.check_rows(source, rows)
        self.lengths.update(len(r.embedding) for i, r in enumerate(rows) if r.embedding is not None and i not in bad)
        if self.length is None:
            self.length = usual_length(self.lengths)
            self.matrix = np.empty((self.capacity, (self.length or 0) // 4), dtype=np.float32)
        vectors = vectors_of(rows, self.length, skip=bad)
        bad.update((i, DataError.of_memory(rows[i].id, "embedding", why)) for i, why in vectors.invalid.items())
        self.invalid.update((offset + i, error) for i, error in sorted(bad.items()))
        self._store(normalize_rows(vectors.stored_matrix))
        self.stored_rows.append(np.array(vectors.stored, dtype=np.int64) + offset)
        self.lexical_rows.append(np.array(vectors.lexical, dtype=np.int64) + offset)
        self.lexical.append(vectors.lexical_matrix)
        parts = self.parts
        parts["ids"].append(np.frombuffer(b"".join(r.id.bytes for r in rows), dtype=np.uint8).reshape(-1, 16))
        parts["codes"].append(np.array([self.types.setdefault(r.memory_type, len(self.types)) for r in rows], np.int16))
        parts["reused"].append(np.array([r.reused_count for r in rows], dtype=np.int64))
        parts["versions"].append(np.array([r.version for r in rows], dtype=np.int64))
        parts["new"].append(np.array([bool(r.new) for r in rows], dtype=bool))
        # A skipped row's timestamps may be unreadable: it is never compared or archived.
        learned = [0 if i in bad else microseconds(r.learned_at) for i, r in enumerate(rows)]
        parts["learned"].append(np.array(learned, dtype=np.int64))
        last_used = [
            learned[i] if i in bad or r.last_reused_at is None else microseconds(r.last_reused_at)
            for i, r in enumerate(rows)
        ]
        parts["last_used"].append(np.array(last_used, dtype=np.int64))
        consolidated = (i for i, r in enumerate(rows) if r.memory_type == MemoryType.CONSOLIDATED and i not in bad)
        for i in consolidated:
            if (origin := first_source(rows[i].consolidated_from)) is not None:
                self.origins[offset + i] = origin
        self.rows += len(rows)

    def _store(self, vectors: np.ndarray) -> None:
        end = self.filled + len(vectors)
        if end > len(self.matrix):  # more rows than the count said: the project grew meanwhile
            grown = np.empty((max(end, len(self.matrix) * 5 // 4), self.matrix.shape[1]), dtype=np.float32)
            grown[: self.filled] = self.matrix[: self.filled]
            self.matrix = grown
        self.matrix[self.filled : end] = vectors
        self.filled = end

    def memories(self) -> Memories:
        def joined(name: str, empty: np.ndarray) -> np.ndarray:
            return np.concatenate(self.parts[name]) if self.parts[name] else empty

        spaces = {}
        stored_rows = np.concatenate(self.stored_rows) if self.stored_rows else np.empty(0, np.int64)
        if len(stored_rows):
            spaces[STORED] = Space(STORED, stored_rows, self.matrix[: self.filled])
        lexical_rows = np.concatenate(self.lexical_rows) if self.lexical_rows else np.empty(0, np.int64)
        if len(lexical_rows):
            spaces[LEXICAL] = Space(LEXICAL, lexical_rows, normalize_rows(np.concatenate(self.lexical)))
        no_ints = np.empty(0, np.int64)
        return Memories(
            ids=joined("ids", np.empty((0, 16), np.uint8)),
            types=list(self.types),
            type_codes=joined("codes", np.empty(0, np.int16)),
            reused=joined("reused", no_ints),
            learned=joined("learned", no_ints),
            last_used=joined("last_used", no_ints),
            versions=joined("versions", no_ints),
            new=joined("new", np.empty(0, bool)),
            origins=self.origins,
            spaces=spaces,
            invalid=self.invalid,
            length=self.length,
        )


def read(
    source: Executor,
    statement: Select[Any],
    parameters: dict[str, Any],
    capacity: int,
    dim_bytes: int | None = None,
    part: bool = False,
) -> Memories:
    """The memories ``statement`` (:data:`READ_ACTIVE`, :data:`READ_STALE`) reads.
    ``capacity``: about how many there are (the stored matrix is made that large, and
    grows if it must). ``dim_bytes``: the usual embedding length, if known; unless the
    rows are only ``part`` of the project, it is checked against theirs."""
    columns = _Columns(capacity, dim_bytes)
    for rows in stream(source, statement, {"since": None, **parameters}, CHUNK):
        columns.add(source, rows)
    usual = usual_length(columns.lengths)
    if not part and usual != columns.length:
        del columns  # the vectors are the wrong width: read again at the right one
        return read(source, statement, parameters, capacity, usual, part=True)
    return columns.memories()
