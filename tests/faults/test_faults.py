"""Reliability under faults: real worker, Redis and PostgreSQL processes, broken on
purpose. Each scenario compares the end state of the memories with a clean,
uninterrupted consolidation of identical seeded data. docs/reliability.md explains
the guarantees each scenario proves."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection
from sqlalchemy import func, select, update

from orchestration.consolidation.embeddings import to_bytes
from orchestration.consolidation.options import resolve_options
from orchestration.demo.seed import seed
from orchestration.jobs import heartbeat
from orchestration.nightly import reaper
from orchestration.nightly.runs import wait_for_finish
from orchestration.nightly.schedule import previous_slot
from orchestration.settings import load_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project, TaskMemory
from orchestration.store.types import utcnow
from support import consolidate, difference, fingerprint, wait_until

SEED, PROJECTS, MEMORIES = 21, 4, 200  # two eligible projects of ~7 duplicate groups each


def now_slot():
    settings = load_settings({})
    return previous_slot(settings.crontab, utcnow(), settings.tz)


def env_for(database_url: str, broker_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "ORCHESTRATION_DATABASE_URL": database_url,
        "ORCHESTRATION_BROKER_URL": broker_url,
        "ORCHESTRATION_RESULT_BACKEND": broker_url,
        "ORCHESTRATION_RETRY_BACKOFF_MAX": "1",
        "ORCHESTRATION_MAX_RETRIES": "3",
        "ORCHESTRATION_LOG_FORMAT": "json",
        "FAULT_VISIBILITY_TIMEOUT": "4",
        "FAULT_LOST_AFTER": "3",
        "FAULT_MARKER": str(tmp_path / "fault-marker"),
        **extra,
    }


def send(broker_url: str, name: str, *args: object, **kwargs: object) -> None:
    """Send a task through the test's Redis, as beat or ``run-now`` would. Outcomes are
    read from the database and the worker's log, not from a result backend."""
    app = Celery("faults-client", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    try:
        app.send_task(name, args=args, kwargs=kwargs, ignore_result=True)
    finally:
        app.close()


def start_run(broker_url: str, slot, backfill: bool = False) -> None:
    send(broker_url, "consolidation.run_scheduled", slot=slot.isoformat(), backfill=backfill)


def finished_run(slot, timeout: float = 120.0) -> ConsolidationRun:
    run = wait_for_finish(
        lambda s: s.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == slot)), timeout, 0.2
    )
    assert run is not None, f"the run for {slot} did not finish within {timeout}s"
    return run


def plant(**kw):
    with db.session_scope() as session:
        return seed(session, kw.pop("projects", PROJECTS), kw.pop("memories", MEMORIES), seed=SEED, dim=32, **kw)


def clean_reference(url: str, skip: tuple[str, ...] = ()) -> list[tuple]:
    """The end state of one uninterrupted consolidation of the same seeded data (the
    projects in ``skip`` left as they are, as a failing job leaves them)."""
    previous = db.current_url()
    db.use_database(url)
    try:
        manifests = plant()
        for manifest in (m for m in manifests if m.kind == "eligible" and m.id not in skip):
            consolidate(uuid.UUID(manifest.id), resolve_options(None))
        return fingerprint()
    finally:
        db.use_database(previous)


def jobs_of(run_id) -> Sequence[ConsolidationJob]:
    with db.session_scope() as session:
        return session.scalars(select(ConsolidationJob).where(ConsolidationJob.run_id == run_id)).all()


def jobs_running(slot) -> int:
    with db.session_scope() as session:
        return session.execute(
            select(func.count())
            .select_from(ConsolidationJob)
            .join(ConsolidationRun, ConsolidationRun.id == ConsolidationJob.run_id)
            .where(ConsolidationRun.scheduled_for == slot, ConsolidationJob.status == "running")
        ).scalar_one()


def wait_dead(process: subprocess.Popen, timeout: float = 60.0) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("the injected kill did not happen") from None


