"""Harness of the fault suite: real processes on 127.0.0.1 that the tests can break.

- ``redis_server``: a Redis server of our own on a free port (append-only file, so a
  restart keeps the queues, as in compose.yaml), which a test may restart;
- ``pg_proxy``: a TCP proxy in front of the shared PostgreSQL that a test can cut;
- ``pg_cluster``: a PostgreSQL server of the test's own (its own data directory and
  port), with a migrated database, which a test may stop and start;
- ``workers``: ``celery -A tests.fault_worker worker`` subprocesses (prefork, 2
  processes) in their own process group, so a test can SIGKILL a whole worker;
- ``report``: one result line per scenario, printed at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import celery_worker_command, unavailable

ROOT = Path(__file__).resolve().parents[2]
_REPORT: list[str] = []


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("fault scenarios")
        for line in _REPORT:
            terminalreporter.write_line(line)


@pytest.fixture
def report():
    return _REPORT.append


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


class RedisServer:
    def __init__(self, directory: Path):
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server (the fault suite starts its own Redis)", FileNotFoundError("not on PATH"))
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)  # Redis flushes its append-only file
            self.process.wait(timeout=10)
            self.process = None

    def restart(self, down_for: float = 1.0, empty: bool = False) -> None:
        """Stop and start again. By default the append-only file brings the queues back;
        ``empty`` deletes it (and any snapshot) first, so the server comes back with no
        data at all, as a Redis without persistence does after a restart."""
        self.stop()
        if empty:
            self.forget()
        time.sleep(down_for)
        self.start()

    def forget(self) -> None:
        """Delete the stopped server's persisted data (append-only file, snapshot)."""
        assert self.process is None, "stop the server first"
        shutil.rmtree(self.directory / "appendonlydir", ignore_errors=True)
        for name in ("appendonly.aof", "dump.rdb"):
            (self.directory / name).unlink(missing_ok=True)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _pg_binary(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else the newest under /usr/lib/postgresql."""
    found = shutil.which(name)
    if found is None:
        candidates = sorted(
            Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
            key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        )
        found = str(candidates[-1]) if candidates else None
    if found is None:
        unavailable(f"{name} (the outage tests start a PostgreSQL server of their own)", FileNotFoundError("not found"))
    return found


class PgCluster:
    """A PostgreSQL server of the test's own: ``initdb`` into a fresh directory, trust
    authentication, listening on 127.0.0.1 at a free port (and its socket in that
    directory, nowhere shared). As root, the server programs run as the ``postgres`` OS
    user (they refuse to run as root), so the directory belongs to that user."""

    DATABASE = "orchestration"

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = free_port()
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.DATABASE}"

    def _run(self, name: str, *args: str, timeout: float = 120) -> None:
        command = [_pg_binary(name), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise AssertionError(f"{name} {' '.join(args)} failed: {done.stdout}{done.stderr}\n{log}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down (``fast``: active transactions rolled back, clients
        disconnected at once) and wait until it has stopped."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def create_database(self) -> None:
        from sqlalchemy import create_engine, text

        admin = create_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres", isolation_level="AUTOCOMMIT"
        )
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.DATABASE}"'))
        finally:
            admin.dispose()


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL server of the test's own with a migrated database (``url``); the test
    may ``stop()`` and ``start()`` it. Stopped and deleted afterwards."""
    import tempfile

    from orchestration.store import db, migrate

    # Not under tmp_path: the postgres OS user must be able to reach the directory.
    root = Path(tempfile.mkdtemp(prefix="orchestration-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PgCluster(root)
    try:
        cluster.init()
        cluster.start()
        cluster.create_database()
        migrate.upgrade(cluster.url)
        yield cluster
    finally:
        db.dispose()
        if cluster.running:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


class TcpProxy:
    """Forwards 127.0.0.1:port to an upstream; ``cut()`` drops every connection and stops
    accepting, ``restore()`` accepts again."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.port = free_port()
        self.connections: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self.lock:
            listener, self.listener = self.listener, None
            if listener is not None:
                listener.close()
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self.connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def pg_proxy(pg_url) -> Iterator[tuple[TcpProxy, str]]:
    """The test's PostgreSQL database, reached through a proxy the test can cut."""
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.restore()
    try:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.cut()


class Workers:
    """Worker subprocesses, each in its own process group."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen] = []

    def start(self, env: dict[str, str], app: str = "tests.fault_worker") -> subprocess.Popen:
        """``celery -A app worker``: the fault-injecting app, or the production one."""
        log = self.log_dir / f"worker-{len(self.processes)}.log"
        with log.open("w") as out:  # the worker writes to its own copy of the file
            process = subprocess.Popen(
                celery_worker_command(app, "--loglevel", "INFO", "-n", f"fault{len(self.processes)}@%h"),
                env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                cwd=ROOT,
                start_new_session=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process.log = log  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    def events(self) -> list[dict]:
        import json

        lines = []
        for process in self.processes:
            for line in process.log.read_text(errors="replace").splitlines():  # type: ignore[attr-defined]
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        lines.append(json.loads(line))
        return lines


class Beats:
    """``celery -A orchestration.celery_app beat`` subprocesses, each logging to
    ``<name>.log`` and keeping its schedule in ``<name>`` under the test's folder."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.processes: list[subprocess.Popen] = []

    def start(self, env: dict[str, str], name: str = "beat") -> Path:
        log = self.directory / f"{name}.log"
        command = [sys.executable, "-m", "celery", "-A", "orchestration.celery_app", "beat", "--loglevel", "INFO",
                   "--schedule", str(self.directory / name)]  # fmt: skip
        with log.open("w") as out:  # beat writes to its own copy of the file
            self.processes.append(
                subprocess.Popen(
                    command, env=env, cwd=ROOT, start_new_session=True, stdout=out, stderr=subprocess.STDOUT
                )  # fmt: skip
            )
        return log

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)


@pytest.fixture
def beats(tmp_path) -> Iterator[Beats]:
    started = Beats(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def workers(request, tmp_path) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()
        failed = getattr(request.node, "report_call", None)
        if failed is not None and failed.failed:  # the workers' story, for the failure report
            for event in pool.events()[-40:]:
                print(
                    event.get("timestamp", "")[11:23],
                    event.get("event"),
                    event.get("job_id", ""),
                    event.get("attempt", ""),
                    str(event.get("error", event.get("reason", "")))[:120],
                )
