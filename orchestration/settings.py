"""Settings: every ``ORCHESTRATION_*`` environment variable, read and validated here only.

A bad value raises :class:`SettingsError` whose message is one line naming the
variable and the problem; entry points turn it into a clean exit. URLs are shown
only through :func:`mask_url` so passwords never reach a terminal or a log.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urlsplit
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


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PORT = re.compile(r"^\d*$")


# A query parameter whose name says it holds a secret (libpq's ``password`` and
# ``sslpassword``, a ``token`` or ``secret`` of a broker transport).
_SECRET_PARAMETER = re.compile(r"([?&][^=&#]*(?:pass|secret|token)[^=&#]*=)[^&#]*", re.I)


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, however malformed the URL,
    in its user info and in query parameters such as ``?password=``.

    Not :func:`urllib.parse.urlsplit`: a password with an unencoded ``/``, ``?``, ``#``
    or ``@`` makes it split in the wrong place. Everything between ``scheme://`` (or
    the start, without a scheme) and the *last* ``@`` is taken as user info, and
    whatever follows its first ``:`` is masked. Without an ``@``, a "port" that is not
    a number may be a password that lost its ``@``: it is masked with the rest of the
    URL. When in doubt this masks too much (an ``@`` in a query), never too little.
    """
    return _SECRET_PARAMETER.sub(r"\1***", _mask_userinfo(url))


def _mask_userinfo(url: str) -> str:
    scheme = _SCHEME.match(url)
    head, rest = (url[: scheme.end()], url[scheme.end() :]) if scheme else ("", url)
    userinfo, at, after = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        return f"{head}{user}:***@{after}" if colon else url
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if authority.startswith("[") and "]" in authority:  # [IPv6]:port
        host, _, port = authority.partition("]")
        host, port = host + "]", port.removeprefix(":")
    else:
        host, _, port = authority.partition(":")
    return url if _PORT.match(port) else f"{head}{host}:***"


def mask_endpoint(url: str) -> str:
    """``scheme://host[:port]/***``: a webhook URL as logs may show it. The path and
    query (a Slack-style URL's secret) and the user info are never shown; if an ``@``
    follows the host (a password with an unencoded ``/``, ``?`` or ``#`` was cut
    there, so "host" may be the user name and "port" half the password), neither is."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "?://***"
    scheme = parts.scheme or "?"
    if not host or ("@" in url and "@" not in parts.netloc):
        return f"{scheme}://***"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}{'' if port is None else f':{port}'}/***"


def literal_address(host: str) -> str | None:
    """The IP address ``host`` spells without DNS (``10.0.0.1``, ``[::1]``, also the
    legacy ``2852039166`` or ``0xa9fea9fe`` forms the resolver accepts), else None."""
    host = host.strip("[]")
    if not host:
        return None
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return str(infos[0][4][0]) if infos else None


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why a webhook may not be sent to IP ``address``, or None if it may.

    Link-local (169.254.0.0/16, the cloud metadata service, and fe80::/10) and
    multicast are refused always; loopback, private, unique-local, unspecified and
    other non-global addresses unless ``allow_private``. An IPv6 address embedding an
    IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4, IPv4-
    compatible ``::a.b.c.d``) is judged by both."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        packed = int(ip)
        embedded = [ip.ipv4_mapped, ip.sixtofour]
        if ip in _NAT64 or (packed >> 32 == 0 and packed > 1):
            embedded.append(ipaddress.IPv4Address(packed & 0xFFFFFFFF))
        candidates += [e for e in embedded if e is not None]
    for candidate in candidates:
        if candidate.is_link_local:
            return f"{ip} is a link-local address (never allowed)"
        if candidate.is_multicast:
            return f"{ip} is a multicast address (never allowed)"
    if allow_private:
        return None
    for candidate in candidates:
        if not candidate.is_global:
            return f"{ip} is a loopback or private address (allowed only with {PREFIX}NOTIFY_ALLOW_PRIVATE=true)"
    return None


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


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
    notify_allow_private: bool = False
    log_format: str = "auto"
    log_level: str = "INFO"
    # Never in a repr (settings may be logged or shown in a traceback).
    web_token: str | None = field(default=None, repr=False)

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


def _url(
    env: Mapping[str, str],
    name: str,
    default: str | None,
    schemes: tuple[str, ...],
    shown: Callable[[str], str] = mask_url,
    check_cut: bool = True,
) -> str | None:
    """The URL in ``name``, its scheme and port checked; errors show it through ``shown``.
    With ``check_cut``, an ``@`` after the host is refused (see :func:`_cut_userinfo`)."""
    value = (env.get(PREFIX + name) or "").strip() or default
    if value is None:
        return None
    scheme = value.split("://", 1)[0] if "://" in value else ""
    # "postgresql+psycopg" is a postgresql URL, "db+sqlite" a Celery database backend.
    if not any(scheme == s or scheme.startswith(s + "+") for s in schemes):
        raise _fail(name, shown(value), f"URL scheme must be one of {', '.join(schemes)}")
    try:
        urlsplit(value).port  # noqa: B018 - property access validates the port
    except ValueError as exc:
        # urlsplit's message quotes the bad "port", which may be half a password: see _url_problem.
        raise _fail(name, shown(value), f"malformed URL ({_url_problem(value, exc)})") from None
    if check_cut and _cut_userinfo(value):
        raise _fail(name, shown(value), f"malformed URL ({_PERCENT_ENCODE})")
    return value


_PERCENT_ENCODE = "an @ after the host: percent-encode any / ? # @ in the user name or password"
# URLs without a server (a file path may hold an "@").
_LOCAL_SCHEMES = ("sqlite", "db+sqlite", "memory", "cache+memory")


def _cut_userinfo(value: str) -> bool:
    """Whether an ``@`` follows where :func:`urlsplit` ends the host, as when a password
    with an unencoded ``/``, ``?`` or ``#`` is cut there: then "host" is the user name,
    "port" may be half the password, and the rest lands in the path (shown by clients)."""
    try:
        netloc = urlsplit(value).netloc
    except ValueError:
        return False
    head, sep, rest = value.partition("://")
    # Two "@" in the host part: an unencoded "@" in the password. urlsplit takes the last
    # as the end of the user info, SQLAlchemy and others the first, and would show the
    # password's tail as the host.
    cut = "@" in rest[len(netloc) :] or netloc.count("@") > 1
    return bool(sep) and cut and not head.lower().startswith(_LOCAL_SCHEMES)


def _url_problem(value: str, exc: ValueError) -> str:
    """What is wrong with ``value``. urlsplit's own words quote the "port", which is
    shown only after an intact ``user:password@``: without one, as in
    ``postgresql://user:pass``, the "port" may be the password."""
    text = str(exc)
    cut = _cut_userinfo(value)
    if text.startswith(("Port could not be cast", "Port out of range")) and not cut and "@" in urlsplit(value).netloc:
        return text
    problem = (
        "the port is not a number"
        if text.startswith("Port could not be cast")
        else "the port is out of range 0-65535"
        if text.startswith("Port out of range")
        else "invalid IPv6 address"
        if "IPv6" in text
        else "cannot be parsed"
    )
    return f"{problem}; {_PERCENT_ENCODE}" if cut else problem


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise _fail(name, raw, "must be true or false (or 1/0, yes/no)")


