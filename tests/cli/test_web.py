"""``orchestration web`` as an operator starts it: a real server process that answers
and logs JSON lines, stops on Ctrl-C; and one line, never a traceback, for a busy
port, a database that is missing or not migrated, or a missing ``web`` extra."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestration.cli import main
from orchestration.store import db
from support import WEB_TOKEN, wait_until

PROGRAM = Path(sys.executable).with_name("orchestration")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_line(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, result.stderr
    return result.exit_code, lines[0]


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def test_the_server_answers_logs_json_and_stops_on_ctrl_c(sqlite_url, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "ORCHESTRATION_DATABASE_URL": sqlite_url,
        "ORCHESTRATION_LOG_FORMAT": "json",
        "ORCHESTRATION_WEB_TOKEN": WEB_TOKEN,
    }
    server = subprocess.Popen(
        [str(PROGRAM), "web", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return _get(f"{base}/healthz")[0] == 401
            except OSError:
                return server.poll() is not None  # died: stop waiting, the asserts below say why

        wait_until(answers, 30, "the dashboard to answer")
        assert server.poll() is None
        assert _get(f"{base}/api/runs", WEB_TOKEN) == (200, b"[]\n")
        assert _get(f"{base}/healthz", WEB_TOKEN)[0] == 503  # no run yet
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0 and out == b""
    lines = [json.loads(line) for line in err.decode().splitlines()]  # every line is JSON
    started = next(line for line in lines if line["event"] == "web.started")
    assert started["url"] == f"http://127.0.0.1:{port}/" and started["token"] is True
    assert WEB_TOKEN not in err.decode()
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert {"method": "GET", "path": "/api/runs", "status": 200}.items() <= access[1].items()
    assert access[0]["path"] == "/healthz" and access[0]["status"] == 401
    assert not any(line["event"] == "web.unprotected" for line in lines)  # loopback


def test_a_busy_port_is_one_line(sqlite_database):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, line = one_line("web", "--port", str(port))
    assert code == 1 and line == (
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another with --port"
    )
    assert db.set_read_only(False) is False  # the refusal left this process able to write again


def test_a_database_that_is_missing_or_not_migrated_is_one_line_naming_db_upgrade(tmp_path, settings_env):
    settings_env(database_url=f"sqlite:///{tmp_path}/missing.db")
    db.use_database(None)
    code, line = one_line("web", "--port", str(free_port()))
    assert code == 2 and line.endswith("run 'orchestration db upgrade' first, or set ORCHESTRATION_DATABASE_URL")
    (tmp_path / "empty.db").touch()
    settings_env(database_url=f"sqlite:///{tmp_path}/empty.db")
    db.use_database(None)
    code, line = one_line("web", "--port", str(free_port()))
    assert code == 2 and line.endswith("is not migrated (it has no schema yet): run 'orchestration db upgrade'")
    db.dispose()


def test_without_the_web_extra_it_says_what_to_install(sqlite_database, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # what a missing package looks like to import
    code, line = one_line("web")
    assert code == 1
    assert line == "Error: the dashboard needs the web extra (uvicorn is missing): pip install 'orchestration[web]'"


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_listening_beyond_loopback_without_a_token_warns(sqlite_database, host, capsys):
    from orchestration.cli.web import announce
    from orchestration.logs import configure_logging
    from orchestration.settings import Settings, get_settings

    configure_logging(Settings(log_format="json"))
    try:
        announce(Settings(), host, 8800)
        events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
        assert events == ["web.started", "web.unprotected"]
        announce(Settings(web_token=WEB_TOKEN), host, 8800)
        assert [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()] == ["web.started"]
    finally:
        configure_logging(get_settings())


def test_an_address_this_machine_does_not_have_or_an_empty_one_points_at_host(sqlite_database):
    code, line = one_line("web", "--host", "192.0.2.1", "--port", str(free_port()))  # TEST-NET-1: not ours
    assert code == 1 and line.startswith("Error: cannot listen on 192.0.2.1:") and line.endswith("with --host")
    code, line = one_line("web", "--host", " ")
    assert code == 1 and line.startswith("Error: --host is empty")


def test_a_since_out_of_range_is_one_line(sqlite_database):
    result = CliRunner().invoke(main, ["runs", "list", "--since", "9999-12-31T23:59:59-01:00"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().endswith("is not an ISO 8601 date or date-time, e.g. 2026-11-27")
