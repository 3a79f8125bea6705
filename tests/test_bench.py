"""The benchmarks still run (tiny sizes), and what they assert holds: the kept
counts select the same projects as the ticket's literal query, every planted
cluster is found, a nightly run finishes beside a plain chord, a realistic night and
the fan-out run to their end."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.store.migrate import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.bench]


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


def test_incremental_benchmark():
    out = _bench("incremental.py", "--sizes", "2000", "--databases", "sqlite", "--repeat", "1")
    assert re.search(r"nothing new: incremental [\d.]+s", out), out
    assert re.search(r"full / incremental [\d.]+x; plans agree", out), out
    warm = r"warm \(the same pass again in its process\): incremental [\d.]+s, full [\d.]+s; full / incremental [\d.]+x"
    assert re.search(warm, out), out


def test_orchestration_benchmark(pg_template, redis_url):
    out = _bench("orchestration.py", "--sizes", "10", "--repeat", "1")
    assert re.search(r"ratio [\d.]+ at N=10 \(nightly / plain\)", out), out
    assert re.search(r"all runs: plain [\d.]+; plain \+ events [\d.]+; plain \+ INFO [\d.]+; nightly [\d.]+", out), out
    assert re.search(r"database round trips per job: \d+ \(\d+ statements in \d+ transactions\)", out), out


def test_night_benchmark(pg_template, redis_url):
    out = _bench("night.py", "--projects", "3", "--min", "200", "--max", "400", "--repeat", "2")
    assert re.search(r"3 projects, [\d,]+ memories", out), out
    for name in ("in-process", "1-process worker", "2-process worker", "2-process, BLAS unpinned"):
        assert len(re.findall(rf"^{re.escape(name)}\s+[\d.]+s$", out, re.M)) == 2, out  # one per round
        assert re.search(rf"^{re.escape(name)}\s+median\s+[\d.]+s of [\d.]+, [\d.]+$", out, re.M), out
    assert re.search(r"speedup of the 2-process worker over in-process: [\d.]+", out), out


def test_fanout_benchmark(pg_template, redis_url):
    out = _bench("fanout.py", "--sizes", "20,60")
    rows = re.findall(r"^\s+(20|60)\s+[\d.]+s\s+[\d.]+s\s+[\d.-]+\s+[\d.]+MB\s+[\d.]+s$", out, re.M)
    assert rows == ["20", "60"], out
    assert re.search(r"run per project grows [\d.]+x from N=20 to N=60", out), out


def test_quality_benchmark():
    """Without the optional model: the lexical fallback, scored against the labels."""
    import json

    report = json.loads(_bench("quality.py", "--thresholds", "0.7", "--json", "--check"))
    off, on = report["results"]
    assert report["model"].startswith("lexical fallback") and report["same_pairs"] == 54
    assert (off["value_guard"], on["value_guard"]) == (False, True)
    assert on["value_merges"] == 0 < off["value_merges"] and on["pairs_kept_apart"] > 0
    assert on["precision"] >= 0.97
