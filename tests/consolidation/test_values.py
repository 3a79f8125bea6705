"""What counts as a value, how spellings are normalized, and when two memories conflict."""

import pytest

from orchestration.consolidation.values import conflict, extract


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The build takes 40 s on CI", {"duration": {"40"}}),
        ("takes 4 min, 800 ms, 3 h and 2 weeks", {"duration": {"240", "0.8", "10800", "1209600"}}),
        ("coverage above 85%, or 0.18 percent, 7 per cent, 3 pct", {"percent": {"85", "0.18", "7", "3"}}),
        ("needs 2 GB, 2GB, 512 MiB and 100 bytes", {"size": {"2000000000", "536870912", "100"}}),
        ("fixed in v2.0.25, 4.2.1 and 2.0.0-rc1", {"version": {"2.0.25", "4.2.1", "2.0.0-rc1"}}),
        (
            "read /etc/nginx/conf.d/gateway.conf and src/app/main.py",
            {"path": {"/etc/nginx/conf.d/gateway.conf", "src/app/main.py"}},
        ),  # fmt: skip
        ("files go to migrations/versions/ and ./run.sh", {"path": {"migrations/versions", "./run.sh"}}),
        (r"logs in C:\logs\app.log and the rest", {"path": {r"C:\logs\app.log"}}),
        ("see https://pypi.example.com/simple/.", {"url": {"https://pypi.example.com/simple"}}),
        ("on 2026-03-31 at 03:00 and 9:30 pm", {"date": {"2026-03-31"}, "time": {"03:00", "9:30pm"}}),
        (
            "commit 3F9C2AB, id 123e4567-e89b-12d3-a456-426614174000",
            {"hash": {"3f9c2ab", "123e4567-e89b-12d3-a456-426614174000"}},
        ),  # fmt: skip
        (
            "error E0502, CVE-2021-44228, ORCHESTRATION_LOG_LEVEL and #1432",
            {"code": {"E0502", "CVE-2021-44228", "ORCHESTRATION_LOG_LEVEL", "#1432"}},
        ),  # fmt: skip
        ("budget $12,000 and 40 EUR", {"money": {"usd 12000", "eur 40"}}),
        ("1,200,000 rows, 1.2 million rows, 1.80 and 5k, the 3rd run", {"number": {"1200000", "1.8", "5000", "3rd"}}),
        ("and/or km/h 24/7 three retries", {"number": {"24", "7"}}),
        ("Always run the linter before pushing.", {}),
    ],
)
def test_values_by_kind(text, expected):
    assert extract(text) == {kind: frozenset(values) for kind, values in expected.items()}


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("takes 40 s", "takes 40 seconds"),
        ("takes 2 min", "takes 120 s"),
        ("1,000 rows", "1000 rows"),
        ("1.2 million rows", "1,200,000 rows"),
        ("512 MB", "512MB"),
        ("v1.4.2", "version 1.4.2"),
        ("85%", "85 percent"),
        ("$12,000", "$12000"),
    ],
)
def test_spellings_of_one_value_compare_equal(a, b):
    assert extract(a) == extract(b)
    assert not conflict(extract(a), extract(b))


@pytest.mark.parametrize(
    ("a", "b", "apart"),
    [
        ("The build takes 40 s", "The build takes 4 min", True),
        ("index shed 1.8 points, or 0.18 percent, to 991", "shed 2.38 points, or 0.24 percent, at 995.10", True),
        ("set ORCHESTRATION_LOG_FORMAT to json", "set ORCHESTRATION_LOG_LEVEL to json", True),
        ("fixed by commit 3f9c2ab", "fixed by commit 8d41e07", True),
        ("512 MB", "512 MiB", True),  # not the same size
        ("takes 40 s", "takes 40 s locally and 60 s on CI", False),  # adds a value: no conflict
        ("retry the sandbox", "retry the sandbox 3 times", False),  # no value of that kind on one side
        ("takes 40 s", "retries 40 times", False),  # different kinds never conflict
    ],
)
def test_conflict(a, b, apart):
    assert conflict(extract(a), extract(b)) is apart
    assert conflict(extract(b), extract(a)) is apart
