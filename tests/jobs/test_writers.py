"""The transition table is the only writer of a job's status and attempts, and the
project lock is taken and given back in ``jobs/locks.py`` only (the PostgreSQL
one-statement start and end, written from the same declarations, aside): a scan of
the package's source, so that a new writer elsewhere fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import orchestration

PACKAGE = Path(orchestration.__file__).parent
JOB_FIELDS = {"status", "attempts"}


def _sources() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(PACKAGE)): ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))
    }


def _sets_job_fields(node: ast.AST) -> bool:
    """``.values(status=...)`` on anything but a run, or ``job.status = ...`` (also
    augmented, also in a tuple) on a name that says job."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values":
        keywords = {kw.arg for kw in node.keywords}
        return bool(keywords & JOB_FIELDS) and "ConsolidationRun" not in ast.unparse(node.func)
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
    elements = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
    return any(
        isinstance(e, ast.Attribute) and e.attr in JOB_FIELDS and "job" in ast.unparse(e.value).lower()
        for e in elements
    )


def _job_writes(tree: ast.Module) -> list[int]:
    return [getattr(node, "lineno", 0) for node in ast.walk(tree) if _sets_job_fields(node)]


def test_only_the_transition_table_writes_a_jobs_status_and_attempts():
    writers = {name: lines for name, tree in _sources().items() if (lines := _job_writes(tree))}
    assert writers == {"jobs/transitions.py": writers.get("jobs/transitions.py")}
    assert writers["jobs/transitions.py"]  # the scan does find the one writer


def test_only_the_lock_module_takes_and_gives_back_project_locks():
    lock_writes = re.compile(r"(insert|delete)\((ProjectLock|table)\b|(INSERT INTO|DELETE FROM) project_locks")
    writers = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if lock_writes.search(path.read_text())}
    assert writers == {"jobs/locks.py", "jobs/statements.py"}


def test_job_status_sql_is_written_only_by_the_one_statement_paths():
    writers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"UPDATE consolidation_jobs", path.read_text(), re.IGNORECASE)
    }
    assert writers == {"jobs/statements.py"}
