"""The vector spaces of a project's memories, and the type each memory groups by.

Only memories of one space (and, by default, of one type) are compared: stored
embeddings of the project's usual length form one space, lexical embeddings of the
memories that have none another.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
from sqlalchemy import select

from orchestration.consolidation.checks import first_source, readable
from orchestration.consolidation.embeddings import LEXICAL_DIM, from_bytes, lexical_embedding
from orchestration.store.db import Executor, chunks
from orchestration.store.models import TaskMemory
from orchestration.store.statuses import MemoryType

STORED, LEXICAL = "stored", "lexical"
# How many consolidations of consolidations are followed back to an original type.
MAX_DEPTH = 32


def usual_length(lengths: Counter[int]) -> int | None:
    """The project's usual embedding length in bytes, from how many memories have each
    length: the most common one that is a whole number of float32 values, the longer
    of two as common (whatever order the memories were read in); ``None`` without
    stored embeddings."""
    usable = [n for n in lengths if n % 4 == 0 and n > 0]
    return max(usable, key=lambda n: (lengths[n], n)) if usable else None


@dataclass
class Vectors:
    """The vectors of some rows (positions in them), by space."""

    stored: list[int]  # rows whose stored embedding is usable
    stored_matrix: np.ndarray  # their embeddings, as stored (float32)
    lexical: list[int]  # rows without an embedding
    lexical_matrix: np.ndarray  # their lexical embeddings
    invalid: dict[int, str]  # row -> what is wrong with its embedding


def vectors_of(
    embeddings: Sequence[bytes | None], texts: Sequence[str | None], dim_bytes: int | None, skip: Collection[int] = ()
) -> Vectors:
    """The vectors of rows with these ``embeddings`` (and, where there is none, these
    ``texts``): stored embeddings of the project's usual length ``dim_bytes`` form one
    space, lexical embeddings of the memories that have none another.

    A stored embedding of another length, or with NaN/inf or zero norm, is invalid: the
    memory is skipped (counted) and left untouched. Rows in ``skip`` (bad data of
    another field) are left out as well: no vector, no space."""
    invalid: dict[int, str] = {}
    stored: list[int] = []
    lexical: list[int] = []
    for i, embedding in enumerate(embeddings):
        if i in skip:
            continue
        if embedding is None:
            lexical.append(i)
        elif len(embedding) == dim_bytes:
            stored.append(i)
        else:
            invalid[i] = (
                "empty (0 bytes)"
                if not embedding
                else f"{len(embedding)} bytes, where the project's embeddings have {dim_bytes}"
                if dim_bytes is not None
                else f"{len(embedding)} bytes, not a whole number of float32 values"
            )
    dim = (dim_bytes or 0) // 4
    # One buffer for all stored embeddings: checked without a Python loop per value.
    matrix = from_bytes(b"".join([cast(bytes, embeddings[i]) for i in stored])).reshape(len(stored), dim)
    finite = np.isfinite(matrix).all(axis=1)
    valid = finite & matrix.any(axis=1)
    for k in np.flatnonzero(~valid).tolist():
        invalid[stored[k]] = "NaN or infinite values" if not finite[k] else "a zero vector"
    lexical_matrix = np.array([lexical_embedding(texts[i] or "") for i in lexical], dtype=np.float32)
    return Vectors(
        stored=[stored[k] for k in np.flatnonzero(valid).tolist()],
        stored_matrix=matrix[valid],
        lexical=lexical,
        lexical_matrix=lexical_matrix.reshape(len(lexical), LEXICAL_DIM),
        invalid=invalid,
    )


def effective_types(source: Executor, origins: Mapping[int, uuid.UUID], types: Mapping[int, str]) -> dict[int, str]:
    """Memory type for grouping: a ``consolidated`` memory counts as its representative's
    type, so it can merge again with new memories of that type on a later night.
    ``origins``: the first source of each consolidated memory (by row), ``types``
    their own types. Returns the rows whose type for grouping is another. A chain that
    breaks (a source deleted, or a malformed ``consolidated_from``) leaves the memory
    ``consolidated``."""
    found_types: dict[int, str] = {}
    pending = dict(origins)
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
        for index, origin_id in pending.items():
            origin = found.get(origin_id)
            if origin is None:
                continue
            further = first_source(origin.consolidated_from)
            if origin.memory_type == MemoryType.CONSOLIDATED and further is not None:
                next_pending[index] = further
            else:
                found_types[index] = origin.memory_type
        pending = next_pending
    return {i: t for i, t in found_types.items() if t != types[i]}
