"""A message whose well-formed JSON body does not fit its task never stops a worker
(``orchestration.worker.strategy``): for every ``consolidation.*`` task, each wrong
shape is rejected with one ``task.rejected`` line and the worker goes on. Here the
check itself and the in-process worker; tests/faults/test_malformed_messages.py runs
the same messages through ``celery worker`` subprocesses on Redis and RabbitMQ."""

from __future__ import annotations

import inspect
import json
import uuid
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import InvalidTaskError
from kombu import Message
from kombu.exceptions import DecodeError

from orchestration.celery_app import app, task_queues
from orchestration.settings import load_settings
from orchestration.worker import strategy
from orchestration.worker.strategy import Malformed, check
from orchestration.worker.tasks import reap_stale

PLACEHOLDER = "6f1c1a52-0000-4000-8000-000000000000"  # a value for any argument
POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def consolidation_tasks() -> list[Any]:
    """Every task the app registers under ``consolidation.*``, so that one added later is covered."""
    app.loader.import_default_modules()
    return [app.tasks[name] for name in sorted(app.tasks) if name.startswith("consolidation.")]


def fitting_args(task: Any) -> list[str]:
    """Positional arguments that bind to the task's signature (one per required parameter)."""
    parameters = inspect.signature(task.run).parameters.values()
    return [PLACEHOLDER for p in parameters if p.kind in POSITIONAL and p.default is p.empty]


def bad_messages(task: Any) -> list[tuple[str, Any, dict[str, Any]]]:
    """``(case, body, header changes)``: well-formed JSON that does not fit ``task``
    (a header changed to ``None`` is left out of the message)."""
    args = fitting_args(task)
    signature = inspect.signature(task.run)
    positional = [p for p in signature.parameters.values() if p.kind in POSITIONAL]
    fits = [args, {}, {}]
    cases: list[tuple[str, Any, dict[str, Any]]] = [
        ("dict body", {"a": 1}, {}),
        ("huge dict body", {"a": "x" * 200_000}, {}),
        ("three-key dict body", {"a": 1, "b": 2, "c": 3}, {}),
        ("list of two", [args, {}], {}),
        ("list of four", [args, {}, {}, {}], {}),
        ("number body", 42, {}),
        ("null body", None, {}),
        ("string body", "args", {}),
        ("args a string", ["abc", {}, {}], {}),
        ("args an object", [{"job_id": PLACEHOLDER}, {}, {}], {}),
        ("args null", [None, {}, {}], {}),
        ("kwargs a list", [args, [], {}], {}),
        ("kwargs a string", [args, "x", {}], {}),
        ("embed a list", [args, {}, []], {}),
        ("embed a number", [args, {}, 7], {}),
        ("embed chain a number", [args, {}, {"chain": 5}], {}),
        ("embed callbacks not signatures", [args, {}, {"callbacks": [5]}], {}),
        ("embed chord a list", [args, {}, {"chord": []}], {}),
        ("hybrid body, args a string", {"args": "abc", "kwargs": {}}, {}),
        ("hybrid body, kwargs a list", {"args": [], "kwargs": []}, {}),
        ("no id header", fits, {"id": None}),
        ("id a number", fits, {"id": 5}),
        ("empty id", fits, {"id": ""}),
        ("timelimit of one", fits, {"timelimit": [1]}),
        ("timelimit a string", fits, {"timelimit": "soon"}),
    ]
    binding: list[tuple[str, list[Any]]] = [
        ("too many args", [[PLACEHOLDER] * (len(positional) + 1), {}, {}]),
        ("unknown kwarg", [args, {"no_such_argument": 1}, {}]),
        ("huge unknown kwarg", [args, {"y" * 100_000: 1}, {}]),
        ("missing args", [[], {}, {}]),
        ("an argument twice", [args, {p.name: PLACEHOLDER for p in positional[:1]}, {}]),
    ]
    for case, body in binding:
        try:
            signature.bind(*body[0], **body[1])
        except TypeError:
            cases.append((case, body, {}))  # the case applies to this signature
    return cases


