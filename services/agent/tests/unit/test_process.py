"""``python -m stella.agent`` as a process: it registers, stops cleanly on SIGTERM, and exits clearly when refused."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

from stella.agent.app import EXIT_REGISTRATION, EXIT_REVOKED, EXIT_STOPPED

from .conftest import GatewayDouble


async def _start(gateway: GatewayDouble, state: Path, *flags: str) -> asyncio.subprocess.Process:
    env = {key: value for key, value in os.environ.items() if not key.startswith("STELLA_AGENT_")}
    env["STELLA_AGENT_GATEWAY_URL"] = gateway.url
    env["STELLA_AGENT_STATE_DIR"] = str(state)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stella.agent",
        "--driver",
        "simulated",
        *flags,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_the_agent_process_registers_stops_on_sigterm_and_exits_clearly_once_revoked(
    gateway: GatewayDouble, tmp_path: Path
) -> None:
    token = gateway.new_token()
    process = await _start(gateway, tmp_path, "--registration-token", token, "--name", "edge-1")
    await gateway.wait_for(lambda: any(gateway.heartbeats) or process.returncode is not None)
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == EXIT_STOPPED, stderr.decode()
    assert token.encode() not in stderr
    credential = tmp_path / "credential.json"
    assert stat.S_IMODE(credential.stat().st_mode) == 0o600
    (agent,) = gateway.agents.values()
    assert agent.name == "edge-1"
    assert agent.credential.encode() not in stderr

    # Started again: the stored credential serves; then Stella revokes it.
    process = await _start(gateway, tmp_path)
    beats = len(gateway.heartbeats)
    await gateway.wait_for(lambda: len(gateway.heartbeats) > beats or process.returncode is not None)
    agent.revoked = True
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == EXIT_REVOKED
    assert b"revoked or unknown" in stderr
    assert gateway.registrations == 1


async def test_the_agent_process_exits_clearly_when_its_token_is_refused(
    gateway: GatewayDouble, tmp_path: Path
) -> None:
    process = await _start(gateway, tmp_path, "--registration-token", "stl_reg_used-or-expired-token")
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == EXIT_REGISTRATION
    assert b"registration token was refused" in stderr
    assert not (tmp_path / "credential.json").exists()
