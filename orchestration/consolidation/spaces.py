"""The vector spaces of a project's memories, and the type each memory groups by.

Only memories of one space (and, by default, of one type) are compared: stored
embeddings of the project's usual length form one space, lexical embeddings of the
memories that have none another.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from sqlalchemy import select

from orchestration.consolidation.checks import first_source, readable
from orchestration.consolidation.embeddings import from_bytes, lexical_embedding
from orchestration.store.db import Executor, chunks
from orchestration.store.models import TaskMemory
from orchestration.store.statuses import MemoryType

STORED, LEXICAL = "stored", "lexical"
# How many consolidations of consolidations are followed back to an original type.
MAX_DEPTH = 32


def stored_length(rows: Sequence[Any], skip: Collection[int] = ()) -> int | None:
    """The project's usual embedding length in bytes: the most common one that is a
    whole number of float32 values (``None`` without stored embeddings)."""
    lengths = Counter(len(r.embedding) for i, r in enumerate(rows) if r.embedding is not None and i not in skip)
    return next((n for n, _ in lengths.most_common() if n % 4 == 0 and n > 0), None)


def vector_spaces(
    rows: Sequence[Any], skip: Collection[int] = (), dim_bytes: int | None = None
) -> tuple[dict[str, list[int]], list[np.ndarray | None], dict[int, str]]:
    """Group row indexes by vector space; returns (space -> rows, vectors, invalid),
    ``invalid`` naming what is wrong with each invalid embedding (by row index).

    Stored embeddings of the project's most common length form one space, lexical
    embeddings another. A stored embedding of another length, or with NaN/inf or
    zero norm, is invalid: the memory is skipped (counted) and left untouched. Rows
    in ``skip`` (bad data of another field) are left out as well: no vector, no space.
    ``dim_bytes``: the usual length, when it is known from elsewhere (the rows are a
    part of the project).
    """
    dim_bytes = dim_bytes or stored_length(rows, skip)
    vectors: list[np.ndarray | None] = [None] * len(rows)
    spaces: dict[str, list[int]] = defaultdict(list)
    invalid: dict[int, str] = {}
    stored = []
    for i, r in enumerate(rows):
        if r.embedding is None or i in skip:
            continue
        if len(r.embedding) == dim_bytes:
            stored.append(i)
        else:
            invalid[i] = (
                f"{len(r.embedding)} bytes, where the project's embeddings have {dim_bytes}"
                if dim_bytes is not None
                else f"{len(r.embedding)} bytes, not a whole number of float32 values"
            )
    if stored and dim_bytes is not None:
        # One buffer for all stored embeddings: checked and sliced without a Python loop per value.
        matrix = from_bytes(b"".join(rows[i].embedding for i in stored)).reshape(len(stored), dim_bytes // 4)
        finite = np.isfinite(matrix).all(axis=1)
        valid = finite & matrix.any(axis=1)
        for k in np.flatnonzero(valid).tolist():
            vectors[stored[k]] = matrix[k]
            spaces[STORED].append(stored[k])
        for k in np.flatnonzero(~valid).tolist():
            invalid[stored[k]] = "NaN or infinite values" if not finite[k] else "a zero vector"
    for index, row in enumerate(rows):
        if row.embedding is None and index not in skip:
            vectors[index] = lexical_embedding(row.lexical_text or "")
            spaces[LEXICAL].append(index)
    spaces[STORED].sort()
    return spaces, vectors, invalid


def effective_types(source: Executor, rows: Sequence[Any]) -> dict[uuid.UUID, str]:
    """Memory type for grouping: a ``consolidated`` memory counts as its representative's
    type, so it can merge again with new memories of that type on a later night. A
    chain that breaks (a source deleted, or a malformed ``consolidated_from``) leaves
    the memory ``consolidated``."""
    types = {row.id: row.memory_type for row in rows}
    pending = {
        row.id: first
        for row in rows
        if row.memory_type == MemoryType.CONSOLIDATED and (first := first_source(row.consolidated_from)) is not None
    }
    for _ in range(MAX_DEPTH):  # one query per level
        if not pending:
            break
        found = {
            r.id: r
            for chunk in chunks(list(set(pending.values())))
            for r in source.execute(
                select(
                    TaskMemory.id,
                    TaskMemory.memory_type,
                    readable(TaskMemory.consolidated_from),
                ).where(TaskMemory.id.in_(chunk))
            )
        }
        next_pending = {}
        for memory_id, origin_id in pending.items():
            origin = found.get(origin_id)
            if origin is None:
                continue
            further = first_source(origin.consolidated_from)
            if origin.memory_type == MemoryType.CONSOLIDATED and further is not None:
                next_pending[memory_id] = further
            else:
                types[memory_id] = origin.memory_type
        pending = next_pending
    return types