def _notify_url(env: Mapping[str, str], allow_private: bool) -> str | None:
    """The webhook URL: http(s), with a host; a literal IP host must be one
    :func:`address_problem` allows (host names are checked when sending)."""
    value = _url(env, "NOTIFY_URL", None, ("http", "https"), shown=mask_endpoint, check_cut=False)
    if value is None:
        return None
    host = urlsplit(value).hostname
    if not host:
        raise _fail("NOTIFY_URL", mask_endpoint(value), "URL has no host")
    address = literal_address(host)
    problem = address_problem(address, allow_private) if address is not None else None
    if problem is not None:
        raise _fail("NOTIFY_URL", mask_endpoint(value), f"webhook address refused: {problem}")
    return value


# A token shorter than this is guessable over a network.
MIN_WEB_TOKEN = 16


def _web_token(env: Mapping[str, str]) -> str | None:
    token = env.get(PREFIX + "WEB_TOKEN", "")
    if not token:
        return None
    if token != token.strip() or len(token) < MIN_WEB_TOKEN or not (token.isascii() and token.isprintable()):
        raise _fail(
            "WEB_TOKEN",
            "***",
            f"must be at least {MIN_WEB_TOKEN} printable ASCII characters with no surrounding spaces "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')",
        )
    return token


# The database drivers orchestration is installed with (SQLAlchemy's names).
DATABASE_DRIVERS = {"postgresql": ("psycopg",), "sqlite": ("pysqlite",)}


def _database_url(env: Mapping[str, str]) -> str:
    value = _required_url(env, "DATABASE_URL", Settings.database_url, DATABASE_SCHEMES)
    dialect, _, driver = value.split("://", 1)[0].partition("+")
    if driver and driver not in DATABASE_DRIVERS[dialect]:
        supported = " or ".join(f"{dialect}+{d}://" for d in DATABASE_DRIVERS[dialect])
        raise _fail(
            "DATABASE_URL", mask_url(value), f"driver {driver!r} is not supported: use {dialect}:// or {supported}"
        )
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
    notify_allow_private = _bool(env, "NOTIFY_ALLOW_PRIVATE", Settings.notify_allow_private)
    return Settings(
        database_url=_database_url(env),
        broker_url=_required_url(env, "BROKER_URL", Settings.broker_url, BROKER_SCHEMES),
        result_backend=_required_url(env, "RESULT_BACKEND", Settings.result_backend, BACKEND_SCHEMES),
        schedule=schedule,
        timezone=timezone,
        default_threshold=_int(env, "DEFAULT_THRESHOLD", Settings.default_threshold, minimum=1),
        max_retries=_int(env, "MAX_RETRIES", Settings.max_retries),
        retry_backoff_max=_int(env, "RETRY_BACKOFF_MAX", Settings.retry_backoff_max, minimum=1),
        project_rate_limit=rate_limit,
        job_time_limit=_int(env, "JOB_TIME_LIMIT", Settings.job_time_limit, minimum=1),
        run_deadline=_int(env, "RUN_DEADLINE", Settings.run_deadline, minimum=1),
        audit_retention_days=_int(env, "AUDIT_RETENTION_DAYS", Settings.audit_retention_days, minimum=1),
        notify_url=_notify_url(env, notify_allow_private),
        notify_allow_private=notify_allow_private,
        log_format=_choice(env, "LOG_FORMAT", Settings.log_format, LOG_FORMATS),
        log_level=_choice(env, "LOG_LEVEL", Settings.log_level, LOG_LEVELS, upper=True),
        web_token=_web_token(env),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once from the environment."""
    return load_settings()
