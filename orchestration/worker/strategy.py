"""How a worker turns a received message into a task request (Celery's "strategy").

:func:`guarded` wraps Celery's default strategy so that a message whose body does not
fit its task never stops the worker. Celery itself refuses what it cannot decode
(non-JSON, pickle); but well-formed JSON of the wrong shape (a dict body, a missing
``id`` header, args that are not a list) raises while Celery builds the request, and
Celery then ends the worker ("Unrecoverable error") with the message back in the
queue, for the next worker to die on. Here such a message is checked before the
request is built (:func:`check`: protocol 2 headers, ``[args, kwargs, embed]``, the
arguments bound to the task's signature), and whatever the request's construction
still raises is caught too: the message is logged once as ``task.rejected`` and
rejected without requeue (removed; dead-lettered on RabbitMQ if the queue has a DLX).
What fails once the request exists (handing it to the pool) is left to Celery.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import InvalidTaskError
from celery.worker.strategy import default
from kombu.exceptions import ContentDisallowed, DecodeError

from orchestration.logs import get_logger

__all__ = ["Malformed", "check", "guarded"]

log = get_logger(__name__)
# kombu's reject_log_error reports a failed reject through a stdlib logger.
_stdlib_log = logging.getLogger(__name__)
# Longest shown value (a body, an id) in a reason, and longest reason.
SHOWN, REASON = 80, 300
# What the consumer already turns into a logged reject (on_invalid_task, on_decode_error).
CELERY_HANDLES = (InvalidTaskError, ContentDisallowed, DecodeError)
# What follows the task, as the tracer reads it: signatures (JSON objects), or lists of them.
EMBEDDED = {"callbacks": list, "errbacks": list, "chain": list, "chord": dict}

Handler = Callable[..., Any]


class Malformed(Exception):
    """The message cannot become a request for its task (the reason, short)."""

    def __init__(self, reason: str) -> None:
        super().__init__(_clip(reason, REASON))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _shown(value: Any) -> str:
    return _clip(repr(value), SHOWN)


def check(task: Task, message: Any, body: Any = None) -> None:
    """Raise :class:`Malformed` unless ``message`` (with ``body``, the decoded payload
    of a protocol 1 message, else ``None``) is a request Celery can build for
    ``task``: the same reading of the message as Celery's default strategy."""
    payload = message.payload if body is None else body
    headers: Mapping[str, Any]
    if isinstance(payload, dict) and ("args" in payload or body is not None):
        # Protocol 1, or its hybrid with protocol 2 headers: everything in the body.
        headers = {**payload, **(message.headers or {})} if "args" in payload else payload
        args, kwargs, embed = payload.get("args", ()), payload.get("kwargs", {}), {}
    else:
        headers = message.headers or {}
        if not isinstance(payload, list | tuple) or len(payload) != 3:
            raise Malformed(f"body must be [args, kwargs, embed], got {_shown(payload)}")
        args, kwargs, embed = payload
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id:
        raise Malformed(f"message id must be a non-empty string, got {_shown(task_id)}")
    limits = headers.get("timelimit")
    if limits and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v >= 0) for v in limits)
    ):
        raise Malformed(f"timelimit must be [hard, soft] seconds, got {_shown(limits)}")
    if not isinstance(args, list | tuple):
        raise Malformed(f"args must be a list, got {_shown(args)}")
    if not isinstance(kwargs, dict):
        raise Malformed(f"kwargs must be an object, got {_shown(kwargs)}")
    if not isinstance(embed, dict):
        raise Malformed(f"embed must be an object, got {_shown(embed)}")
    for key, kind in EMBEDDED.items():
        value = embed.get(key)
        signatures = [value] if kind is dict else value
        if value is not None and not (isinstance(value, kind) and all(isinstance(v, dict) for v in signatures)):
            raise Malformed(
                f"embed {key} must be a {'signature' if kind is dict else 'list of signatures'}, got {_shown(value)}"
            )
    # A bound task's run is already bound: its signature has no ``self``.
    signature = inspect.signature(task.run)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        names = ", ".join(name for name in signature.parameters)
        raise Malformed(f"arguments do not fit {task.name}({names}): {_clip(str(exc), SHOWN)}") from None


def _message_id(message: Any, body: Any) -> str | None:
    headers = body if isinstance(body, dict) else (message.headers or {})
    value = headers.get("id")
    return value[:SHOWN] if isinstance(value, str) and value else None


# The message whose request the current thread is building, and whether it was built.
_building = threading.local()


def _built(request: Any = None, **_: Any) -> None:
    # Sent by the default strategy once the request exists, before it goes to the pool.
    if request is not None and getattr(request, "message", None) is getattr(_building, "message", None):
        _building.done = True


signals.task_received.connect(_built)


def guarded(task: Task, app: Celery, consumer: Any, **options: Any) -> Handler:
    """Celery's default strategy for ``task``, rejecting what does not fit it."""
    handle = default(task, app, consumer, **options)
    connection_errors = tuple(consumer.connection_errors or ())

    def on_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any) -> Any:
        _building.message, _building.done = message, False
        try:
            check(task, message, body)
            return handle(message, body, ack, reject, callbacks, **kwargs)
        except CELERY_HANDLES + connection_errors:
            raise
        except Exception as exc:
            if _building.done:
                raise  # the request exists: a failure to run it, not the message's
            reason = str(exc) if isinstance(exc, Malformed) else _clip(f"{type(exc).__name__}: {exc}", REASON)
            log.error("task.rejected", task=task.name, task_id=_message_id(message, body), reason=reason)
            reject(_stdlib_log, connection_errors, False)
            signals.task_rejected.send(sender=consumer, message=message, exc=exc)
            return None
        finally:
            _building.message = None

    return on_message
