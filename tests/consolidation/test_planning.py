"""Planning's read of a project's active memories."""

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, update

from orchestration.consolidation import memories, planning
from orchestration.consolidation.embeddings import from_bytes
from orchestration.demo.seed import seed
from orchestration.store import db
from orchestration.store.models import TaskMemory
from support import consolidate

EMBEDDING = 2  # the embedding's column in planning's read


@pytest.mark.integration
def test_active_memories_stream_in_binary_format_into_the_columns_the_text_format_gives(pg_database, monkeypatch):
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 60, seed=5, dim=32)
    project_id = uuid.UUID(manifest.id)
    consolidate(project_id)  # consolidated memories: JSON lists, fresh timestamps
    with db.session_scope() as session:  # one memory on the lexical fallback: its text is read
        lexical = session.execute(memories.READ_ACTIVE, {"project_id": project_id, "since": None}).first().id
        session.execute(update(TaskMemory).where(TaskMemory.id == lexical).values(embedding=None))
    monkeypatch.setattr(memories, "CHUNK", 7)  # several chunks

    cursors: list[Any] = []

    def record(_conn, cursor, *_args) -> None:
        cursors.append(cursor)

    fetched: list[int] = []  # each chunk's format, as the server sent it
    streamed = memories.stream

    def stream(*args: Any) -> Iterator[Any]:
        for rows in streamed(*args):
            fetched.append(cursors[-1].pgresult.fformat(EMBEDDING))
            yield rows

    monkeypatch.setattr(memories, "stream", stream)

    engine = db.get_engine()
    event.listen(engine, "after_cursor_execute", record)
    try:
        with db.session_scope() as session:
            read = planning.read_active(session, project_id)
            text_rows = session.execute(
                memories.READ_ACTIVE.execution_options(**{db.BINARY_ROWS: False}),
                {"project_id": project_id, "since": None},
            ).all()
    finally:
        event.remove(engine, "after_cursor_execute", record)

    assert type(cursors[-2]).__name__ == "ServerCursor"
    assert len(fetched) > 2 and set(fetched) == {1}  # streamed in chunks, binary
    assert [read.id(i) for i in range(len(read))] == [r.id for r in text_rows]
    assert read.versions.tolist() == [r.version for r in text_rows]
    assert read.reused.tolist() == [r.reused_count for r in text_rows]
    assert read.learned.tolist() == [memories.microseconds(r.learned_at) for r in text_rows]
    assert read.origins and all(text_rows[i].consolidated_from[0] == str(o) for i, o in read.origins.items())
    assert read.spaces[memories.LEXICAL].rows.tolist() == [i for i, r in enumerate(text_rows) if r.id == lexical]
    stored = read.spaces[memories.STORED]
    expected = np.stack([from_bytes(text_rows[i].embedding) for i in stored.rows])
    assert np.allclose(stored.vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True))
    assert read.length == 32 * 4 and not read.invalid


@pytest.mark.integration
def test_an_autocommit_connection_streams_on_a_connection_of_its_own(pg_database, monkeypatch):
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 30, seed=6, dim=16)
    monkeypatch.setattr(memories, "CHUNK", 4)
    with db.statement_scope() as connection:
        read = planning.read_active(connection, uuid.UUID(manifest.id))
        assert connection.connection.driver_connection.autocommit  # left as it was
    assert len(read) == 30 and len(read.spaces[memories.STORED].rows) == 30
