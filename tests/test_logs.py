import io
import json

import structlog

from orchestration.logs import configure_logging, get_logger
from orchestration.settings import get_settings, load_settings


def test_json_lines_carry_bound_ids_and_stdlib_lines_share_the_renderer():
    import logging

    stream = io.StringIO()
    configure_logging(load_settings({}), stream=stream)
    try:
        with structlog.contextvars.bound_contextvars(run_id="r-1", job_id="j-1"):
            get_logger("orchestration.test").info("job.progress", progress=0.5, stage="merge")
            logging.getLogger("celery.worker").warning("plain %s line", "stdlib")
    finally:
        configure_logging(get_settings())
    ours, theirs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert ours["event"] == "job.progress" and ours["level"] == "info" and ours["progress"] == 0.5
    assert ours["run_id"] == "r-1" and ours["job_id"] == "j-1" and ours["timestamp"].endswith("Z")
    assert theirs["event"] == "plain stdlib line" and theirs["level"] == "warning" and theirs["run_id"] == "r-1"


def test_console_format_and_level():
    stream = io.StringIO()
    configure_logging(
        load_settings({"ORCHESTRATION_LOG_FORMAT": "console", "ORCHESTRATION_LOG_LEVEL": "WARNING"}), stream=stream
    )
    try:
        get_logger().info("hidden")
        get_logger().warning("run.reaped", reason="deadline")
    finally:
        configure_logging(get_settings())
    text = stream.getvalue()
    assert "hidden" not in text and "run.reaped" in text and "reason=deadline" in text
    assert not text.lstrip().startswith("{")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_console_on_a_terminal_and_json_elsewhere():
    from orchestration.logs import log_format

    auto = load_settings({})
    assert auto.log_format == "auto"
    assert log_format(auto, _Terminal()) == "console" and log_format(auto, io.StringIO()) == "json"
    assert log_format(load_settings({"ORCHESTRATION_LOG_FORMAT": "json"}), _Terminal()) == "json"
    terminal = _Terminal()
    configure_logging(auto, stream=terminal)
    try:
        get_logger().warning("run.reaped", reason="deadline")
    finally:
        configure_logging(get_settings())
    assert "run.reaped" in terminal.getvalue() and not terminal.getvalue().lstrip().startswith("{")


def test_python_warnings_are_log_lines():
    import logging
    import warnings

    stream = io.StringIO()
    logging.captureWarnings(False)  # pytest swapped the warnings hook since an earlier test installed ours
    configure_logging(load_settings({"ORCHESTRATION_LOG_FORMAT": "json"}), stream=stream)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("something odd", UserWarning, stacklevel=1)
    finally:
        configure_logging(get_settings())
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert "UserWarning: something odd" in line["event"] and line["level"] == "warning"
