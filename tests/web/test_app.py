"""The dashboard over a real night (tests/web/conftest.py), on both databases: every
page and its JSON twin, which equals the command line's ``--json``; filters and bad
input; the token; escaping; security headers; ``/healthz``; and that it only reads."""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import timedelta
from html import unescape

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from starlette.testclient import TestClient

from orchestration.cli import main
from orchestration.settings import Settings, load_settings
from orchestration.store import db
from orchestration.store.models import ConsolidationJob, ConsolidationRun, Project
from orchestration.store.types import utcnow
from orchestration.web.app import create_app
from support import FAILED_ERROR, XSS_NAME
from support import WEB_TOKEN as TOKEN

PAGES = ("/", "/runs", "/projects")


def cli_json(*args: str):
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def detail_pages(night) -> list[str]:
    failed = night.job_of(night.failing_project_id)
    return [f"/runs/{night.run.id}", f"/projects/{night.xss_project_id}", f"/jobs/{failed.id}"]


# --- the API equals the command line --------------------------------------------


def test_every_api_document_equals_the_command_lines_json(night, client):
    run, failed = night.run, night.job_of(night.failing_project_id)
    pairs = {
        "/api/runs": ["runs", "list"],
        "/api/runs?status=partial&trigger=scheduled&limit=5": ["runs", "list", "--status", "partial", "--limit", "5"],
        f"/api/runs/{run.id}": ["runs", "show", str(run.id)],
        "/api/projects": ["projects", "list"],
        f"/api/projects/{night.xss_project_id}": ["projects", "show", str(night.xss_project_id)],
        "/api/jobs": ["jobs", "list"],
        f"/api/jobs?run={str(run.id)[:8]}&status=failed": ["jobs", "list", "--run", str(run.id), "--status", "failed"],
        f"/api/jobs/{failed.id}": ["jobs", "show", str(failed.id)],
    }
    for path, command in pairs.items():
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.json() == cli_json(*command), path


def test_the_run_document_has_its_jobs_failed_first_with_their_workers(night, client):
    document = client.get(f"/api/runs/{night.run.id}").json()
    assert document["status"] == "partial" and document["jobs_failed"] == 1
    assert [j["status"] for j in document["jobs"]] == ["failed", "completed", "completed", "completed"]
    assert FAILED_ERROR in document["jobs"][0]["error_message"]
    # Every job that ran names its worker (host:pid, and the thread in a thread pool).
    assert all(re.fullmatch(r".+:\d+(/.+)?", j["worker"]) for j in document["jobs"][1:])
    assert document["duration_s"] == pytest.approx(
        (night.run.finished_at - night.run.started_at).total_seconds(), abs=0.01
    )


def test_ids_prefixes_and_project_names_all_find_the_row(night, client):
    run_id, job_id = str(night.run.id), str(night.jobs[0].id)
    assert client.get(f"/api/runs/{run_id[:8]}").json()["id"] == run_id
    assert client.get(f"/api/jobs/{job_id[:8]}").json()["id"] == job_id
    by_name = client.get("/api/projects/" + XSS_NAME.replace("/", "%2F"))  # a "/" in the name too
    assert by_name.status_code == 200 and by_name.json()["id"] == str(night.xss_project_id)
    assert XSS_NAME in unescape(client.get("/projects/" + XSS_NAME).text)
    assert client.get(f"/api/projects/{night.xss_project_id}").json()["name"] == XSS_NAME
    failing = client.get(f"/api/projects/{night.failing_project_id}").json()["name"]
    assert client.get(f"/api/projects/{failing}").json()["id"] == str(night.failing_project_id)


# --- pages -----------------------------------------------------------------------


