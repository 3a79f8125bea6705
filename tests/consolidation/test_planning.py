"""Planning's read of a project's active memories."""

import uuid

import numpy as np
import pytest
from sqlalchemy import func, select, update

from orchestration.consolidation import checks, memories, planning
from orchestration.consolidation.clustering import clusters_of
from orchestration.consolidation.embeddings import from_bytes
from orchestration.consolidation.options import resolve_options
from orchestration.consolidation.spaces import LEXICAL, STORED
from orchestration.demo.seed import seed
from orchestration.store import db
from orchestration.store.models import TaskMemory
from orchestration.store.statuses import MemoryType
from support import consolidate

DEFAULTS = resolve_options(None)


@pytest.mark.integration
def test_active_memories_stream_in_chunks_into_the_columns_sqlalchemy_rows_give(pg_database, monkeypatch):
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 60, seed=5, dim=32)
    project_id = uuid.UUID(manifest.id)
    consolidate(project_id)  # consolidated memories: JSON lists, fresh timestamps
    parameters = {"project_id": project_id, "since": None}
    with db.session_scope() as session:  # one memory on the lexical fallback: its text is read
        lexical = session.execute(memories.READ_ACTIVE, parameters).first().id
        session.execute(update(TaskMemory).where(TaskMemory.id == lexical).values(embedding=None))
    monkeypatch.setattr(memories, "CHUNK", 7)  # several chunks

    with db.session_scope() as session:
        read = planning.read_active(session, project_id, DEFAULTS)
        text_rows = session.execute(memories.READ_ACTIVE.execution_options(**{db.BINARY_ROWS: False}), parameters).all()
        streamed = list(db.stream(session, memories.READ_ACTIVE, parameters, 7))

    assert [len(chunk) for chunk in streamed] == [min(7, len(text_rows) - k) for k in range(0, len(text_rows), 7)]
    assert [tuple(row) for chunk in streamed for row in chunk] == [tuple(row) for row in text_rows]
    # In bulk on PostgreSQL: the regular memories after the others (the lexical one,
    # the consolidated ones), each once.
    rows = [read.id(i) for i in range(len(read))]
    assert sorted(rows) == sorted(r.id for r in text_rows)
    by_id = {r.id: r for r in text_rows}
    assert read.versions.tolist() == [by_id[i].version for i in rows]
    assert read.reused.tolist() == [by_id[i].reused_count for i in rows]
    assert read.new.tolist() == [False] * len(rows)
    with db.session_scope() as session:  # timestamps in microseconds, converted by PostgreSQL: as Python converts them
        stored_memories = {m.id: m for m in session.scalars(select(TaskMemory))}
        assert read.learned.tolist() == [checks.microseconds(stored_memories[i].learned_at) for i in rows]
        last_used = [stored_memories[i].last_reused_at or stored_memories[i].learned_at for i in rows]
        assert read.last_used.tolist() == [checks.microseconds(t) for t in last_used]
        types = [stored_memories[i].memory_type for i in rows]
    groups = {key: part.rows.tolist() for key, part in read.groups.items()}
    (lexical_row,) = [k for k, i in enumerate(rows) if i == lexical]
    assert groups.pop((LEXICAL, types[lexical_row])) == [lexical_row]
    assert sorted(k for group in groups.values() for k in group) == [k for k in range(len(rows)) if k != lexical_row]
    for (space, memory_type), group in groups.items():  # a consolidated memory groups with its sources' type
        assert space == STORED and {types[k] for k in group} <= {memory_type, MemoryType.CONSOLIDATED}
        vectors = read.groups[(space, memory_type)].vectors
        expected = np.stack([from_bytes(by_id[rows[k]].embedding) for k in group])
        assert np.allclose(vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True))
    assert any(types[k] == MemoryType.CONSOLIDATED for group in groups.values() for k in group)
    assert read.length == 32 * 4 and not read.invalid


@pytest.mark.integration
def test_a_connection_in_autocommit_mode_streams_and_stays_in_it(pg_database, monkeypatch):
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 30, seed=6, dim=16)
    monkeypatch.setattr(memories, "CHUNK", 4)
    with db.statement_scope() as connection:
        read = planning.read_active(connection, uuid.UUID(manifest.id), DEFAULTS)
        assert connection.connection.driver_connection.autocommit
        assert connection.execute(select(func.count()).select_from(TaskMemory)).scalar() == 30
    assert len(read) == 30 and sum(len(part.rows) for part in read.groups.values()) == 30


@pytest.mark.integration
def test_without_libpqs_chunked_mode_rows_stream_one_at_a_time(pg_database, monkeypatch):
    import psycopg

    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 25, seed=7, dim=16)
    parameters = {"project_id": uuid.UUID(manifest.id), "since": None}
    with db.session_scope() as session:
        chunked = [tuple(r) for chunk in db.stream(session, memories.READ_ACTIVE, parameters, 10) for r in chunk]
        monkeypatch.setattr(psycopg.capabilities, "has_stream_chunked", lambda: False)  # libpq before 17
        sizes = [len(chunk) for chunk in db.stream(session, memories.READ_ACTIVE, parameters, 10)]
        one_by_one = [tuple(r) for chunk in db.stream(session, memories.READ_ACTIVE, parameters, 10) for r in chunk]
    assert sizes == [10, 10, 5] and one_by_one == chunked and len(chunked) == 25


@pytest.mark.parametrize("seed_", range(5))
def test_ranking_only_the_memories_with_a_neighbour_clusters_as_ranking_the_whole_group(seed_):
    """Clusters depend on the order of the neighbour map's memories only; ties on
    reuse and age (many here) are broken by id either way."""
    rng = np.random.default_rng(seed_)
    n = 300
    read = memories.Memories(
        ids=rng.integers(0, 256, size=(n, 16), dtype=np.uint8),
        reused=rng.integers(0, 3, size=n),
        learned=rng.integers(0, 3, size=n),
        last_used=np.zeros(n, np.int64),
        versions=np.ones(n, np.int64),
        new=np.zeros(n, bool),
        groups={},
    )
    members = rng.permutation(n)[:200]  # a group: some of the project's rows, in no order
    group = planning.Group(STORED, members, np.zeros((len(members), 4), np.float32))
    neighbours: dict[int, dict[int, float]] = {}
    for _ in range(60):  # a symmetric map over some of the group's positions
        i, j = (int(k) for k in rng.choice(len(members), size=2, replace=False))
        neighbours.setdefault(i, {})[j] = neighbours.setdefault(j, {})[i] = float(rng.uniform(0.9, 1))
    whole_group = read.priority(members).tolist()

    ranked = planning.ranked(read, group, neighbours)

    assert sorted(ranked) == sorted(neighbours)
    for min_size in (2, 3):
        assert clusters_of(neighbours, ranked, min_size) == clusters_of(neighbours, whole_group, min_size)
