"""Memories with bad data (issue 22, finding 6): skipped and counted, each named with its
field, never guessed at (a string is not a list of its characters) and never retried
as if the error were transient. On SQLite and PostgreSQL."""

import uuid

import pytest
from sqlalchemy import select, text, update

from orchestration.consolidation import applying, planning
from orchestration.consolidation.calibration import calibrate
from orchestration.consolidation.errors import DataError
from orchestration.consolidation.options import resolve_options
from orchestration.consolidation.preview import preview
from orchestration.demo.seed import seed
from orchestration.store import db
from orchestration.store.models import TaskMemory
from orchestration.store.types import utcnow
from support import consolidate, manual_job

DEFAULTS = resolve_options(None)


def _seed(seed_value=3):
    with db.session_scope() as session:
        (manifest,) = seed(session, 1, 60, seed=seed_value, dim=32)
    return manifest


def _set(memory_id, **values) -> None:
    with db.session_scope() as session:
        session.execute(update(TaskMemory).where(TaskMemory.id == memory_id).values(**values))


def _raw(statement: str, **params) -> None:
    """A write as an agent's raw SQL would make it (no JSON encoding, no version bump)."""
    with db.session_scope() as session:
        session.execute(text(statement), params)


def _memories(project_id, but=None) -> dict[uuid.UUID, TaskMemory]:
    """The project's memories, ``but`` one (whose bad data the ORM could not even load)."""
    with db.session_scope() as session:
        query = select(TaskMemory).where(TaskMemory.project_id == project_id, TaskMemory.id != but)
        return {m.id: m for m in session.scalars(query)}


def _state(memory_id) -> tuple[bool, bool, int]:
    with db.session_scope() as session:
        query = select(TaskMemory.is_duplicate, TaskMemory.is_archived, TaskMemory.version)
        duplicate, archived, version = session.execute(query.where(TaskMemory.id == memory_id)).one()
        return duplicate, archived, version


def _plan(project_id) -> planning.Plan:
    with db.session_scope() as session:
        return planning.plan(session, project_id, DEFAULTS, utcnow())


def _assert_consolidated_lists_are_unions_of_their_sources(project_id, but) -> None:
    memories = _memories(project_id, but)
    for merged in memories.values():
        if not merged.consolidated_from:
            continue
        sources = [memories[uuid.UUID(i)] for i in merged.consolidated_from]
        assert set(merged.tags) == {t for s in sources for t in s.tags}
        assert set(merged.file_links) == {f for s in sources for f in s.file_links}
        assert all(isinstance(t, str) and len(t) > 1 for t in merged.tags)


def _assert_skipped(project_id, memory_id, field: str, message: str) -> None:
    """Planned without it, named with its field; then consolidated without touching it."""
    planned = _plan(project_id)
    assert planned.skipped_invalid == 1
    (error,) = planned.invalid
    assert isinstance(error, DataError) and (error.memory_id, error.field) == (memory_id, field)
    assert str(error) == f"memory {memory_id} field {field}: {message}"
    assert memory_id not in {m for c in planned.clusters for m in c.source_ids} | set(planned.archive)
    assert preview(project_id, DEFAULTS).invalid == [str(error)]  # the dry run says it too
    with db.session_scope() as session:
        assert calibrate(session, project_id, DEFAULTS).skipped_invalid == 1
    result = consolidate(project_id)
    assert result.skipped_invalid == 1 and result.clusters_found > 0
    assert _state(memory_id)[:2] == (False, False)  # untouched
    _assert_consolidated_lists_are_unions_of_their_sources(project_id, but=memory_id)


def test_tags_stored_as_a_string_are_never_iterated_as_tags(database):
    manifest = _seed()
    pid, victim = uuid.UUID(manifest.id), uuid.UUID(manifest.groups[0][0])
    _set(victim, tags="deploy")
    _assert_skipped(pid, victim, "tags", 'expected a list of strings, got a string "deploy"')
    assert not any({"d", "e", "p", "l", "o", "y"} & set(m.tags) for m in _memories(pid, but=victim).values())


