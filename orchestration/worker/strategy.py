"""How a worker turns a received message into a task request (Celery's "strategy")."""

from __future__ import annotations

from celery.worker.strategy import default as guarded

__all__ = ["guarded"]
