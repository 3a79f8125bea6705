"""bench/web.py still runs (tiny sizes) and reports its figures: for every endpoint the
median, p95, response size, statements and verdict against its goal, then a profile.
Nothing here asserts a time."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.store.migrate import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.bench]

# 60 jobs need 60 projects: /metrics is timed with 60 (no goal), then with 40.
TINY = ("--jobs", "60", "--runs", "12", "--projects", "40", "--history-jobs", "4", "--repeat", "2")
ENDPOINTS = ["/runs/{run}", "/api/runs/{run}", "/runs", "/runs?limit=1000", "/api/runs?limit=1000"] + ["/metrics"] * 2
ROW = re.compile(
    r"^GET (?P<path>\S+) +(?P<what>.+?) +(?P<median>[\d.]+) ms +(?P<p95>[\d.]+) ms +[\d.]+ (?:B|kB|MB) +"
    r"(?P<statements>\d+) +(?P<goal>[\d.]+ m?s|-) +(?P<verdict>PASS \(p95 over\)|PASS|MISS|-)$",
    re.M,
)


def _bench(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(Path(ROOT) / "bench" / "web.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _figures(out: str, database: str) -> list[dict[str, str]]:
    assert re.search(rf"^{database} [\d.]+: 60 projects, 12 runs, [\d,]+ jobs \(the newest run 60\)", out, re.M), out
    rows = [match.groupdict() for match in ROW.finditer(out)]
    assert [row["path"] for row in rows] == ENDPOINTS, out
    assert [row["goal"] for row in rows] == ["1 s", "1 s", "200 ms", "200 ms", "200 ms", "-", "100 ms"], out
    assert "60 projects" in rows[-2]["what"] and "40 projects" in rows[-1]["what"], out
    assert all(int(row["statements"]) > 0 for row in rows), out
    assert rows[-2]["verdict"] == "-" and all(row["verdict"] != "-" for row in rows[:-2] + rows[-1:]), out
    assert re.search(r"^goals: \d of 6 met \(median under the goal\); \d missed$", out, re.M), out
    assert re.search(r"^load average \(1 min\): [\d.]+ before the requests, [\d.]+ after$", out, re.M), out
    return rows


def test_web_benchmark_on_sqlite_with_profile():
    out = _bench("--database", "sqlite", *TINY, "--profile", "--profile-top", "5")
    _figures(out, "SQLite")
    assert re.search(r"^profile of GET /\S+ \(one request, cProfile\), by cumulative time", out, re.M), out
    assert re.search(r"^profile of GET /\S+ \(one request, cProfile\), by own time", out, re.M), out
    assert "function calls" in out


def test_web_benchmark_on_postgresql(pg_template):
    out = _bench("--database", "postgresql", *TINY, "--profile", "/runs/{run}", "--profile-top", "5")
    _figures(out, "PostgreSQL")
    assert re.search(r"^profile of GET /runs/[0-9a-f-]{36} \(one request", out, re.M), out
    assert "orchestration/web/pages.py" in out, out
