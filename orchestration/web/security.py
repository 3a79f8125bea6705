"""What every response of the dashboard goes through, outermost (an error page of the
server included): the optional access token (``ORCHESTRATION_WEB_TOKEN``, as a bearer
token or as the password of basic auth), the names it may be reached by (loopback
names only when it listens on loopback: no DNS rebinding), and the security headers
(a CSP that allows no script and no inline style, no sniffing, no framing, no
referrer)."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
REALM = 'Basic realm="orchestration", charset="UTF-8"'
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def presented_token(authorization: str | None) -> str | None:
    """The token an ``Authorization`` header carries: a bearer token, or the password
    of basic auth (any user name); ``None`` if it carries neither."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def token_matches(presented: str | None, token: str) -> bool:
    """Compared in constant time, so response times tell nothing about the token."""
    return presented is not None and hmac.compare_digest(presented.encode(), token.encode())


def _host_name(host_header: str) -> str:
    """``Host`` without its port (``[::1]:8800`` -> ``[::1]``)."""
    if host_header.startswith("["):
        return host_header.partition("]")[0] + "]"
    return host_header.rpartition(":")[0] if ":" in host_header else host_header


class Guard:
    """Refuses a request for another host name than ``hosts`` (``None``: any) or
    without the token (when one is set), and adds :data:`HEADERS` to every response."""

    def __init__(self, app: ASGIApp, token: str | None, hosts: Sequence[str] | None = None) -> None:
        self.app, self.token = app, token
        self.hosts = None if hosts is None else {host.lower() for host in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.update(HEADERS)
                if not path.startswith("/static/"):
                    headers["Cache-Control"] = "no-store"
            await send(message)

        headers = Headers(scope=scope)
        if self.hosts is not None and _host_name(headers.get("host", "")).lower() not in self.hosts:
            refused = PlainTextResponse(
                "this dashboard answers on loopback names only (127.0.0.1, localhost, [::1])\n", status_code=400
            )
            await refused(scope, receive, send_with_headers)
        elif self.token is not None and not token_matches(presented_token(headers.get("authorization")), self.token):
            refused = PlainTextResponse(
                "this dashboard needs its token (ORCHESTRATION_WEB_TOKEN): a bearer token or the basic-auth password\n",
                status_code=401,
                headers={"WWW-Authenticate": REALM},
            )
            await refused(scope, receive, send_with_headers)
        else:
            await self.app(scope, receive, send_with_headers)