@pytest.mark.parametrize("kill_point", ["before_first_commit", "between_batches", "before_complete"])
def test_kill_whole_worker_mid_job(kill_point, pg_database, second_pg_url, redis_server, workers, tmp_path, report):
    expected = clean_reference(second_pg_url)
    plant()
    env = env_for(pg_database, redis_server.url, tmp_path, FAULT_KILL_AT=kill_point, FAULT_MERGE_BATCH="2")
    slot = now_slot()
    first = workers.start(env)
    start_run(redis_server.url, slot)
    wait_dead(first)  # SIGKILLed, with its children, at the kill point
    assert (tmp_path / "fault-marker").read_text() == kill_point
    workers.start(env)  # the message is redelivered to the restarted worker
    run = finished_run(slot)
    lost, doubled = difference(expected, fingerprint())
    jobs = jobs_of(run.id)
    assert run.status == "completed" and all(j.status == "completed" for j in jobs)
    assert max(j.attempts for j in jobs) >= 2
    assert (lost, doubled) == (0, 0)
    report(f"kill-worker-mid-job[{kill_point}]: redelivered, run {run.status}, {lost} lost, {doubled} doubled")


def test_kill_one_prefork_child(pg_database, second_pg_url, redis_server, workers, tmp_path, report):
    expected = clean_reference(second_pg_url)
    plant()
    env = env_for(
        pg_database,
        redis_server.url,
        tmp_path,
        FAULT_KILL_AT="between_batches",
        FAULT_KILL_SCOPE="child",
        FAULT_MERGE_BATCH="2",
    )
    slot = now_slot()
    workers.start(env)
    start_run(redis_server.url, slot)
    run = finished_run(slot)
    assert (tmp_path / "fault-marker").exists()
    jobs = jobs_of(run.id)
    lost, doubled = difference(expected, fingerprint())
    assert run.status == "completed" and all(j.status == "completed" for j in jobs)
    assert max(j.attempts for j in jobs) == 2  # requeued, not failed
    assert (lost, doubled) == (0, 0)
    report(f"kill-prefork-child: requeued, run {run.status}, {lost} lost, {doubled} doubled")


def test_a_slow_job_is_never_started_twice(pg_database, second_pg_url, redis_server, workers, tmp_path, report):
    expected = clean_reference(second_pg_url)
    plant()
    # Every batch takes 1.5 s, each job several times the (shortened) 3 s heartbeat timeout.
    env = env_for(pg_database, redis_server.url, tmp_path, FAULT_MERGE_BATCH="2", FAULT_BATCH_SLEEP_S="1.5")
    workers.start(env)
    workers.start(env)  # free processes for the reaper and the duplicates while the jobs run
    slot = now_slot()
    start_run(redis_server.url, slot)
    deadline = time.monotonic() + 120
    run = None
    while run is None or run.status == "running":
        assert time.monotonic() < deadline, "the run did not finish"
        with db.session_scope() as session:
            run = session.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == slot))
        if run is not None and run.status == "running":
            send(redis_server.url, "consolidation.reap_stale")
            for job in jobs_of(run.id):  # every job's message delivered again, as a broker may
                send(redis_server.url, "consolidation.run_project", str(job.id))
        time.sleep(0.5)
    events = workers.events()
    duplicates = sum(e["event"] == "job.already_running" for e in events)
    # A message sent here may start a job before its chord's own delivery arrives: that
    # one then looks again every RECHECK_S (production value) until it can report.
    rechecks = sum(e["event"] == "job.already_running" and e["recheck_in_s"] is not None for e in events)
    jobs = jobs_of(run.id)
    assert run.status == "completed" and all(j.status == "completed" and j.attempts == 1 for j in jobs)
    assert not [e for e in events if e["event"] in ("job.worker_lost", "job.superseded")]
    assert duplicates > 0 and difference(expected, fingerprint()) == (0, 0)
    report(
        f"slow-job: {duplicates} duplicate deliveries ({rechecks} of the chord's own, which looked again) and the "
        "reaper every 0.5 s while it ran: never started twice, 0 lost, 0 doubled"
    )


