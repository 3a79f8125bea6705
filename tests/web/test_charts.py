"""The dashboard's SVG charts, parsed as XML: what each bar stands for, where it is
drawn, how it links and what its tooltip says; data escaped, no inline styles, and a
20,000-job run drawn small."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from markupsafe import Markup

from orchestration.web.charts import MAX_BARS, format_duration, history_chart, runs_chart, timeline

SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    """The ISO time ``seconds`` after :data:`T0`, as the documents carry it."""
    return (T0 + timedelta(seconds=seconds)).isoformat()


def run_doc(days_ago: int, status: str = "completed", took: float | None = 600.0, **fields: Any) -> dict[str, Any]:
    start = T0 - timedelta(days=days_ago)
    doc = {
        "id": str(uuid.uuid4()),
        "status": status,
        "trigger_type": "scheduled",
        "scheduled_for": start.isoformat(),
        "started_at": start.isoformat(),
        "finished_at": None if took is None else (start + timedelta(seconds=took)).isoformat(),
        "jobs_total": 4,
        "jobs_completed": 3,
        "jobs_failed": 1,
        "memories_merged": 12,
        "memories_archived": 5,
    }
    return {**doc, **fields}


def job_doc(
    worker: str | None = "host:100",
    status: str = "completed",
    queued: float = 0.0,
    start: float | None = 10.0,
    end: float | None = 40.0,
    **fields: Any,
) -> dict[str, Any]:
    """A job of a run started at :data:`T0`; ``queued``, ``start`` and ``end`` are seconds after it."""
    doc = {
        "id": str(uuid.uuid4()),
        "run_id": "run-1",
        "project_name": "alpha",
        "status": status,
        "trigger_type": "scheduled",
        "attempts": 0 if start is None else 1,
        "created_at": at(queued),
        "started_at": None if start is None else at(start),
        "completed_at": None if end is None else at(end),
        "worker": None if start is None else worker,
        "error_message": None,
        "memories_before": 100,
        "memories_after": 80,
        "memories_merged": 15,
        "memories_archived": 5,
    }
    return {**doc, **fields}


def parse(markup: Markup) -> ET.Element:
    """The chart as an XML tree, after checking what the page's CSP forbids is absent."""
    assert isinstance(markup, Markup)
    root = ET.fromstring(str(markup))
    assert root.tag == f"{SVG}svg"
    assert "chart" in classes(root)
    assert root.get("viewBox")
    for element in root.iter():
        assert "style" not in element.attrib
        assert element.tag not in (f"{SVG}style", f"{SVG}script", "style", "script")
        assert not any(name.startswith("on") for name in element.attrib)
    return root


def classes(element: ET.Element) -> set[str]:
    return set((element.get("class") or "").split())


def find(root: ET.Element, cls: str, tag: str = "rect") -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}{tag}") if cls in classes(e)]


def links(root: ET.Element) -> list[ET.Element]:
    return list(root.iter(f"{SVG}a"))


def link_of(root: ET.Element, element: ET.Element) -> ET.Element:
    return next(a for a in links(root) if element in list(a))


def tooltip(element: ET.Element) -> str:
    title = element.find(f"{SVG}title")
    assert title is not None and title.text
    return title.text


def num(element: ET.Element, name: str) -> float:
    return float(element.attrib[name])


