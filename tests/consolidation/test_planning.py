"""Planning's read of a project's active memories."""

import uuid

import pytest
from sqlalchemy import event, update

from orchestration.consolidation import planning
from orchestration.demo.seed import seed
from orchestration.store import db
from orchestration.store.models import TaskMemory
from support import consolidate

EMBEDDING = 2  # the embedding's column in planning's read


@pytest.mark.integration
def test_active_memories_are_read_in_binary_format_with_the_text_formats_values(pg_database):
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 60, seed=5, dim=32)
    project_id = uuid.UUID(manifest.id)
    consolidate(project_id)  # consolidated memories: JSON lists, fresh timestamps
    with db.session_scope() as session:  # one memory on the lexical fallback: its text is read
        lexical = planning.read_active(session, project_id)[0].id
        session.execute(update(TaskMemory).where(TaskMemory.id == lexical).values(embedding=None))

    formats: list[int] = []

    def record(_conn, cursor, *_args) -> None:
        formats.append(cursor.pgresult.fformat(EMBEDDING))

    engine = db.get_engine()
    event.listen(engine, "after_cursor_execute", record)
    try:
        with db.session_scope() as session:
            rows = planning.read_active(session, project_id)
            text_rows = session.execute(
                planning._READ_ACTIVE.execution_options(**{db.BINARY_ROWS: False}), {"project_id": project_id}
            ).all()
    finally:
        event.remove(engine, "after_cursor_execute", record)

    assert formats == [1, 0]  # binary, then text
    assert rows == text_rows
    assert any(r.consolidated_from for r in rows)
    assert [r.lexical_text is not None for r in rows].count(True) == 1
    assert all(isinstance(r.id, uuid.UUID) and r.learned_at.utcoffset() is not None for r in rows)