def test_redis_restarted_mid_run(pg_database, second_pg_url, redis_server, workers, tmp_path, report):
    expected = clean_reference(second_pg_url)
    plant()
    env = env_for(pg_database, redis_server.url, tmp_path, FAULT_SLEEP_S="3")
    slot = now_slot()
    workers.start(env)
    start_run(redis_server.url, slot)
    wait_until(lambda: jobs_running(slot) == 2, 60, "both jobs running")  # each sleeps 3 s inside its task
    redis_server.restart(down_for=2)
    run = finished_run(slot, timeout=180)
    lost, doubled = difference(expected, fingerprint())
    assert run.status == "completed" and (lost, doubled) == (0, 0)
    report(f"redis-restart-mid-run: worker reconnected, run {run.status}, {lost} lost, {doubled} doubled")


def test_postgres_unreachable_longer_than_a_retry(
    pg_proxy, pg_database, second_pg_url, redis_server, workers, tmp_path, report
):
    proxy, proxied_url = pg_proxy
    expected = clean_reference(second_pg_url)
    plant()
    # The production retry limit (ORCHESTRATION_MAX_RETRIES=3): an unreachable database
    # is waited out (backoff from 5 s), it uses up none of a job's attempts.
    env = env_for(proxied_url, redis_server.url, tmp_path, FAULT_SLEEP_S="2")
    slot = now_slot()
    workers.start(env)
    start_run(redis_server.url, slot)
    wait_until(lambda: jobs_running(slot) == 2, 60, "both jobs running")  # each sleeps 2 s inside its task
    with db.session_scope() as session:  # this process reaches PostgreSQL directly, not through the proxy
        cut_short = {
            str(j.id) for j in session.scalars(select(ConsolidationJob).where(ConsolidationJob.status == "running"))
        }
    proxy.cut()
    time.sleep(5)  # longer than the first outage backoff (up to 5 s)
    proxy.restore()
    run = finished_run(slot, timeout=180)
    lost, doubled = difference(expected, fingerprint())
    jobs = jobs_of(run.id)
    events = workers.events()
    unreachable = [e for e in events if e["event"] == "database.unreachable"]
    spared = {e["job_id"] for e in events if e["event"] == "job.attempt_spared"}
    assert run.status == "completed" and all(j.status == "completed" for j in jobs)
    assert unreachable and not [e for e in events if e["event"] in ("job.retrying", "job.failed")]
    # Both attempts were cut short mid-way: each was given back by its retry.
    assert [j.attempts for j in jobs] == [1, 1] and spared == cut_short
    assert (lost, doubled) == (0, 0)
    report(
        f"postgres-unreachable-5s: waited out ({len(unreachable)} database.unreachable), {len(spared)} attempts "
        f"spared, attempts {max(j.attempts for j in jobs)}, run {run.status}, {lost} lost, {doubled} doubled"
    )


def test_concurrent_claims_and_two_beats_make_one_run(
    pg_database, second_pg_url, redis_server, workers, beats, tmp_path, report
):
    expected = clean_reference(second_pg_url)
    plant()
    env = env_for(pg_database, redis_server.url, tmp_path, ORCHESTRATION_SCHEDULE="* * * * *")
    workers.start(env)
    workers.start(env)
    slot = now_slot()
    # Four run_scheduled for one slot at the same moment, on two workers.
    for _ in range(4):
        start_run(redis_server.url, slot)
    finished_run(slot)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(e["event"] == "run.duplicate_skipped" for e in workers.events()) < 3:
        time.sleep(0.2)
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(ConsolidationRun)) == 1
    assert sum(e["event"] == "run.duplicate_skipped" for e in workers.events()) == 3
    assert difference(expected, fingerprint()) == (0, 0)
    # Two beat processes, every minute: each fires, one run per slot.
    logs = [beats.start({**os.environ, **env}, f"beat-{i}") for i in range(2)]
    try:
        beat_slot = previous_slot(load_settings(env).crontab, utcnow() + timedelta(minutes=1), load_settings(env).tz)
        run = finished_run(beat_slot, timeout=100)
        wait_until(lambda: sum(log.read_text().count("consolidation-nightly") for log in logs) >= 2, 30, "both ticks")
    finally:
        beats.stop_all()
    sent = sum(log.read_text().count("consolidation-nightly") for log in logs)
    with db.session_scope() as session:
        runs_for_slot = session.scalar(
            select(func.count()).select_from(ConsolidationRun).where(ConsolidationRun.scheduled_for == beat_slot)
        )
    skipped = [e for e in workers.events() if e["event"] == "run.duplicate_skipped"]
    assert runs_for_slot == 1 and run.status == "completed"
    assert sent >= 2 and len(skipped) >= 4
    report(f"two-claims-and-two-beats: 4 claims + {sent} beat ticks -> 1 run per slot, end state as a clean run")


