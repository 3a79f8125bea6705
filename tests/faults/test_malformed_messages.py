"""Malformed messages on the wire: well-formed JSON that does not fit its task (a dict
body, a list of the wrong length, args or kwargs or embed of the wrong type, arguments
that do not bind, no ``id`` header), for every ``consolidation.*`` task, sent to a
real ``celery -A orchestration.celery_app worker`` on Redis and on RabbitMQ.

Celery's default strategy ends the worker on the first one ("Unrecoverable error")
and the message goes back to the queue for the next worker to die on. Here each one
must be logged once as ``task.rejected`` and removed (on RabbitMQ: dead-lettered to
the queue's DLX), and the worker must go on to run the messages sent after them."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue
from worker.test_strategy import publish_bad_messages

from orchestration.demo.seed import seed
from orchestration.store import db
from orchestration.store.models import ConsolidationJob
from orchestration.store.statuses import JobStatus
from support import manual_job, wait_until

ROOT = Path(__file__).resolve().parents[2]
DEAD_LETTERS = "malformed-dead-letters"


# RabbitMQ's run (about 35 s) is in the slow suite, which CI runs too: make test stays short.
@pytest.fixture(params=["redis", pytest.param("rabbitmq", marks=pytest.mark.slow)])
def broker(request, redis_server) -> str:
    """The broker URL; the result backend is always the test's Redis."""
    return redis_server.url if request.param == "redis" else request.getfixturevalue("amqp_url")


def dead_letter_queue(amqp_url: str) -> Queue | None:
    """On a RabbitMQ virtual host of the test's own: a policy that dead-letters what the
    ``celery`` queue rejects into a queue the test reads, as an operator would set up."""
    vhost = urlsplit(amqp_url).path.lstrip("/")
    if not vhost.startswith("orch_test_"):
        return None  # a shared virtual host (ORCHESTRATION_TEST_AMQP_URL): left as it is
    definition = '{"dead-letter-exchange": "malformed-dlx"}'
    command = ["rabbitmqctl", "-q", "set_policy", "-p", vhost, "--apply-to", "queues", "dlx", "^celery$", definition]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    queue = Queue(DEAD_LETTERS, Exchange("malformed-dlx", type="fanout"))
    with Connection(amqp_url) as conn:
        queue(conn.default_channel).declare()
    return queue


def left_in_queue(broker_url: str) -> int:
    """Messages still in the ``celery`` queue, ready or unacknowledged (the worker stopped)."""
    if broker_url.startswith("redis"):
        client = redis.Redis.from_url(broker_url)
        lists = [key for key in client.scan_iter(b"celery*") if client.type(key) == b"list"]
        return sum(client.llen(key) for key in lists) + client.hlen("unacked")
    with Connection(broker_url) as conn:
        return conn.default_channel.queue_declare("celery", passive=True).message_count


def dead_lettered(amqp_url: str) -> int:
    with Connection(amqp_url) as conn:
        return conn.default_channel.queue_declare(DEAD_LETTERS, passive=True).message_count


def send(broker_url: str, name: str, *args: object) -> str:
    """Send a task as beat or ``run-now`` would; returns its id."""
    client = Celery("malformed-client", broker=broker_url, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"])
    try:
        return client.send_task(name, args=args, ignore_result=True).id
    finally:
        client.close()


def job_status(job_id: uuid.UUID) -> str:
    with db.session_scope() as session:
        return session.get_one(ConsolidationJob, job_id).status


def test_malformed_messages_never_stop_a_worker(broker, redis_server, pg_database, workers, tmp_path, report):
    with db.session_scope() as session:
        (project,) = seed(session, 1, 40, seed=21, dim=32)
    job_id = manual_job(uuid.UUID(project.id), JobStatus.PENDING)
    dead = dead_letter_queue(broker) if broker.startswith("amqp") else None
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATION_", "FAULT_"))}
    env = {
        **clean,
        "PYTHONPATH": str(ROOT),
        "ORCHESTRATION_DATABASE_URL": pg_database,
        "ORCHESTRATION_BROKER_URL": broker,
        "ORCHESTRATION_RESULT_BACKEND": redis_server.url,
        "ORCHESTRATION_LOG_FORMAT": "json",
    }
    worker = workers.start(env, app="orchestration.celery_app")  # the production app, no faults injected
    with Connection(broker) as conn:
        expected = publish_bad_messages(conn)
    # Sent after every bad message: a real job, and the reaper.
    good = [send(broker, "consolidation.run_project", str(job_id)), send(broker, "consolidation.reap_stale")]

    def succeeded() -> set[str]:
        return {i for i in good for e in workers.events() if i in e["event"] and "succeeded" in e["event"]}

    wait_until(lambda: worker.poll() is not None or len(succeeded()) == 2, 120, "the messages sent after them")
    assert worker.poll() is None, "the worker stopped"
    assert job_status(job_id) == JobStatus.COMPLETED
    rejected = [e for e in workers.events() if e["event"] == "task.rejected"]
    seen: dict[tuple[str, str | None], int] = {}
    for event in rejected:
        seen[event["task"], event["task_id"]] = seen.get((event["task"], event["task_id"]), 0) + 1
    assert seen == dict(expected)  # once each: none of them delivered again
    assert all(len(e["reason"]) <= 300 and e["level"] == "error" for e in rejected)
    log = worker.log.read_text()
    assert "Unrecoverable" not in log and len(max(log.splitlines(), key=len)) < 2000
    workers.stop_all()
    time.sleep(0.5)  # RabbitMQ returns what a closed channel held
    assert left_in_queue(broker) == 0  # nothing left to deliver again
    name = "redis" if broker.startswith("redis") else "rabbitmq"
    lettered = ""
    if dead is not None:
        assert dead_lettered(broker) == sum(expected.values())
        lettered = ", all dead-lettered to the queue's DLX"
    report(
        f"malformed-messages[{name}]: {sum(expected.values())} bad messages for {len({t for t, _ in expected})} "
        f"tasks rejected once each{lettered}; the worker lived and ran the job sent after them"
    )
