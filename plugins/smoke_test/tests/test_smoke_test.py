"""The smoke-test step plugin, run through the isolated runner."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from stella.plugins import STEP_METHOD, InstalledPlugin, PluginRemoteError, PluginRunner, load_plugin


@pytest.fixture(scope="module")
def plugin() -> InstalledPlugin:
    return load_plugin(Path(__file__).parents[1])


async def execute(plugin: InstalledPlugin, config: dict[str, Any]) -> Any:
    params = {"config": config, "inputs": {}, "attempt": 1, "idempotency_key": "k"}
    return await PluginRunner().call(plugin, STEP_METHOD, params)


async def test_a_passing_command_reports_its_output(plugin: InstalledPlugin) -> None:
    answer = await execute(plugin, {"command": ["/bin/echo", "hello", "world"]})
    assert answer["succeeded"] is True
    assert answer["outputs"] == {"exit_code": 0, "stdout": "hello world\n", "stderr": ""}
    assert "hello world" in answer["logs"]


async def test_an_unexpected_exit_code_fails_the_step(plugin: InstalledPlugin) -> None:
    answer = await execute(plugin, {"command": [sys.executable, "-c", "import sys; sys.exit(3)"]})
    assert answer["succeeded"] is False
    assert answer["outputs"]["exit_code"] == 3
    assert answer["error"] == "exit code 3, expected 0"


async def test_the_expected_exit_code_can_be_configured(plugin: InstalledPlugin) -> None:
    config = {"command": [sys.executable, "-c", "import sys; sys.exit(3)"], "expect_exit_code": 3}
    assert (await execute(plugin, config))["succeeded"] is True


async def test_no_shell_interprets_the_arguments(plugin: InstalledPlugin) -> None:
    answer = await execute(plugin, {"command": ["/bin/echo", "$(id)", ";", "ls", "|", "cat"]})
    assert answer["outputs"]["stdout"] == "$(id) ; ls | cat\n"


async def test_a_missing_program_fails_the_step(plugin: InstalledPlugin) -> None:
    answer = await execute(plugin, {"command": ["/no/such/program"]})
    assert (answer["succeeded"], answer["error"]) == (False, "no program '/no/such/program'")


async def test_a_command_past_its_timeout_is_killed(plugin: InstalledPlugin) -> None:
    answer = await execute(plugin, {"command": ["/bin/sleep", "60"], "timeout_s": 0.5})
    assert answer["succeeded"] is False
    assert "longer than 0.5 s" in answer["error"]


async def test_an_unknown_method_is_a_json_rpc_error(plugin: InstalledPlugin) -> None:
    with pytest.raises(PluginRemoteError, match="unknown method") as caught:
        await PluginRunner().call(plugin, "gate.evaluate", {})
    assert caught.value.rpc_code == -32601


def test_the_config_schema_wants_a_list_of_arguments(plugin: InstalledPlugin) -> None:
    assert plugin.manifest.config_errors({"command": ["/bin/true"]}) == []
    assert plugin.manifest.config_errors({"command": "/bin/true; rm -rf /"}) != []
    assert plugin.manifest.config_errors({"command": []}) != []
