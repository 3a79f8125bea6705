"""Planning's read of a project's active memories, streamed into columns.

Rows arrive in chunks (:func:`orchestration.store.db.stream`; on PostgreSQL most of
them in bulk, :mod:`bulk`) and each chunk is taken apart at once: its values go into
numpy arrays, its embeddings are checked, scaled to unit length and written into the
float32 matrix of their comparison group (one space and, by default, one type:
``spaces``). Nothing per memory is kept as a Python object, and a group's memories
are compared in its own matrix, never a copy of it: a project of 1,000,000 memories
of 384 dimensions costs the 1.5 GB of its vectors and about 60 MB besides
(docs/benchmarks.md).

A group's matrix grows as its memories arrive (:class:`_Matrix`). Its width is the
project's usual embedding length (``spaces.usual_length``): a read that is told it
(the last pass's) or guesses it (from its first chunk, or on PostgreSQL from one
memory) checks it against every row at the end, and reads again in the rare case it
was wrong.
"""

from __future__ import annotations

import contextlib
import mmap
import uuid
from collections import Counter
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from sqlalchemy import ColumnElement, Select, and_, bindparam, case, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from orchestration.consolidation import bulk, checks
from orchestration.consolidation.checks import first_source, in_microseconds, problem, readable
from orchestration.consolidation.embeddings import normalize_rows, row_norms, squared_norms
from orchestration.consolidation.errors import DataError
from orchestration.consolidation.spaces import LEXICAL, STORED, effective_types, usual_length, vectors_of
from orchestration.store.db import Executor, chunks, stream
from orchestration.store.models import TaskMemory
from orchestration.store.statuses import MemoryType
from orchestration.store.types import GUID, UTCDateTime

# Rows taken apart at a time: about 15 MB of 384-dimension embeddings.
CHUNK = 10_000
# The group of every memory of a space, when types are not kept apart.
ANY_TYPE = "*"
# Linux 5.14's madvise: map these pages in now, writable (Python's mmap module names it from 3.12 on).
MADV_POPULATE_WRITE = 23
# How much of a group's memory is mapped in at a time.
STEP = 16 << 20
# Where consolidated memories wait while their sources' type is unknown.
_WAITING = "waiting"


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
    return select(
        TaskMemory.id,
        TaskMemory.memory_type,
        TaskMemory.embedding,
        # Text is only needed where a lexical embedding must be computed.
        case((TaskMemory.embedding.is_(None), TaskMemory.content), else_=None).label("lexical_text"),
        TaskMemory.version,
        TaskMemory.reused_count,
        in_microseconds(TaskMemory.learned_at),
        in_microseconds(TaskMemory.last_reused_at),
        readable(TaskMemory.consolidated_from),
        # Which column, if any, holds bad data (checks.py): the lists are checked, not sent.
        problem(*CHECKED).label("problem"),
        # Marked since the last pass's watermark (never, for a full pass's NULL).
        func.coalesce(TaskMemory.change_mark >= bindparam("since"), literal(False)).label("new"),
    ).where(TaskMemory.project_id == bindparam("project_id"), active_filter(), *where)


READ_ACTIVE = _read()
# What a pass with nothing new reads: the memories that may be stale.
READ_STALE = _read(
    TaskMemory.reused_count < bindparam("min_reuse"),
    func.coalesce(TaskMemory.last_reused_at, TaskMemory.learned_at) < bindparam("cutoff", type_=UTCDateTime()),
)
_COLUMNS = tuple(str(c.key) for c in READ_ACTIVE.selected_columns)


@dataclass
class Part:
    """The memories of one comparison group: their rows and unit vectors."""

    rows: np.ndarray  # row indexes (a consolidated memory that waited for its group comes last)
    vectors: np.ndarray


