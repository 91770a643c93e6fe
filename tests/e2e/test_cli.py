"""The ``stella`` CLI walks the README's release-and-promote flow against the running system: log in, a component
and a version, a release, environments and a freeze window, ``promote --wait`` (with an approval given from
another terminal, and a rejection), evidence exported and verified offline, events tailed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from stella.cli.app import app

from .conftest import Stack

pytestmark = pytest.mark.e2e

DIGEST = "sha256:" + "d" * 64


class Terminal:
    """Runs ``stella`` commands as one user (a config directory of their own)."""

    def __init__(self, config_dir: Path, *, url: str | None = None, token: str | None = None) -> None:
        self.env = {
            "STELLA_CONFIG_DIR": str(config_dir),
            "COLUMNS": "200",
            "STELLA_URL": url or "",
            "STELLA_TOKEN": token or "",
        }
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(app, list(args), env=self.env)
        assert result.exit_code == code, (args, result.exit_code, result.output, result.exception)
        return result

    def spawn(self, *args: str, stdout_only: bool = False) -> subprocess.Popen[str]:
        """Run a command as its own process (the console script's module), e.g. to wait in another terminal."""
        env = {**os.environ, **{k: v for k, v in self.env.items() if v}}
        return subprocess.Popen(
            [sys.executable, "-m", "stella.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if stdout_only else subprocess.STDOUT,
            text=True,
        )


async def _waiting_for_approval(stack: Stack) -> dict[str, Any]:
    body = await stack.until("/api/v1/promotions?status=pending_approval", lambda b: len(b["items"]) == 1, timeout=60)
    return body["items"][0]


async def _finished(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    code = await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
    assert proc.stdout is not None
    return code, proc.stdout.read()


async def test_the_cli_walks_the_readme_flow(full_stack: Stack, tmp_path: Path) -> None:
    stack = full_stack
    me = Terminal(tmp_path / "me")

    # Log in: the URL and token are checked, then kept readable by the user only.
    bad = me("login", "--url", stack.base, "--token", "stl_not-a-token", code=3)
    assert "AUTH_TOKEN_INVALID" in bad.output
    me("login", "--url", stack.base, "--token", stack.token)
    saved = tmp_path / "me" / "config.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert json.loads(saved.read_text()) == {"url": stack.base, "token": stack.token}

    me("components", "create", "shop-api", "--image", "registry.example.com/shop/api", "--version-map")
    me("versions", "add", "shop-api", "--tag", "1.4.2", "--digest", DIGEST, "--semver", "1.4.2")
    assert DIGEST in me("-o", "json", "versions", "list", "shop-api").output
    me("releases", "create", "shop-1-4-2", "--component", "shop-api=1.4.2")
    me("releases", "ready", "shop-1-4-2")
    ready = json.loads(me("-o", "json", "releases", "list", "--status", "ready").output)
    [release] = ready["items"]
    assert release["name"] == "shop-1-4-2" and release["components"][0]["digest"] == DIGEST
    assert "shop-1-4-2" in me("releases", "list").output  # a table for people

    me("envs", "create", "dev", "--order", "0")
    me("envs", "create", "prod", "--order", "1", "--approvals", "1", "--sod")
    me(
        "freeze",
        "add",
        "prod",
        "--reason",
        "new year",
        "--start",
        "2099-01-01T00:00:00+00:00",
        "--end",
        "2099-01-02T00:00:00+00:00",
    )
    assert "new year" in me("freeze", "list", "prod").output
    assert json.loads(me("-o", "json", "envs", "state", "prod").output)["closed"] is False

    # Promote into dev and wait: no approvals needed and no targets, so it ends deployed at once: exit 0.
    waited = me("promote", "shop-1-4-2", "dev", "--reason", "sprint 42", "--wait", "--timeout", "120")
    assert "deployed" in waited.output
    assert "gates" in waited.output and "evidence" in waited.output  # the steps of its workflow

    # prod needs an approval; the requester waits in one terminal while an approver approves in another.
    _, approver_token = await stack.principal("approver", ["approver"])
    approver = Terminal(tmp_path / "approver", url=stack.base, token=approver_token)  # a CI job: no login
    waiting = me.spawn("promote", "shop-1-4-2", "prod", "--wait", "--timeout", "120")
    try:
        pending = await _waiting_for_approval(stack)
        refused = me("approve", pending["id"], code=1)  # separation of duties: the requester may not approve
        assert "PROM_SOD_VIOLATION" in refused.output
        approver("approve", pending["id"], "--comment", "tests green")
        code, output = await _finished(waiting)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert code == 0, output
    assert "deployed" in output

    # A rejected promotion ends --wait with a failure exit code.
    me("releases", "create", "shop-1-4-3", "-c", f"shop-api@{DIGEST}", "--ready")
    me("promote", "shop-1-4-3", "dev", "--wait", "--timeout", "120")
    waiting = me.spawn("-o", "json", "promote", "shop-1-4-3", "prod", "--wait", "--timeout", "120", stdout_only=True)
    try:
        pending = await _waiting_for_approval(stack)
        approver("reject", pending["id"], "--comment", "CVE open")
        code, output = await _finished(waiting)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert code == 1, output
    assert json.loads(output)["status"] == "rejected"  # standard output is JSON only; the view went to stderr

    # Evidence: exported through the API, verified offline with nothing but the bundle.
    bundle = tmp_path / "evidence.tar.gz"
    me("evidence", "export", "--file", str(bundle))
    with tarfile.open(bundle) as archive:
        assert any(name.startswith("envelopes/") for name in archive.getnames())
    verified = me("evidence", "verify", str(bundle))
    assert "OK" in verified.output or "verified" in verified.output.lower()
    report = json.loads(me("-o", "json", "evidence", "verify", str(bundle)).output)
    assert report["ok"] is True and report["packet_count"] >= 4
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(bundle.read_bytes()[:-40])
    assert me("evidence", "verify", str(broken), code=2).exit_code == 2

    # Events: the tenant's public events, replayed from the start, as JSON lines.
    lines = me(
        "-o", "json", "events", "tail", "--from-start", "--type", "org.stellaops.promotion.*", "--count", "4"
    ).output
    events = [json.loads(line) for line in lines.splitlines() if line.strip()]
    assert [e["event"]["type"] for e in events][:2] == [
        "org.stellaops.promotion.requested",
        "org.stellaops.promotion.approved",
    ]
    assert all(e["event"]["specversion"] == "1.0" for e in events)

    # Mistakes are explained, not dumped.
    unknown = me("promote", "shop-1-4-2", "nowhere", code=1)
    assert "no environment named 'nowhere'" in unknown.output
    invalid = me("envs", "create", "Not A Name", "--order", "5", code=1)
    assert "VAL_" in invalid.output and "name" in invalid.output
    me("logout")
    assert not saved.exists()
    assert "not logged in" in me("envs", "list", code=3).output
