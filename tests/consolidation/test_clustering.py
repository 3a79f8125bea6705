import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestration.consolidation import clustering
from orchestration.consolidation.clustering import (
    clusters_of,
    near_bound,
    pairs_apart,
    reachable_pairs,
    scan,
    similar_pairs,
)
from orchestration.consolidation.embeddings import LEXICAL_DIM, from_bytes, lexical_embedding, normalize_rows, to_bytes


def _unit(rng, n, d):
    return normalize_rows(rng.standard_normal((n, d)).astype(np.float32))


def test_blocked_pairs_equal_the_full_matrix():
    rng = np.random.default_rng(0)
    base = _unit(rng, 20, 16)
    vectors = normalize_rows(np.repeat(base, 3, axis=0) + 0.05 * rng.standard_normal((60, 16)).astype(np.float32))
    full = vectors @ vectors.T
    expected = {(i, j) for i in range(60) for j in range(60) if i != j and full[i, j] >= 0.9}
    for block in (1, 7, 64, 4096):
        pairs = similar_pairs(vectors, 0.9, block=block)
        assert {(i, j) for i, js in pairs.items() for j in js} == expected


def star_clusters(vectors, priority, threshold, min_size=2):
    return clusters_of(similar_pairs(vectors, threshold), priority, min_size)


def test_every_member_is_above_threshold_to_its_representative():
    # A chain a~b~c where a and c are not similar: star clustering does not chain them.
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([0.95, np.sqrt(1 - 0.95**2), 0.0])
    c = np.array([0.81, 0.586, 0.0])
    vectors = normalize_rows(np.stack([a, b, c]).astype(np.float32))
    assert vectors[0] @ vectors[2] < 0.9 < vectors[1] @ vectors[2]
    clusters = star_clusters(vectors, priority=[0, 1, 2], threshold=0.9)
    assert clusters == [(0, [(1, clusters[0][1][0][1])])]
    for rep, members in star_clusters(vectors, priority=[1, 0, 2], threshold=0.9):
        assert all(vectors[rep] @ vectors[m] >= 0.9 for m, _ in members)


def test_min_size_and_priority():
    rng = np.random.default_rng(1)
    base = _unit(rng, 1, 8)[0]
    vectors = normalize_rows(np.stack([base + 0.01 * rng.standard_normal(8) for _ in range(3)]).astype(np.float32))
    assert star_clusters(vectors, [2, 0, 1], 0.9)[0][0] == 2
    assert star_clusters(vectors, [0, 1, 2], 0.9, min_size=4) == []


def test_lexical_embedding_is_deterministic_and_unit_length():
    v = lexical_embedding("Retry the upload with backoff")
    assert v.shape == (LEXICAL_DIM,) and abs(np.linalg.norm(v) - 1) < 1e-6
    assert np.array_equal(v, lexical_embedding("retry the UPLOAD with backoff"))
    assert not np.any(lexical_embedding(""))
    assert float(v @ lexical_embedding("Something else entirely about fonts")) < 0.5


def test_vector_bytes_round_trip():
    v = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    assert np.array_equal(from_bytes(to_bytes(v)), v) and len(to_bytes(v)) == 12


def test_a_neighbour_apart_from_the_representative_or_a_member_stays_out():
    # Four near-identical rows; 1 conflicts with the representative 0, 3 with the member 2.
    neighbours = {i: {j: 0.95 for j in range(4) if j != i} for i in range(4)}
    conflicts = {frozenset((0, 1)), frozenset((2, 3))}

    def apart(i, j):
        return frozenset((i, j)) in conflicts

    assert clusters_of(neighbours, [0, 1, 2, 3], apart=apart) == [(0, [(2, 0.95)]), (1, [(3, 0.95)])]
    assert clusters_of(neighbours, [0, 1, 2, 3]) == [(0, [(1, 0.95), (2, 0.95), (3, 0.95)])]
    assert pairs_apart(neighbours, apart) == 2


def test_nearest_is_each_rows_best_other_row():
    rng = np.random.default_rng(3)
    vectors = _unit(rng, 50, 8)
    full = vectors @ vectors.T
    np.fill_diagonal(full, -np.inf)
    for block in (1, 7, 4096):
        assert np.allclose(scan(vectors, 0.9, block=block).nearest, full.max(axis=1))
    assert scan(vectors[:1], 0.9).nearest.tolist() == [-1.0]
    assert scan(vectors, 0.9, with_nearest=False).nearest is None