@dataclass
class Memories:
    """A project's active memories (or some of them) as columns, by row index."""

    ids: np.ndarray  # (n, 16) uint8: the ids' bytes
    reused: np.ndarray  # int64 reused_count
    learned: np.ndarray  # int64 learned_at, microseconds since 1970
    last_used: np.ndarray  # int64 last_reused_at, or learned_at if never reused
    versions: np.ndarray  # int64
    new: np.ndarray  # bool: marked at or after the watermark read from
    groups: dict[tuple[str, str], Part]  # (space, type or ANY_TYPE) -> its memories
    invalid: dict[int, DataError] = field(default_factory=dict)  # skipped: no vector
    length: int | None = None  # the stored embeddings' length in bytes
    # The memories read row by row (bad data among them) when the rest came in bulk:
    # the next pass checks them again though unmarked (None: none came in bulk).
    irregular: frozenset[uuid.UUID] | None = None

    def __len__(self) -> int:
        return len(self.versions)

    def id(self, row: int) -> uuid.UUID:
        return uuid.UUID(bytes=self.ids[row].tobytes())

    def usable(self) -> np.ndarray:
        """Which rows have a vector (are neither skipped nor invalid)."""
        mask = np.zeros(len(self), dtype=bool)
        for part in self.groups.values():
            mask[part.rows] = True
        return mask

    def priority(self, rows: np.ndarray) -> np.ndarray:
        """Positions in ``rows``, the preferred representative first: the most reused,
        then the oldest, then by id (its text's order is its bytes')."""
        halves = self.ids[rows].view(">u8")  # (len(rows), 2): the id's bytes as two big-endian integers
        return np.lexsort((halves[:, 1], halves[:, 0], self.learned[rows], -self.reused[rows]))


class _Matrix:
    """A group's unit vectors, in memory mapped for them that grows as they arrive.

    It grows without copying (``mremap``: the pages move, not the vectors), and is
    mapped in a step at a time (``MADV_POPULATE_WRITE``): filling fresh memory page by
    page cost a 300,000-memory read more than its rows took to arrive, mapping it in
    steps a fifth of that (docs/benchmarks.md). Where either is missing, it grows by
    copying, or pages are mapped in as they are written."""

    def __init__(self, width: int):
        self.width = width
        self.region: mmap.mmap | None = None
        self.mapped = 0  # bytes mapped in
        self.rows: list[np.ndarray] = []
        self.filled = 0

    def add(self, rows: np.ndarray, vectors: np.ndarray, take: np.ndarray | None = None, norms: Any = None) -> None:
        """Add the unit vectors of ``rows`` (row indexes): ``vectors``, or the rows
        ``take`` of ``vectors`` over ``norms`` (gathered and scaled in place)."""
        end = self.filled + len(rows)
        self._reserve(end * self.width * 4)
        assert self.region is not None
        view = np.frombuffer(self.region, np.float32, len(rows) * self.width, self.filled * self.width * 4)
        view = view.reshape(len(rows), self.width)
        if take is None:
            view[:] = vectors
        else:  # indexing gathers rows several times faster than np.take(..., out=view)
            np.divide(vectors[take], norms[take, None], out=view)
        del view  # a region with views of it cannot grow
        self.rows.append(rows)
        self.filled = end

    def _reserve(self, size: int) -> None:
        if self.region is None or size > len(self.region):
            capacity = _pages(max(size, STEP, 2 * len(self.region) if self.region is not None else 0))
            if self.region is None:
                self.region = _anonymous(capacity)
            else:
                try:
                    self.region.resize(capacity)
                except (OSError, SystemError, ValueError):  # no mremap here: a new region, copied to
                    grown = _anonymous(capacity)
                    grown[: len(self.region)] = self.region
                    self.region.close()
                    self.region = grown
        if size > self.mapped:  # ahead by what it holds, at most a STEP: a small group maps in little
            end = min(_pages(max(size, self.mapped + min(STEP, size))), len(self.region))
            with contextlib.suppress(OSError, ValueError):  # an older kernel, another system: mapped as written
                self.region.madvise(MADV_POPULATE_WRITE, self.mapped, end - self.mapped)
            self.mapped = end

    def part(self) -> Part:
        rows = np.concatenate(self.rows) if self.rows else np.empty(0, np.int64)
        if self.region is None:
            return Part(rows, np.empty((0, self.width), dtype=np.float32))
        vectors = np.frombuffer(self.region, np.float32, self.filled * self.width).reshape(self.filled, self.width)
        return Part(rows, vectors)


def _pages(size: int) -> int:
    """``size`` rounded up to whole pages (madvise takes page-aligned ranges)."""
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


def _anonymous(size: int) -> mmap.mmap:
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    return mmap.mmap(-1, size, flags=flags) if flags else mmap.mmap(-1, size)