def test_agents_write_while_the_job_runs(pg_database, redis_server, workers, tmp_path, report):
    manifests = plant(memories=400)
    eligible = [uuid.UUID(m.id) for m in manifests if m.kind == "eligible"]
    env = env_for(pg_database, redis_server.url, tmp_path, FAULT_MERGE_BATCH="1", FAULT_BATCH_SLEEP_S="0.15")
    bumps: dict[uuid.UUID, int] = {}
    inserted: list[uuid.UUID] = []
    stop = threading.Event()

    def agent() -> None:
        from sqlalchemy.orm.exc import StaleDataError

        while not stop.is_set():
            try:
                with db.session_scope() as session:
                    memory = session.scalar(
                        select(TaskMemory)
                        .where(
                            TaskMemory.project_id.in_(eligible),
                            ~TaskMemory.is_duplicate,
                            ~TaskMemory.is_archived,
                            TaskMemory.memory_type != "consolidated",
                        )
                        .order_by(func.random())
                        .limit(1)
                    )
                    assert memory is not None
                    memory.reused_count += 1
                    memory.last_reused_at = utcnow()
                    copy = TaskMemory(
                        project_id=memory.project_id,
                        memory_type=memory.memory_type,
                        content=memory.content + " Seen again.",
                        embedding=memory.embedding,
                        tags=[],
                        file_links=[],
                    )
                    session.add(copy)
                    session.flush()
                    target, new_id = memory.id, copy.id
                bumps[target] = bumps.get(target, 0) + 1
                inserted.append(new_id)
            except StaleDataError:
                continue  # the job changed it first; an agent would re-read

    with db.session_scope() as session:
        before = {m.id: m.reused_count for m in session.scalars(select(TaskMemory))}
    slot = now_slot()
    workers.start(env)
    writer = threading.Thread(target=agent)
    writer.start()
    start_run(redis_server.url, slot)
    run = finished_run(slot)
    stop.set()
    writer.join()
    with db.session_scope() as session:
        memories = {m.id: m for m in session.scalars(select(TaskMemory))}
    lost_updates = sum(memories[m].reused_count != before.get(m, 0) + n for m, n in bumps.items())
    stale_merges = [
        m
        for m in memories.values()
        if m.consolidated_from
        and m.reused_count != sum(memories[uuid.UUID(s)].reused_count for s in m.consolidated_from)
    ]
    assert run.status == "completed" and bumps and inserted
    assert lost_updates == 0 and stale_merges == []
    conflicts = sum(e.get("conflicts", 0) for e in workers.events() if e["event"] == "job.completed")
    report(
        f"agents-write-during-run: {sum(bumps.values())} bumps, {len(inserted)} inserts, "
        f"{lost_updates} lost, {len(stale_merges)} merged from a stale read, {conflicts} clusters deferred"
    )


