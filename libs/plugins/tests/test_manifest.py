"""Manifests are parsed strictly, and the catalogue finds installed plugins on the plugin path."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from stella.plugins import (
    Capability,
    DuplicatePlugin,
    ManifestError,
    MissingEntrypoint,
    PluginCatalogue,
    PluginNotFound,
    UnknownCapability,
    load_plugin,
    parse_manifest,
)

VALID: dict[str, Any] = {
    "id": "change-ticket",
    "version": "1.2.3",
    "vendor": "Example",
    "capabilities": ["gate"],
    "entrypoint": "plugin.py",
    "config_schema": {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}},
    "permissions": ["network"],
}


def test_a_valid_manifest_parses() -> None:
    manifest = parse_manifest(VALID)
    assert manifest.id == "change-ticket"
    assert manifest.offers(Capability.GATE)
    assert not manifest.offers("step")


def test_an_unknown_capability_is_refused_by_name() -> None:
    with pytest.raises(UnknownCapability, match="'teleport'"):
        parse_manifest({**VALID, "capabilities": ["gate", "teleport"]})


def test_a_missing_entrypoint_is_refused_specifically() -> None:
    without = {k: v for k, v in VALID.items() if k != "entrypoint"}
    with pytest.raises(MissingEntrypoint):
        parse_manifest(without)
    with pytest.raises(MissingEntrypoint):
        parse_manifest({**VALID, "entrypoint": ""})


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"colour": "red"}, "colour"),
        ({"id": "Bad_Id"}, "id"),
        ({"version": "one"}, "version"),
        ({"capabilities": []}, "capabilities"),
        ({"capabilities": ["gate", "gate"]}, "capabilities"),
        ({"permissions": ["root"]}, "permissions"),
        ({"config_schema": {"type": "no-such-type"}}, "config_schema"),
    ],
)
def test_other_problems_are_manifest_errors(change: dict[str, Any], words: str) -> None:
    with pytest.raises(ManifestError, match=words) as caught:
        parse_manifest({**VALID, **change})
    assert type(caught.value) is ManifestError


def test_config_errors_follow_the_config_schema() -> None:
    manifest = parse_manifest(VALID)
    assert manifest.config_errors({"url": "http://x"}) == []
    assert manifest.config_errors({}) == ["(config): 'url' is a required property"]
    assert manifest.config_errors({"url": 3}) == ["url: 3 is not of type 'string'"]


def _install(root: Path, manifest: dict[str, Any], *, toml: str | None = None) -> Path:
    directory = root / manifest.get("id", "plugin")
    directory.mkdir(parents=True)
    if toml is None:
        (directory / "stella-plugin.json").write_text(json.dumps(manifest))
    else:
        (directory / "stella-plugin.toml").write_text(toml)
    (directory / "plugin.py").write_text("")
    return directory


def test_a_toml_manifest_loads(tmp_path: Path) -> None:
    toml = 'id = "smoke"\nversion = "0.1.0"\nvendor = "V"\ncapabilities = ["step"]\nentrypoint = "plugin.py"\n'
    plugin = load_plugin(_install(tmp_path, {"id": "smoke"}, toml=toml))
    assert plugin.id == "smoke"
    assert plugin.program == (tmp_path / "smoke" / "plugin.py").resolve()


def test_an_entrypoint_outside_the_plugin_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.py").write_text("")
    directory = _install(tmp_path, {**VALID, "entrypoint": "../outside.py"})
    with pytest.raises(MissingEntrypoint, match="inside"):
        load_plugin(directory)


def test_an_entrypoint_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    directory = _install(tmp_path, {**VALID, "entrypoint": "missing.py"})
    with pytest.raises(MissingEntrypoint):
        load_plugin(directory)


def test_a_non_python_entrypoint_must_be_executable(tmp_path: Path) -> None:
    directory = _install(tmp_path, {**VALID, "entrypoint": "run.sh"})
    (directory / "run.sh").write_text("#!/bin/sh\n")
    with pytest.raises(MissingEntrypoint, match="executable"):
        load_plugin(directory)
    os.chmod(directory / "run.sh", 0o700)
    assert load_plugin(directory).program.name == "run.sh"


def test_the_catalogue_reads_the_plugin_path(tmp_path: Path) -> None:
    _install(tmp_path / "many", VALID)
    _install(tmp_path / "many", {**VALID, "id": "smoke-test", "capabilities": ["step"]})
    single = _install(tmp_path / "single", {**VALID, "id": "lonely", "capabilities": ["gate", "step"]})
    catalogue = PluginCatalogue.from_path(f"{tmp_path / 'many'}{os.pathsep}{single}")
    assert [p.id for p in catalogue] == ["change-ticket", "lonely", "smoke-test"]
    assert [p.id for p in catalogue.offering("step")] == ["lonely", "smoke-test"]
    assert catalogue.get("change-ticket", Capability.GATE).id == "change-ticket"
    with pytest.raises(PluginNotFound, match="does not offer step"):
        catalogue.get("change-ticket", "step")
    with pytest.raises(PluginNotFound, match="no plugin 'nope'"):
        catalogue.get("nope")


def test_the_catalogue_refuses_two_plugins_with_one_id(tmp_path: Path) -> None:
    _install(tmp_path / "a", VALID)
    _install(tmp_path / "b", VALID)
    with pytest.raises(DuplicatePlugin):
        PluginCatalogue.from_path([tmp_path / "a", tmp_path / "b"])


def test_the_catalogue_reports_an_invalid_plugin_at_once(tmp_path: Path) -> None:
    _install(tmp_path, {**VALID, "capabilities": ["warp"]})
    with pytest.raises(UnknownCapability):
        PluginCatalogue.from_path(str(tmp_path))
    with pytest.raises(ManifestError, match="not a directory"):
        PluginCatalogue.from_path(str(tmp_path / "absent"))