# --- format_duration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (0.0, "0.0s"),
        (0.4, "0.4s"),
        (9.4, "9.4s"),
        (9.97, "10s"),
        (12, "12s"),
        (59.6, "1 min 00 s"),
        (185, "3 min 05 s"),
        (3599.6, "1 h 00 min"),
        (3720, "1 h 02 min"),
        (26 * 3600 + 60, "26 h 01 min"),
        (-3, "0.0s"),
    ],
)
def test_format_duration_reads_at_every_scale(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


# --- runs chart ---------------------------------------------------------------------


def test_runs_chart_draws_one_linked_bar_per_run_oldest_on_the_left() -> None:
    runs = [run_doc(days_ago) for days_ago in range(5)]  # newest first, as the CLI lists them
    root = parse(runs_chart(runs, T0 + timedelta(hours=1)))

    bars = find(root, "run-bar")
    assert len(bars) == 5
    by_x = sorted(bars, key=lambda bar: num(bar, "x"))
    assert [bar.get("data-run-id") for bar in by_x] == [run["id"] for run in reversed(runs)]
    for bar in bars:
        assert link_of(root, bar).get("href") == f"/runs/{bar.get('data-run-id')}"


def test_runs_chart_shows_only_the_30_newest_runs() -> None:
    runs = [run_doc(days_ago) for days_ago in range(MAX_BARS + 10)]
    root = parse(runs_chart(runs, T0))

    ids = {bar.get("data-run-id") for bar in find(root, "run-bar")}
    assert MAX_BARS == 30
    assert ids == {run["id"] for run in runs[:30]}


def test_runs_chart_bar_heights_are_proportional_to_durations() -> None:
    runs = [run_doc(0, took=1800.0), run_doc(1, took=600.0), run_doc(2, took=1200.0)]
    root = parse(runs_chart(runs, T0 + timedelta(hours=2)))

    height = {bar.get("data-run-id"): num(bar, "height") for bar in find(root, "run-bar")}
    longest = height[runs[0]["id"]]
    assert height[runs[1]["id"]] / longest == pytest.approx(1 / 3, abs=0.01)
    assert height[runs[2]["id"]] / longest == pytest.approx(2 / 3, abs=0.01)
    bottoms = {round(num(bar, "y") + num(bar, "height"), 1) for bar in find(root, "run-bar")}
    assert len(bottoms) == 1  # all bars stand on the same baseline


def test_a_running_run_is_drawn_until_now() -> None:
    running = run_doc(0, status="running", took=None)
    done = run_doc(1, took=1800.0)
    root = parse(runs_chart([running, done], T0 + timedelta(minutes=15)))

    height = {bar.get("data-run-id"): num(bar, "height") for bar in find(root, "run-bar")}
    assert height[running["id"]] / height[done["id"]] == pytest.approx(0.5, abs=0.01)
    (bar,) = (b for b in find(root, "run-bar") if b.get("data-run-id") == running["id"])
    assert "running for 15 min 00 s" in tooltip(link_of(root, bar))


def test_a_run_left_open_for_days_is_drawn_to_the_top_without_flattening_the_others() -> None:
    stuck = run_doc(0, status="running", took=None)
    short, long = run_doc(1, took=600.0), run_doc(2, took=1200.0)
    root = parse(runs_chart([stuck, short, long], T0 + timedelta(days=10)))

    height = {bar.get("data-run-id"): num(bar, "height") for bar in find(root, "run-bar")}
    assert height[short["id"]] / height[long["id"]] == pytest.approx(0.5, abs=0.01)
    assert height[stuck["id"]] >= height[long["id"]]  # clipped at the top of the plot
    (bar,) = (b for b in find(root, "run-bar") if b.get("data-run-id") == stuck["id"])
    assert "running for 240 h 00 min" in tooltip(link_of(root, bar))


def test_runs_chart_colours_bars_by_status_and_marks_only_failed_and_partial_runs() -> None:
    statuses = ["running", "completed", "partial", "failed"]
    runs = [run_doc(n, status=s, took=None if s == "running" else 900.0) for n, s in enumerate(statuses)]
    root = parse(runs_chart(runs, T0 + timedelta(minutes=5)))

    for run in runs:
        (bar,) = (b for b in find(root, "run-bar") if b.get("data-run-id") == run["id"])
        assert f"status-{run['status']}" in classes(bar)
        marks = [e for e in link_of(root, bar) if "fail-mark" in classes(e)]
        if run["status"] in ("failed", "partial"):
            assert len(marks) == 1 and f"mark-{run['status']}" in classes(marks[0])
        else:
            assert marks == []


def test_runs_chart_tooltip_tells_date_trigger_status_duration_jobs_and_memories() -> None:
    run = run_doc(0, status="partial", took=185.0, trigger_type="manual")
    root = parse(runs_chart([run], T0 + timedelta(hours=1)))

    text = tooltip(links(root)[0])
    assert "2026-11-27 02:00 UTC" in text
    assert "manual" in text
    assert "status: partial" in text
    assert "3 min 05 s" in text
    assert "3 ok, 1 failed, 4 total" in text
    assert "12 merged, 5 archived" in text


def test_runs_chart_labels_dates_and_durations() -> None:
    runs = [run_doc(days_ago, took=1500.0) for days_ago in range(30)]
    root = parse(runs_chart(runs, T0))

    dates = [e.text for e in find(root, "x-label", "text")]
    assert "Nov 27" in dates  # the newest night is always labelled
    assert 3 <= len(dates) < 30  # every few bars, so the labels do not overlap
    durations = [e.text for e in find(root, "y-label", "text")]
    assert durations[0] == "0s"
    assert all(re.fullmatch(r"\d+s|\d+ min( \d\d s)?|\d+ h( \d\d min)?", text or "") for text in durations)


def test_runs_chart_without_runs_says_so() -> None:
    empty = runs_chart([], T0)
    assert isinstance(empty, Markup)
    assert "no runs yet" in str(empty).lower()


# --- timeline -----------------------------------------------------------------------


def test_timeline_draws_one_linked_bar_per_job() -> None:
    jobs = [job_doc(worker=f"host:{n % 3}", start=10.0 * n, end=10.0 * n + 8) for n in range(12)]
    root = parse(timeline(jobs, at(0), T0 + timedelta(minutes=5)))

    bars = find(root, "job-bar")
    assert sorted(bar.get("data-job-id") or "" for bar in bars) == sorted(job["id"] for job in jobs)
    for bar in bars:
        assert link_of(root, bar).get("href") == f"/jobs/{bar.get('data-job-id')}"
    assert find(root, "job-bar-group") == []


def test_timeline_has_one_lane_per_worker_sorted_plus_not_started() -> None:
    jobs = [
        job_doc(worker="b:2"),
        job_doc(worker="a:10"),
        job_doc(worker="a:1"),
        job_doc(worker="a:10", start=50.0, end=60.0),
        job_doc(status="pending", start=None, end=None),
    ]
    root = parse(timeline(jobs, at(0), T0 + timedelta(minutes=2)))

    labels = sorted(find(root, "lane-label", "text"), key=lambda e: num(e, "y"))
    assert [e.text for e in labels] == ["a:1", "a:10", "b:2", "not started"]
    assert len(find(root, "lane")) == 4
    lane_y = {e.text: num(e, "y") for e in labels}
    for job in jobs:
        (bar,) = (b for b in find(root, "job-bar") if b.get("data-job-id") == job["id"])
        middle = num(bar, "y") + num(bar, "height") / 2
        assert middle == pytest.approx(lane_y[job["worker"] or "not started"], abs=0.5)


def test_timeline_grows_with_the_number_of_lanes() -> None:
    def height(workers: int) -> float:
        jobs = [job_doc(worker=f"host:{n}") for n in range(workers)]
        return float((parse(timeline(jobs, at(0), T0)).get("viewBox") or "").split()[3])

    assert height(2) < height(6) < height(12)


def test_a_jobs_bar_starts_where_its_queue_wait_ends() -> None:
    early = job_doc(worker="w:1", queued=0.0, start=60.0, end=120.0)
    late = job_doc(worker="w:2", queued=30.0, start=60.0, end=90.0)  # created after the run started
    root = parse(timeline([early, late], at(0), T0 + timedelta(minutes=3)))

    def drawn(job: dict[str, Any]) -> tuple[ET.Element, ET.Element]:
        (wait,) = (w for w in find(root, "queue-wait") if w.get("data-job-id") == job["id"])
        (bar,) = (b for b in find(root, "job-bar") if b.get("data-job-id") == job["id"])
        return wait, bar

    (early_wait, early_bar), (late_wait, late_bar) = drawn(early), drawn(late)
    for wait, bar in ((early_wait, early_bar), (late_wait, late_bar)):
        assert num(wait, "width") > 0
        assert num(wait, "x") + num(wait, "width") == pytest.approx(num(bar, "x"), abs=0.15)
    # 60 s queued and 60 s run; 30 s queued and 30 s run: widths on one time scale.
    assert num(early_wait, "width") == pytest.approx(num(early_bar, "width"), abs=0.2)
    assert num(late_wait, "width") == pytest.approx(num(early_wait, "width") / 2, abs=0.2)
    assert num(late_bar, "width") == pytest.approx(num(early_bar, "width") / 2, abs=0.2)
    assert "queued for 1 min 00 s, ran for 1 min 00 s" in tooltip(link_of(root, early_bar))


def test_an_unfinished_job_runs_until_now() -> None:
    done = job_doc(worker="w:1", start=0.0, end=60.0)
    running = job_doc(worker="w:2", status="running", start=60.0, end=None)
    root = parse(timeline([done, running], at(0), T0 + timedelta(seconds=180)))

    width = {bar.get("data-job-id"): num(bar, "width") for bar in find(root, "job-bar")}
    assert width[running["id"]] / width[done["id"]] == pytest.approx(2.0, abs=0.02)
    assert find(root, "now-line", "line")


def test_a_retried_job_has_an_attempts_mark_and_says_so() -> None:
    retried = job_doc(worker="w:1", attempts=3, status="retrying", end=None)
    once = job_doc(worker="w:2")
    root = parse(timeline([retried, once], at(0), T0 + timedelta(minutes=1)))

    for job in (retried, once):
        (bar,) = (b for b in find(root, "job-bar") if b.get("data-job-id") == job["id"])
        link = link_of(root, bar)
        marks = [e.text for e in link if "attempts-mark" in classes(e)]
        assert marks == (["×3"] if job is retried else [])
    (bar,) = (b for b in find(root, "job-bar") if b.get("data-job-id") == retried["id"])
    assert "attempts: 3 (retried 2×)" in tooltip(link_of(root, bar))


def test_timeline_tooltip_tells_project_status_times_worker_and_first_error_line() -> None:
    job = job_doc(
        worker="box:4711",
        status="failed",
        start=5.0,
        end=17.0,
        attempts=1,
        project_name=None,
        error_message="  RuntimeError: disk full\nTraceback (most recent call last): ...",
    )
    root = parse(timeline([job], at(0), T0 + timedelta(minutes=1)))

    text = tooltip(links(root)[0])
    assert text.splitlines() == [
        "(deleted project)",
        "status: failed, attempts: 1",
        "queued for 5.0s, ran for 12s",
        "worker: box:4711",
        "error: RuntimeError: disk full",
    ]


def test_timeline_escapes_project_names_and_errors() -> None:
    name, error = "<script>alert(1)</script>", "<b>& broken \"quoted\" 'x'"
    job = job_doc(project_name=name, status="failed", error_message=error + "\nsecond line", worker="<i>w</i>:1")
    markup = timeline([job], at(0), T0 + timedelta(minutes=1))
    root = parse(markup)

    assert "<script>" not in str(markup) and "&lt;script&gt;" in str(markup)
    assert not [e for e in root.iter() if e.tag.split("}")[-1] in ("script", "b", "i")]
    lines = tooltip(links(root)[0]).splitlines()
    assert lines[0] == name
    assert lines[-1] == f"error: {error}"
    assert "second line" not in tooltip(links(root)[0])
    assert [e.text for e in find(root, "lane-label", "text")] == ["<i>w</i>:1"]


def test_control_characters_in_data_keep_the_svg_well_formed() -> None:
    job = job_doc(project_name="bell\x07", status="failed", error_message="\x1b[31mred\x1b[0m\x00")
    root = parse(timeline([job], at(0), T0 + timedelta(minutes=1)))
    assert "red" in tooltip(links(root)[0])


def test_time_axis_counts_from_the_run_start() -> None:
    jobs = [job_doc(start=0.0, end=600.0)]
    root = parse(timeline(jobs, at(0), T0 + timedelta(minutes=10)))

    ticks = [e.text or "" for e in find(root, "time-axis", "g")[0].iter(f"{SVG}text")]
    assert ticks[0] == "+0s"
    assert all(tick.startswith("+") for tick in ticks)
    assert "+10 min" in ticks


def test_jobs_never_started_are_drawn_in_their_own_lane_waiting_until_now() -> None:
    pending = job_doc(status="pending", start=None, end=None, queued=0.0)
    root = parse(timeline([pending, job_doc(start=0.0, end=120.0)], at(0), T0 + timedelta(minutes=2)))

    (wait,) = (w for w in find(root, "queue-wait") if w.get("data-job-id") == pending["id"])
    (bar,) = (b for b in find(root, "job-bar") if b.get("data-job-id") == pending["id"])
    assert "status-pending" in classes(bar)
    assert num(wait, "x") + num(wait, "width") == pytest.approx(num(bar, "x") + num(bar, "width"), abs=1.1)
    assert "not started" in tooltip(link_of(root, bar))


def test_up_to_2000_jobs_each_get_their_own_bar() -> None:
    jobs = [job_doc(worker=f"w:{n % 4}", start=n * 0.5, end=n * 0.5 + 1.5) for n in range(2000)]
    root = parse(timeline(jobs, at(0), T0 + timedelta(hours=1)))

    assert len(find(root, "job-bar")) == 2000
    assert find(root, "job-bar-group") == []
    assert find(root, "chart-note", "text") == []


def test_a_20000_job_run_is_grouped_into_a_small_svg_with_a_note() -> None:
    jobs = []
    for n in range(20_000):
        status = "failed" if n % 501 == 0 else "completed"
        start = n // 16 * 2.9
        jobs.append(job_doc(worker=f"host-{n % 4}:{n % 16}", status=status, start=start, end=start + 2.5))
    jobs += [job_doc(status="pending", start=None, end=None) for _ in range(100)]
    markup = timeline(jobs, at(0), T0 + timedelta(hours=1))
    root = parse(markup)

    assert len(str(markup)) < 3_000_000
    rects = list(root.iter(f"{SVG}rect"))
    assert len(rects) < len(jobs)
    singles, groups = find(root, "job-bar"), find(root, "job-bar-group")
    assert groups
    # Every job is drawn once: alone, or counted in its group's tooltip.
    grouped = sum(int((re.match(r"([\d,]+) jobs", tooltip(group)) or [""])[1].replace(",", "")) for group in groups)
    assert len(singles) + grouped == len(jobs)
    assert any("status-failed" in classes(bar) for bar in singles + groups)
    (note,) = find(root, "chart-note", "text")
    assert "grouped" in (note.text or "")


def test_timeline_of_a_run_without_jobs_says_so() -> None:
    empty = timeline([], at(0), T0)
    assert isinstance(empty, Markup)
    assert "no jobs" in str(empty)


# --- project history ----------------------------------------------------------------


def history_doc(days_ago: int, before: int, after: int, status: str = "completed", **fields: Any) -> dict[str, Any]:
    start = -days_ago * 86400.0
    return job_doc(start=start, end=start + 42.0, queued=start, memories_before=before, memories_after=after,
                   status=status, **fields)  # fmt: skip


def test_history_draws_before_and_after_bars_per_job_oldest_on_the_left() -> None:
    jobs = [history_doc(0, 900, 700), history_doc(1, 1000, 900), history_doc(2, 1000, 1000)]
    root = parse(history_chart(jobs))

    job_links = links(root)
    assert len(job_links) == 3
    by_x = sorted(job_links, key=lambda a: min(num(r, "x") for r in a.iter(f"{SVG}rect")))
    assert [a.get("href") for a in by_x] == [f"/jobs/{job['id']}" for job in reversed(jobs)]
    newest = by_x[-1]
    before = next(r for r in newest if "history-before" in classes(r))
    after = next(r for r in newest if "history-after" in classes(r))
    assert {"history-bar"} <= classes(before) & classes(after)
    assert "status-completed" in classes(after)
    assert num(after, "height") / num(before, "height") == pytest.approx(700 / 900, abs=0.01)
    assert num(after, "x") > num(before, "x")


def test_history_shows_at_most_30_jobs() -> None:
    jobs = [history_doc(n, 100 + n, 90 + n) for n in range(45)]
    root = parse(history_chart(jobs))
    assert {a.get("href") for a in links(root)} == {f"/jobs/{job['id']}" for job in jobs[:30]}


def test_history_marks_failed_jobs_and_tells_the_counts() -> None:
    failed = history_doc(0, 500, 500, status="failed", error_message="boom\nstack")
    ok = history_doc(1, 600, 500)
    running = history_doc(2, 400, 0, status="running", completed_at=None)
    root = parse(history_chart([failed, ok, running]))

    link = {a.get("href"): a for a in links(root)}
    marks = {href: [e for e in a if "fail-mark" in classes(e)] for href, a in link.items()}
    assert len(marks[f"/jobs/{failed['id']}"]) == 1
    assert marks[f"/jobs/{ok['id']}"] == marks[f"/jobs/{running['id']}"] == []
    text = tooltip(link[f"/jobs/{ok['id']}"])
    assert "600 → 500 active (-100)" in text
    assert "15 merged, 5 archived" in text
    assert "took 42s" in text
    assert "error: boom" in tooltip(link[f"/jobs/{failed['id']}"])
    # A job still running has no count after it yet: only its bar before.
    running_rects = list(link[f"/jobs/{running['id']}"].iter(f"{SVG}rect"))
    assert [("history-before" in classes(r)) for r in running_rects] == [True]


def test_history_without_jobs_says_so() -> None:
    empty = history_chart([])
    assert isinstance(empty, Markup)
    assert "no jobs yet" in str(empty)
