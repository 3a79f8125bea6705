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
        ("DEFAULT_THRESHOLD", "-1", "must be at least 1"),
        ("DEFAULT_THRESHOLD", "0", "must be at least 1"),
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
    # libpq takes the password as a query parameter too
    assert mask_url("postgresql://orch@db/orch?password=s3cret&sslmode=require") == (
        "postgresql://orch@db/orch?password=***&sslmode=require"
    )
    assert mask_url("postgresql://db/orch?sslmode=require&sslpassword=k3y#x") == (
        "postgresql://db/orch?sslmode=require&sslpassword=***#x"
    )
    assert mask_url("redis://cache/0?TOKEN=abc") == "redis://cache/0?TOKEN=***"
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


# Passwords with unencoded reserved characters: the secret is "Sx1<c>Qy2", and neither
# half may appear wherever the URL is shown (urlsplit cuts such URLs in the wrong place).
MALFORMED_URLS = [
    "postgresql://u:Sx1#Qy2@db/x",
    "postgresql+psycopg://u:Sx1/Qy2@db:5432/x",
    "postgresql://u:Sx1?Qy2@db/x?sslmode=require",
    "redis://:Sx1/Qy2@h:6379/0",
    "redis://:1234/Qy2@h:6379/0",
    "amqp://u:Sx1?Qy2@h//",
    "amqp://u:Sx1@Qy2@h//",
    "redis://u:Sx1@Qy2#Zz9@h:6379/0",
    "redis://u:Sx1:Qy2@h:6379/0",
    "redis://u:Sx1[Qy2@h:6379/0",
    "redis://u:Sx1 Qy2@h:6379/0",
    "redis://u:Sx1%Qy2@h:6379/0",
    "redis://u:Sx1\nQy2@h:6379/0",
    "sentinel://:Sx1@h1:26379;sentinel://:Qy2@h2:26379",
    "u:Sx1#Qy2@h/db",
    "//u:Sx1/Qy2@h/db",
    "redis:/u:Sx1/Qy2@h",
    "redis::Sx1/Qy2@h",
    "://u:Sx1#Qy2@h",
    "postgresql://u:Sx1",
    "postgresql://u:Sx1#Qy2",
    "postgresql://u:Sx1/Qy2",
    "redis://[::1]:Sx1/Qy2",
    " redis://u:Sx1/Qy2@h ",
]
SECRET_PARTS = ("Sx1", "Qy2", "Zz9", "1234")


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_a_password_is_masked_however_malformed_the_url(url):
    shown = mask_url(url)
    assert "***" in shown
    for part in SECRET_PARTS:
        assert part not in shown, shown


@pytest.mark.parametrize("url", MALFORMED_URLS)
@pytest.mark.parametrize("name", ["DATABASE_URL", "BROKER_URL", "RESULT_BACKEND", "NOTIFY_URL"])
def test_a_malformed_url_setting_is_refused_without_showing_its_password(name, url):
    try:
        load_settings({f"ORCHESTRATION_{name}": url})
    except SettingsError as exc:
        message = str(exc)
        assert message.startswith(f"ORCHESTRATION_{name}=") and "\n" not in message
        for part in SECRET_PARTS:
            assert part not in message, message


def test_a_password_cut_by_an_unencoded_slash_is_refused_not_misread():
    """urlsplit reads "redis://:1234/Qy2@h:6379/0" as port 1234 with the rest as the path:
    the client would connect elsewhere and show half the password as its database."""
    for name, url in [
        ("BROKER_URL", "redis://:1234/Qy2@h:6379/0"),
        ("BROKER_URL", "amqp://u:p@ss/x@h//"),
        ("DATABASE_URL", "postgresql://u:Sx1#Qy2@db/x"),
    ]:
        with pytest.raises(SettingsError) as info:
            load_settings({f"ORCHESTRATION_{name}": url})
        assert "percent-encode" in str(info.value)
    # Encoded, the same passwords are fine; an "@" in a SQLite path is not a password.
    assert load_settings({"ORCHESTRATION_BROKER_URL": "redis://:1234%2FQy2@h:6379/0"}).broker_url.endswith("@h:6379/0")
    sqlite = "sqlite:////data/a@b.db"
    assert load_settings({"ORCHESTRATION_DATABASE_URL": sqlite}).database_url == sqlite


