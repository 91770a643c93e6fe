"""The private Docker configuration a Compose run gets when its task carries registry credentials."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from stella.agent.drivers.compose_host import registry_config
from stella.contracts.agent import RegistryCredential

SECRET = "a-long-registry-secret"


def test_the_task_credentials_live_in_a_private_config_only_during_the_run(tmp_path: Path) -> None:
    plugins = tmp_path / "home-docker" / "cli-plugins"
    plugins.mkdir(parents=True)
    credentials = [
        RegistryCredential(registry="127.0.0.1:5000", username="ci", password=SECRET),
        RegistryCredential(registry="docker.io", username="hub", password="hub-secret"),
    ]
    with registry_config(credentials, {"DOCKER_CONFIG": str(plugins.parent)}) as env:
        directory = Path(env["DOCKER_CONFIG"])
        config = directory / "config.json"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert (directory / "cli-plugins").resolve() == plugins.resolve()
        auths = json.loads(config.read_text())["auths"]
        assert base64.b64decode(auths["127.0.0.1:5000"]["auth"]).decode() == f"ci:{SECRET}"
        assert base64.b64decode(auths["https://index.docker.io/v1/"]["auth"]).decode() == "hub:hub-secret"
    assert not directory.exists()
    assert plugins.is_dir()  # the link went, not what it pointed at


def test_the_config_is_removed_when_the_run_fails_and_absent_without_credentials() -> None:
    credential = RegistryCredential(registry="127.0.0.1:5000", username="ci", password=SECRET)
    seen: list[Path] = []

    def run() -> None:
        with registry_config([credential], {}) as env:
            seen.append(Path(env["DOCKER_CONFIG"]))
            raise RuntimeError("compose failed")

    with pytest.raises(RuntimeError):
        run()
    assert seen and not seen[0].exists()
    with registry_config([], {}) as env:
        assert env == {}
