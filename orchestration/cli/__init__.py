"""The ``orchestration`` command line (SPEC §6): ``commands`` defines it, ``reports``
formats rows and results for people and scripts, ``progress`` shows a run's progress
while it runs."""

from orchestration.cli.commands import main

__all__ = ["main"]
