import time
import uuid
from datetime import timedelta

from kombu import Connection

from orchestration.celery_app import app, celery_config, consumer_timeout_warning, visibility_timeout
from orchestration.jobs import heartbeat
from orchestration.settings import load_settings


def test_json_is_the_only_serialization():
    conf = celery_config(load_settings({}))
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["accept_content"] == conf["result_accept_content"] == ["json"]
    assert app.conf.accept_content == ["json"]


def test_delivery_settings_make_redelivery_safe():
    settings = load_settings({})
    conf = celery_config(settings)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    vt = visibility_timeout(settings)
    assert vt > settings.job_hard_limit + settings.retry_backoff_max
    assert conf["broker_transport_options"]["visibility_timeout"] == vt
    assert conf["result_backend_transport_options"]["visibility_timeout"] == vt
    assert conf["result_expires"].total_seconds() > settings.run_deadline


def test_a_lost_worker_is_noticed_within_minutes():
    conf = celery_config(load_settings({}))
    reap = conf["beat_schedule"]["consolidation-reap-stale"]
    assert reap["task"] == "consolidation.reap_stale"
    # heartbeat stopped for LOST_AFTER, noticed at the next reaper tick, re-sent at once
    assert heartbeat.LOST_AFTER + reap["schedule"] <= timedelta(minutes=3)
    assert heartbeat.INTERVAL * 6 <= heartbeat.LOST_AFTER


def test_rabbitmq_consumers_outlast_the_longest_legitimate_hold():
    settings = load_settings({"ORCHESTRATION_JOB_TIME_LIMIT": "7200"})
    (queue,) = celery_config(settings)["task_queues"]
    assert queue.name == "celery" and queue.routing_key == "celery"
    assert queue.consumer_arguments == {"x-consumer-timeout": visibility_timeout(settings) * 1000}
    assert visibility_timeout(settings) * 1000 > (7200 + 60) * 1000


def test_old_rabbitmq_brokers_get_a_warning_with_the_value_to_set():
    settings = load_settings({})
    warning = consumer_timeout_warning("3.10.8", settings)
    assert warning and f"consumer_timeout = {visibility_timeout(settings) * 1000}" in warning
    assert consumer_timeout_warning("3.11.15", settings) is None
    assert consumer_timeout_warning("4.1.0", settings) is None
    assert consumer_timeout_warning("unknown", settings) is None


def test_visibility_timeout_grows_with_long_jobs():
    settings = load_settings({"ORCHESTRATION_JOB_TIME_LIMIT": "7200", "ORCHESTRATION_RETRY_BACKOFF_MAX": "3600"})
    assert visibility_timeout(settings) > 7200 + 60 + 3600


def test_beat_schedule_comes_from_the_settings():
    settings = load_settings({"ORCHESTRATION_SCHEDULE": "15 4 * * 1", "ORCHESTRATION_TIMEZONE": "Europe/Berlin"})
    conf = celery_config(settings)
    nightly = conf["beat_schedule"]["consolidation-nightly"]
    assert nightly["task"] == "consolidation.run_scheduled"
    assert nightly["schedule"].hour == {4} and nightly["schedule"].minute == {15}
    assert nightly["schedule"].day_of_week == {1}
    assert conf["timezone"] == "Europe/Berlin"
    tasks = {entry["task"] for entry in conf["beat_schedule"].values()}
    assert tasks == {"consolidation.run_scheduled", "consolidation.reap_stale", "consolidation.prune_audit"}


def test_task_names_are_registered():
    import orchestration.worker.tasks  # noqa: F401

    for name in (
        "consolidation.run_scheduled",
        "consolidation.run_project",
        "consolidation.finalize_run",
        "consolidation.reap_stale",
        "consolidation.prune_audit",
    ):
        assert name in app.tasks


def test_a_pickle_message_is_refused_by_a_real_worker(celery_worker, sqlite_database, tmp_path):
    """A pickled message whose payload would create a file must never be executed."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with Connection(app.conf.broker_url) as conn:
        producer = conn.Producer(serializer="pickle")
        producer.publish(
            [[Exploit()], {}, {}],
            exchange="",
            routing_key="celery",
            serializer="pickle",
            headers={
                "lang": "py",
                "task": "consolidation.run_project",
                "id": str(uuid.uuid4()),
                "argsrepr": "",
                "kwargsrepr": "",
            },
            declare=[app.amqp.queues["celery"]],
        )
    # A JSON task sent after it runs, proving the worker went past the pickle message.
    result = app.tasks["consolidation.prune_audit"].apply_async()
    assert result.get(timeout=20) == {"rows": 0}
    time.sleep(0.2)
    assert not marker.exists()


def test_run_project_limits_come_from_the_settings():
    import os
    import subprocess
    import sys

    env = {**os.environ, "ORCHESTRATION_PROJECT_RATE_LIMIT": "30/m", "ORCHESTRATION_JOB_TIME_LIMIT": "120"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import orchestration.worker.tasks as t; r = t.run_project; "
            "print(r.rate_limit, r.soft_time_limit, r.time_limit)",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["30/m", "120", "180"]


def test_a_bad_setting_stops_the_worker_with_one_line():
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "orchestration.celery_app", "worker"],
        env={**os.environ, "ORCHESTRATION_DATABASE_URL": "postgresql://orch:s3cret@db:notaport/x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "orchestration: ORCHESTRATION_DATABASE_URL='postgresql://orch:***@db:notaport/x': "
        "malformed URL (Port could not be cast to integer value as 'notaport')"
    )


def test_settings_are_read_when_the_app_is_configured_not_at_import():
    import os
    import subprocess
    import sys

    script = (
        "import orchestration.worker.tasks\n"  # registers the tasks: no settings read yet
        "print('imported', flush=True)\n"
        "from orchestration.celery_app import app\n"
        "app.conf.broker_url\n"  # the first use configures the app: the bad setting stops it here
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "ORCHESTRATION_TIMEZONE": "Nowhere/Special"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == "imported\n" and done.returncode == 1
    assert done.stderr.strip().startswith("orchestration: ORCHESTRATION_TIMEZONE='Nowhere/Special': unknown time zone")


def test_blas_threads_share_out_the_cpus():
    from orchestration.celery_app import blas_threads

    assert blas_threads(2, cpus=2) == 1 and blas_threads(3, cpus=2) == 1
    assert blas_threads(1, cpus=2) == 2 and blas_threads(2, cpus=8) == 4
    assert blas_threads(0, cpus=8) == 1  # concurrency not given: one process per CPU