def test_tags_holding_an_object_are_skipped_not_a_type_error(database):
    manifest = _seed()
    pid, victim = uuid.UUID(manifest.id), uuid.UUID(manifest.groups[0][0])
    _set(victim, tags=["ok", {"a": 1}])
    _assert_skipped(pid, victim, "tags", 'expected a list of strings, got an object {"a": 1} at index 1')


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("src/app.py", 'expected a list of strings, got a string "src/app.py"'),
        ([1, "src/app.py"], "expected a list of strings, got a number 1 at index 0"),
        ({"path": "src/app.py"}, 'expected a list of strings, got an object {"path": "src/app.py"}'),
    ],
)
def test_malformed_file_links_are_skipped(database, value, message):
    manifest = _seed()
    pid, victim = uuid.UUID(manifest.id), uuid.UUID(manifest.groups[1][0])
    _set(victim, file_links=value)
    _assert_skipped(pid, victim, "file_links", message)


def _consolidated(project_id, consolidated_from) -> uuid.UUID:
    """A consolidated memory as an agent might have written it (no sources of its own)."""
    memory_id = uuid.uuid4()
    with db.session_scope() as session:
        session.add(
            TaskMemory(
                id=memory_id,
                project_id=project_id,
                memory_type="consolidated",
                content="Merged elsewhere.",
                tags=[],
                file_links=[],
                consolidated_from=consolidated_from,
                reused_count=10,
            )
        )
    return memory_id


def test_consolidated_from_with_a_non_uuid_is_skipped_not_a_value_error(database):
    manifest = _seed()
    pid = uuid.UUID(manifest.id)
    victim = _consolidated(pid, ["not-a-uuid"])
    _assert_skipped(
        pid, victim, "consolidated_from", 'expected a list of memory ids, got a string "not-a-uuid" at index 0'
    )


SOME_ID = "1f0c6a52-0b1e-4d8f-9c7a-3e2b1d0f9a88"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (SOME_ID, f'expected a list of memory ids, got a string "{SOME_ID}"'),
        ([7], "expected a list of memory ids, got a number 7 at index 0"),
    ],
)
def test_consolidated_from_that_is_not_a_list_of_ids_is_skipped(database, value, message):
    manifest = _seed()
    pid = uuid.UUID(manifest.id)
    victim = _consolidated(pid, value)
    _assert_skipped(pid, victim, "consolidated_from", message)


def test_json_null_lists_are_empty_lists_not_bad_data(database):
    manifest = _seed()
    pid, member = uuid.UUID(manifest.id), uuid.UUID(manifest.groups[0][0])
    _raw("UPDATE task_memories SET tags = 'null', file_links = 'null' WHERE id = :id", id=str(member))
    assert _plan(pid).skipped_invalid == 0
    result = consolidate(pid)
    assert result.skipped_invalid == 0 and _state(member)[0]


def test_timestamps_python_cannot_hold_are_skipped(database):
    manifest = _seed()
    pid = uuid.UUID(manifest.id)
    learned, reused = uuid.UUID(manifest.groups[0][0]), uuid.UUID(manifest.groups[1][0])
    if db.is_postgresql():
        bad_learned, bad_reused = "12000-01-01 00:00:00+00", "infinity"
        shown_learned, shown_reused = '"12000-01-01 00:00:00+00"', '"infinity"'
    else:
        bad_learned, bad_reused = "2026-02-30 00:00:00.000000", "yesterday"
        shown_learned, shown_reused = '"2026-02-30 00:00:00.000000"', '"yesterday"'
    _raw("UPDATE task_memories SET learned_at = :v WHERE id = :id", v=bad_learned, id=str(learned))
    _raw("UPDATE task_memories SET last_reused_at = :v WHERE id = :id", v=bad_reused, id=str(reused))
    planned = _plan(pid)
    assert planned.skipped_invalid == 2
    assert {str(e) for e in planned.invalid} == {
        f"memory {learned} field learned_at: expected a timestamp from year 1 to 9999, got {shown_learned}",
        f"memory {reused} field last_reused_at: expected a timestamp from year 1 to 9999, got {shown_reused}",
    }
    result = consolidate(pid)
    assert result.skipped_invalid == 2 and result.clusters_found > 0
    assert _state(learned)[:2] == _state(reused)[:2] == (False, False)


