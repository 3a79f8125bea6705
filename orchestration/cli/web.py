"""``orchestration web``: the read-only dashboard (``orchestration.web``) served by
uvicorn, after checking that the database answers and is migrated."""

from __future__ import annotations

import errno
import ipaddress
import socket

import click

from orchestration.cli.app import CliError, main
from orchestration.logs import get_logger, quiet
from orchestration.settings import Settings, get_settings
from orchestration.store import db, migrate

log = get_logger("orchestration.web")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8800


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    if not host.strip():
        raise CliError("--host is empty: give an address, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every one)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = exc.strerror or exc
            option = "--port" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else "--host"
            raise CliError(f"cannot listen on {host}:{port}: {reason}; choose another with {option}") from None


def announce(settings: Settings, host: str, port: int) -> None:
    """Say where the dashboard is (``web.started``), and warn (``web.unprotected``) when
    it listens beyond this machine without a token."""
    shown = f"[{host}]" if ":" in host else host
    log.info("web.started", url=f"http://{shown}:{port}/", database=db.describe(), token=settings.web_token is not None)
    if settings.web_token is None and not _loopback(host):
        log.warning(
            "web.unprotected",
            host=host,
            hint="without ORCHESTRATION_WEB_TOKEN anyone who reaches this port reads every run, project and error",
        )


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve the dashboard over the configured database until interrupted."""
    try:
        import uvicorn

        from orchestration.web.app import create_app
        from orchestration.web.security import LOOPBACK_NAMES
    except ImportError as exc:
        missing = f"the dashboard needs the web extra ({exc.name} is missing)"
        raise CliError(f"{missing}: pip install 'orchestration[web]'") from None
    settings = get_settings()
    previous = db.set_read_only(True)
    try:
        with quiet("alembic"), db.get_engine().connect() as connection:
            problem = migrate.schema_problem(connection)
        if problem:
            raise CliError(f"database at {db.describe()} {problem}", 2)
        _check_port(host, port)
        announce(settings, host, port)
        shown = f"[{host}]" if ":" in host else host
        hosts = (*LOOPBACK_NAMES, shown) if _loopback(host) else None
        uvicorn.run(create_app(settings, hosts), host=host, port=port, log_config=None, server_header=False)
    finally:
        db.set_read_only(previous)


@main.command("web")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
def web(host: str, port: int) -> None:
    """Read-only dashboard: runs, timelines, projects, jobs; /api/, /metrics, /healthz."""
    serve(host, port)
