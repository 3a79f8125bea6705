"""The dashboard in a real browser: the system's headless Chromium, driven by Selenium
through its chromedriver, against a real uvicorn server serving a read-only database
as ``orchestration web`` does, over a real night (tests/web/conftest.py: three jobs
completed, one failed, one project named ``<script>alert(1)</script>``) and the runs
of the two nights before it.

What only a browser shows: every page renders under the CSP without a console error,
the SVG charts draw one bar per job and per run, a timeline bar's link opens its job,
and the markup in a project's name stays text (no alert, no script element: the pages
have none of their own, so one in the DOM is data that became markup, even where the
CSP would keep it from running). A full-page screenshot of each page is left in the
test's ``tmp_path``.

Chromium and chromedriver come from the system (``apt-get install chromium
chromium-driver``); without them the tests skip with that hint, unless ``CI=true`` or
``ORCHESTRATION_REQUIRE_SERVICES=1``, where that is a failure (``.ci/run`` installs them).
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest
import uvicorn
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver import Chrome, ChromeOptions
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from orchestration.settings import Settings
from orchestration.store import db
from orchestration.store.models import ConsolidationRun
from orchestration.store.statuses import JobStatus, RunStatus, TriggerType
from orchestration.web.app import create_app
from support import XSS_NAME, services_required, wait_until

if TYPE_CHECKING:
    from web.conftest import Night

# SQLite only: what the browser gets does not depend on the database, and the pages
# are served from both by test_app.py.
pytestmark = [pytest.mark.browser, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

INSTALL_HINT = "apt-get install chromium chromium-driver"
# Screenshots: the page's width in a desktop browser, and its whole height up to a cap.
WIDTH, MAX_HEIGHT = 1280, 2000


def _browser_missing(what: str) -> NoReturn:
    message = f"{what} not found on PATH; the browser tests need the system's Chromium: {INSTALL_HINT}"
    if services_required():
        pytest.fail(f"{message}; CI/ORCHESTRATION_REQUIRE_SERVICES requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Chrome]:
    """The system's Chromium, headless, keeping its console log; an alert stays open
    (is not dismissed by the next command) so that a test can see it."""
    binary = shutil.which("chromium") or _browser_missing("Chromium (chromium)")
    driver_path = shutil.which("chromedriver") or _browser_missing("chromedriver")
    options = ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={WIDTH},900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.unhandled_prompt_behavior = "ignore"
    driver = Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class History:
    """The night, and the finished runs of the two nights before it (rows without jobs)."""

    night: Night
    earlier_run_ids: list[uuid.UUID]

    @property
    def run_ids(self) -> list[uuid.UUID]:
        return [self.night.run.id, *self.earlier_run_ids]


@pytest.fixture
def history(night: Night) -> History:
    earlier = []
    assert night.run.scheduled_for is not None
    with db.session_scope() as session:
        for days, status, failed in ((1, RunStatus.COMPLETED, 0), (2, RunStatus.PARTIAL, 1)):
            slot = night.run.scheduled_for - timedelta(days=days)
            run = ConsolidationRun(
                trigger_type=TriggerType.SCHEDULED,
                scheduled_for=slot,
                status=status,
                projects_checked=5,
                projects_eligible=3,
                jobs_total=3,
                jobs_completed=3 - failed,
                jobs_failed=failed,
                started_at=slot,
                finished_at=slot + timedelta(seconds=40 * days),
            )
            session.add(run)
            session.flush()
            earlier.append(run.id)
    return History(night, earlier)


@pytest.fixture
def dashboard(history: History) -> Iterator[str]:
    """The dashboard's base URL: uvicorn in a thread on a free loopback port, over the
    database made read-only as ``orchestration web`` makes it."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(Settings()), host="127.0.0.1", port=0, log_config=None, server_header=False)
    )
    previous = db.set_read_only(True)
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=10, what="the dashboard's start")
        assert server.started, "the dashboard did not start (its error is in the captured log)"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        db.set_read_only(previous)
    assert not thread.is_alive(), "the dashboard did not stop"


def visit(browser: Chrome, url: str, screenshot: Path | None = None) -> None:
    """Load ``url`` and :func:`check` it; with ``screenshot``, save the whole page there."""
    browser.get_log("browser")  # what earlier pages logged is theirs
    browser.get(url)
    check(browser)
    if screenshot is not None:
        save_page(browser, screenshot)