def test_the_run_page_shows_the_timeline_the_failed_jobs_error_and_the_slowest_jobs(night, client):
    page = client.get(f"/runs/{night.run.id}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert html.count('class="job-bar ') == len(night.jobs)
    failed = night.job_of(night.failing_project_id)
    section = html[html.index('id="failed-jobs"') :]
    assert _escaped(failed.error_message) in section
    assert f"orchestration runs retry {str(night.run.id)[:8]}" in section
    assert 'id="slowest"' in html
    assert 'http-equiv="refresh"' not in html  # finished: it does not reload itself


def test_an_open_run_page_refreshes_itself_and_shows_counters_from_its_jobs(night, client):
    with db.session_scope() as session:
        session.execute(
            update(ConsolidationRun)
            .where(ConsolidationRun.id == night.run.id)
            .values(status="running", finished_at=None)
        )
    page = client.get(f"/runs/{night.run.id}").text
    assert re.search(r'<meta http-equiv="refresh" content="\d+">', page)
    assert "summed from its jobs" in page
    assert 'http-equiv="refresh"' in client.get("/runs").text


def test_the_runs_page_says_what_happened_last_night_and_charts_each_run(night, client):
    with db.session_scope() as session:
        for days in (1, 2):
            started = night.run.started_at - timedelta(days=days)
            session.add(
                ConsolidationRun(
                    trigger_type="manual", status="completed", started_at=started, finished_at=started + timedelta(1)
                )
            )
    html = client.get("/runs").text
    assert html.count('class="run-bar ') == 3
    assert "DEGRADED" in html and f"{night.run.id}" in html and "1 of 4 jobs failed" in html
    failed = night.job_of(night.failing_project_id)
    banner = html[html.index('id="health"') : html.index("</section>")]
    assert f'<a href="/jobs/{failed.id}">project-' in banner and FAILED_ERROR in banner  # who failed, and why
    assert html.count('<tr class="row-') == 3
    filtered = client.get("/runs?status=completed").text
    assert filtered.count('class="run-bar ') == 2 and "clear" in filtered


def test_the_project_page_has_its_history_jobs_and_options(night, client):
    html = client.get(f"/projects/{night.failing_project_id}").text
    assert 'class="chart history-chart"' in html
    assert "The project's options are invalid" in html and FAILED_ERROR in html
    html = client.get(f"/projects/{night.xss_project_id}").text
    assert "similarity_threshold" in html and "default" in html


def test_the_job_page_has_counters_attempts_audit_rows_and_the_way_to_undo_it(night, client):
    done = next(j for j in night.jobs if j.status == "completed" and j.project_id != night.xss_project_id)
    html = client.get(f"/jobs/{done.id}").text
    assert 'id="changes"' in html and "merge" in html
    assert f"orchestration jobs rollback {str(done.id)[:8]} --dry-run" in html
    assert "worker" in html and done.worker is not None and _escaped(done.worker) in html
    # How it compared, as jobs show says it: the night's first pass of the project is full.
    assert f'<p class="pass" id="pass">pass: full (no earlier completed pass), {done.memories_new} memories' in html


def _escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#39;")


# --- safety ----------------------------------------------------------------------


def test_database_values_render_as_text_never_as_markup(night, client):
    with db.session_scope() as session:
        session.execute(
            update(ConsolidationJob)
            .where(ConsolidationJob.project_id == night.failing_project_id)
            .values(error_message='<img src=x onerror="alert(2)"> & <b>bold</b>')
        )
    for path in [*PAGES, *detail_pages(night)]:
        html = client.get(path).text
        assert "<script" not in html.replace("&lt;script", ""), path  # no script at all, escaped names only
        assert "<img src=x" not in html and "<b>bold</b>" not in html, path
    run_page = client.get(f"/runs/{night.run.id}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in run_page
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in run_page


def test_every_response_carries_the_security_headers(night, client):
    for path in [
        *PAGES,
        *detail_pages(night),
        "/api/runs",
        "/metrics",
        "/healthz",
        "/runs/ffffffff",
        "/static/style.css",
    ]:
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe-inline" not in csp, path
        assert "frame-ancestors 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY", path


def test_without_a_token_set_every_page_is_open(client):
    assert client.get("/runs").status_code == 200


@pytest.mark.parametrize("path", ["/", "/runs", "/projects", "/api/runs", "/api/jobs", "/metrics", "/healthz"])
def test_with_a_token_every_page_and_api_needs_it(token_client, path):
    refused = token_client.get(path)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic realm=")
    assert TOKEN not in refused.text
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", "Basic !!!", f"Token {TOKEN}", _basic("admin", "nope")):
        assert token_client.get(path, headers={"Authorization": wrong}).status_code == 401, wrong
    bearer = token_client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    basic = token_client.get(path, headers={"Authorization": _basic("anyone", TOKEN)})
    assert bearer.status_code == basic.status_code and bearer.status_code in (200, 503)  # healthz: no run yet


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_short_or_padded_token_is_refused_at_start_without_showing_it():
    for bad in ("short", f" {TOKEN} ", " " * 20, "ünïcödé-tøken-ñ-1234"):
        with pytest.raises(ValueError) as refused:
            load_settings({"ORCHESTRATION_WEB_TOKEN": bad})
        assert "ORCHESTRATION_WEB_TOKEN" in str(refused.value) and "='***'" in str(refused.value)
        assert not bad.strip() or bad.strip() not in str(refused.value)
    assert load_settings({"ORCHESTRATION_WEB_TOKEN": TOKEN}).web_token == TOKEN
    assert TOKEN not in repr(load_settings({"ORCHESTRATION_WEB_TOKEN": TOKEN}))


def test_it_only_reads_a_read_only_connection_serves_every_page(night):
    db.set_read_only(True)
    try:
        with TestClient(create_app(Settings())) as client:
            for path in [*PAGES, *detail_pages(night), "/api/runs", "/api/projects", "/metrics", "/healthz"]:
                assert client.get(path).status_code in (200, 503), path
        with pytest.raises(DBAPIError), db.session_scope() as session:  # and it cannot write
            session.execute(update(Project).values(name="changed"))
    finally:
        db.set_read_only(False)
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).where(Project.name == "changed")) == 0


