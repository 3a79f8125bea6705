"""The command line in a bad environment (SPEC §6): a broker, result backend or
database that cannot be reached, a wrong password, a database without the latest
schema, a missing SQLite file. Each is one line on stderr, exit 2, within seconds,
never a traceback; passwords masked. Also ``--version`` and ``make demo``'s last line.

The broker tests run the command as a subprocess: the Celery app of this process is
configured for the in-memory transport once and for all, and the timing is only real
in a process of its own.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path

import click
import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner

from orchestration.cli import main
from orchestration.store import db, migrate
from support import unavailable

ROOT = Path(__file__).resolve().parents[2]
BOUND_S = 30  # generous: the commands take a few seconds at most (see each test)
PROGRAM = Path(sys.executable).parent / "orchestration"
# The newest migration in migrations/versions.
LATEST = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()


def closed_port() -> int:
    """A local port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orchestration(*args: str, env: dict[str, str], cwd: Path, timeout: float = BOUND_S) -> tuple[int, str, str, float]:
    """Run the console script; (exit code, stdout, stderr, seconds taken)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATION_")}
    started = time.monotonic()
    done = subprocess.run(
        [str(PROGRAM), *args],
        env={**clean, "ORCHESTRATION_LOG_FORMAT": "json", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    return lines[0]


def cli(*args: str) -> tuple[int, str]:
    """Run the CLI in this process: (exit code, the one line on stderr)."""
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, one_line(result.stderr) if result.exit_code else result.stdout


# --- the broker and the result backend -----------------------------------------


def test_an_unreachable_broker_is_one_line_within_seconds(sqlite_url, tmp_path):
    port = closed_port()
    env = {"ORCHESTRATION_DATABASE_URL": sqlite_url, "ORCHESTRATION_BROKER_URL": f"redis://:s3cret@127.0.0.1:{port}/0"}
    code, out, err, took = orchestration("run-now", "--wait", env=env, cwd=tmp_path)
    line = one_line(err)
    assert code == 2 and out == "" and took < BOUND_S, (code, took)
    assert line == (
        f"Error: broker unreachable at redis://:***@127.0.0.1:{port}/0: Connection refused "
        "(is it running? ORCHESTRATION_BROKER_URL)"
    )
    env["ORCHESTRATION_BROKER_URL"] = f"amqp://guest:s3cret@127.0.0.1:{port}//"
    code, _, err, took = orchestration("run-now", env=env, cwd=tmp_path)
    assert code == 2 and took < BOUND_S
    assert one_line(err).startswith(
        f"Error: broker unreachable at amqp://guest:***@127.0.0.1:{port}//: Connection refused"
    )


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server, a firewall
    that lets the handshake through): only timeouts end a wait on it."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for connection in [*accepted, listener]:
            connection.close()


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_a_broker_that_never_answers_times_out_within_seconds(sqlite_url, tmp_path, silent_server, scheme):
    url = (
        f"redis://127.0.0.1:{silent_server}/0"
        if scheme == "redis"
        else f"amqp://guest:guest@127.0.0.1:{silent_server}//"
    )
    env = {"ORCHESTRATION_DATABASE_URL": sqlite_url, "ORCHESTRATION_BROKER_URL": url}
    code, _, err, took = orchestration("run-now", env=env, cwd=tmp_path)
    assert code == 2 and took < BOUND_S, (code, took)  # measured: about 7 s (two attempts of 3 s)
    assert "broker unreachable at" in one_line(err) and ": timed out (is it running?" in err


@pytest.mark.integration
def test_an_unreachable_result_backend_is_one_line_and_nothing_is_sent(sqlite_url, tmp_path, redis_url):
    import redis

    port = closed_port()
    env = {
        "ORCHESTRATION_DATABASE_URL": sqlite_url,
        "ORCHESTRATION_BROKER_URL": redis_url,
        "ORCHESTRATION_RESULT_BACKEND": f"redis://:s3cret@127.0.0.1:{port}/1",
    }
    code, _, err, took = orchestration("run-now", "--wait", env=env, cwd=tmp_path)
    assert code == 2 and took < BOUND_S, (code, took)  # was: 20 s of reconnection messages, 167 lines
    assert one_line(err) == (
        f"Error: result backend unreachable at redis://:***@127.0.0.1:{port}/1: Connection refused "
        "(is it running? ORCHESTRATION_RESULT_BACKEND)"
    )
    assert redis.Redis.from_url(redis_url).llen("celery") == 0  # a run the chord could not finish: not started


@pytest.mark.integration
def test_a_wrong_broker_password_is_one_line(sqlite_url, tmp_path, amqp_url):
    user, _, rest = amqp_url.removeprefix("amqp://").partition("@")
    wrong = f"amqp://{user.partition(':')[0]}:not-the-password@{rest}"
    env = {"ORCHESTRATION_DATABASE_URL": sqlite_url, "ORCHESTRATION_BROKER_URL": wrong}
    code, _, err, took = orchestration("run-now", env=env, cwd=tmp_path)
    assert code == 2 and took < BOUND_S, (code, took)  # was: 84 lines ending in AccessRefused
    line = one_line(err)
    assert line.startswith("Error: broker refused the login at amqp://") and ":***@" in line
    assert "not-the-password" not in line and line.endswith("(check ORCHESTRATION_BROKER_URL)")


def test_a_broker_error_from_any_command_is_one_line(settings_env):
    """A command that publishes without :func:`orchestration.cli.app.send` still
    reports an unreachable broker in one line."""
    from kombu.exceptions import OperationalError

    from orchestration.cli.app import Group

    @click.group(cls=Group)
    def group() -> None:
        pass

    @group.command()
    def publish() -> None:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as exc:
            raise OperationalError("Error 111 connecting to 127.0.0.1:1. Connection refused.") from exc

    settings_env(broker_url="redis://:s3cret@127.0.0.1:1/0")
    result = CliRunner().invoke(group, ["publish"])
    assert result.exit_code == 2 and result.stderr == (
        "Error: broker unreachable at redis://:***@127.0.0.1:1/0: Connection refused "
        "(is it running? ORCHESTRATION_BROKER_URL)\n"
    )


@pytest.fixture
def own_redis(tmp_path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A Redis server of the test's own, which it may kill."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server (this test starts its own Redis)", FileNotFoundError("not on PATH"))
    port = closed_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    try:
        yield process, f"redis://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


def test_redis_gone_while_waiting_ends_the_wait_with_one_line(sqlite_url, tmp_path, own_redis):
    server, url = own_redis
    env = {
        "ORCHESTRATION_DATABASE_URL": sqlite_url,
        "ORCHESTRATION_BROKER_URL": f"{url}/0",
        "ORCHESTRATION_RESULT_BACKEND": f"{url}/1",
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATION_")}
    waiting = subprocess.Popen(
        [str(PROGRAM), "run-now", "--wait"],
        env={**clean, "ORCHESTRATION_LOG_FORMAT": "json", **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # sent (no worker takes it); waiting for the run to start
        assert waiting.poll() is None, waiting.communicate()
        server.send_signal(signal.SIGKILL)
        gone = time.monotonic()
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    took = time.monotonic() - gone
    assert waiting.returncode == 2 and took < 60, (waiting.returncode, took)  # measured: about 15 s
    line = one_line(err)
    assert line.startswith(f"Error: broker unreachable at {url}/0: Connection refused")
    assert "; the run may still finish: orchestration runs watch " in line and out == ""


# --- the database ----------------------------------------------------------------


@pytest.fixture
def database_at(settings_env) -> Iterator[Callable[[str], None]]:
    """Point the process at a database URL through the setting, as an operator does."""

    def point(url: str) -> None:
        settings_env(database_url=url)
        db.use_database(None)

    yield point
    db.dispose()


def test_a_missing_sqlite_file_is_not_created_by_other_commands(tmp_path, monkeypatch, database_at):
    monkeypatch.chdir(tmp_path)
    database_at("sqlite:///var/orchestration.db")  # the default: relative to where the command runs
    expected = (
        f"Error: no database at {tmp_path}/var/orchestration.db: run 'orchestration db upgrade' first, "
        "or set ORCHESTRATION_DATABASE_URL"
    )
    for command in (["runs", "list"], ["health"], ["jobs", "list"], ["seed", "--projects", "1", "--memories", "8"]):
        assert cli(*command) == (2, expected), command
    assert not (tmp_path / "var").exists()  # nothing created here
    assert cli("db", "upgrade")[0] == 0 and (tmp_path / "var" / "orchestration.db").exists()
    assert cli("runs", "list")[0] == 0


def test_workers_still_create_their_sqlite_file(tmp_path):
    """Only the command line refuses: a worker's engine is built as before."""
    path = tmp_path / "var" / "worker.db"
    db.build_engine(f"sqlite:///{path}").dispose()
    assert path.parent.is_dir()
    with pytest.raises(db.NoDatabase):
        db.build_engine(f"sqlite:///{tmp_path}/elsewhere/none.db", create=False)
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    ("revision", "problem"),
    [
        ("base", "is not migrated (it has no schema yet): run 'orchestration db upgrade'"),
        ("0003", f"is not migrated to the latest schema (it is at revision 0003, the latest is {LATEST}): "),
    ],
    ids=["no-schema", "behind"],
)
def test_a_database_without_the_latest_schema_names_db_upgrade(database_url, database_at, revision, problem):
    migrate.downgrade(database_url, revision)
    database_at(database_url)
    code, line = cli("jobs", "list")  # jobs have columns that 0004 added
    assert code == 2 and line.startswith(f"Error: database at {db.describe()} {problem}"), line
    assert line.endswith("run 'orchestration db upgrade'") and "unreachable" not in line
    if revision == "base":  # health reads no column that 0004 added: at 0003 it works
        assert cli("health") == (2, line)


