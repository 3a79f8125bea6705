"""The Celery app, ``orchestration.celery_app:app``, configured from the settings.

``celery -A orchestration.celery_app worker`` and ``... beat`` use it as Celery
documents. JSON is the only accepted content type; acks are late and a task whose
worker dies is redelivered, so every task must be idempotent (they are).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import structlog
from celery import Celery, signals
from celery.apps.beat import Beat
from celery.apps.worker import Worker
from celery.schedules import crontab
from kombu import Exchange, Queue

from orchestration.logs import configure_logging, log_format
from orchestration.settings import Settings, SettingsError, get_settings
from orchestration.store import db

# Jobs whose worker died are found within heartbeat.LOST_AFTER plus this interval.
REAP_INTERVAL = timedelta(minutes=1)
# The chord callback and the reaper read and write a few rows: a database or broker
# that hangs must not hold a worker process with them for longer than this.
SHORT_TASK_LIMITS = {"soft_time_limit": 120, "time_limit": 180}
# A webhook attempt has one total deadline (orchestration.nightly.notify); this bounds
# all of its attempts together.
NOTIFY_LIMITS = {"soft_time_limit": 60, "time_limit": 90}
# RabbitMQ honours a consumer's own x-consumer-timeout from this version on; older
# brokers apply only their global consumer_timeout (30 minutes by default).
CONSUMER_TIMEOUT_SINCE = (3, 11, 15)


def visibility_timeout(settings: Settings) -> int:
    """Redis redelivers an unacked message after this many seconds.

    It must outlast the longest legitimate hold of a message: a job running to its
    hard limit, or a retry waiting out its longest backoff (Redis keeps ETA messages
    unacknowledged while the worker holds them). Otherwise a healthy job would be
    delivered twice.
    """
    longest_hold = settings.job_hard_limit + settings.retry_backoff_max
    return max(3600, longest_hold + 600)


def task_queues(settings: Settings) -> list[Queue]:
    """The default ``celery`` queue, whose consumers ask RabbitMQ not to cancel them
    while a delivery is legitimately unacknowledged (the same bound as Redis's
    visibility timeout). Other transports ignore consumer arguments."""
    return [
        Queue(
            "celery",
            Exchange("celery", type="direct"),
            routing_key="celery",
            consumer_arguments={"x-consumer-timeout": visibility_timeout(settings) * 1000},
        )
    ]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration derived from the settings (one place, testable)."""
    transport = {"visibility_timeout": visibility_timeout(settings)}
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "timezone": settings.timezone,
        "enable_utc": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_queues": task_queues(settings),
        "task_default_queue": "celery",
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "result_expires": timedelta(seconds=settings.run_deadline + 86_400),
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": True,
        "beat_schedule": beat_schedule(settings),
        "task_annotations": task_annotations(settings),
    }


def task_annotations(settings: Settings) -> dict[str, dict[str, Any]]:
    """Task attributes that come from the settings (Celery applies them when it binds
    the tasks to the app)."""
    return {
        "consolidation.run_project": {
            "soft_time_limit": settings.job_time_limit,
            "time_limit": settings.job_hard_limit,
            "rate_limit": settings.project_rate_limit,
        },
        "consolidation.finalize_run": {
            "retry_backoff_max": settings.retry_backoff_max,
            "max_retries": settings.max_retries,
            **SHORT_TASK_LIMITS,
        },
        "consolidation.reap_stale": SHORT_TASK_LIMITS,
        "consolidation.notify": NOTIFY_LIMITS,
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "consolidation-nightly": {
            "task": "consolidation.run_scheduled",
            "schedule": settings.crontab,
            # Beat's own schedule travels with the message: the slot is worked out with
            # it, and a worker configured otherwise says so instead of skipping nights.
            "kwargs": {"schedule": settings.schedule, "timezone": settings.timezone},
        },
        "consolidation-reap-stale": {
            "task": "consolidation.reap_stale",
            "schedule": REAP_INTERVAL,
        },
        "consolidation-prune-audit": {
            "task": "consolidation.prune_audit",
            "schedule": crontab(hour=3, minute=30),
        },
    }


def _json_logs() -> bool:
    return log_format(get_settings()) == "json"


