"""Shared fixtures: migrated databases (SQLite always, PostgreSQL in the integration
suite), Redis database numbers of our own, and a real in-process Celery worker.

PostgreSQL and Redis come from ``ORCHESTRATION_TEST_DATABASE_URL`` and
``ORCHESTRATION_TEST_REDIS_URL`` (defaults: the standard local ports). When one is
unreachable its tests are skipped with a hint, unless ``CI=true`` or
``ORCHESTRATION_REQUIRE_SERVICES=1``, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from orchestration.settings import mask_url
from orchestration.store import db, migrate
from support import unavailable


def pytest_configure(config: pytest.Config) -> None:
    # In-process tests use the embedded transport. Settings are read when first used
    # (the Celery app's configuration included), never at import.
    os.environ["ORCHESTRATION_BROKER_URL"] = "memory://"
    os.environ["ORCHESTRATION_RESULT_BACKEND"] = "cache+memory://"
    os.environ.setdefault("ORCHESTRATION_LOG_LEVEL", "INFO")


# The slow scenarios (production defaults: outages of up to 10 minutes) get this long
# instead of the default per-test timeout in pyproject.toml.
SLOW_TIMEOUT_S = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


PG_ADMIN_URL = os.environ.get("ORCHESTRATION_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ORCHESTRATION_TEST_REDIS_URL", "redis://127.0.0.1:6379")
AMQP_URL = os.environ.get("ORCHESTRATION_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _admin_engine():
    return create_engine(db.normalize_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")


def pg_database_url(name: str) -> str:
    return make_url(db.normalize_url(PG_ADMIN_URL)).set(database=name).render_as_string(hide_password=False)


def create_pg_database(template: str | None = None) -> str:
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            suffix = f" TEMPLATE {template}" if template else ""
            conn.execute(text(f'CREATE DATABASE "{name}"{suffix}'))
    finally:
        engine.dispose()
    return name


def drop_pg_database(name: str) -> None:
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database that per-test databases are copied from."""
    try:
        name = create_pg_database()
    except Exception as exc:  # noqa: BLE001 - any connection failure means "unavailable"
        unavailable(f"PostgreSQL at {mask_url(PG_ADMIN_URL)}", exc)
    try:
        migrate.upgrade(pg_database_url(name))
        yield name
    finally:
        drop_pg_database(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def fresh_sqlite(template: Path, path: Path) -> str:
    shutil.copy(template, path)
    return f"sqlite:///{path}"


@contextmanager
def fresh_pg(template: str) -> Iterator[str]:
    """A migrated PostgreSQL database copied from the template, dropped afterwards."""
    name = create_pg_database(template=template)
    try:
        yield pg_database_url(name)
    finally:
        db.dispose()
        drop_pg_database(name)


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    return fresh_sqlite(sqlite_template, tmp_path / "orchestration.store.db")


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    with fresh_pg(pg_template) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request) -> str:
    """Each test using this runs on SQLite and on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@contextmanager
def _pointed_at(url: str) -> Iterator[str]:
    """The process (and the in-process worker) uses ``url`` for the block."""
    db.use_database(url)
    try:
        yield url
    finally:
        db.use_database(None)


@pytest.fixture
def database(database_url: str) -> Iterator[str]:
    """A fresh migrated database, SQLite and PostgreSQL in turn."""
    with _pointed_at(database_url) as url:
        yield url


@pytest.fixture
def sqlite_database(sqlite_url: str) -> Iterator[str]:
    with _pointed_at(sqlite_url) as url:
        yield url


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[str]:
    with _pointed_at(pg_url) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number that is empty when we take it; we flush only that one."""
    import redis

    base = REDIS_URL.rstrip("/")
    try:
        client = redis.Redis.from_url(base, socket_connect_timeout=2)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        unavailable(f"Redis at {base}", exc)
    for number in range(15, 1, -1):
        candidate = redis.Redis.from_url(f"{base}/{number}")
        if candidate.dbsize() == 0:
            candidate.set("orchestration-tests:claimed", "1", ex=3600)
            try:
                yield f"{base}/{number}"
            finally:
                candidate.flushdb()
            return
    pytest.fail("no empty Redis database number between 2 and 15 to use for tests")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A RabbitMQ virtual host of our own, deleted afterwards (made with ``rabbitmqctl``
    where the broker is local), or ``ORCHESTRATION_TEST_AMQP_URL`` as given."""
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001
        unavailable(f"RabbitMQ at {mask_url(AMQP_URL)}", exc)
    if "ORCHESTRATION_TEST_AMQP_URL" in os.environ or shutil.which("rabbitmqctl") is None:
        yield AMQP_URL
        return
    vhost = f"orch_test_{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        user = urlsplit(AMQP_URL).username or "guest"
        _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield AMQP_URL.rstrip("/") + "/" + vhost
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def celery_worker():
    """A real Celery worker (threads pool) in this process, on the in-memory transport."""
    from orchestration.celery_app import app
    from orchestration.demo.embedded import embedded_worker, use_embedded_transport

    use_embedded_transport(app)
    with embedded_worker(app):
        yield app


@pytest.fixture
def settings_env(monkeypatch):
    """Set ORCHESTRATION_* variables for one test; the cached settings follow."""
    from orchestration.settings import get_settings

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"ORCHESTRATION_{name.upper()}", value)
        get_settings.cache_clear()

    yield set_env
    get_settings.cache_clear()


@pytest.fixture
def another_database_url(request, database_url: str, sqlite_template: Path, tmp_path: Path) -> Iterator[str]:
    """A second fresh database of the same kind as ``database_url``."""
    if database_url.startswith("sqlite"):
        yield fresh_sqlite(sqlite_template, tmp_path / "other.db")
        return
    with fresh_pg(request.getfixturevalue("pg_template")) as url:
        yield url


@pytest.fixture
def second_pg_url(pg_template: str) -> Iterator[str]:
    """Another fresh migrated PostgreSQL database (for a clean reference run)."""
    with fresh_pg(pg_template) as url:
        yield url
