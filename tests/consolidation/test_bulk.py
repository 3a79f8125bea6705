"""PostgreSQL's bulk read (COPY's binary format) gives what the row-by-row read gives,
memory by memory, for every kind of memory: regular ones, and those it leaves to the
row-by-row read (no embedding, another length, NaN or zero vectors, bad data,
consolidated memories whose ids are spelled otherwise)."""

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete, func, select, text, update

from orchestration.consolidation import bulk, memories
from orchestration.consolidation.embeddings import to_bytes
from orchestration.demo.seed import seed
from orchestration.store import db
from orchestration.store.models import TaskMemory
from support import consolidate

DIM = 16


def _project_of_every_kind() -> tuple[uuid.UUID, dict[str, uuid.UUID]]:
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 80, seed=11, dim=DIM)
    project_id = uuid.UUID(manifest.id)
    consolidate(project_id)  # consolidated memories, whose sources' type they group by
    with db.session_scope() as session:
        rows = session.execute(memories.READ_ACTIVE, {"project_id": project_id, "since": None}).all()
    plain = [r.id for r in rows if r.consolidated_from is None]
    consolidated = [r for r in rows if r.consolidated_from]
    names = ["lexical", "short", "nan", "zero", "bad_tags", "negative", "chained", "orphan", "no_sources"]
    names += ["to_no_sources", "first_year", "last_year"]
    kinds = dict(zip(names, plain, strict=False))
    kinds["braced_ids"] = consolidated[0].id  # Python reads them, the bulk read leaves them
    kinds["upper_ids"] = consolidated[1].id
    changes: dict[str, dict[str, Any]] = {
        "lexical": {"embedding": None},
        "short": {"embedding": to_bytes(np.ones(DIM - 1))},
        "nan": {"embedding": to_bytes(np.full(DIM, np.nan))},
        "zero": {"embedding": to_bytes(np.zeros(DIM))},
        "negative": {"reused_count": -3},
        "braced_ids": {"consolidated_from": ["{" + i + "}" for i in consolidated[0].consolidated_from]},
        "upper_ids": {"consolidated_from": [i.upper() for i in consolidated[1].consolidated_from]},
        # Consolidated memories group by the type at the end of their chain of first sources, or their own.
        "chained": {"memory_type": "consolidated", "consolidated_from": [str(consolidated[2].id)]},
        "orphan": {"memory_type": "consolidated", "consolidated_from": [str(uuid.uuid4())]},  # its source is gone
        "no_sources": {"memory_type": "consolidated", "consolidated_from": None},
        "to_no_sources": {"memory_type": "consolidated", "consolidated_from": [str(kinds["no_sources"])]},
        # Timestamps are sent counted from 2000: before it, and at the ends of Python's range.
        "first_year": {"learned_at": datetime(1, 1, 1, tzinfo=UTC), "last_reused_at": None},
        "last_year": {
            "learned_at": datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            "last_reused_at": datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        },
    }
    with db.session_scope() as session:
        for kind, values in changes.items():
            session.execute(update(TaskMemory).where(TaskMemory.id == kinds[kind]).values(**values))
        session.execute(
            text("UPDATE task_memories SET tags = CAST(:tags AS jsonb) WHERE id = :id"),
            {"tags": json.dumps("deploy"), "id": kinds["bad_tags"]},
        )
    return project_id, kinds


def _by_id(read: memories.Memories) -> dict[uuid.UUID, dict[str, Any]]:
    """Everything read of each memory, by id: its columns, its group, its vector."""
    found: dict[uuid.UUID, dict[str, Any]] = {
        read.id(i): {
            "version": int(read.versions[i]),
            "reused": int(read.reused[i]),
            "learned": int(read.learned[i]),
            "last_used": int(read.last_used[i]),
            "new": bool(read.new[i]),
        }
        for i in range(len(read))
    }
    for key, part in read.groups.items():
        for position, row in enumerate(part.rows.tolist()):
            found[read.id(row)] |= {"group": key, "vector": part.vectors[position].tobytes()}
    for row, error in read.invalid.items():
        found[read.id(row)] |= {"invalid": str(error)}
    return found


@pytest.mark.integration
@pytest.mark.parametrize("by_type", [True, False])
def test_the_bulk_read_reads_every_memory_as_the_row_by_row_read_does(pg_database, by_type):
    project_id, kinds = _project_of_every_kind()
    with db.session_scope() as session:
        since = session.execute(text("SELECT max(change_mark) FROM task_memories")).scalar()
        parameters = {"project_id": project_id, "since": since}
        in_bulk = memories.read_project(session, project_id, by_type, since)
        row_by_row = memories.read(session, memories.READ_ACTIVE, parameters, by_type)

    assert _by_id(in_bulk) == _by_id(row_by_row)
    found = _by_id(in_bulk)
    assert [kind for kind, memory_id in kinds.items() if "invalid" in found[memory_id]] == [
        "short",
        "nan",
        "zero",
        "bad_tags",
        "negative",
    ]
    assert found[kinds["lexical"]]["group"][0] == memories.LEXICAL
    if by_type:  # both consolidated memories group with their sources' type, however their ids are spelled
        base_types = {"error_fix", "discovery", "decision", "learning", "warning", "codebase_knowledge"}
        assert {found[kinds[k]]["group"][1] for k in ("braced_ids", "upper_ids", "chained")} <= base_types
        assert {found[kinds[k]]["group"][1] for k in ("orphan", "no_sources", "to_no_sources")} == {"consolidated"}
    assert found[kinds["first_year"]]["learned"] == found[kinds["first_year"]]["last_used"] == -62135596800000000
    assert found[kinds["last_year"]]["last_used"] == 253402300799999999
    assert 0 < sum(m["new"] for m in found.values()) < len(found)  # marked since: the memories edited last
    assert in_bulk.length == DIM * 4