# --- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/runs/ffffffff", 404, "no run with id 'ffffffff'"),
        ("/api/runs/ffffffff", 404, "no run with id 'ffffffff'"),
        ("/api/jobs/ab", 400, "job 'ab': give at least 4 characters of the id"),
        ("/api/projects/nope", 404, "no project named 'nope'"),
        ("/api/runs?status=bogus", 400, "status='bogus': one of running, completed, partial, failed"),
        ("/api/runs?limit=0", 400, "limit='0': give a whole number from 1 to 10000"),
        ("/runs?since=yesterday", 400, "since='yesterday' is not an ISO 8601 date or date-time, e.g. 2026-11-27"),
        ("/api/jobs?run=zzzz", 404, "no run with id 'zzzz'"),
        ("/healthz?max_age=-1", 400, "max_age='-1': give hours, a number above 0 (default 26)"),
        ("/nowhere", 404, "Not Found"),
        ("/api/runs?limit=%C2%B2", 400, "limit='²': give a whole number from 1 to 10000"),
        (
            "/api/runs?since=9999-12-31T23:59:59-01:00",
            400,
            "since='9999-12-31T23:59:59-01:00' is not an ISO 8601 date or date-time, e.g. 2026-11-27",
        ),
        (
            "/api/runs?stauts=failed",
            400,
            "unknown parameter 'stauts': this list takes limit, status, trigger, since, project",
        ),
        ("/api/jobs?trigger=manual", 400, "unknown parameter 'trigger': this list takes limit, run, project, status"),
        ("/api/runs/" + "a" * 5000, 404, "no run with id '" + "a" * 5000 + "'"),
    ],
)
def test_bad_input_is_one_clear_line_with_its_status(client, path, status, message):
    response = client.get(path)
    assert response.status_code == status
    if path.startswith(("/api/", "/healthz")):
        assert response.json() == {"error": message}
    else:
        assert _escaped(message) in response.text and "Traceback" not in response.text


