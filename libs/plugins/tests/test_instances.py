"""A tenant's plugin instances: only enabled ones run, from inside the plugin path, as installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stella.plugins import PluginNotEnabled, PluginNotFound, TenantPlugins

from .conftest import write_plugin


def _instance(directory: Path, *, enabled: bool = True, config: dict[str, Any] | None = None) -> dict[str, Any]:
    manifest = json.loads((directory / "stella-plugin.json").read_text())
    full = {"description": "", "config_schema": {"type": "object"}, "permissions": [], **manifest}
    return {
        "plugin_id": manifest["id"],
        "version": manifest["version"],
        "directory": str(directory),
        "manifest": full,
        "enabled": enabled,
        "config": config or {},
    }


def test_an_enabled_instance_runs_with_its_config_under_the_steps(tmp_path: Path) -> None:
    write_plugin(tmp_path, "runs", "answer({})")
    plugins = TenantPlugins({"runs": _instance(tmp_path / "runs", config={"a": 1, "b": 1})}, [tmp_path], "step")
    found = plugins.get("runs")
    assert found.params_config({"b": 2}) == {"a": 1, "b": 2}
    assert plugins.problem("runs") is None
    assert set(plugins.checkers()) == {"runs"}


def test_a_missing_or_disabled_instance_is_not_enabled(tmp_path: Path) -> None:
    write_plugin(tmp_path, "off", "answer({})")
    plugins = TenantPlugins({"off": _instance(tmp_path / "off", enabled=False)}, [tmp_path], "step")
    with pytest.raises(PluginNotEnabled, match="disabled"):
        plugins.get("off")
    with pytest.raises(PluginNotEnabled, match="no plugin instance"):
        plugins.get("absent")
    assert plugins.checkers() == {}


def test_a_plugin_outside_the_path_or_changed_since_install_does_not_run(tmp_path: Path) -> None:
    write_plugin(tmp_path / "elsewhere", "moved", "answer({})")
    outside = TenantPlugins({"moved": _instance(tmp_path / "elsewhere" / "moved")}, [tmp_path / "path"], "step")
    with pytest.raises(PluginNotFound, match="outside this service's plugin path"):
        outside.get("moved")

    write_plugin(tmp_path, "changed", "answer({})")
    recorded = _instance(tmp_path / "changed")
    manifest = json.loads((tmp_path / "changed" / "stella-plugin.json").read_text())
    (tmp_path / "changed" / "stella-plugin.json").write_text(json.dumps({**manifest, "permissions": ["network"]}))
    with pytest.raises(PluginNotFound, match="changed on disk"):
        TenantPlugins({"changed": recorded}, [tmp_path], "step").get("changed")
