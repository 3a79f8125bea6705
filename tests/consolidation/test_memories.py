"""A comparison group's matrix: it grows as memories arrive (moving its pages, or, where
the system cannot, by copying) and loses none of them."""

import mmap

import numpy as np
import pytest

from orchestration.consolidation import memories


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
