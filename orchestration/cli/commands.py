"""The commands of the ``orchestration`` command line (SPEC §6), one module per
subject; importing them registers them on :data:`main`."""

from orchestration.cli import admin, jobs, projects, retry, rollback, running, runs, web
from orchestration.cli.app import main

__all__ = ["admin", "jobs", "main", "projects", "retry", "rollback", "running", "runs", "web"]
