"""The schema's closed sets come from the StrEnums: a value outside one is refused by
the database, on SQLite and PostgreSQL."""

import uuid

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun, table_of
from orchestration.store.statuses import JobStatus, RunStatus, TriggerType
from orchestration.store.types import utcnow


def test_each_check_constraint_lists_exactly_its_enum():
    checks = {
        (table.name, c.name): str(c.sqltext)
        for table in (table_of(ConsolidationRun), table_of(ConsolidationJob))
        for c in table.constraints
        if c.name and c.name.startswith("ck_")
    }
    assert checks[("consolidation_runs", "ck_consolidation_runs_status")] == (
        "status IN ('running', 'completed', 'partial', 'failed')"
    )
    assert checks[("consolidation_jobs", "ck_consolidation_jobs_status")] == (
        "status IN (" + ", ".join(f"'{s.value}'" for s in JobStatus) + ")"
    )


@pytest.mark.parametrize("status", [*RunStatus, "cancelled"])
def test_the_database_refuses_a_status_outside_the_enum(database, status):
    row = {"id": uuid.uuid4(), "trigger_type": TriggerType.MANUAL, "status": status, "started_at": utcnow()}
    if status in tuple(RunStatus):
        with db.session_scope() as session:
            session.execute(insert(ConsolidationRun), [row])
        with db.session_scope() as session:
            assert session.get_one(ConsolidationRun, row["id"]).status == status
        return
    with pytest.raises(IntegrityError), db.session_scope() as session:
        session.execute(insert(ConsolidationRun), [row])
