"""notify.post_summary against real local servers: bounded in time, never redirected,
never to link-local (nor, unless allowed, private) addresses, and logs that show no
path, query or password. No Celery here."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestration.logs import configure_logging
from orchestration.nightly import notify
from orchestration.settings import get_settings, load_settings

SUMMARY = {"id": "run-1", "status": "completed", "memories_merged": 3}
MARGIN_S = 5.0


@pytest.fixture
def logs() -> Iterator[Callable[[], list[dict]]]:
    """Every log line, rendered by the real JSON renderer and parsed back."""
    stream = io.StringIO()
    configure_logging(load_settings({"ORCHESTRATION_LOG_FORMAT": "json"}), stream=stream)

    def read() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]

    yield read
    configure_logging(get_settings())


def _failures(read: Callable[[], list[dict]]) -> list[dict]:
    return [line for line in read() if line["event"] == "notify.failed"]


class _Recorder:
    """A real HTTP server on 127.0.0.1 answering every POST with ``status`` (and
    ``headers``), recording each request it gets."""

    def __init__(self, status: int = 204, headers: dict[str, str] | None = None) -> None:
        self.requests: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.requests.append({"method": "POST", "path": self.path, "headers": self.headers, "body": body})
                self._answer()

            def do_GET(self) -> None:
                recorder.requests.append({"method": "GET", "path": self.path, "headers": self.headers, "body": b""})
                self._answer()

            def _answer(self) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server() -> Iterator[Callable[..., _Recorder]]:
    started: list[_Recorder] = []

    def start(status: int = 204, headers: dict[str, str] | None = None) -> _Recorder:
        started.append(_Recorder(status, headers))
        return started[-1]

    yield start
    for recorder in started:
        recorder.close()


class _RawServer:
    """A TCP server on 127.0.0.1 whose every connection is handed to ``talk(conn, stop)``."""

    def __init__(self, talk: Callable[[socket.socket, threading.Event], None]) -> None:
        self.stop = threading.Event()
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.talk = talk
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.talk(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[..., _RawServer]]:
    started: list[_RawServer] = []

    def start(talk: Callable[[socket.socket, threading.Event], None]) -> _RawServer:
        started.append(_RawServer(talk))
        return started[-1]

    yield start
    for server in started:
        server.close()


def _drip(conn: socket.socket, stop: threading.Event) -> None:
    """Read the request, then answer one byte a second, forever: the status line never ends."""
    conn.recv(65536)
    for byte in itertools.chain(b"HTTP/1.1 200 OK", itertools.repeat(ord("K"))):
        if stop.wait(1.0):
            return
        conn.sendall(bytes([byte]))


def _silent(conn: socket.socket, stop: threading.Event) -> None:
    """Accept, read whatever comes, say nothing until the test ends."""
    conn.settimeout(0.2)
    while not stop.is_set():
        try:
            if not conn.recv(65536):
                return
        except TimeoutError:
            continue


def test_a_slow_drip_server_is_cut_off_at_the_deadline(raw_server, logs):
    server = raw_server(_drip)
    started = time.monotonic()
    ok = notify.post_summary(
        f"http://127.0.0.1:{server.port}/hook", SUMMARY, allow_private=True, deadline_s=1.5, retry_delay_s=0.1
    )
    elapsed = time.monotonic() - started
    assert ok is False
    (failed,) = _failures(logs)
    assert failed["attempts"] == 2 and "deadline" in failed["error"]
    assert server.connections == 2
    assert elapsed < 1.5 * 2 + 0.1 + MARGIN_S


def test_a_silent_tls_server_is_cut_off_at_the_deadline(raw_server, logs):
    server = raw_server(_silent)
    started = time.monotonic()
    ok = notify.post_summary(
        f"https://127.0.0.1:{server.port}/hook", SUMMARY, allow_private=True, deadline_s=1.0, attempts=1
    )
    assert ok is False and time.monotonic() - started < 1.0 + MARGIN_S
    (failed,) = _failures(logs)
    assert failed["attempts"] == 1


@pytest.mark.slow
def test_with_the_production_defaults_a_slow_drip_server_holds_the_call_about_22_seconds(raw_server, logs):
    """Two attempts of 10 s and a 2 s pause; today's urllib timeout let it run forever."""
    server = raw_server(_drip)
    started = time.monotonic()
    ok = notify.post_summary(f"http://127.0.0.1:{server.port}/hook", SUMMARY, allow_private=True)
    elapsed = time.monotonic() - started
    assert ok is False and _failures(logs)[0]["attempts"] == notify.ATTEMPTS
    assert elapsed < notify.ATTEMPTS * notify.DEADLINE_S + notify.RETRY_DELAY_S + MARGIN_S


