"""Every ``bash`` block of the README works as written on a fresh ``make run``.

The launcher ``make run`` starts (``deploy/local/stack.py``) runs on a state directory of its own, a fresh
database and a NATS namespace of the test's own. The README's blocks run in order in one ``bash -euo
pipefail``, from a directory that looks like the repository's root (``.stella`` is the state directory,
``.venv`` the repository's), so every file they read or write is where the README says. The only change
to the text is the gateway's address: the README says ``127.0.0.1:8080``, the test's launcher listens on a
free port. ``shell`` blocks (``make run`` itself, ``make test``) are set-up the test does its own way.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

import pytest

from stella.kit.embedded import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_script(port: int) -> str:
    """The README's bash blocks, in order, with the gateway at ``port``."""
    blocks = BLOCK.findall(README.read_text())
    assert len(blocks) >= 5, "the README lost its examples"
    return "\n".join(blocks).replace("127.0.0.1:8080", f"127.0.0.1:{port}")


def _launch(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start what ``make run`` starts."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "deploy" / "local" / "stack.py")], env=env, cwd=ROOT, stdout=log, stderr=log
    )


def _ready(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback URL we built)
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


@pytest.mark.skipif(shutil.which("jq") is None or shutil.which("curl") is None, reason="the README uses curl and jq")
async def test_every_command_of_the_readme_works_on_a_fresh_make_run(
    fresh_database: str, nats_url: str, stella_namespace: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    port = free_port()
    env = {
        **os.environ,
        "STELLA_STATE_DIR": str(state),
        "STELLA_DATABASE_URL": fresh_database,
        "STELLA_NATS_URL": nats_url,
        "STELLA_NATS_NAMESPACE": stella_namespace,
        "STELLA_GATEWAY_PORT": str(port),
        "STELLA_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "stack.log").open("wb")
    stack = _launch(env, log)
    try:
        base = f"http://127.0.0.1:{port}"
        assert await asyncio.to_thread(_ready, f"{base}/readyz", 120), (tmp_path / "stack.log").read_text()[-4000:]
        # The first tenant and the platform admin are bootstrapped before the gateway starts.
        assert (state / "admin-token").exists() and (state / "platform-token").exists()
        workdir = tmp_path / "repo"
        workdir.mkdir()
        (workdir / ".stella").symlink_to(state)
        (workdir / ".venv").symlink_to(ROOT / ".venv")
        script = "set -euo pipefail\n" + readme_script(port)
        (workdir / "readme.sh").write_text(script)
        script_env = {k: v for k, v in os.environ.items() if not k.startswith("STELLA_")}
        ran = await asyncio.to_thread(
            subprocess.run,
            ["bash", "readme.sh"],
            cwd=workdir,
            env=script_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 0, f"stdout:\n{ran.stdout[-4000:]}\nstderr:\n{ran.stderr[-4000:]}"
        assert "Signature Verified Successfully" in ran.stdout + ran.stderr
        assert (workdir / "evidence.tar.gz").exists()
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            stack.wait(30)
        except subprocess.TimeoutExpired:
            stack.kill()
        log.close()