class _Reader:
    """The columns of a read, chunk by chunk, and the groups' matrices they fill.

    While rows arrive the connection is busy (``db.stream``), so nothing is read
    meanwhile: bad data a check in SQL flagged is described, and the consolidated
    memories' types for grouping are looked up (``spaces.effective_types``) once the
    rows are in; those memories' vectors wait in a matrix of their own until then. (The
    bulk read sends a consolidated memory's first source's type with it: only those
    whose first source is consolidated too wait.)"""

    def __init__(self, by_type: bool, length: int | None):
        self.by_type = by_type
        self.length = length
        self.rows = 0
        self.parts: dict[str, list[np.ndarray]] = {
            name: [] for name in ("ids", "reused", "learned", "last_used", "versions", "new")
        }
        self.matrices: dict[tuple[str, int], _Matrix] = {}
        self.names: list[str] = []  # the groups' keys, by code
        self.invalid: dict[int, DataError] = {}
        self.flagged: dict[uuid.UUID, tuple[int, str]] = {}  # bad data to describe: id -> (row, field)
        self.origins: dict[int, uuid.UUID] = {}  # consolidated memories waiting for their group
        self.lengths: Counter[int] = Counter()  # of the stored embeddings of rows without bad data
        self.unsure = False  # some embeddings were judged before the usual length was known
        self.by_row: list[uuid.UUID] | None = None  # read in bulk: those that were not regular

    def usual(self) -> int | None:
        """The usual embedding length of the memories read."""
        return usual_length(self.lengths)

    def right_width(self) -> bool:
        """Whether every embedding was judged against the usual length of them all."""
        return self.usual() == self.length and not (self.unsure and self.length is not None)

    def add(self, rows: Sequence[Any]) -> None:
        """Rows of :data:`READ_ACTIVE`."""
        offset = self.rows
        columns: dict[str, Sequence[Any]] = dict(zip(_COLUMNS, zip(*rows, strict=True), strict=True))
        ids = columns["id"]
        bad, flagged = checks.check_columns(columns)
        self.flagged.update((ids[i], (offset + i, field)) for i, field in flagged.items())
        embeddings = columns["embedding"]
        skip = bad.keys() | flagged.keys()
        self.lengths.update(len(e) for i, e in enumerate(embeddings) if e is not None and i not in skip)
        if self.length is None:
            self.length = usual_length(self.lengths)
            # Stored embeddings judged without a usual length are judged again (read).
            self.unsure = self.unsure or self.length is None and any(e is not None for e in embeddings)
        vectors = vectors_of(embeddings, columns["lexical_text"], self.length, skip=skip)
        bad.update((i, DataError.of_memory(ids[i], "embedding", why)) for i, why in vectors.invalid.items())
        self.invalid.update((offset + i, error) for i, error in bad.items())
        groups = self._groups(columns, skip, offset)
        for space, rows_of, matrix in (
            (STORED, vectors.stored, vectors.stored_matrix),
            (LEXICAL, vectors.lexical, vectors.lexical_matrix),
        ):
            codes = np.array([groups[i] for i in rows_of], dtype=np.int64)
            self._store(space, np.array(rows_of, dtype=np.int64) + offset, normalize_rows(matrix), codes)

        parts = self.parts
        parts["ids"].append(np.frombuffer(b"".join([i.bytes for i in ids]), np.uint8).reshape(-1, 16))
        parts["reused"].append(np.array(columns["reused_count"], dtype=np.int64))
        parts["versions"].append(np.array(columns["version"], dtype=np.int64))
        parts["new"].append(np.array(columns["new"], dtype=bool))
        # A skipped row's timestamps may be missing or unreadable: it is never compared or archived.
        learned = [0 if i in skip else v for i, v in enumerate(columns["learned_at"])]
        last = columns["last_reused_at"]
        parts["learned"].append(np.array(learned, dtype=np.int64))
        parts["last_used"].append(
            np.array([v if v is not None and i not in skip else learned[i] for i, v in enumerate(last)], np.int64)
        )
        self.rows += len(rows)

    def add_records(self, records: np.ndarray) -> list[uuid.UUID]:
        """Memories in bulk (``bulk.record``s). Returns the ids of those that are not
        regular, to be read row by row."""
        others = [uuid.UUID(bytes=bytes(i)) for i in records["id"][~records["regular"]].tolist()]
        if self.by_row is None:
            self.by_row = []
        self.by_row.extend(others)
        if others:
            records = records[records["regular"]]
        offset = self.rows
        ids = np.frombuffer(records["id"].tobytes(), dtype=np.uint8).reshape(-1, 16)
        self.lengths[cast(int, self.length)] += len(records)
        vectors = records["embedding"]  # a view: each row's embedding within its record
        squares = squared_norms(vectors)
        valid = np.isfinite(squares) & (squares > 0)
        for k in np.flatnonzero(~valid).tolist():
            why = "NaN or infinite values" if not np.isfinite(squares[k]) else "a zero vector"
            self.invalid[offset + k] = DataError.of_memory(uuid.UUID(bytes=ids[k].tobytes()), "embedding", why)
        rows = np.flatnonzero(valid)
        codes = self._record_codes(records, offset, rows)
        norms = row_norms(squares)
        for code in np.unique(codes).tolist():
            chosen = rows[codes == code]
            # Gathered from the records and scaled straight into the group's matrix.
            self._matrix(STORED, code, vectors.shape[1]).add(chosen + offset, vectors, chosen, norms)
        parts = self.parts
        parts["ids"].append(ids)
        parts["reused"].append(records["reused"].astype(np.int64))
        for name in ("learned", "last_used"):
            parts[name].append(bulk.unix_microseconds(records[name]))
        parts["versions"].append(records["version"].astype(np.int64))
        parts["new"].append(records["new"].astype(bool))
        self.rows += len(records)
        return others

    def _record_codes(self, records: np.ndarray, offset: int, rows: np.ndarray) -> np.ndarray:
        """The group codes of a batch's valid records (at ``rows``)."""
        if not self.by_type:
            return np.full(len(rows), self._code(ANY_TYPE), dtype=np.int64)
        codes = self._codes_of(records["type"][rows])
        # A consolidated memory groups by its first source's type (sent with it) unless
        # that one is consolidated too: such a memory waits for its chain (finish).
        consolidated = np.flatnonzero(codes == self._code(str(MemoryType.CONSOLIDATED)))
        if len(consolidated):
            sent = records["origin_type"][rows[consolidated]]
            known = sent != bulk.NO_TYPE  # the first source's type, where it was found
            found = consolidated[known]
            origin_codes = self._codes_of(sent[known])
            codes[found] = origin_codes
            waiting = found[origin_codes == self._code(str(MemoryType.CONSOLIDATED))]
            for k in waiting.tolist():
                self.origins[offset + int(rows[k])] = uuid.UUID(bytes=records["origin"][rows[k]].tobytes())
            codes[waiting] = self._code(_WAITING)
        return codes

    def _codes_of(self, names: np.ndarray) -> np.ndarray:
        """The codes of types' blank-padded names."""
        unique, inverse = np.unique(names, return_inverse=True)
        return np.array([self._code(name.decode().rstrip(" ")) for name in unique.tolist()], np.int64)[inverse]

    def _code(self, key: str) -> int:
        if key not in self.names:
            self.names.append(key)
        return self.names.index(key)

    def _groups(self, columns: dict[str, Sequence[Any]], skip: AbstractSet[int], offset: int) -> list[int]:
        """Each row's group code: of its type (ANY_TYPE when types are not kept apart),
        or of WAITING for a consolidated memory whose sources' type is looked up later."""
        types = columns["memory_type"]
        if not self.by_type:
            return [self._code(ANY_TYPE)] * len(types)
        codes = [self._code(t) for t in types]
        for i, memory_type in enumerate(types):
            if memory_type == MemoryType.CONSOLIDATED and i not in skip:
                origin = first_source(columns["consolidated_from"][i])
                if origin is not None:
                    self.origins[offset + i] = origin
                    codes[i] = self._code(_WAITING)
        return codes

    def _store(self, space: str, rows: np.ndarray, vectors: np.ndarray, codes: np.ndarray) -> None:
        """Add the vectors of ``rows`` (row indexes) to the matrices of their groups (``codes``)."""
        for code in np.unique(codes).tolist():
            chosen = codes == code
            self._matrix(space, code, vectors.shape[1]).add(rows[chosen], vectors[chosen])

    def _matrix(self, space: str, code: int, width: int) -> _Matrix:
        matrix = self.matrices.get((space, code))
        if matrix is None:
            matrix = self.matrices[(space, code)] = _Matrix(width)
        return matrix

    def finish(self, source: Executor) -> Memories:
        """The memories read: bad data described, every vector in its group."""
        explained = checks.explain(source, {memory_id: field for memory_id, (_, field) in self.flagged.items()})
        self.invalid.update((row, explained[memory_id]) for memory_id, (row, _) in self.flagged.items())
        if self.origins:
            own = dict.fromkeys(self.origins, str(MemoryType.CONSOLIDATED))
            found = effective_types(source, self.origins, own)
            for space in (STORED, LEXICAL):
                waiting = self.matrices.pop((space, self._code(_WAITING)), None)
                if waiting is not None:
                    part = waiting.part()
                    keys = [found.get(row, str(MemoryType.CONSOLIDATED)) for row in part.rows.tolist()]
                    self._store(space, part.rows, part.vectors, np.array([self._code(k) for k in keys], np.int64))

        def joined(name: str, empty: np.ndarray) -> np.ndarray:
            return np.concatenate(self.parts[name]) if self.parts[name] else empty

        no_ints = np.empty(0, np.int64)
        return Memories(
            ids=joined("ids", np.empty((0, 16), np.uint8)),
            reused=joined("reused", no_ints),
            learned=joined("learned", no_ints),
            last_used=joined("last_used", no_ints),
            versions=joined("versions", no_ints),
            new=joined("new", np.empty(0, bool)),
            groups={(space, self.names[code]): matrix.part() for (space, code), matrix in self.matrices.items()},
            invalid=dict(sorted(self.invalid.items())),
            length=self.length,
            irregular=None if self.by_row is None else frozenset(self.by_row),
        )