def headers_for(task: Any, changes: dict[str, Any]) -> dict[str, Any]:
    headers = {"lang": "py", "task": task.name, "id": str(uuid.uuid4()), "argsrepr": "", "kwargsrepr": ""}
    headers.update(changes)
    return {k: v for k, v in headers.items() if v is not None}


def received(body: Any, headers: dict[str, Any]) -> Message:
    """The message as a consumer receives it (not yet decoded)."""
    return Message(
        body=json.dumps(body).encode(),
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        accept={"application/json"},
    )


def publish_bad_messages(connection: Any) -> Counter[tuple[str, str | None]]:
    """Every bad message of every task, to the ``celery`` queue; the rejections expected,
    as ``(task, message id)``."""
    queue = task_queues(load_settings({}))[0]
    expected: Counter[tuple[str, str | None]] = Counter()
    producer = connection.Producer()
    for task in consolidation_tasks():
        for _case, body, changes in bad_messages(task):
            headers = headers_for(task, changes)
            producer.publish(
                json.dumps(body).encode(),
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
                content_type="application/json",
                content_encoding="utf-8",
                headers=headers,
            )
            task_id = headers.get("id")
            expected[task.name, task_id if isinstance(task_id, str) and task_id else None] += 1
    return expected


def test_every_consolidation_task_is_guarded():
    names = {task.name for task in consolidation_tasks()}
    assert {f"consolidation.{n}" for n in ("run_scheduled", "run_project", "finalize_run", "fail_run")} <= names
    assert {"consolidation.reap_stale", "consolidation.prune_audit"} <= names
    assert all(task.Strategy == "orchestration.worker.strategy:guarded" for task in consolidation_tasks())


@pytest.mark.parametrize("task", consolidation_tasks(), ids=lambda t: t.name)
def test_every_wrong_shape_is_malformed_with_a_short_reason(task):
    for case, body, changes in bad_messages(task):
        with pytest.raises(Malformed) as raised:
            check(task, received(body, headers_for(task, changes)))
        assert 0 < len(str(raised.value)) <= 400, case


@pytest.mark.parametrize("task", consolidation_tasks(), ids=lambda t: t.name)
def test_messages_that_fit_pass(task):
    args = fitting_args(task)
    check(task, received([args, {}, {"callbacks": None, "chord": None}], headers_for(task, {})))
    signature = {"task": "consolidation.reap_stale", "args": [], "kwargs": {}, "options": {}}
    embed = {"callbacks": [signature], "errbacks": [], "chain": [signature], "chord": signature, "group": "g"}
    check(task, received([args, {}, embed], headers_for(task, {})))
    check(task, received([args, {}, {}], headers_for(task, {"timelimit": [None, None]})))
    check(task, received([args, {}, {}], headers_for(task, {"timelimit": [60, 30.5]})))
    # Protocol 1 and its hybrid with protocol 2 headers: what Celery converts.
    check(task, Message(body=b"", headers={}), {"id": "x", "task": task.name, "args": args, "kwargs": {}})
    check(task, received({"args": args, "kwargs": {}}, headers_for(task, {})))


def test_bound_tasks_are_checked_without_self():
    run_project = app.tasks["consolidation.run_project"]
    finalize_run = app.tasks["consolidation.finalize_run"]
    check(run_project, received([[PLACEHOLDER], {}, {}], headers_for(run_project, {})))
    check(run_project, received([[], {"job_id": PLACEHOLDER}, {}], headers_for(run_project, {})))
    check(finalize_run, received([[[], PLACEHOLDER], {"callback_error": "x"}, {}], headers_for(finalize_run, {})))
    too_many = [PLACEHOLDER] * (len(inspect.signature(run_project.run).parameters) + 1)
    with pytest.raises(Malformed, match=r"^arguments do not fit consolidation.run_project\(job_id"):
        check(run_project, received([too_many, {}, {}], headers_for(run_project, {})))