def test_a_redirect_is_not_followed_and_is_a_failure(http_server, logs):
    target = http_server(200)
    hook = http_server(302, {"Location": target.url("/internal")})
    assert notify.post_summary(hook.url(), SUMMARY, allow_private=True, retry_delay_s=0) is False
    assert target.requests == []
    assert len(hook.requests) == 1  # a redirect is not retried either
    (failed,) = _failures(logs)
    assert "302" in failed["error"] and failed["attempts"] == 1


@pytest.mark.parametrize("status", [500, 503])
def test_a_server_error_is_a_failure_after_the_retries(http_server, logs, status):
    server = http_server(status)
    assert notify.post_summary(server.url(), SUMMARY, allow_private=True, attempts=3, retry_delay_s=0) is False
    assert len(server.requests) == 3
    (failed,) = _failures(logs)
    assert str(status) in failed["error"] and failed["attempts"] == 3
    assert failed["url"] == f"http://127.0.0.1:{server.port}/***"


def test_a_client_error_is_a_failure_without_retry(http_server, logs):
    server = http_server(404)
    assert notify.post_summary(server.url(), SUMMARY, allow_private=True, retry_delay_s=0) is False
    assert len(server.requests) == 1 and "404" in _failures(logs)[0]["error"]


def test_interim_responses_are_skipped(raw_server):
    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")

    server = raw_server(answer)
    assert notify.post_summary(f"http://127.0.0.1:{server.port}/", SUMMARY, allow_private=True) is True


@pytest.fixture
def no_connections(monkeypatch) -> list:
    """Any socket created (by notify or anything else) is recorded and cannot connect."""
    attempts: list = []

    class Forbidden(socket.socket):
        def connect(self, address):
            attempts.append(address)
            raise AssertionError(f"connected to {address}")

    monkeypatch.setattr(socket, "socket", Forbidden)
    return attempts


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam",
        "http://169.254.170.2/v2/credentials",
        "http://[fe80::1]/hook",
        "http://[::ffff:169.254.169.254]/latest",
        "http://[::ffff:a9fe:a9fe]/latest",
        "http://2852039166/latest",  # 169.254.169.254 as one number: the resolver accepts it
    ],
)
def test_link_local_addresses_are_refused_without_connecting_even_if_private_ones_are_allowed(
    url, no_connections, logs
):
    assert notify.post_summary(url, SUMMARY, allow_private=True, retry_delay_s=0) is False
    assert no_connections == []
    (failed,) = _failures(logs)
    assert "link-local" in failed["error"] and failed["attempts"] == 1


def test_a_host_name_resolving_to_link_local_is_refused(monkeypatch, no_connections, logs):
    """Every address is checked: one public address does not excuse a link-local one."""

    def resolve(host, port, *args, **kwargs):
        assert host == "metadata.example"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    assert notify.post_summary("http://metadata.example/hook", SUMMARY, allow_private=True) is False
    assert no_connections == [] and "link-local" in _failures(logs)[0]["error"]


def test_loopback_is_refused_unless_private_addresses_are_allowed(http_server, logs):
    server = http_server(204)
    assert notify.post_summary(server.url("/hook?x=1"), SUMMARY, allow_private=False) is False
    assert server.requests == []
    (failed,) = _failures(logs)
    assert "127.0.0.1" in failed["error"] and "NOTIFY_ALLOW_PRIVATE" in failed["error"] and failed["attempts"] == 1
    assert notify.post_summary(server.url("/hook?x=1"), SUMMARY, allow_private=True) is True
    (request,) = server.requests
    assert request["method"] == "POST" and request["path"] == "/hook?x=1"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Host"] == f"127.0.0.1:{server.port}"
    assert json.loads(request["body"]) == SUMMARY
    assert len(_failures(logs)) == 1


@pytest.mark.parametrize(
    "address", ["10.1.2.3", "172.16.0.1", "192.168.1.1", "0.0.0.0", "fd00::1", "::1", "::", "::ffff:10.0.0.1"]
)
def test_private_addresses_are_refused_without_connecting(address, no_connections, logs):
    host = f"[{address}]" if ":" in address else address
    assert notify.post_summary(f"http://{host}/hook", SUMMARY, allow_private=False) is False
    assert no_connections == [] and "private" in _failures(logs)[0]["error"]