class _Worker(Worker):
    """``celery worker`` without its banner when the logs are JSON."""

    def on_before_init(self, quiet: bool = False, **kwargs: Any) -> None:
        super().on_before_init(quiet=quiet or _json_logs(), **kwargs)


class _Beat(Beat):
    """``celery beat`` without its banner when the logs are JSON."""

    def __init__(self, *args: Any, quiet: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, quiet=quiet or _json_logs(), **kwargs)


class OrchestrationCelery(Celery):
    """Celery whose worker and beat programs print only log lines in JSON mode."""

    @cached_property
    def Worker(self) -> type:  # noqa: N802 - Celery's name
        return self.subclass_with_self(_Worker)

    @cached_property
    def Beat(self) -> type:  # noqa: N802 - Celery's name
        return self.subclass_with_self(_Beat)


def _configuration() -> dict[str, Any]:
    """The app's configuration, read from the settings the first time Celery needs it
    (not at import). Invalid settings end the process with one line, no traceback,
    for worker and beat alike."""
    try:
        settings = get_settings()
    except SettingsError as exc:
        if os.environ.get("ORCHESTRATION_LOG_FORMAT", "").strip().lower() == "json":
            sys.exit(
                json.dumps(
                    {
                        "event": "settings.invalid",
                        "level": "critical",
                        "error": str(exc),
                        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                    }
                )
            )
        sys.exit(f"orchestration: {exc}")
    return celery_config(settings)


def create_app(settings: Settings | None = None) -> Celery:
    """The app, configured from ``settings`` or, lazily, from the environment."""
    app = OrchestrationCelery("orchestration", include=["orchestration.worker.tasks"])
    app.add_defaults(_configuration if settings is None else celery_config(settings))
    return app


app = create_app()


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting this signal stops Celery from configuring the root logger itself.
    configure_logging(get_settings())


@signals.celeryd_init.connect
def _early_logging(options: dict[str, Any] | None = None, **_: Any) -> None:
    # The worker warns about its privileges before it sets up logging: render that too.
    configure_logging(get_settings())
    _pool["concurrency"] = int((options or {}).get("concurrency") or 0)


# The worker's pool size, known in its main process and inherited by its children.
_pool: dict[str, int] = {"concurrency": 0}


def blas_threads(concurrency: int, cpus: int | None = None) -> int:
    """BLAS threads for each of ``concurrency`` worker processes: the CPUs shared out, at
    least one. OpenBLAS would start one thread per CPU in every process, and the
    processes would then fight over the cores (measured: docs/benchmarks.md)."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // (concurrency or cpus))


@signals.task_postrun.connect
def _clear_task_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


@signals.worker_process_init.connect
def _fresh_engine_after_fork(**_: Any) -> None:
    # Connections inherited from the parent must not be shared by prefork children.
    db.dispose(close=False)


@signals.worker_process_init.connect
def _share_the_cpus(**_: Any) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=blas_threads(_pool["concurrency"]), user_api="blas")


def consumer_timeout_warning(broker_version: str, settings: Settings) -> str | None:
    """Why a RabbitMQ broker of this version may cut long jobs, or ``None``."""
    try:
        version = tuple(int(part) for part in broker_version.split(".")[:3])
    except ValueError:
        return None
    if version >= CONSUMER_TIMEOUT_SINCE:
        return None
    needed = visibility_timeout(settings) * 1000
    return (
        f"RabbitMQ {broker_version} ignores per-consumer timeouts: its global consumer_timeout must be at "
        f"least {needed} ms (job hard limit + longest retry backoff + 10 min), or it closes the channel of a "
        f"long job and redelivers it (the duplicate does nothing, but the worker reconnects). Set "
        f"consumer_timeout = {needed} in rabbitmq.conf (docs/reliability.md, 'RabbitMQ')"
    )


@signals.worker_ready.connect
def _check_broker(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    if not settings.broker_url.startswith(("amqp", "pyamqp")):
        return
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=3)
        version = connection.connection.server_properties.get("version", "")
    warn_consumer_timeout(version.decode() if isinstance(version, bytes) else str(version), settings)


def warn_consumer_timeout(broker_version: str, settings: Settings) -> None:
    warning = consumer_timeout_warning(broker_version, settings)
    if warning:
        structlog.get_logger("orchestration.celery_app").warning(
            "broker.consumer_timeout", broker_version=broker_version, warning=warning
        )
