"""The benchmarks still run (tiny sizes), and what they assert holds: the kept
counts select the same projects as the ticket's literal query, every planted
cluster is found, a nightly run finishes beside a bare chord."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.store.migrate import ROOT

pytestmark = pytest.mark.integration


def _bench(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(Path(ROOT) / "bench" / name), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_eligibility_benchmark(pg_template):
    out = _bench(
        "eligibility.py",
        "--projects",
        "300",
        "--memories",
        "20000",
        "--repeat",
        "2",
        "--pending",
        "20",
        "--rounds",
        "1",
        "--writes",
        "10",
        "--bulk",
        "100",
    )
    eligible = set(re.findall(r"median of 2, ([\d,]+) eligible", out))
    assert len(eligible) == 1 and eligible != {"0"}  # five queries, one answer
    assert re.search(r"speed-up ratio [\d.]+x", out) and "one-row INSERT + commit" in out
    assert "Seq Scan on project_memory_counts" in out


def test_consolidation_benchmark():
    out = _bench("consolidation.py", "--sizes", "300", "--databases", "sqlite")
    clusters = re.search(r"clusters (\d+) \(planted (\d+)\)\s+archived (\d+) \(planted (\d+)\)", out)
    assert clusters and clusters[1] == clusters[2] and clusters[3] == clusters[4], out


def test_orchestration_benchmark(pg_template, redis_url):
    out = _bench("orchestration.py", "--sizes", "10")
    assert re.search(r"ratio [\d.]+ at N=10", out), out
    assert re.search(r"database round trips per job: \d+ \(\d+ statements in \d+ transactions\)", out), out
