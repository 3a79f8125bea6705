"""What every response of the dashboard goes through: the optional access token
(``ORCHESTRATION_WEB_TOKEN``, as a bearer token or as the password of basic auth) and
the security headers (a CSP that allows no script and no inline style, no sniffing,
no framing, no referrer)."""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp

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


class Guard(BaseHTTPMiddleware):
    """Refuses a request without the token (when one is set) and adds :data:`HEADERS`."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if self.token is not None and not token_matches(
            presented_token(request.headers.get("authorization")), self.token
        ):
            response: Response = PlainTextResponse(
                "this dashboard needs its token (ORCHESTRATION_WEB_TOKEN): a bearer token or the basic-auth password\n",
                status_code=401,
                headers={"WWW-Authenticate": REALM},
            )
        else:
            response = await call_next(request)
        response.headers.update(HEADERS)
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response