def test_masking_keeps_what_is_no_secret():
    assert mask_url("redis://[::1]:6379/0") == "redis://[::1]:6379/0"
    assert mask_url("sqlite:///var/orchestration.db") == "sqlite:///var/orchestration.db"
    assert mask_url("amqp://guest@rabbit//") == "amqp://guest@rabbit//"
    assert mask_url("redis://u:Sx1/Qy2@cache:6379/0") == "redis://u:***@cache:6379/0"
    assert mask_url("amqp://u:Sx1?Qy2@rabbit//") == "amqp://u:***@rabbit//"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("TRUE", True), (" Yes ", True), ("1", True), ("false", False), ("No", False), ("0", False)],
)
def test_notify_allow_private_reads_true_and_false(raw, expected):
    assert load_settings({"ORCHESTRATION_NOTIFY_ALLOW_PRIVATE": raw}).notify_allow_private is expected
    assert load_settings({}).notify_allow_private is False


@pytest.mark.parametrize("raw", ["maybe", "2", "on", "enabled"])
def test_a_bad_notify_allow_private_names_the_variable(raw):
    with pytest.raises(SettingsError) as info:
        load_settings({"ORCHESTRATION_NOTIFY_ALLOW_PRIVATE": raw})
    assert str(info.value).startswith("ORCHESTRATION_NOTIFY_ALLOW_PRIVATE=") and "true or false" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/Xy9SecretPath",
        "http://[fe80::1]/Xy9SecretPath",
        "http://[::ffff:169.254.169.254]/Xy9SecretPath",
        "http://2852039166/Xy9SecretPath",
    ],
)
def test_a_link_local_webhook_is_refused_at_load_even_with_private_allowed(url):
    for allow in ("false", "true"):
        with pytest.raises(SettingsError) as info:
            load_settings({"ORCHESTRATION_NOTIFY_URL": url, "ORCHESTRATION_NOTIFY_ALLOW_PRIVATE": allow})
        message = str(info.value)
        assert message.startswith("ORCHESTRATION_NOTIFY_URL=") and "link-local" in message
        assert "Xy9SecretPath" not in message  # a webhook's path may be its secret


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/hook", "http://10.0.0.5/hook", "https://[::1]/hook", "http://[fd00::5]/hook"]
)
def test_a_private_webhook_address_needs_allow_private(url):
    with pytest.raises(SettingsError) as info:
        load_settings({"ORCHESTRATION_NOTIFY_URL": url})
    assert "ORCHESTRATION_NOTIFY_ALLOW_PRIVATE" in str(info.value)
    allowed = load_settings({"ORCHESTRATION_NOTIFY_URL": url, "ORCHESTRATION_NOTIFY_ALLOW_PRIVATE": "true"})
    assert allowed.notify_url == url and allowed.notify_allow_private is True


def test_only_a_literal_webhook_address_is_checked_at_load_a_host_name_when_sending():
    with pytest.raises(SettingsError):
        load_settings({"ORCHESTRATION_NOTIFY_URL": "http://127.0.0.1:9/hook"})
    for url in ("http://localhost:9/hook", "https://hooks.example/a@b"):
        assert load_settings({"ORCHESTRATION_NOTIFY_URL": url}).notify_url == url


def test_a_webhook_error_shows_no_path_and_no_user_info():
    with pytest.raises(SettingsError) as info:
        load_settings({"ORCHESTRATION_NOTIFY_URL": "ftp://who:Sx1@hooks.example/services/Xy9SecretPath"})
    message = str(info.value)
    assert "hooks.example" in message and "URL scheme must be one of" in message
    for secret in ("who", "Sx1", "services", "Xy9SecretPath"):
        assert secret not in message


def test_an_unencoded_at_sign_in_a_password_is_refused_without_showing_it():
    """SQLAlchemy ends the user info at the first "@": the password's tail would be shown as the host."""
    env = {"ORCHESTRATION_DATABASE_URL": "postgresql+psycopg://postgres:hunter2@topsecret@127.0.0.1:5432/x"}
    with pytest.raises(SettingsError, match="percent-encode") as caught:
        load_settings(env)
    assert "hunter2" not in str(caught.value) and "topsecret" not in str(caught.value)


def test_a_database_driver_orchestration_does_not_ship_is_refused_at_start():
    with pytest.raises(SettingsError) as refused:
        load_settings({"ORCHESTRATION_DATABASE_URL": "postgresql+psycopg2://orch:s3cret@db/orch"})
    assert str(refused.value) == (
        "ORCHESTRATION_DATABASE_URL='postgresql+psycopg2://orch:***@db/orch': driver 'psycopg2' is not supported: "
        "use postgresql:// or postgresql+psycopg://"
    )
    assert load_settings({"ORCHESTRATION_DATABASE_URL": "postgresql+psycopg://db/orch"}).database_url.endswith("/orch")
    assert load_settings({"ORCHESTRATION_DATABASE_URL": "sqlite+pysqlite:///x.db"}).is_sqlite
