"""The compose file validates, and a container configured wrongly exits with one clear line and a code.

A bad configuration must end the container at once (or after the start-up timeout for a server that never
answers) with exactly one error line and no traceback, so an operator reads what to fix instead of a crash
loop: 78 for a configuration error, 69 for a dependency that did not answer.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from stella.kit.startup import EX_CONFIG, EX_UNAVAILABLE

from .conftest import COMPOSE_FILE, DATABASE_ROLES, ROOT, compose_command, docker_run, role_passwords

pytestmark = pytest.mark.docker

SERVICES = ("release", "promotion", "approval", "workflow", "deployment", "evidence", "gateway")


def _config_env(tmp_path: Path) -> Path:
    env_file = tmp_path / "config.env"
    variables = {"POSTGRES_PASSWORD": "not-used-here", **role_passwords()}
    env_file.write_text("".join(f"{key}={value}\n" for key, value in variables.items()))
    return env_file


@pytest.mark.parametrize("tool", ["docker compose", "docker-compose"])
def test_the_compose_file_validates(tool: str, tmp_path: Path) -> None:
    argv = tool.split()
    if subprocess.run([*argv, "version"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip(f"{tool} is not installed here")
    base = [*argv, "-f", str(COMPOSE_FILE), "--env-file", str(_config_env(tmp_path))]
    checked = subprocess.run([*base, "config", "--quiet"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert checked.returncode == 0, checked.stderr
    services = subprocess.run([*base, "config", "--services"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert set(SERVICES) <= set(services.stdout.split()), services.stdout

    # Without a password the file refuses to start anything and says what to set.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    unset = subprocess.run(
        [*argv, "-f", str(COMPOSE_FILE), "--env-file", str(empty), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"},
    )
    assert unset.returncode != 0
    assert "POSTGRES_PASSWORD" in unset.stdout + unset.stderr


def test_the_compose_file_publishes_one_port_and_checks_every_service(tmp_path: Path) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no compose tool is installed")
    rendered = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "--env-file", str(_config_env(tmp_path)), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    ).stdout
    services = yaml.safe_load(rendered)["services"]
    published = sorted(name for name, spec in services.items() if spec.get("ports"))
    assert published == ["proxy"]
    for name in SERVICES:
        spec = services[name]
        assert spec["restart"] == "unless-stopped", name
        assert spec["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully", name
        assert spec["environment"]["STELLA_DATABASE_POOL_MODE"] == "transaction", name
        # Each service logs in as its own role: no owner's credentials in its environment.
        environment = spec["environment"]
        assert environment["STELLA_DATABASE_URL"] == f"postgresql://pgbouncer:6432/{name}", name
        assert environment["STELLA_DATABASE_DIRECT_URL"] == "postgresql://postgres:5432/stella", name
        assert environment["STELLA_DATABASE_SERVICE_ROLES"] == "true", name
        assert environment[f"STELLA_{name.upper()}_DATABASE_PASSWORD"].startswith("pw-"), name
        assert "not-used-here" not in json.dumps(environment), name
        assert spec.get("healthcheck", {}).get("test") != ["NONE"], name
    assert services["gateway"]["healthcheck"]["test"][-1].endswith("/readyz")
    # The bootstrap step holds the owner's password and every role's, PgBouncer the roles' passwords.
    for name in DATABASE_ROLES:
        variable = f"STELLA_{name.upper()}_DATABASE_PASSWORD"
        assert services["bootstrap"]["environment"][variable].startswith("pw-"), name
        assert services["pgbouncer"]["environment"][f"PGBOUNCER_PASSWORD_{name.upper()}"].startswith("pw-"), name


def _one_error_line(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The single error record a container printed; fails on tracebacks or several errors."""
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    errors = []
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
            errors.append(record)
    assert len(errors) == 1, output
    return errors[0]


@pytest.mark.parametrize("service", SERVICES)
def test_no_database_url_exits_at_once_with_one_line(stella_image: str, service: str) -> None:
    command = ["stella-gateway", "serve"] if service == "gateway" else ["python", "-m", f"stella.{service}"]
    done = docker_run(stella_image, *command, env={"STELLA_NATS_URL": "nats://nats.invalid:4222"})
    assert done.returncode == EX_CONFIG, done.stdout + done.stderr
    error = _one_error_line(done)
    assert "STELLA_DATABASE_URL is not set" in str(error["msg"]), error


def test_a_malformed_url_is_a_configuration_error(stella_image: str) -> None:
    done = docker_run(
        stella_image,
        "python",
        "-m",
        "stella.promotion",
        env={"STELLA_DATABASE_URL": "postgres-at-db:5432", "STELLA_NATS_URL": "http://nats:4222"},
    )
    assert done.returncode == EX_CONFIG
    message = str(_one_error_line(done)["msg"])
    assert "STELLA_DATABASE_URL" in message and "STELLA_NATS_URL" in message, message


def test_a_wrong_nats_url_exits_after_the_start_up_timeout(
    stella_image: str, fresh_database: str, unique_id: str
) -> None:
    done = docker_run(
        stella_image,
        "python",
        "-m",
        "stella.workflow",
        env={
            "STELLA_DATABASE_URL": fresh_database,
            "STELLA_NATS_URL": "nats://127.0.0.1:1",
            "STELLA_STARTUP_TIMEOUT_S": "3",
        },
        network="host",
    )
    assert done.returncode == EX_UNAVAILABLE, done.stdout + done.stderr
    message = str(_one_error_line(done)["msg"])
    assert "NATS at nats://127.0.0.1:1 (STELLA_NATS_URL) did not answer within 3s" in message, message


def test_a_missing_key_volume_stops_the_evidence_service(
    stella_image: str, fresh_database: str, nats_url: str, stella_namespace: str
) -> None:
    done = docker_run(
        stella_image,
        "python",
        "-m",
        "stella.evidence",
        env={
            "STELLA_DATABASE_URL": fresh_database,
            "STELLA_NATS_URL": nats_url,
            "STELLA_NATS_NAMESPACE": stella_namespace,
        },
        network="host",
    )
    assert done.returncode == EX_CONFIG, done.stdout + done.stderr
    message = str(_one_error_line(done)["msg"])
    assert "no evidence signing key at /var/lib/stella/keys/evidence-signing-key.pem" in message, message


def test_a_pooler_that_does_not_set_the_schema_is_refused(
    stella_image: str, fresh_database: str, nats_url: str, stella_namespace: str
) -> None:
    """In transaction pooling mode the pooler must set search_path; a plain connection does not."""
    done = docker_run(
        stella_image,
        "python",
        "-m",
        "stella.release",
        env={
            "STELLA_DATABASE_URL": fresh_database,
            "STELLA_DATABASE_DIRECT_URL": fresh_database,
            "STELLA_DATABASE_POOL_MODE": "transaction",
            "STELLA_NATS_URL": nats_url,
            "STELLA_NATS_NAMESPACE": stella_namespace,
        },
        network="host",
    )
    assert done.returncode == EX_CONFIG, done.stdout + done.stderr
    message = str(_one_error_line(done)["msg"])
    assert "not the 'release' schema" in message, message