def test_db_upgrade_of_a_database_from_a_newer_version_is_one_line(database_url, database_at):
    engine = db.build_engine(database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    database_at(database_url)
    line = (
        f"Error: database at {db.describe()} has schema revision 9999, which this version of orchestration "
        "does not know: upgrade orchestration"
    )
    upgrade = CliRunner().invoke(main, ["db", "upgrade"])
    *logged, last = upgrade.stderr.splitlines()
    assert (upgrade.exit_code, last) == (2, line) and "Traceback" not in upgrade.output
    assert {json.loads(event)["logger"] for event in logged} <= {"alembic.runtime.migration"}  # its progress


def test_an_empty_sqlite_file_is_not_migrated(tmp_path, database_at):
    (tmp_path / "empty.db").touch()
    database_at(f"sqlite:///{tmp_path}/empty.db")
    assert cli("runs", "list") == (
        2,
        f"Error: database at sqlite:///{tmp_path}/empty.db is not migrated (it has no schema yet): "
        "run 'orchestration db upgrade'",
    )


def test_an_unreachable_database_is_exit_2_with_the_password_masked(database_at):
    port = closed_port()
    database_at(f"postgresql://orch:s3cret@127.0.0.1:{port}/orch")
    for command in (["runs", "list"], ["health"], ["db", "upgrade"]):
        assert cli(*command) == (
            2,
            f"Error: database unreachable at postgresql://orch:***@127.0.0.1:{port}/orch: Connection refused "
            "(is it running? ORCHESTRATION_DATABASE_URL)",
        ), command


# --- --version and the demo -------------------------------------------------------


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"orchestration, version {version('orchestration')}\n"


def test_the_demo_ends_with_the_commands_that_show_its_run_and_its_dashboard(tmp_path):
    code, out, err, _ = orchestration("demo", "--projects", "2", "--memories", "40", env={}, cwd=tmp_path, timeout=120)
    assert code == 0, err[-2000:]
    last, web = out.rstrip().splitlines()[-2:]
    run_id = next(json.loads(line) for line in err.splitlines() if '"run.finished"' in line)["run_id"]
    on_path = shutil.which("orchestration")
    program = "orchestration" if on_path and Path(on_path).resolve() == PROGRAM.resolve() else str(PROGRAM)
    assert last == f"inspect it: ORCHESTRATION_DATABASE_URL=sqlite:///var/demo.db {program} runs show {run_id}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATION_")}
    shown = subprocess.run(
        ["bash", "-c", last.removeprefix("inspect it: ")],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=BOUND_S,
    )
    assert shown.returncode == 0 and f"run {run_id}" in shown.stdout and "status: COMPLETED" in shown.stdout
    assert shlex.split(last)[-1] == run_id

    assert web == f"see it in the browser: ORCHESTRATION_DATABASE_URL=sqlite:///var/demo.db {program} web"
    port = closed_port()
    server = subprocess.Popen(
        ["bash", "-c", f"exec env {web.removeprefix('see it in the browser: ')} --port {port}"],
        env=clean,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        page = _page_when_up(f"http://127.0.0.1:{port}/runs/{run_id}", server)
    finally:
        server.terminate()
        server.wait(timeout=BOUND_S)
    assert f'Run <span class="id">{run_id[:8]}</span>' in page and "completed" in page


def _page_when_up(url: str, server: subprocess.Popen) -> str:
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
