"""Settings: every ``ORCHESTRATION_*`` environment variable, read and validated here only.

A bad value raises :class:`SettingsError` whose message is one line naming the
variable and the problem; entry points turn it into a clean exit. URLs are shown
only through :func:`mask_url` so passwords never reach a terminal or a log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import crontab

PREFIX = "ORCHESTRATION_"

DATABASE_SCHEMES = ("sqlite", "postgresql")
BROKER_SCHEMES = ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "memory")
BACKEND_SCHEMES = ("redis", "rediss", "sentinel", "cache+memory", "db+sqlite", "db+postgresql")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# auto: console when stderr is a terminal, JSON otherwise (containers, pipes, files).
LOG_FORMATS = ("auto", "json", "console")
_RATE_LIMIT = re.compile(r"^\d+(\.\d+)?(/[smh])?$")


class SettingsError(ValueError):
    """A setting has a bad value; the message is one line fit for an operator."""


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (even if the rest is malformed)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable url>"
    if password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///var/orchestration.db"
    broker_url: str = "redis://localhost:6379/0"
    result_backend: str = "redis://localhost:6379/1"
    schedule: str = "0 2 * * *"
    timezone: str = "UTC"
    default_threshold: int = 1000
    max_retries: int = 3
    retry_backoff_max: int = 600
    project_rate_limit: str | None = None
    job_time_limit: int = 1800
    run_deadline: int = 21600
    audit_retention_days: int = 90
    notify_url: str | None = None
    log_format: str = "auto"
    log_level: str = "INFO"

    @property
    def job_hard_limit(self) -> int:
        """Seconds after which a job is killed: the soft limit plus a grace minute."""
        return self.job_time_limit + 60

    @property
    def crontab(self) -> crontab:
        """The nightly schedule as a Celery crontab (validated at load)."""
        return parse_cron(self.schedule)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def parse_cron(expression: str) -> crontab:
    """Parse a five-field cron expression into a Celery crontab, or raise ValueError."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 cron fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


def _fail(name: str, shown: str, problem: str) -> SettingsError:
    return SettingsError(f"{PREFIX}{name}={shown!r}: {problem}")


def _url(env: Mapping[str, str], name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
    value = (env.get(PREFIX + name) or "").strip() or default
    if value is None:
        return None
    scheme = value.split("://", 1)[0] if "://" in value else ""
    # "postgresql+psycopg" is a postgresql URL, "db+sqlite" a Celery database backend.
    if not any(scheme == s or scheme.startswith(s + "+") for s in schemes):
        raise _fail(name, mask_url(value), f"URL scheme must be one of {', '.join(schemes)}")
    try:
        urlsplit(value).port  # noqa: B018 - property access validates the port
    except ValueError as exc:
        raise _fail(name, mask_url(value), f"malformed URL ({exc})") from None
    return value


def _required_url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = _url(env, name, default, schemes)
    return default if value is None else value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise _fail(name, raw, "must be a whole number") from None
    if value < minimum:
        raise _fail(name, raw, f"must be at least {minimum}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...], upper: bool = False) -> str:
    raw = env.get(PREFIX + name, default)
    value = raw.strip().upper() if upper else raw.strip().lower()
    if value not in choices:
        raise _fail(name, raw, f"must be one of {', '.join(choices)}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    schedule = env.get(PREFIX + "SCHEDULE", Settings.schedule).strip()
    try:
        parse_cron(schedule)
    except ValueError as exc:
        raise _fail("SCHEDULE", schedule, f"not a valid cron expression ({exc})") from None
    timezone = env.get(PREFIX + "TIMEZONE", Settings.timezone).strip()
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise _fail("TIMEZONE", timezone, "unknown time zone (use an IANA name such as UTC or Europe/Berlin)") from None
    rate_limit = env.get(PREFIX + "PROJECT_RATE_LIMIT", "").strip() or None
    if rate_limit is not None and not _RATE_LIMIT.match(rate_limit):
        raise _fail("PROJECT_RATE_LIMIT", rate_limit, "must look like 30/m, 2/s or 100/h")
    return Settings(
        database_url=_required_url(env, "DATABASE_URL", Settings.database_url, DATABASE_SCHEMES),
        broker_url=_required_url(env, "BROKER_URL", Settings.broker_url, BROKER_SCHEMES),
        result_backend=_required_url(env, "RESULT_BACKEND", Settings.result_backend, BACKEND_SCHEMES),
        schedule=schedule,
        timezone=timezone,
        default_threshold=_int(env, "DEFAULT_THRESHOLD", Settings.default_threshold),
        max_retries=_int(env, "MAX_RETRIES", Settings.max_retries),
        retry_backoff_max=_int(env, "RETRY_BACKOFF_MAX", Settings.retry_backoff_max, minimum=1),
        project_rate_limit=rate_limit,
        job_time_limit=_int(env, "JOB_TIME_LIMIT", Settings.job_time_limit, minimum=1),
        run_deadline=_int(env, "RUN_DEADLINE", Settings.run_deadline, minimum=1),
        audit_retention_days=_int(env, "AUDIT_RETENTION_DAYS", Settings.audit_retention_days, minimum=1),
        notify_url=_url(env, "NOTIFY_URL", None, ("http", "https")),
        log_format=_choice(env, "LOG_FORMAT", Settings.log_format, LOG_FORMATS),
        log_level=_choice(env, "LOG_LEVEL", Settings.log_level, LOG_LEVELS, upper=True),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once from the environment."""
    return load_settings()
