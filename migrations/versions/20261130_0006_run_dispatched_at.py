"""When a run's chord was sent is a column of the run, no longer a key of its summary.

``consolidation_runs.dispatched_at`` replaces ``summary["dispatched_at"]``: a claim
found running without it well after its start was orphaned before its chord was sent
(``orchestration.nightly.runs``). Only open runs carried the key (finalizing drops it
from the summary), so the data moves for them, both ways.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

import orchestration.store.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

runs = sa.table(
    "consolidation_runs",
    sa.column("id", orchestration.store.types.GUID()),
    sa.column("status", sa.String()),
    sa.column("summary", orchestration.store.types.JSONType),
    sa.column("dispatched_at", orchestration.store.types.UTCDateTime(timezone=True)),
)


def upgrade() -> None:
    op.add_column(
        "consolidation_runs",
        sa.Column("dispatched_at", orchestration.store.types.UTCDateTime(timezone=True), nullable=True),
    )
    connection = op.get_bind()
    for run_id, summary in connection.execute(sa.select(runs.c.id, runs.c.summary).where(runs.c.status == "running")):
        if isinstance(summary, dict) and summary.get("dispatched_at"):
            rest = {key: value for key, value in summary.items() if key != "dispatched_at"}
            sent = datetime.fromisoformat(summary["dispatched_at"])
            connection.execute(runs.update().where(runs.c.id == run_id).values(dispatched_at=sent, summary=rest))


def downgrade() -> None:
    connection = op.get_bind()
    open_runs = sa.select(runs.c.id, runs.c.summary, runs.c.dispatched_at).where(
        runs.c.status == "running", runs.c.dispatched_at.is_not(None)
    )
    for run_id, summary, sent in connection.execute(open_runs):
        restored = {**(summary if isinstance(summary, dict) else {}), "dispatched_at": sent.isoformat()}
        connection.execute(runs.update().where(runs.c.id == run_id).values(summary=restored))
    op.drop_column("consolidation_runs", "dispatched_at")
