"""The ``orchestration`` command line (SPEC §6): ``app`` is the group and what its
commands share, ``runs``, ``jobs`` and ``admin`` the commands (``commands`` puts them
together), ``reports`` formats rows and results for people and scripts, ``progress``
shows a run's progress while it runs, ``text`` keeps control characters off the
terminal."""

from orchestration.cli.commands import main

__all__ = ["main"]