@pytest.mark.integration
def test_a_wrong_guess_of_the_embedding_length_is_read_again_at_the_usual_one(pg_database, monkeypatch):
    project_id, _ = _project_of_every_kind()
    monkeypatch.setattr(memories, "_some_length", lambda *_: (DIM - 1) * 4)  # the one short embedding's
    with db.session_scope() as session:
        read = memories.read_project(session, project_id, True)
        expected = memories.read(session, memories.READ_ACTIVE, {"project_id": project_id}, True)
    assert read.length == DIM * 4
    assert _by_id(read) == _by_id(expected)


@pytest.mark.integration
def test_records_of_another_layout_are_refused(pg_database):
    project_id, _ = _project_of_every_kind()
    parameters = {"project_id": project_id, "since": None, "dim": DIM * 4}
    with db.statement_scope() as connection, pytest.raises(RuntimeError, match="another layout"):
        # Read as if the embeddings were twice as long: the lengths in the records say otherwise.
        list(bulk.read_regular(connection, memories._READ_BULK, parameters | {"dim": DIM * 4}, DIM * 8))


# --- reading ahead in a thread -------------------------------------------------------


def test_reading_ahead_gives_every_item_in_order_and_raises_the_threads_error():
    assert list(bulk.ahead(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("COPY broke")

    taken = []
    with pytest.raises(ValueError, match="COPY broke"):
        for item in bulk.ahead(failing()):
            taken.append(item)
    assert taken == [1]


def test_a_user_that_stops_early_leaves_the_thread_to_take_every_item():
    produced = []

    def items():
        for k in range(20):
            produced.append(k)
            yield k

    for item in bulk.ahead(items(), depth=1):
        if item == 2:
            break
    assert produced == list(range(20))  # the connection reached the end of its COPY


@pytest.mark.integration
def test_a_project_whose_first_embeddings_are_of_no_usable_length_is_still_read_in_bulk(pg_database):
    """The length guess skips lengths that are not whole float32 values: six bytes
    guessed from the first memory made every record misread."""
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 4, seed=12, dim=DIM)
    project_id = uuid.UUID(manifest.id)
    rng = np.random.default_rng(12)
    with db.session_scope() as session:
        session.execute(delete(TaskMemory).where(TaskMemory.project_id == project_id))
        for k in range(40):  # in this order: the first ones are the first a plain LIMIT 1 finds
            embedding = b"\x01" * 6 if k < 10 else to_bytes(rng.normal(size=DIM))
            session.add(
                TaskMemory(project_id=project_id, memory_type="learning", content=f"m {k}", embedding=embedding)
            )
            session.flush()
    with db.session_scope() as session:
        plain_guess = session.execute(
            select(func.octet_length(TaskMemory.embedding))
            .where(TaskMemory.project_id == project_id, memories.active_filter())
            .limit(1)
        ).scalar()
        in_bulk = memories.read_project(session, project_id, True)
        row_by_row = memories.read(session, memories.READ_ACTIVE, {"project_id": project_id}, True)
    assert plain_guess == 6
    assert in_bulk.length == DIM * 4 and len(in_bulk.invalid) == 10
    assert _by_id(in_bulk) == _by_id(row_by_row)


# --- COPY's binary format, in pieces ---------------------------------------------------


def _copy_stream(records: np.ndarray, extension: bytes = b"") -> bytes:
    header = bulk.SIGNATURE + bytes(4) + len(extension).to_bytes(4, "big") + extension
    return header + records.tobytes() + bulk.TRAILER


def _records(count: int) -> np.ndarray:
    layout = bulk.record(DIM * 4)
    records = np.zeros(count, layout)
    records["fields"] = len(bulk.FIELDS) + 1
    for name, kind in bulk.FIELDS:
        records[f"{name}_length"] = np.dtype(kind).itemsize
    records["embedding_length"] = DIM * 4
    records["version"] = np.arange(count)
    records["embedding"] = np.arange(count * DIM, dtype=np.float32).reshape(count, DIM)
    return records


@pytest.mark.parametrize("piece", [1, 7, 100, "rows", 10_000])
def test_records_are_read_whatever_pieces_the_stream_arrives_in(monkeypatch, piece):
    """Header, rows and trailer split anywhere (one byte at a time, across rows, many
    rows at once, more than a batch at once) give the same records, in batches."""
    records = _records(25)
    monkeypatch.setattr(bulk, "BATCH_BYTES", 4 * records.itemsize)  # batches of four records
    stream = _copy_stream(records, extension=b"ext")
    size = records.itemsize if piece == "rows" else int(piece)
    first = len(stream) - len(bulk.TRAILER) - records.nbytes  # the header, on its own when "rows"
    pieces = (
        [stream[:first]] + [stream[k : k + size] for k in range(first, len(stream), size)]
        if piece == "rows"
        else [stream[k : k + size] for k in range(0, len(stream), size)]
    )

    batches = list(bulk.parse((memoryview(p) for p in pieces), DIM * 4))  # as psycopg gives them

    assert b"".join(batch.tobytes() for batch in batches) == records.tobytes()
    assert all(len(batch) >= 4 for batch in batches[:-1])


def test_a_stream_cut_short_or_of_another_format_is_refused():
    stream = _copy_stream(_records(3))
    with pytest.raises(RuntimeError, match="before its trailer"):
        list(bulk.parse(iter([stream[:-2]]), DIM * 4))
    with pytest.raises(RuntimeError, match="partial row"):
        list(bulk.parse(iter([stream[:-20] + bulk.TRAILER]), DIM * 4))
    with pytest.raises(RuntimeError, match="binary format"):
        list(bulk.parse(iter([b"id,embedding\n" + stream]), DIM * 4))
