"""What operators see: the worker and beat started exactly as compose.yaml starts them
print nothing but JSON lines (also when a pool process dies), and every jq recipe in
docs/events.md finds in that output what it promises."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from celery import Celery
from sqlalchemy import select

from orchestration.demo.seed import seed
from orchestration.nightly.schedule import parse_slot
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun
from support import services_required, wait_for_run

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SLOT = "2026-11-27T02:00:00+00:00"
_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def compose_service(name: str) -> tuple[list[str], dict[str, str]]:
    """The service's command and environment from compose.yaml, defaults resolved."""
    service = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"][name]
    env = {k: _DEFAULT.sub(lambda m: m[2], str(v)) for k, v in service["environment"].items()}
    return service["command"], env


def start(name: str, addresses: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    command, env = compose_service(name)
    command = [sys.executable, "-m", *command]  # `celery ...` from this environment
    if "--schedule" in command:
        command[command.index("--schedule") + 1] = str(tmp_path / "celerybeat-schedule")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATION_")}
    log = tmp_path / f"{name}.log"
    with log.open("w") as out:  # the process writes to its own copy of the file
        process = subprocess.Popen(
            command,
            env={**clean, **env, **addresses},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, log


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)  # as `docker compose stop` does
    process.wait(timeout=30)


def pool_processes(pid: int) -> list[int]:
    """The prefork pool's processes: the worker's children (Linux)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def kill_a_pool_process(worker: subprocess.Popen, log: Path) -> int:
    """SIGKILL one pool process (as the OOM killer does) and wait until the worker has
    noticed; its pid."""
    victim = pool_processes(worker.pid)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while f"pid:{victim} exited" not in log.read_text():
        assert time.monotonic() < deadline and worker.poll() is None, log.read_text()[-2000:]
        time.sleep(0.2)
    return victim


def recipes() -> list[str]:
    text = (ROOT / "docs" / "events.md").read_text()
    return [
        line
        for block in re.findall(r"```sh\n(.*?)```", text, re.S)
        for line in block.splitlines()
        if line.startswith("jq ")
    ]


def test_worker_and_beat_print_only_json_that_the_recipes_read(pg_database, redis_url, tmp_path):
    with db.session_scope() as session:
        manifests = seed(session, 5, 60, seed=9, dim=32, failing=True)
    addresses = {
        "ORCHESTRATION_DATABASE_URL": pg_database,
        "ORCHESTRATION_BROKER_URL": redis_url,
        "ORCHESTRATION_RESULT_BACKEND": redis_url,
    }
    worker, worker_log = start("worker", addresses, tmp_path)
    beat, beat_log = start("beat", addresses, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while " ready." not in worker_log.read_text():
            assert time.monotonic() < deadline and worker.poll() is None, worker_log.read_text()[-2000:]
            time.sleep(0.2)
        client = Celery("client", broker=redis_url, set_as_current=False)
        client.conf.update(task_serializer="json", accept_content=["json"])
        client.send_task("consolidation.run_scheduled", kwargs={"slot": SLOT}, ignore_result=True)
        run = wait_for_run(
            lambda s: s.scalar(select(ConsolidationRun).where(ConsolidationRun.scheduled_for == parse_slot(SLOT))),
            timeout=120,
        )
        killed = kill_a_pool_process(worker, worker_log)  # billiard reports it past logging
    finally:
        stop(worker)
        stop(beat)
    for log in (worker_log, beat_log):
        lines = log.read_text().splitlines()
        assert lines, f"{log.name} is empty"
        for line in lines:
            event = json.loads(line)  # every line, or this raises
            assert {"event", "level", "timestamp"} <= set(event), line
            assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$", event["timestamp"]), line
    worker_events = [json.loads(line)["event"] for line in worker_log.read_text().splitlines()]
    death = [json.loads(line) for line in worker_log.read_text().splitlines() if f"pid:{killed} exited" in line]
    assert [(d["event"].split(" pid:")[0].startswith("Process 'ForkPoolWorker-"), d["level"]) for d in death] == [
        (True, "error")
    ]
    assert death[0]["event"].endswith("exited with 'signal 9 (SIGKILL)'") and death[0]["logger"] == "multiprocessing"
    assert any("ready." in e for e in worker_events) and "worker: Warm shutdown (MainProcess)" in worker_events
    assert any("SecurityWarning" in e for e in worker_events) == (os.geteuid() == 0)  # root here: warned, as JSON
    assert any("beat: Starting" in json.loads(line)["event"] for line in beat_log.read_text().splitlines())

    # The recipes of docs/events.md, run as written against this worker's output.
    if shutil.which("jq") is None:
        if services_required():
            pytest.fail("jq is not installed; CI requires it to test the recipes in docs/events.md")
        pytest.skip("jq is not installed: the recipes in docs/events.md were not run (apt-get install jq)")
    with db.session_scope() as session:
        failed = session.scalar(select(ConsolidationJob).where(ConsolidationJob.status == "failed"))
    failing_project = next(m.id for m in manifests if m.kind == "failing")
    outputs = {}
    for recipe in recipes():
        done = subprocess.run(
            recipe.replace("worker.log", str(worker_log)), shell=True, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, (recipe, done.stderr)
        outputs[recipe] = done.stdout.splitlines()
    summary, failures = outputs.values()
    assert [json.loads(line) for line in summary] == [
        {
            "run_id": str(run.id),
            "status": "partial",
            "jobs_completed": 3,
            "jobs_failed": 1,
            "memories_merged": run.memories_merged,
            "memories_archived": run.memories_archived,
            "duration_s": run.summary["duration_s"],
        }
    ]
    assert len(failures) == 1 and failures[0].split()[1:3] == [str(run.id), failing_project]
    assert failed.error_message in failures[0]

    # The LogQL and Elasticsearch recipes name fields that these lines carry.
    finished = next(
        json.loads(line) for line in worker_log.read_text().splitlines() if json.loads(line)["event"] == "run.finished"
    )
    text = (ROOT / "docs" / "events.md").read_text()
    logql = set(re.findall(r"\| (\w+)!?=", "\n".join(re.findall(r"```(?:logql|yaml)\n(.*?)```", text, re.S))))
    elastic = set(re.findall(r'\{"(?:term|range)": \{"(\w+)"', "\n".join(re.findall(r"```json\n(.*?)```", text, re.S))))
    assert logql == {"event", "status"} and elastic == {"event", "status", "timestamp"}
    assert (logql | elastic) <= set(finished)
