"""``python -m stella.gateway bootstrap`` and ``create-token`` against the gateway's database."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

from stella.gateway.settings import Settings

from .conftest import Gateway, assert_problem


async def _cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "STELLA_DATABASE_URL": settings.database_url, "STELLA_LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stella.gateway",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_bootstrap_creates_a_tenant_admin_once(
    gateway: Gateway, gateway_settings: Settings, tmp_path: Path
) -> None:
    tenant = f"cli-{gateway.unique_id}"
    token_file = tmp_path / "secrets" / "admin-token"
    code, out, err = await _cli(
        gateway_settings, "bootstrap", "--tenant", tenant, "--admin", "alice", "--token-file", str(token_file)
    )
    assert code == 0, err
    token = out.strip()
    assert token.startswith("stl_")
    assert token_file.read_text().strip() == token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    principals = await gateway.call("GET", "/api/v1/principals", token)
    assert principals.status_code == 200, principals.text
    assert [(p["name"], p["roles"]) for p in principals.json()["items"]] == [("alice", ["tenant-admin"])]

    code, out, err = await _cli(
        gateway_settings, "bootstrap", "--tenant", tenant, "--admin", "alice", "--token-file", str(token_file)
    )
    assert code == 0, err
    assert out == ""
    assert "already exists" in err
    assert token_file.read_text().strip() == token


async def test_create_token_issues_a_token_for_an_existing_principal(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    tenant = await gateway.tenant()
    code, out, err = await _cli(
        gateway_settings, "create-token", "--tenant", tenant.name, "--principal", "admin", "--expires-in-days", "1"
    )
    assert code == 0, err
    token = out.strip()
    assert (await gateway.call("GET", "/api/v1/principals", token)).status_code == 200
    listed = (await gateway.call("GET", "/api/v1/tokens", token)).json()["items"]
    assert [t["expires_at"] is not None for t in listed] == [False, True]

    gateway.clock.advance(days=1, seconds=1)
    assert_problem(await gateway.call("GET", "/api/v1/principals", token), 401, "AUTH_TOKEN_EXPIRED")


async def test_the_cli_refuses_unknown_names(gateway_settings: Settings) -> None:
    code, out, err = await _cli(gateway_settings, "create-token", "--tenant", "nobody", "--principal", "admin")
    assert (code, out) == (2, "")
    assert "does not exist" in err
    code, _, err = await _cli(gateway_settings, "bootstrap", "--tenant", "Bad Name", "--admin", "alice")
    assert code == 2
    assert "invalid" in err