def test_a_job_that_always_raises(pg_database, second_pg_url, redis_server, workers, tmp_path, report):
    manifests = plant()
    broken = next(m.id for m in manifests if m.kind == "eligible")
    expected = clean_reference(second_pg_url, skip=(broken,))
    env = env_for(pg_database, redis_server.url, tmp_path, FAULT_RAISE_PROJECT=broken, ORCHESTRATION_MAX_RETRIES="2")
    slot = now_slot()
    workers.start(env)
    start_run(redis_server.url, slot)
    run = finished_run(slot)
    jobs = {str(j.project_id): j for j in jobs_of(run.id)}
    health = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "health"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.status == "partial" and jobs[broken].status == "failed" and jobs[broken].attempts == 3
    assert "injected fault" in jobs[broken].error_message
    assert all(j.status == "completed" for p, j in jobs.items() if p != broken)
    assert health.returncode == 1 and health.stdout.startswith("DEGRADED")
    lost, doubled = difference(expected, fingerprint())
    assert (lost, doubled) == (0, 0)  # the failing project untouched, the others as in a clean run
    report(
        f"always-failing-job: {jobs[broken].attempts} attempts, job failed, run {run.status}, "
        f"health exit {health.returncode}, {lost} lost, {doubled} doubled"
    )


def test_soft_time_limit_and_a_worker_that_vanished(pg_database, redis_server, workers, tmp_path, report):
    plant()
    seeded = fingerprint()
    env = env_for(pg_database, redis_server.url, tmp_path, ORCHESTRATION_JOB_TIME_LIMIT="2", FAULT_SLEEP_S="20")
    slot = now_slot()
    workers.start(env)
    start_run(redis_server.url, slot)
    run = finished_run(slot, timeout=60)
    assert run.status == "failed"
    assert all("soft time limit of 2s" in j.error_message for j in jobs_of(run.id))
    assert fingerprint() == seeded  # stopped before its first batch: nothing half-applied
    workers.stop_all()

    # A worker killed for good, never restarted: the reaper finds the jobs lost and
    # re-sends them; with no worker left, the run is finalized at its deadline.
    later = slot + timedelta(minutes=1)
    with db.session_scope() as session:
        session.execute(update(ConsolidationRun).values(scheduled_for=slot - timedelta(days=1)))
    env = env_for(
        pg_database,
        redis_server.url,
        tmp_path,
        FAULT_KILL_AT="between_batches",
        FAULT_MERGE_BATCH="2",
        ORCHESTRATION_RUN_DEADLINE="120",
    )
    victim = workers.start(env)
    start_run(redis_server.url, later, backfill=True)  # a minute off the schedule
    wait_dead(victim)
    settings = load_settings({k: v for k, v in env.items() if k.startswith("ORCHESTRATION_")})
    with db.session_scope() as session:
        lost = reaper.reap(session, settings, utcnow() + heartbeat.LOST_AFTER + timedelta(seconds=1)).lost
    assert lost and all(j.status == "retrying" and j.group_index is not None for j in lost)
    with db.session_scope() as session:
        reaped_runs = [
            (r.status, reason) for r, reason in reaper.reap(session, settings, utcnow() + timedelta(seconds=121)).runs
        ]
    vanished = finished_run(later, timeout=5)
    assert reaped_runs == [(vanished.status, "deadline")] and vanished.status == "failed"
    assert all("run deadline of 120s passed" in j.error_message for j in jobs_of(vanished.id))
    report(
        f"soft-time-limit: job failed with a clear message; worker-vanished: reaper found {len(lost)} "
        f"job(s) lost (to re-send), run {vanished.status} at the deadline with no worker left"
    )


