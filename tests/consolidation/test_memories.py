"""Reading memories into columns: a comparison group's matrix grows as memories arrive
(moving its pages, or, where the system cannot, by copying), is mapped in whole pages,
and loses none of them; the usual embedding length does not depend on the order of
the rows or the chunks they came in."""

import mmap
import uuid
from collections import Counter

import numpy as np
import pytest
from sqlalchemy import update

from orchestration.consolidation import memories, spaces
from orchestration.demo.seed import seed
from orchestration.store import db
from orchestration.store.models import TaskMemory


class _NoMremap(mmap.mmap):
    def resize(self, newsize: int) -> None:
        raise SystemError("mmap: resizing not available--no mremap()")


@pytest.mark.parametrize("mremap", [True, False])
def test_a_group_matrix_grows_in_steps_and_keeps_every_vector(monkeypatch, mremap):
    monkeypatch.setattr(memories, "STEP", mmap.PAGESIZE)  # many steps for a few vectors
    if not mremap:
        monkeypatch.setattr(memories, "_anonymous", lambda size: _NoMremap(-1, size))
    matrix = memories._Matrix(width=64)
    for start in range(0, 300, 7):
        rows = np.arange(start, min(start + 7, 300))
        vectors = np.repeat(rows[:, None], 64, axis=1).astype(np.float32)
        if start % 2:
            matrix.add(rows, vectors)
        else:  # given with their norms, as the bulk read gives them
            batch = np.concatenate([vectors * 2, np.ones((3, 64), np.float32)])  # the others are not taken
            matrix.add(rows, batch, np.arange(len(rows)), np.full(len(batch), 2, np.float32))
    part = matrix.part()
    assert part.rows.tolist() == list(range(300))
    assert (part.vectors == np.arange(300, dtype=np.float32)[:, None]).all()
    assert matrix.region is not None and len(matrix.region) >= 300 * 64 * 4 > 4 * mmap.PAGESIZE


class _Recording(mmap.mmap):
    calls: list[tuple[int, int]]

    def madvise(self, option: int, start: int = 0, length: int = 0) -> None:
        self.calls.append((start, length))
        super().madvise(option, start, length)


def test_memory_is_mapped_in_whole_pages_step_by_step(monkeypatch):
    """madvise refuses a start that is not page-aligned: every step starts on a page."""
    regions: list[_Recording] = []

    def anonymous(size: int) -> _Recording:
        region = _Recording(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        region.calls = []
        regions.append(region)
        return region

    monkeypatch.setattr(memories, "_anonymous", anonymous)
    monkeypatch.setattr(memories, "STEP", 3 * mmap.PAGESIZE)
    matrix = memories._Matrix(width=384)
    for count in (3, 5, 7, 100, 1000, 31):
        matrix.add(np.arange(count), np.ones((count, 384), np.float32))
    (region,) = regions
    assert len(region.calls) > 3
    assert all(start % mmap.PAGESIZE == 0 for start, _ in region.calls)
    assert matrix.mapped >= matrix.filled * 384 * 4 and matrix.mapped % mmap.PAGESIZE == 0


def test_the_usual_length_does_not_depend_on_the_order_memories_were_read_in():
    assert spaces.usual_length(Counter({64: 2, 32: 2, 6: 9})) == spaces.usual_length(Counter({32: 2, 64: 2})) == 64
    assert spaces.usual_length(Counter({6: 3, 0: 2})) is None


def test_embeddings_judged_before_the_usual_length_was_known_are_judged_again(sqlite_database, monkeypatch):
    """The first chunk holds only embeddings of another length: they are told against
    the project's usual length, as when read in one chunk."""
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 20, seed=13, dim=16)
    project_id = uuid.UUID(manifest.id)
    with db.session_scope() as session:
        first = session.execute(memories.READ_ACTIVE, {"project_id": project_id, "since": None}).all()[:3]
        for row in first:
            session.execute(update(TaskMemory).where(TaskMemory.id == row.id).values(embedding=b"\x01" * 6))
    monkeypatch.setattr(memories, "CHUNK", 3)
    with db.session_scope() as session:
        read = memories.read(session, memories.READ_ACTIVE, {"project_id": project_id}, True)
    assert read.length == 64
    assert {str(e).split(": ", 1)[1] for e in read.invalid.values()} == {
        "6 bytes, where the project's embeddings have 64"
    }
