"""The option a project sets for a full pass every N days is ``full_pass_every_days``
(SPEC §5), unset by default: ``full_every_days`` (0 meaning never) is renamed in every
project's ``consolidation_options``, and a 0 is dropped.

Data only. The downgrade renames it back (an unset one becomes no key, as 0 did).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import orchestration.store.types

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD, NEW = "full_every_days", "full_pass_every_days"

projects = sa.table(
    "projects",
    sa.column("id", orchestration.store.types.GUID()),
    sa.column("consolidation_options", orchestration.store.types.JSONType),
)


def _rename(old: str, new: str) -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(projects.c.id, projects.c.consolidation_options)).all()
    for project_id, options in rows:
        if not isinstance(options, dict) or old not in options:
            continue
        renamed = {key: value for key, value in options.items() if key != old}
        if options[old]:  # 0 and null both mean never: no key
            renamed[new] = options[old]
        connection.execute(projects.update().where(projects.c.id == project_id).values(consolidation_options=renamed))


def upgrade() -> None:
    _rename(OLD, NEW)


def downgrade() -> None:
    _rename(NEW, OLD)