def test_an_unmigrated_database_answers_503_naming_db_upgrade(client, database_url):
    from orchestration.store import migrate

    migrate.downgrade(database_url, "0004")  # jobs lack the worker column
    db.dispose()
    response = client.get("/api/jobs")
    assert response.status_code == 503
    assert "is not migrated to the latest schema" in response.json()["error"]
    migrate.downgrade(database_url, "base")
    db.dispose()
    for path in ("/runs", "/api/runs", "/healthz", "/metrics"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert "no schema yet): run 'orchestration db upgrade'" in unescape(response.text), path


# --- /healthz --------------------------------------------------------------------


def test_healthz_answers_as_orchestration_health_does(night, client):
    response = client.get("/healthz")
    assert response.status_code == 503  # last night was partial: health exits 1
    assert response.json() == cli_json_health()
    two_hours_ago = utcnow() - timedelta(hours=2)
    with db.session_scope() as session:
        session.execute(
            update(ConsolidationRun)
            .where(ConsolidationRun.id == night.run.id)
            .values(status="completed", finished_at=two_hours_ago)
        )
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["code"] == 0 == cli_json_health()["code"]
    stale = client.get("/healthz?max_age=1")
    assert stale.status_code == 503 and "finished more than 1:00:00 ago" in stale.json()["message"]


def cli_json_health() -> dict:
    result = CliRunner().invoke(main, ["health", "--json"])
    return json.loads(result.stdout)


def test_healthz_with_no_runs_yet_is_503(client):
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json()["message"] == "no scheduled run has ever been recorded"


def test_a_run_with_no_jobs_and_an_empty_database_render(client):
    assert "No runs yet" in client.get("/runs").text
    assert "No projects yet" in client.get("/projects").text
    with db.session_scope() as session:
        run = ConsolidationRun(trigger_type="manual", status="completed", started_at=utcnow(), finished_at=utcnow())
        session.add(run)
    html = client.get(f"/runs/{run.id}").text
    assert "No project was eligible" in html and "This run has no jobs" in html
    assert client.get(f"/runs/{uuid.uuid4()}").status_code == 404


@pytest.mark.integration
def test_the_database_password_never_appears(pg_url, settings_env):
    """PostgreSQL here trusts local logins, so a password in the URL is accepted and
    ignored: the pages show the URL with it masked, and never the password."""
    from sqlalchemy.engine import make_url

    with_password = make_url(pg_url).set(password="s3cr3t-pw").render_as_string(hide_password=False)
    settings_env(database_url=with_password)
    db.use_database(None)
    try:
        with TestClient(create_app(Settings())) as client:
            for path in ("/runs", "/projects", "/api/runs", "/metrics", "/healthz", "/runs/ffffffff"):
                response = client.get(path)
                assert "s3cr3t-pw" not in response.text, path
            assert ":***@" in client.get("/runs").text
    finally:
        db.dispose()


def test_serving_a_sqlite_file_changes_nothing_in_it_and_follows_a_replaced_file(night, database_url, sqlite_template):
    path = db.sqlite_path(database_url)
    if path is None:
        pytest.skip("SQLite's file only")
    db.dispose()  # the writers' connections closed: the WAL checkpointed into the file
    before = path.read_bytes()
    db.set_read_only(True)
    try:
        with TestClient(create_app(Settings())) as client:
            for page in [*PAGES, *detail_pages(night), "/api/runs", "/metrics", "/healthz"]:
                assert client.get(page).status_code in (200, 503), page
            assert path.read_bytes() == before  # not even its journal mode
            assert len(client.get("/api/runs").json()) == 1
            # A new database in its place (a new demo) is what the next page reads.
            for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                leftover.unlink(missing_ok=True)
            path.write_bytes(sqlite_template.read_bytes())
            assert client.get("/api/runs").json() == []
            path.unlink()
            gone = client.get("/api/runs")
            assert gone.status_code == 503 and "unable to open database file" in gone.json()["error"]
            assert not path.exists()  # and it was not created
    finally:
        db.set_read_only(False)


def test_a_summary_that_is_not_an_object_does_not_break_the_run_page(night, client):
    with db.session_scope() as session:
        session.execute(update(ConsolidationRun).where(ConsolidationRun.id == night.run.id).values(summary=["a"]))
    assert client.get(f"/runs/{night.run.id}").status_code == 200
    assert client.get("/runs").status_code == 200


def test_on_loopback_it_answers_loopback_names_only(client, database):
    from orchestration.web.security import LOOPBACK_NAMES

    app = create_app(Settings(), hosts=LOOPBACK_NAMES)
    with TestClient(app, base_url="http://127.0.0.1:8800") as local:
        assert local.get("/runs").status_code == 200
        assert local.get("/runs", headers={"Host": "localhost:8800"}).status_code == 200
        assert local.get("/runs", headers={"Host": "[::1]:8800"}).status_code == 200
        rebound = local.get("/api/runs", headers={"Host": "attacker.example:8800"})  # DNS rebinding
        assert rebound.status_code == 400 and "loopback names only" in rebound.text
        assert rebound.headers["x-frame-options"] == "DENY"


def test_an_unexpected_error_is_a_500_with_the_security_headers(database, monkeypatch):
    from orchestration.web import pages

    def broken(request):
        raise RuntimeError("a bug")

    monkeypatch.setattr(pages, "projects", broken)  # an injected fault
    with TestClient(create_app(Settings()), raise_server_exceptions=False) as client:
        response = client.get("/projects")
    assert response.status_code == 500 and "a bug" not in response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
