"""POST the run summary to ``ORCHESTRATION_NOTIFY_URL``; a failure is logged as
``notify.failed`` and never fails the run.

What a webhook can and cannot do to us:

- **Time**: each attempt has one total deadline (``deadline_s``) for name resolution,
  connect, TLS handshake, sending and reading the status line together, whatever the
  server does (a server dripping one byte a second is cut off at the deadline). With
  ``attempts`` attempts and ``retry_delay_s`` between them, a call returns within
  ``attempts * deadline_s + (attempts - 1) * retry_delay_s`` plus a few milliseconds.
- **Where**: every address the host resolves to is checked before connecting, and the
  connection goes to a checked address (no second lookup, so no DNS rebinding); TLS
  still verifies the certificate against, and sends SNI and ``Host`` for, the host
  name. Link-local addresses (169.254.0.0/16, the cloud metadata service, fe80::/10,
  also IPv4-mapped) are refused always; loopback, private, unique-local and
  unspecified ones unless ``allow_private``. A refusal is not retried.
- **Redirects** are never followed: a 3xx is a failure naming the status, as is any
  status outside 2xx. 5xx, 408, 429 and network errors are retried; others are not.
- **Logs**: ``notify.failed`` shows the URL as ``scheme://host[:port]/***``: never the
  path or query (a Slack-style URL's secret) nor the user info.

The response is read only as far as its status line: nothing of the body is needed.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from orchestration.logs import get_logger
from orchestration.settings import address_problem, literal_address, mask_endpoint

DEADLINE_S = 10.0
ATTEMPTS = 2
RETRY_DELAY_S = 2.0
# A status line (and any 1xx interim responses before it) longer than this is not HTTP.
MAX_HEAD_BYTES = 64 * 1024
ERROR_CHARS = 200
RETRIED_STATUSES = frozenset({408, 429})
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?")

log = get_logger("orchestration.nightly.notify")


class _Failure(Exception):
    """One attempt failed; the message is short and quotes neither path nor secret."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def post_summary(
    url: str,
    summary: dict[str, Any],
    *,
    allow_private: bool,
    deadline_s: float = DEADLINE_S,
    attempts: int = ATTEMPTS,
    retry_delay_s: float = RETRY_DELAY_S,
    tls_context: ssl.SSLContext | None = None,
) -> bool:
    """POST ``summary`` as JSON to ``url``; True on a 2xx answer. Never raises for
    anything the network or the server does: a failure is logged as ``notify.failed``
    (masked URL, short error, attempts made) and returns False. ``tls_context``
    replaces the default verifying context (tests; a private CA)."""
    body = json.dumps(summary, default=str).encode()
    attempts = max(1, attempts)
    error, made = "", 0
    for attempt in range(1, attempts + 1):
        made = attempt
        try:
            _post_once(url, body, allow_private, _Clock(deadline_s), tls_context)
            return True
        except _Failure as exc:
            error, retry = str(exc), exc.retry
        except TimeoutError:  # every socket timeout is set to the time left
            error, retry = _Clock.exceeded(deadline_s), True
        except (OSError, ValueError) as exc:  # ssl.SSLError and TimeoutError are OSErrors
            error, retry = _describe(exc), True
        if not retry:
            break
        if attempt < attempts:
            time.sleep(retry_delay_s)
    log.warning("notify.failed", url=mask_endpoint(url), error=error[:ERROR_CHARS], attempts=made)
    return False


