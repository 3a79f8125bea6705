"""Helpers shared by the benchmarks: scratch PostgreSQL databases and Redis numbers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

ADMIN_URL = os.environ.get("ORCHESTRATION_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ORCHESTRATION_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def scratch_pg_database() -> tuple[str, Callable[[], None]]:
    """Create an empty database; returns its URL and a function that drops it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from orchestration.store.db import normalize_url

    name = f"orch_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalize_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(normalize_url(ADMIN_URL)).set(database=name).render_as_string(hide_password=False), drop


def scratch_redis_db():
    """An empty Redis database number: its URL and a client (flush it when done)."""
    import redis

    for number in range(15, 1, -1):
        client = redis.Redis.from_url(f"{REDIS_URL}/{number}")
        if client.dbsize() == 0:
            return f"{REDIS_URL}/{number}", client
    raise SystemExit("no empty Redis database number to benchmark in")
