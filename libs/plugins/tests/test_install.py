"""What an install names is found only on the plugin path; wheels unpack safely or not at all."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest

from stella.plugins import (
    ManifestError,
    MissingEntrypoint,
    PluginNotFound,
    PluginSourceRefused,
    is_trusted,
    load_source,
    locate_source,
)

from .conftest import write_plugin

MANIFEST = {
    "id": "wheel-gate",
    "version": "2.0.0",
    "vendor": "Tests",
    "capabilities": ["gate"],
    "entrypoint": "plugin.py",
}


def _wheel(path: Path, members: dict[str, str], *, links: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def test_a_directory_on_the_plugin_path_is_found(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    write_plugin(root, "good-one", "answer({})")
    plugin = load_source([tmp_path / "elsewhere", root], "good-one", None)
    assert plugin.id == "good-one"
    assert plugin.directory == (root / "good-one").resolve()


@pytest.mark.parametrize("name", ["../outside", "/etc", "a/../../b", ".", "", "x\x00y", "~root", "a\\..\\b"])
def test_names_leaving_the_plugin_path_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "plugins").mkdir()
    with pytest.raises(PluginSourceRefused):
        locate_source([tmp_path / "plugins"], name)


def test_a_symbolic_link_out_of_the_plugin_path_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    root.mkdir()
    write_plugin(tmp_path / "outside", "evil", "answer({})")
    (root / "evil").symlink_to(tmp_path / "outside" / "evil")
    with pytest.raises(PluginSourceRefused, match="leads out"):
        locate_source([root], "evil")
    assert not is_trusted(root / "evil", [root])
    assert is_trusted(root, [root])


def test_a_missing_name_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(PluginNotFound):
        locate_source([tmp_path], "absent")


def test_a_wheel_is_unpacked_into_the_install_directory(tmp_path: Path) -> None:
    root, installs = tmp_path / "plugins", tmp_path / "installed"
    root.mkdir()
    _wheel(
        root / "wheel_gate-2.0.0-py3-none-any.whl",
        {
            "wheel_gate/stella-plugin.json": json.dumps(MANIFEST),
            "wheel_gate/plugin.py": "print('hi')",
            "wheel_gate-2.0.0.dist-info/METADATA": "Name: wheel-gate",
        },
    )
    plugin = load_source([root], "wheel_gate-2.0.0-py3-none-any.whl", installs)
    assert plugin.id == "wheel-gate"
    assert plugin.directory == (installs / "wheel-gate-2.0.0").resolve()
    assert (plugin.directory / "plugin.py").read_text() == "print('hi')"
    assert sorted(p.name for p in installs.iterdir()) == ["wheel-gate-2.0.0"]


@pytest.mark.parametrize(
    ("members", "links", "error"),
    [
        ({"stella-plugin.json": json.dumps(MANIFEST), "plugin.py": "", "../escape.py": ""}, (), PluginSourceRefused),
        ({"stella-plugin.json": json.dumps(MANIFEST), "plugin.py": "", "/abs.py": ""}, (), PluginSourceRefused),
        ({"stella-plugin.json": json.dumps(MANIFEST), "plugin.py": ""}, ("link",), PluginSourceRefused),
        ({"stella-plugin.json": json.dumps(MANIFEST)}, (), MissingEntrypoint),
        ({"plugin.py": ""}, (), ManifestError),
    ],
)
def test_an_unsafe_or_invalid_wheel_leaves_nothing(
    tmp_path: Path, members: dict[str, str], links: tuple[str, ...], error: type[Exception]
) -> None:
    root, installs = tmp_path / "plugins", tmp_path / "installed"
    root.mkdir()
    _wheel(root / "bad.whl", members, links=links)
    with pytest.raises(error):
        load_source([root], "bad.whl", installs)
    assert not installs.exists() or list(installs.iterdir()) == []
    assert not (tmp_path / "escape.py").exists()


def test_a_wheel_needs_an_install_directory(tmp_path: Path) -> None:
    _wheel(tmp_path / "w.whl", {"stella-plugin.json": json.dumps(MANIFEST), "plugin.py": ""})
    with pytest.raises(PluginSourceRefused, match="install directory"):
        load_source([tmp_path], "w.whl", None)