def test_a_timestamp_stored_as_a_number_is_skipped_not_read_as_microseconds(sqlite_database):
    # SQLite keeps '2026' written to a DATETIME column as the number 2026.
    manifest = _seed()
    pid, victim = uuid.UUID(manifest.id), uuid.UUID(manifest.groups[0][0])
    _raw("UPDATE task_memories SET learned_at = '2026' WHERE id = :id", id=str(victim))
    _assert_skipped(pid, victim, "learned_at", 'expected a timestamp from year 1 to 9999, got "2026"')


def test_tags_text_that_is_not_json_is_skipped(sqlite_database):
    manifest = _seed()
    pid, victim = uuid.UUID(manifest.id), uuid.UUID(manifest.groups[0][0])
    _raw("UPDATE task_memories SET tags = 'deploy, release' WHERE id = :id", id=str(victim))
    _assert_skipped(pid, victim, "tags", 'expected a list of strings, got text that is not JSON: "deploy, release"')


def test_lists_broken_between_the_plan_and_the_batch_leave_the_cluster_for_next_night(database):
    manifest = _seed()
    pid, victim = uuid.UUID(manifest.id), uuid.UUID(manifest.groups[0][0])
    planned = _plan(pid)
    assert planned.skipped_invalid == 0
    _raw("UPDATE task_memories SET tags = '\"deploy\"' WHERE id = :id", id=str(victim))  # version not moved
    result = applying.apply(planned, DEFAULTS, manual_job(pid))
    assert result.conflicts == 1 and result.clusters_found == len(manifest.groups) - 1
    assert _state(victim)[:2] == (False, False)
    _assert_consolidated_lists_are_unions_of_their_sources(pid, but=victim)
    assert consolidate(pid).skipped_invalid == 1  # next night: skipped, named


def test_checks_describe_values_exactly():
    from orchestration.consolidation import checks

    ids = "expected a list of memory ids"
    assert checks.what_is_wrong("tags", ["a", "b"]) is None
    assert checks.what_is_wrong("tags", None) is None
    assert checks.what_is_wrong("tags", "x" * 100) == f'expected a list of strings, got a string "{"x" * 58}…'
    assert checks.what_is_wrong("tags", True) == "expected a list of strings, got a boolean true"
    assert checks.what_is_wrong("consolidated_from", [str(uuid.uuid4()), None]) == f"{ids}, got null at index 1"
    assert checks.first_source(["not-a-uuid"]) is None and checks.first_source("abc") is None


def test_a_negative_reuse_count_is_skipped_not_archived_as_rarely_reused(database):
    manifest = _seed()
    pid = uuid.UUID(manifest.id)
    victim = uuid.UUID(manifest.groups[0][0])
    _set(victim, reused_count=-5)
    _assert_skipped(pid, victim, "reused_count", "expected a count of at least 0, got -5")


def test_a_merge_of_huge_reuse_counts_stops_at_the_column_maximum(database):
    manifest = _seed()
    pid, group = uuid.UUID(manifest.id), [uuid.UUID(m) for m in manifest.groups[0]]
    for member in group:
        _set(member, reused_count=2**31 - 1)
    result = consolidate(pid)
    assert result.skipped_invalid == 0 and result.clusters_found == len(manifest.groups)
    merged = next(m for m in _memories(pid).values() if m.consolidated_from and str(group[0]) in m.consolidated_from)
    assert merged.reused_count == 2**31 - 1
