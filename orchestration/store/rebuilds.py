"""Migrations on SQLite: re-creating a table (Alembic's batch mode) without losing rows.

SQLite cannot add or drop a constraint in place: batch mode copies the table into a
new one, drops the old one and renames the new one. With foreign key enforcement on
(as every connection here sets it), dropping the old table deletes its rows first and
``ON DELETE CASCADE`` deletes their children too: re-creating ``projects`` would delete
every memory and job, re-creating ``consolidation_jobs`` the whole audit trail.
:func:`foreign_keys_off` switches enforcement off around the block (outside the
transaction, the only place SQLite lets it change); ``PRAGMA foreign_key_check`` must
then find no row it did not find before, or the block is rolled back and the migration
stops. Used by migrations 0003 and 0008.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import op


def _restart(end: str, foreign_keys: bool) -> None:
    """End the migration's transaction with ``end`` (``COMMIT`` or ``ROLLBACK``), switch
    SQLite's foreign key enforcement (a no-op inside a transaction) and begin again."""
    pragma = f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}"
    if op.get_context().as_sql:  # offline (--sql): a script that has no transaction of its own
        op.execute(pragma if foreign_keys else f"{pragma};\nBEGIN")
        return
    connection = op.get_bind()
    if connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        connection.exec_driver_sql(end)
    connection.exec_driver_sql(pragma)
    connection.exec_driver_sql("BEGIN IMMEDIATE")
    if bool(connection.exec_driver_sql("PRAGMA foreign_keys").scalar()) != foreign_keys:
        raise RuntimeError(f"could not switch SQLite's foreign keys {'on' if foreign_keys else 'off'}")


def _foreign_key_violations() -> list[tuple]:
    """``PRAGMA foreign_key_check``: rows whose parent is missing (none offline)."""
    if op.get_context().as_sql:
        return []
    return [tuple(row) for row in op.get_bind().exec_driver_sql("PRAGMA foreign_key_check")]


@contextmanager
def foreign_keys_off(table: str, *after: str) -> Iterator[None]:
    """SQLite: around re-creating ``table``; ``after``: statements that complete the
    block (triggers the new table lacks). Committed as a whole, or rolled back."""
    _restart("COMMIT", foreign_keys=False)
    before = set(_foreign_key_violations())
    try:
        yield
        for statement in after:
            op.execute(statement)
        if op.get_context().as_sql:
            op.execute("COMMIT")
        elif broken := set(_foreign_key_violations()) - before:
            raise RuntimeError(f"re-creating {table} broke foreign keys: {sorted(broken)[:5]}")
    except BaseException:
        if not op.get_context().as_sql:
            _restart("ROLLBACK", foreign_keys=True)
        raise
    _restart("COMMIT", foreign_keys=True)
