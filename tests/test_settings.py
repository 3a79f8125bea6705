from pathlib import Path

import pytest

from orchestration.settings import Settings, SettingsError, load_settings, mask_url


def test_defaults_match_the_contract():
    s = load_settings({})
    assert s == Settings()
    assert s.database_url == "sqlite:///var/orchestration.db"
    assert s.broker_url == "redis://localhost:6379/0"
    assert s.result_backend == "redis://localhost:6379/1"
    assert s.schedule == "0 2 * * *"
    assert (s.timezone, s.default_threshold, s.max_retries, s.retry_backoff_max) == ("UTC", 1000, 3, 600)
    assert (s.job_time_limit, s.run_deadline, s.audit_retention_days) == (1800, 21600, 90)
    assert s.project_rate_limit is None and s.notify_url is None
    assert (s.log_format, s.log_level) == ("auto", "INFO")


def test_values_are_read_from_the_environment():
    s = load_settings(
        {
            "ORCHESTRATION_DATABASE_URL": "postgresql+psycopg://u:p@db:5432/x",
            "ORCHESTRATION_SCHEDULE": "30 3 * * 1-5",
            "ORCHESTRATION_TIMEZONE": "Europe/Berlin",
            "ORCHESTRATION_DEFAULT_THRESHOLD": "50",
            "ORCHESTRATION_PROJECT_RATE_LIMIT": "30/m",
            "ORCHESTRATION_NOTIFY_URL": "https://hooks.example/x",
            "ORCHESTRATION_LOG_FORMAT": "console",
            "ORCHESTRATION_LOG_LEVEL": "debug",
        }
    )
    assert s.default_threshold == 50 and s.project_rate_limit == "30/m"
    assert s.crontab.hour == {3} and s.crontab.minute == {30} and s.crontab.day_of_week == {1, 2, 3, 4, 5}
    assert s.tz.key == "Europe/Berlin"
    assert (s.log_format, s.log_level) == ("console", "DEBUG")


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        load_settings({}).max_retries = 5


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("SCHEDULE", "0 2 * *", "not a valid cron expression"),
        ("SCHEDULE", "61 2 * * *", "not a valid cron expression"),
        ("SCHEDULE", "0 2 31 2 *", "not a valid cron expression"),
        ("TIMEZONE", "Mars/Olympus", "unknown time zone"),
        ("DEFAULT_THRESHOLD", "-1", "must be at least 0"),
        ("DEFAULT_THRESHOLD", "lots", "must be a whole number"),
        ("MAX_RETRIES", "-3", "must be at least 0"),
        ("RETRY_BACKOFF_MAX", "0", "must be at least 1"),
        ("JOB_TIME_LIMIT", "1.5", "must be a whole number"),
        ("RUN_DEADLINE", "-10", "must be at least 1"),
        ("AUDIT_RETENTION_DAYS", "0", "must be at least 1"),
        ("PROJECT_RATE_LIMIT", "fast", "must look like 30/m"),
        ("DATABASE_URL", "mysql://u@h/db", "URL scheme must be one of"),
        ("BROKER_URL", "kafka://h:9092", "URL scheme must be one of"),
        ("BROKER_URL", "redis://h:notaport/0", "malformed URL"),
        ("RESULT_BACKEND", "rpc://", "URL scheme must be one of"),
        ("NOTIFY_URL", "ftp://hooks.example/x", "URL scheme must be one of"),
        ("LOG_FORMAT", "xml", "must be one of auto, json, console"),
        ("LOG_LEVEL", "LOUD", "must be one of"),
    ],
)
def test_bad_values_name_the_variable_on_one_line(name, value, problem):
    with pytest.raises(SettingsError) as info:
        load_settings({f"ORCHESTRATION_{name}": value})
    message = str(info.value)
    assert message.startswith(f"ORCHESTRATION_{name}=")
    assert problem in message
    assert "\n" not in message


def test_passwords_are_masked_in_urls_and_errors():
    assert mask_url("postgresql+psycopg://orch:s3cret@db:5432/orch") == "postgresql+psycopg://orch:***@db:5432/orch"
    assert mask_url("redis://:hunter2@cache:6379/0") == "redis://:***@cache:6379/0"
    assert mask_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert mask_url("redis://u:pw@cache:notaport/0") == "redis://u:***@cache:notaport/0"
    with pytest.raises(SettingsError) as info:
        load_settings({"ORCHESTRATION_BROKER_URL": "redis://u:hunter2@cache:notaport/0"})
    assert "hunter2" not in str(info.value) and "malformed URL" in str(info.value)
    with pytest.raises(SettingsError) as info:
        load_settings({"ORCHESTRATION_DATABASE_URL": "mysql://root:s3cret@db/x"})
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


def test_a_bad_setting_stops_the_cli_with_one_line(monkeypatch):
    from click.testing import CliRunner

    from orchestration import cli
    from orchestration.settings import get_settings

    monkeypatch.setenv("ORCHESTRATION_TIMEZONE", "Nowhere/Special")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli.main, ["db", "upgrade"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: ORCHESTRATION_TIMEZONE='Nowhere/Special': unknown time zone "
        "(use an IANA name such as UTC or Europe/Berlin)"
    ]


def _documented_defaults(path: Path) -> dict[str, str]:
    """``variable -> default`` from a markdown table whose rows start with `ORCHESTRATION_...`."""
    defaults = {}
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`ORCHESTRATION_"):
            defaults[cells[0].strip("`")] = cells[1].strip("`")
    return defaults


def _documents() -> list[Path]:
    root = Path(__file__).resolve().parents[1]
    spec = root.parent / "shared" / "SPEC.md"
    return [root / "README.md"] + ([spec] if spec.exists() else [])


@pytest.mark.parametrize("document", _documents(), ids=lambda path: path.name)
def test_defaults_equal_the_documented_table(document: Path):
    """What an operator reads as the default is what a process uses when the variable is unset."""
    documented = _documented_defaults(document)
    assert documented, f"no settings table found in {document}"
    defaults = Settings()
    for variable, shown in documented.items():
        field = variable.removeprefix("ORCHESTRATION_").lower()
        if not hasattr(defaults, field):
            continue  # documented for a later part (e.g. the dashboard's token)
        value = getattr(defaults, field)
        expected = "unset" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        assert shown == expected, f"{document.name}: {variable} documented as {shown!r}, default is {expected!r}"