def test_a_host_name_resolving_to_a_private_address_is_refused(http_server, logs):
    server = http_server(204)
    assert notify.post_summary(server.url(host="localhost"), SUMMARY, allow_private=False) is False
    assert server.requests == [] and "private" in _failures(logs)[0]["error"]
    # Allowed, it reaches the server (whichever of localhost's addresses listens).
    assert notify.post_summary(server.url(host="localhost"), SUMMARY, allow_private=True) is True
    assert server.requests[0]["headers"]["Host"] == f"localhost:{server.port}"


def test_the_checked_address_is_the_one_connected_to(http_server, monkeypatch):
    """One lookup per attempt, its answer checked and connected to: a second answer
    (DNS rebinding to the metadata service) could not redirect the POST."""
    server = http_server(204)
    real = socket.getaddrinfo
    answers: list[str] = []
    lookups: list[str] = []

    def resolve(host, port, *args, flags=0, **kwargs):
        if host != "hook.test" or flags & socket.AI_NUMERICHOST:
            return real(host, port, *args, flags=flags, **kwargs)
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers.pop(0), port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    url = f"http://hook.test:{server.port}/hook"
    answers[:] = ["127.0.0.1", "169.254.169.254"]
    assert notify.post_summary(url, SUMMARY, allow_private=False, attempts=1) is False
    assert server.requests == [] and lookups == ["hook.test"]
    answers[:], lookups[:] = ["127.0.0.1", "169.254.169.254"], []
    assert notify.post_summary(url, SUMMARY, allow_private=True) is True
    assert lookups == ["hook.test"]
    assert server.requests[0]["headers"]["Host"] == f"hook.test:{server.port}"


def test_the_log_shows_neither_path_nor_query_nor_user_info(http_server, logs):
    server = http_server(500)
    url = f"http://hookuser:Hunter2pw@127.0.0.1:{server.port}/services/T0AAA/B0BBB/Xy9SecretPath?token=QuerySecret7"
    assert notify.post_summary(url, SUMMARY, allow_private=True, retry_delay_s=0) is False
    assert server.requests[0]["headers"]["Authorization"].startswith("Basic ")  # sent, never logged
    (failed,) = _failures(logs)
    assert failed["url"] == f"http://127.0.0.1:{server.port}/***"
    assert failed["attempts"] == 2 and len(failed["error"]) <= notify.ERROR_CHARS
    text = json.dumps(logs())
    for secret in ("hookuser", "Hunter2pw", "services", "T0AAA", "Xy9SecretPath", "token", "QuerySecret7"):
        assert secret not in text


@pytest.mark.parametrize(
    "url",
    [
        "http://u:Sx1#Qy2@127.0.0.1:9/hooks/Xy9SecretPath",
        "http://u:Sx1/Qy2@127.0.0.1:9/hooks/Xy9SecretPath",
        "http://u:Sx1?Qy2@127.0.0.1:9/hooks/Xy9SecretPath",
        "http://u:1234/Qy2@127.0.0.1:9/hooks/Xy9SecretPath",
        "https://u:Sx1@Qy2@127.0.0.1:9/hooks/Xy9SecretPath",
        "https://169.254.169.254/hooks/Xy9SecretPath?Sx1=Qy2",
    ],
)
def test_a_malformed_url_leaks_nothing_to_the_log(url, logs):
    assert notify.post_summary(url, SUMMARY, allow_private=True, deadline_s=1, retry_delay_s=0) is False
    # Without the timestamps, whose digits may hold "1234" by chance.
    text = json.dumps([{k: v for k, v in event.items() if k != "timestamp"} for event in _failures(logs)])
    for secret in ("Sx1", "Qy2", "1234", "Xy9SecretPath", "hooks"):
        assert secret not in text


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_https_sends_sni_and_host_for_the_name_and_verifies_the_certificate(http_server, certificate, logs):
    cert, key = certificate
    server = http_server(204)
    names: list[str | None] = []
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server_context.sni_callback = lambda sock, name, context: names.append(name)
    server.server.socket = server_context.wrap_socket(server.server.socket, server_side=True)
    client_context = ssl.create_default_context(cafile=str(cert))
    url = f"https://localhost:{server.port}/hook"
    assert notify.post_summary(url, SUMMARY, allow_private=True, tls_context=client_context) is True
    assert names and set(names) == {"localhost"}
    assert server.requests[0]["headers"]["Host"] == f"localhost:{server.port}"
    # The system's trust store does not know this certificate: a failure, not a bypass.
    assert notify.post_summary(url, SUMMARY, allow_private=True, attempts=1) is False
    assert "CERTIFICATE_VERIFY_FAILED" in _failures(logs)[0]["error"]