def read(
    source: Executor,
    statement: Select[Any],
    parameters: dict[str, Any],
    by_type: bool = True,
    dim_bytes: int | None = None,
    part: bool = False,
) -> Memories:
    """The memories ``statement`` (:data:`READ_STALE`, or another part of the project)
    reads, in groups by type (``by_type``, ``same_type_only``) or one per space.
    ``dim_bytes``: the usual embedding length, if known; unless the rows are only
    ``part`` of the project, it is checked against theirs."""
    reader = _Reader(by_type, dim_bytes)
    for rows in stream(source, statement, {"since": None, **parameters}, CHUNK):
        reader.add(rows)
    if not part and not reader.right_width():  # read at the wrong width: again, at the right one
        return read(source, statement, parameters, by_type, reader.usual(), part=True)
    return reader.finish(source)


def read_project(
    source: Executor,
    project_id: uuid.UUID,
    by_type: bool,
    since: int | None = None,
    dim_bytes: int | None = None,
    again: bool = False,
    recheck: AbstractSet[uuid.UUID] | None = None,
) -> Memories:
    """The project's active memories (:data:`READ_ACTIVE`); ``since``: the watermark
    that their ``new`` flag is taken from. On PostgreSQL the regular ones come in bulk
    (:mod:`bulk`) and the rest row by row; ``recheck`` (with ``since``): the memories
    the last pass recorded as irregular (``passes``): of the memories not marked since,
    only those are checked in full (:func:`bulk.regular`)."""
    parameters: dict[str, Any] = {"project_id": project_id, "since": since}
    connection = source.connection() if isinstance(source, Session) else source
    if connection.dialect.name != "postgresql":
        return read(source, READ_ACTIVE, parameters, by_type, dim_bytes)
    dim_bytes = dim_bytes if again else dim_bytes or _some_length(source, project_id)
    if dim_bytes is None:  # no stored embeddings of a usable length: nothing to read in bulk
        return read(source, READ_ACTIVE, parameters, by_type, part=again)
    parameters["dim"] = dim_bytes
    if recheck is not None and since is not None:
        parameters.update(checked_since=since, recheck=sorted(recheck))
    reader = _Reader(by_type, dim_bytes)
    others: list[uuid.UUID] = []
    for records in bulk.ahead(bulk.read_regular(connection, _READ_BULK, parameters, dim_bytes)):
        others += reader.add_records(records)
    for some in chunks(others, CHUNK):  # what was not regular, row by row
        for rows in stream(source, _READ_SOME, {**parameters, "ids": list(some)}, CHUNK):
            reader.add(rows)
    if not again and not reader.right_width():  # read at the wrong width: again, at the right one
        return read_project(source, project_id, by_type, since, reader.usual(), again=True, recheck=recheck)
    return reader.finish(source)


def _some_length(source: Executor, project_id: uuid.UUID) -> int | None:
    """A stored embedding's length: most likely the usual one (a read checks)."""
    length = func.octet_length(TaskMemory.embedding)
    query = select(length).where(TaskMemory.project_id == project_id, active_filter(), length > 0, length % 4 == 0)
    return source.execute(query.limit(1)).scalar()


# What can change without marking a memory (the triggers of migration 0008), among
# what is checked: checked again in every memory.
UNMARKED = (TaskMemory.last_reused_at,)
_READ_BULK = bulk.bulk_select(
    bulk.regular(CHECKED, UNMARKED), and_(TaskMemory.project_id == bindparam("project_id"), active_filter())
)
_READ_SOME = READ_ACTIVE.where(TaskMemory.id == func.any(bindparam("ids", type_=ARRAY(GUID()))))
