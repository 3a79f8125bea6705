"""Column types that behave the same on PostgreSQL and SQLite.

- :class:`GUID`: native ``uuid`` on PostgreSQL, a 36-character string on SQLite.
- :class:`UTCDateTime`: timezone-aware UTC in Python on both (SQLite stores naive UTC).
- :data:`JSONType`: ``jsonb`` on PostgreSQL, JSON text on SQLite; Python ``None`` is
  SQL ``NULL`` (never the JSON ``null``), however the row is written.
Embeddings are little-endian float32 bytes in a ``LargeBinary`` column (see embeddings.py).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, String, TypeDecorator
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect


class GUID(TypeDecorator):
    """UUID primary/foreign keys, native where the database has them."""

    impl = String(36)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.UUID(as_uuid=True))
        return dialect.type_descriptor(String(36))

    def process_bind_param(self, value: Any, dialect: Dialect):
        if value is None:
            return None
        if not isinstance(value, uuid.UUID):
            value = uuid.UUID(str(value))
        return value if dialect.name == "postgresql" else str(value)

    def process_result_value(self, value: Any, dialect: Dialect):
        if value is None or isinstance(value, uuid.UUID):
            return value
        return uuid.UUID(value)


class UTCDateTime(TypeDecorator):
    """Timestamps that are always timezone-aware UTC in Python."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect):
        # PostgreSQL sessions run in UTC (store.db), so psycopg's values are UTC
        # already: a planning read has two timestamps per memory, and converting each
        # took 5% of a night's CPU.
        if value is None or value.tzinfo is UTC:
            return value
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)
