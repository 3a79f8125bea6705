"""Fixtures of the worker tests: the log lines a real worker writes while a test runs."""

import io
import json

import pytest

from orchestration.logs import configure_logging
from orchestration.settings import get_settings


@pytest.fixture
def captured_logs():
    """Every log line (ours and Celery's) as parsed JSON."""
    stream = io.StringIO()
    configure_logging(get_settings(), stream=stream)
    lines: list[dict] = []

    def read() -> list[dict]:
        lines[:] = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
        return lines

    yield read
    configure_logging(get_settings())