def check(browser: Chrome) -> None:
    """What every page must be: no alert open, no script element, nothing logged as an
    error on the console since the last look (a CSP violation, a failed load, a bad
    SVG attribute)."""
    url = browser.current_url
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018 - the property raises when no alert is open
    assert browser.find_elements(By.TAG_NAME, "script") == [], f"a script element on {url}"
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], f"console errors on {url}"


def save_page(browser: Chrome, path: Path) -> None:
    """A PNG of the page :data:`WIDTH` pixels wide and as high as its content (at most
    :data:`MAX_HEIGHT`): the viewport is resized to it for the shot, then restored."""
    height = min(int(browser.execute_script("return document.documentElement.scrollHeight")), MAX_HEIGHT)
    metrics = {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        assert browser.save_screenshot(str(path)), f"no screenshot of {browser.current_url}"
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def text_of(browser: Chrome, selector: str = "body") -> str:
    """The element's text as the browser renders it (what a reader sees)."""
    return browser.find_element(By.CSS_SELECTOR, selector).text


def job_bars(browser: Chrome) -> dict[str, WebElement]:
    """The run page's timeline bars by job id."""
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.timeline .job-bar")
    by_id = {bar.get_dom_attribute("data-job-id"): bar for bar in bars}
    assert len(by_id) == len(bars), "two timeline bars for one job"
    return by_id


def opened(browser: Chrome, url: str) -> None:
    wait_until(lambda: browser.current_url == url, timeout=5, what=f"{url} opened")


def test_the_run_page_draws_a_bar_per_job_and_shows_the_failed_jobs_error_whole(browser, dashboard, history, tmp_path):
    night = history.night
    visit(browser, f"{dashboard}/runs/{night.run.id}", tmp_path / "run.png")

    bars = job_bars(browser)
    assert sorted(bars) == sorted(str(job.id) for job in night.jobs)
    assert all(bar.is_displayed() for bar in bars.values())

    failed = [job for job in night.jobs if job.status == JobStatus.FAILED]
    assert [job.project_id for job in failed] == [night.failing_project_id]
    assert "status-failed" in bars[str(failed[0].id)].get_dom_attribute("class")
    shown = browser.find_elements(By.CSS_SELECTOR, "#failed-jobs pre.error")
    assert [pre.text for pre in shown] == [job.error_message for job in failed]  # whole, not its first line
    assert all(pre.is_displayed() for pre in shown)


def test_every_timeline_bar_opens_its_job_with_the_mouse_and_the_keyboard(browser, dashboard, history):
    night = history.night
    run_page = f"{dashboard}/runs/{night.run.id}"
    for job in night.jobs:  # the failed one ended at once: its bar is still wide enough to hit
        for press in (lambda bar: bar.click(), lambda bar: bar.find_element(By.XPATH, "..").send_keys(Keys.ENTER)):
            visit(browser, run_page)
            press(job_bars(browser)[str(job.id)])
            opened(browser, f"{dashboard}/jobs/{job.id}")
            assert str(job.id) in text_of(browser, ".lede")
            check(browser)


def test_the_runs_chart_has_a_bar_per_listed_run(browser, dashboard, history, tmp_path):
    visit(browser, f"{dashboard}/", tmp_path / "runs.png")

    listed = [link.text for link in browser.find_elements(By.CSS_SELECTOR, "table#runs tbody tr td:first-child a")]
    bars = [bar.get_dom_attribute("data-run-id") for bar in browser.find_elements(By.CSS_SELECTOR, ".run-bar")]
    assert len(bars) == len(listed) == len(history.run_ids) == 3
    assert sorted(bars) == sorted(str(run_id) for run_id in history.run_ids)
    assert sorted(bar[:8] for bar in bars) == sorted(listed)


def test_every_page_renders_cleanly_and_the_project_name_stays_text(browser, dashboard, history, tmp_path):
    night = history.night
    xss_job, failed_job = night.job_of(night.xss_project_id), night.job_of(night.failing_project_id)
    pages = {  # name: (path, whether the project named XSS_NAME is on it)
        "runs": ("/", False),
        "run": (f"/runs/{night.run.id}", True),
        "projects": ("/projects", True),
        "project": (f"/projects/{night.xss_project_id}", True),
        "job-failed": (f"/jobs/{failed_job.id}", False),
        "job-of-xss-project": (f"/jobs/{xss_job.id}", True),
    }
    for name, (path, named) in pages.items():
        visit(browser, dashboard + path, tmp_path / f"{name}.png")
        if named:
            assert XSS_NAME in text_of(browser), f"the project's name is not shown as it is on {path}"
        if name == "project":
            assert text_of(browser, "h1") == f"Project {XSS_NAME}"
            assert browser.title.startswith(XSS_NAME)