def _components_of(neighbours, seeds):
    """The rows of the neighbour map's components that contain a seed (a plain search)."""
    reached, stack = set(), list(seeds)
    while stack:
        i = stack.pop()
        if i not in reached:
            reached.add(i)
            stack.extend(neighbours.get(i, {}))
    return reached


def _chains(rng, groups, length, d, step):
    """Rows in chains: each a small step from the one before, so neighbours of
    neighbours are found round after round, and far ends are not neighbours."""
    rows = []
    for start in _unit(rng, groups, d):
        row = start
        for _ in range(length):
            rows.append(row)
            row = normalize_rows((row + step * rng.standard_normal(d)).astype(np.float32)[None])[0]
    return np.stack(rows)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    threshold=st.sampled_from([0.3, 0.6, 0.75, 0.9, 0.97]),
    step=st.sampled_from([0.05, 0.15, 0.4]),
    block=st.sampled_from([1, 5, 4096]),
    limit=st.sampled_from([None, ("NEAR_PER_ROW", 0), ("NEAR_PER_ROW", 1), ("NEAR_MAX", 0), ("NEAR_MAX", 2)]),
    columns=st.sampled_from([7, 8192]),
)
def test_reachable_pairs_are_the_seeds_components_of_the_full_map(seed, threshold, step, block, limit, columns):
    # Whether rows reached from a compared row are compared with its near rows only, or
    # with every row (limits on near rows set low: crowded vectors, found at once or
    # after some tiles, too many for a row), and whether a row's near rows come from one
    # tile or many, the map is the same.
    rng = np.random.default_rng(seed)
    vectors = np.concatenate([_chains(rng, 4, 6, 12, step), _unit(rng, 10, 12)])
    full = similar_pairs(vectors, threshold)
    seeds = sorted(rng.choice(len(vectors), size=int(rng.integers(1, 6)), replace=False).tolist())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clustering, "COLUMNS", columns)
        if limit is not None:
            patch.setattr(clustering, *limit)
        reached = reachable_pairs(vectors, threshold, seeds, block=block)
    expected = {i: full[i] for i in _components_of(full, seeds) if full.get(i)}
    assert {i: dict(row) for i, row in reached.items()} == expected


def test_a_neighbours_neighbour_is_near():
    # The bound that lets a reached row skip the rest: a chain of two steps at exactly
    # the threshold's angle ends at the bound, and no chain of two neighbours ends further.
    rng = np.random.default_rng(5)
    for threshold in (0.5, 0.8, 0.9, 0.99):
        angle = np.arccos(threshold)
        a, b, c = (np.array([np.cos(k * angle), np.sin(k * angle)]) for k in range(3))
        assert a @ b == pytest.approx(threshold) and a @ c == pytest.approx(near_bound(threshold))
        for _ in range(200):
            x, y, z = _unit(rng, 3, 3)
            if x @ y >= threshold and y @ z >= threshold:
                assert x @ z >= near_bound(threshold) - 1e-6


def test_rows_reached_later_are_compared_with_the_near_rows_of_the_row_that_reached_them():
    # Two chains of rows, each in its own plane, each row a neighbour of the next only,
    # among random rows; the seeds are the chains' first rows. Every row of a chain is
    # reached a round later than the one before, from a row whose near rows were kept
    # (compared with every row) or not (then it is itself). The seeds' near rows come
    # from one tile, or interleaved from many; a low budget makes the vectors crowded
    # after some tiles.
    rng = np.random.default_rng(11)
    step = 0.99 * np.arccos(0.9)  # two steps are just inside the near bound
    chains = np.zeros((2, 10, 16), dtype=np.float32)
    for k, (x, y) in enumerate(((0, 1), (2, 3))):
        chains[k, :, x], chains[k, :, y] = np.cos(step * np.arange(10)), np.sin(step * np.arange(10))
    # The first chain's seed first, the second's next, then the second chain, then the
    # first: the first seed's near rows come in later tiles than the second's.
    vectors = np.concatenate([chains[0, :1], chains[1], chains[0, 1:], _unit(rng, 200, 16)])
    seeds = [0, 1]
    full = similar_pairs(vectors, 0.9)
    assert _components_of(full, seeds) >= set(range(20))
    expected = {i: full[i] for i in _components_of(full, seeds)}
    for columns, per_row in ((8192, 256), (3, 256), (3, 2)):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(clustering, "COLUMNS", columns)
            patch.setattr(clustering, "NEAR_PER_ROW", per_row)
            reached = reachable_pairs(vectors, 0.9, seeds)
        assert {i: dict(r) for i, r in reached.items()} == expected, (columns, per_row)