def test_bad_input_on_the_wire(pg_database, redis_server, workers, tmp_path, report):
    manifests = plant()
    marker = tmp_path / "pickle-executed"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with db.session_scope() as session:
        deleted_job = ConsolidationJob(
            project_id=uuid.UUID(manifests[0].id), trigger_type="manual", triggered_by="test", status="pending"
        )
        session.add(deleted_job)
    with db.session_scope() as session:
        session.delete(session.get(Project, uuid.UUID(manifests[0].id)))
    env = env_for(pg_database, redis_server.url, tmp_path)
    workers.start(env)
    headers = {"lang": "py", "task": "consolidation.run_project", "argsrepr": "", "kwargsrepr": ""}
    with Connection(redis_server.url) as conn:
        producer = conn.Producer()
        producer.publish(
            b"{not json",
            routing_key="celery",
            content_type="application/json",
            content_encoding="utf-8",
            headers={**headers, "id": str(uuid.uuid4())},
        )
        producer.publish(
            [[Exploit()], {}, {}],
            routing_key="celery",
            serializer="pickle",
            headers={**headers, "id": str(uuid.uuid4())},
        )
    for job_id in (str(uuid.uuid4()), "'; DROP TABLE projects; --", str(deleted_job.id)):
        send(redis_server.url, "consolidation.run_project", job_id)
    slot = now_slot()
    start_run(redis_server.url, slot)
    run = finished_run(slot)
    log = "\n".join(p.log.read_text() for p in workers.processes)
    assert not marker.exists()
    assert "Refusing to deserialize untrusted content of type pickle" in log
    assert "Can't decode message body" in log
    events = workers.events()
    rejected = [e["reason"] for e in events if e["event"] == "task.rejected"]
    assert any("does not exist" in r for r in rejected) and any("is not a UUID" in r for r in rejected)
    with db.session_scope() as session:
        assert session.get(ConsolidationJob, deleted_job.id).status == "skipped"
    assert run.status == "completed"
    report(
        "bad-input-on-the-wire: non-JSON and pickle refused, unknown/garbage ids rejected, "
        f"deleted project skipped, next run {run.status}"
    )


def test_bad_data(pg_database, redis_server, workers, tmp_path, report):
    manifests = plant(projects=5, failing=True)
    eligible = [m for m in manifests if m.kind == "eligible"]
    nasty_name = "Robert'); DROP TABLE projects; -- ☃"
    huge = ("Ünïcödé 日本語 " * 80_000)[:1_000_000] + "."
    with db.session_scope() as session:
        session.execute(update(Project).where(Project.id == uuid.UUID(eligible[0].id)).values(name=nasty_name))
        session.execute(
            update(TaskMemory)
            .where(TaskMemory.id == uuid.UUID(eligible[0].groups[0][0]))
            .values(embedding=to_bytes([float("nan")] * 32))
        )
        session.execute(
            update(TaskMemory)
            .where(TaskMemory.id == uuid.UUID(eligible[1].groups[0][0]))
            .values(embedding=to_bytes([0.5] * 31))
        )
        session.execute(update(TaskMemory).where(TaskMemory.id == uuid.UUID(eligible[1].stale[0])).values(content=huge))
    env = env_for(pg_database, redis_server.url, tmp_path)
    workers.start(env)
    slot = now_slot()
    start_run(redis_server.url, slot)
    run = finished_run(slot)
    jobs = {str(j.project_id): j for j in jobs_of(run.id)}
    failing = next(m.id for m in manifests if m.kind == "failing")
    completed = [e for e in workers.events() if e["event"] == "job.completed"]
    with db.session_scope() as session:
        assert session.scalar(select(Project.name).where(Project.id == uuid.UUID(eligible[0].id))) == nasty_name
        assert session.scalar(select(func.count()).select_from(Project)) == len(manifests)
        archived_huge = session.get(TaskMemory, uuid.UUID(eligible[1].stale[0]))
        assert archived_huge.is_archived and archived_huge.content == huge
    assert run.status == "partial" and jobs[failing].status == "failed"
    assert "consolidation_options.similarity_threshold" in jobs[failing].error_message
    assert all(jobs[m.id].status == "completed" for m in eligible)
    assert sum(e["skipped_invalid"] for e in completed) == 2
    report(
        "bad-data: malformed options failed naming the field, 2 bad embeddings skipped, "
        "1 MB non-ASCII content and a hostile project name handled, others completed"
    )