def test_the_in_process_worker_rejects_them_all_and_goes_on(celery_worker, sqlite_database, captured_logs):
    with app.connection_for_write() as connection:
        expected = publish_bad_messages(connection)
        # Sent after every bad message: the worker still consumes.
        assert reap_stale.apply_async().get(timeout=60) == {"lost": 0, "resent": 0, "runs": 0}
        assert connection.default_channel.queue_declare("celery", passive=True).message_count == 0
    rejected = [e for e in captured_logs() if e["event"] == "task.rejected"]
    assert Counter((e["task"], e["task_id"]) for e in rejected) == expected
    assert all(e["level"] == "error" and len(e["reason"]) <= strategy.REASON for e in rejected)
    assert {e["task"] for e in rejected} == {t.name for t in consolidation_tasks()}
    assert any("body must be [args, kwargs, embed], got {'a': 'xxxx" in e["reason"] for e in rejected)
    assert any(e["reason"].startswith("arguments do not fit consolidation.run_project(job_id") for e in rejected)
    assert not [e for e in captured_logs() if "Unrecoverable" in e["event"]]


def test_a_request_that_cannot_be_built_is_rejected_even_past_the_check(
    celery_worker, sqlite_database, captured_logs, monkeypatch
):
    # Without the check, what Celery raises while it builds the request is caught.
    monkeypatch.setattr(strategy, "check", lambda *args: None)
    task = app.tasks["consolidation.reap_stale"]
    with app.connection_for_write() as connection:
        producer = connection.Producer()
        for body, headers in (({"a": 1}, headers_for(task, {})), ([[], {}, {}], headers_for(task, {"id": None}))):
            producer.publish(body, routing_key="celery", serializer="json", headers=headers)
        assert reap_stale.apply_async().get(timeout=60) == {"lost": 0, "resent": 0, "runs": 0}
    reasons = [e["reason"] for e in captured_logs() if e["event"] == "task.rejected"]
    assert reasons == ["ValueError: not enough values to unpack (expected 3, got 1)", "KeyError: 'id'"]


class Consumer:
    connection_errors = (ConnectionError,)


class Handled:
    """A message and what the guarded strategy did with it, with Celery's default strategy
    replaced by one that fails, before or after the request exists."""

    def __init__(self, monkeypatch, fails: BaseException, after_the_request_exists: bool):
        def default(task: Any, app: Any, consumer: Any, **options: Any) -> Any:
            def handle(message: Any, *args: Any) -> None:
                if after_the_request_exists:
                    strategy.signals.task_received.send(sender=consumer, request=SimpleNamespace(message=message))
                raise fails

            return handle

        monkeypatch.setattr(strategy, "default", default)
        self.task = app.tasks["consolidation.reap_stale"]
        self.rejects: list[tuple[Any, ...]] = []
        handler = strategy.guarded(self.task, app, Consumer())
        self.call = lambda: handler(
            received([[], {}, {}], headers_for(self.task, {})), None, None, lambda *a: self.rejects.append(a), []
        )


def test_a_failure_once_the_request_exists_is_left_to_celery(monkeypatch):
    handled = Handled(monkeypatch, RuntimeError("the pool is closed"), after_the_request_exists=True)
    with pytest.raises(RuntimeError):
        handled.call()
    assert handled.rejects == []


@pytest.mark.parametrize("error", [InvalidTaskError("bad eta"), DecodeError("bad"), ConnectionError("broker gone")])
def test_what_celery_handles_itself_goes_to_celery(monkeypatch, error):
    handled = Handled(monkeypatch, error, after_the_request_exists=False)
    with pytest.raises(type(error)):
        handled.call()
    assert handled.rejects == []


def test_a_failure_building_the_request_rejects_without_requeue(monkeypatch, captured_logs):
    handled = Handled(monkeypatch, KeyError("id"), after_the_request_exists=False)
    assert handled.call() is None
    assert handled.rejects == [(strategy._stdlib_log, (ConnectionError,), False)]  # requeue=False
    (rejected,) = [e for e in captured_logs() if e["event"] == "task.rejected"]
    assert rejected["task"] == "consolidation.reap_stale" and rejected["reason"] == "KeyError: 'id'"
