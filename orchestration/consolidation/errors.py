"""Errors in a project's data: deterministic, so a job that meets one is not retried."""

from __future__ import annotations


class DataError(ValueError):
    """A memory or a project's options hold a value that cannot be consolidated. The
    message names the memory (or the option) and the field; retrying cannot help."""
