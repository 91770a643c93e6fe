"""Fixtures of the plugin library's tests: throwaway plugins written for one test."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from stella.plugins import InstalledPlugin, load_plugin

PROLOGUE = """
import json, os, sys
request = json.loads(sys.stdin.readline())
def answer(result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}) + "\\n")
    sys.stdout.flush()
"""


def write_plugin(
    root: Path,
    plugin_id: str,
    body: str,
    *,
    capabilities: tuple[str, ...] = ("step",),
    permissions: tuple[str, ...] = (),
) -> InstalledPlugin:
    """A plugin in ``root/plugin_id`` whose program runs ``body`` after reading the request (see PROLOGUE)."""
    directory = root / plugin_id
    directory.mkdir(parents=True)
    manifest = {
        "id": plugin_id,
        "version": "1.0.0",
        "vendor": "Tests",
        "capabilities": list(capabilities),
        "entrypoint": "plugin.py",
        "permissions": list(permissions),
    }
    (directory / "stella-plugin.json").write_text(json.dumps(manifest))
    (directory / "plugin.py").write_text(PROLOGUE + textwrap.dedent(body))
    return load_plugin(directory)


MakePlugin = Callable[..., InstalledPlugin]


@pytest.fixture
def make_plugin(tmp_path: Path) -> MakePlugin:
    """Write a plugin running the given body (see :func:`write_plugin`) in the test's directory."""

    def make(
        plugin_id: str, body: str, *, capabilities: tuple[str, ...] = ("step",), permissions: tuple[str, ...] = ()
    ) -> InstalledPlugin:
        return write_plugin(tmp_path, plugin_id, body, capabilities=capabilities, permissions=permissions)

    return make
