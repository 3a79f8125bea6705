"""orchestration: the nightly memory-consolidation scheduler (see README.md and SPEC)."""

__version__ = "0.1.0"
