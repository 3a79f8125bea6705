"""The one structlog configuration: JSON (or console) lines on stderr for our events
and for every stdlib logger (Celery, SQLAlchemy, Alembic) and Python warning alike.
``ORCHESTRATION_LOG_FORMAT=auto`` (the default) picks the console renderer when
stderr is a terminal and JSON otherwise. In JSON mode nothing else is printed: the
Celery programs' banners are off (``orchestration.celery_app``), and the few lines
Celery writes past logging (``worker: Warm shutdown``) and billiard's pool messages
(a pool process that died) go through the renderer.

Context bound with :func:`structlog.contextvars.bind_contextvars` (run, job and
project ids) is merged first, so every line a task writes carries its ids.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import IO, Any

import structlog

from orchestration.settings import Settings


@contextmanager
def quiet(*names: str) -> Iterator[None]:
    """Silence these loggers for the block: the caller reports the failure itself, in
    one line, instead of their reconnection messages."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _uvicorn_fields(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """uvicorn's lines: its message again with terminal colour codes dropped, and a
    request's client, method, path and status as fields of their own (the access
    line's arguments), for a log pipeline to filter on."""
    event.pop("color_message", None)
    arguments = event.pop("positional_args", None)  # of every stdlib line (pass_foreign_args)
    record = event.get("_record")
    if record is not None and record.name == "uvicorn.access" and isinstance(arguments, tuple) and len(arguments) == 5:
        client, method, path, _version, status = arguments
        event.update(client=client, method=method, path=path, status=status)
    return event


def _shared_processors() -> list[Callable]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _uvicorn_fields,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]


def log_format(settings: Settings, stream: IO[str] | None = None) -> str:
    """``json`` or ``console``: the setting, with ``auto`` resolved for ``stream``."""
    if settings.log_format != "auto":
        return settings.log_format
    stream = stream or sys.stderr
    return "console" if hasattr(stream, "isatty") and stream.isatty() else "json"


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> None:
    """Route structlog, stdlib logging and warnings through one renderer on ``stream``
    (stderr)."""
    console = log_format(settings, stream) == "console"
    renderer: Callable = (
        structlog.dev.ConsoleRenderer(colors=bool(console and (stream or sys.stderr).isatty()))
        if console
        else structlog.processors.JSONRenderer(default=str)
    )
    shared = _shared_processors()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = _ConsoleHandler(stream or sys.stderr) if console else logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            pass_foreign_args=True,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    _route_pool_messages(handler, settings.log_level)
    logging.captureWarnings(True)
    if not console:
        _route_celery_says()
    # SQLAlchemy echoes every statement at INFO; keep it to warnings unless debugging.
    if settings.log_level != "DEBUG":
        logging.getLogger("sqlalchemy").setLevel(logging.WARNING)


def _route_pool_messages(handler: logging.Handler, level: str) -> None:
    """Billiard (the prefork pool) logs through the ``multiprocessing`` logger, which
    it keeps from propagating; with no handler of its own, Python printed its errors
    as bare text ("Process 'ForkPoolWorker-1' pid:18701 exited with 'signal 9
    (SIGKILL)'"). Give it ours, at ERROR as Celery would (DEBUG when debugging). The
    logger object outlives billiard's resets of its own reference to it."""
    pool = logging.getLogger("multiprocessing")
    pool.handlers[:] = [handler]
    pool.propagate = False
    pool.setLevel(logging.DEBUG if level == "DEBUG" else logging.ERROR)


# What clears a line being redrawn in place at the terminal (a progress line), if any.
_held_line: list[Callable[[], None]] = []


def hold_line(clear: Callable[[], None] | None) -> None:
    """While a line is redrawn in place at the terminal, ``clear`` wipes it before a
    console log line is written, so the two never share a line (``None``: no line)."""
    _held_line[:] = [clear] if clear else []


class _ConsoleHandler(logging.StreamHandler):
    """Console log lines start on a line of their own (see :func:`hold_line`)."""

    def emit(self, record: logging.LogRecord) -> None:
        for clear in _held_line:
            clear()
        super().emit(record)


def get_logger(name: str = "orchestration") -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


def _route_celery_says() -> None:
    """Celery's worker writes a few lines straight to the terminal, past logging
    (``worker: Warm shutdown (MainProcess)``); in JSON mode they become log lines."""
    import celery.apps.worker as celery_worker

    def say(message: str, *_: Any) -> None:
        logging.getLogger("celery.apps.worker").warning(message.strip())

    celery_worker.safe_say = say