class _Clock:
    """One attempt's deadline, on the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Failure(self.exceeded(self.seconds), retry=True)
        return left

    @staticmethod
    def exceeded(seconds: float) -> str:
        return f"no answer within the deadline of {seconds:g} s"


@dataclass(frozen=True)
class _Target:
    tls: bool
    host: str  # as resolved: lower case, no brackets
    ascii_host: str  # IDNA: for SNI, certificate checks and the Host header
    port: int
    host_header: str
    request_target: str
    authorization: str | None

    @classmethod
    def parse(cls, url: str) -> _Target:
        try:
            parts = urlsplit(url)
            explicit_port = parts.port
            host = parts.hostname or ""
            ascii_host = host if ":" in host else host.encode("idna").decode("ascii")
        except (ValueError, UnicodeError):
            raise _Failure("malformed URL", retry=False) from None
        if parts.scheme not in ("http", "https"):
            raise _Failure("URL scheme must be http or https", retry=False)
        if not host:
            raise _Failure("URL has no host", retry=False)
        tls = parts.scheme == "https"
        default_port = 443 if tls else 80
        shown_host = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
        host_header = shown_host if explicit_port in (None, default_port) else f"{shown_host}:{explicit_port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # Percent-encode whatever may not appear in a request line (spaces, CR, LF, non-ASCII).
        target = quote(target, safe="!$&'()*+,/:;=?@~%")
        authorization = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
        return cls(
            tls=tls,
            host=host,
            ascii_host=ascii_host,
            port=explicit_port or default_port,
            host_header=host_header,
            request_target=target,
            authorization=authorization,
        )

    def request(self, body: bytes) -> bytes:
        lines = [
            f"POST {self.request_target} HTTP/1.1",
            f"Host: {self.host_header}",
            "User-Agent: orchestration",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if self.authorization:
            lines.append(f"Authorization: {self.authorization}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def _post_once(url: str, body: bytes, allow_private: bool, clock: _Clock, tls_context: ssl.SSLContext | None) -> None:
    target = _Target.parse(url)
    addresses = _resolve(target.host, target.port, clock)
    for _, sockaddr in addresses:
        problem = address_problem(str(sockaddr[0]), allow_private)
        if problem is not None:
            raise _Failure(f"refused: {problem}", retry=False)
    sock = _connect(addresses, clock)
    try:
        if target.tls:
            sock.settimeout(clock.remaining())  # the handshake as a whole: CPython's ssl keeps one deadline
            sock = (tls_context or ssl.create_default_context()).wrap_socket(sock, server_hostname=target.ascii_host)
        _send(sock, target.request(body), clock)
        status = _read_status(sock, clock)
    finally:
        sock.close()
    if 200 <= status < 300:
        return
    if 300 <= status < 400:
        raise _Failure(f"redirect (HTTP {status}) not followed", retry=False)
    raise _Failure(f"HTTP {status}", retry=status >= 500 or status in RETRIED_STATUSES)


_Address = tuple[socket.AddressFamily, tuple[Any, ...]]


def _resolve(host: str, port: int, clock: _Clock) -> list[_Address]:
    """Every address of ``host``; the lookup counts against the deadline (a hung
    resolver is left behind in a daemon thread, which ends when the resolver does)."""
    if literal_address(host) is not None:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    else:
        outcome: list[Any] = []

        def lookup() -> None:
            try:
                outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except (OSError, UnicodeError, ValueError) as exc:
                outcome.append(exc)

        thread = threading.Thread(target=lookup, name="notify-resolve", daemon=True)
        thread.start()
        thread.join(clock.remaining())
        if not outcome:
            raise _Failure(f"name resolution took longer than the deadline of {clock.seconds:g} s", retry=True)
        if isinstance(outcome[0], Exception):
            raise _Failure(f"cannot resolve the host: {_describe(outcome[0])}", retry=True)
        infos = outcome[0]
    addresses = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    if not addresses:
        raise _Failure("the host has no address", retry=True)
    return addresses


def _connect(addresses: list[_Address], clock: _Clock) -> socket.socket:
    """A TCP connection to the first of the (checked) ``addresses`` that answers."""
    error: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(clock.remaining())
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except _Failure:
            sock.close()
            raise
    assert error is not None
    raise error


def _send(sock: socket.socket, data: bytes, clock: _Clock) -> None:
    view = memoryview(data)
    while view:
        sock.settimeout(clock.remaining())
        sent = sock.send(view[:16384])
        view = view[sent:]


def _read_status(sock: socket.socket, clock: _Clock) -> int:
    """The final status code, read with the remaining time before every receive;
    1xx interim responses are skipped."""
    head = b""
    while True:
        end = head.find(b"\r\n")
        if end >= 0:
            match = _STATUS_LINE.fullmatch(head[:end])
            if match is None:
                raise _Failure("the answer is not an HTTP/1.x response", retry=True)
            status = int(match.group(1))
            if not 100 <= status < 200 or status == 101:
                return status
            interim_end = head.find(b"\r\n\r\n")
            if interim_end >= 0:
                head = head[interim_end + 4 :]
                continue
        if len(head) > MAX_HEAD_BYTES:
            raise _Failure("the answer's status line is too long", retry=True)
        sock.settimeout(clock.remaining())
        chunk = sock.recv(4096)
        if not chunk:
            raise _Failure("the connection closed before a status line", retry=True)
        head += chunk


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
