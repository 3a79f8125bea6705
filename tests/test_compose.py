"""compose.yaml cannot run here (no Docker engine), so check its structure."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_services_and_their_order():
    services = _compose()["services"]
    assert set(services) == {"redis", "rabbitmq", "postgres", "migrate", "worker", "beat", "web"}
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]  # only with --profile rabbitmq
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["rabbitmq"] == {"condition": "service_healthy", "required": False}


def test_one_image_built_from_the_dockerfile():
    services = _compose()["services"]
    assert services["migrate"]["build"] == "."
    assert {services[n]["image"] for n in ("migrate", "worker", "beat", "web")} == {"orchestration:local"}
    assert (ROOT / "Dockerfile").exists()


def test_commands_match_the_documented_entry_points():
    services = _compose()["services"]
    assert services["migrate"]["command"] == ["orchestration", "db", "upgrade"]
    assert services["worker"]["command"][:4] == ["celery", "-A", "orchestration.celery_app", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "orchestration.celery_app", "beat"]
    assert services["web"]["command"][:2] == ["orchestration", "web"]  # SPEC §6


def test_the_dashboard_is_published_on_loopback_only_and_takes_the_token():
    web = _compose()["services"]["web"]
    assert all(port.startswith("127.0.0.1:") for port in web["ports"])
    assert "ORCHESTRATION_WEB_TOKEN" in web["environment"]
    assert web["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_postgres_has_a_volume_and_health_check():
    postgres = _compose()["services"]["postgres"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_services_share_settings_that_pass_validation():
    from orchestration.settings import load_settings

    env = _compose()["services"]["worker"]["environment"]
    resolved = {
        k: v.replace("${POSTGRES_PASSWORD:-orchestration}", "pw")
        .replace("${ORCHESTRATION_SCHEDULE:-0 2 * * *}", "0 2 * * *")
        .replace("${ORCHESTRATION_TIMEZONE:-UTC}", "UTC")
        .replace("${ORCHESTRATION_NOTIFY_URL:-}", "")
        for k, v in env.items()
    }
    for broker, expected in ((None, "redis://redis:6379/0"), ("amqp://o:pw@rabbitmq:5672//", "amqp://o:pw@rabbitmq")):
        default = "redis://redis:6379/0" if broker is None else broker
        chosen = {
            **resolved,
            "ORCHESTRATION_BROKER_URL": resolved["ORCHESTRATION_BROKER_URL"].replace(
                "${ORCHESTRATION_BROKER_URL:-redis://redis:6379/0}", default
            ),
        }
        settings = load_settings(chosen)
        assert settings.database_url.startswith("postgresql+psycopg://")
        assert settings.broker_url.startswith(expected)
